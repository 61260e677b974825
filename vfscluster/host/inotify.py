"""Changes made on the host behind the server's back bump the version table (DESIGN §4), via inotify.

:class:`Inotify` is a thin ctypes binding (``inotify_init1`` / ``inotify_add_watch`` /
``inotify_rm_watch``; the fd is non-blocking and close-on-exec).  :class:`ShareWatcher` watches every
*directory* the passthrough inode store knows (it is the store's observer: a directory is watched
before the call that brought it into the store returns, so before anyone can read its attributes for a
versioned reply), through ``/proc/self/fd/<its O_PATH fd>``, and turns events into bumps:

* an event about entry ``N`` of directory ``D`` bumps the inode the store knows as ``D/N``
  (``fstatat(D, N, AT_SYMLINK_NOFOLLOW)`` -> (st_dev, st_ino) -> nodeid); ``D`` itself is bumped
  only when its own metadata changed: a name appeared, went or moved (CREATE, DELETE, MOVED_*).
  The answer is remembered per (watch, name) until a namespace event for that name (which is what
  changes the inode a name stands for) or until the store drops the nodeid (nodeids are never
  reused), so a stream of writes to one file costs no ``fstatat`` each;
* an event about ``D`` itself (ATTRIB, MODIFY, DELETE_SELF, MOVE_SELF) bumps ``D``;
* ``IN_Q_OVERFLOW`` (events were lost) bumps every slot (``bump_all``).

Limits, by construction: the child of a DELETE or MOVED_FROM is gone from ``D`` by the time the event
is read, so only ``D`` is bumped (the target directory's MOVED_TO bumps the moved inode if that
directory is watched); a file whose directories are all unknown to the store is not watched (no guest
can reach it by name).  The server's own changes raise events too: those cost one extra bump (an extra
refresh in a guest), never a missed one.

Threading: :meth:`ShareWatcher.drain` runs in the server loop; ``added`` / ``removed`` run in whatever
thread acquires or forgets inodes, under the store's lock.  A directory's fd is used by :meth:`drain`
only under the watcher's lock, and ``removed`` (which the store calls before closing that fd) takes the
same lock, so the fd is never used after it was closed.
"""

from __future__ import annotations

import ctypes
import logging
import os
import select
import struct
import threading
from collections.abc import Iterator

from ..fuse.passthrough.inodes import Inode, InodeStore
from .versions import VersionTable

log = logging.getLogger(__name__)

IN_MODIFY = 0x0000_0002
IN_ATTRIB = 0x0000_0004
IN_MOVED_FROM = 0x0000_0040
IN_MOVED_TO = 0x0000_0080
IN_CREATE = 0x0000_0100
IN_DELETE = 0x0000_0200
IN_DELETE_SELF = 0x0000_0400
IN_MOVE_SELF = 0x0000_0800
IN_Q_OVERFLOW = 0x0000_4000
IN_IGNORED = 0x0000_8000
IN_ONLYDIR = 0x0100_0000
IN_ISDIR = 0x4000_0000
IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = os.O_CLOEXEC

#: What a directory watch asks for: every change of metadata or data of the directory or its entries.
WATCH_MASK = (IN_MODIFY | IN_ATTRIB | IN_MOVED_FROM | IN_MOVED_TO | IN_CREATE | IN_DELETE
              | IN_DELETE_SELF | IN_MOVE_SELF | IN_ONLYDIR)
#: Events that change the watched directory's own entries (and so its mtime, ctime, size).
NAMESPACE_EVENTS = IN_CREATE | IN_DELETE | IN_MOVED_FROM | IN_MOVED_TO

EVENT = struct.Struct("iIII")     # struct inotify_event: wd, mask, cookie, len; then len bytes of name
READ_SIZE = 64 * 1024
_MAX_EVENT = EVENT.size + 256     # NAME_MAX + NUL, padded
_MAX_NAMES = 1 << 16              # remembered (watch, name) -> nodeid answers

_libc = ctypes.CDLL(None, use_errno=True)
_libc.inotify_init1.argtypes = [ctypes.c_int]
_libc.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
_libc.inotify_rm_watch.argtypes = [ctypes.c_int, ctypes.c_int]


def _check(result: int, what: str) -> int:
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return result


def parse_events(data: bytes) -> Iterator[tuple[int, int, int, bytes]]:
    """(wd, mask, cookie, name) of each ``struct inotify_event`` in ``data`` (name without its NUL
    padding; b"" for an event about the watched directory itself)."""
    off, end = 0, len(data)
    while off + EVENT.size <= end:
        wd, mask, cookie, n = EVENT.unpack_from(data, off)
        off += EVENT.size
        name = bytes(data[off:off + n]).rstrip(b"\0")
        off += n
        yield wd, mask, cookie, name


