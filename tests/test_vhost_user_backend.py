"""BackendDispatcher over a real socketpair, driven from the wire (so garbage can be sent), and BackendChannel.

The device is a small recording test double of BackendHandler: one layer (the dispatcher) under test.
"""

from __future__ import annotations

import logging
import os
import socket
import struct
import threading
from types import SimpleNamespace

import pytest

from vfscluster.errors import LocalProtocolError, VhostUserError
from vfscluster.vhost_user.backend import BackendChannel, BackendDispatcher, BackendHandler
from vfscluster.vhost_user.connection import Connection, close_fds
from vfscluster.vhost_user.message import (
    VHOST_USER_F_PROTOCOL_FEATURES,
    VRING_NOFD_MASK,
    BackendReq,
    DeviceConfig,
    FrontendReq,
    Header,
    HeaderFlags,
    Inflight,
    MemoryRegion,
    MemoryTable,
    ProtocolFeatures,
    ShmemMap,
    SingleMemoryRegion,
    U64,
    VringAddr,
    VringState,
)

TIMEOUT = 10.0
V = HeaderFlags.VERSION
NEED = HeaderFlags.VERSION | HeaderFlags.NEED_REPLY
REPLY = HeaderFlags.VERSION | HeaderFlags.REPLY
PF = ProtocolFeatures
ALL_PROTOCOL = PF.REPLY_ACK | PF.MQ | PF.BACKEND_REQ | PF.CONFIG | PF.CONFIGURE_MEM_SLOTS | PF.STATUS
FEATURES = VHOST_USER_F_PROTOCOL_FEATURES | (1 << 32)
REGION = MemoryRegion(0, 0x10000, 0x7F00_0000_0000, 0)


def open_fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


