"""How ``os`` presents a call: argument conversion, error objects, time conversion.

Shared by :mod:`~vfscluster.guest.gos` and :mod:`~vfscluster.guest.fdcalls` so that both raise
exactly what CPython's ``os`` module raises: ``OSError`` with the errno, the standard message and
the ``filename`` / ``filename2`` CPython attaches; TypeError / ValueError for arguments CPython
refuses before any system call.
"""

from __future__ import annotations

import errno
import logging
import math
import operator
import os
from typing import Any

from ..errors import ProtocolError
from .namei import oserror

__all__ = ["process_umask", "named", "errors", "fspath", "time_to_ns", "check_time", "c_off",
           "c_ssize", "c_int", "fileno_of", "check_rw", "bytes_like", "MAX_OFF"]

#: the largest file offset (``MAX_LFS_FILESIZE``, a FUSE super block's ``s_maxbytes``)
MAX_OFF = (1 << 63) - 1

log = logging.getLogger(__name__)


def process_umask() -> int:
    """This process's umask, read without changing it (``/proc/self/status``), else 0o022."""
    try:
        with open("/proc/self/status", "rb") as f:
            for line in f:
                if line.startswith(b"Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return 0o022


def c_off(value: Any) -> int:
    """An ``off_t`` argument as CPython's ``os`` converts it: TypeError unless an integer,
    OverflowError outside 64 bits (before any system call, before EINVAL for a negative one)."""
    v = operator.index(value)
    if not -(1 << 63) <= v < 1 << 63:
        raise OverflowError("Python int too large to convert to C long")
    return v


def c_ssize(value: Any) -> int:
    """A ``Py_ssize_t`` argument (a byte count) as ``os`` converts it (see :func:`c_off`)."""
    v = operator.index(value)
    if not -(1 << 63) <= v < 1 << 63:
        raise OverflowError("Python int too large to convert to C ssize_t")
    return v


def c_int(value: Any) -> int:
    """A C ``int`` argument (a descriptor, flags, a mode, ``whence``) as ``os`` converts it:
    TypeError unless an integer, OverflowError outside 32 bits."""
    v = operator.index(value)
    if not -(1 << 31) <= v < 1 << 31:
        raise OverflowError("Python int too large to convert to C int")
    return v


def fileno_of(value: Any) -> int:
    """The descriptor ``os.fsync`` and ``os.fdatasync`` take: an int, or an object with a
    ``fileno()`` method; ValueError for a negative one."""
    if isinstance(value, int):
        fd = c_int(value)
    else:
        method = getattr(value, "fileno", None)
        if method is None:
            raise TypeError("argument must be an int, or have a fileno() method.")
        fd = c_int(method())
    if fd < 0:
        raise ValueError(f"file descriptor cannot be a negative integer ({fd})")
    return fd


def check_rw(offset: int, count: int) -> None:
    """fs/read_write.c ``rw_verify_area``: a transfer that would end past the largest offset is
    EINVAL (checked after the descriptor's access mode, as vfs_read / vfs_write order them)."""
    if count > 0 and offset + count > MAX_OFF:
        raise oserror(errno.EINVAL)


def bytes_like(value: Any) -> bytes:
    """A bytes-like argument (``os.setxattr``'s value) as bytes; TypeError for anything else
    (``bytes(5)`` would make five NULs)."""
    if type(value) is bytes:
        return value
    try:
        return memoryview(value).tobytes()
    except TypeError:
        raise TypeError(f"a bytes-like object is required, not '{type(value).__name__}'") from None


def named(exc: OSError, filename: Any = None, filename2: Any = None) -> OSError:
    if filename is None:
        return OSError(exc.errno, exc.strerror)
    if filename2 is None:
        return OSError(exc.errno, exc.strerror, filename)
    return OSError(exc.errno, exc.strerror, filename, None, filename2)


class errors:
    """Context manager: attach file names to the OSErrors raised inside; a protocol error becomes
    EIO.  (A class rather than a ``@contextmanager`` generator: every GuestOS call enters one, and
    this costs a third as much.)"""

    __slots__ = ("filename", "filename2")

    def __init__(self, filename: Any = None, filename2: Any = None) -> None:
        self.filename = filename
        self.filename2 = filename2

    def __enter__(self) -> None:
        return None

    def __exit__(self, typ, exc, tb) -> bool:
        if typ is None:
            return False
        if issubclass(typ, OSError):
            raise named(exc, self.filename, self.filename2) from None
        if issubclass(typ, ProtocolError):
            log.warning("FUSE protocol error: %s", exc)
            raise named(oserror(errno.EIO), self.filename, self.filename2) from exc
        return False


def fspath(path: Any, func: str) -> tuple[bytes, Any]:
    """``(path as bytes, path as the caller gave it, after os.fspath)``.  TypeError, and
    ValueError for an embedded NUL, as ``os`` raises them."""
    try:
        p = os.fspath(path)
    except TypeError:
        raise TypeError(f"{func}: path should be string, bytes or os.PathLike, "
                        f"not {type(path).__name__}") from None
    raw = os.fsencode(p)
    if b"\0" in raw:
        raise ValueError(f"{func}: embedded null character in path")
    return raw, p


def check_time(ns: int) -> int:
    """A time in nanoseconds whose seconds must fit a ``time_t`` (OverflowError, as ``os.utime``)."""
    if not -(1 << 63) <= ns // 1_000_000_000 < 1 << 63:
        raise OverflowError("timestamp out of range for platform time_t")
    return ns


def time_to_ns(value: Any, func: str) -> int:
    """A ``times`` element as CPython converts it (_PyTime_ObjectToTimespec, ROUND_FLOOR)."""
    if isinstance(value, float):
        if math.isnan(value):
            raise ValueError("Invalid value NaN (not a number)")
        frac, whole = math.modf(value)
        nsec = math.floor(frac * 1e9)
        if nsec >= 1_000_000_000:
            nsec -= 1_000_000_000
            whole += 1
        elif nsec < 0:
            nsec += 1_000_000_000
            whole -= 1
        return int(whole) * 1_000_000_000 + nsec
    try:
        return int(value.__index__()) * 1_000_000_000
    except AttributeError:
        raise TypeError(f"{func}: 'times' must be either a tuple of two ints or None") from None
