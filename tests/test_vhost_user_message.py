"""vhost-user wire format: ids, flags, payload layouts and their validation."""

from __future__ import annotations

import struct

import pytest

from vfscluster.errors import LocalProtocolError, VhostUserError
from vfscluster.vhost_user.message import (
    BACKEND_REQUESTS,
    FRONTEND_REQUESTS,
    HEADER_SIZE,
    MAX_CONFIG_SIZE,
    MAX_FDS,
    MAX_PAYLOAD,
    MEMORY_BASELINE_NREGIONS,
    U64,
    VHOST_USER_F_PROTOCOL_FEATURES,
    VRING_IDX_MASK,
    VRING_NOFD_MASK,
    BackendReq,
    DeviceConfig,
    FdRule,
    FrontendReq,
    Header,
    HeaderFlags,
    Inflight,
    Log,
    MemoryRegion,
    MemoryTable,
    ProtocolFeatures,
    SharedObject,
    ShmemMap,
    ShmemUnmap,
    SingleMemoryRegion,
    VringAddr,
    VringArea,
    VringState,
    parse_payload,
    request_name,
    vring_fd_index,
)

REGION = MemoryRegion(guest_phys_addr=0x0, memory_size=0x10_0000, userspace_addr=0x7F00_0000_0000, mmap_offset=0)
REGION2 = MemoryRegion(0x10_0000, 0x20_0000, 0x7F00_1000_0000, 0x1000)

SAMPLES = [
    Header(FrontendReq.SET_VRING_NUM, HeaderFlags.VERSION | HeaderFlags.NEED_REPLY, 8),
    U64(0xDEAD_BEEF_0123_4567),
    VringState(3, 256),
    VringAddr(1, 0, 0x1000, 0x2004, 0x3002, 0),
    VringAddr(0, 1, 0x10, 0x4, 0x2, 0xFFFF_0000),
    REGION,
    MemoryTable((REGION,)),
    MemoryTable((REGION, REGION2)),
    SingleMemoryRegion(REGION2),
    DeviceConfig(0, 4, 0, b"abcd"),
    DeviceConfig(8, 0, 1, b""),
    VringArea(2 | VRING_NOFD_MASK, 4096, 0),
    Inflight(4096, 0, 2, 128),
    ShmemMap(0, 0x20_0000, 0x40_0000, 0x20_0000, 1),
    ShmemUnmap(0, 0, 0x40_0000, 0x20_0000, 0),
    Log(4096, 0),
    SharedObject(bytes(range(1, 17))),
]


@pytest.mark.parametrize("obj", SAMPLES, ids=lambda o: type(o).__name__)
def test_round_trip(obj):
    data = obj.pack()
    assert type(obj).unpack(data) == obj
    if type(obj) not in (MemoryTable, DeviceConfig):
        assert len(data) == type(obj).SIZE


def test_sizes_match_the_c_structs():
    # FACTS.md "Checks" 9 and the payload table.
    assert HEADER_SIZE == Header.SIZE == 12
    assert VringAddr.SIZE == 40
    assert MemoryRegion.SIZE == 32
    assert len(MemoryTable((REGION,) * 3).pack()) == 8 + 32 * 3
    assert MemoryTable.MAX_SIZE == 264
    assert SingleMemoryRegion.SIZE == 40
    assert ShmemMap.SIZE == ShmemUnmap.SIZE == 40
    assert Inflight.SIZE == 24
    assert VringArea.SIZE == 24
    assert Log.SIZE == 16
    assert DeviceConfig(0, 3, 0, b"xyz").pack()[:12] == struct.pack("=III", 0, 3, 0)


def test_field_order_on_the_wire():
    raw = VringAddr(7, 1, 0x10, 0x20, 0x30, 0x40).pack()
    # index, flags, descriptor, used, available, log
    assert struct.unpack("=IIQQQQ", raw) == (7, 1, 0x10, 0x20, 0x30, 0x40)
    raw = ShmemMap(3, 0x1000, 0x2000, 0x3000, 1).pack()
    assert raw[0] == 3 and raw[1:8] == bytes(7)
    assert struct.unpack_from("=QQQQ", raw, 8) == (0x1000, 0x2000, 0x3000, 1)
    raw = Inflight(1, 2, 3, 4).pack()
    assert struct.unpack("=QQHH", raw[:20]) == (1, 2, 3, 4) and raw[20:] == bytes(4)


