"""Frontend driving a BackendDispatcher (in a thread) over a real socketpair, with real memfds and eventfds.

The device is a test double of the virtio-fs device (records calls, maps guest RAM, keeps ring fds); the
dispatcher and the frontend are the layers under test.  Also FrontendBackendChannel serving SHMEM_MAP.
"""

from __future__ import annotations

import errno
import logging
import mmap
import os
import socket
import struct
import threading
from types import SimpleNamespace

import pytest

from vfscluster.errors import LocalProtocolError, VhostUserError
from vfscluster.vhost_user import (
    VHOST_USER_F_PROTOCOL_FEATURES,
    BackendChannel,
    BackendDispatcher,
    BackendHandler,
    BackendReq,
    Connection,
    Frontend,
    FrontendBackendChannel,
    FrontendReq,
    HeaderFlags,
    Inflight,
    MemoryRegion,
    ProtocolFeatures,
    ShmemMap,
    ShmemUnmap,
    U64,
    VringAddr,
    VringArea,
    VringState,
    close_fds,
)

TIMEOUT = 10.0
PF = ProtocolFeatures
VIRTIO_F_VERSION_1 = 1 << 32
OFFERED = VIRTIO_F_VERSION_1 | VHOST_USER_F_PROTOCOL_FEATURES
FULL = (PF.MQ | PF.REPLY_ACK | PF.BACKEND_REQ | PF.BACKEND_SEND_FD | PF.CONFIG | PF.INFLIGHT_SHMFD
        | PF.RESET_DEVICE | PF.CONFIGURE_MEM_SLOTS | PF.STATUS | PF.SHMEM)
RAM_SIZE = 1 << 20
USER_BASE = 0x7F12_3400_0000  # where the "VMM" has its RAM mapped (the device only translates it)
CONFIG = b"myfs".ljust(36, b"\0") + struct.pack("=I", 1)  # virtio_fs_config: tag[36], num_request_queues


def open_fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


