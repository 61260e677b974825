"""The few Linux calls ``os`` does not offer, through ctypes: ``renameat2`` with flags,
``fallocate`` with a mode, ``syncfs``, ``utimensat`` with ``UTIME_NOW``/``UTIME_OMIT``,
``cachestat`` and the per-thread ``setfsuid``/``setfsgid`` (:func:`fs_creds`).

Each raises ``OSError`` with the call's errno, like the ``os`` functions do.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from collections.abc import Iterator
from contextlib import contextmanager

_libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)

RENAME_NOREPLACE = 1 << 0
RENAME_EXCHANGE = 1 << 1
RENAME_WHITEOUT = 1 << 2

UTIME_NOW = (1 << 30) - 1
UTIME_OMIT = (1 << 30) - 2

AT_FDCWD = -100


def _check(res: int, *names) -> int:
    if res == -1:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), *names)
    return res


_renameat2 = _libc.renameat2
_renameat2.argtypes = (ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint)
_renameat2.restype = ctypes.c_int


def renameat2(olddirfd: int, oldname: bytes, newdirfd: int, newname: bytes, flags: int) -> None:
    """``renameat2(2)``."""
    _check(_renameat2(olddirfd, oldname, newdirfd, newname, flags), oldname, None, newname)


_fallocate = _libc.fallocate64
_fallocate.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64)
_fallocate.restype = ctypes.c_int


def fallocate(fd: int, mode: int, offset: int, length: int) -> None:
    """``fallocate(2)`` with its ``mode`` bits (FALLOC_FL_KEEP_SIZE, PUNCH_HOLE...)."""
    if not (0 <= offset < 1 << 63 and 0 <= length < 1 << 63):
        raise OSError(22, os.strerror(22))
    _check(_fallocate(fd, mode, offset, length))


_syncfs = _libc.syncfs
_syncfs.argtypes = (ctypes.c_int,)
_syncfs.restype = ctypes.c_int


def syncfs(fd: int) -> None:
    """``syncfs(2)``: write back the file system holding ``fd``."""
    _check(_syncfs(fd))


class _Timespec(ctypes.Structure):
    _fields_ = (("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long))


_utimensat = _libc.utimensat
_utimensat.argtypes = (ctypes.c_int, ctypes.c_char_p, ctypes.POINTER(_Timespec), ctypes.c_int)
_utimensat.restype = ctypes.c_int


def _ts(ns: int | None, now: bool) -> tuple[int, int]:
    if now:
        return 0, UTIME_NOW
    if ns is None:
        return 0, UTIME_OMIT
    return divmod(ns, 1_000_000_000)


def utimensat(
    path: bytes | str,
    atime_ns: int | None,
    mtime_ns: int | None,
    atime_now: bool = False,
    mtime_now: bool = False,
    dirfd: int = AT_FDCWD,
) -> None:
    """``utimensat(dirfd, path, times, 0)``: a time left ``None`` is not changed (UTIME_OMIT),
    ``*_now`` sets the current time (UTIME_NOW)."""
    times = (_Timespec * 2)(_Timespec(*_ts(atime_ns, atime_now)), _Timespec(*_ts(mtime_ns, mtime_now)))
    _check(_utimensat(dirfd, os.fsencode(path), times, 0), path)


# cachestat(2) (Linux 6.5): how much of a file range is in the page cache.  x86-64 and arm64
# number it alike (the generic table); libc has no wrapper yet.
_SYS_CACHESTAT = 451


class _CachestatRange(ctypes.Structure):
    _fields_ = [("off", ctypes.c_uint64), ("len", ctypes.c_uint64)]


class _Cachestat(ctypes.Structure):
    _fields_ = [(name, ctypes.c_uint64) for name in
                ("nr_cache", "nr_dirty", "nr_writeback", "nr_evicted", "nr_recently_evicted")]


_syscall = _libc.syscall
_syscall.restype = ctypes.c_long


def cached_pages(fd: int, offset: int, length: int) -> int:
    """``cachestat(2)``: how many pages of ``[offset, offset + length)`` of ``fd`` are in the page
    cache.  OSError with its errno (ENOSYS before Linux 6.5, EBADF, EOPNOTSUPP for a file with
    no page cache of its own)."""
    rng = _CachestatRange(offset, length)
    out = _Cachestat()
    _check(_syscall(_SYS_CACHESTAT, ctypes.c_int(fd), ctypes.byref(rng), ctypes.byref(out),
                    ctypes.c_uint(0)))
    return out.nr_cache


_setfsuid = _libc.setfsuid
_setfsuid.argtypes = (ctypes.c_uint,)
_setfsuid.restype = ctypes.c_int
_setfsgid = _libc.setfsgid
_setfsgid.argtypes = (ctypes.c_uint,)
_setfsgid.restype = ctypes.c_int


@contextmanager
def fs_creds(uid: int, gid: int) -> Iterator[None]:
    """The calling thread's file-system uid and gid set to ``uid``/``gid`` for the calls inside,
    then restored (``setfsuid(2)``/``setfsgid(2)`` act on the calling thread only; other threads
    of the process keep theirs).  With a non-zero fsuid the kernel also drops the thread's
    file-system capabilities (CAP_DAC_OVERRIDE, CAP_FOWNER, CAP_FSETID, CAP_MKNOD...): what it
    does inside is checked as that user's — virtiofsd's ``lo_change_cred``.  Needs
    CAP_SETUID/CAP_SETGID; PermissionError if a switch did not take."""
    old_gid = _setfsgid(gid)
    old_uid = _setfsuid(uid)
    try:
        if _setfsuid(uid) != uid or _setfsgid(gid) != gid:     # (each returns the current id)
            raise PermissionError(f"setfsuid/setfsgid to {uid}:{gid} did not take")
        yield
    finally:
        _setfsuid(old_uid)
        _setfsgid(old_gid)
