"""The FUSE wire format, and nothing else (the counterpart of virtiofsd's ``fuse.rs``).

Constants, opcodes, flag sets and one frozen dataclass per ``struct fuse_*`` of Linux
``include/uapi/linux/fuse.h`` (checked against protocol 7.45; we speak 7.38 and accept 7.31 or
newer), plus vfscluster's one extension, EntryVerOut.
Every struct is little-endian with the C layout's natural padding; pad members (``padding``,
``dummy``, ``unused``, ``spare``, ``reserved``) are ``x`` bytes in the format: written as zeros,
ignored when read, and not dataclass fields.

Each struct class has ``STRUCT`` (a precompiled :class:`struct.Struct`), ``SIZE``,
``unpack_from(buf, offset=0)``, ``pack()`` and ``pack_into(buf, offset=0)``.  Reading a buffer
that is too short raises :class:`~vfscluster.errors.RemoteProtocolError`: the bytes came from the
peer.  Nested C structs (``fuse_entry_out.attr`` ...) are nested dataclasses whose bytes are
flattened into the parent's format.

No semantics live here: what an opcode does, which reply it gets, which minor version sends which
size are the business of the server and the client.  The helpers at the end only convert between
bytes and Python values (directory records, C strings, ``os.stat_result``).
"""

from __future__ import annotations

import enum
import os
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, fields
from operator import attrgetter
from typing import Any, ClassVar

from vfscluster.errors import LocalProtocolError, RemoteProtocolError

# --------------------------------------------------------------------------------------------
# Protocol constants
# --------------------------------------------------------------------------------------------

KERNEL_VERSION = 7
KERNEL_MINOR_VERSION = 38  # the minor we speak (the header is at 7.45)
MIN_MINOR_VERSION = 31  # oldest minor we accept: SETUPMAPPING/REMOVEMAPPING and map_alignment
ROOT_ID = 1
MIN_READ_BUFFER = 8192

UNIQUE_RESEND = 1 << 63  # high bit of fuse_in_header.unique: a resent request (7.40)
INVALID_UIDGID = 0xFFFF_FFFF  # in_header uid/gid when an idmapped mount cannot map the caller

REMOVEMAPPING_MAX_ENTRY = 256  # PAGE_SIZE / sizeof(fuse_removemapping_one) with 4 KiB pages
DAX_SHIFT = 21  # fs/fuse/dax.c: DAX ranges are 2 MiB
DAX_SIZE = 1 << DAX_SHIFT

NAME_OFFSET = 24  # offsetof(struct fuse_dirent, name)
NAME_OFFSET_DIRENTPLUS = 152  # offsetof(struct fuse_direntplus, dirent.name)
DIRENT_NAME_MAX = 255  # longest name we accept in a directory record

# Reserved opcode values that reveal a peer of the other endianness.
CUSE_INIT_BSWAP_RESERVED = 4096 << 8
INIT_BSWAP_RESERVED = 26 << 24

# Extension types (fuse_ext_header.type; in_header.total_extlen counts 8-byte units).
MAX_NR_SECCTX = 31  # types 0..31 are fuse_secctx_header
EXT_GROUPS = 32  # struct fuse_supp_groups

_U32 = 0xFFFF_FFFF
_U64 = 0xFFFF_FFFF_FFFF_FFFF


class Opcode(enum.IntEnum):
    """``enum fuse_opcode`` (7 and 19 are unused)."""

    LOOKUP = 1  # name -> entry
    FORGET = 2  # drop nlookup references; no reply
    GETATTR = 3
    SETATTR = 4
    READLINK = 5
    SYMLINK = 6  # name\0target\0
    MKNOD = 8
    MKDIR = 9
    UNLINK = 10
    RMDIR = 11
    RENAME = 12
    LINK = 13
    OPEN = 14
    READ = 15
    WRITE = 16
    STATFS = 17
    RELEASE = 18
    FSYNC = 20
    SETXATTR = 21
    GETXATTR = 22
    LISTXATTR = 23
    REMOVEXATTR = 24
    FLUSH = 25
    INIT = 26  # session negotiation, first request
    OPENDIR = 27
    READDIR = 28
    RELEASEDIR = 29
    FSYNCDIR = 30
    GETLK = 31
    SETLK = 32
    SETLKW = 33  # blocking SETLK
    ACCESS = 34
    CREATE = 35  # atomic create + open
    INTERRUPT = 36  # cancel the request with the given unique
    BMAP = 37
    DESTROY = 38  # session teardown
    IOCTL = 39
    POLL = 40
    NOTIFY_REPLY = 41  # answer to NOTIFY_RETRIEVE
    BATCH_FORGET = 42  # many FORGETs; no reply
    FALLOCATE = 43
    READDIRPLUS = 44  # READDIR + LOOKUP per entry
    RENAME2 = 45  # RENAME with flags
    LSEEK = 46  # SEEK_DATA / SEEK_HOLE
    COPY_FILE_RANGE = 47
    SETUPMAPPING = 48  # DAX: map a file range into the cache window
    REMOVEMAPPING = 49  # DAX: unmap window ranges
    SYNCFS = 50
    TMPFILE = 51
    STATX = 52
    COPY_FILE_RANGE_64 = 53  # COPY_FILE_RANGE with a 64-bit result
    CUSE_INIT = 4096


class NotifyCode(enum.IntEnum):
    """``enum fuse_notify_code``: sent as fuse_out_header with unique 0 and error = code."""

    POLL = 1
    INVAL_INODE = 2
    INVAL_ENTRY = 3
    STORE = 4
    RETRIEVE = 5
    DELETE = 6
    RESEND = 7
    INC_EPOCH = 8
    PRUNE = 9


# Not mainline: the unmerged virtio-fs blocking-POSIX-lock series (2021, against 7.35) completes a
# waiting SETLKW with this notification.  It collides with NotifyCode.RESEND, so it is only ever
# used on the virtio-fs notification queue.  Payload: NotifyLockOut.
NOTIFY_LOCK = 7


