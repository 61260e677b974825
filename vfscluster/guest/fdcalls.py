"""The descriptor calls of :class:`~vfscluster.guest.gos.GuestOS` (``fs/read_write.c``,
``fs/open.c``, ``fs/sync.c``, ``fs/file.c``): dup, dup2, close, read/write at the position or at
an offset, lseek, ftruncate, fsync, fstat.

Checks are made in the kernel's order: the argument checks CPython and the system call make
before looking at the descriptor (a negative length or offset is EINVAL even for a bad
descriptor), then EBADF (unknown descriptor, ``O_PATH`` file, not open for reading/writing), then
the file type (EISDIR reading a directory, EINVAL truncating what is not a regular file open for
writing).  An ``O_APPEND`` write goes to the end of the file as the host reports it, and leaves the
position there (``pwrite`` too appends, as on Linux).

An open FIFO (:mod:`.fifo`) is a stream: once its descriptor is found (EBADF), read, write,
pread/pwrite (ESPIPE), lseek (ESPIPE), fsync (EINVAL) are the ``os`` calls on its guest-local
pipe, with the kernel's own pipe semantics; fstat, fchmod... are the FIFO node's (the host's);
close sends no FLUSH and the last close no RELEASE (the host never opened it).
"""

from __future__ import annotations

import dataclasses
import errno
import os
from contextlib import contextmanager
from typing import Any, Iterator

from ..fuse.abi import Attr, OpenOutFlags, SetattrIn, SetattrValid
from .client import FuseClient
from .files import FdTable, OpenFile
from .namei import Node, oserror
from .osargs import MAX_OFF, c_int, c_off, c_ssize, check_rw, errors, fileno_of, named

__all__ = ["FdCalls", "MAX_RW_COUNT"]

MAX_RW_COUNT = 0x7FFFF000          # fs/read_write.c: INT_MAX & PAGE_MASK
_SNAPSHOT_TRIES = 4                 # cached reads retried while other guests keep changing the file
_SEEK_DATA = getattr(os, "SEEK_DATA", 3)
_SEEK_HOLE = getattr(os, "SEEK_HOLE", 4)


def _ns(seconds: int, nsec: int) -> int:
    """A fuse_attr time (u64 two's complement seconds, nanoseconds) in signed nanoseconds."""
    return (seconds - (1 << 64) if seconds >> 63 else seconds) * 1_000_000_000 + nsec


