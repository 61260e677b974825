"""Structs of the session itself: FORGET / BATCH_FORGET, INIT and INTERRUPT."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from vfscluster.errors import RemoteProtocolError

from .constants import INIT_IN_COMPAT_SIZE, InitFlags, join_init_flags
from .wire import WireStruct, _S, _wire

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
