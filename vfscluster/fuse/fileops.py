"""The file, file-system, xattr, directory and DAX requests of a FUSE session: a mixin of
:class:`~vfscluster.fuse.server.Server` (which provides ``fs``, ``session``, ``_reply``,
``_exact``, ``_struct``, ``_changed``, ``_send_entry``, ``_dax_flag`` and the negotiated
limits).  Each handler decodes its arguments, calls the file system, and encodes the reply.
"""

from __future__ import annotations

import logging
import mmap
import os

from ..errors import LocalProtocolError, RemoteProtocolError
from . import abi
from .replies import _cstr_exact, entry_out

log = logging.getLogger("vfscluster.fuse.server")

_OUT = abi.OutHeader.STRUCT
OUT_SIZE = abi.OutHeader.SIZE
_ATTR_OUT = abi.AttrOut.STRUCT
_ENTRY_OUT = abi.EntryOut.STRUCT
_U32 = 0xFFFF_FFFF
PAGE_SIZE = mmap.PAGESIZE


class FileRequests:
    """OPEN … COPY_FILE_RANGE, STATFS, ACCESS, SYNCFS, xattrs, READDIR(PLUS), SETUPMAPPING and
    REMOVEMAPPING of a :class:`~vfscluster.fuse.server.Server`."""

    # ------------------------------------------------------------------ files

    def _open(self, ctx, nodeid, body, writer) -> int:
        flags, _open_flags = self._exact(abi.OpenIn, body)
        fh, fopen = self.fs.open(ctx, nodeid, flags)
        if flags & os.O_TRUNC:      # ATOMIC_O_TRUNC: the open truncated the file
            self._changed((nodeid,))
        return self._reply(writer, ctx.unique, abi.OpenOut.STRUCT.pack(fh, int(fopen), 0))

    def _opendir(self, ctx, nodeid, body, writer) -> int:
        flags, _open_flags = self._exact(abi.OpenIn, body)
        fh, fopen = self.fs.opendir(ctx, nodeid, flags)
        return self._reply(writer, ctx.unique, abi.OpenOut.STRUCT.pack(fh, int(fopen), 0))

    def _create_like(self, call, ctx, nodeid, body, writer) -> int:
        flags, mode, umask, _open_flags = self._struct(abi.CreateIn, body)
        name = _cstr_exact(body, abi.CreateIn.SIZE)
        entry, fh, fopen = call(ctx, nodeid, name, mode, flags, umask)
        self._changed((nodeid, entry.nodeid))
        return self._send_entry(ctx, writer, entry, abi.OpenOut.STRUCT.pack(fh, int(fopen), 0), fh)

    def _create(self, ctx, nodeid, body, writer) -> int:
        return self._create_like(self.fs.create, ctx, nodeid, body, writer)

    def _tmpfile(self, ctx, nodeid, body, writer) -> int:
        return self._create_like(self.fs.tmpfile, ctx, nodeid, body, writer)

    def _read(self, ctx, nodeid, body, writer) -> int:
        fh, offset, size, _rflags, _owner, _flags = self._exact(abi.ReadIn, body)
        if writer is None or writer.available() < OUT_SIZE + size:
            raise RemoteProtocolError(f"READ of {size} bytes does not fit the reply buffers "
                                      f"({0 if writer is None else writer.available()} bytes)")
        writer.advance(OUT_SIZE)  # the data goes straight after the header
        n = self.fs.read(ctx, nodeid, fh, offset, size, writer.buffers(size))
        if not 0 <= n <= size:
            raise LocalProtocolError(f"read returned {n} for a {size}-byte request")
        writer.advance(n)
        writer.write_at(0, _OUT.pack(OUT_SIZE + n, 0, ctx.unique))
        return OUT_SIZE + n

    def _write(self, ctx, nodeid, reader, writer, extlen) -> int:
        fh, offset, size, wflags, _owner, _flags = self._struct(
            abi.WriteIn, reader.read(abi.WriteIn.SIZE))
        if size != reader.available() - extlen * 8:
            raise RemoteProtocolError(
                f"WRITE of {size} bytes carries {reader.available() - extlen * 8}")
        n = self.fs.write(ctx, nodeid, fh, offset, reader.buffers(size), wflags)
        self._changed((nodeid,))
        return self._reply(writer, ctx.unique, abi.WriteOut.STRUCT.pack(n))

    def _statfs(self, ctx, nodeid, body, writer) -> int:
        st = self.fs.statfs(ctx, nodeid)
        return self._reply(writer, ctx.unique, abi.Kstatfs.from_statvfs(st).pack())

    def _release(self, ctx, nodeid, body, writer) -> int:
        fh, flags, rflags, owner = self._exact(abi.ReleaseIn, body)
        flush = bool(rflags & abi.RELEASE_FLUSH)
        flock = bool(rflags & abi.RELEASE_FLOCK_UNLOCK)
        self.fs.release(ctx, nodeid, fh, flags, flush, flock, owner if flush or flock else None)
        return self._reply(writer, ctx.unique)

    def _releasedir(self, ctx, nodeid, body, writer) -> int:
        fh, flags, _rflags, _owner = self._exact(abi.ReleaseIn, body)
        self.fs.releasedir(ctx, nodeid, fh, flags)
        return self._reply(writer, ctx.unique)

    def _fsync(self, ctx, nodeid, body, writer) -> int:
        fh, fflags = self._exact(abi.FsyncIn, body)
        self.fs.fsync(ctx, nodeid, fh, bool(fflags & abi.FSYNC_FDATASYNC))
        self._dax_stores(ctx, nodeid)
        return self._reply(writer, ctx.unique)

    def _fsyncdir(self, ctx, nodeid, body, writer) -> int:
        fh, fflags = self._exact(abi.FsyncIn, body)
        self.fs.fsyncdir(ctx, nodeid, fh, bool(fflags & abi.FSYNC_FDATASYNC))
        return self._reply(writer, ctx.unique)

    def _flush(self, ctx, nodeid, body, writer) -> int:
        fh, owner = self._exact(abi.FlushIn, body)
        self.fs.flush(ctx, nodeid, fh, owner)
        self._dax_stores(ctx, nodeid)
        return self._reply(writer, ctx.unique)

    def _dax_stores(self, ctx, nodeid: int) -> None:
        """A session that maps the file writable through DAX changed it with no request: its
        close and fsync count as the change (close-to-open for ``versions=on`` readers)."""
        if self.versions is not None and self.fs.maps_writable(ctx, nodeid):
            self._changed((nodeid,))

    def _fallocate(self, ctx, nodeid, body, writer) -> int:
        fh, offset, length, mode = self._exact(abi.FallocateIn, body)
        self.fs.fallocate(ctx, nodeid, fh, mode, offset, length)
        self._changed((nodeid,))
        return self._reply(writer, ctx.unique)

    def _lseek(self, ctx, nodeid, body, writer) -> int:
        fh, offset, whence = self._exact(abi.LseekIn, body)
        pos = self.fs.lseek(ctx, nodeid, fh, offset, whence)
        return self._reply(writer, ctx.unique, abi.LseekOut.STRUCT.pack(pos))

    def _copy_file_range(self, ctx, nodeid, body, writer) -> int:
        fh_in, off_in, nodeid_out, fh_out, off_out, length, flags = self._exact(
            abi.CopyFileRangeIn, body)
        length = min(length, _U32 & ~(PAGE_SIZE - 1))  # the reply's size is a u32
        n = self.fs.copy_file_range(ctx, nodeid, fh_in, off_in, nodeid_out, fh_out, off_out,
                                    length, flags)
        self._changed((nodeid_out,))
        return self._reply(writer, ctx.unique, abi.WriteOut.STRUCT.pack(n))

    def _bmap(self, ctx, nodeid, body, writer) -> int:
        block, blocksize = self._exact(abi.BmapIn, body)
        result = self.fs.bmap(ctx, nodeid, blocksize, block)
        return self._reply(writer, ctx.unique, abi.BmapOut.STRUCT.pack(result))

    # ------------------------------------------------------------------ file system

    def _access(self, ctx, nodeid, body, writer) -> int:
        (mask,) = self._exact(abi.AccessIn, body)
        self.fs.access(ctx, nodeid, mask)
        return self._reply(writer, ctx.unique)

    def _syncfs(self, ctx, nodeid, body, writer) -> int:
        self._exact(abi.SyncfsIn, body)
        self.fs.syncfs(ctx, nodeid)
        return self._reply(writer, ctx.unique)

    # ------------------------------------------------------------------ xattrs

    def _setxattr(self, ctx, nodeid, body, writer) -> int:
        hsize = self._setxattr_in_size
        if len(body) < hsize:
            raise RemoteProtocolError(f"SETXATTR body of {len(body)} bytes")
        a = abi.SetxattrIn.unpack_compat(body, 0, hsize)
        name, end = abi.decode_cstr(body, hsize)
        value = body[end:]
        if len(value) != a.size:
            raise RemoteProtocolError(f"SETXATTR value of {len(value)} bytes, size says {a.size}")
        self.fs.setxattr(ctx, nodeid, name, value, a.flags)
        self._changed((nodeid,))
        return self._reply(writer, ctx.unique)

    def _xattr_reply(self, ctx, writer, result: bytes | int) -> int:
        if isinstance(result, int):
            return self._reply(writer, ctx.unique, abi.GetxattrOut.STRUCT.pack(result))
        return self._reply(writer, ctx.unique, bytes(result))

    def _getxattr(self, ctx, nodeid, body, writer) -> int:
        (size,) = self._struct(abi.GetxattrIn, body)
        name = _cstr_exact(body, abi.GetxattrIn.SIZE)
        return self._xattr_reply(ctx, writer, self.fs.getxattr(ctx, nodeid, name, size))

    def _listxattr(self, ctx, nodeid, body, writer) -> int:
        (size,) = self._exact(abi.GetxattrIn, body)
        return self._xattr_reply(ctx, writer, self.fs.listxattr(ctx, nodeid, size))

    def _removexattr(self, ctx, nodeid, body, writer) -> int:
        name = _cstr_exact(body, 0)
        self.fs.removexattr(ctx, nodeid, name)
        self._changed((nodeid,))
        return self._reply(writer, ctx.unique)

    # ------------------------------------------------------------------ directories

    def _dir_limit(self, writer, size: int) -> int:
        if writer is None or writer.available() < OUT_SIZE:
            raise RemoteProtocolError("no room for a READDIR reply")
        return min(size, writer.available() - OUT_SIZE)

    def _readdir(self, ctx, nodeid, body, writer) -> int:
        fh, offset, size, _rf, _owner, _flags = self._exact(abi.ReadIn, body)
        limit = self._dir_limit(writer, size)
        out = bytearray()
        try:
            for d in self.fs.readdir(ctx, nodeid, fh, offset):
                if abi.dirent_size(len(d.name)) > limit - len(out):
                    break
                try:
                    out += abi.pack_dirent(d.ino, d.offset, d.type, d.name)
                except LocalProtocolError as e:
                    log.warning("session %d: directory entry skipped: %s", self.session, e)
        except OSError:
            if not out:
                raise
        return self._reply(writer, ctx.unique, bytes(out))

    def _readdirplus(self, ctx, nodeid, body, writer) -> int:
        fh, offset, size, _rf, _owner, _flags = self._exact(abi.ReadIn, body)
        limit = self._dir_limit(writer, size)
        out = bytearray()
        try:
            for d, entry in self.fs.readdirplus(ctx, nodeid, fh, offset):
                if abi.direntplus_size(len(d.name)) > limit - len(out):
                    if entry is not None:
                        self.fs.forget(ctx, entry.nodeid, 1)  # looked up but not sent
                    break
                if entry is None:  # "." and "..": no lookup, nodeid 0
                    eo = _ENTRY_OUT.pack(0, 0, 0, 0, 0, 0, d.ino, 0, 0, 0, 0, 0, 0, 0, 0,
                                         d.type << 12, 0, 0, 0, 0, 0, 0)
                else:
                    eo = entry_out(entry, None, self._dax_flag(ctx, entry.nodeid, entry.attr))
                try:
                    out += eo + abi.pack_dirent(d.ino, d.offset, d.type, d.name)
                except LocalProtocolError as e:
                    log.warning("session %d: directory entry skipped: %s", self.session, e)
                    if entry is not None:
                        self.fs.forget(ctx, entry.nodeid, 1)
        except OSError:
            if not out:
                raise
        return self._reply(writer, ctx.unique, bytes(out))

    # ------------------------------------------------------------------ DAX

    def _setupmapping(self, ctx, nodeid, body, writer) -> int:
        fh, foffset, length, flags, moffset = self._exact(abi.SetupmappingIn, body)
        self.fs.setupmapping(ctx, nodeid, fh, foffset, length, flags, moffset)
        return self._reply(writer, ctx.unique)

    def _removemapping(self, ctx, nodeid, body, writer) -> int:
        (count,) = self._struct(abi.RemovemappingIn, body)
        one = abi.RemovemappingOne.STRUCT
        base = abi.RemovemappingIn.SIZE
        if len(body) != base + count * one.size:
            raise RemoteProtocolError(f"REMOVEMAPPING of {count} in {len(body)} bytes")
        items = [one.unpack_from(body, base + i * one.size) for i in range(count)]
        self.fs.removemapping(ctx, items)
        return self._reply(writer, ctx.unique)