class FsDevice(BackendHandler):
    """Test double of the virtio-fs device."""

    def __init__(self, protocol: int) -> None:
        self.protocol = int(protocol)
        self.calls: list[tuple] = []
        self.fail: set[str] = set()
        self.memory: list[tuple[MemoryRegion, mmap.mmap]] = []
        self.rings: dict[int, dict] = {}
        self.fds: dict[tuple[str, int], int] = {}
        self.channel: BackendChannel | None = None
        self.status = 0
        self.inflight_fd: int | None = None
        self.config = bytearray(CONFIG)

    def _record(self, name: str, *args) -> None:
        self.calls.append((name, *args))
        if name in self.fail:
            raise VhostUserError(f"{name} refused by the test device")

    def ring(self, index: int) -> dict:
        return self.rings.setdefault(index, {"num": 0, "base": 0, "addr": None, "enabled": False})

    def read(self, guest_addr: int, size: int) -> bytes:
        for region, m in self.memory:
            if region.guest_phys_addr <= guest_addr < region.guest_phys_addr + region.memory_size:
                off = guest_addr - region.guest_phys_addr
                return m[off : off + size]
        raise AssertionError(f"guest address 0x{guest_addr:x} not mapped")

    def close(self) -> None:
        for _, m in self.memory:
            m.close()
        close_fds(list(self.fds.values()) + ([self.inflight_fd] if self.inflight_fd is not None else []))
        if self.channel is not None:
            self.channel.close()

    def _keep(self, kind: str, index: int, fd: int | None) -> None:
        old = self.fds.pop((kind, index), None)
        if old is not None:
            os.close(old)
        if fd is not None:
            self.fds[(kind, index)] = fd

    def get_features(self):
        self._record("get_features")
        return OFFERED

    def set_features(self, features):
        self._record("set_features", features)

    def get_protocol_features(self):
        self._record("get_protocol_features")
        return self.protocol

    def set_protocol_features(self, features):
        self._record("set_protocol_features", features)

    def set_owner(self):
        self._record("set_owner")

    def reset_owner(self):
        self._record("reset_owner")

    def get_queue_num(self):
        self._record("get_queue_num")
        return 2

    def set_backend_req_fd(self, sock):
        self._record("set_backend_req_fd")
        sock.settimeout(TIMEOUT)
        self.channel = BackendChannel(sock)

    def set_mem_table(self, regions, fds):
        self._record("set_mem_table", tuple(regions))
        try:
            for region, fd in zip(regions, fds):
                self.memory.append((region, mmap.mmap(fd, region.memory_size, offset=region.mmap_offset)))
        finally:
            close_fds(fds)  # the mappings keep the memory

    def add_mem_reg(self, region, fd):
        self._record("add_mem_reg", region)
        try:
            self.memory.append((region, mmap.mmap(fd, region.memory_size, offset=region.mmap_offset)))
        finally:
            os.close(fd)

    def rem_mem_reg(self, region):
        self._record("rem_mem_reg", region)
        for i, (r, m) in enumerate(self.memory):
            if (r.guest_phys_addr, r.memory_size) == (region.guest_phys_addr, region.memory_size):
                m.close()
                del self.memory[i]
                return
        raise VhostUserError("no such region")

    def get_max_mem_slots(self):
        self._record("get_max_mem_slots")
        return 32

    def set_vring_num(self, index, num):
        self._record("set_vring_num", index, num)
        self.ring(index)["num"] = num

    def set_vring_base(self, index, num):
        self._record("set_vring_base", index, num)
        self.ring(index)["base"] = num

    def set_vring_addr(self, addr):
        self._record("set_vring_addr", addr.index)
        self.ring(addr.index)["addr"] = addr

    def get_vring_base(self, index):
        self._record("get_vring_base", index)
        return self.ring(index)["base"] + 3  # pretend three requests were processed

    def set_vring_kick(self, index, fd):
        self._record("set_vring_kick", index)
        self._keep("kick", index, fd)

    def set_vring_call(self, index, fd):
        self._record("set_vring_call", index)
        self._keep("call", index, fd)

    def set_vring_err(self, index, fd):
        self._record("set_vring_err", index)
        self._keep("err", index, fd)

    def set_vring_enable(self, index, enable):
        self._record("set_vring_enable", index, enable)
        self.ring(index)["enabled"] = enable

    def get_config(self, offset, size, flags):
        self._record("get_config", offset, size)
        return bytes(self.config[offset : offset + size])

    def set_config(self, offset, flags, data):
        self._record("set_config", offset, data)
        self.config[offset : offset + len(data)] = data

    def get_inflight_fd(self, inflight):
        self._record("get_inflight_fd", inflight.num_queues, inflight.queue_size)
        size = inflight.num_queues * (16 + 16 * inflight.queue_size)
        self.inflight_fd = os.memfd_create("inflight")
        os.ftruncate(self.inflight_fd, size)
        return Inflight(size, 0, inflight.num_queues, inflight.queue_size), self.inflight_fd

    def set_inflight_fd(self, inflight, fd):
        self._record("set_inflight_fd", inflight.mmap_size)
        self._keep("inflight", 0, fd)

    def set_status(self, status):
        self._record("set_status", status)
        self.status = status

    def get_status(self):
        self._record("get_status")
        return self.status

    def reset_device(self):
        self._record("reset_device")


@pytest.fixture
def vu(request):
    protocol = getattr(request, "param", FULL)
    dev_sock, drv_sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    drv_sock.settimeout(TIMEOUT)
    device = FsDevice(protocol)
    dispatcher = BackendDispatcher(Connection(dev_sock), device)
    thread = threading.Thread(target=dispatcher.serve_forever, name="vhost-user-backend", daemon=True)
    thread.start()
    frontend = Frontend(Connection(drv_sock))
    ns = SimpleNamespace(device=device, dispatcher=dispatcher, frontend=frontend, thread=thread, fds=[])
    yield ns
    frontend.close()
    thread.join(TIMEOUT)
    assert not thread.is_alive()
    device.close()
    close_fds(ns.fds)


def init(vu, wanted: int = FULL) -> int:
    """vhost_user_backend_init + the start of vhost_dev_init, as QEMU does it."""
    fe = vu.frontend
    features = fe.get_features()
    assert features & VHOST_USER_F_PROTOCOL_FEATURES
    protocol = fe.get_protocol_features() & wanted
    fe.set_protocol_features(protocol)
    if protocol & PF.MQ:
        assert fe.get_queue_num() == 2
    return protocol


def names(calls) -> list[str]:
    return [c[0] for c in calls]


# ------------------------------------------------------------------------------------- QEMU order


