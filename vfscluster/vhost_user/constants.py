"""vhost-user constants and enums: limits, masks, request ids, header flags and protocol features.

The numeric limits and bit masks of the wire format, the ``FrontendReq`` and ``BackendReq``
request ids, the ``HeaderFlags`` of the message header and the ``ProtocolFeatures`` bits.
"""

from __future__ import annotations

import enum

# --------------------------------------------------------------------------------------------- constants

#: Virtio feature bit (in GET/SET_FEATURES) that announces vhost-user protocol features.
VHOST_USER_F_PROTOCOL_FEATURES = 1 << 30
#: Size of the message header: request u32, flags u32, size u32.
HEADER_SIZE = 12
#: Largest payload we accept or send (rust-vmm ``MAX_MSG_SIZE``; QEMU's own limit is its payload union).
MAX_PAYLOAD = 4096
#: Most fds we accept with one message (rust-vmm ``MAX_ATTACHED_FD_ENTRIES``); more closes the connection.
MAX_FDS = 32
#: Bits 0-7 of the u64 of SET_VRING_KICK/CALL/ERR (and of VringArea) hold the vring index.
VRING_IDX_MASK = 0xFF
#: Bit 8 of that u64: no fd attached (kick: poll the ring; call/err: no notifier).
VRING_NOFD_MASK = 0x100
#: Regions in one SET_MEM_TABLE (QEMU ``VHOST_MEMORY_BASELINE_NREGIONS``).
MEMORY_BASELINE_NREGIONS = 8
#: Largest device config access (QEMU ``VHOST_USER_MAX_CONFIG_SIZE``).
MAX_CONFIG_SIZE = 256
#: Header flag bits 0-1: protocol version.
HEADER_VERSION_MASK = 0x3
#: Every defined header flag bit; anything outside is reserved and refused (as rust-vmm does).
HEADER_FLAGS_MASK = 0xF
#: The protocol version we speak.
VHOST_USER_VERSION = 1
#: VringAddr.flags: log used-ring writes (``VHOST_VRING_F_LOG``); the only defined flag.
VRING_F_LOG = 0x1
#: DeviceConfig.flags bits: QEMU sends 0 (front-end write) or 1 (migration); rust-vmm reads them as the bit
#: mask WRITABLE=0x1, LIVE_MIGRATION=0x2.  Either way nothing above 0x3 is defined.
CONFIG_FLAGS_MASK = 0x3
#: ShmemMap.flags bit 0: map writable (rust-vmm ``VhostUserMMapFlags::WRITABLE``, QEMU ``VHOST_USER_FLAG_MAP_RW``).
SHMEM_MAP_F_WRITABLE = 0x1

_U64_MAX = (1 << 64) - 1


# ------------------------------------------------------------------------------------------------- enums


class FrontendReq(enum.IntEnum):
    """Requests from the front-end (VMM) to the back-end (device)."""

    GET_FEATURES = 1  # Get the virtio feature bits the back-end offers.
    SET_FEATURES = 2  # Ack a set of virtio feature bits.
    SET_OWNER = 3  # Take ownership of the session (sent once, after init).
    RESET_OWNER = 4  # Deprecated; historically "reset the device".
    SET_MEM_TABLE = 5  # Guest memory regions, one fd per region.
    SET_LOG_BASE = 6  # Dirty-log area (fd with LOG_SHMFD).
    SET_LOG_FD = 7  # Eventfd to signal dirty-log updates.
    SET_VRING_NUM = 8  # Queue size of one vring.
    SET_VRING_ADDR = 9  # Descriptor/used/avail ring addresses (front-end user addresses).
    SET_VRING_BASE = 10  # Next avail index to process.
    GET_VRING_BASE = 11  # Stop the ring; reply with its next avail index.
    SET_VRING_KICK = 12  # Eventfd the driver kicks (or NOFD: poll).
    SET_VRING_CALL = 13  # Eventfd the device calls on used buffers.
    SET_VRING_ERR = 14  # Eventfd the device signals on a ring error.
    GET_PROTOCOL_FEATURES = 15  # Get the protocol feature bits.
    SET_PROTOCOL_FEATURES = 16  # Ack a set of protocol feature bits.
    GET_QUEUE_NUM = 17  # Number of queues the back-end supports (MQ).
    SET_VRING_ENABLE = 18  # Enable (1) or disable (0) one vring.
    SEND_RARP = 19  # virtio-net: broadcast a RARP after migration.
    NET_SET_MTU = 20  # virtio-net: host MTU.
    SET_BACKEND_REQ_FD = 21  # Socket for back-end -> front-end requests (old SET_SLAVE_REQ_FD).
    IOTLB_MSG = 22  # IOTLB update/invalidate.
    SET_VRING_ENDIAN = 23  # Endianness of a legacy vring.
    GET_CONFIG = 24  # Read device config space.
    SET_CONFIG = 25  # Write device config space.
    CREATE_CRYPTO_SESSION = 26  # virtio-crypto: create a session.
    CLOSE_CRYPTO_SESSION = 27  # virtio-crypto: close a session.
    POSTCOPY_ADVISE = 28  # Postcopy migration: get a userfaultfd.
    POSTCOPY_LISTEN = 29  # Postcopy migration: enter listen mode.
    POSTCOPY_END = 30  # Postcopy migration: done.
    GET_INFLIGHT_FD = 31  # Get the shared in-flight tracking buffer.
    SET_INFLIGHT_FD = 32  # Hand the in-flight buffer back after a reconnect.
    GPU_SET_SOCKET = 33  # vhost-user-gpu: its own socket.
    RESET_DEVICE = 34  # Disable all rings and reset device state.
    VRING_KICK = 35  # In-band kick (QEMU leaves 35 "reserved").
    GET_MAX_MEM_SLOTS = 36  # Most memory slots ADD_MEM_REG may fill.
    ADD_MEM_REG = 37  # Add one memory region (+ its fd).
    REM_MEM_REG = 38  # Remove one memory region.
    SET_STATUS = 39  # Virtio device status byte.
    GET_STATUS = 40  # Read the virtio device status byte.
    GET_SHARED_OBJECT = 41  # Get a dma-buf fd for a shared-object UUID.
    SET_DEVICE_STATE_FD = 42  # Start a migration state transfer over a pipe.
    CHECK_DEVICE_STATE = 43  # Did the state transfer succeed?
    GET_SHMEM_CONFIG = 44  # Shared memory regions of the device (rust-vmm; QEMU SHMEM series).


