"""vhost-user validation tables: per request, its payload, fd rule, reply and required feature.

``FdRule`` and ``RequestSpec``, the ``FRONTEND_REQUESTS`` and ``BACKEND_REQUESTS`` tables the
backend dispatcher and the frontend's backend-channel server check every message against, and
the helpers that name a request, parse its payload and decode a vring-fd u64.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Optional

from vfscluster.errors import VhostUserError

from .constants import (
    VRING_IDX_MASK, VRING_NOFD_MASK, MEMORY_BASELINE_NREGIONS, FrontendReq, BackendReq,
    ProtocolFeatures,
)
from .payloads import (
    U64, VringState, VringAddr, MemoryTable, SingleMemoryRegion, DeviceConfig, VringArea, Inflight,
    ShmemMap, ShmemUnmap, ShmemConfig, SharedObject,
)

# --------------------------------------------------------------------------------- validation tables


class FdRule(enum.Enum):
    """How many fds a request carries in its SCM_RIGHTS ancillary data."""

    NONE = "no fd"
    ONE = "exactly one fd"
    NOFD_BIT = "one fd, or none when VRING_NOFD_MASK is set in the payload"
    PER_REGION = "one fd per memory region, in order"
    IGNORED = "no fd; one is tolerated and closed unused"  # REM_MEM_REG, per the spec's compatibility rule

    def allows(self, nfds: int) -> bool:
        """Whether ``nfds`` is possible before the payload is parsed."""
        if self is FdRule.NONE:
            return nfds == 0
        if self is FdRule.ONE:
            return nfds == 1
        if self is FdRule.PER_REGION:
            return 1 <= nfds <= MEMORY_BASELINE_NREGIONS
        return nfds <= 1  # NOFD_BIT, IGNORED


@dataclass(frozen=True, slots=True)
class RequestSpec:
    """What one request carries and how it is answered.

    ``payload`` is the payload class (None: empty); ``size`` is the exact payload size, or None when it is
    variable and ``payload.unpack`` validates it; ``fds`` the fd rule; ``reply`` the class of the reply that
    is always sent (None: only an ack, when REPLY_ACK is negotiated and NEED_REPLY set); ``feature`` the
    protocol feature that must have been negotiated before the request is allowed.
    """

    payload: Optional[type]
    size: Optional[int]
    fds: FdRule
    reply: Optional[type] = None
    feature: Optional[ProtocolFeatures] = None


def _spec(payload: Optional[type], fds: FdRule = FdRule.NONE, reply: Optional[type] = None,
          feature: Optional[ProtocolFeatures] = None, variable: bool = False) -> RequestSpec:
    size = None if variable else (payload.SIZE if payload is not None else 0)
    return RequestSpec(payload, size, fds, reply, feature)


_PF = ProtocolFeatures

#: Front-end requests the back-end dispatcher supports.  Anything else is refused.
FRONTEND_REQUESTS: dict[FrontendReq, RequestSpec] = {
    FrontendReq.GET_FEATURES: _spec(None, reply=U64),
    FrontendReq.SET_FEATURES: _spec(U64),
    FrontendReq.SET_OWNER: _spec(None),
    FrontendReq.RESET_OWNER: _spec(None),
    FrontendReq.SET_MEM_TABLE: _spec(MemoryTable, FdRule.PER_REGION, variable=True),
    FrontendReq.SET_VRING_NUM: _spec(VringState),
    FrontendReq.SET_VRING_ADDR: _spec(VringAddr),
    FrontendReq.SET_VRING_BASE: _spec(VringState),
    FrontendReq.GET_VRING_BASE: _spec(VringState, reply=VringState),
    FrontendReq.SET_VRING_KICK: _spec(U64, FdRule.NOFD_BIT),
    FrontendReq.SET_VRING_CALL: _spec(U64, FdRule.NOFD_BIT),
    FrontendReq.SET_VRING_ERR: _spec(U64, FdRule.NOFD_BIT),
    FrontendReq.GET_PROTOCOL_FEATURES: _spec(None, reply=U64),
    FrontendReq.SET_PROTOCOL_FEATURES: _spec(U64),
    FrontendReq.GET_QUEUE_NUM: _spec(None, reply=U64, feature=_PF.MQ),
    FrontendReq.SET_VRING_ENABLE: _spec(VringState),
    FrontendReq.SET_BACKEND_REQ_FD: _spec(None, FdRule.ONE, feature=_PF.BACKEND_REQ),
    FrontendReq.GET_CONFIG: _spec(DeviceConfig, reply=DeviceConfig, feature=_PF.CONFIG, variable=True),
    FrontendReq.SET_CONFIG: _spec(DeviceConfig, feature=_PF.CONFIG, variable=True),
    FrontendReq.GET_INFLIGHT_FD: _spec(Inflight, reply=Inflight, feature=_PF.INFLIGHT_SHMFD),
    FrontendReq.SET_INFLIGHT_FD: _spec(Inflight, FdRule.ONE, feature=_PF.INFLIGHT_SHMFD),
    FrontendReq.RESET_DEVICE: _spec(None, feature=_PF.RESET_DEVICE),
    FrontendReq.GET_MAX_MEM_SLOTS: _spec(None, reply=U64, feature=_PF.CONFIGURE_MEM_SLOTS),
    FrontendReq.ADD_MEM_REG: _spec(SingleMemoryRegion, FdRule.ONE, feature=_PF.CONFIGURE_MEM_SLOTS),
    FrontendReq.REM_MEM_REG: _spec(SingleMemoryRegion, FdRule.IGNORED, feature=_PF.CONFIGURE_MEM_SLOTS),
    FrontendReq.SET_STATUS: _spec(U64, feature=_PF.STATUS),
    FrontendReq.GET_STATUS: _spec(None, reply=U64, feature=_PF.STATUS),
    # SHMEM is checked by the handler, not here: a back-end that offers no SHMEM answers "not supported".
    FrontendReq.GET_SHMEM_CONFIG: _spec(None, reply=ShmemConfig),
}

#: Back-end channel requests the front-end's channel server supports; each is answered with a u64 when
#: NEED_REPLY is set.  IOTLB_MSG and SHARED_OBJECT_LOOKUP are refused.
BACKEND_REQUESTS: dict[BackendReq, RequestSpec] = {
    BackendReq.CONFIG_CHANGE_MSG: _spec(None),
    BackendReq.VRING_HOST_NOTIFIER_MSG: _spec(VringArea, FdRule.NOFD_BIT),
    BackendReq.VRING_CALL: _spec(VringState),
    BackendReq.VRING_ERR: _spec(VringState),
    BackendReq.SHARED_OBJECT_ADD: _spec(SharedObject),
    BackendReq.SHARED_OBJECT_REMOVE: _spec(SharedObject),
    BackendReq.SHMEM_MAP: _spec(ShmemMap, FdRule.ONE),
    BackendReq.SHMEM_UNMAP: _spec(ShmemUnmap),
}


def request_name(request: int, enum_type: type[enum.IntEnum] = FrontendReq) -> str:
    """``SET_VRING_NUM(8)`` for a known id, ``request 999`` for an unknown one (for log messages)."""
    try:
        return f"{enum_type(request).name}({request})"
    except ValueError:
        return f"request {request}"


def parse_payload(spec: RequestSpec, payload: bytes, name: str = "message"):
    """Check ``payload`` against ``spec`` (exact size, then the payload class's rules); return the object.

    Returns None for an empty payload.  Raises VhostUserError with the reason.
    """
    if spec.size is not None and len(payload) != spec.size:
        raise VhostUserError(f"{name}: payload is {len(payload)} bytes, expected {spec.size}")
    if spec.payload is None:
        return None
    return spec.payload.unpack(payload)


def vring_fd_index(value: int, nfds: int, name: str = "message") -> tuple[int, bool]:
    """Decode the u64 of SET_VRING_KICK/CALL/ERR: return (index, has_fd), checking it against ``nfds``."""
    if value & ~(VRING_IDX_MASK | VRING_NOFD_MASK):
        raise VhostUserError(f"{name}: reserved bits set in u64 0x{value:x}")
    has_fd = not value & VRING_NOFD_MASK
    if has_fd and nfds != 1:
        raise VhostUserError(f"{name}: no fd attached and VRING_NOFD_MASK not set")
    if not has_fd and nfds != 0:
        raise VhostUserError(f"{name}: fd attached although VRING_NOFD_MASK is set")
    return value & VRING_IDX_MASK, has_fd
