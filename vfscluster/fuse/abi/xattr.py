"""Structs of ACCESS and of the extended-attribute requests (GET/SET/LISTXATTR)."""

from __future__ import annotations

from dataclasses import dataclass

from .wire import WireStruct, _S, _wire

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
