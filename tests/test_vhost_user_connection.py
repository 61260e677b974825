"""vhost-user framing and SCM_RIGHTS fd passing over real socketpairs and real fds."""

from __future__ import annotations

import array
import os
import socket
import threading

import pytest

from vfscluster.errors import LocalProtocolError, VhostUserError
from vfscluster.vhost_user.connection import Connection, close_fds
from vfscluster.vhost_user.message import (
    MAX_FDS,
    MAX_PAYLOAD,
    FrontendReq,
    Header,
    HeaderFlags,
    U64,
    VringState,
)

TIMEOUT = 10.0


def open_fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.fixture
def pair():
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    a.settimeout(TIMEOUT)
    b.settimeout(TIMEOUT)
    ca, cb = Connection(a), Connection(b)
    yield ca, cb
    ca.close()
    cb.close()


def send_raw(sock: socket.socket, data: bytes, fds=()) -> None:
    anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())] if fds else []
    assert sock.sendmsg([data], anc) == len(data)


def test_round_trip_without_fds(pair):
    a, b = pair
    a.send(FrontendReq.SET_VRING_NUM, VringState(1, 256).pack())
    header, payload, fds = b.recv()
    assert header == Header(FrontendReq.SET_VRING_NUM, HeaderFlags.VERSION, 8)
    assert VringState.unpack(payload) == VringState(1, 256)
    assert fds == []
    a.send(FrontendReq.GET_FEATURES)
    header, payload, fds = b.recv()
    assert (header.request, header.size, payload, fds) == (FrontendReq.GET_FEATURES, 0, b"", [])


def test_reply_sets_reply_flag(pair):
    a, b = pair
    a.send(FrontendReq.GET_FEATURES, flags=HeaderFlags.VERSION | HeaderFlags.NEED_REPLY)
    header, _, _ = b.recv()
    assert header.need_reply
    b.reply(header, U64(42).pack())
    reply, payload, _ = a.recv()
    assert reply.flags == HeaderFlags.VERSION | HeaderFlags.REPLY
    assert reply.request == FrontendReq.GET_FEATURES
    assert U64.unpack(payload).value == 42


def test_several_fds_pass_and_are_cloexec(pair):
    a, b = pair
    before = open_fd_count()
    events = [os.eventfd(0) for _ in range(3)]
    mem = os.memfd_create("vhost-user-test")
    os.write(mem, b"guest ram")
    try:
        a.send(FrontendReq.SET_MEM_TABLE, b"x" * 40, events + [mem])
        header, payload, fds = b.recv()
        assert header.size == 40 and payload == b"x" * 40
        assert len(fds) == 4 and not set(fds) & set(events + [mem])
        for fd in fds:
            assert not os.get_inheritable(fd)
        # The received fds are the same objects: write through the original, read through the copy.
        for i, (mine, theirs) in enumerate(zip(events, fds[:3])):
            os.eventfd_write(mine, i + 1)
            assert os.eventfd_read(theirs) == i + 1
        assert os.pread(fds[3], 9, 0) == b"guest ram"
        close_fds(fds)
    finally:
        close_fds(events + [mem])
    assert open_fd_count() == before


def test_max_fds_accepted(pair):
    a, b = pair
    before = open_fd_count()
    events = [os.eventfd(0) for _ in range(MAX_FDS)]
    try:
        a.send(FrontendReq.SET_MEM_TABLE, b"", events)
        _, _, fds = b.recv()
        assert len(fds) == MAX_FDS
        close_fds(fds)
    finally:
        close_fds(events)
    assert open_fd_count() == before


def test_too_many_fds_refused_without_leak(pair):
    a, b = pair
    before = open_fd_count()
    events = [os.eventfd(0) for _ in range(MAX_FDS + 1)]
    try:
        send_raw(a.socket, Header(FrontendReq.SET_MEM_TABLE, 1, 0).pack(), events)
        with pytest.raises(VhostUserError, match="more than 32 fds"):
            b.recv()
    finally:
        close_fds(events)
    assert open_fd_count() == before


@pytest.mark.parametrize(
    "header, reason",
    [
        (Header(FrontendReq.GET_FEATURES, 2, 0), "version 2"),
        (Header(FrontendReq.GET_FEATURES, 0x21, 0), "reserved"),
        (Header(FrontendReq.SET_FEATURES, 1, 100000), "exceeds"),
    ],
)
def test_bad_header_closes_its_fds(pair, header, reason):
    a, b = pair
    before = open_fd_count()
    events = [os.eventfd(0) for _ in range(3)]
    try:
        send_raw(a.socket, header.pack(), events)
        with pytest.raises(VhostUserError, match=reason):
            b.recv()
    finally:
        close_fds(events)
    assert open_fd_count() == before