def test_enum_values():
    assert [int(r) for r in FrontendReq] == list(range(1, 45))
    assert FrontendReq.GET_FEATURES == 1 and FrontendReq.SET_BACKEND_REQ_FD == 21
    assert FrontendReq.GET_MAX_MEM_SLOTS == 36 and FrontendReq.GET_SHMEM_CONFIG == 44
    assert [int(r) for r in BackendReq] == list(range(1, 11))
    assert BackendReq.SHMEM_MAP == 9 and BackendReq.SHMEM_UNMAP == 10
    assert HeaderFlags.VERSION == 1 and HeaderFlags.REPLY == 4 and HeaderFlags.NEED_REPLY == 8
    assert ProtocolFeatures.MQ == 1 and ProtocolFeatures.REPLY_ACK == 8
    assert ProtocolFeatures.BACKEND_REQ == 1 << 5 and ProtocolFeatures.CONFIG == 1 << 9
    assert ProtocolFeatures.CONFIGURE_MEM_SLOTS == 1 << 15 and ProtocolFeatures.DEVICE_STATE == 1 << 19
    assert ProtocolFeatures.SHMEM == 1 << 20
    assert VHOST_USER_F_PROTOCOL_FEATURES == 0x4000_0000
    assert (MAX_PAYLOAD, MAX_FDS, VRING_IDX_MASK, VRING_NOFD_MASK) == (4096, 32, 0xFF, 0x100)
    assert (MEMORY_BASELINE_NREGIONS, MAX_CONFIG_SIZE) == (8, 256)


FIXED = [U64, VringState, VringAddr, MemoryRegion, SingleMemoryRegion, VringArea, Inflight, ShmemMap,
         ShmemUnmap, Log, SharedObject, Header]


@pytest.mark.parametrize("cls", FIXED, ids=lambda c: c.__name__)
@pytest.mark.parametrize("delta", [-1, 1, 4])
def test_wrong_size_refused(cls, delta):
    sample = next(s for s in SAMPLES if type(s) is cls)
    data = sample.pack()
    bad = data[:delta] if delta < 0 else data + bytes(delta)
    with pytest.raises(VhostUserError, match=cls.__name__):
        cls.unpack(bad)


@pytest.mark.parametrize(
    "addr, reason",
    [
        (VringAddr(0, 0, 0x1008, 0x2000, 0x3000, 0), "descriptor"),
        (VringAddr(0, 0, 0x1000, 0x2002, 0x3000, 0), "used"),
        (VringAddr(0, 0, 0x1000, 0x2000, 0x3001, 0), "avail"),
        (VringAddr(0, 2, 0x1000, 0x2000, 0x3000, 0), "flags"),
    ],
)
def test_vring_addr_alignment(addr, reason):
    with pytest.raises(VhostUserError, match=reason):
        VringAddr.unpack(addr.pack())


def test_memory_region_rules():
    with pytest.raises(VhostUserError, match="memory_size is 0"):
        MemoryRegion.unpack(MemoryRegion(0, 0, 0, 0).pack())
    for region in (
        MemoryRegion(2**64 - 4096, 8192, 0, 0),
        MemoryRegion(0, 8192, 2**64 - 4096, 0),
        MemoryRegion(0, 8192, 0, 2**64 - 4096),
    ):
        with pytest.raises(VhostUserError, match="overflows"):
            MemoryRegion.unpack(region.pack())
    # the very top of the address space is fine
    top = MemoryRegion(2**64 - 4096, 4096, 0, 0)
    assert MemoryRegion.unpack(top.pack()) == top


