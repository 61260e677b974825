"""vhost-user payload structs: the message header and every payload we send or accept.

Each is a frozen dataclass with ``SIZE`` (fixed-size ones), ``pack()`` and ``unpack(payload)``;
``unpack`` checks the exact size and the field rules rust-vmm checks.  ``_Fixed`` is the base
of the fixed-size payloads; ``_pack`` / ``_check_size`` / ``_no_overflow`` are the shared checks.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, fields
from typing import ClassVar

from vfscluster.errors import LocalProtocolError, VhostUserError

from .constants import (
    HEADER_SIZE, MAX_PAYLOAD, VRING_IDX_MASK, VRING_NOFD_MASK, MEMORY_BASELINE_NREGIONS,
    MAX_CONFIG_SIZE, HEADER_VERSION_MASK, HEADER_FLAGS_MASK, VHOST_USER_VERSION, VRING_F_LOG,
    CONFIG_FLAGS_MASK, SHMEM_MAP_F_WRITABLE, _U64_MAX, HeaderFlags,
)

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
