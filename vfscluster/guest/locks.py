"""The lock calls of :class:`~vfscluster.guest.gos.GuestOS`: POSIX record locks (``fcntl``
F_GETLK / F_SETLK / F_SETLKW), ``lockf`` and BSD ``flock`` (Linux ``fs/fcntl.c``, ``fs/locks.c``,
``fs/fuse/file.c``; glibc ``lockf``).

API (errors are ``OSError`` with the errno Linux gives, without a file name, as ``fcntl`` /
``os`` raise them)::

    gos.fcntl_lock(fd, cmd, type, start=0, length=0, whence=os.SEEK_SET, *, timeout=None)
        cmd F_GETLK -> LockInfo(type, start, len, pid) of the conflicting lock, or
                       LockInfo(F_UNLCK, start, length, 0) (the arguments as given) if none
        cmd F_SETLK / F_SETLKW -> None
    gos.lockf(fd, cmd, len=0, *, timeout=None)     like os.lockf (F_LOCK, F_TLOCK, F_ULOCK, F_TEST)
    gos.flock(fd, op, *, timeout=None)             like fcntl.flock (LOCK_SH/EX/UN | LOCK_NB)

Owners: POSIX locks belong to the guest process (``GuestOS.lock_owner``, FUSE's ``lock_owner``;
every thread of it shares them), flock locks to the open file.  Checks, in the kernel's order:
EBADF (unknown descriptor, an ``O_PATH`` one), EINVAL (unknown cmd; F_GETLK of F_UNLCK; bad
whence; a range starting before 0), EOVERFLOW (a range past the largest offset), EINVAL (unknown
type), EBADF (F_SETLK(W) of a read lock on a file not open for reading, of a write lock on one not
open for writing — ``check_fmode_for_setlk``).  A conflict is EAGAIN for F_SETLK (EWOULDBLOCK =
EAGAIN for ``flock`` with LOCK_NB), a wait that would deadlock EDEADLK.

Where locks live: with the host's POSIX_LOCKS (resp. FLOCK_LOCKS) granted — vfs-hostd grants them
to a guest with a notification queue — they are the host's, shared by every guest of the host
(GETLK reports the holder's pid as its guest sent it: a guest process's pid).  Otherwise they are
guest-local (:class:`LocalLocks`), as Linux keeps them when the server has no lock support.  Locks
on an open FIFO are always guest-local: its file operations are the pipe's (fs/pipe.c), which
leave locking to fs/locks.c.

``timeout`` (seconds, None: no limit) bounds a wait (F_SETLKW, F_LOCK, a flock without LOCK_NB):
when it passes the request is withdrawn (FUSE_INTERRUPT) and the call fails with EINTR — unless
the lock was granted at the same moment, in which case the call succeeds and the lock is held,
as a Linux F_SETLKW whose signal came after the grant.  KeyboardInterrupt withdraws the wait the
same way, then propagates (the lock is held if the grant won).  There is no timer in a wait: a
SIGINT that CPython receives just before the waiting thread blocks is only acted on when the thread
wakes (CPython runs Python signal handlers between bytecodes; a lock acquire sees only a signal
that interrupts it) — give a ``timeout`` where a bounded wait matters.

Unlock on close: closing any descriptor of a file drops the process's POSIX locks on it (FLUSH
carries ``lock_owner``; for a directory, which gets no FLUSH, an explicit unlock is sent); the
last close of an open file drops its flock locks (RELEASE with RELEASE_FLOCK_UNLOCK).
"""

from __future__ import annotations

import errno
import fcntl
import itertools
import os
import threading
from typing import NamedTuple

from ..fuse.abi import RELEASE_FLOCK_UNLOCK, FileLock, InitFlags
from ..fuse.passthrough.locktable import QUEUED, LockTable
from .files import FdTable, OpenFile
from .namei import oserror

__all__ = ["LockInfo", "LockCalls", "LocalLocks", "OFFSET_MAX"]