def test_memory_table_accepts_qemu_size_and_full_struct():
    short = MemoryTable((REGION, REGION2)).pack()
    assert len(short) == 8 + 64
    full = short + b"\xa5" * (264 - len(short))  # unused slots of the C struct: ignored
    assert MemoryTable.unpack(full) == MemoryTable((REGION, REGION2))
    eight = MemoryTable((REGION,) * 8)
    assert MemoryTable.unpack(eight.pack()) == eight


@pytest.mark.parametrize(
    "payload, reason",
    [
        (struct.pack("=II", 0, 0), "nregions 0"),
        (struct.pack("=II", 9, 0) + REGION.pack() * 9, "nregions 9"),
        (struct.pack("=II", 1, 7) + REGION.pack(), "padding"),
        (struct.pack("=II", 2, 0) + REGION.pack(), "expected 72"),
        (struct.pack("=II", 1, 0) + REGION.pack() + bytes(4), "expected 40"),
        (struct.pack("=I", 1), "shorter"),
        (struct.pack("=II", 1, 0) + MemoryRegion(0, 0, 0, 0).pack(), "memory_size is 0"),
    ],
)
def test_memory_table_refused(payload, reason):
    with pytest.raises(VhostUserError, match=reason):
        MemoryTable.unpack(payload)


def test_device_config_rules():
    with pytest.raises(VhostUserError, match="exceeds 256"):
        DeviceConfig.unpack(struct.pack("=III", 0, 257, 0) + bytes(257))
    with pytest.raises(VhostUserError, match="expected 12 \\+ size 4"):
        DeviceConfig.unpack(struct.pack("=III", 0, 4, 0) + bytes(3))
    with pytest.raises(VhostUserError, match="flags"):
        DeviceConfig.unpack(struct.pack("=III", 0, 4, 4) + bytes(4))
    with pytest.raises(VhostUserError, match="overflows"):
        DeviceConfig.unpack(struct.pack("=III", 0xFFFF_FFFF, 4, 0) + bytes(4))
    with pytest.raises(VhostUserError, match="shorter"):
        DeviceConfig.unpack(b"\0" * 11)
    with pytest.raises(LocalProtocolError):
        DeviceConfig(0, 5, 0, b"abc").pack()
    full = DeviceConfig(0, MAX_CONFIG_SIZE, 0, bytes(range(256)))
    assert DeviceConfig.unpack(full.pack()) == full


def test_other_payload_rules():
    with pytest.raises(VhostUserError, match="must be > 0"):
        Inflight.unpack(Inflight(4096, 0, 0, 128).pack())
    with pytest.raises(VhostUserError, match="must be > 0"):
        Inflight.unpack(Inflight(4096, 0, 2, 0).pack())
    with pytest.raises(VhostUserError, match="len is 0"):
        ShmemMap.unpack(ShmemMap(0, 0, 0, 0, 0).pack())
    with pytest.raises(VhostUserError, match="overflows"):
        ShmemMap.unpack(ShmemMap(0, 2**64 - 4096, 0, 8192, 0).pack())
    with pytest.raises(VhostUserError, match="overflows"):
        ShmemUnmap.unpack(ShmemUnmap(0, 0, 2**64 - 4096, 8192, 0).pack())
    with pytest.raises(VhostUserError, match="flags"):
        ShmemMap.unpack(ShmemMap(0, 0, 0, 4096, 2).pack())
    with pytest.raises(VhostUserError, match="mmap_size is 0"):
        Log.unpack(Log(0, 0).pack())
    with pytest.raises(VhostUserError, match="nil or max"):
        SharedObject.unpack(bytes(16))
    with pytest.raises(VhostUserError, match="reserved"):
        VringArea.unpack(VringArea(0x200, 0, 0).pack())
    area = VringArea(5 | VRING_NOFD_MASK, 0, 0)
    assert (area.index, area.nofd) == (5, True)