@pytest.mark.parametrize("vu", [FULL, FULL & ~PF.REPLY_ACK], indirect=True, ids=["reply-ack", "no-reply-ack"])
def test_qemu_message_order(vu):
    fe, dev = vu.frontend, vu.device
    reply_ack = bool(dev.protocol & PF.REPLY_ACK)
    nvqs = 2  # hiprio + one request queue
    ram = os.memfd_create("guest-ram")
    vu.fds.append(ram)
    os.ftruncate(ram, RAM_SIZE)
    os.pwrite(ram, b"guest memory!", 0x100)
    masked = [os.eventfd(0) for _ in range(nvqs)]
    errs = [os.eventfd(0) for _ in range(nvqs)]
    kicks = [os.eventfd(0) for _ in range(nvqs)]
    calls = [os.eventfd(0) for _ in range(nvqs)]
    vu.fds.extend(masked + errs + kicks + calls)

    # 1. vhost_user_backend_init
    init(vu)
    backend_sock = fe.set_backend_req_fd()
    backend_sock.close()
    # 2. vhost_dev_init
    fe.set_owner()
    fe.get_features()
    for q in range(nvqs):
        fe.set_vring_call(q, masked[q])
        fe.set_vring_err(q, errs[q])
    # 3. vhost_dev_start
    fe.set_features(VIRTIO_F_VERSION_1 | VHOST_USER_F_PROTOCOL_FEATURES)
    fe.set_mem_table([MemoryRegion(0, RAM_SIZE, USER_BASE, 0)], [ram])
    for q in range(nvqs):
        ring = 0x1000 + q * 0x4000
        fe.set_vring_num(q, 128)
        fe.set_vring_base(q, 5 * q)
        fe.set_vring_addr(VringAddr(q, 0, USER_BASE + ring, USER_BASE + ring + 0x1000,
                                    USER_BASE + ring + 0x800, 0))
        fe.set_vring_kick(q, kicks[q])
        fe.set_vring_call(q, calls[q])
    for q in range(nvqs):
        fe.set_vring_enable(q, True)
    # the rings work: guest kicks reach the device, device calls reach the guest, RAM is shared
    for q in range(nvqs):
        os.eventfd_write(kicks[q], q + 1)
        assert os.eventfd_read(dev.fds[("kick", q)]) == q + 1
        os.eventfd_write(dev.fds[("call", q)], 1)
        assert os.eventfd_read(calls[q]) == 1
    assert dev.read(0x100, 13) == b"guest memory!"
    # 4. stop
    for q in range(nvqs):
        fe.set_vring_enable(q, False)
    assert [fe.get_vring_base(q) for q in range(nvqs)] == [3, 8]

    per_vq_init = ["set_vring_call", "set_vring_err"] * nvqs
    per_vq_start = ["set_vring_num", "set_vring_base", "set_vring_addr", "set_vring_kick", "set_vring_call"] * nvqs
    barrier = [] if reply_ack else ["get_features"]  # QEMU's vhost_user_write_sync without REPLY_ACK
    enable = (["set_vring_enable"] + barrier) * nvqs
    assert names(dev.calls) == (
        ["get_features", "get_protocol_features", "set_protocol_features", "get_queue_num"]
        + ["set_backend_req_fd", "set_owner", "get_features"]
        + per_vq_init
        + ["set_features", "set_mem_table"]
        + per_vq_start
        + enable + enable
        + ["get_vring_base"] * nvqs
    )
    assert dev.rings[1]["addr"].desc_user_addr == USER_BASE + 0x5000
    assert dev.rings[1]["num"] == 128 and dev.rings[1]["enabled"] is False
    assert vu.dispatcher.acked_protocol_features == FULL & dev.protocol
    assert fe.reply_ack is reply_ack


def test_setters_wait_for_the_ack(vu):
    init(vu)
    assert vu.frontend.reply_ack
    vu.frontend.set_vring_num(0, 64)
    # no barrier needed: the ack means the device has applied it
    assert vu.device.rings[0]["num"] == 64
    vu.device.fail.add("set_vring_num")
    with pytest.raises(OSError) as info:
        vu.frontend.set_vring_num(0, 65)
    assert info.value.errno == errno.EIO and not isinstance(info.value, VhostUserError)
    vu.frontend.set_owner()  # the session goes on