OFFSET_MAX = (1 << 63) - 1
F_RDLCK, F_WRLCK, F_UNLCK = fcntl.F_RDLCK, fcntl.F_WRLCK, fcntl.F_UNLCK
_FLOCK_TYPES = {fcntl.LOCK_SH: F_RDLCK, fcntl.LOCK_EX: F_WRLCK, fcntl.LOCK_UN: F_UNLCK}
_LOCK_MAND = getattr(fcntl, "LOCK_MAND", 32)
_LOCAL = "local"          # the LockTable session of guest-local locks


class LockInfo(NamedTuple):
    """What F_GETLK reports (``struct flock`` with ``l_whence`` SEEK_SET): ``len`` 0 means to
    the end of the file."""

    type: int
    start: int
    len: int
    pid: int


def _owner_id(file: OpenFile) -> int:
    """FUSE lock_owner of an open file's flock locks (the kernel hashes the ``struct file``)."""
    return (id(file) * 0x9E3779B97F4A7C15) & 0xFFFF_FFFF_FFFF_FFFF


class LocalLocks:
    """Guest-local locks of one mount (every GuestOS of it): a :class:`LockTable` whose waits
    block the calling thread.  Keys are nodeids; flock locks belong to ``id(OpenFile)``."""

    def __init__(self) -> None:
        self.table = LockTable()
        self._tokens = itertools.count(1)

    def getlk(self, nodeid: int, owner: int, lock: FileLock) -> FileLock:
        got = self.table.getlk(nodeid, (_LOCAL, owner), lock.type, lock.start, lock.end)
        if got is None:
            return FileLock(lock.start, lock.end, F_UNLCK, 0)
        return FileLock(got.start, got.end, got.type, got.pid)

    def setlk(self, nodeid: int, owner: int, lock: FileLock, sleep: bool,
              timeout: float | None) -> None:
        if not sleep:
            self.table.setlk(nodeid, (_LOCAL, owner), lock.type, lock.start, lock.end, lock.pid)
            return
        self._blocking(lambda token, grant: self.table.setlkw(
            nodeid, (_LOCAL, owner), lock.type, lock.start, lock.end, lock.pid, token, grant),
            timeout)

    def flock(self, nodeid: int, file_id: int, ltype: int, nonblock: bool,
              timeout: float | None) -> None:
        op = {F_RDLCK: fcntl.LOCK_SH, F_WRLCK: fcntl.LOCK_EX, F_UNLCK: fcntl.LOCK_UN}[ltype]
        if nonblock or ltype == F_UNLCK:
            self.table.flock(nodeid, _LOCAL, file_id, op, nonblock=True)
            return
        self._blocking(lambda token, grant: self.table.flock(
            nodeid, _LOCAL, file_id, op, token=token, on_grant=grant), timeout)

    def release_owner(self, nodeid: int, owner: int) -> None:
        self.table.release_owner(nodeid, (_LOCAL, owner))

    def release_file(self, file_id: int) -> None:
        self.table.release_file(_LOCAL, file_id)

    def _blocking(self, request, timeout: float | None) -> None:
        """Make a request that may wait; wait for its grant up to ``timeout`` (module docstring:
        EINTR unless the grant came first; KeyboardInterrupt withdraws and propagates)."""
        token = next(self._tokens)
        granted = threading.Event()
        if request(token, lambda _t: granted.set()) is not QUEUED:
            return
        stopped = False
        try:
            got = granted.wait(timeout)
        except KeyboardInterrupt:
            stopped, got = True, granted.is_set()
        if not got and self.table.cancel(_LOCAL, token):
            if stopped:
                raise KeyboardInterrupt
            raise oserror(errno.EINTR)
        if stopped:                      # the grant won: the lock is held
            raise KeyboardInterrupt


