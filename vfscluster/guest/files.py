"""Open files and the guest's file-descriptor table (the kernel's ``struct file`` and
``files_struct``).

An :class:`OpenFile` holds what ``open`` settled: the node (pinned in the client for as long as the
file lives), the FUSE file handle, the open flags, the access mode and the file position.  A file
is reference counted: the descriptor table holds one reference, and every operation in progress
holds one, so ``close`` on one thread while another still reads the descriptor releases the FUSE
handle only after the read (as ``fput`` does).  An open FIFO is a
:class:`~vfscluster.guest.fifo.FifoFile`: no FUSE handle, a descriptor of a guest-local pipe
(``pipe_fd``, None for every other file).  :class:`FdTable` hands out the lowest free
descriptor number, from 3 (0, 1, 2 are the guest process's standard streams), below the
process's ``RLIMIT_NOFILE`` soft limit as Linux does (EMFILE when none is free; ``dup2`` onto a
number past it is EBADF).
"""

from __future__ import annotations

import errno
import os
import resource
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from .namei import Node, oserror
from .osargs import c_int

__all__ = ["OpenFile", "FdTable", "FIRST_FD"]

FIRST_FD = 3


class OpenFile:
    """One open file description.

    ``readable``/``writable`` are FMODE_READ/FMODE_WRITE (``O_RDONLY``/``O_WRONLY``/``O_RDWR``;
    access mode 3 and ``O_PATH`` give neither).  ``fh`` is None for ``O_PATH`` files, which the
    server never opened.  ``pos`` is guarded by ``pos_lock`` (the kernel's ``f_pos_lock``).
    ``released`` is called once, when the last reference goes.
    """

    __slots__ = ("node", "fh", "flags", "open_flags", "readable", "writable", "pos", "pos_lock",
                 "_refs", "_lock", "_released")

    #: the guest-local pipe's descriptor of an open FIFO (:mod:`.fifo`); None here
    pipe_fd: int | None = None

    def __init__(self, node: Node, fh: int | None, flags: int, open_flags: int,
                 released: Callable[[OpenFile], None]) -> None:
        self.node = node
        self.fh = fh
        self.flags = flags
        self.open_flags = open_flags     # FOPEN_* from the server
        acc = flags & os.O_ACCMODE
        path = fh is None
        self.readable = not path and acc in (os.O_RDONLY, os.O_RDWR)
        self.writable = not path and acc in (os.O_WRONLY, os.O_RDWR)
        self.pos = 0
        self.pos_lock = threading.Lock()
        self._refs = 1
        self._lock = threading.Lock()
        self._released = released

    @property
    def nodeid(self) -> int:
        return self.node.nodeid

    @property
    def is_dir(self) -> bool:
        return self.node.is_dir

    @property
    def is_path(self) -> bool:
        """Opened with O_PATH: no FUSE handle, only the name's inode."""
        return self.fh is None

    def get(self) -> None:
        with self._lock:
            self._refs += 1

    def put(self) -> None:
        """Drop a reference; the last one releases the file."""
        with self._lock:
            self._refs -= 1
            last = self._refs == 0
        if last:
            self._released(self)


def nofile_limit() -> int:
    """This process's ``RLIMIT_NOFILE`` soft limit: descriptor numbers stay below it (unlimited:
    the kernel's default ``fs.nr_open``, 1048576)."""
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return 1 << 20 if soft == resource.RLIM_INFINITY else soft


