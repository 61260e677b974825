"""One FUSE session: decode a request, call the file system, encode the reply (virtiofsd's
``server.rs``).

:meth:`Server.handle` takes the device-readable and device-writable buffers of one request
(:class:`~vfscluster.virtio.chain.Reader` / :class:`~vfscluster.virtio.chain.Writer`) and
returns the bytes of the reply it wrote (the length for the used ring; 0 when there is no reply).

Two kinds of failure, kept apart:

* the file system refused (``OSError``): the reply is ``-errno``;
* the guest broke the protocol (:class:`~vfscluster.errors.RemoteProtocolError`: short body,
  ``len`` that disagrees with the buffers, a name without its NUL, a reply that does not fit):
  logged at WARNING and answered with ``-EINVAL`` when the header was readable and the writable
  buffers hold a header, else nothing.  Nothing a guest sends raises out of :meth:`Server.handle`
  (a bug in a file system is logged with its traceback and answered with ``-EIO``).

Session rules (libfuse's and virtiofsd's): requests before INIT get ``-EIO`` (FORGET,
BATCH_FORGET and INTERRUPT are dropped); INIT negotiates major 7 (a higher major gets our
major and minor only, and the guest retries; a lower one ``-EPROTO``) and minor
``min(guest, 38)``, refusing minors below 31 with ``-EPROTO`` (the DAX opcodes and
``map_alignment`` came with 7.31; every compat size belongs to minors below 23); the flags are
``offered & (protocol flags the server handles | flags the file system accepts)``.  A second
INIT on a live session means the guest rebooted: the old session is destroyed first (as the
virtio-fs fork of libfuse does).  DESTROY ends the session (``fs.destroy`` and
``fs.drop_session``), and a later INIT starts a new one.

The version-table hook: after an operation that changed metadata succeeded, and before its
reply is written, :meth:`Server.after_change` gets the nodeids it changed: SETATTR, WRITE,
FALLOCATE, SETXATTR, REMOVEXATTR, OPEN with O_TRUNC (the inode); COPY_FILE_RANGE (the destination); CREATE, MKNOD,
MKDIR, SYMLINK, LINK (the parent and the new entry's inode); UNLINK, RMDIR (the parent and the
removed inode when the file system knows it); RENAME, RENAME2 (both parents, the moved inode and
a replaced one when known).  With a version table (``versions=``) the default hook bumps their
slots.

ENTRY_VERSION (vfscluster's INIT flag, bit 63, in flags2): enabled only when the guest offers it
and the server has a version table.  Then every reply that hands out a nodeid — a positive
LOOKUP, MKNOD, MKDIR, SYMLINK, LINK, CREATE and TMPFILE — carries an ``EntryVerOut{version_index
= slot, version}`` after its whole usual body (LOOKUP: EntryOut + EntryVerOut; CREATE: EntryOut +
OpenOut + EntryVerOut).  DESIGN §4's order: after the operation (and after its bump), the slot is
read, *then* the attributes are read again (``fs.getattr``) and those go into the EntryOut, so a
change that lands in between leaves the slot ahead of the version the guest stores (an extra
refresh), never behind it.  Negative LOOKUPs and READDIRPLUS are unchanged.

HAS_INODE_DAX (dax=inode guests; bit 33, in flags2): enabled when the guest offers it and the file
system's ``init`` accepts it.  Then every attribute reply of a regular file (LOOKUP, GETATTR, SETATTR,
MKNOD, LINK, CREATE, TMPFILE, READDIRPLUS) sets FUSE_ATTR_DAX when ``fs.inode_dax`` says the file
should use DAX.  Other sessions never ask (no cost).

Blocking locks and FUSE_INTERRUPT: :mod:`.locking` (the lock requests are a mixin of :class:`Server`).
"""

from __future__ import annotations

import errno
import logging
import mmap
import stat
import struct
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from ..errors import RemoteProtocolError
from . import abi
from .abi import AttrFlags, InitFlags, Opcode, SetattrValid
from .filesystem import Context, Entry, FileSystem, SetattrChanges
from .fileops import FileRequests
from .locking import LOCK_FLAGS, LockRequests
from .replies import _cstr_exact, _s64, _split, _two_cstrs, attr_values, entry_out, entry_values  # noqa: F401

if TYPE_CHECKING:
    from ..host.versions import VersionTable

log = logging.getLogger(__name__)