class InitFlags(enum.IntFlag):
    """FUSE_INIT flags as one 64-bit set (``flags`` holds bits 0-31, ``flags2`` bits 32-63)."""

    ASYNC_READ = 1 << 0
    POSIX_LOCKS = 1 << 1
    FILE_OPS = 1 << 2
    ATOMIC_O_TRUNC = 1 << 3
    EXPORT_SUPPORT = 1 << 4
    BIG_WRITES = 1 << 5
    DONT_MASK = 1 << 6
    SPLICE_WRITE = 1 << 7
    SPLICE_MOVE = 1 << 8
    SPLICE_READ = 1 << 9
    FLOCK_LOCKS = 1 << 10
    HAS_IOCTL_DIR = 1 << 11
    AUTO_INVAL_DATA = 1 << 12
    DO_READDIRPLUS = 1 << 13
    READDIRPLUS_AUTO = 1 << 14
    ASYNC_DIO = 1 << 15
    WRITEBACK_CACHE = 1 << 16
    NO_OPEN_SUPPORT = 1 << 17
    PARALLEL_DIROPS = 1 << 18
    HANDLE_KILLPRIV = 1 << 19
    POSIX_ACL = 1 << 20
    ABORT_ERROR = 1 << 21
    MAX_PAGES = 1 << 22
    CACHE_SYMLINKS = 1 << 23
    NO_OPENDIR_SUPPORT = 1 << 24
    EXPLICIT_INVAL_DATA = 1 << 25
    MAP_ALIGNMENT = 1 << 26
    SUBMOUNTS = 1 << 27
    HANDLE_KILLPRIV_V2 = 1 << 28
    SETXATTR_EXT = 1 << 29
    INIT_EXT = 1 << 30  # flags2 is valid (and init_in is 64 bytes)
    INIT_RESERVED = 1 << 31
    SECURITY_CTX = 1 << 32
    HAS_INODE_DAX = 1 << 33
    CREATE_SUPP_GROUP = 1 << 34
    HAS_EXPIRE_ONLY = 1 << 35
    DIRECT_IO_ALLOW_MMAP = 1 << 36
    DIRECT_IO_RELAX = 1 << 36  # obsolete alias of DIRECT_IO_ALLOW_MMAP
    PASSTHROUGH = 1 << 37
    NO_EXPORT_SUPPORT = 1 << 38
    HAS_RESEND = 1 << 39
    ALLOW_IDMAP = 1 << 40
    OVER_IO_URING = 1 << 41
    REQUEST_TIMEOUT = 1 << 42
    # vfscluster's own extension, not in any kernel: the guest asks for an EntryVerOut after each
    # EntryOut (the 2018 prototype's fuse_entryver_out).  A stock kernel never sets it.
    ENTRY_VERSION = 1 << 63


ENTRYVER_OUT_FLAG = InitFlags.ENTRY_VERSION


def split_init_flags(flags: int) -> tuple[int, int]:
    """64-bit INIT flags -> (``flags``, ``flags2``) as they travel in fuse_init_in/out."""
    return int(flags) & _U32, (int(flags) >> 32) & _U32


def join_init_flags(flags: int, flags2: int) -> InitFlags:
    """(``flags``, ``flags2``) -> one 64-bit InitFlags (flags2 holds bits 32-63 shifted down)."""
    return InitFlags((int(flags) & _U32) | ((int(flags2) & _U32) << 32))


class SetattrValid(enum.IntFlag):
    """FATTR_*: which fields of fuse_setattr_in are set."""

    MODE = 1 << 0
    UID = 1 << 1
    GID = 1 << 2
    SIZE = 1 << 3
    ATIME = 1 << 4
    MTIME = 1 << 5
    FH = 1 << 6
    ATIME_NOW = 1 << 7
    MTIME_NOW = 1 << 8
    LOCKOWNER = 1 << 9
    CTIME = 1 << 10
    KILL_SUIDGID = 1 << 11


class OpenOutFlags(enum.IntFlag):
    """FOPEN_*: fuse_open_out.open_flags."""

    DIRECT_IO = 1 << 0
    KEEP_CACHE = 1 << 1
    NONSEEKABLE = 1 << 2
    CACHE_DIR = 1 << 3
    STREAM = 1 << 4
    NOFLUSH = 1 << 5
    PARALLEL_DIRECT_WRITES = 1 << 6
    PASSTHROUGH = 1 << 7


class AttrFlags(enum.IntFlag):
    """FUSE_ATTR_*: fuse_attr.flags."""

    SUBMOUNT = 1 << 0  # the inode is the root of a submount
    DAX = 1 << 1  # use DAX for this file (per-inode DAX mode)


class SetupmappingFlags(enum.IntFlag):
    """FUSE_SETUPMAPPING_FLAG_*: fuse_setupmapping_in.flags."""

    WRITE = 1 << 0
    READ = 1 << 1


GETATTR_FH = 1 << 0  # fuse_getattr_in.getattr_flags: fh is valid
RELEASE_FLUSH = 1 << 0  # fuse_release_in.release_flags
RELEASE_FLOCK_UNLOCK = 1 << 1
LK_FLOCK = 1 << 0  # fuse_lk_in.lk_flags: BSD flock, not POSIX
WRITE_CACHE = 1 << 0  # fuse_write_in.write_flags: writeback from the page cache
WRITE_LOCKOWNER = 1 << 1
WRITE_KILL_SUIDGID = 1 << 2
WRITE_KILL_PRIV = WRITE_KILL_SUIDGID  # old name
READ_LOCKOWNER = 1 << 1  # fuse_read_in.read_flags
FSYNC_FDATASYNC = 1 << 0  # fuse_fsync_in.fsync_flags
OPEN_KILL_SUIDGID = 1 << 0  # fuse_open_in / fuse_create_in .open_flags
SETXATTR_ACL_KILL_SGID = 1 << 0  # fuse_setxattr_in.setxattr_flags
POLL_SCHEDULE_NOTIFY = 1 << 0  # fuse_poll_in.flags
EXPIRE_ONLY = 1 << 0  # fuse_notify_inval_entry_out.flags

# fuse_ioctl_in.flags / fuse_ioctl_out.flags
IOCTL_COMPAT = 1 << 0
IOCTL_UNRESTRICTED = 1 << 1
IOCTL_RETRY = 1 << 2
IOCTL_32BIT = 1 << 3
IOCTL_DIR = 1 << 4
IOCTL_COMPAT_X32 = 1 << 5
IOCTL_MAX_IOV = 256

# --------------------------------------------------------------------------------------------
# Version-dependent sizes: older minors use a prefix of the current struct.
# --------------------------------------------------------------------------------------------

ENTRY_OUT_COMPAT_SIZE = 120  # minor < 9
ATTR_OUT_COMPAT_SIZE = 96  # minor < 9
MKNOD_IN_COMPAT_SIZE = 8  # minor < 12
WRITE_IN_COMPAT_SIZE = 24  # minor < 9
SETXATTR_IN_COMPAT_SIZE = 8  # unless SETXATTR_EXT was negotiated
INIT_OUT_COMPAT_SIZE = 8  # minor < 5
INIT_OUT_COMPAT_22_SIZE = 24  # minor < 23
STATFS_COMPAT_SIZE = 48  # minor < 4
INIT_IN_COMPAT_SIZE = 16  # sent by kernels older than 7.36


