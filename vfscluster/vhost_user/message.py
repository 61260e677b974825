"""vhost-user wire format: request ids, header flags, feature bits and payload structs.

Facts from QEMU ``docs/interop/vhost-user.rst`` / ``hw/virtio/vhost-user.c`` and rust-vmm/vhost
``vhost/src/vhost_user/message.rs`` (see ``../shared/reference/FACTS.md`` §4).  Everything is packed and in
host byte order.  Every payload is a frozen dataclass with ``SIZE``, ``pack()`` and ``unpack(payload)``;
``unpack`` checks the exact size and the field rules that rust-vmm checks, and raises
:class:`~vfscluster.errors.VhostUserError` with the reason.  ``pack`` does not re-validate values (so a test
can build a bad payload) but turns out-of-range integers into
:class:`~vfscluster.errors.LocalProtocolError`.

:data:`FRONTEND_REQUESTS` and :data:`BACKEND_REQUESTS` say, per request we support, what payload and how
many fds it carries and what it is answered with: the backend dispatcher and the frontend's backend-channel
server validate every message against them in one place.

This module is a facade: the code lives in ``constants`` (limits, masks, enums), ``payloads`` (the header and
payload structs) and ``validation`` (the per-request tables and helpers), and every name is re-exported here.
"""

from __future__ import annotations

from .constants import (
    VHOST_USER_F_PROTOCOL_FEATURES, HEADER_SIZE, MAX_PAYLOAD, MAX_FDS, VRING_IDX_MASK,
    VRING_NOFD_MASK, MEMORY_BASELINE_NREGIONS, MAX_CONFIG_SIZE, HEADER_VERSION_MASK,
    HEADER_FLAGS_MASK, VHOST_USER_VERSION, VRING_F_LOG, CONFIG_FLAGS_MASK, SHMEM_MAP_F_WRITABLE,
    FrontendReq, BackendReq, HeaderFlags, ProtocolFeatures,
)
from .payloads import (
    Header, U64, VringState, VringAddr, MemoryRegion, MemoryTable, SingleMemoryRegion, DeviceConfig,
    VringArea, Inflight, ShmemMap, ShmemUnmap, ShmemConfig, Log, SharedObject,
)
from .validation import (
    FdRule, RequestSpec, FRONTEND_REQUESTS, BACKEND_REQUESTS, request_name, parse_payload,
    vring_fd_index,
)

__all__ = [
    "VHOST_USER_F_PROTOCOL_FEATURES",
    "HEADER_SIZE",
    "MAX_PAYLOAD",
    "MAX_FDS",
    "VRING_IDX_MASK",
    "VRING_NOFD_MASK",
    "MEMORY_BASELINE_NREGIONS",
    "MAX_CONFIG_SIZE",
    "HEADER_VERSION_MASK",
    "HEADER_FLAGS_MASK",
    "VHOST_USER_VERSION",
    "VRING_F_LOG",
    "CONFIG_FLAGS_MASK",
    "SHMEM_MAP_F_WRITABLE",
    "FrontendReq",
    "BackendReq",
    "HeaderFlags",
    "ProtocolFeatures",
    "Header",
    "U64",
    "VringState",
    "VringAddr",
    "MemoryRegion",
    "MemoryTable",
    "SingleMemoryRegion",
    "DeviceConfig",
    "VringArea",
    "Inflight",
    "ShmemMap",
    "ShmemUnmap",
    "ShmemConfig",
    "Log",
    "SharedObject",
    "FdRule",
    "RequestSpec",
    "FRONTEND_REQUESTS",
    "BACKEND_REQUESTS",
    "request_name",
    "parse_payload",
    "vring_fd_index",
]