def test_eof_mid_payload_closes_its_fds(pair):
    a, b = pair
    before = open_fd_count()
    event = os.eventfd(0)
    try:
        send_raw(a.socket, Header(FrontendReq.SET_VRING_KICK, 1, 8).pack() + b"\0" * 3, [event])
        a.socket.shutdown(socket.SHUT_WR)
        with pytest.raises(VhostUserError, match="3 of 8 payload bytes"):
            b.recv()
    finally:
        os.close(event)
    assert open_fd_count() == before


def test_eof_mid_header(pair):
    a, b = pair
    send_raw(a.socket, b"\x01\x00\x00")
    a.socket.shutdown(socket.SHUT_WR)
    with pytest.raises(VhostUserError, match="3 of 12 header bytes"):
        b.recv()


def test_orderly_eof(pair):
    a, b = pair
    a.send(FrontendReq.SET_OWNER)
    a.close()
    assert b.recv()[0].request == FrontendReq.SET_OWNER
    with pytest.raises(EOFError):
        b.recv()


def test_short_reads_are_completed(pair):
    """The kernel stops a read after a segment carrying fds: header and payload arrive in pieces."""
    a, b = pair
    event = os.eventfd(0)
    try:
        data = Header(FrontendReq.SET_VRING_CALL, 1, 8).pack() + U64(5).pack()
        send_raw(a.socket, data[:5], [event])  # fds attached to the first 5 bytes
        send_raw(a.socket, data[5:14])
        send_raw(a.socket, data[14:])
        header, payload, fds = b.recv()
        assert header.request == FrontendReq.SET_VRING_CALL and U64.unpack(payload).value == 5
        assert len(fds) == 1
        os.eventfd_write(event, 7)
        assert os.eventfd_read(fds[0]) == 7
        close_fds(fds)
    finally:
        os.close(event)


def test_back_to_back_messages_keep_their_fds_apart(pair):
    a, b = pair
    e1, e2 = os.eventfd(0), os.eventfd(0)
    try:
        a.send(FrontendReq.SET_VRING_KICK, U64(0).pack(), [e1])
        a.send(FrontendReq.SET_VRING_NUM, VringState(0, 8).pack())
        a.send(FrontendReq.SET_VRING_CALL, U64(0).pack(), [e2])
        h1, _, f1 = b.recv()
        h2, _, f2 = b.recv()
        h3, _, f3 = b.recv()
        assert [h.request for h in (h1, h2, h3)] == [12, 8, 13]
        assert (len(f1), len(f2), len(f3)) == (1, 0, 1)
        os.eventfd_write(e2, 3)
        assert os.eventfd_read(f3[0]) == 3
        close_fds(f1 + f3)
    finally:
        close_fds([e1, e2])


def test_concurrent_senders(pair):
    a, b = pair
    n = 200

    def sender(index: int) -> None:
        for i in range(n):
            a.send(FrontendReq.SET_VRING_BASE, VringState(index, i).pack())

    threads = [threading.Thread(target=sender, args=(t,)) for t in range(3)]
    for t in threads:
        t.start()
    seen: dict[int, list[int]] = {0: [], 1: [], 2: []}
    for _ in range(3 * n):
        header, payload, _ = b.recv()
        state = VringState.unpack(payload)
        seen[state.index].append(state.num)
    for t in threads:
        t.join(TIMEOUT)
        assert not t.is_alive()
    assert all(nums == list(range(n)) for nums in seen.values())


def test_local_misuse():
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    with a, b:
        with pytest.raises(LocalProtocolError):
            Connection(a)
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with Connection(a) as ca, b:
        with pytest.raises(LocalProtocolError):
            ca.send(FrontendReq.SET_CONFIG, bytes(MAX_PAYLOAD + 1))
        with pytest.raises(LocalProtocolError):
            ca.send(FrontendReq.SET_MEM_TABLE, b"", [0] * (MAX_FDS + 1))
    assert ca.closed


def test_connect_by_path(tmp_path):
    path = str(tmp_path / "vhost.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(path)
        listener.listen(1)
        listener.settimeout(TIMEOUT)
        with Connection.connect(path) as client:
            server_sock, _ = listener.accept()
            server_sock.settimeout(TIMEOUT)
            with Connection(server_sock) as server:
                client.send(FrontendReq.GET_FEATURES)
                assert server.recv()[0].request == FrontendReq.GET_FEATURES