class FdCalls:
    """Descriptor calls; mixed into GuestOS, which provides ``client``, ``_fds``, ``lock_owner``,
    ``st_dev`` and the lock hooks ``_unlock_on_close`` / ``_flock_release`` (:mod:`.locks`)."""

    client: FuseClient
    _fds: FdTable
    lock_owner: int
    st_dev: int

    def _released(self, file: OpenFile) -> None:
        """The last reference to an open file went: RELEASE(DIR) it (with RELEASE_FLOCK_UNLOCK
        if it used flock) and unpin its node."""
        c = self.client
        try:
            release_flags, owner = self._flock_release(file)
            if file.fh is not None:
                if file.is_dir:
                    c.releasedir(file.nodeid, file.fh, file.flags)
                else:
                    c.release(file.nodeid, file.fh, file.flags, release_flags=release_flags,
                              lock_owner=owner)
        finally:
            c.put(file.nodeid)

    def _install(self, file: OpenFile) -> int:
        """The lowest free descriptor for ``file``, which gives the table its reference; EMFILE:
        that reference is put (the file is released if it was the last)."""
        try:
            return self._fds.install(file)
        except OSError:
            file.put()
            raise

    def dup(self, fd: int) -> int:
        """``os.dup``: the lowest free descriptor, for the same open file (one position, one
        set of flock locks; RELEASE only when the last of them is closed).  EBADF, EMFILE."""
        with errors():
            file = self._fds.get(fd)            # its reference becomes the new descriptor's
            return self._install(file)

    def dup2(self, fd: int, fd2: int, inheritable: bool = True) -> int:
        """``os.dup2``: ``fd2`` becomes a descriptor of ``fd``'s open file (as :meth:`dup`);
        returns ``fd2``.  A file ``fd2`` had is closed first, as :meth:`close` closes it, but
        its errors are lost (fs/file.c ``do_dup2`` ignores ``filp_close``'s result).  ``fd ==
        fd2``: nothing, if ``fd`` is open (EINVAL with ``inheritable`` false: CPython's
        ``dup3``).  EBADF (unnamed) for a ``fd`` that is not open, a negative ``fd2`` or one at
        or past the ``RLIMIT_NOFILE`` limit.
        Otherwise ``inheritable`` means nothing to a guest, which never execs."""
        fd, fd2 = c_int(fd), c_int(fd2)
        with errors():
            if fd2 < 0:
                raise oserror(errno.EBADF)
            if not inheritable and fd == fd2:   # CPython's dup3(), which refuses it first
                raise oserror(errno.EINVAL)
            file = self._fds.get(fd)            # its reference becomes fd2's
            if fd == fd2:
                file.put()
                return fd2
            try:
                old = self._fds.install_at(fd2, file)
            except OSError:
                file.put()
                raise
        if old is not None:
            try:
                with errors():
                    self._close_file(old)
            except OSError:
                pass                            # do_dup2(): a FLUSH error is lost, as on Linux
        return fd2

    def close(self, fd: int) -> None:
        """``os.close``: FLUSH (regular files, unless the server said FOPEN_NOFLUSH) — which
        drops this process's POSIX locks on the file (``lock_owner``) —, then release the file
        once no operation uses it.  EBADF; FLUSH's error is reported."""
        with errors():
            self._close_file(self._fds.remove(fd))

    def _close_file(self, file: OpenFile) -> None:
        """Close a file taken out of the table (its table reference is the caller's)."""
        try:
            if file.pipe_fd is not None:            # a FIFO: pipe_release, nothing to the host
                self._unlock_on_close(file, False)
                return
            if file.writable and not file.is_dir:
                self.client.cache.pages.flush(self.client, file.nodeid)     # write-back
            noflush = file.open_flags & OpenOutFlags.NOFLUSH
            flushed = not file.is_path and not file.is_dir and not noflush
            if flushed:
                self.client.flush(file.nodeid, file.fh, self.lock_owner)
            if not file.is_path:
                self._unlock_on_close(file, flushed)
        finally:
            file.put()

    @contextmanager
    def _file(self, fd: int) -> Iterator[OpenFile]:
        with errors():
            file = self._fds.get(fd)
            try:
                yield file
            finally:
                file.put()

    # ================================================================== reading and writing

    def read(self, fd: int, n: int) -> bytes:
        """``os.read`` at the file position.  EINVAL (n < 0), EBADF (not open for reading),
        EISDIR (a directory)."""
        if c_ssize(n) < 0:
            raise named(oserror(errno.EINVAL))
        with self._file(fd) as f:
            if f.pipe_fd is not None:
                return os.read(f.pipe_fd, min(n, f.pipe_size))
            self._check_readable(f, f.pos, n)
            if n == 0:
                return b""
            with f.pos_lock:
                data = self._read_at(f, f.pos, min(n, MAX_RW_COUNT))
                f.pos += len(data)
            return data

    def pread(self, fd: int, n: int, offset: int) -> bytes:
        """``os.pread``: ``n`` bytes at ``offset``; the position does not move."""
        dax = self.client.dax
        if dax is not None and 0 < n <= MAX_RW_COUNT and offset >= 0 and type(offset) is int:
            f = self._fds.peek(fd)                                  # DAX, mapped: no request
            if f is not None and f.readable and dax.uses(f.node):
                data = dax.read_quick(f.node.nodeid, offset, n)
                if data is not None:
                    return data
        n, offset = c_ssize(n), c_off(offset)
        if n < 0 or offset < 0:
            raise named(oserror(errno.EINVAL))
        with self._file(fd) as f:
            if f.pipe_fd is not None:
                return os.pread(f.pipe_fd, min(n, f.pipe_size), offset)
            self._check_readable(f, offset, n)
            if n == 0:
                return b""
            return self._read_at(f, offset, min(n, MAX_RW_COUNT))

    def _read_at(self, f: OpenFile, offset: int, n: int) -> bytes:
        """READ, or the page cache when the mount keeps data (not for O_DIRECT files)."""
        c = self.client
        if c.dax is not None and c.dax.uses(f.node):     # DAX first: its data is never in the page cache
            data = c.dax.read(f.nodeid, f.fh, offset, n)
            if data is not None:
                return data
            # the fallback (no window room) must not fill the page cache either: writes through
            # the window never invalidate it, so a later fallback read would find old data
            return c.read(f.nodeid, f.fh, offset, n, flags=f.flags, lock_owner=self.lock_owner)
        cache = c.cache
        if f.flags & os.O_DIRECT and cache.writeback:
            cache.pages.flush(c, f.nodeid)   # mm/filemap.c: direct I/O writes back the cache first
        if cache.keep_data and not f.flags & os.O_DIRECT:
            if not cache.uses_versions:
                return cache.pages.read(c, f.nodeid, f.fh, offset, n, self._cached_size(f),
                                        flags=f.flags, lock_owner=self.lock_owner)
            # versions: size and pages must belong to one version of the file (a seqlock read:
            # if the slot moved while we read, another guest changed the file; read again)
            for _ in range(_SNAPSHOT_TRIES):
                before = cache.stamp(f.nodeid)
                data = cache.pages.read(c, f.nodeid, f.fh, offset, n, self._cached_size(f),
                                        flags=f.flags, lock_owner=self.lock_owner)
                if cache.stamp(f.nodeid) == before:
                    return data
        return c.read(f.nodeid, f.fh, offset, n, flags=f.flags, lock_owner=self.lock_owner)

    def _cached_size(self, f: OpenFile) -> int:
        """The size this guest believes the file has: cached attributes, dirty data included."""
        attr, _ = self.client.attr_of(f.nodeid)
        return max(attr.size, self.client.cache.pages.dirty_end(f.nodeid))

    @staticmethod
    def _check_readable(f: OpenFile, offset: int, n: int) -> None:
        """fs/read_write.c vfs_read: EBADF (not open for reading), EINVAL (ends past the largest
        offset), then EISDIR (a directory)."""
        if not f.readable:
            raise oserror(errno.EBADF)
        check_rw(offset, n)
        if f.is_dir:
            raise oserror(errno.EISDIR)

    def write(self, fd: int, data: Any) -> int:
        """``os.write`` at the file position, or at the end of the file with O_APPEND (the
        position then is the new end).  EBADF when not open for writing."""
        view = memoryview(data)
        with self._file(fd) as f:
            if f.pipe_fd is not None:
                return os.write(f.pipe_fd, view)
            if not f.writable:
                raise oserror(errno.EBADF)
            if not view.nbytes:
                return 0
            check_rw(f.pos, view.nbytes)
            with f.pos_lock:
                offset = self._size(f) if f.flags & os.O_APPEND else f.pos
                n = self._write(f, offset, view)
                f.pos = offset + n
            return n

    def pwrite(self, fd: int, data: Any, offset: int) -> int:
        """``os.pwrite`` at ``offset`` (at the end of the file with O_APPEND, as Linux does);
        the position does not move."""
        view = memoryview(data)
        if c_off(offset) < 0:
            raise named(oserror(errno.EINVAL))
        with self._file(fd) as f:
            if f.pipe_fd is not None:
                return os.pwrite(f.pipe_fd, view, offset)
            if not f.writable:
                raise oserror(errno.EBADF)
            if not view.nbytes:
                return 0
            check_rw(offset, view.nbytes)
            if f.flags & os.O_APPEND:
                offset = self._size(f)
            elif self.client.dax is not None and self.client.dax.uses(f.node) and view.nbytes <= MAX_RW_COUNT \
                    and self.client.dax.write_quick(f.nodeid, offset, view.cast("B")):
                return view.nbytes
            return self._write(f, offset, view)

    def _write(self, f: OpenFile, offset: int, view: memoryview) -> int:
        view = view.cast("B")[:MAX_RW_COUNT]
        c = self.client
        if c.dax is not None and c.dax.uses(f.node) and not f.flags & os.O_APPEND:
            n = c.dax.write(f.nodeid, f.fh, offset, view)
            if n < len(view):         # the extending rest: the host changes the size
                n += self.client.write(f.nodeid, f.fh, offset + n, view[n:], flags=f.flags,
                                       lock_owner=self.lock_owner)
            c.dax.grew(f.nodeid, offset + n)
            return n
        if c.cache.writeback and not f.flags & os.O_DIRECT:
            return c.cache.pages.write(c, f.nodeid, f.fh, offset, view)
        direct = bool(f.flags & os.O_DIRECT) and c.cache.keep_data
        if direct and c.cache.writeback:
            c.cache.pages.flush(c, f.nodeid)   # older dirty data must not land after this write
        n = self.client.write(f.nodeid, f.fh, offset, view, flags=f.flags, lock_owner=self.lock_owner)
        if direct:
            c.cache.pages.drop(f.nodeid)       # and no cached page may hide it
        return n

    def _size(self, f: OpenFile) -> int:
        """The file's current size, asked through its handle (FUSE_GETATTR_FH); with
        write-back, the size this guest sees (its dirty data included)."""
        if self.client.cache.writeback:
            return self._cached_size(f)
        return self.client.getattr(f.nodeid, f.fh).attr.size

    def lseek(self, fd: int, pos: int, how: int) -> int:
        """``os.lseek``: SEEK_SET/CUR/END locally (END asks the size), SEEK_DATA/SEEK_HOLE with
        FUSE_LSEEK (the generic answer when the server lacks it).  EINVAL for a bad ``how`` or a
        negative result, ENXIO for DATA/HOLE past the end."""
        pos, how = c_off(pos), c_int(how)
        with self._file(fd) as f:
            if f.pipe_fd is not None:
                return os.lseek(f.pipe_fd, pos, how)
            if f.is_path:
                raise oserror(errno.EBADF)
            with f.pos_lock:
                if how == os.SEEK_SET:
                    new = pos
                elif how == os.SEEK_CUR:
                    new = f.pos + pos
                elif how == os.SEEK_END:
                    new = self._size(f) + pos
                elif how in (_SEEK_DATA, _SEEK_HOLE):
                    new = self._seek_data(f, pos, how)
                else:
                    raise oserror(errno.EINVAL)
                if not 0 <= new <= MAX_OFF:      # vfs_setpos: past s_maxbytes is EINVAL too
                    raise oserror(errno.EINVAL)
                f.pos = new
                return new

    def _seek_data(self, f: OpenFile, pos: int, how: int) -> int:
        if pos < 0:                     # (no lseek with a negative offset finds data or a hole)
            raise oserror(errno.ENXIO)
        if not f.is_dir:
            try:
                return self.client.lseek(f.nodeid, f.fh, pos, how)
            except OSError as exc:
                if exc.errno != errno.ENOSYS:
                    raise
        size = self._size(f)            # fs/read_write.c generic_file_llseek_size
        if pos < 0 or pos >= size:
            raise oserror(errno.ENXIO)
        return pos if how == _SEEK_DATA else size

    def ftruncate(self, fd: int, length: int) -> None:
        """``os.ftruncate``: EINVAL for a negative length (before anything else), for a file
        not open for writing or not regular."""
        if c_off(length) < 0:
            raise named(oserror(errno.EINVAL))
        with self._file(fd) as f:
            if f.is_path:
                raise oserror(errno.EBADF)
            if not f.node.is_reg or not f.writable:
                raise oserror(errno.EINVAL)
            # fs/fuse/dir.c update_mtime(): no FATTR_MTIME for ftruncate, the host's truncate
            # sets the times itself
            self._setattr(f.nodeid, SetattrValid.SIZE | SetattrValid.FH | SetattrValid.LOCKOWNER,
                          fh=f.fh, size=length)

    def fsync(self, fd: Any) -> None:
        """``os.fsync`` (FSYNC, or FSYNCDIR for a directory)."""
        self._fsync(fd, False)

    def fdatasync(self, fd: Any) -> None:
        """``os.fdatasync``."""
        self._fsync(fd, True)

    def _fsync(self, fd: Any, datasync: bool) -> None:
        with self._file(fileno_of(fd)) as f:
            self._fsync_file(f, datasync)

    def _fsync_file(self, f: OpenFile, datasync: bool) -> None:
        """FSYNC (FSYNCDIR) of an open file the caller holds, this guest's dirty data first (a
        FIFO: the pipe's own answer)."""
        if f.pipe_fd is not None:
            return (os.fdatasync if datasync else os.fsync)(f.pipe_fd)
        if f.is_path:
            raise oserror(errno.EBADF)
        if f.is_dir:
            self.client.fsyncdir(f.nodeid, f.fh, datasync)
        else:
            self.client.cache.pages.flush(self.client, f.nodeid)
            self.client.fsync(f.nodeid, f.fh, datasync)

    def fstat(self, fd: int) -> os.stat_result:
        """``os.fstat`` (GETATTR of the file's node, as fs/fuse/dir.c fuse_getattr sends it)."""
        with self._file(fd) as f:
            return self._stat_of(f.node, fresh=True)

    def _stat_of(self, node: Node, fresh: bool = False) -> os.stat_result:
        """The node's attributes as a stat result: those it was found with, or (``fresh``) the
        attribute cache's while valid, else GETATTR.  This guest's dirty data counts in the
        size, and its time of write is the mtime and ctime."""
        attr = node.attr
        if attr is None or fresh:
            attr, _ = self.client.attr_of(node.nodeid)
        pending = self.client.cache.pages.pending_state(node.nodeid)
        if pending is not None:
            end, mtime = pending
            m_s, m_ns = divmod(mtime, 1_000_000_000)
            m_s &= 0xFFFF_FFFF_FFFF_FFFF          # fuse_attr's two's complement
            attr = dataclasses.replace(attr, size=max(attr.size, end), mtime=m_s, mtimensec=m_ns)
            if mtime > _ns(attr.ctime, attr.ctimensec):       # a later chmod's ctime stays
                attr = dataclasses.replace(attr, ctime=m_s, ctimensec=m_ns)
        return attr.to_stat_result(self.st_dev)

    def _setattr(self, nodeid: int, valid: int, *, fh: int | None = None, size: int = 0,
                 mode: int = 0, atime_ns: int = 0, mtime_ns: int = 0, uid: int = 0,
                 gid: int = 0) -> Attr:
        a_s, a_n = divmod(atime_ns, 1_000_000_000)
        m_s, m_n = divmod(mtime_ns, 1_000_000_000)
        arg = SetattrIn(valid=int(valid), fh=fh or 0, size=size,
                        lock_owner=self.lock_owner if valid & SetattrValid.LOCKOWNER else 0,
                        atime=a_s & 0xFFFF_FFFF_FFFF_FFFF, mtime=m_s & 0xFFFF_FFFF_FFFF_FFFF,
                        atimensec=a_n, mtimensec=m_n, mode=mode, uid=uid, gid=gid)
        attr = self.client.setattr(nodeid, arg).attr
        if valid & SetattrValid.SIZE and self.client.dax is not None:
            self.client.dax.truncated(nodeid, size)
        return attr