class BackendReq(enum.IntEnum):
    """Requests from the back-end to the front-end, on the SET_BACKEND_REQ_FD socket."""

    IOTLB_MSG = 1  # IOTLB miss / access failure.
    CONFIG_CHANGE_MSG = 2  # Device config space changed.
    VRING_HOST_NOTIFIER_MSG = 3  # Map a host notifier area for a vring (VringArea + fd).
    VRING_CALL = 4  # In-band call (INBAND_NOTIFICATIONS).
    VRING_ERR = 5  # In-band ring error (INBAND_NOTIFICATIONS).
    SHARED_OBJECT_ADD = 6  # Register a shared object UUID.
    SHARED_OBJECT_REMOVE = 7  # Unregister a shared object UUID.
    SHARED_OBJECT_LOOKUP = 8  # Look a shared object up (reply carries a fd).
    SHMEM_MAP = 9  # Map a file range into a device shared-memory region (DAX window) (+ fd).
    SHMEM_UNMAP = 10  # Unmap a range of a device shared-memory region.


class HeaderFlags(enum.IntFlag):
    """Header ``flags`` bits.  Bits 0-1 are the version (always 1); bits 4-31 are reserved."""

    VERSION = 0x1  # Protocol version 1, in bits 0-1.
    REPLY = 0x4  # This message is a reply.
    NEED_REPLY = 0x8  # Sender wants an ack (meaningful with REPLY_ACK).


class ProtocolFeatures(enum.IntFlag):
    """``VHOST_USER_PROTOCOL_F_*`` bits (GET/SET_PROTOCOL_FEATURES), as masks."""

    MQ = 1 << 0  # Multiple queues; GET_QUEUE_NUM.
    LOG_SHMFD = 1 << 1  # Dirty log in shared memory (SET_LOG_BASE carries a fd).
    RARP = 1 << 2  # SEND_RARP.
    REPLY_ACK = 1 << 3  # NEED_REPLY asks for a u64 ack (0 = success).
    MTU = 1 << 4  # NET_SET_MTU.
    BACKEND_REQ = 1 << 5  # Back-end channel (SET_BACKEND_REQ_FD); old SLAVE_REQ.
    CROSS_ENDIAN = 1 << 6  # SET_VRING_ENDIAN.
    CRYPTO_SESSION = 1 << 7  # CREATE/CLOSE_CRYPTO_SESSION.
    PAGEFAULT = 1 << 8  # Postcopy with userfaultfd.
    CONFIG = 1 << 9  # GET/SET_CONFIG.
    BACKEND_SEND_FD = 1 << 10  # Back-end may send fds on its channel (<= 8); old SLAVE_SEND_FD.
    HOST_NOTIFIER = 1 << 11  # VRING_HOST_NOTIFIER_MSG.
    INFLIGHT_SHMFD = 1 << 12  # GET/SET_INFLIGHT_FD.
    RESET_DEVICE = 1 << 13  # RESET_DEVICE.
    INBAND_NOTIFICATIONS = 1 << 14  # VRING_KICK / back-end VRING_CALL, VRING_ERR.
    CONFIGURE_MEM_SLOTS = 1 << 15  # GET_MAX_MEM_SLOTS, ADD/REM_MEM_REG.
    STATUS = 1 << 16  # SET/GET_STATUS.
    XEN_MMAP = 1 << 17  # Xen mmap flags in memory regions.
    SHARED_OBJECT = 1 << 18  # SHARED_OBJECT_* and GET_SHARED_OBJECT.
    DEVICE_STATE = 1 << 19  # SET_DEVICE_STATE_FD / CHECK_DEVICE_STATE.
    # Conflict: QEMU's SHMEM series (v11, 2025-11) uses bit 20 for SHMEM; rust-vmm/vhost uses bit 20 for
    # GET_VRING_BASE_INFLIGHT and bit 21 for SHMEM.  We follow QEMU (the real-guest peer); never advertise
    # bit 21 alongside it.
    SHMEM = 1 << 20  # SHMEM_MAP / SHMEM_UNMAP / GET_SHMEM_CONFIG (QEMU numbering).
