"""The passthrough file system's operations on an open file handle: READ, WRITE, FLUSH, RELEASE,
FSYNC, FALLOCATE, LSEEK, COPY_FILE_RANGE — each the host's own system call on the handle's fd
(a mixin of :class:`~.fs.PassthroughFs`, whose ``handles``, ``locks`` and ``dax`` it uses).
OPEN and CREATE, which make handles, are in :mod:`.fs`.
"""

from __future__ import annotations

import errno
import mmap
import os

from ..abi import WRITE_KILL_SUIDGID
from ..filesystem import Context
from . import syscalls
from .confine import einval
from .handles import close_handle
from .locks import lock_key

_PAGE = mmap.PAGESIZE
FALLOC_FL_COLLAPSE_RANGE = 0x08
_IOV_MAX = os.sysconf("SC_IOV_MAX") if hasattr(os, "sysconf") else 1024


class HandleOps:
    """READ ... COPY_FILE_RANGE on the handles of :class:`~.fs.PassthroughFs`."""

    def read(self, ctx: Context, nodeid: int, fh: int, offset: int, size: int,
             bufs: list[memoryview]) -> int:
        fd = self.handles.get(ctx.session, fh).fd
        return _vector_io(os.preadv, fd, bufs, offset)

    def read_is_cached(self, session: int, fh: int, offset: int, size: int) -> bool:
        """``cachestat(2)``: every page of the range is in the host's page cache.  False for an
        unknown handle, a range reaching past the file's cached end, or a kernel without
        cachestat (before 6.5: then it is not asked again)."""
        if not self._cachestat or size <= 0 or offset < 0:
            return False
        try:
            fd = self.handles.get(session, fh).fd
            pages = syscalls.cached_pages(fd, offset, size)
        except OSError as exc:
            if exc.errno == errno.ENOSYS:
                self._cachestat = False
            return False
        return pages >= (offset + size - 1) // _PAGE - offset // _PAGE + 1

    def write(self, ctx: Context, nodeid: int, fh: int, offset: int, bufs: list[memoryview],
              flags: int) -> int:
        fd = self.handles.get(ctx.session, fh).fd
        n = _vector_io(os.pwritev, fd, bufs, offset)
        if flags & WRITE_KILL_SUIDGID:
            self._kill_suidgid(fd)
        self._grown(ctx, nodeid)
        return n

    def flush(self, ctx: Context, nodeid: int, fh: int, lock_owner: int) -> None:
        """The guest closed a descriptor: its process's POSIX locks on the file go."""
        handle = self.handles.get(ctx.session, fh)
        self.locks.release_owner(lock_key(handle.fd), ctx.session, lock_owner)

    def release(self, ctx: Context, nodeid: int, fh: int, flags: int, flush: bool,
                flock_release: bool, lock_owner: int | None) -> None:
        """Closes ``fh``; drops its flock locks (whatever ``flock_release`` says: a closed file
        holds nothing) and, with ``flush``, the POSIX locks of ``lock_owner``."""
        self._release_handle(ctx, fh, lock_owner if flush else None)

    def _release_handle(self, ctx: Context, fh: int, lock_owner: int | None) -> None:
        handle = self.handles.remove(ctx.session, fh)
        try:
            if lock_owner is not None:
                self.locks.release_owner(lock_key(handle.fd), ctx.session, lock_owner)
            self.locks.release_file(ctx.session, fh)
        finally:
            close_handle(handle)

    def fsync(self, ctx: Context, nodeid: int, fh: int, datasync: bool) -> None:
        fd = self.handles.get(ctx.session, fh).fd
        (os.fdatasync if datasync else os.fsync)(fd)

    def fallocate(self, ctx: Context, nodeid: int, fh: int, mode: int, offset: int,
                  length: int) -> None:
        fd = self.handles.get(ctx.session, fh).fd
        if self.dax is not None and mode & FALLOC_FL_COLLAPSE_RANGE:
            st = os.fstat(fd)
            with self.dax.shrinking((st.st_dev, st.st_ino), lambda: os.fstat(fd).st_size - length):
                syscalls.fallocate(fd, mode, offset, length)
            return
        syscalls.fallocate(fd, mode, offset, length)
        self._grown(ctx, nodeid)

    def lseek(self, ctx: Context, nodeid: int, fh: int, offset: int, whence: int) -> int:
        if whence not in (os.SEEK_SET, os.SEEK_END, os.SEEK_DATA, os.SEEK_HOLE):
            raise einval()  # SEEK_CUR means nothing on a shared fd
        if offset >= 1 << 63:
            raise einval()
        return os.lseek(self.handles.get(ctx.session, fh).fd, offset, whence)

    def copy_file_range(self, ctx: Context, nodeid_in: int, fh_in: int, off_in: int,
                        nodeid_out: int, fh_out: int, off_out: int, length: int,
                        flags: int) -> int:
        src = self.handles.get(ctx.session, fh_in).fd
        dst = self.handles.get(ctx.session, fh_out).fd
        if flags:
            raise einval()
        if off_in >= 1 << 63 or off_out >= 1 << 63:
            raise einval()
        n = os.copy_file_range(src, dst, length, off_in, off_out)
        self._grown(ctx, nodeid_out)
        return n


def _vector_io(call, fd: int, bufs: list[memoryview], offset: int) -> int:
    """``preadv``/``pwritev`` of all of ``bufs`` at ``offset``, resumed after a short transfer
    until done or a transfer of 0 (end of file)."""
    total = 0
    want = sum(len(b) for b in bufs)
    while bufs:
        n = call(fd, bufs[:_IOV_MAX], offset + total)
        total += n
        if n == 0 or total == want:
            break
        while n:  # drop what was transferred
            if n >= len(bufs[0]):
                n -= len(bufs[0])
                bufs = bufs[1:]
            else:
                bufs = [bufs[0][n:], *bufs[1:]]
                n = 0
    return total
