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
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass, fields
from typing import ClassVar, Optional

from vfscluster.errors import LocalProtocolError, VhostUserError

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


# ---------------------------------------------------------------------------------------------- payloads


def _pack(st: struct.Struct, *values: int) -> bytes:
    try:
        return st.pack(*values)
    except struct.error as exc:
        raise LocalProtocolError(f"cannot pack {values!r} as {st.format!r}: {exc}") from None


def _check_size(cls: type, payload: bytes, size: int) -> None:
    if len(payload) != size:
        raise VhostUserError(f"{cls.__name__}: payload is {len(payload)} bytes, expected {size}")


def _no_overflow(what: str, base: int, size: int) -> None:
    if base + size > _U64_MAX + 1:
        raise VhostUserError(f"{what} 0x{base:x} + size 0x{size:x} overflows 64 bits")


class _Fixed:
    """Base of the fixed-size payloads: ``_ST`` packs the dataclass fields in order; ``_validate`` adds
    the payload's own rules to the exact-size check of ``unpack``."""

    __slots__ = ()
    SIZE: ClassVar[int]
    _ST: ClassVar[struct.Struct]

    def pack(self) -> bytes:
        return _pack(self._ST, *(getattr(self, f.name) for f in fields(self)))  # type: ignore[arg-type]

    @classmethod
    def unpack(cls, payload: bytes):  # -> Self
        _check_size(cls, payload, cls.SIZE)
        obj = cls(*cls._ST.unpack(payload))
        obj._validate()
        return obj

    def _validate(self) -> None:
        pass


@dataclass(frozen=True, slots=True)
class Header(_Fixed):
    """Message header: request u32, flags u32, size u32 (payload bytes that follow)."""

    request: int
    flags: int
    size: int

    SIZE: ClassVar[int] = HEADER_SIZE
    _ST: ClassVar[struct.Struct] = struct.Struct("=III")

    @property
    def version(self) -> int:
        return self.flags & HEADER_VERSION_MASK

    @property
    def is_reply(self) -> bool:
        return bool(self.flags & HeaderFlags.REPLY)

    @property
    def need_reply(self) -> bool:
        return bool(self.flags & HeaderFlags.NEED_REPLY)

    def check(self) -> None:
        """Raise VhostUserError unless version is 1, no reserved bit is set and size <= MAX_PAYLOAD."""
        if self.version != VHOST_USER_VERSION:
            raise VhostUserError(f"header version {self.version}, expected {VHOST_USER_VERSION}")
        if self.flags & ~HEADER_FLAGS_MASK:
            raise VhostUserError(f"header flags 0x{self.flags:x} set reserved bits")
        if self.size > MAX_PAYLOAD:
            raise VhostUserError(f"header size {self.size} exceeds the maximum {MAX_PAYLOAD}")


@dataclass(frozen=True, slots=True)
class U64(_Fixed):
    """A single u64 (features, status, acks, kick/call/err index|NOFD)."""

    value: int

    SIZE: ClassVar[int] = 8
    _ST: ClassVar[struct.Struct] = struct.Struct("=Q")


@dataclass(frozen=True, slots=True)
class VringState(_Fixed):
    """``vhost_vring_state``: index u32, num u32 (size, base, enable flag, or avail index)."""

    index: int
    num: int

    SIZE: ClassVar[int] = 8
    _ST: ClassVar[struct.Struct] = struct.Struct("=II")


@dataclass(frozen=True, slots=True)
class VringAddr(_Fixed):
    """``vhost_vring_addr``: ring addresses, in the front-end's user address space (not guest-physical).

    Wire order: index, flags, descriptor table, used ring, available ring, log (40 bytes).
    """

    index: int
    flags: int
    desc_user_addr: int
    used_user_addr: int
    avail_user_addr: int
    log_guest_addr: int

    SIZE: ClassVar[int] = 40
    _ST: ClassVar[struct.Struct] = struct.Struct("=IIQQQQ")

    def _validate(self) -> None:  # rust-vmm's rules
        if self.flags & ~VRING_F_LOG:
            raise VhostUserError(f"VringAddr: unknown flags 0x{self.flags:x}")
        if self.desc_user_addr & 0xF:
            raise VhostUserError(f"VringAddr: descriptor table 0x{self.desc_user_addr:x} not 16-byte aligned")
        if self.avail_user_addr & 0x1:
            raise VhostUserError(f"VringAddr: avail ring 0x{self.avail_user_addr:x} not 2-byte aligned")
        if self.used_user_addr & 0x3:
            raise VhostUserError(f"VringAddr: used ring 0x{self.used_user_addr:x} not 4-byte aligned")