def entry_out_size(minor: int) -> int:
    """Bytes of fuse_entry_out for a session at protocol 7.``minor``."""
    return ENTRY_OUT_COMPAT_SIZE if minor < 9 else EntryOut.SIZE


def attr_out_size(minor: int) -> int:
    """Bytes of fuse_attr_out for a session at protocol 7.``minor``."""
    return ATTR_OUT_COMPAT_SIZE if minor < 9 else AttrOut.SIZE


def init_out_size(minor: int) -> int:
    """Bytes of the fuse_init_out reply for a kernel at protocol 7.``minor``."""
    if minor < 5:
        return INIT_OUT_COMPAT_SIZE
    if minor < 23:
        return INIT_OUT_COMPAT_22_SIZE
    return InitOut.SIZE


def setxattr_in_size(setxattr_ext: bool) -> int:
    """Bytes of fuse_setxattr_in: 16 only when FUSE_SETXATTR_EXT was negotiated."""
    return SetxattrIn.SIZE if setxattr_ext else SETXATTR_IN_COMPAT_SIZE


# --------------------------------------------------------------------------------------------
# Struct machinery
# --------------------------------------------------------------------------------------------


class WireStruct:
    """Shared methods of the wire-struct dataclasses (decorated with :func:`_wire`)."""

    __slots__ = ()

    STRUCT: ClassVar[struct.Struct]
    SIZE: ClassVar[int]
    # obj -> tuple of its field values in format order; set by _wire() for flat structs.
    _GET: ClassVar[Callable[[Any], tuple]]

    @classmethod
    def unpack_from(cls, buf: Any, offset: int = 0) -> Any:
        """Decode ``SIZE`` bytes of ``buf`` at ``offset``."""
        try:
            return cls(*cls.STRUCT.unpack_from(buf, offset))
        except struct.error:
            raise _short(cls, buf, offset) from None

    @classmethod
    def unpack_compat(cls, buf: Any, offset: int = 0, size: int | None = None) -> Any:
        """Decode an old, shorter version of the struct: its first ``size`` bytes, rest zero."""
        if size is None or size == cls.SIZE:
            return cls.unpack_from(buf, offset)
        if not 0 <= size <= cls.SIZE:
            raise LocalProtocolError(f"{cls.__name__}: compat size {size} outside 0..{cls.SIZE}")
        if offset < 0 or len(buf) - offset < size:
            raise RemoteProtocolError(
                f"{cls.__name__}: need {size} bytes at offset {offset}, buffer has {len(buf)}"
            )
        return cls.unpack_from(bytes(buf[offset : offset + size]) + bytes(cls.SIZE - size))

    def _wire_values(self) -> tuple:
        """Every value of the flattened format, in order (overridden by nesting structs)."""
        return self._GET(self)

    def pack(self) -> bytes:
        """Encode to ``SIZE`` bytes."""
        return self.STRUCT.pack(*self._wire_values())

    def pack_into(self, buf: Any, offset: int = 0) -> None:
        """Encode into a writable buffer at ``offset``."""
        self.STRUCT.pack_into(buf, offset, *self._wire_values())


def _unpack_raw(cls: type, buf: Any, offset: int) -> tuple:
    """The flat tuple of ``cls.STRUCT`` at ``offset`` (for the nesting structs' unpack_from)."""
    try:
        return cls.STRUCT.unpack_from(buf, offset)
    except struct.error:
        raise _short(cls, buf, offset) from None


def _short(cls: type, buf: Any, offset: int) -> RemoteProtocolError:
    try:
        have = len(buf)
    except TypeError:
        have = "?"
    return RemoteProtocolError(
        f"{cls.__name__}: need {cls.SIZE} bytes at offset {offset}, buffer has {have}"
    )


def _wire(cls: type) -> type:
    """Finish a WireStruct dataclass: set SIZE and the getter that :meth:`WireStruct.pack` uses."""
    cls.SIZE = cls.STRUCT.size
    names = tuple(f.name for f in fields(cls))
    if len(names) > 1:
        cls._GET = attrgetter(*names)  # not a descriptor: self._GET(self) works as is
    elif names:
        one = attrgetter(names[0])
        cls._GET = staticmethod(lambda obj: (one(obj),))
    else:
        cls._GET = staticmethod(lambda obj: ())
    return cls


def _S(fmt: str) -> struct.Struct:
    return struct.Struct("<" + fmt)


# --------------------------------------------------------------------------------------------
# Headers
# --------------------------------------------------------------------------------------------


@_wire
@dataclass(frozen=True, slots=True)
class InHeader(WireStruct):
    """struct fuse_in_header: starts every request (``len`` counts header + body)."""

    STRUCT = _S("IIQQIIIH2x")
    len: int = 0
    opcode: int = 0
    unique: int = 0
    nodeid: int = 0
    uid: int = 0
    gid: int = 0
    pid: int = 0
    total_extlen: int = 0  # extensions after the args, in 8-byte units (7.38)


@_wire
@dataclass(frozen=True, slots=True)
class OutHeader(WireStruct):
    """struct fuse_out_header: starts every reply; ``error`` is 0 or a negative errno."""

    STRUCT = _S("IiQ")
    len: int = 0
    error: int = 0
    unique: int = 0


# --------------------------------------------------------------------------------------------
# Attributes and entries
# --------------------------------------------------------------------------------------------


@_wire
@dataclass(frozen=True, slots=True)
class Attr(WireStruct):
    """struct fuse_attr (times are seconds, stored as u64 two's complement, plus nanoseconds)."""

    STRUCT = _S("6Q10I")
    ino: int = 0
    size: int = 0
    blocks: int = 0
    atime: int = 0
    mtime: int = 0
    ctime: int = 0
    atimensec: int = 0
    mtimensec: int = 0
    ctimensec: int = 0
    mode: int = 0
    nlink: int = 0
    uid: int = 0
    gid: int = 0
    rdev: int = 0  # kernel encoding (new_encode_dev)
    blksize: int = 0
    flags: int = 0  # AttrFlags

    @classmethod
    def from_stat(cls, st: os.stat_result, flags: int = 0) -> Attr:
        """Attributes of an ``os.stat_result`` (as virtiofsd fills them from stat(2))."""
        a_s, a_ns = divmod(st.st_atime_ns, 1_000_000_000)
        m_s, m_ns = divmod(st.st_mtime_ns, 1_000_000_000)
        c_s, c_ns = divmod(st.st_ctime_ns, 1_000_000_000)
        return cls(
            st.st_ino,
            st.st_size,
            st.st_blocks,
            a_s & _U64,
            m_s & _U64,
            c_s & _U64,
            a_ns,
            m_ns,
            c_ns,
            st.st_mode,
            min(st.st_nlink, _U32),
            st.st_uid,
            st.st_gid,
            encode_dev(st.st_rdev),
            st.st_blksize,
            int(flags),
        )

    def to_stat_result(self, dev: int = 0) -> os.stat_result:
        """A real ``os.stat_result`` with these attributes and ``st_dev = dev``."""
        a, m, c = self.atime, self.mtime, self.ctime
        if (a | m | c) >> 63:
            a, m, c = _signed64(a), _signed64(m), _signed64(c)
        an, mn, cn = self.atimensec, self.mtimensec, self.ctimensec
        rdev = self.rdev
        # os.stat_result positions (Linux): 0 mode, 1 ino, 2 dev, 3 nlink, 4 uid, 5 gid, 6 size,
        # 7-9 int a/m/ctime, 10-12 float a/m/ctime, 13-15 a/m/ctime_ns, 16 blksize, 17 blocks,
        # 18 rdev.  The float is computed as CPython's own os.stat computes it.
        return os.stat_result((
            self.mode, self.ino, dev, self.nlink, self.uid, self.gid, self.size,
            a, m, c, a + an * 1e-9, m + mn * 1e-9, c + cn * 1e-9,
            a * 1_000_000_000 + an, m * 1_000_000_000 + mn, c * 1_000_000_000 + cn,
            self.blksize, self.blocks, decode_dev(rdev) if rdev else 0) + _STAT_PAD)


