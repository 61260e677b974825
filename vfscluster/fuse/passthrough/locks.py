"""POSIX and BSD locks for GETLK / SETLK, as open-file-description locks on a handle's fd.

OFD locks (``F_OFD_GETLK`` / ``F_OFD_SETLK``) belong to the open file description, i.e. to one
FUSE fh: two guests' opens of a file conflict with each other like two local processes' opens,
and closing some other fd of the host process never drops them (classic ``F_SETLK`` locks are
per process and would all be lost at the first close).  The cost: every lock owner of one fh
shares the fh's locks.  ``LK_FLOCK`` requests are BSD ``flock`` on the same fd.

FUSE's ``fuse_file_lock.end`` is inclusive, ``OFFSET_MAX`` meaning "to the end of the file";
``struct flock`` counts a length, 0 meaning the same.
"""

from __future__ import annotations

import errno
import fcntl
import os
import struct

from ..abi import LK_FLOCK, FileLock

OFFSET_MAX = (1 << 63) - 1
_FLOCK = struct.Struct("hhqqi4x")  # struct flock on 64-bit Linux
_FLOCK_OPS = {fcntl.F_RDLCK: fcntl.LOCK_SH, fcntl.F_WRLCK: fcntl.LOCK_EX, fcntl.F_UNLCK: fcntl.LOCK_UN}


def _einval() -> OSError:
    return OSError(errno.EINVAL, os.strerror(errno.EINVAL))


def to_flock(lock: FileLock) -> bytes:
    """A ``struct flock`` for ``lock``; EINVAL for a bad type or range."""
    if lock.type not in _FLOCK_OPS or lock.start > OFFSET_MAX or lock.end < lock.start:
        raise _einval()
    length = 0 if lock.end >= OFFSET_MAX else lock.end - lock.start + 1
    return _FLOCK.pack(lock.type, os.SEEK_SET, lock.start, length, 0)


def getlk(fd: int, lock: FileLock, flags: int) -> FileLock:
    """The lock that would block ``lock`` on ``fd``, or ``lock`` with type F_UNLCK.  The holder's
    pid is not known for OFD locks: 0."""
    if flags & LK_FLOCK:
        raise _einval()  # the kernel never sends GETLK for flock
    res = fcntl.fcntl(fd, fcntl.F_OFD_GETLK, to_flock(lock))
    ltype, _whence, start, length, pid = _FLOCK.unpack(res)
    if ltype == fcntl.F_UNLCK:
        return FileLock(lock.start, lock.end, fcntl.F_UNLCK, 0)
    end = OFFSET_MAX if length == 0 else start + length - 1
    return FileLock(start, end, ltype, max(pid, 0))


def setlk(fd: int, lock: FileLock, flags: int) -> None:
    """Take or release ``lock`` on ``fd`` without waiting (EAGAIN on a conflict)."""
    if flags & LK_FLOCK:
        op = _FLOCK_OPS.get(lock.type)
        if op is None:
            raise _einval()
        fcntl.flock(fd, op | fcntl.LOCK_NB)
        return
    fcntl.fcntl(fd, fcntl.F_OFD_SETLK, to_flock(lock))
