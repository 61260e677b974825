"""DAX mapping structs (SETUPMAPPING, REMOVEMAPPING) and SYNCFS."""

from __future__ import annotations

from dataclasses import dataclass

from .wire import WireStruct, _S, _wire

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
