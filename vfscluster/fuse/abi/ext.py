"""Request extensions: the headers that follow a request's args (security contexts, groups)."""

from __future__ import annotations

from dataclasses import dataclass

from .wire import WireStruct, _S, _wire

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
