"""FIFOs: a guest-local pipe per FIFO node, as a Linux guest kernel gives one.

On a FUSE / virtio-fs mount a FIFO is a special inode (fs/fuse/inode.c ``fuse_init_inode`` →
``init_special_inode``): opening it never sends FUSE OPEN; ``fs/pipe.c`` ``fifo_open`` attaches
the inode's pipe (``inode->i_pipe``), made by the first opener and freed by the last close — with
whatever data it still held.  So two guests (two kernels) never talk through a FIFO of their
shared directory: each has its own pipe.  Here "one kernel" is one mount: :func:`fifos_of` keeps
one :class:`Fifos` per :class:`~vfscluster.guest.client.FuseClient` (every ``GuestOS`` of a
guest's mount shares it), keyed by nodeid, as the kernel keys ``i_pipe`` by inode — hard links
share a pipe.

The pipe is a real OS pipe (``os.pipe2``, ``O_CLOEXEC``), and every open file of the FIFO holds
its own descriptor of it, opened with the file's access mode and ``O_NONBLOCK`` through
``/proc/self/fd`` (a separate open file description per open, as ``fifo_open`` makes: its own
O_NONBLOCK, its own reader/writer count).  Reads, writes, EOF once every writer closed, EPIPE
without a reader, EAGAIN, ESPIPE and the pipe buffer's size are then the kernel's own.  What is
emulated is ``fifo_open``'s rendezvous, under one :class:`threading.Condition` per mount:

* ``O_RDONLY`` counts a reader, then waits until a writer opens (``w_counter`` moves);
  ``O_NONBLOCK``: does not wait;
* ``O_WRONLY`` with ``O_NONBLOCK`` and no reader: ENXIO; otherwise counts a writer, then waits
  until a reader opens;
* ``O_RDWR`` never waits; access mode 3: EINVAL.

A wait has no timer (as Linux's); KeyboardInterrupt (any exception) in it undoes the open — the
count, the descriptor, the pipe if no one else holds it — and propagates, as ``-ERESTARTSYS``
does.
"""

from __future__ import annotations

import errno
import fcntl
import os
import threading
import weakref
from collections.abc import Callable

from .files import OpenFile
from .namei import Node, oserror

__all__ = ["Fifos", "FifoFile", "fifos_of"]

_registries: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_registries_lock = threading.Lock()


def fifos_of(client) -> Fifos:
    """The :class:`Fifos` of the mount whose FUSE client is ``client`` (made on first use)."""
    with _registries_lock:
        fifos = _registries.get(client)
        if fifos is None:
            fifos = _registries[client] = Fifos()
        return fifos


class _Pipe:
    """The pipe of one FIFO node (the kernel's ``pipe_inode_info``): who has it open, how many
    readers and writers, the counters a waiting open watches, and the descriptors of its open
    files (a new one is opened from any of them)."""

    __slots__ = ("nodeid", "readers", "writers", "r_counter", "w_counter", "fds", "size")

    def __init__(self, nodeid: int) -> None:
        self.nodeid = nodeid
        self.readers = self.writers = 0
        self.r_counter = self.w_counter = 0
        self.fds: set[int] = set()
        self.size = 0            # F_GETPIPE_SZ: no read returns more