_STAT_PAD = (0,) * (os.stat_result.n_fields - 19)


def _signed64(v: int) -> int:
    return v - (1 << 64) if v >= 1 << 63 else v


def encode_dev(rdev: int) -> int:
    """Userspace ``dev_t`` -> the kernel's 32-bit encoding carried in fuse_attr.rdev."""
    major, minor = os.major(rdev), os.minor(rdev)
    return ((minor & 0xFF) | (major << 8) | ((minor & ~0xFF) << 12)) & _U32


def decode_dev(rdev: int) -> int:
    """fuse_attr.rdev (kernel 32-bit encoding) -> userspace ``dev_t``."""
    return os.makedev((rdev & 0xFFF00) >> 8, (rdev & 0xFF) | ((rdev >> 12) & 0xFFF00))


_ATTR_GET = attrgetter(*(f.name for f in fields(Attr)))


@_wire
@dataclass(frozen=True, slots=True)
class EntryOut(WireStruct):
    """struct fuse_entry_out: reply to LOOKUP, CREATE, MKNOD, MKDIR, SYMLINK, LINK."""

    STRUCT = _S("4Q2I" + "6Q10I")
    nodeid: int = 0
    generation: int = 0
    entry_valid: int = 0
    attr_valid: int = 0
    entry_valid_nsec: int = 0
    attr_valid_nsec: int = 0
    attr: Attr = field(default_factory=Attr)

    @classmethod
    def unpack_from(cls, buf: Any, offset: int = 0) -> EntryOut:
        v = _unpack_raw(cls, buf, offset)
        return cls(v[0], v[1], v[2], v[3], v[4], v[5], Attr(*v[6:]))

    def _wire_values(self) -> tuple:
        return (
            self.nodeid,
            self.generation,
            self.entry_valid,
            self.attr_valid,
            self.entry_valid_nsec,
            self.attr_valid_nsec,
            *_ATTR_GET(self.attr),
        )


@_wire
@dataclass(frozen=True, slots=True)
class EntryVerOut(WireStruct):
    """vfscluster extension (the 2018 prototype's fuse_entryver_out): follows an EntryOut when
    InitFlags.ENTRY_VERSION was negotiated; the version-table slot and the value the host read
    before it read the attributes."""

    STRUCT = _S("QQ")
    version_index: int = 0
    version: int = 0


@_wire
@dataclass(frozen=True, slots=True)
class AttrOut(WireStruct):
    """struct fuse_attr_out: reply to GETATTR and SETATTR."""

    STRUCT = _S("QI4x" + "6Q10I")
    attr_valid: int = 0
    attr_valid_nsec: int = 0
    attr: Attr = field(default_factory=Attr)

    @classmethod
    def unpack_from(cls, buf: Any, offset: int = 0) -> AttrOut:
        v = _unpack_raw(cls, buf, offset)
        return cls(v[0], v[1], Attr(*v[2:]))

    def _wire_values(self) -> tuple:
        return (self.attr_valid, self.attr_valid_nsec, *_ATTR_GET(self.attr))


@_wire
@dataclass(frozen=True, slots=True)
class GetattrIn(WireStruct):
    """struct fuse_getattr_in."""

    STRUCT = _S("I4xQ")
    getattr_flags: int = 0  # GETATTR_FH
    fh: int = 0


@_wire
@dataclass(frozen=True, slots=True)
class SetattrIn(WireStruct):
    """struct fuse_setattr_in (``valid`` is SetattrValid)."""

    STRUCT = _S("I4x6Q4I4xII4x")
    valid: int = 0
    fh: int = 0
    size: int = 0
    lock_owner: int = 0
    atime: int = 0
    mtime: int = 0
    ctime: int = 0
    atimensec: int = 0
    mtimensec: int = 0
    ctimensec: int = 0
    mode: int = 0
    uid: int = 0
    gid: int = 0


@_wire
@dataclass(frozen=True, slots=True)
class StatxIn(WireStruct):
    """struct fuse_statx_in."""

    STRUCT = _S("I4xQII")
    getattr_flags: int = 0
    fh: int = 0
    sx_flags: int = 0
    sx_mask: int = 0


# --------------------------------------------------------------------------------------------
# Creating, opening, reading, writing
# --------------------------------------------------------------------------------------------


@_wire
@dataclass(frozen=True, slots=True)
class OpenIn(WireStruct):
    """struct fuse_open_in (OPEN, OPENDIR)."""

    STRUCT = _S("II")
    flags: int = 0  # open(2) flags
    open_flags: int = 0  # OPEN_KILL_SUIDGID


@_wire
@dataclass(frozen=True, slots=True)
class OpenOut(WireStruct):
    """struct fuse_open_out (``open_flags`` is OpenOutFlags)."""

    STRUCT = _S("QIi")
    fh: int = 0
    open_flags: int = 0
    backing_id: int = 0


@_wire
@dataclass(frozen=True, slots=True)
class CreateIn(WireStruct):
    """struct fuse_create_in (followed by name\\0)."""

    STRUCT = _S("4I")
    flags: int = 0
    mode: int = 0
    umask: int = 0
    open_flags: int = 0


@_wire
@dataclass(frozen=True, slots=True)
class MknodIn(WireStruct):
    """struct fuse_mknod_in (followed by name\\0)."""

    STRUCT = _S("3I4x")
    mode: int = 0
    rdev: int = 0
    umask: int = 0


