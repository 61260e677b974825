"""Notification structs (server -> client: out_header{unique=0, error=code} + one of these)."""

from __future__ import annotations

from dataclasses import dataclass

from .wire import WireStruct, _S, _wire

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
