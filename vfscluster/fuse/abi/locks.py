"""POSIX and BSD lock structs: fuse_file_lock, fuse_lk_in and fuse_lk_out."""

from __future__ import annotations

from dataclasses import dataclass, field
from operator import attrgetter
from typing import Any

from .wire import WireStruct, _S, _unpack_raw, _wire

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
        return cls._BUILD(v[0], v[1], FileLock._BUILD(v[2], v[3], v[4], v[5]), v[6])

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
        return cls._BUILD(FileLock.unpack_from(buf, offset))

    def _wire_values(self) -> tuple:
        return _LOCK_GET(self.lk)