@_wire
@dataclass(frozen=True, slots=True)
class MkdirIn(WireStruct):
    """struct fuse_mkdir_in (followed by name\\0)."""

    STRUCT = _S("II")
    mode: int = 0
    umask: int = 0


@_wire
@dataclass(frozen=True, slots=True)
class RenameIn(WireStruct):
    """struct fuse_rename_in (followed by oldname\\0newname\\0)."""

    STRUCT = _S("Q")
    newdir: int = 0


@_wire
@dataclass(frozen=True, slots=True)
class Rename2In(WireStruct):
    """struct fuse_rename2_in (followed by oldname\\0newname\\0)."""

    STRUCT = _S("QI4x")
    newdir: int = 0
    flags: int = 0  # RENAME_NOREPLACE / RENAME_EXCHANGE / RENAME_WHITEOUT


@_wire
@dataclass(frozen=True, slots=True)
class LinkIn(WireStruct):
    """struct fuse_link_in (followed by newname\\0)."""

    STRUCT = _S("Q")
    oldnodeid: int = 0


@_wire
@dataclass(frozen=True, slots=True)
class ReadIn(WireStruct):
    """struct fuse_read_in (READ, READDIR, READDIRPLUS)."""

    STRUCT = _S("QQIIQI4x")
    fh: int = 0
    offset: int = 0
    size: int = 0
    read_flags: int = 0  # READ_LOCKOWNER
    lock_owner: int = 0
    flags: int = 0


@_wire
@dataclass(frozen=True, slots=True)
class WriteIn(WireStruct):
    """struct fuse_write_in (followed by ``size`` bytes of data)."""

    STRUCT = _S("QQIIQI4x")
    fh: int = 0
    offset: int = 0
    size: int = 0
    write_flags: int = 0  # WRITE_CACHE / WRITE_LOCKOWNER / WRITE_KILL_SUIDGID
    lock_owner: int = 0
    flags: int = 0


@_wire
@dataclass(frozen=True, slots=True)
class WriteOut(WireStruct):
    """struct fuse_write_out."""

    STRUCT = _S("I4x")
    size: int = 0


@_wire
@dataclass(frozen=True, slots=True)
class ReleaseIn(WireStruct):
    """struct fuse_release_in (RELEASE, RELEASEDIR)."""

    STRUCT = _S("QIIQ")
    fh: int = 0
    flags: int = 0
    release_flags: int = 0  # RELEASE_FLUSH / RELEASE_FLOCK_UNLOCK
    lock_owner: int = 0


@_wire
@dataclass(frozen=True, slots=True)
class FlushIn(WireStruct):
    """struct fuse_flush_in."""

    STRUCT = _S("Q8xQ")
    fh: int = 0
    lock_owner: int = 0


@_wire
@dataclass(frozen=True, slots=True)
class FsyncIn(WireStruct):
    """struct fuse_fsync_in (FSYNC, FSYNCDIR)."""

    STRUCT = _S("QI4x")
    fh: int = 0
    fsync_flags: int = 0  # FSYNC_FDATASYNC


@_wire
@dataclass(frozen=True, slots=True)
class FallocateIn(WireStruct):
    """struct fuse_fallocate_in."""

    STRUCT = _S("3QI4x")
    fh: int = 0
    offset: int = 0
    length: int = 0
    mode: int = 0


@_wire
@dataclass(frozen=True, slots=True)
class LseekIn(WireStruct):
    """struct fuse_lseek_in."""

    STRUCT = _S("QQI4x")
    fh: int = 0
    offset: int = 0
    whence: int = 0


@_wire
@dataclass(frozen=True, slots=True)
class LseekOut(WireStruct):
    """struct fuse_lseek_out."""

    STRUCT = _S("Q")
    offset: int = 0


@_wire
@dataclass(frozen=True, slots=True)
class CopyFileRangeIn(WireStruct):
    """struct fuse_copy_file_range_in (reply: WriteOut, or CopyFileRangeOut for opcode 53)."""

    STRUCT = _S("7Q")
    fh_in: int = 0
    off_in: int = 0
    nodeid_out: int = 0
    fh_out: int = 0
    off_out: int = 0
    len: int = 0
    flags: int = 0


@_wire
@dataclass(frozen=True, slots=True)
class CopyFileRangeOut(WireStruct):
    """struct fuse_copy_file_range_out (reply to COPY_FILE_RANGE_64)."""

    STRUCT = _S("Q")
    bytes_copied: int = 0


# --------------------------------------------------------------------------------------------
# Forget, init, interrupt
# --------------------------------------------------------------------------------------------


@_wire
@dataclass(frozen=True, slots=True)
class ForgetIn(WireStruct):
    """struct fuse_forget_in."""

    STRUCT = _S("Q")
    nlookup: int = 0


@_wire
@dataclass(frozen=True, slots=True)
class ForgetOne(WireStruct):
    """struct fuse_forget_one (an element of a BATCH_FORGET)."""

    STRUCT = _S("QQ")
    nodeid: int = 0
    nlookup: int = 0


@_wire
@dataclass(frozen=True, slots=True)
class BatchForgetIn(WireStruct):
    """struct fuse_batch_forget_in (followed by ``count`` ForgetOne)."""

    STRUCT = _S("I4x")
    count: int = 0


@_wire
@dataclass(frozen=True, slots=True)
class InitIn(WireStruct):
    """struct fuse_init_in (64 bytes since 7.36; older kernels send the first 16)."""

    STRUCT = _S("5I44x")
    major: int = 0
    minor: int = 0
    max_readahead: int = 0
    flags: int = 0
    flags2: int = 0

    @classmethod
    def parse(cls, body: Any) -> InitIn:
        """Decode an INIT request body of either size (bytes past 64 are ignored)."""
        n = len(body)
        if n >= cls.SIZE:
            return cls.unpack_from(body)
        if n < INIT_IN_COMPAT_SIZE:
            raise RemoteProtocolError(f"FUSE_INIT body is {n} bytes, at least 16 needed")
        init = cls.unpack_compat(body, 0, INIT_IN_COMPAT_SIZE)
        if init.flags & InitFlags.INIT_EXT:
            raise RemoteProtocolError(f"FUSE_INIT sets INIT_EXT but its body is only {n} bytes")
        return init

    @property
    def all_flags(self) -> InitFlags:
        """The 64-bit flag set; flags2 counts only when INIT_EXT is set (as the kernel reads it)."""
        return join_init_flags(self.flags, self.flags2 if self.flags & InitFlags.INIT_EXT else 0)