@dataclass(frozen=True, slots=True)
class MemoryRegion(_Fixed):
    """``VhostUserMemoryRegion``: one guest RAM region; mmap the fd at mmap_offset for memory_size bytes."""

    guest_phys_addr: int
    memory_size: int
    userspace_addr: int
    mmap_offset: int

    SIZE: ClassVar[int] = 32
    _ST: ClassVar[struct.Struct] = struct.Struct("=QQQQ")

    def _validate(self) -> None:
        """Raise VhostUserError if the size is 0 or an address range overflows (rust-vmm's rules)."""
        if self.memory_size == 0:
            raise VhostUserError("MemoryRegion: memory_size is 0")
        _no_overflow("MemoryRegion guest_phys_addr", self.guest_phys_addr, self.memory_size)
        _no_overflow("MemoryRegion userspace_addr", self.userspace_addr, self.memory_size)
        _no_overflow("MemoryRegion mmap_offset", self.mmap_offset, self.memory_size)


@dataclass(frozen=True, slots=True)
class MemoryTable:
    """``VhostUserMemory``: nregions u32, padding u32, then nregions regions (SET_MEM_TABLE).

    QEMU sends ``8 + 32 * nregions`` bytes; the full C struct (264 bytes, 8 region slots) is accepted too.
    1 <= nregions <= 8 and the padding must be 0 (rust-vmm's rules).  ``pack`` emits QEMU's short form.
    """

    regions: tuple[MemoryRegion, ...]

    SIZE: ClassVar[int] = 8  # the fixed part; the payload is variable
    MAX_SIZE: ClassVar[int] = 8 + MemoryRegion.SIZE * MEMORY_BASELINE_NREGIONS
    _ST: ClassVar[struct.Struct] = struct.Struct("=II")

    def pack(self) -> bytes:
        return _pack(self._ST, len(self.regions), 0) + b"".join(r.pack() for r in self.regions)

    @classmethod
    def unpack(cls, payload: bytes) -> MemoryTable:
        if len(payload) < cls.SIZE:
            raise VhostUserError(f"MemoryTable: payload is {len(payload)} bytes, shorter than its 8-byte head")
        nregions, padding = cls._ST.unpack_from(payload)
        if not 1 <= nregions <= MEMORY_BASELINE_NREGIONS:
            raise VhostUserError(f"MemoryTable: nregions {nregions} not in 1..{MEMORY_BASELINE_NREGIONS}")
        if padding != 0:
            raise VhostUserError(f"MemoryTable: padding is 0x{padding:x}, expected 0")
        expected = cls.SIZE + MemoryRegion.SIZE * nregions
        if len(payload) not in (expected, cls.MAX_SIZE):
            raise VhostUserError(
                f"MemoryTable: payload is {len(payload)} bytes for {nregions} regions, "
                f"expected {expected} (or the full {cls.MAX_SIZE})"
            )
        regions = tuple(
            MemoryRegion.unpack(payload[off : off + MemoryRegion.SIZE])
            for off in range(cls.SIZE, expected, MemoryRegion.SIZE)
        )
        return cls(regions)


@dataclass(frozen=True, slots=True)
class SingleMemoryRegion:
    """``VhostUserMemRegMsg``: u64 padding, then one region (ADD_MEM_REG / REM_MEM_REG), 40 bytes."""

    region: MemoryRegion

    SIZE: ClassVar[int] = 40
    _ST: ClassVar[struct.Struct] = struct.Struct("=Q")

    def pack(self) -> bytes:
        return _pack(self._ST, 0) + self.region.pack()

    @classmethod
    def unpack(cls, payload: bytes) -> SingleMemoryRegion:
        _check_size(cls, payload, cls.SIZE)
        # The padding is not checked (neither QEMU nor rust-vmm requires it to be zero).
        return cls(MemoryRegion.unpack(payload[8:]))