def test_switching_reply_ack_off_and_on(vu):
    init(vu)
    vu.frontend.set_protocol_features(FULL & ~PF.REPLY_ACK)
    assert not vu.frontend.reply_ack
    vu.frontend.set_vring_num(0, 32)  # not acked
    vu.frontend.set_protocol_features(FULL)
    vu.frontend.set_vring_num(0, 64)  # acked
    assert vu.device.rings[0]["num"] == 64
    assert vu.dispatcher.acked_protocol_features == FULL


@pytest.mark.parametrize("vu", [FULL & ~PF.REPLY_ACK], indirect=True)
def test_without_reply_ack_a_refusal_goes_unnoticed(vu, caplog):
    init(vu)
    vu.device.fail.add("set_vring_num")
    vu.frontend.set_vring_num(0, 65)  # no ack asked: returns at once
    vu.frontend.get_features()  # barrier
    assert "refused SET_VRING_NUM" in caplog.text


def test_failed_getters_raise_eio(vu):
    init(vu)
    vu.device.fail.update({"get_vring_base", "get_config", "get_status"})
    for call in (lambda: vu.frontend.get_vring_base(0), lambda: vu.frontend.get_config(0, 8),
                 vu.frontend.get_status):
        with pytest.raises(OSError) as info:
            call()
        assert info.value.errno == errno.EIO
    assert vu.frontend.get_features() == OFFERED


def test_config_status_inflight_and_mem_slots(vu):
    init(vu)
    fe, dev = vu.frontend, vu.device
    assert fe.get_config(0, 40) == CONFIG
    fe.set_config(36, 0, struct.pack("=I", 4))
    assert fe.get_config(36, 4) == struct.pack("=I", 4)
    fe.set_status(0x0F)
    assert fe.get_status() == 0x0F
    inflight, fd = fe.get_inflight_fd(Inflight(0, 0, 2, 128))
    assert fd is not None and inflight.num_queues == 2
    vu.fds.append(fd)
    assert os.fstat(fd).st_size == inflight.mmap_size == 2 * (16 + 16 * 128)
    fe.set_inflight_fd(inflight, fd)
    assert dev.calls[-1] == ("set_inflight_fd", inflight.mmap_size)
    assert fe.get_max_mem_slots() == 32
    ram = os.memfd_create("hotplug")
    vu.fds.append(ram)
    os.ftruncate(ram, 0x10000)
    os.pwrite(ram, b"hotplugged", 0)
    region = MemoryRegion(0x1_0000_0000, 0x10000, USER_BASE + 0x1000_0000, 0)
    fe.add_mem_reg(region, ram)
    assert dev.read(0x1_0000_0000, 10) == b"hotplugged"
    fe.rem_mem_reg(region)
    assert dev.memory == []
    fe.reset_device()
    fe.reset_owner()
    assert names(dev.calls)[-2:] == ["reset_device", "reset_owner"]


def test_local_misuse_sends_nothing(vu):
    fe = vu.frontend
    with pytest.raises(LocalProtocolError, match="MQ"):
        fe.get_queue_num()
    with pytest.raises(LocalProtocolError, match="BACKEND_REQ"):
        fe.set_backend_req_fd()
    with pytest.raises(LocalProtocolError, match="PROTOCOL_FEATURES"):
        fe.set_vring_enable(0, True)
    with pytest.raises(LocalProtocolError, match="1..8 regions"):
        fe.set_mem_table([MemoryRegion(0, 4096, 0, 0)], [])
    with pytest.raises(LocalProtocolError, match="out of range"):
        fe.set_vring_kick(256, None)
    init(vu)
    with pytest.raises(LocalProtocolError, match="not a byte"):
        fe.set_status(0x100)
    with pytest.raises(LocalProtocolError, match="size 0"):
        fe.get_config(0, 0)
    assert names(vu.device.calls) == ["get_features", "get_protocol_features", "set_protocol_features",
                                      "get_queue_num"]