@_wire
@dataclass(frozen=True, slots=True)
class InitOut(WireStruct):
    """struct fuse_init_out (truncate to :func:`init_out_size` for very old kernels)."""

    STRUCT = _S("4IHHIIHHIIH22x")
    major: int = 0
    minor: int = 0
    max_readahead: int = 0
    flags: int = 0
    max_background: int = 0
    congestion_threshold: int = 0
    max_write: int = 0
    time_gran: int = 0
    max_pages: int = 0
    map_alignment: int = 0  # log2 of the DAX mapping alignment
    flags2: int = 0
    max_stack_depth: int = 0
    request_timeout: int = 0

    @property
    def all_flags(self) -> InitFlags:
        """The 64-bit flag set; flags2 counts only when INIT_EXT is set (as the kernel reads it)."""
        return join_init_flags(self.flags, self.flags2 if self.flags & InitFlags.INIT_EXT else 0)


@_wire
@dataclass(frozen=True, slots=True)
class InterruptIn(WireStruct):
    """struct fuse_interrupt_in."""

    STRUCT = _S("Q")
    unique: int = 0


# --------------------------------------------------------------------------------------------
# Locks, access, xattrs, statfs
# --------------------------------------------------------------------------------------------


@_wire
@dataclass(frozen=True, slots=True)
class FileLock(WireStruct):
    """struct fuse_file_lock (``end`` is inclusive; ``type`` is F_RDLCK/F_WRLCK/F_UNLCK)."""

    STRUCT = _S("QQII")
    start: int = 0
    end: int = 0
    type: int = 0
    pid: int = 0


_LOCK_GET = attrgetter("start", "end", "type", "pid")


@_wire
@dataclass(frozen=True, slots=True)
class LkIn(WireStruct):
    """struct fuse_lk_in (GETLK, SETLK, SETLKW)."""

    STRUCT = _S("QQ" + "QQII" + "I4x")
    fh: int = 0
    owner: int = 0
    lk: FileLock = field(default_factory=FileLock)
    lk_flags: int = 0  # LK_FLOCK

    @classmethod
    def unpack_from(cls, buf: Any, offset: int = 0) -> LkIn:
        v = _unpack_raw(cls, buf, offset)
        return cls(v[0], v[1], FileLock(v[2], v[3], v[4], v[5]), v[6])

    def _wire_values(self) -> tuple:
        return (self.fh, self.owner, *_LOCK_GET(self.lk), self.lk_flags)


@_wire
@dataclass(frozen=True, slots=True)
class LkOut(WireStruct):
    """struct fuse_lk_out (reply to GETLK)."""

    STRUCT = _S("QQII")
    lk: FileLock = field(default_factory=FileLock)

    @classmethod
    def unpack_from(cls, buf: Any, offset: int = 0) -> LkOut:
        return cls(FileLock.unpack_from(buf, offset))

    def _wire_values(self) -> tuple:
        return _LOCK_GET(self.lk)


@_wire
@dataclass(frozen=True, slots=True)
class AccessIn(WireStruct):
    """struct fuse_access_in."""

    STRUCT = _S("I4x")
    mask: int = 0


@_wire
@dataclass(frozen=True, slots=True)
class GetxattrIn(WireStruct):
    """struct fuse_getxattr_in (GETXATTR followed by name\\0; LISTXATTR)."""

    STRUCT = _S("I4x")
    size: int = 0


@_wire
@dataclass(frozen=True, slots=True)
class GetxattrOut(WireStruct):
    """struct fuse_getxattr_out (the reply when the request's size was 0)."""

    STRUCT = _S("I4x")
    size: int = 0


@_wire
@dataclass(frozen=True, slots=True)
class SetxattrIn(WireStruct):
    """struct fuse_setxattr_in (followed by name\\0 and the value; 8 bytes without
    SETXATTR_EXT: read it with ``unpack_compat(buf, 0, setxattr_in_size(ext))``)."""

    STRUCT = _S("III4x")
    size: int = 0
    flags: int = 0
    setxattr_flags: int = 0  # SETXATTR_ACL_KILL_SGID


@_wire
@dataclass(frozen=True, slots=True)
class Kstatfs(WireStruct):
    """struct fuse_kstatfs."""

    STRUCT = _S("5Q3I4x24x")
    blocks: int = 0
    bfree: int = 0
    bavail: int = 0
    files: int = 0
    ffree: int = 0
    bsize: int = 0
    namelen: int = 0
    frsize: int = 0

    @classmethod
    def from_statvfs(cls, st: os.statvfs_result) -> Kstatfs:
        """The fields of an ``os.statvfs`` result."""
        return cls(
            st.f_blocks,
            st.f_bfree,
            st.f_bavail,
            st.f_files,
            st.f_ffree,
            st.f_bsize,
            st.f_namemax,
            st.f_frsize,
        )

    def to_statvfs_result(self) -> os.statvfs_result:
        """A real ``os.statvfs_result`` (f_favail = f_ffree as glibc reports it; flag, fsid 0)."""
        seq = (self.bsize, self.frsize, self.blocks, self.bfree, self.bavail,
               self.files, self.ffree, self.ffree, 0, self.namelen, 0)  # fmt: skip
        return os.statvfs_result(seq[: os.statvfs_result.n_fields])


_KSTATFS_GET = attrgetter(*(f.name for f in fields(Kstatfs)))


@_wire
@dataclass(frozen=True, slots=True)
class StatfsOut(WireStruct):
    """struct fuse_statfs_out."""

    STRUCT = Kstatfs.STRUCT
    st: Kstatfs = field(default_factory=Kstatfs)

    @classmethod
    def unpack_from(cls, buf: Any, offset: int = 0) -> StatfsOut:
        return cls(Kstatfs.unpack_from(buf, offset))

    def _wire_values(self) -> tuple:
        return _KSTATFS_GET(self.st)


# --------------------------------------------------------------------------------------------
# Directories
# --------------------------------------------------------------------------------------------


@_wire
@dataclass(frozen=True, slots=True)
class Dirent(WireStruct):
    """The fixed part of struct fuse_dirent (then ``namelen`` name bytes, padded to 8)."""

    STRUCT = _S("QQII")
    ino: int = 0
    off: int = 0  # cookie of the next entry
    namelen: int = 0
    type: int = 0  # DT_* = (st_mode & S_IFMT) >> 12


# --------------------------------------------------------------------------------------------
# DAX mappings, syncfs
# --------------------------------------------------------------------------------------------


@_wire
@dataclass(frozen=True, slots=True)
class SetupmappingIn(WireStruct):
    """struct fuse_setupmapping_in (``flags`` is SetupmappingFlags)."""

    STRUCT = _S("5Q")
    fh: int = 0
    foffset: int = 0
    len: int = 0
    flags: int = 0
    moffset: int = 0