@dataclass(frozen=True, slots=True)
class DeviceConfig:
    """``VhostUserConfig``: offset u32, size u32, flags u32, then ``size`` bytes of data (GET/SET_CONFIG).

    size <= 256 and ``len(data) == size``.  A GET_CONFIG reply with size 0 means the back-end failed.
    """

    offset: int
    size: int
    flags: int
    data: bytes

    SIZE: ClassVar[int] = 12  # the fixed part; the payload is 12 + size
    _ST: ClassVar[struct.Struct] = struct.Struct("=III")

    def pack(self) -> bytes:
        if len(self.data) != self.size:
            raise LocalProtocolError(f"DeviceConfig: size {self.size} but {len(self.data)} data bytes")
        return _pack(self._ST, self.offset, self.size, self.flags) + bytes(self.data)

    @classmethod
    def unpack(cls, payload: bytes) -> DeviceConfig:
        if len(payload) < cls.SIZE:
            raise VhostUserError(f"DeviceConfig: payload is {len(payload)} bytes, shorter than its 12-byte head")
        offset, size, flags = cls._ST.unpack_from(payload)
        if size > MAX_CONFIG_SIZE:
            raise VhostUserError(f"DeviceConfig: size {size} exceeds {MAX_CONFIG_SIZE}")
        if len(payload) != cls.SIZE + size:
            raise VhostUserError(f"DeviceConfig: payload is {len(payload)} bytes, expected 12 + size {size}")
        if offset + size > 0xFFFFFFFF:
            raise VhostUserError(f"DeviceConfig: offset {offset} + size {size} overflows 32 bits")
        if flags & ~CONFIG_FLAGS_MASK:
            raise VhostUserError(f"DeviceConfig: unknown flags 0x{flags:x}")
        return cls(offset, size, flags, bytes(payload[cls.SIZE :]))


@dataclass(frozen=True, slots=True)
class VringArea(_Fixed):
    """``VhostUserVringArea``: u64 (index in bits 0-7, NOFD in bit 8), size u64, offset u64 (24 bytes)."""

    index_flags: int
    size: int
    offset: int

    SIZE: ClassVar[int] = 24
    _ST: ClassVar[struct.Struct] = struct.Struct("=QQQ")

    @property
    def index(self) -> int:
        return self.index_flags & VRING_IDX_MASK

    @property
    def nofd(self) -> bool:
        return bool(self.index_flags & VRING_NOFD_MASK)

    def _validate(self) -> None:
        if self.index_flags & ~(VRING_IDX_MASK | VRING_NOFD_MASK):
            raise VhostUserError(f"VringArea: reserved bits set in 0x{self.index_flags:x}")


@dataclass(frozen=True, slots=True)
class Inflight(_Fixed):
    """``VhostUserInflight``: mmap_size u64, mmap_offset u64, num_queues u16, queue_size u16.

    20 bytes of fields, 24 as the (unpacked) C struct that QEMU and rust-vmm send.  num_queues and
    queue_size must be non-zero (rust-vmm).  A GET_INFLIGHT_FD reply with mmap_size 0 carries no fd.
    """

    mmap_size: int
    mmap_offset: int
    num_queues: int
    queue_size: int

    SIZE: ClassVar[int] = 24
    _ST: ClassVar[struct.Struct] = struct.Struct("=QQHH4x")

    def _validate(self) -> None:
        if self.num_queues == 0 or self.queue_size == 0:
            raise VhostUserError(
                f"Inflight: num_queues {self.num_queues} and queue_size {self.queue_size} must be > 0"
            )
        _no_overflow("Inflight mmap_offset", self.mmap_offset, self.mmap_size)


@dataclass(frozen=True, slots=True)
class ShmemMap(_Fixed):
    """``VhostUserMMap``: shmid u8, 7 bytes padding, fd_offset u64, shm_offset u64, len u64, flags u64 (40 B).

    Back-end channel SHMEM_MAP (with the file's fd): map ``len`` bytes of the file at ``fd_offset`` into
    shared-memory region ``shmid`` (the DAX window is region 0) at ``shm_offset``; flags bit 0 = writable.
    Rules (rust-vmm): len > 0, no 64-bit overflow, no unknown flag; the padding is not checked.
    """

    shmid: int
    fd_offset: int
    shm_offset: int
    len: int
    flags: int

    SIZE: ClassVar[int] = 40
    _ST: ClassVar[struct.Struct] = struct.Struct("=B7xQQQQ")

    def _validate(self) -> None:
        name = type(self).__name__
        if self.len == 0:
            raise VhostUserError(f"{name}: len is 0")
        _no_overflow(f"{name} fd_offset", self.fd_offset, self.len)
        _no_overflow(f"{name} shm_offset", self.shm_offset, self.len)
        if self.flags & ~SHMEM_MAP_F_WRITABLE:
            raise VhostUserError(f"{name}: unknown flags 0x{self.flags:x}")


