"""The request and reply headers: fuse_in_header and fuse_out_header."""

from __future__ import annotations

from dataclasses import dataclass

from .wire import WireStruct, _S, _wire

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