@_wire
@dataclass(frozen=True, slots=True)
class RemovemappingIn(WireStruct):
    """struct fuse_removemapping_in: 4 bytes, then ``count`` RemovemappingOne at offset 4."""

    STRUCT = _S("I")
    count: int = 0


@_wire
@dataclass(frozen=True, slots=True)
class RemovemappingOne(WireStruct):
    """struct fuse_removemapping_one."""

    STRUCT = _S("QQ")
    moffset: int = 0
    len: int = 0


@_wire
@dataclass(frozen=True, slots=True)
class SyncfsIn(WireStruct):
    """struct fuse_syncfs_in (padding only)."""

    STRUCT = _S("8x")


# --------------------------------------------------------------------------------------------
# Poll, ioctl, bmap
# --------------------------------------------------------------------------------------------


@_wire
@dataclass(frozen=True, slots=True)
class PollIn(WireStruct):
    """struct fuse_poll_in."""

    STRUCT = _S("QQII")
    fh: int = 0
    kh: int = 0
    flags: int = 0  # POLL_SCHEDULE_NOTIFY
    events: int = 0


@_wire
@dataclass(frozen=True, slots=True)
class PollOut(WireStruct):
    """struct fuse_poll_out."""

    STRUCT = _S("I4x")
    revents: int = 0


@_wire
@dataclass(frozen=True, slots=True)
class IoctlIn(WireStruct):
    """struct fuse_ioctl_in."""

    STRUCT = _S("QIIQII")
    fh: int = 0
    flags: int = 0  # IOCTL_*
    cmd: int = 0
    arg: int = 0
    in_size: int = 0
    out_size: int = 0


@_wire
@dataclass(frozen=True, slots=True)
class IoctlOut(WireStruct):
    """struct fuse_ioctl_out."""

    STRUCT = _S("iIII")
    result: int = 0
    flags: int = 0
    in_iovs: int = 0
    out_iovs: int = 0


@_wire
@dataclass(frozen=True, slots=True)
class IoctlIovec(WireStruct):
    """struct fuse_ioctl_iovec."""

    STRUCT = _S("QQ")
    base: int = 0
    len: int = 0


@_wire
@dataclass(frozen=True, slots=True)
class BmapIn(WireStruct):
    """struct fuse_bmap_in."""

    STRUCT = _S("QI4x")
    block: int = 0
    blocksize: int = 0


@_wire
@dataclass(frozen=True, slots=True)
class BmapOut(WireStruct):
    """struct fuse_bmap_out."""

    STRUCT = _S("Q")
    block: int = 0


# --------------------------------------------------------------------------------------------
# Request extensions (after the args, counted by in_header.total_extlen)
# --------------------------------------------------------------------------------------------


@_wire
@dataclass(frozen=True, slots=True)
class ExtHeader(WireStruct):
    """struct fuse_ext_header (``size`` includes this header)."""

    STRUCT = _S("II")
    size: int = 0
    type: int = 0  # EXT_GROUPS, or <= MAX_NR_SECCTX for a fuse_secctx_header


@_wire
@dataclass(frozen=True, slots=True)
class SecctxHeader(WireStruct):
    """struct fuse_secctx_header."""

    STRUCT = _S("II")
    size: int = 0
    nr_secctx: int = 0


@_wire
@dataclass(frozen=True, slots=True)
class Secctx(WireStruct):
    """struct fuse_secctx (then name\\0 and the context)."""

    STRUCT = _S("I4x")
    size: int = 0


# --------------------------------------------------------------------------------------------
# Notifications (server -> client: out_header{unique=0, error=code} + one of these)
# --------------------------------------------------------------------------------------------


@_wire
@dataclass(frozen=True, slots=True)
class NotifyPollWakeupOut(WireStruct):
    """struct fuse_notify_poll_wakeup_out."""

    STRUCT = _S("Q")
    kh: int = 0


@_wire
@dataclass(frozen=True, slots=True)
class NotifyInvalInodeOut(WireStruct):
    """struct fuse_notify_inval_inode_out (off < 0: attributes only; len <= 0: to EOF)."""

    STRUCT = _S("Qqq")
    ino: int = 0
    off: int = 0
    len: int = 0


@_wire
@dataclass(frozen=True, slots=True)
class NotifyInvalEntryOut(WireStruct):
    """struct fuse_notify_inval_entry_out (then name\\0)."""

    STRUCT = _S("QII")
    parent: int = 0
    namelen: int = 0
    flags: int = 0  # EXPIRE_ONLY


@_wire
@dataclass(frozen=True, slots=True)
class NotifyDeleteOut(WireStruct):
    """struct fuse_notify_delete_out (then name\\0)."""

    STRUCT = _S("QQI4x")
    parent: int = 0
    child: int = 0
    namelen: int = 0


@_wire
@dataclass(frozen=True, slots=True)
class NotifyStoreOut(WireStruct):
    """struct fuse_notify_store_out (then ``size`` bytes of data)."""

    STRUCT = _S("QQI4x")
    nodeid: int = 0
    offset: int = 0
    size: int = 0


@_wire
@dataclass(frozen=True, slots=True)
class NotifyRetrieveOut(WireStruct):
    """struct fuse_notify_retrieve_out."""

    STRUCT = _S("QQQI4x")
    notify_unique: int = 0
    nodeid: int = 0
    offset: int = 0
    size: int = 0


@_wire
@dataclass(frozen=True, slots=True)
class NotifyRetrieveIn(WireStruct):
    """struct fuse_notify_retrieve_in (body of the NOTIFY_REPLY request; shaped like WriteIn)."""

    STRUCT = _S("8xQI4x16x")
    offset: int = 0
    size: int = 0


@_wire
@dataclass(frozen=True, slots=True)
class NotifyPruneOut(WireStruct):
    """struct fuse_notify_prune_out (then ``count`` u64 nodeids)."""

    STRUCT = _S("I4x8x")
    count: int = 0


@_wire
@dataclass(frozen=True, slots=True)
class NotifyLockOut(WireStruct):
    """struct fuse_notify_lock_out of the unmerged virtio-fs lock series (NOTIFY_LOCK): the
    waiting SETLKW with this ``unique`` finished with ``error`` (0 or a negative errno)."""

    STRUCT = _S("Qi4x")
    unique: int = 0
    error: int = 0


# --------------------------------------------------------------------------------------------
# Sizes, asserted against the kernel header's sizeof()
# --------------------------------------------------------------------------------------------