class Fifos:
    """The pipes of one mount's FIFO nodes, by nodeid."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._pipes: dict[int, _Pipe] = {}

    def open(self, nodeid: int, flags: int) -> tuple[_Pipe, int]:
        """``fifo_open``: the node's pipe and a new descriptor of it for an open with ``flags``
        (module docstring); may wait for the other end."""
        acc = flags & os.O_ACCMODE
        nonblock = flags & os.O_NONBLOCK
        reads, writes = acc in (os.O_RDONLY, os.O_RDWR), acc in (os.O_WRONLY, os.O_RDWR)
        with self._cond:
            pipe = self._pipes.get(nodeid)
            if acc == os.O_ACCMODE:
                raise oserror(errno.EINVAL)
            if acc == os.O_WRONLY and nonblock and (pipe is None or not pipe.readers):
                raise oserror(errno.ENXIO)
            if pipe is None:
                pipe = self._pipes[nodeid] = _Pipe(nodeid)
            try:
                fd = self._new_end(pipe, acc | nonblock)
            except BaseException:
                if not pipe.fds:
                    del self._pipes[nodeid]
                raise
            pipe.readers += reads
            pipe.writers += writes
            pipe.r_counter += reads
            pipe.w_counter += writes
            self._cond.notify_all()          # wake_up_partner (and anyone watching the counts)
            if nonblock or acc == os.O_RDWR:
                return pipe, fd
            try:
                if reads and not pipe.writers:
                    seen = pipe.w_counter
                    while pipe.w_counter == seen:
                        self._cond.wait()
                elif writes and not pipe.readers:
                    seen = pipe.r_counter
                    while pipe.r_counter == seen:
                        self._cond.wait()
            except BaseException:
                self._drop(pipe, fd, reads, writes)
                raise
            return pipe, fd

    @staticmethod
    def _new_end(pipe: _Pipe, flags: int) -> int:
        """A descriptor of the pipe, a new open file description with ``flags``: from a new
        ``os.pipe2`` for the first opener, else reopened from a descriptor of another opener."""
        if pipe.fds:
            fd = os.open(f"/proc/self/fd/{next(iter(pipe.fds))}", flags | os.O_CLOEXEC)
        else:
            r, w = os.pipe2(os.O_CLOEXEC)
            try:
                fd = os.open(f"/proc/self/fd/{r}", flags | os.O_CLOEXEC)
                pipe.size = fcntl.fcntl(r, fcntl.F_GETPIPE_SZ)
            finally:
                os.close(r)
                os.close(w)
        pipe.fds.add(fd)
        return fd

    def release(self, pipe: _Pipe, fd: int, reads: bool, writes: bool) -> None:
        """The last reference to an open file of the pipe went (``pipe_release``)."""
        with self._cond:
            self._drop(pipe, fd, reads, writes)

    def _drop(self, pipe: _Pipe, fd: int, reads: bool, writes: bool) -> None:
        pipe.readers -= reads
        pipe.writers -= writes
        pipe.fds.discard(fd)
        try:
            os.close(fd)
        finally:
            if not pipe.fds:                 # the last opener: the pipe and its data go
                del self._pipes[pipe.nodeid]
            self._cond.notify_all()

    # ------------------------------------------------------------------------------- observing

    def counts(self) -> list[tuple[int, int]]:
        """``(readers, writers)`` of every pipe (waiting openers included), by nodeid."""
        with self._cond:
            return [(p.readers, p.writers) for _, p in sorted(self._pipes.items())]

    def wait_for(self, predicate: Callable[[], bool], timeout: float | None) -> bool:
        """Wait until ``predicate()`` (called with the state locked; it may call
        :meth:`counts`) holds, at most ``timeout`` seconds; its last value."""
        with self._cond:
            return self._cond.wait_for(predicate, timeout)


class FifoFile(OpenFile):
    """An open file of a FIFO: no FUSE handle (``fh`` None, yet not ``O_PATH``), a descriptor
    ``pipe_fd`` of the guest-local pipe, which the descriptor calls use as ``os`` would."""

    __slots__ = ("pipe_fd", "_pipe", "_fifos", "_then")

    def __init__(self, node: Node, flags: int, fifos: Fifos, pipe: _Pipe, fd: int,
                 released: Callable[[OpenFile], None]) -> None:
        super().__init__(node, None, flags, 0, self._done)
        acc = flags & os.O_ACCMODE
        self.readable = acc in (os.O_RDONLY, os.O_RDWR)
        self.writable = acc in (os.O_WRONLY, os.O_RDWR)
        self.pipe_fd = fd
        self._pipe = pipe
        self._fifos = fifos
        self._then = released

    @property
    def is_path(self) -> bool:
        return False

    @property
    def pipe_size(self) -> int:
        """The most one read of the pipe returns."""
        return self._pipe.size

    def _done(self, file: OpenFile) -> None:
        try:
            self._fifos.release(self._pipe, self.pipe_fd, self.readable, self.writable)
        finally:
            self._then(self)
