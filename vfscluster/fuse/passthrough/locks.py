"""Locks between the guests of one host: GETLK / SETLK / SETLKW served from a
:class:`~.locktable.LockTable`.

**The host takes no lock on the host files.**  POSIX record locks and BSD ``flock`` locks live in
the table, which every guest session of this vfs-hostd shares: guests lock against each other
(shared/exclusive, byte ranges, SETLKW that waits for another guest, EDEADLK across guests,
release when a guest closes, unmounts or dies), but a process on the host outside vfs-hostd
neither sees the guests' locks nor is seen by them (the host kernel knows nothing of them).  The
previous implementation (open-file-description locks on the handle fds) made the host kernel the
lock manager, so a SETLKW could only have waited by blocking a server thread.

Keys and owners (what Linux ``fs/locks.c`` keys them by):

* the key of a file is ``(st_dev, st_ino)`` of the handle's fd, the same in every session;
* POSIX locks belong to ``(session, fuse lock_owner)`` (the guest process), flock locks to the
  open file ``(session, fh)``.

A SETLKW that has to wait is *parked*: :meth:`HostLocks.setlkw` registers the request's
completion ``done(error)`` under ``(session, unique)`` and returns True; ``done`` is then called
exactly once, from whichever thread settles it, with

* ``0`` when the lock is granted (another guest unlocked, closed or went away),
* ``-EINTR`` when :meth:`HostLocks.cancel` withdrew it (FUSE_INTERRUPT),
* ``-EBADF`` when the waiting flock's file was released under it,
* ``-ENOTCONN`` when the session ended (DESTROY; after a disconnect nobody is told).

A grant and a cancel racing each other are settled by the table: exactly one of them wins, so
the request is completed once (a cancel that lost returns False: the grant is being delivered).
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import threading
from collections.abc import Callable

from ..abi import LK_FLOCK, FileLock
from ..filesystem import Context
from .confine import oserror
from .locktable import F_RDLCK, F_UNLCK, F_WRLCK, FLOCK_OPS, OFFSET_MAX, QUEUED, LockTable

__all__ = ["HostLocks", "Done", "OFFSET_MAX", "lock_key"]

log = logging.getLogger(__name__)

Done = Callable[[int], object]
"""Completion of a parked SETLKW: called once with 0 or a negative errno."""


def lock_key(fd: int) -> tuple[int, int]:
    """The lock key of the file open as ``fd``: ``(st_dev, st_ino)``."""
    st = os.fstat(fd)
    return st.st_dev, st.st_ino


def check_mode(fd: int, ltype: int) -> None:
    """fs/locks.c ``check_fmode_for_setlk``: a read lock needs the file open for reading, a
    write lock open for writing (EBADF).  The host fd's mode is the guest's, or wider (a
    writeback session's write-only files are opened read-write on the host)."""
    acc = fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE
    if (ltype == F_RDLCK and acc == os.O_WRONLY) or (ltype == F_WRLCK and acc == os.O_RDONLY):
        raise oserror(errno.EBADF)


class HostLocks:
    """The host's lock service: a :class:`LockTable` plus the parked requests' completions.
    Thread-safe."""

    def __init__(self) -> None:
        self.table = LockTable()
        self._mutex = threading.Lock()
        self._parked: dict[tuple[int, int], Done] = {}

    # ---- requests ---------------------------------------------------------------------------

    def getlk(self, key, session: int, owner: int, lock: FileLock, flags: int) -> FileLock:
        """GETLK: the lock of another owner that would block ``lock`` (its range, type and the
        pid its guest sent), or ``lock`` with type F_UNLCK.  EINVAL for flock (the kernel never
        asks), an F_UNLCK or unknown type, a bad range."""
        if flags & LK_FLOCK:
            raise oserror(errno.EINVAL)
        got = self.table.getlk(key, (session, owner), lock.type, lock.start, lock.end)
        if got is None:
            return FileLock(lock.start, lock.end, F_UNLCK, 0)
        return FileLock(got.start, got.end, got.type, got.pid)

    def setlk(self, key, fd: int, session: int, fh: int, owner: int, lock: FileLock,
              flags: int) -> None:
        """SETLK: take, change or release ``lock`` without waiting: EAGAIN (EWOULDBLOCK for
        flock) on a conflict, EBADF for a POSIX lock the file's open mode does not allow, EINVAL
        for a bad type or range."""
        if flags & LK_FLOCK:
            self.table.flock(key, session, fh, self._flock_op(lock), nonblock=True)
            return
        check_mode(fd, lock.type)
        self.table.setlk(key, (session, owner), lock.type, lock.start, lock.end, lock.pid)

    def setlkw(self, key, fd: int, session: int, fh: int, owner: int, lock: FileLock,
               flags: int, unique: int, done: Done) -> bool:
        """SETLKW: like :meth:`setlk` when the lock can be had now (False: done, ``done`` is not
        called).  Otherwise EDEADLK if waiting would close a cycle of waiting owners (POSIX
        only, as in Linux), else the request is parked under ``(session, unique)`` and True is
        returned: ``done`` will be called once (module docstring).  EINVAL if that unique is
        parked already."""
        tag = (session, unique)
        with self._mutex:
            if tag in self._parked:
                raise oserror(errno.EINVAL)
            self._parked[tag] = done       # before the table may grant it from another thread
        try:
            if flags & LK_FLOCK:
                outcome = self.table.flock(key, session, fh, self._flock_op(lock), token=unique,
                                           on_grant=self._granter(tag))
            else:
                check_mode(fd, lock.type)
                outcome = self.table.setlkw(key, (session, owner), lock.type, lock.start,
                                            lock.end, lock.pid, unique, self._granter(tag))
        except BaseException:
            self._take(tag)
            raise
        if outcome is not QUEUED:
            self._take(tag)
            return False
        return True

    def cancel(self, session: int, unique: int) -> bool:
        """FUSE_INTERRUPT of ``unique``: if it is parked, withdraw it and complete it with
        -EINTR (True).  False if it is not parked (granted meanwhile, completed, unknown)."""
        if not self.table.cancel(session, unique):
            return False
        self._complete((session, unique), -errno.EINTR)
        return True

    # ---- closing ----------------------------------------------------------------------------

    def release_owner(self, key, session: int, owner: int) -> None:
        """Unlock-on-close (FLUSH, or RELEASE with RELEASE_FLUSH): drop the POSIX locks of
        ``(session, owner)`` on ``key``."""
        self.table.release_owner(key, (session, owner))

    def release_file(self, session: int, fh: int) -> None:
        """RELEASE / RELEASEDIR of ``fh``: drop its flock locks; a flock request still parked on
        it is completed with -EBADF."""
        for unique in self.table.release_file(session, fh):
            self._complete((session, unique), -errno.EBADF)

    def release_session(self, session: int, *, tell: bool = True) -> None:
        """The session ended: drop every lock and waiter it had.  Parked requests are completed
        with -ENOTCONN when ``tell`` (DESTROY: the guest is still there), else forgotten."""
        for unique in self.table.release_session(session):
            done = self._take((session, unique))
            if tell and done is not None:
                self._call(done, -errno.ENOTCONN, (session, unique))

    def shut_down(self) -> None:
        """The server is going away: every parked request is withdrawn and completed with
        -ENOTCONN now, so that the releases of the sessions that follow grant nobody (a waiter
        would be told it holds a lock on a host that is gone)."""
        with self._mutex:
            tags = list(self._parked)
        for session, unique in tags:
            if self.table.cancel(session, unique):
                self._complete((session, unique), -errno.ENOTCONN)

    def parked(self, session: int | None = None) -> int:
        """How many requests are parked (of ``session``, or all)."""
        with self._mutex:
            return sum(1 for s, _ in self._parked if session is None or s == session)

    # ---- internals --------------------------------------------------------------------------

    @staticmethod
    def _flock_op(lock: FileLock) -> int:
        op = FLOCK_OPS.get(lock.type)
        if op is None:
            raise oserror(errno.EINVAL)
        return op

    def _granter(self, tag: tuple[int, int]) -> Callable[[object], None]:
        return lambda _token: self._complete(tag, 0)

    def _take(self, tag: tuple[int, int]) -> Done | None:
        with self._mutex:
            return self._parked.pop(tag, None)

    def _complete(self, tag: tuple[int, int], error: int) -> None:
        done = self._take(tag)
        if done is None:      # the table settles each waiter once: this is a bug if it happens
            log.error("lock request %r completed twice (error %d): ignored", tag, error)
            return
        self._call(done, error, tag)

    @staticmethod
    def _call(done: Done, error: int, tag) -> None:
        try:
            done(error)
        except Exception:      # a broken notification path must not break the table's caller
            log.exception("completing lock request %r (error %d) failed", tag, error)


class LockOps:
    """The FileSystem lock operations of :class:`~.fs.PassthroughFs`, served from its
    :class:`HostLocks` (``self.locks``) on the fds of its open handles (``self.handles``)."""

    def getlk(self, ctx: Context, nodeid: int, fh: int, owner: int, lock: FileLock,
              flags: int) -> FileLock:
        """The lock of another owner (any session) that blocks ``lock``: see HostLocks.getlk."""
        fd = self.handles.get(ctx.session, fh).fd
        return self.locks.getlk(lock_key(fd), ctx.session, owner, lock, flags)

    def setlk(self, ctx: Context, nodeid: int, fh: int, owner: int, lock: FileLock, flags: int,
              sleep: bool) -> None:
        """SETLK; SETLKW (``sleep``) without a completion: granted now, or EOPNOTSUPP where it
        would have to wait."""
        fd = self.handles.get(ctx.session, fh).fd
        key = lock_key(fd)
        if not sleep:
            self.locks.setlk(key, fd, ctx.session, fh, owner, lock, flags)
            return
        try:
            self.locks.setlk(key, fd, ctx.session, fh, owner, lock, flags)
        except BlockingIOError:
            raise oserror(errno.EOPNOTSUPP) from None

    def setlkw(self, ctx: Context, nodeid: int, fh: int, owner: int, lock: FileLock, flags: int,
               done: Done) -> bool:
        """SETLKW that may wait: True if parked under ``(ctx.session, ctx.unique)``, and then
        ``done(0 | -errno)`` is called once later (HostLocks.setlkw); False if already done."""
        fd = self.handles.get(ctx.session, fh).fd
        return self.locks.setlkw(lock_key(fd), fd, ctx.session, fh, owner, lock, flags,
                                 ctx.unique, done)

    def interrupt(self, session: int, unique: int) -> bool:
        """FUSE_INTERRUPT: withdraw the parked request ``unique`` of ``session`` (its completion
        gets -EINTR); False if there is none."""
        return self.locks.cancel(session, unique)