KERNEL_SIZES: dict[type, int] = {
    InHeader: 40, OutHeader: 16, Attr: 88, EntryOut: 128, AttrOut: 104, GetattrIn: 16,
    SetattrIn: 88, OpenIn: 8, OpenOut: 16, CreateIn: 16, MknodIn: 16, MkdirIn: 8, RenameIn: 8,
    Rename2In: 16, LinkIn: 8, ReadIn: 40, WriteIn: 40, WriteOut: 8, ReleaseIn: 24, FlushIn: 24,
    FsyncIn: 16, ForgetIn: 8, ForgetOne: 16, BatchForgetIn: 8, InitIn: 64, InitOut: 64,
    InterruptIn: 8, FileLock: 24, LkIn: 48, LkOut: 24, AccessIn: 8, GetxattrIn: 8,
    GetxattrOut: 8, SetxattrIn: 16, Kstatfs: 80, StatfsOut: 80, Dirent: 24, FallocateIn: 32,
    LseekIn: 24, LseekOut: 8, CopyFileRangeIn: 56, CopyFileRangeOut: 8, SetupmappingIn: 40,
    RemovemappingIn: 4, RemovemappingOne: 16, SyncfsIn: 8, StatxIn: 24, PollIn: 24, PollOut: 8,
    IoctlIn: 32, IoctlOut: 16, IoctlIovec: 16, BmapIn: 16, BmapOut: 8, ExtHeader: 8,
    SecctxHeader: 8, Secctx: 8, NotifyPollWakeupOut: 8, NotifyInvalInodeOut: 24,
    NotifyInvalEntryOut: 16, NotifyDeleteOut: 24, NotifyStoreOut: 24, NotifyRetrieveOut: 32,
    NotifyRetrieveIn: 40, NotifyPruneOut: 16, NotifyLockOut: 16, EntryVerOut: 16,
}  # fmt: skip
"""Every struct class of this module -> sizeof() of its C struct."""

for _cls, _size in KERNEL_SIZES.items():
    assert _cls.SIZE == _size, (_cls.__name__, _cls.SIZE, _size)
    assert _cls.unpack_from(bytes(_size)).pack() == bytes(_size), _cls.__name__
del _cls, _size
assert NAME_OFFSET == Dirent.SIZE
assert NAME_OFFSET_DIRENTPLUS == EntryOut.SIZE + Dirent.SIZE
assert REMOVEMAPPING_MAX_ENTRY == 4096 // RemovemappingOne.SIZE

# --------------------------------------------------------------------------------------------
# Directory records
# --------------------------------------------------------------------------------------------

_DIRENT = Dirent.STRUCT


def dirent_size(namelen: int) -> int:
    """FUSE_DIRENT_SIZE: bytes of a READDIR record with a ``namelen``-byte name (8-aligned)."""
    return (NAME_OFFSET + namelen + 7) & ~7


def direntplus_size(namelen: int) -> int:
    """FUSE_DIRENTPLUS_SIZE: bytes of a READDIRPLUS record (8-aligned)."""
    return (NAME_OFFSET_DIRENTPLUS + namelen + 7) & ~7


def dirent_type(mode: int) -> int:
    """The DT_* value for an ``st_mode``."""
    return (mode & 0o170000) >> 12


def _bad_name(name: bytes) -> str | None:
    if not 0 < len(name) <= DIRENT_NAME_MAX:
        return f"name length {len(name)} outside 1..{DIRENT_NAME_MAX}"
    if b"/" in name or b"\0" in name:
        return f"name {name!r} contains '/' or NUL"
    return None


def pack_dirent(ino: int, off: int, type: int, name: bytes) -> bytes:
    """One READDIR record: fuse_dirent + name + zero padding to a multiple of 8."""
    name = bytes(name)
    problem = _bad_name(name)
    if problem:
        raise LocalProtocolError(f"dirent: {problem}")
    n = len(name)
    return _DIRENT.pack(ino, off, n, type) + name + bytes(-(NAME_OFFSET + n) & 7)


def pack_direntplus(entry: EntryOut, ino: int, off: int, type: int, name: bytes) -> bytes:
    """One READDIRPLUS record: fuse_entry_out + fuse_dirent + name + zero padding."""
    return entry.pack() + pack_dirent(ino, off, type, name)


def _dirent_at(buf: Any, pos: int, end: int) -> tuple[Dirent, bytes, int]:
    """The Dirent whose fixed part is at ``pos``, its name, and the end of its padded record."""
    dirent = Dirent.unpack_from(buf, pos)
    n = dirent.namelen
    if not 0 < n <= DIRENT_NAME_MAX:
        raise RemoteProtocolError(f"dirent namelen {n} outside 1..{DIRENT_NAME_MAX}")
    rec_end = pos + ((Dirent.SIZE + n + 7) & ~7)
    if rec_end > end:
        raise RemoteProtocolError(
            f"dirent record ({n}-byte name) runs {rec_end - end} bytes past the buffer"
        )
    name = bytes(buf[pos + Dirent.SIZE : pos + Dirent.SIZE + n])
    if b"/" in name or b"\0" in name:
        raise RemoteProtocolError(f"dirent name {name!r} contains '/' or NUL")
    return dirent, name, rec_end


def iter_dirents(buf: Any) -> Iterator[tuple[Dirent, bytes]]:
    """The (Dirent, name) records of a READDIR reply body."""
    end = len(buf)
    pos = 0
    while pos < end:
        if end - pos < NAME_OFFSET:
            raise RemoteProtocolError(f"truncated dirent: {end - pos} bytes left")
        dirent, name, pos = _dirent_at(buf, pos, end)
        yield dirent, name


def iter_direntplus(buf: Any) -> Iterator[tuple[EntryOut, Dirent, bytes]]:
    """The (EntryOut, Dirent, name) records of a READDIRPLUS reply body."""
    end = len(buf)
    pos = 0
    while pos < end:
        if end - pos < NAME_OFFSET_DIRENTPLUS:
            raise RemoteProtocolError(f"truncated direntplus: {end - pos} bytes left")
        entry = EntryOut.unpack_from(buf, pos)
        dirent, name, pos = _dirent_at(buf, pos + EntryOut.SIZE, end)
        yield entry, dirent, name


# --------------------------------------------------------------------------------------------
# C strings
# --------------------------------------------------------------------------------------------


def encode_name(name: bytes) -> bytes:
    """``name`` + NUL, as request bodies carry names."""
    name = bytes(name)
    if b"\0" in name:
        raise LocalProtocolError(f"name {name!r} contains NUL")
    return name + b"\0"


def decode_cstr(buf: Any, offset: int = 0) -> tuple[bytes, int]:
    """The bytes from ``offset`` up to the next NUL, and the offset just past that NUL."""
    data = buf if isinstance(buf, (bytes, bytearray)) else bytes(buf)
    nul = data.find(b"\0", offset) if offset >= 0 else -1
    if nul < 0:
        raise RemoteProtocolError(f"no NUL-terminated string at offset {offset}")
    return bytes(data[offset:nul]), nul + 1
