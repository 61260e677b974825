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
import os
import stat
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from ..errors import LocalProtocolError, RemoteProtocolError
from . import abi
from .abi import AttrFlags, InitFlags, Opcode, SetattrValid
from .filesystem import Context, Entry, FileSystem, SetattrChanges
from .locking import LOCK_FLAGS, LockRequests

if TYPE_CHECKING:
    from ..host.versions import VersionTable

log = logging.getLogger(__name__)

_IN = abi.InHeader.STRUCT
_OUT = abi.OutHeader.STRUCT
IN_SIZE = abi.InHeader.SIZE
OUT_SIZE = abi.OutHeader.SIZE
_ENTRY_OUT = abi.EntryOut.STRUCT
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

_NO_REPLY = frozenset({Opcode.FORGET, Opcode.BATCH_FORGET, Opcode.INTERRUPT, Opcode.NOTIFY_REPLY})


def _cstr_exact(buf: bytes, offset: int) -> bytes:
    """The NUL-terminated string at ``offset`` that must end the buffer."""
    name, end = abi.decode_cstr(buf, offset)
    if end != len(buf):
        raise RemoteProtocolError(f"{len(buf) - end} stray bytes after the name {name!r}")
    return name


def _two_cstrs(buf: bytes, offset: int) -> tuple[bytes, bytes]:
    first, end = abi.decode_cstr(buf, offset)
    return first, _cstr_exact(buf, end)


def _s64(v: int) -> int:
    return v - (1 << 64) if v >= 1 << 63 else v


_TIMEOUTS: dict[float, tuple[int, int]] = {}


def _split(t: float) -> tuple[int, int]:
    """Seconds as (whole seconds, nanoseconds) for the *_valid fields."""
    try:
        return _TIMEOUTS[t]
    except KeyError:
        s = int(max(t, 0.0))
        ns = min(int(round((max(t, 0.0) - s) * _NS)), _NS - 1)
        if len(_TIMEOUTS) < 64:
            _TIMEOUTS[t] = (s, ns)
        return s, ns


def attr_values(st, flags: int = 0) -> tuple:
    """The fuse_attr fields of an ``os.stat_result`` in wire order (what ``Attr.from_stat``
    gives, without building the dataclass: this is on the GETATTR/LOOKUP path)."""
    a_s, a_ns = divmod(st.st_atime_ns, _NS)
    m_s, m_ns = divmod(st.st_mtime_ns, _NS)
    c_s, c_ns = divmod(st.st_ctime_ns, _NS)
    rdev = st.st_rdev
    return (st.st_ino, st.st_size, st.st_blocks, a_s & _U64, m_s & _U64, c_s & _U64,
            a_ns, m_ns, c_ns, st.st_mode, min(st.st_nlink, _U32), st.st_uid, st.st_gid,
            abi.encode_dev(rdev) if rdev else 0, st.st_blksize, flags)


def entry_out(e: Entry, st=None, flags: int = 0) -> bytes:
    """fuse_entry_out of an :class:`Entry` (with the attributes ``st`` instead of ``e.attr``;
    ``flags`` added to ``e.attr_flags``)."""
    es, ens = _split(e.entry_timeout)
    as_, ans = _split(e.attr_timeout)
    return _ENTRY_OUT.pack(e.nodeid, e.generation, es, as_, ens, ans,
                           *attr_values(e.attr if st is None else st, e.attr_flags | flags))


class Server(LockRequests):
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
            hdr = reader.read(IN_SIZE)
        except RemoteProtocolError as e:
            log.warning("session %d: unreadable FUSE request header: %s", self.session, e)
            return 0
        length, opcode, unique, nodeid, uid, gid, pid, extlen = _IN.unpack(hdr)
        try:
            if length != IN_SIZE + reader.available():
                raise RemoteProtocolError(
                    f"in_header.len {length} but the request has {IN_SIZE + reader.available()} bytes")
            if extlen * 8 > reader.available():
                raise RemoteProtocolError(f"total_extlen {extlen} runs past the request")
            op = self._table.get(opcode)
            if not self.initialized and opcode != Opcode.INIT:
                if opcode in _NO_REPLY:
                    return 0
                return self._error(writer, unique, errno.EIO)
            if op is None:
                log.debug("session %d: opcode %d not served", self.session, opcode)
                return self._error(writer, unique, errno.ENOSYS)
            ctx = Context(uid, gid, pid, unique, self.session)
            if opcode == Opcode.WRITE:  # the data stays in place: pwritev from the buffers
                return self._write(ctx, nodeid, reader, writer, extlen)
            # The arguments, without the extensions counted by total_extlen (we negotiate none).
            return op(ctx, nodeid, reader.read(reader.available() - extlen * 8), writer)
        except OSError as e:
            return self._error_quiet(writer, unique, e.errno or errno.EIO)
        except RemoteProtocolError as e:
            log.warning("session %d: bad FUSE request (opcode %d, unique %d): %s",
                        self.session, opcode, unique, e)
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
        name = _cstr_exact(body, 0)
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
        return self._reply(writer, ctx.unique)

    def _fsyncdir(self, ctx, nodeid, body, writer) -> int:
        fh, fflags = self._exact(abi.FsyncIn, body)
        self.fs.fsyncdir(ctx, nodeid, fh, bool(fflags & abi.FSYNC_FDATASYNC))
        return self._reply(writer, ctx.unique)

    def _flush(self, ctx, nodeid, body, writer) -> int:
        fh, owner = self._exact(abi.FlushIn, body)
        self.fs.flush(ctx, nodeid, fh, owner)
        return self._reply(writer, ctx.unique)

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
