"""The vectored descriptor calls of :class:`~vfscluster.guest.gos.GuestOS` (``fs/read_write.c``
``vfs_readv``/``vfs_writev``, the ``preadv2``/``pwritev2`` system calls CPython uses): ``readv``,
``writev``, ``preadv``, ``pwritev`` — a mixin over :mod:`.fdcalls`'s reading and writing.

One vectored call is one transfer: the buffers are gathered into one WRITE (or filled from one
READ), as FUSE's ``write_iter``/``read_iter`` take the whole iterator.  Checks in CPython's and
the kernel's order:

* arguments: the descriptor, the offset (OverflowError outside ``off_t``) and the flags (C
  ``int``), then TypeError unless ``buffers`` is a sequence (``"readv() arg 2 must be a
  sequence"``), then each buffer: bytes-like (TypeError), writable for reading (BufferError);
* an offset below -1 is EINVAL before the descriptor is looked at; -1 means the file position,
  which then moves (``preadv2``);
* EBADF (not open, ``O_PATH``, not open for reading / writing), then EINVAL for more than
  ``UIO_MAXIOV`` (1024) buffers; nothing at all to transfer returns 0 — even for a directory
  and whatever the flags; then EINVAL past the largest offset;
* flags (``RWF_*``): ``RWF_HIPRI`` means nothing here, ``RWF_DSYNC``/``RWF_SYNC`` make a write
  reach the host's disk (FSYNC after it, as ``generic_write_sync``), ``RWF_APPEND`` writes at the
  end (with ``RWF_NOAPPEND`` too: EINVAL); ``RWF_NOAPPEND`` on an ``O_APPEND`` file is
  EOPNOTSUPP, where Linux writes at the offset (the host's handle is open ``O_APPEND`` as well,
  so the write would land at the end); ``RWF_NOWAIT``,
  ``RWF_ATOMIC``, ``RWF_DONTCACHE`` and unknown bits are EOPNOTSUPP (a FUSE file has neither
  FMODE_NOWAIT nor atomic or uncached writes); a directory takes no flag but ``RWF_HIPRI``
  (EOPNOTSUPP), else it is EISDIR.

An open FIFO's vectored calls are the ``os`` calls on its guest-local pipe (:mod:`.fifo`).
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from typing import Any

from .fdcalls import MAX_RW_COUNT
from .files import OpenFile
from .namei import oserror
from .osargs import c_int, c_off, check_rw, named

__all__ = ["VectorCalls", "UIO_MAXIOV"]

UIO_MAXIOV = 1024
RWF_HIPRI, RWF_DSYNC, RWF_SYNC, RWF_APPEND, RWF_NOAPPEND = 0x01, 0x02, 0x04, 0x10, 0x20
_RWF_TAKEN = RWF_HIPRI | RWF_DSYNC | RWF_SYNC | RWF_APPEND | RWF_NOAPPEND


def _views(buffers: Any, func: str, writable: bool) -> list[memoryview]:
    """The buffers as CPython's ``iov_setup`` takes them (PySequence_Check, then a buffer of
    each item, writable for reading)."""
    if isinstance(buffers, dict) or not hasattr(type(buffers), "__getitem__"):
        raise TypeError(f"{func}() arg 2 must be a sequence")
    views: list[memoryview] = []
    try:
        for i in range(len(buffers)):
            item = buffers[i]
            try:
                view = memoryview(item)
            except TypeError:
                raise TypeError(f"a bytes-like object is required, not "
                                f"'{type(item).__name__}'") from None
            views.append(view)
            if writable and view.readonly:
                raise BufferError("Object is not writable.")
            if not view.c_contiguous:
                raise BufferError("memoryview: underlying buffer is not C-contiguous")
    except BaseException:
        _release(views)
        raise
    return views


def _release(views: list[memoryview]) -> None:
    for view in views:
        view.release()


def _pipe_vector(fd: int, views: list[memoryview], func: str, offset: int, flags: int) -> int:
    """The vectored call ``func`` on a FIFO's pipe descriptor, as ``os`` makes it."""
    if func == "readv":
        return os.readv(fd, views)
    if func == "writev":
        return os.writev(fd, views)
    if func == "preadv2":
        return os.preadv(fd, views, offset, flags)
    return os.pwritev(fd, views, offset, flags)


