"""Structs of POLL, IOCTL and BMAP."""

from __future__ import annotations

from dataclasses import dataclass

from .wire import WireStruct, _S, _wire

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