class FdTable:
    """Descriptor number -> :class:`OpenFile`, thread-safe, lowest free number first, every
    number below :attr:`limit`."""

    def __init__(self, first: int = FIRST_FD, limit: int | None = None) -> None:
        self._first = first
        self._limit = limit
        self._files: dict[int, OpenFile] = {}
        self._reserved: set[int] = set()        # numbers taken by opens in progress
        self._lock = threading.Lock()

    @property
    def limit(self) -> int:
        """The bound on descriptor numbers: the one given (or set), else the process's
        ``RLIMIT_NOFILE`` soft limit now, as Linux reads it at every allocation (one getrlimit)."""
        return nofile_limit() if self._limit is None else self._limit

    @limit.setter
    def limit(self, value: int | None) -> None:
        self._limit = value

    def _lowest(self) -> int:
        """The lowest number neither in use nor reserved (the lock held); EMFILE past the limit."""
        fd = self._first
        while fd in self._files or fd in self._reserved:
            fd += 1
        if fd >= self.limit:
            raise oserror(errno.EMFILE)
        return fd

    def install(self, file: OpenFile) -> int:
        """Give ``file`` (with its table reference) the lowest free descriptor; EMFILE when every
        number below the limit is taken (the caller keeps its reference then)."""
        with self._lock:
            fd = self._lowest()
            self._files[fd] = file
            return fd

    def reserve(self) -> int:
        """Take the lowest free number for a file still to be opened (fs/file.c
        ``get_unused_fd_flags``, which ``open`` calls before it looks anything up): EMFILE when
        none is free.  Until :meth:`install_reserved` or :meth:`unreserve` the number is neither
        free (an ``open`` or ``dup`` meanwhile takes another) nor open (EBADF; ``dup2`` onto it
        is EBUSY)."""
        with self._lock:
            fd = self._lowest()
            self._reserved.add(fd)
            return fd

    def unreserve(self, fd: int) -> None:
        """The open that reserved ``fd`` failed: the number is free again."""
        with self._lock:
            self._reserved.discard(fd)

    @contextmanager
    def holding(self) -> Iterator[int]:
        """A number taken as :meth:`reserve` takes it, for the block only: for a call that needs
        a descriptor just while it runs (opendir(3) in ``listdir``; an open that never installs)."""
        fd = self.reserve()
        try:
            yield fd
        finally:
            self.unreserve(fd)

    def install_reserved(self, fd: int, file: OpenFile) -> None:
        """Give ``file`` (with its table reference) the number :meth:`reserve` gave."""
        with self._lock:
            self._reserved.remove(fd)
            self._files[fd] = file

    def get(self, fd: int) -> OpenFile:
        """The file of ``fd`` with a reference for the caller (who puts it); EBADF.  ``fd`` is
        converted as ``os`` converts a descriptor (TypeError, OverflowError: :func:`c_int`)."""
        if type(fd) is not int or not -0x80000000 <= fd <= 0x7FFFFFFF:
            fd = c_int(fd)
        with self._lock:
            file = self._files.get(fd)
            if file is None:
                raise oserror(errno.EBADF)
            file.get()
            return file

    def install_at(self, fd: int, file: OpenFile) -> OpenFile | None:
        """Give ``file`` (with its table reference) descriptor ``fd`` (``dup2``): the file that
        had it, whose table reference the caller inherits, or None.  EBADF for a number at or past
        the limit (fs/file.c ``ksys_dup3``), EBUSY for one an ``open`` in progress reserved
        (``do_dup2``); the caller keeps its reference then."""
        if fd >= self.limit:
            raise oserror(errno.EBADF)
        with self._lock:
            if fd in self._reserved:
                raise oserror(errno.EBUSY)
            old = self._files.get(fd)
            self._files[fd] = file
            return old

    def peek(self, fd: int) -> OpenFile | None:
        """The file of ``fd`` with NO reference taken (None if there is none): for the DAX fast paths,
        which use only its node and modes and stay harmless if the file is closed meanwhile."""
        return self._files.get(fd) if type(fd) is int else None     # (get() refuses the rest)

    def remove(self, fd: int) -> OpenFile:
        """Take ``fd`` out of the table; the caller inherits the table's reference.  EBADF."""
        if type(fd) is not int or not -0x80000000 <= fd <= 0x7FFFFFFF:
            fd = c_int(fd)
        with self._lock:
            file = self._files.pop(fd, None)
        if file is None:
            raise oserror(errno.EBADF)
        return file

    def fds(self) -> list[int]:
        with self._lock:
            return sorted(self._files)

    def __len__(self) -> int:
        with self._lock:
            return len(self._files)
