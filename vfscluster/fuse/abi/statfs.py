"""Filesystem statistics: fuse_kstatfs and fuse_statfs_out (with ``os.statvfs`` conversions)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from operator import attrgetter
from typing import Any

from .wire import WireStruct, _S, _wire

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

    def to_statvfs_result(self, flag: int = 0) -> os.statvfs_result:
        """A real ``os.statvfs_result`` (f_favail = f_ffree as glibc reports it; ``flag``: the
        mount's ST_* flags, which the kernel adds; fsid 0)."""
        seq = (self.bsize, self.frsize, self.blocks, self.bfree, self.bavail,
               self.files, self.ffree, self.ffree, flag, self.namelen, 0)  # fmt: skip
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
        return cls._BUILD(Kstatfs.unpack_from(buf, offset))

    def _wire_values(self) -> tuple:
        return _KSTATFS_GET(self.st)