class LockCalls:
    """The lock calls; mixed into GuestOS, which provides ``client``, ``_fds``, ``_file``,
    ``_size`` and ``lock_owner``."""

    _fds: FdTable
    lock_owner: int

    def _init_locks(self) -> None:
        self._lock_state = threading.Lock()
        self._posix_nodes: set[int] = set()      # nodeids this process sent host POSIX locks for
        self._flocked: dict[int, OpenFile] = {}   # id(file) -> file, for files that used flock

    # ================================================================== API

    def fcntl_lock(self, fd: int, cmd: int, type: int, start: int = 0, length: int = 0,
                   whence: int = os.SEEK_SET, *, timeout: float | None = None) -> LockInfo | None:
        """``fcntl(fd, cmd, struct flock{type, whence, start, length})`` for F_GETLK, F_SETLK,
        F_SETLKW (module docstring).  F_GETLK returns a :class:`LockInfo`."""
        with self._file(fd) as f:
            if f.is_path:
                raise oserror(errno.EBADF)
            if cmd not in (fcntl.F_GETLK, fcntl.F_SETLK, fcntl.F_SETLKW):
                raise oserror(errno.EINVAL)
            if cmd == fcntl.F_GETLK and type not in (F_RDLCK, F_WRLCK):
                raise oserror(errno.EINVAL)
            first, last = self._lock_range(f, start, length, whence)
            if type not in (F_RDLCK, F_WRLCK, F_UNLCK):
                raise oserror(errno.EINVAL)
            lock = FileLock(first, last, type, 0)
            if cmd == fcntl.F_GETLK:
                got = self._getlk(f, lock)
                if got.type == F_UNLCK:
                    return LockInfo(F_UNLCK, start, length, 0)
                size = 0 if got.end >= OFFSET_MAX else got.end - got.start + 1
                return LockInfo(got.type, got.start, size, got.pid)
            if (type == F_RDLCK and not f.readable) or (type == F_WRLCK and not f.writable):
                raise oserror(errno.EBADF)
            pid = 0 if type == F_UNLCK else self._lock_pid()
            self._setlk(f, FileLock(first, last, type, pid), cmd == fcntl.F_SETLKW, timeout)
            if type != F_UNLCK and self._fds.peek(fd) is not f:
                # fs/locks.c fcntl_setlk: the descriptor was closed while the lock was being
                # taken (a F_SETLKW waiting, another thread closing): its close could not drop
                # a lock granted after it, so drop this process's locks on the file here
                self._setlk(f, FileLock(0, OFFSET_MAX, F_UNLCK, 0), False, None)
                raise oserror(errno.EBADF)
            return None

    def lockf(self, fd: int, cmd: int, len: int = 0, *, timeout: float | None = None) -> None:
        """``os.lockf`` (glibc: a write lock from the file position over ``len`` bytes, negative
        meaning before it, 0 to the end).  F_TEST raises EACCES when another process holds a
        conflicting lock; an unknown cmd is EINVAL before the descriptor is looked at."""
        if cmd == os.F_TEST:
            got = self.fcntl_lock(fd, fcntl.F_GETLK, F_RDLCK, 0, len, os.SEEK_CUR)
            if got.type == F_UNLCK or got.pid == self._lock_pid():
                return None
            raise oserror(errno.EACCES)
        call = {os.F_ULOCK: (fcntl.F_SETLK, F_UNLCK), os.F_LOCK: (fcntl.F_SETLKW, F_WRLCK),
                os.F_TLOCK: (fcntl.F_SETLK, F_WRLCK)}.get(cmd)
        if call is None:
            raise oserror(errno.EINVAL)
        self.fcntl_lock(fd, call[0], call[1], 0, len, os.SEEK_CUR, timeout=timeout)
        return None

    def flock(self, fd: int, op: int, *, timeout: float | None = None) -> None:
        """``fcntl.flock``: LOCK_SH, LOCK_EX or LOCK_UN, with LOCK_NB not to wait (EWOULDBLOCK).
        Converting a held lock is not atomic (Linux drops it first).  EINVAL for an unknown
        operation (before the descriptor), then EBADF; LOCK_MAND is ignored, as Linux ignores it."""
        if op & _LOCK_MAND:           # fs/locks.c: "support has been removed and the request ignored"
            return None
        ltype = _FLOCK_TYPES.get(op & ~fcntl.LOCK_NB)
        if ltype is None:
            raise oserror(errno.EINVAL)             # before the descriptor is looked at
        with self._file(fd) as f:
            if f.is_path:
                raise oserror(errno.EBADF)
            nonblock = bool(op & fcntl.LOCK_NB)
            c = self.client
            with self._lock_state:
                self._flocked[id(f)] = f
            if c.flags & InitFlags.FLOCK_LOCKS and f.pipe_fd is None:
                lock = FileLock(0, OFFSET_MAX, ltype, 0 if ltype == F_UNLCK else self._lock_pid())
                c.setlk(f.nodeid, f.fh, _owner_id(f), lock, flock=True,
                        sleep=not nonblock and ltype != F_UNLCK, timeout=timeout)
            else:
                c.local_locks.flock(f.nodeid, id(f), ltype, nonblock, timeout)

    # ================================================================== plumbing

    def _lock_pid(self) -> int:
        creds = self.client.creds
        return creds.pid if creds is not None else os.getpid()

    def _lock_range(self, f: OpenFile, start: int, length: int, whence: int) -> tuple[int, int]:
        """fs/locks.c ``flock64_to_posix_lock``: the inclusive [first, last] of a struct flock."""
        if whence == os.SEEK_SET:
            base = 0
        elif whence == os.SEEK_CUR:
            base = f.pos
        elif whence == os.SEEK_END:
            base = self._size(f)
        else:
            raise oserror(errno.EINVAL)
        if start > OFFSET_MAX - base:
            raise oserror(errno.EOVERFLOW)
        first = base + start
        if first < 0:
            raise oserror(errno.EINVAL)
        if length > 0:
            if length - 1 > OFFSET_MAX - first:
                raise oserror(errno.EOVERFLOW)
            return first, first + length - 1
        if length < 0:
            if first + length < 0:
                raise oserror(errno.EINVAL)
            return first + length, first - 1
        return first, OFFSET_MAX

    def _remote_posix(self) -> bool:
        return bool(self.client.flags & InitFlags.POSIX_LOCKS)

    def _getlk(self, f: OpenFile, lock: FileLock) -> FileLock:
        if self._remote_posix() and f.pipe_fd is None:
            return self.client.getlk(f.nodeid, f.fh, self.lock_owner, lock)
        return self.client.local_locks.getlk(f.nodeid, self.lock_owner, lock)

    def _setlk(self, f: OpenFile, lock: FileLock, sleep: bool, timeout: float | None) -> None:
        c = self.client
        if not self._remote_posix() or f.pipe_fd is not None:
            c.local_locks.setlk(f.nodeid, self.lock_owner, lock, sleep, timeout)
            return
        with self._lock_state:
            self._posix_nodes.add(f.nodeid)
        c.setlk(f.nodeid, f.fh, self.lock_owner, lock, sleep=sleep, timeout=timeout)

    def _granted(self) -> InitFlags:
        """The INIT flags, or none once the mount is gone (closing still works then)."""
        info = self.client.info
        return InitFlags(0) if info is None else info.flags

    def _unlock_on_close(self, f: OpenFile, flushed: bool) -> None:
        """``close`` of a descriptor of ``f``: drop this process's POSIX locks on the file
        (FLUSH did it on the host when ``flushed``)."""
        if not self._granted() & InitFlags.POSIX_LOCKS or f.pipe_fd is not None:
            local = getattr(self.client, "_local_locks", None)    # made by the first local lock
            if local is not None:
                local.release_owner(f.nodeid, self.lock_owner)
            return
        with self._lock_state:
            if flushed or f.nodeid not in self._posix_nodes:
                return
        if f.fh is not None:
            self.client.setlk(f.nodeid, f.fh, self.lock_owner, FileLock(0, OFFSET_MAX, F_UNLCK, 0))

    def _flock_release(self, f: OpenFile) -> tuple[int, int]:
        """The last reference to ``f`` went: ``(release_flags, lock_owner)`` for its RELEASE
        (RELEASE_FLOCK_UNLOCK if it used flock); guest-local flock locks are dropped here."""
        with self._lock_state:
            used = self._flocked.pop(id(f), None) is not None
        if not used:
            return 0, 0
        if not self._granted() & InitFlags.FLOCK_LOCKS or f.pipe_fd is not None:
            self.client.local_locks.release_file(id(f))
            return 0, 0
        return RELEASE_FLOCK_UNLOCK, _owner_id(f)