def test_header_check():
    Header(1, 1, MAX_PAYLOAD).check()
    with pytest.raises(VhostUserError, match="version 2"):
        Header(1, 2, 0).check()
    with pytest.raises(VhostUserError, match="version 0"):
        Header(1, 0, 0).check()
    with pytest.raises(VhostUserError, match="reserved"):
        Header(1, 0x11, 0).check()
    with pytest.raises(VhostUserError, match="exceeds"):
        Header(1, 1, MAX_PAYLOAD + 1).check()
    h = Header(5, 0x9, 0)
    assert (h.version, h.need_reply, h.is_reply) == (1, True, False)


def test_pack_out_of_range_is_local_error():
    with pytest.raises(LocalProtocolError):
        U64(-1).pack()
    with pytest.raises(LocalProtocolError):
        VringState(2**32, 0).pack()
    with pytest.raises(LocalProtocolError):
        Header(1, 1, 2**32).pack()
    with pytest.raises(LocalProtocolError):
        SharedObject(b"short").pack()


def test_payload_is_immutable():
    with pytest.raises(AttributeError):
        U64(1).value = 2  # type: ignore[misc]


def test_request_tables_are_consistent():
    for table in (FRONTEND_REQUESTS, BACKEND_REQUESTS):
        for req, spec in table.items():
            if spec.payload is None:
                assert spec.size == 0, req
            elif spec.size is not None:
                assert spec.size == spec.payload.SIZE, req
            else:
                assert spec.payload in (MemoryTable, DeviceConfig), req
    assert FRONTEND_REQUESTS[FrontendReq.SET_MEM_TABLE].fds is FdRule.PER_REGION
    for req in (FrontendReq.SET_VRING_KICK, FrontendReq.SET_VRING_CALL, FrontendReq.SET_VRING_ERR):
        assert FRONTEND_REQUESTS[req].fds is FdRule.NOFD_BIT
    assert FRONTEND_REQUESTS[FrontendReq.SET_BACKEND_REQ_FD].fds is FdRule.ONE
    assert FRONTEND_REQUESTS[FrontendReq.GET_VRING_BASE].reply is VringState
    assert BACKEND_REQUESTS[BackendReq.SHMEM_MAP].fds is FdRule.ONE
    assert BACKEND_REQUESTS[BackendReq.SHMEM_UNMAP].fds is FdRule.NONE


def test_fd_rules():
    assert FdRule.NONE.allows(0) and not FdRule.NONE.allows(1)
    assert FdRule.ONE.allows(1) and not FdRule.ONE.allows(0) and not FdRule.ONE.allows(2)
    assert FdRule.NOFD_BIT.allows(0) and FdRule.NOFD_BIT.allows(1) and not FdRule.NOFD_BIT.allows(2)
    assert not FdRule.PER_REGION.allows(0) and FdRule.PER_REGION.allows(8)
    assert not FdRule.PER_REGION.allows(9)
    assert FdRule.IGNORED.allows(1) and not FdRule.IGNORED.allows(2)


def test_parse_payload_and_vring_fd_index():
    spec = FRONTEND_REQUESTS[FrontendReq.SET_VRING_NUM]
    assert parse_payload(spec, VringState(1, 64).pack()) == VringState(1, 64)
    with pytest.raises(VhostUserError, match="4 bytes, expected 8"):
        parse_payload(spec, b"\0" * 4, "SET_VRING_NUM")
    assert parse_payload(FRONTEND_REQUESTS[FrontendReq.GET_FEATURES], b"") is None
    assert vring_fd_index(3, 1) == (3, True)
    assert vring_fd_index(3 | VRING_NOFD_MASK, 0) == (3, False)
    with pytest.raises(VhostUserError, match="no fd attached"):
        vring_fd_index(3, 0)
    with pytest.raises(VhostUserError, match="although"):
        vring_fd_index(3 | VRING_NOFD_MASK, 1)
    with pytest.raises(VhostUserError, match="reserved"):
        vring_fd_index(0x400, 1)


def test_request_name():
    assert request_name(8) == "SET_VRING_NUM(8)"
    assert request_name(999) == "request 999"
    assert request_name(9, BackendReq) == "SHMEM_MAP(9)"