def _offset(offset: Any) -> int:
    """``preadv``/``pwritev``'s offset: -1 is the file position; below it EINVAL (unnamed)."""
    offset = c_off(offset)
    if offset < -1:
        raise named(oserror(errno.EINVAL))
    return offset


class VectorCalls:
    """readv, writev, preadv, pwritev; mixed into GuestOS (over :class:`.FdCalls`)."""

    _file: Callable
    _read_at: Callable
    _write: Callable
    _size: Callable
    _fsync: Callable
    _fsync_file: Callable

    def readv(self, fd: int, buffers: Any) -> int:
        """``os.readv``: fill ``buffers`` (writable bytes-like objects, in order) from the file
        position, which moves; the number of bytes read (0 at the end of the file)."""
        return self._vector(c_int(fd), buffers, "readv", -1, 0, read=True)

    def preadv(self, fd: int, buffers: Any, offset: int, flags: int = 0) -> int:
        """``os.preadv``: :meth:`readv` at ``offset`` (the position does not move; -1: at and
        moving the position)."""
        fd, offset, flags = c_int(fd), c_off(offset), c_int(flags)
        return self._vector(fd, buffers, "preadv2", offset, flags, read=True)   # (CPython's word)

    def writev(self, fd: int, buffers: Any) -> int:
        """``os.writev``: write ``buffers`` (bytes-like objects, in order) at the file position
        (at the end with O_APPEND), which moves; the number of bytes written."""
        return self._vector(c_int(fd), buffers, "writev", -1, 0, read=False)

    def pwritev(self, fd: int, buffers: Any, offset: int, flags: int = 0) -> int:
        """``os.pwritev``: :meth:`writev` at ``offset`` (at the end with O_APPEND, as on
        Linux; the position does not move; -1: at and moving the position)."""
        fd, offset, flags = c_int(fd), c_off(offset), c_int(flags)
        return self._vector(fd, buffers, "pwritev", offset, flags, read=False)

    def _vector(self, fd: int, buffers: Any, func: str, offset: int, flags: int, *,
                read: bool) -> int:
        views = _views(buffers, func, writable=read)
        try:
            _offset(offset)
            with self._file(fd) as f:
                if f.pipe_fd is not None:
                    return _pipe_vector(f.pipe_fd, views, func, offset, flags)
                if not (f.readable if read else f.writable):
                    raise oserror(errno.EBADF)
                if len(views) > UIO_MAXIOV:
                    raise oserror(errno.EINVAL)
                total = min(sum(v.nbytes for v in views), MAX_RW_COUNT)
                if not total:
                    return 0
                if offset == -1:
                    with f.pos_lock:
                        n, f.pos = self._transfer(f, views, f.pos, total, flags, read, True)
                else:
                    n, _ = self._transfer(f, views, offset, total, flags, read, False)
                if not read and flags & (RWF_DSYNC | RWF_SYNC):
                    self._fsync_file(f, not flags & RWF_SYNC)      # this file, whatever fd is now
            return n
        finally:
            _release(views)

    def _transfer(self, f: OpenFile, views: list[memoryview], offset: int, total: int,
                  flags: int, read: bool, at_pos: bool) -> tuple[int, int]:
        """Check (fs/read_write.c order), then READ or WRITE: ``(bytes, offset after)``."""
        check_rw(offset, total)
        if f.is_dir:
            raise oserror(errno.EOPNOTSUPP if flags & ~RWF_HIPRI else errno.EISDIR)
        if flags & ~_RWF_TAKEN:
            raise oserror(errno.EOPNOTSUPP)
        if flags & RWF_APPEND and flags & RWF_NOAPPEND:
            raise oserror(errno.EINVAL)
        if read:
            data = self._read_at(f, offset, total)
            done = 0
            for view in views:
                part = data[done:done + view.nbytes]
                view.cast("B")[:len(part)] = part
                done += len(part)
                if done == len(data):
                    break
            return len(data), offset + len(data)
        if flags & RWF_NOAPPEND and f.flags & os.O_APPEND:
            # the host's handle is open O_APPEND too: its write would land at the end
            raise oserror(errno.EOPNOTSUPP)
        appending = f.flags & os.O_APPEND or flags & RWF_APPEND
        if appending:
            offset = self._size(f)
        n = self._write(f, offset, memoryview(b"".join(views)))
        return n, offset + n if at_pos else offset