@dataclass(frozen=True, slots=True)
class ShmemUnmap(ShmemMap):
    """SHMEM_UNMAP payload: the same 40-byte ``VhostUserMMap`` layout (fd_offset and flags unused, no fd)."""


@dataclass(frozen=True, slots=True)
class ShmemConfig:
    """``VhostUserShMemConfig`` (QEMU SHMEM series): nregions u32, padding u32, memory_sizes u64[8] (72 B).

    The reply to GET_SHMEM_CONFIG: the size of each VIRTIO shared-memory region, indexed by shmid (the
    array index *is* the shmid; a size of 0 is a region the device does not use now).  QEMU's layout
    (8 slots, ``VHOST_MEMORY_BASELINE_NREGIONS``), not rust-vmm's 256-slot one: we follow QEMU's numbering
    for SHMEM too.  Rules: nregions <= 8, the slots past nregions are 0; the padding is not checked.
    """

    sizes: tuple[int, ...]

    MAX_REGIONS: ClassVar[int] = MEMORY_BASELINE_NREGIONS
    SIZE: ClassVar[int] = 8 + 8 * MEMORY_BASELINE_NREGIONS
    _ST: ClassVar[struct.Struct] = struct.Struct(f"=II{MEMORY_BASELINE_NREGIONS}Q")

    def pack(self) -> bytes:
        if len(self.sizes) > self.MAX_REGIONS:
            raise LocalProtocolError(f"ShmemConfig: {len(self.sizes)} regions, at most {self.MAX_REGIONS}")
        sizes = tuple(self.sizes) + (0,) * (self.MAX_REGIONS - len(self.sizes))
        return _pack(self._ST, len(self.sizes), 0, *sizes)

    @classmethod
    def unpack(cls, payload: bytes) -> ShmemConfig:
        _check_size(cls, payload, cls.SIZE)
        nregions, _padding, *sizes = cls._ST.unpack(payload)
        if nregions > cls.MAX_REGIONS:
            raise VhostUserError(f"ShmemConfig: nregions {nregions} exceeds {cls.MAX_REGIONS}")
        if any(sizes[nregions:]):
            raise VhostUserError(f"ShmemConfig: sizes past nregions {nregions} are not 0")
        return cls(tuple(sizes[:nregions]))

    def size(self, shmid: int) -> int:
        """The size of region ``shmid`` (0 when the device has no such region)."""
        return self.sizes[shmid] if 0 <= shmid < len(self.sizes) else 0


@dataclass(frozen=True, slots=True)
class Log(_Fixed):
    """``VhostUserLog``: mmap_size u64, mmap_offset u64 (SET_LOG_BASE), 16 bytes."""

    mmap_size: int
    mmap_offset: int

    SIZE: ClassVar[int] = 16
    _ST: ClassVar[struct.Struct] = struct.Struct("=QQ")

    def _validate(self) -> None:
        if self.mmap_size == 0:
            raise VhostUserError("Log: mmap_size is 0")
        _no_overflow("Log mmap_offset", self.mmap_offset, self.mmap_size)


@dataclass(frozen=True, slots=True)
class SharedObject:
    """``VhostUserShared``: a 16-byte UUID (SHARED_OBJECT_ADD/REMOVE/LOOKUP, GET_SHARED_OBJECT)."""

    uuid: bytes

    SIZE: ClassVar[int] = 16

    def pack(self) -> bytes:
        if len(self.uuid) != self.SIZE:
            raise LocalProtocolError(f"SharedObject: uuid is {len(self.uuid)} bytes, expected 16")
        return bytes(self.uuid)

    @classmethod
    def unpack(cls, payload: bytes) -> SharedObject:
        _check_size(cls, payload, cls.SIZE)
        uuid = bytes(payload)
        if uuid in (b"\x00" * 16, b"\xff" * 16):
            raise VhostUserError("SharedObject: nil or max UUID")
        return cls(uuid)


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