_IN = abi.InHeader.STRUCT
_OUT = abi.OutHeader.STRUCT
IN_SIZE = abi.InHeader.SIZE
OUT_SIZE = abi.OutHeader.SIZE
_ENTRY_OUT = abi.EntryOut.STRUCT
_OUT_ENTRY = struct.Struct(_OUT.format + _ENTRY_OUT.format.lstrip("<"))   # out header + entry_out
_ENTRYVER_OUT = abi.EntryVerOut.STRUCT
_ATTR_OUT = abi.AttrOut.STRUCT
_NS = 1_000_000_000
_U32 = 0xFFFF_FFFF
_U64 = 0xFFFF_FFFF_FFFF_FFFF
PAGE_SIZE = mmap.PAGESIZE

DEFAULT_MAX_WRITE = 1 << 20

# Flags the server itself handles, whatever the file system: reads may be concurrent, writes may
# be large, max_pages and flags2 are honoured, map_alignment is reported.
SERVER_FLAGS = (InitFlags.ASYNC_READ | InitFlags.BIG_WRITES | InitFlags.MAX_PAGES
                | InitFlags.INIT_EXT | InitFlags.MAP_ALIGNMENT | InitFlags.ASYNC_DIO)
# Never enabled here: ENTRY_VERSION without a version table (the reply would carry an EntryVerOut
# after each EntryOut: see the module docstring).
_NEVER = InitFlags.ENTRY_VERSION

_OP_INIT = int(Opcode.INIT)
_OP_WRITE = int(Opcode.WRITE)
_NO_REPLY = frozenset({Opcode.FORGET, Opcode.BATCH_FORGET, Opcode.INTERRUPT, Opcode.NOTIFY_REPLY})