def test_connect_by_path(tmp_path):
    path = str(tmp_path / "vhost-user.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(1)
    listener.settimeout(TIMEOUT)
    device = FsDevice(FULL)
    done = threading.Event()

    def serve() -> None:
        conn, _ = listener.accept()
        BackendDispatcher(Connection(conn), device).serve_forever()
        done.set()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        with Frontend.connect(path) as fe:
            fe.conn.socket.settimeout(TIMEOUT)
            assert fe.get_features() == OFFERED
        thread.join(TIMEOUT)
        assert done.is_set()
    finally:
        listener.close()
        device.close()


# ------------------------------------------------------------------------- malformed back-end replies


@pytest.fixture
def fake_backend():
    """A frontend whose back-end is a raw Connection answered by the test."""
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    a.settimeout(TIMEOUT)
    b.settimeout(TIMEOUT)
    fe, backend = Frontend(Connection(a)), Connection(b)
    yield fe, backend
    fe.close()
    backend.close()


def answer_once(backend: Connection, respond) -> threading.Thread:
    def serve() -> None:
        header, payload, fds = backend.recv()
        close_fds(fds)
        respond(header, payload)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return thread


REPLY = HeaderFlags.VERSION | HeaderFlags.REPLY


@pytest.mark.parametrize(
    "respond, reason",
    [
        (lambda be, h: be.send(h.request, U64(1).pack(), flags=HeaderFlags.VERSION), "flags 0x1"),
        (lambda be, h: be.send(h.request, U64(1).pack(), flags=REPLY | HeaderFlags.NEED_REPLY), "flags 0xd"),
        (lambda be, h: be.send(FrontendReq.GET_STATUS, U64(1).pack(), flags=REPLY), "is for GET_STATUS"),
        (lambda be, h: be.send(h.request, b"\0" * 4, flags=REPLY), "4 bytes"),
        (lambda be, h: be.send(h.request, U64(1).pack(), [be.fileno()], flags=REPLY), "carries 1 fds"),
    ],
    ids=["not a reply", "need-reply set", "wrong request", "wrong size", "unexpected fd"],
)
def test_malformed_reply_raises(fake_backend, respond, reason):
    fe, backend = fake_backend
    before = open_fd_count()
    thread = answer_once(backend, lambda h, p: respond(backend, h))
    with pytest.raises(VhostUserError, match=reason):
        fe.get_features()
    thread.join(TIMEOUT)
    assert open_fd_count() == before


def test_malformed_ack_and_vring_base_replies(fake_backend):
    fe, backend = fake_backend
    fe.acked_protocol_features = int(PF.REPLY_ACK)  # as if negotiated
    thread = answer_once(backend, lambda h, p: backend.reply(h, b"\0" * 16))
    with pytest.raises(VhostUserError, match="16 bytes"):
        fe.set_owner()
    thread.join(TIMEOUT)
    thread = answer_once(backend, lambda h, p: backend.reply(h, VringState(7, 1).pack()))
    with pytest.raises(VhostUserError, match="ring 7"):
        fe.get_vring_base(0)
    thread.join(TIMEOUT)
    thread = answer_once(backend, lambda h, p: backend.reply(h, U64(0x16).pack()))
    with pytest.raises(OSError, match="ack 0x16"):
        fe.set_owner()
    thread.join(TIMEOUT)


def test_backend_hangs_up(fake_backend):
    fe, backend = fake_backend
    thread = answer_once(backend, lambda h, p: backend.close())
    with pytest.raises((EOFError, ConnectionResetError)):
        fe.get_features()
    thread.join(TIMEOUT)


# ----------------------------------------------------------------------------- back-end channel


@pytest.fixture
def channel(vu):
    """init + SET_BACKEND_REQ_FD; the frontend serves the channel in a thread with ``vu.handler``."""
    init(vu)
    sock = vu.frontend.set_backend_req_fd()
    seen: list = []
    results: dict = {"value": 0, "raise": None}

    def handler(request, payload, fds):
        snapshot = [os.pread(fd, 16, 0) if request is BackendReq.SHMEM_MAP else fd for fd in fds]
        seen.append((request, payload, snapshot, list(fds)))
        if results["raise"] is not None:
            raise results["raise"]
        return results["value"]

    server = FrontendBackendChannel(sock, handler)
    thread = threading.Thread(target=server.serve_forever, name="backend-channel", daemon=True)
    thread.start()
    yield SimpleNamespace(chan=vu.device.channel, seen=seen, results=results, server=server, thread=thread)
    vu.device.channel.close()
    thread.join(TIMEOUT)
    assert not thread.is_alive()
    assert server.conn.closed


def test_backend_channel_shmem_map(vu, channel):
    f = os.memfd_create("exported-file")
    vu.fds.append(f)
    os.pwrite(f, b"file contents 16", 0)
    before = open_fd_count()
    msg = ShmemMap(0, 0, 0x20_0000, 0x1000, 1)
    assert channel.chan.request(BackendReq.SHMEM_MAP, msg, [f]) == 0
    request, payload, snapshot, fds = channel.seen[-1]
    assert (request, payload, snapshot) == (BackendReq.SHMEM_MAP, msg, [b"file contents 16"])
    assert open_fd_count() == before  # the channel closed the received fd after the handler
    assert channel.chan.request(BackendReq.SHMEM_UNMAP, ShmemUnmap(0, 0, 0x20_0000, 0x1000, 0)) == 0
    assert isinstance(channel.seen[-1][1], ShmemUnmap)
    channel.results["value"] = -errno.ENOMEM
    assert channel.chan.request(BackendReq.SHMEM_UNMAP, ShmemUnmap(0, 0, 0, 0x1000, 0)) == 2**64 - errno.ENOMEM


def test_backend_channel_refusals(vu, channel, caplog):
    chan = channel.chan
    conn = chan.conn
    flags = HeaderFlags.VERSION | HeaderFlags.NEED_REPLY

    def raw(request, payload=b"", fds=()):
        conn.send(request, payload, fds, flags)
        header, data, rfds = conn.recv()
        assert header.request == request and header.flags == REPLY and rfds == []
        return U64.unpack(data).value

    f = os.memfd_create("f")
    vu.fds.append(f)
    before = open_fd_count()
    assert raw(BackendReq.IOTLB_MSG, bytes(32)) == 1
    assert raw(99) == 1
    assert raw(BackendReq.SHMEM_MAP, ShmemMap(0, 0, 0, 0x1000, 0).pack()) == 1  # fd missing
    assert raw(BackendReq.SHMEM_MAP, ShmemMap(0, 0, 0, 0, 0).pack(), [f]) == 1  # len 0
    assert raw(BackendReq.VRING_HOST_NOTIFIER_MSG, VringArea(1, 4096, 0).pack()) == 1  # no fd, no NOFD
    assert raw(BackendReq.VRING_HOST_NOTIFIER_MSG, VringArea(1 | 0x100, 0, 0).pack()) == 0
    channel.results["raise"] = OSError(errno.EINVAL, "bad window offset")
    assert raw(BackendReq.SHMEM_MAP, ShmemMap(0, 0, 0, 0x1000, 0).pack(), [f]) == 1
    channel.results["raise"] = RuntimeError("handler bug")
    assert raw(BackendReq.VRING_CALL, VringState(0, 0).pack()) == 1
    assert open_fd_count() == before
    refused = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert len(refused) == 6, refused
    assert any("IOTLB_MSG(1): IOTLB_MSG not supported" in m for m in refused)
    assert any("request 99: unknown request id" in m for m in refused)
    assert any("bad window offset" in m for m in refused)
    assert any(r.levelno == logging.ERROR and "handler failed" in r.getMessage() for r in caplog.records)
    # still serving
    channel.results["raise"] = None
    assert chan.request(BackendReq.CONFIG_CHANGE_MSG) == 0


def test_backend_channel_handler_may_close_or_dup_the_fd(vu, channel):
    f = os.memfd_create("exported-file")
    vu.fds.append(f)
    kept: list[int] = []

    def closes_and_reuses(request, payload, fds):
        os.close(fds[0])
        kept.append(os.eventfd(0))  # reuses the number just closed
        return 0

    channel.server.handler = closes_and_reuses
    assert channel.chan.request(BackendReq.SHMEM_MAP, ShmemMap(0, 0, 0, 4096, 0), [f]) == 0
    vu.fds.extend(kept)
    os.eventfd_write(kept[0], 1)  # not closed behind the handler's back
    channel.server.handler = lambda request, payload, fds: kept.append(os.dup(fds[0])) or 0
    assert channel.chan.request(BackendReq.SHMEM_MAP, ShmemMap(0, 0, 0, 4096, 0), [f]) == 0
    vu.fds.append(kept[1])
    assert os.fstat(kept[1]).st_ino == os.fstat(f).st_ino


def test_backend_channel_bad_header_closes(vu, channel, caplog):
    channel.chan.conn.socket.sendall(struct.pack("=III", BackendReq.SHMEM_MAP, 2, 0))
    channel.thread.join(TIMEOUT)
    assert not channel.thread.is_alive()
    assert "version 2" in caplog.text