class Device(BackendHandler):
    """Records calls; keeps the fds it is given (closed by close()); ``fail``/``crash`` name methods that
    raise VhostUserError / RuntimeError."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []
        self.owned: list[int] = []
        self.fail: set[str] = set()
        self.crash: set[str] = set()
        self.channel: BackendChannel | None = None
        self.status = 0

    def _record(self, name: str, *args) -> None:
        self.calls.append((name, *args))
        if name in self.fail:
            raise VhostUserError(f"{name} refused by the test device")
        if name in self.crash:
            raise RuntimeError(f"{name} crashed")

    def close(self) -> None:
        close_fds(self.owned)
        self.owned.clear()
        if self.channel is not None:
            self.channel.close()

    def get_features(self):
        self._record("get_features")
        return FEATURES

    def set_features(self, features):
        self._record("set_features", features)

    def get_protocol_features(self):
        self._record("get_protocol_features")
        return int(ALL_PROTOCOL)

    def set_protocol_features(self, features):
        self._record("set_protocol_features", features)

    def set_owner(self):
        self._record("set_owner")

    def set_mem_table(self, regions, fds):
        self._record("set_mem_table", tuple(regions), len(fds))
        self.owned.extend(fds)

    def rem_mem_reg(self, region):
        self._record("rem_mem_reg", region)

    def set_vring_num(self, index, num):
        self._record("set_vring_num", index, num)

    def set_vring_addr(self, addr):
        self._record("set_vring_addr", addr)

    def get_vring_base(self, index):
        self._record("get_vring_base", index)
        return 42

    def set_vring_kick(self, index, fd):
        self._record("set_vring_kick", index, fd is not None)
        if fd is not None:
            self.owned.append(fd)

    def set_vring_call(self, index, fd):
        self._record("set_vring_call", index, fd is not None)
        if fd is not None:
            self.owned.append(fd)

    def set_vring_enable(self, index, enable):
        self._record("set_vring_enable", index, enable)

    def get_config(self, offset, size, flags):
        self._record("get_config", offset, size, flags)
        return bytes(range(offset, offset + size))

    def set_backend_req_fd(self, sock):
        self._record("set_backend_req_fd")
        self.channel = BackendChannel(sock)

    def set_status(self, status):
        self._record("set_status", status)
        self.status = status

    def get_status(self):
        self._record("get_status")
        return self.status


@pytest.fixture
def vu():
    dev_sock, drv_sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    drv_sock.settimeout(TIMEOUT)
    device = Device()
    dispatcher = BackendDispatcher(Connection(dev_sock), device)
    thread = threading.Thread(target=dispatcher.serve_forever, name="vhost-user-backend", daemon=True)
    thread.start()
    driver = Connection(drv_sock)
    yield SimpleNamespace(device=device, dispatcher=dispatcher, driver=driver, thread=thread)
    driver.close()
    thread.join(TIMEOUT)
    assert not thread.is_alive()
    device.close()


def ask(driver: Connection, request: int, payload: bytes = b"", fds=(), flags: int = V):
    driver.send(request, payload, fds, flags)
    return driver.recv()


def get_u64(driver: Connection, request: int) -> int:
    header, payload, fds = ask(driver, request)
    assert header == Header(request, REPLY, 8) and fds == []
    return U64.unpack(payload).value


def negotiate(vu, protocol=ALL_PROTOCOL, features=FEATURES) -> None:
    assert get_u64(vu.driver, FrontendReq.GET_FEATURES) == FEATURES
    assert get_u64(vu.driver, FrontendReq.GET_PROTOCOL_FEATURES) == ALL_PROTOCOL
    vu.driver.send(FrontendReq.SET_PROTOCOL_FEATURES, U64(protocol).pack())
    vu.driver.send(FrontendReq.SET_FEATURES, U64(features).pack())
    get_u64(vu.driver, FrontendReq.GET_FEATURES)  # barrier: both were processed
    assert vu.dispatcher.acked_protocol_features == protocol
    assert vu.dispatcher.acked_features == features


def expect_ack(driver: Connection, request: int, value: int) -> None:
    header, payload, fds = driver.recv()
    assert header == Header(request, REPLY, 8) and fds == []
    assert U64.unpack(payload).value == value


# ----------------------------------------------------------------------------------------- replies


def test_always_reply_requests(vu):
    negotiate(vu)
    header, payload, _ = ask(vu.driver, FrontendReq.GET_VRING_BASE, VringState(1, 0).pack())
    assert header == Header(FrontendReq.GET_VRING_BASE, REPLY, 8)
    assert VringState.unpack(payload) == VringState(1, 42)
    header, payload, _ = ask(vu.driver, FrontendReq.GET_CONFIG, DeviceConfig(4, 8, 0, bytes(8)).pack())
    assert DeviceConfig.unpack(payload) == DeviceConfig(4, 8, 0, bytes(range(4, 12)))
    # NEED_REPLY on a request that has a reply changes nothing: one reply, no extra ack.
    header, payload, _ = ask(vu.driver, FrontendReq.GET_STATUS, flags=NEED)
    assert header == Header(FrontendReq.GET_STATUS, REPLY, 8)
    assert get_u64(vu.driver, FrontendReq.GET_FEATURES) == FEATURES


def test_reply_ack(vu):
    negotiate(vu)
    vu.driver.send(FrontendReq.SET_VRING_NUM, VringState(0, 256).pack(), flags=NEED)
    expect_ack(vu.driver, FrontendReq.SET_VRING_NUM, 0)
    vu.device.fail.add("set_vring_num")
    vu.driver.send(FrontendReq.SET_VRING_NUM, VringState(0, 256).pack(), flags=NEED)
    expect_ack(vu.driver, FrontendReq.SET_VRING_NUM, 1)
    # Without NEED_REPLY: no ack -- the next reply is GET_FEATURES'.
    vu.driver.send(FrontendReq.SET_VRING_NUM, VringState(0, 256).pack())
    assert get_u64(vu.driver, FrontendReq.GET_FEATURES) == FEATURES


def test_no_ack_without_reply_ack(vu):
    negotiate(vu, protocol=ALL_PROTOCOL & ~PF.REPLY_ACK)
    assert not vu.dispatcher.reply_ack
    vu.driver.send(FrontendReq.SET_VRING_NUM, VringState(0, 256).pack(), flags=NEED)
    assert get_u64(vu.driver, FrontendReq.GET_FEATURES) == FEATURES
    assert ("set_vring_num", 0, 256) in vu.device.calls


def test_set_protocol_features_enabling_reply_ack_is_acked(vu):
    """As in rust-vmm, the dispatcher records the features before it decides to ack."""
    vu.driver.send(FrontendReq.SET_PROTOCOL_FEATURES, U64(PF.REPLY_ACK).pack(), flags=NEED)
    expect_ack(vu.driver, FrontendReq.SET_PROTOCOL_FEATURES, 0)


# ----------------------------------------------------------------------------------------- garbage


GARBAGE = {
    "unknown request 999": (999, b"", 0, "request 999: unknown request id"),
    "SET_VRING_NUM with 4 bytes": (FrontendReq.SET_VRING_NUM, b"\0" * 4, 0, "4 bytes, expected 8"),
    "SET_VRING_KICK without fd or NOFD": (FrontendReq.SET_VRING_KICK, U64(0).pack(), 0, "no fd attached"),
    "SET_VRING_KICK with fd and NOFD": (
        FrontendReq.SET_VRING_KICK, U64(VRING_NOFD_MASK).pack(), 1, "although VRING_NOFD_MASK"),
    "SET_OWNER with an fd": (FrontendReq.SET_OWNER, b"", 1, "1 fds attached, expected no fd"),
    "misaligned descriptor table": (
        FrontendReq.SET_VRING_ADDR, VringAddr(0, 0, 0x1004, 0, 0, 0).pack(), 0, "not 16-byte aligned"),
    "SET_VRING_ENABLE 2": (FrontendReq.SET_VRING_ENABLE, VringState(0, 2).pack(), 0, "expected 0 or 1"),
    "unsupported request": (FrontendReq.SET_LOG_FD, b"", 1, "SET_LOG_FD not supported"),
    "not implemented by the device": (
        FrontendReq.SET_VRING_BASE, VringState(0, 0).pack(), 0, "SET_VRING_BASE not supported"),
    "feature not negotiated": (
        FrontendReq.SET_INFLIGHT_FD, Inflight(0, 0, 1, 1).pack(), 1, "INFLIGHT_SHMFD not negotiated"),
    "mem table fds do not match": (
        FrontendReq.SET_MEM_TABLE, MemoryTable((REGION, REGION)).pack(), 1, "1 fds for 2 memory regions"),
    "backend req fd is not a socket": (FrontendReq.SET_BACKEND_REQ_FD, b"", 1, "not a socket"),
    "status above a byte": (FrontendReq.SET_STATUS, U64(0x100).pack(), 0, "status byte"),
}


@pytest.mark.parametrize("case", list(GARBAGE))
def test_garbage_is_refused_logged_and_serving_goes_on(vu, caplog, case):
    request, payload, nfds, reason = GARBAGE[case]
    negotiate(vu)
    before = open_fd_count()
    fds = [os.eventfd(0) for _ in range(nfds)]
    vu.driver.send(request, payload, fds, flags=NEED)
    close_fds(fds)
    expect_ack(vu.driver, request, 1)
    assert get_u64(vu.driver, FrontendReq.GET_FEATURES) == FEATURES
    assert open_fd_count() == before  # the dispatcher closed the fds of the refused message
    refused = [r for r in caplog.records if r.levelno == logging.WARNING and "refused" in r.getMessage()]
    assert len(refused) == 1 and reason in refused[0].getMessage(), caplog.text
    assert vu.thread.is_alive()


def test_garbage_without_need_reply_is_refused_silently(vu, caplog):
    negotiate(vu)
    vu.driver.send(999, b"abc")
    vu.driver.send(FrontendReq.SET_VRING_NUM, b"\0" * 4)
    assert get_u64(vu.driver, FrontendReq.GET_FEATURES) == FEATURES
    assert caplog.text.count("vhost-user: refused") == 2


def test_request_with_reply_flag_is_never_answered(vu, caplog):
    negotiate(vu)
    vu.driver.send(FrontendReq.SET_VRING_NUM, VringState(0, 8).pack(), flags=REPLY | HeaderFlags.NEED_REPLY)
    assert get_u64(vu.driver, FrontendReq.GET_FEATURES) == FEATURES
    assert "REPLY flag" in caplog.text
    assert not any(c[0] == "set_vring_num" for c in vu.device.calls)


def test_set_vring_enable_needs_protocol_features_acked(vu, caplog):
    negotiate(vu, features=1 << 32)  # bit 30 not acked
    vu.driver.send(FrontendReq.SET_VRING_ENABLE, VringState(0, 1).pack(), flags=NEED)
    expect_ack(vu.driver, FrontendReq.SET_VRING_ENABLE, 1)
    assert "VHOST_USER_F_PROTOCOL_FEATURES" in caplog.text


@pytest.mark.parametrize(
    "raw, reason",
    [
        (Header(FrontendReq.GET_FEATURES, 2, 0).pack(), "version 2"),
        (Header(FrontendReq.SET_FEATURES, 1, 100000).pack() + b"\0" * 64, "100000 exceeds"),
        (Header(FrontendReq.GET_FEATURES, 0x41, 0).pack(), "reserved"),
    ],
    ids=["version 2", "size 100000", "reserved flag"],
)
def test_malformed_header_closes_the_connection(vu, caplog, raw, reason):
    negotiate(vu)
    vu.driver.socket.sendall(raw)
    # The dispatcher closes its end; with our unread bytes still queued there Linux reports ECONNRESET.
    with pytest.raises((EOFError, ConnectionResetError)):
        vu.driver.recv()
    vu.thread.join(TIMEOUT)
    assert not vu.thread.is_alive()
    assert vu.dispatcher.conn.closed
    assert reason in caplog.text and "closing" in caplog.text


def test_failed_always_reply_request_gets_an_empty_reply(vu, caplog):
    negotiate(vu)
    vu.device.fail.add("get_vring_base")
    header, payload, _ = ask(vu.driver, FrontendReq.GET_VRING_BASE, VringState(0, 0).pack())
    assert header == Header(FrontendReq.GET_VRING_BASE, REPLY, 0)
    # Malformed GET_VRING_BASE (4 bytes): refused, but answered so the front-end does not hang.
    header, payload, _ = ask(vu.driver, FrontendReq.GET_VRING_BASE, b"\0" * 4)
    assert header == Header(FrontendReq.GET_VRING_BASE, REPLY, 0)
    # GET_CONFIG failure: a config of size 0, as rust-vmm sends.
    vu.device.fail.add("get_config")
    header, payload, _ = ask(vu.driver, FrontendReq.GET_CONFIG, DeviceConfig(0, 4, 0, bytes(4)).pack())
    assert header.size == 12 and DeviceConfig.unpack(payload).size == 0
    assert caplog.text.count("vhost-user: refused") == 3


@pytest.mark.parametrize(
    "request_id, payload, reply",
    [
        (FrontendReq.CHECK_DEVICE_STATE, b"", U64(1).pack()),
        (FrontendReq.IOTLB_MSG, bytes(32), U64(1).pack()),
        (FrontendReq.GET_SHMEM_CONFIG, b"", b""),
        (FrontendReq.GET_SHARED_OBJECT, bytes(range(16)), b""),
    ],
)
def test_unsupported_request_with_a_reply_is_answered_with_failure(vu, caplog, request_id, payload, reply):
    negotiate(vu)
    header, data, fds = ask(vu.driver, request_id, payload, flags=NEED)
    assert header == Header(request_id, REPLY, len(reply)) and data == reply and fds == []
    assert get_u64(vu.driver, FrontendReq.GET_FEATURES) == FEATURES  # no extra ack came before it
    assert "not supported" in caplog.text


def test_handler_bug_is_logged_with_traceback_and_refused(vu, caplog):
    negotiate(vu)
    vu.device.crash.add("set_vring_num")
    vu.driver.send(FrontendReq.SET_VRING_NUM, VringState(0, 8).pack(), flags=NEED)
    expect_ack(vu.driver, FrontendReq.SET_VRING_NUM, 1)
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and errors[0].exc_info and "crashed" in caplog.text
    assert get_u64(vu.driver, FrontendReq.GET_FEATURES) == FEATURES


def test_refusing_handler_does_not_leak_fds(vu):
    negotiate(vu)
    vu.device.fail.add("set_mem_table")
    before = open_fd_count()
    mem = os.memfd_create("ram")
    os.ftruncate(mem, 0x10000)
    vu.driver.send(FrontendReq.SET_MEM_TABLE, MemoryTable((REGION,)).pack(), [mem], flags=NEED)
    os.close(mem)
    expect_ack(vu.driver, FrontendReq.SET_MEM_TABLE, 1)
    assert open_fd_count() == before
    assert vu.device.owned == []


def test_handler_that_closes_its_fds_and_raises_is_not_double_closed(vu):
    """A device may close the fds itself before refusing; the number may be reused at once."""
    negotiate(vu)
    reused: list[int] = []

    def refuse(regions, fds):
        close_fds(fds)
        reused.append(os.eventfd(0))  # the lowest free number: the one just closed
        raise VhostUserError("mapping failed")

    vu.device.set_mem_table = refuse
    mem = os.memfd_create("ram")
    try:
        vu.driver.send(FrontendReq.SET_MEM_TABLE, MemoryTable((REGION,)).pack(), [mem], flags=NEED)
        expect_ack(vu.driver, FrontendReq.SET_MEM_TABLE, 1)
        os.eventfd_write(reused[0], 1)  # still open: the dispatcher did not close the reused number
        assert os.eventfd_read(reused[0]) == 1
    finally:
        close_fds(reused + [mem])


def test_accepted_fds_belong_to_the_handler(vu):
    negotiate(vu)
    kick = os.eventfd(0)
    try:
        vu.driver.send(FrontendReq.SET_VRING_KICK, U64(1).pack(), [kick], flags=NEED)
        expect_ack(vu.driver, FrontendReq.SET_VRING_KICK, 0)
        assert vu.device.calls[-1] == ("set_vring_kick", 1, True)
        (theirs,) = vu.device.owned
        os.eventfd_write(kick, 9)
        assert os.eventfd_read(theirs) == 9
        vu.driver.send(FrontendReq.SET_VRING_CALL, U64(2 | VRING_NOFD_MASK).pack(), flags=NEED)
        expect_ack(vu.driver, FrontendReq.SET_VRING_CALL, 0)
        assert vu.device.calls[-1] == ("set_vring_call", 2, False)
    finally:
        os.close(kick)


def test_rem_mem_reg_closes_a_tolerated_fd(vu):
    negotiate(vu)
    before = open_fd_count()
    stray = os.eventfd(0)
    vu.driver.send(FrontendReq.REM_MEM_REG, SingleMemoryRegion(REGION).pack(), [stray], flags=NEED)
    os.close(stray)
    expect_ack(vu.driver, FrontendReq.REM_MEM_REG, 0)
    assert vu.device.calls[-1] == ("rem_mem_reg", REGION)
    assert open_fd_count() == before


def test_handle_one_returns_false_on_eof():
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    device = Device()
    dispatcher = BackendDispatcher(Connection(a), device)
    with Connection(b) as driver:
        driver.send(FrontendReq.SET_OWNER)
    assert dispatcher.handle_one() is True
    assert dispatcher.handle_one() is False
    assert device.calls == [("set_owner",)]
    assert dispatcher.conn.closed


# --------------------------------------------------------------------------------- backend channel


@pytest.fixture
def channel():
    host, guest = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    host.settimeout(TIMEOUT)
    guest.settimeout(TIMEOUT)
    chan = BackendChannel(host)
    peer = Connection(guest)
    yield chan, peer
    chan.close()
    peer.close()


def run_peer(peer: Connection, answer) -> tuple[threading.Thread, list]:
    """Serve one request on ``peer`` with ``answer(header, payload, fds)`` in a thread."""
    seen: list = []

    def serve() -> None:
        header, payload, fds = peer.recv()
        seen.append((header, payload, len(fds)))
        try:
            answer(header, payload, fds)
        finally:
            close_fds(fds)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return thread, seen


def test_backend_channel_shmem_map(channel):
    chan, peer = channel
    mem = os.memfd_create("file")
    try:
        os.write(mem, b"file data")

        def answer(header, payload, fds):
            assert os.pread(fds[0], 9, 0) == b"file data"
            peer.reply(header, U64(0).pack())

        thread, seen = run_peer(peer, answer)
        msg = ShmemMap(0, 0, 0x20_0000, 0x1000, 1)
        assert chan.request(BackendReq.SHMEM_MAP, msg, [mem]) == 0
        thread.join(TIMEOUT)
        header, payload, nfds = seen[0]
        assert header == Header(BackendReq.SHMEM_MAP, NEED, 40) and nfds == 1
        assert ShmemMap.unpack(payload) == msg
    finally:
        os.close(mem)


@pytest.mark.parametrize(
    "make_reply, reason",
    [
        (lambda h: (h.request, V, U64(0).pack()), "flags 0x1"),
        (lambda h: (BackendReq.SHMEM_UNMAP, REPLY, U64(0).pack()), "is for SHMEM_UNMAP"),
        (lambda h: (h.request, REPLY, b"\0" * 4), "4 bytes"),
    ],
)
def test_backend_channel_malformed_reply(channel, make_reply, reason):
    chan, peer = channel

    def answer(header, payload, fds):
        request, flags, data = make_reply(header)
        peer.send(request, data, flags=flags)

    thread, _ = run_peer(peer, answer)
    with pytest.raises(VhostUserError, match=reason):
        chan.request(BackendReq.VRING_ERR, VringState(0, 0))
    thread.join(TIMEOUT)


def test_backend_channel_without_reply_and_local_checks(channel):
    chan, peer = channel
    assert chan.request(BackendReq.CONFIG_CHANGE_MSG, need_reply=False) == 0
    header, payload, fds = peer.recv()
    assert header == Header(BackendReq.CONFIG_CHANGE_MSG, V, 0)
    with pytest.raises(LocalProtocolError, match="expected 40"):
        chan.request(BackendReq.SHMEM_MAP, b"\0" * 8, [0])
    with pytest.raises(LocalProtocolError, match="exactly one fd"):
        chan.request(BackendReq.SHMEM_MAP, ShmemMap(0, 0, 0, 1, 0))
    with pytest.raises(LocalProtocolError):
        chan.request(BackendReq.SHMEM_UNMAP, 12345)


def test_backend_channel_eof(channel):
    chan, peer = channel
    peer.close()
    with pytest.raises((EOFError, OSError)):
        chan.request(BackendReq.CONFIG_CHANGE_MSG)


def test_set_backend_req_fd_hands_a_working_socket(vu):
    negotiate(vu)
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with ours:
        ours.settimeout(TIMEOUT)
        vu.driver.send(FrontendReq.SET_BACKEND_REQ_FD, b"", [theirs.fileno()], flags=NEED)
        theirs.close()
        expect_ack(vu.driver, FrontendReq.SET_BACKEND_REQ_FD, 0)
        assert vu.device.channel is not None
        vu.device.channel.request(BackendReq.CONFIG_CHANGE_MSG, need_reply=False)
        assert ours.recv(12) == struct.pack("=III", BackendReq.CONFIG_CHANGE_MSG, 1, 0)