class Inotify:
    """One inotify instance (non-blocking, close-on-exec)."""

    def __init__(self) -> None:
        self.fd = _check(_libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC), "inotify_init1")
        self._poll = select.poll()
        self._poll.register(self.fd, select.POLLIN)

    def pending(self) -> bool:
        """Are events queued?  (A zero-timeout poll: a third of the cost of a read that finds
        nothing, which raises.)"""
        return bool(self._poll.poll(0))

    def add_watch(self, path: str | bytes, mask: int) -> int:
        """The watch descriptor of ``path`` (the same one again for an inode already watched)."""
        return _check(_libc.inotify_add_watch(self.fd, os.fsencode(path), mask), "inotify_add_watch")

    def rm_watch(self, wd: int) -> None:
        _check(_libc.inotify_rm_watch(self.fd, wd), "inotify_rm_watch")

    def read(self) -> bytes:
        """The events queued now (b"" if none): one non-blocking read."""
        try:
            return os.read(self.fd, READ_SIZE)
        except BlockingIOError:
            return b""

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class ShareWatcher:
    """Watches the directories of ``inodes`` and bumps ``table`` for changes made outside the server.

    Install it with ``inodes.add_observer(watcher)`` (the constructor does); call :meth:`drain` from the
    server loop before it handles requests, and when :attr:`fd` is readable.
    """

    def __init__(self, inodes: InodeStore, table: VersionTable) -> None:
        self.inodes = inodes
        self.table = table
        self.inotify = Inotify()
        self._lock = threading.Lock()
        self._dirs: dict[int, tuple[int, int]] = {}     # wd -> (nodeid, O_PATH fd of the directory)
        self._wd_of: dict[int, int] = {}                # nodeid -> wd
        self._names: dict[tuple[int, bytes], int] = {}  # (wd, name) -> nodeid it stood for
        self.events = 0
        self.overflows = 0
        self.failed_watches = 0
        inodes.add_observer(self)

    @property
    def fd(self) -> int:
        return self.inotify.fd

    @property
    def watched(self) -> int:
        return len(self._dirs)

    # -- InodeObserver (called under the store's lock) -----------------------------------------
    def added(self, inode: Inode) -> None:
        if not inode.is_dir:
            return
        with self._lock:
            if self.inotify.fd < 0:
                return
            try:
                wd = self.inotify.add_watch(f"/proc/self/fd/{inode.fd}", WATCH_MASK)
            except OSError as exc:
                self.failed_watches += 1
                if self.failed_watches % 1000 == 1:       # the first, then one in a thousand
                    log.warning("cannot watch directory nodeid %d for host-side changes (%s): changes "
                                "made outside the server there reach guests only through their own "
                                "requests", inode.nodeid, exc)
                return
            self._dirs[wd] = (inode.nodeid, inode.fd)
            self._wd_of[inode.nodeid] = wd

    def removed(self, inode: Inode) -> None:
        if not inode.is_dir:
            return
        with self._lock:
            wd = self._wd_of.pop(inode.nodeid, None)
            if wd is None or self._dirs.get(wd, (None,))[0] != inode.nodeid:
                return
            del self._dirs[wd]
            try:
                self.inotify.rm_watch(wd)
            except OSError as exc:       # EINVAL: the kernel dropped it already (directory deleted)
                log.debug("inotify_rm_watch(%d) of nodeid %d: %s", wd, inode.nodeid, exc)

    # -- the server loop -----------------------------------------------------------------------
    def drain(self) -> int:
        """Read every queued event (non-blocking) and bump the slots they concern; returns the
        number of events read (0: nothing was queued, at the cost of one zero-timeout poll)."""
        if not self.inotify.pending():
            return 0
        data = self.inotify.read()
        if not data:
            return 0
        count = 0
        with self._lock:
            while data:
                count += self._apply(data)
                if len(data) <= READ_SIZE - 2 * _MAX_EVENT:     # a short read: the queue was empty
                    break
                data = self.inotify.read()
        self.events += count
        return count

    def _apply(self, data: bytes) -> int:
        bump: set[int] = set()
        count = 0
        names = self._names
        known = self.inodes.known
        for wd, mask, _cookie, name in parse_events(data):
            count += 1
            if mask & IN_Q_OVERFLOW:
                self.overflows += 1
                log.warning("inotify queue overflowed: every version slot is bumped")
                self.table.bump_all()
                continue
            watched = self._dirs.get(wd)
            if watched is None:
                continue
            nodeid, dirfd = watched
            if mask & IN_IGNORED:              # the watch is gone (directory deleted, or rm_watch)
                del self._dirs[wd]
                if self._wd_of.get(nodeid) == wd:
                    del self._wd_of[nodeid]
                bump.add(nodeid)
                continue
            if not name:
                bump.add(nodeid)
                continue
            if mask & NAMESPACE_EVENTS:
                bump.add(nodeid)
                names.pop((wd, name), None)
            else:
                child = names.get((wd, name))
                if child is not None and known(child):
                    bump.add(child)
                    continue
            child = self._child(wd, dirfd, name)
            if child is not None:
                bump.add(child)
        if bump:
            self.table.bump(bump)
        return count

    def _child(self, wd: int, dirfd: int, name: bytes) -> int | None:
        """The nodeid the store knows as entry ``name`` of the directory (remembered), or None."""
        try:
            st = os.stat(name, dir_fd=dirfd, follow_symlinks=False)
        except OSError:
            return None                        # gone already (DELETE, MOVED_FROM, or raced away)
        child = self.inodes.nodeid_of((st.st_dev, st.st_ino))
        if child is not None:
            if len(self._names) >= _MAX_NAMES:
                self._names.clear()
            self._names[(wd, name)] = child
        return child

    def close(self) -> None:
        """Stop observing the store and close the inotify fd (watches go with it)."""
        self.inodes.remove_observer(self)
        with self._lock:
            self._dirs.clear()
            self._wd_of.clear()
            self._names.clear()
            self.inotify.close()