class Server(LockRequests, FileRequests):
    """One FUSE session (one guest connection) over ``fs``, which other sessions may share.

    ``session`` is the number passed to the file system in every :class:`Context`.
    ``versions`` is the host's version table (several sessions share it): the default
    :meth:`after_change` bumps it, and INIT may grant ENTRY_VERSION.  ``after_change``, when
    given, replaces the :meth:`after_change` hook.  :meth:`handle` may be
    called from several threads at once (one per queue); INIT is the only request that changes
    the server's state.
    """

    def __init__(
        self,
        fs: FileSystem,
        session: int = 0,
        *,
        max_write: int = DEFAULT_MAX_WRITE,
        map_alignment: int = PAGE_SIZE.bit_length() - 1,
        after_change: Callable[[tuple[int, ...]], None] | None = None,
        versions: VersionTable | None = None,
    ) -> None:
        if max_write < 4096:
            raise ValueError("max_write must be at least 4096")
        self.fs = fs
        self.versions = versions
        self.entry_version = False      # ENTRY_VERSION negotiated at INIT
        self.inode_dax = False          # HAS_INODE_DAX negotiated at INIT: FUSE_ATTR_DAX is set
        self.session = session
        self.max_write = max_write
        self.map_alignment = map_alignment
        if after_change is not None:
            self.after_change = after_change  # type: ignore[method-assign]
        self.initialized = False
        self.minor = 0
        self.flags = InitFlags(0)
        #: the guest's notification queue (``enabled``, ``lock_done(unique, error)``), or None
        self.notifier = None
        self._setxattr_in_size = abi.setxattr_in_size(False)
        O = Opcode
        self._table: dict[int, Callable[..., int]] = {
            O.LOOKUP: self._lookup, O.FORGET: self._forget, O.GETATTR: self._getattr,
            O.SETATTR: self._setattr, O.READLINK: self._readlink, O.SYMLINK: self._symlink,
            O.MKNOD: self._mknod, O.MKDIR: self._mkdir, O.UNLINK: self._unlink,
            O.RMDIR: self._rmdir, O.RENAME: self._rename, O.LINK: self._link, O.OPEN: self._open,
            O.READ: self._read, O.WRITE: self._write, O.STATFS: self._statfs,
            O.RELEASE: self._release, O.FSYNC: self._fsync, O.SETXATTR: self._setxattr,
            O.GETXATTR: self._getxattr, O.LISTXATTR: self._listxattr,
            O.REMOVEXATTR: self._removexattr, O.FLUSH: self._flush, O.INIT: self._init,
            O.OPENDIR: self._opendir, O.READDIR: self._readdir, O.RELEASEDIR: self._releasedir,
            O.FSYNCDIR: self._fsyncdir, O.GETLK: self._getlk, O.SETLK: self._setlk,
            O.SETLKW: self._setlkw, O.ACCESS: self._access, O.CREATE: self._create,
            O.INTERRUPT: self._interrupt, O.BMAP: self._bmap, O.DESTROY: self._destroy,
            O.BATCH_FORGET: self._batch_forget, O.FALLOCATE: self._fallocate,
            O.READDIRPLUS: self._readdirplus, O.RENAME2: self._rename2, O.LSEEK: self._lseek,
            O.COPY_FILE_RANGE: self._copy_file_range, O.SETUPMAPPING: self._setupmapping,
            O.REMOVEMAPPING: self._removemapping, O.SYNCFS: self._syncfs,
            O.TMPFILE: self._tmpfile, O.NOTIFY_REPLY: self._no_reply,
        }

    # ------------------------------------------------------------------ hooks

    def after_change(self, nodeids: tuple[int, ...]) -> None:
        """Called with the nodeids a successful metadata-changing operation touched, before its
        reply is written (see the module docstring for which).  The default bumps the version
        table, if the server has one."""
        if self.versions is not None:
            self.versions.bump(nodeids)

    def end_session(self) -> None:
        """The guest went away (disconnect or DESTROY): release what the session holds in the
        file system and wait for a new INIT."""
        self.initialized = False
        self.entry_version = False
        self.inode_dax = False
        self.fs.drop_session(self.session)

    # ------------------------------------------------------------------ entry point

    def handle(self, reader, writer) -> int:
        """Serve one request; returns the reply's length (0: no reply was written)."""
        try:
            length, opcode, unique, nodeid, uid, gid, pid, extlen = reader.unpack(_IN)
        except RemoteProtocolError as e:
            log.warning("session %d: unreadable FUSE request header: %s", self.session, e)
            return 0
        try:
            left = reader.available()
            if length != IN_SIZE + left:
                raise RemoteProtocolError(
                    f"in_header.len {length} but the request has {IN_SIZE + left} bytes")
            if extlen * 8 > left:
                raise RemoteProtocolError(f"total_extlen {extlen} runs past the request")
            op = self._table.get(opcode)
            if not self.initialized and opcode != _OP_INIT:
                if opcode in _NO_REPLY:
                    return 0
                return self._error(writer, unique, errno.EIO)
            if op is None:
                log.debug("session %d: opcode %d not served", self.session, opcode)
                return self._error(writer, unique, errno.ENOSYS)
            ctx = Context._make((uid, gid, pid, unique, self.session))   # faster than Context(...)
            if opcode == _OP_WRITE:  # the data stays in place: pwritev from the buffers
                return self._write(ctx, nodeid, reader, writer, extlen)
            # The arguments, without the extensions counted by total_extlen (we negotiate none).
            return op(ctx, nodeid, reader.read(left - extlen * 8), writer)
        except OSError as e:
            return self._error_quiet(writer, unique, e.errno or errno.EIO)
        except RemoteProtocolError as e:
            log.warning("session %d: bad FUSE request (opcode %d, unique %d): %s",
                        self.session, opcode, unique, e)
            return self._error_quiet(writer, unique, errno.EINVAL)
        except OverflowError as e:
            # A number no kernel sends: open flags past a C int, an offset past loff_t...  A C
            # server would pass it on and get EINVAL from the kernel for most; Python's os
            # refuses it before the call.  The peer's garbage, not our bug.
            log.warning("session %d: FUSE request with a value out of range (opcode %d, unique "
                        "%d): %s", self.session, opcode, unique, e)
            return self._error_quiet(writer, unique, errno.EINVAL)
        except Exception:
            log.exception("session %d: opcode %d failed", self.session, opcode)
            return self._error_quiet(writer, unique, errno.EIO)

    # ------------------------------------------------------------------ replies

    @staticmethod
    def _reply(writer, unique: int, body: bytes = b"") -> int:
        if writer is None:
            raise RemoteProtocolError("the request has no writable buffers for its reply")
        n = OUT_SIZE + len(body)
        writer.write(_OUT.pack(n, 0, unique) + body)
        return n

    def _error(self, writer, unique: int, err: int) -> int:
        if writer is None:
            raise RemoteProtocolError("the request has no writable buffers for its reply")
        hdr = _OUT.pack(OUT_SIZE, -err, unique)
        if writer.written + writer.available() < OUT_SIZE:
            raise RemoteProtocolError(f"{writer.written + writer.available()} writable bytes")
        if writer.written:
            writer.write_at(0, hdr)  # a partial reply was started: overwrite its header
        else:
            writer.write(hdr)
        return OUT_SIZE

    def _error_quiet(self, writer, unique: int, err: int) -> int:
        """An error reply if the writable buffers can hold one (else a warning); never raises."""
        try:
            return self._error(writer, unique, err)
        except RemoteProtocolError as e:
            log.warning("session %d: no error reply (%s) for unique %d: %s",
                        self.session, errno.errorcode.get(err, err), unique, e)
            return 0

    def _changed(self, nodeids: Iterable[int]) -> None:
        try:
            self.after_change(tuple(dict.fromkeys(n for n in nodeids if n)))
        except Exception:
            log.exception("session %d: after_change hook failed", self.session)

    @staticmethod
    def _struct(cls, body: bytes):
        if len(body) < cls.SIZE:
            raise RemoteProtocolError(f"{cls.__name__}: {len(body)} bytes, {cls.SIZE} needed")
        return cls.STRUCT.unpack_from(body)

    @staticmethod
    def _exact(cls, body: bytes):
        if len(body) != cls.SIZE:
            raise RemoteProtocolError(f"{cls.__name__}: {len(body)} bytes, {cls.SIZE} expected")
        return cls.STRUCT.unpack(body)

    # ------------------------------------------------------------------ session

    def _init(self, ctx, nodeid, body, writer) -> int:
        init = abi.InitIn.parse(body)
        if init.major < abi.KERNEL_VERSION:
            log.warning("session %d: FUSE %d.%d is too old", self.session, init.major, init.minor)
            return self._error(writer, ctx.unique, errno.EPROTO)
        if init.major > abi.KERNEL_VERSION:
            # Our major only: the guest answers with a new INIT at major 7.
            out = abi.InitOut(major=abi.KERNEL_VERSION, minor=abi.KERNEL_MINOR_VERSION)
            return self._reply(writer, ctx.unique, out.pack())
        if init.minor < abi.MIN_MINOR_VERSION:
            log.warning("session %d: FUSE 7.%d is older than 7.%d", self.session, init.minor,
                        abi.MIN_MINOR_VERSION)
            return self._error(writer, ctx.unique, errno.EPROTO)
        if self.initialized:
            log.info("session %d: INIT on a live session: the guest restarted", self.session)
            self._destroy_session(ctx)
        offered = init.all_flags
        try:
            accepted = InitFlags(int(self.fs.init(ctx, offered)) & _U64)
        except OSError as e:
            if e.errno != errno.ENOSYS:
                raise
            accepted = InitFlags(0)
        never = _NEVER if self.versions is None else _NEVER & ~InitFlags.ENTRY_VERSION
        server_flags = SERVER_FLAGS if self.versions is None else SERVER_FLAGS | InitFlags.ENTRY_VERSION
        if self.parks_locks():
            server_flags |= LOCK_FLAGS
        enabled = offered & (server_flags | accepted) & ~never
        minor = min(init.minor, abi.KERNEL_MINOR_VERSION)
        lo, hi = abi.split_init_flags(enabled)
        out = abi.InitOut(
            major=abi.KERNEL_VERSION,
            minor=minor,
            max_readahead=init.max_readahead,
            flags=lo,
            max_background=0xFFFF,
            congestion_threshold=0xFFFF * 3 // 4,
            max_write=self.max_write,
            time_gran=1,
            max_pages=min(self.max_write // PAGE_SIZE, 0xFFFF),
            map_alignment=self.map_alignment if enabled & InitFlags.MAP_ALIGNMENT else 0,
            flags2=hi if enabled & InitFlags.INIT_EXT else 0,
        )
        self.minor = minor
        self.flags = enabled
        self.entry_version = bool(enabled & InitFlags.ENTRY_VERSION)
        self.inode_dax = bool(enabled & InitFlags.HAS_INODE_DAX)
        self._setxattr_in_size = abi.setxattr_in_size(bool(enabled & InitFlags.SETXATTR_EXT))
        n = self._reply(writer, ctx.unique, out.pack()[: abi.init_out_size(minor)])
        self.initialized = True
        return n

    def _destroy_session(self, ctx) -> None:
        try:
            self.fs.destroy(ctx)
        except OSError as e:
            if e.errno != errno.ENOSYS:
                log.warning("session %d: destroy: %s", self.session, e)
        self.end_session()

    def _destroy(self, ctx, nodeid, body, writer) -> int:
        self._destroy_session(ctx)
        return self._reply(writer, ctx.unique)

    def _forget(self, ctx, nodeid, body, writer) -> int:
        (nlookup,) = self._exact(abi.ForgetIn, body)
        try:
            self.fs.forget(ctx, nodeid, nlookup)
        except Exception as e:
            log.warning("session %d: forget(%d, %d): %r", self.session, nodeid, nlookup, e)
        return 0

    def _batch_forget(self, ctx, nodeid, body, writer) -> int:
        (count,) = self._struct(abi.BatchForgetIn, body)
        one = abi.ForgetOne.STRUCT
        if len(body) != abi.BatchForgetIn.SIZE + count * one.size:
            raise RemoteProtocolError(f"BATCH_FORGET of {count} in {len(body)} bytes")
        items = [one.unpack_from(body, abi.BatchForgetIn.SIZE + i * one.size) for i in range(count)]
        try:
            self.fs.batch_forget(ctx, items)
        except Exception as e:
            log.warning("session %d: batch_forget of %d: %r", self.session, count, e)
        return 0

    def _interrupt(self, ctx, nodeid, body, writer) -> int:
        (unique,) = self._exact(abi.InterruptIn, body)
        self.interrupt(unique)
        return 0

    def _no_reply(self, ctx, nodeid, body, writer) -> int:
        return 0

    # ------------------------------------------------------------------ inodes

    def _send_entry(self, ctx, writer, entry: Entry, tail: bytes = b"", fh: int | None = None) -> int:
        """Reply EntryOut of a new ``entry`` + ``tail`` (+ EntryVerOut with ENTRY_VERSION).  If the
        reply cannot be built or written the guest never learns the nodeid (or the fh), so the
        lookup count is given back (and the fh released)."""
        try:
            if self.entry_version:
                # DESIGN §4: the slot first, then the attributes that go with it.
                version = self.versions.version(entry.nodeid)
                st, _timeout = self.fs.getattr(ctx, entry.nodeid, None)
                body = (entry_out(entry, st, self._dax_flag(ctx, entry.nodeid, st)) + tail
                        + _ENTRYVER_OUT.pack(self.versions.slot(entry.nodeid), version))
            elif not tail and writer is not None:     # the common reply: packed in place
                values = entry_values(entry, None, self._dax_flag(ctx, entry.nodeid, entry.attr)
                                      if self.inode_dax else 0)
                writer.write_packed(_OUT_ENTRY, _OUT_ENTRY.size, 0, ctx.unique, *values)
                return _OUT_ENTRY.size
            else:
                body = entry_out(entry, None, self._dax_flag(ctx, entry.nodeid, entry.attr)) + tail
            return self._reply(writer, ctx.unique, body)
        except (RemoteProtocolError, OSError):
            try:
                self.fs.forget(ctx, entry.nodeid, 1)
                if fh is not None:
                    self.fs.release(ctx, entry.nodeid, fh, 0, False, False, None)
            except Exception as e:
                log.warning("session %d: undoing an unsent entry: %r", self.session, e)
            raise

    def _dax_flag(self, ctx, nodeid: int, st) -> int:
        """AttrFlags.DAX for a regular file the file system wants under DAX, in sessions that
        negotiated HAS_INODE_DAX (dax=inode guests); 0 at once for the others."""
        if not self.inode_dax or not stat.S_ISREG(st.st_mode):
            return 0
        try:
            return AttrFlags.DAX if self.fs.inode_dax(ctx, nodeid) else 0
        except OSError as e:
            if e.errno != errno.ENOSYS:
                log.info("session %d: per-inode DAX flag of nodeid %d: %s", self.session, nodeid, e)
            return 0

    def _lookup(self, ctx, nodeid, body, writer) -> int:
        name = body[:-1]
        if body[-1:] != b"\0" or b"\0" in name:
            name = _cstr_exact(body, 0)         # raises the right error
        entry = self.fs.lookup(ctx, nodeid, name)
        if entry.nodeid == 0:  # a negative entry holds no count
            return self._reply(writer, ctx.unique, entry_out(entry))
        return self._send_entry(ctx, writer, entry)

    def _getattr(self, ctx, nodeid, body, writer) -> int:
        flags, fh = self._exact(abi.GetattrIn, body)
        st, timeout = self.fs.getattr(ctx, nodeid, fh if flags & abi.GETATTR_FH else None)
        s, ns = _split(timeout)
        return self._reply(writer, ctx.unique,
                           _ATTR_OUT.pack(s, ns, *attr_values(st, self._dax_flag(ctx, nodeid, st))))

    def _setattr(self, ctx, nodeid, body, writer) -> int:
        a = abi.SetattrIn(*self._exact(abi.SetattrIn, body))
        v = a.valid
        changes = SetattrChanges(
            mode=a.mode if v & SetattrValid.MODE else None,
            uid=a.uid if v & SetattrValid.UID else None,
            gid=a.gid if v & SetattrValid.GID else None,
            size=a.size if v & SetattrValid.SIZE else None,
            atime_ns=_s64(a.atime) * _NS + a.atimensec if v & SetattrValid.ATIME else None,
            mtime_ns=_s64(a.mtime) * _NS + a.mtimensec if v & SetattrValid.MTIME else None,
            atime_now=bool(v & SetattrValid.ATIME_NOW),
            mtime_now=bool(v & SetattrValid.MTIME_NOW),
            ctime_ns=_s64(a.ctime) * _NS + a.ctimensec if v & SetattrValid.CTIME else None,
            kill_suidgid=bool(v & SetattrValid.KILL_SUIDGID),
            lock_owner=a.lock_owner if v & SetattrValid.LOCKOWNER else None,
        )
        fh = a.fh if v & SetattrValid.FH else None
        st, timeout = self.fs.setattr(ctx, nodeid, changes, fh)
        self._changed((nodeid,))
        s, ns = _split(timeout)
        return self._reply(writer, ctx.unique,
                           _ATTR_OUT.pack(s, ns, *attr_values(st, self._dax_flag(ctx, nodeid, st))))

    def _readlink(self, ctx, nodeid, body, writer) -> int:
        return self._reply(writer, ctx.unique, bytes(self.fs.readlink(ctx, nodeid)))

    def _entry_reply(self, ctx, writer, entry: Entry, parent: int) -> int:
        self._changed((parent, entry.nodeid))
        return self._send_entry(ctx, writer, entry)

    def _symlink(self, ctx, nodeid, body, writer) -> int:
        name, target = _two_cstrs(body, 0)
        return self._entry_reply(ctx, writer, self.fs.symlink(ctx, nodeid, name, target), nodeid)

    def _mknod(self, ctx, nodeid, body, writer) -> int:
        mode, rdev, umask = self._struct(abi.MknodIn, body)
        name = _cstr_exact(body, abi.MknodIn.SIZE)
        entry = self.fs.mknod(ctx, nodeid, name, mode, abi.decode_dev(rdev), umask)
        return self._entry_reply(ctx, writer, entry, nodeid)

    def _mkdir(self, ctx, nodeid, body, writer) -> int:
        mode, umask = self._struct(abi.MkdirIn, body)
        name = _cstr_exact(body, abi.MkdirIn.SIZE)
        return self._entry_reply(ctx, writer, self.fs.mkdir(ctx, nodeid, name, mode, umask), nodeid)

    def _unlink(self, ctx, nodeid, body, writer) -> int:
        name = _cstr_exact(body, 0)
        touched = self.fs.unlink(ctx, nodeid, name) or ()
        self._changed((nodeid, *touched))
        return self._reply(writer, ctx.unique)

    def _rmdir(self, ctx, nodeid, body, writer) -> int:
        name = _cstr_exact(body, 0)
        touched = self.fs.rmdir(ctx, nodeid, name) or ()
        self._changed((nodeid, *touched))
        return self._reply(writer, ctx.unique)

    def _do_rename(self, ctx, nodeid, writer, body, newdir, flags, offset) -> int:
        old, new = _two_cstrs(body, offset)
        touched = self.fs.rename(ctx, nodeid, old, newdir, new, flags) or ()
        self._changed((nodeid, newdir, *touched))
        return self._reply(writer, ctx.unique)

    def _rename(self, ctx, nodeid, body, writer) -> int:
        (newdir,) = self._struct(abi.RenameIn, body)
        return self._do_rename(ctx, nodeid, writer, body, newdir, 0, abi.RenameIn.SIZE)

    def _rename2(self, ctx, nodeid, body, writer) -> int:
        newdir, flags = self._struct(abi.Rename2In, body)
        return self._do_rename(ctx, nodeid, writer, body, newdir, flags, abi.Rename2In.SIZE)

    def _link(self, ctx, nodeid, body, writer) -> int:
        (oldnodeid,) = self._struct(abi.LinkIn, body)
        name = _cstr_exact(body, abi.LinkIn.SIZE)
        return self._entry_reply(ctx, writer, self.fs.link(ctx, oldnodeid, nodeid, name), nodeid)
