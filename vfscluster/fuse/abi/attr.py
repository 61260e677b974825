"""Attributes and entries: fuse_attr, fuse_entry_out, fuse_attr_out and friends.

The nested ``Attr`` struct (with its conversions from and to ``os.stat_result`` and the kernel's
``dev_t`` encoding), the entry and attribute replies, vfscluster's EntryVerOut extension and the
GETATTR / SETATTR / STATX request structs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from operator import attrgetter
from typing import Any

from .constants import _U32, _U64
from .wire import WireStruct, _S, _unpack_raw, _wire

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
        return cls._BUILD(v[0], v[1], v[2], v[3], v[4], v[5], Attr._BUILD(*v[6:]))

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
        return cls._BUILD(v[0], v[1], Attr._BUILD(*v[2:]))

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
