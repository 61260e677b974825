"""vfs-hostd against garbage and escape attempts: it refuses, logs, keeps serving, stays confined."""

import errno
import os
import socket
import struct

import pytest

from vfscluster.fuse import abi
from vfscluster.guest.machine import GuestMachine
from vfscluster.vhost_user.message import FrontendReq

from hostproc import HostProcess, ram_name


@pytest.fixture
def outside(tmp_path):
    secret = tmp_path / "secret"
    secret.write_text("do not touch")
    os.utime(secret, (1_000_000, 1_000_000))
    return secret


@pytest.fixture
def host(share, tmp_path):
    trace = tmp_path / "trace.txt"
    h = HostProcess(share, trace=str(trace))
    h.trace = trace
    yield h
    h.stop()


@pytest.fixture
def guest(host):
    m = GuestMachine("t", ram_name=ram_name(), ram_size=16 << 20)
    m.add_device(host.socket_path, "vfs")
    m.mount("vfs")
    yield m
    m.close()


def raw(guest, opcode, nodeid, args, reply=256):
    return guest.devices["vfs"].request(opcode, nodeid, args, reply)


@pytest.mark.parametrize("name", [b"..", b"../secret", b"/etc/passwd", b"a/b", b"", b"../../../../etc"])
def test_handmade_lookup_never_leaves_the_share(guest, share, outside, name):
    err, body = raw(guest, abi.Opcode.LOOKUP, abi.ROOT_ID, [name + b"\0"])
    if err == 0:          # ".." of the root is the root itself
        entry = abi.EntryOut.unpack_from(body)
        assert entry.nodeid == abi.ROOT_ID and entry.attr.ino == os.stat(share).st_ino
    else:
        assert -err in (errno.EINVAL, errno.ENOENT)
    for op, args in ((abi.Opcode.MKDIR, [abi.MkdirIn(mode=0o755).pack(), name + b"\0"]),
                     (abi.Opcode.CREATE, [abi.CreateIn(flags=os.O_WRONLY, mode=0o644).pack(), name + b"\0"]),
                     (abi.Opcode.UNLINK, [name + b"\0"])):
        err, _ = raw(guest, op, abi.ROOT_ID, args)
        assert err != 0
    assert os.stat(outside).st_atime == 1_000_000 and outside.read_text() == "do not touch"
    assert sorted(os.listdir(outside.parent)) == ["secret", "share", "trace.txt"]


def test_symlinks_pointing_outside_are_not_followed_by_the_host(guest, share, outside):
    gos = guest.mounts["vfs"].os
    os.symlink(str(outside), share / "abs")
    os.symlink("../secret", share / "rel")
    os.symlink("/", share / "root")
    for link in ("abs", "rel"):
        with pytest.raises(FileNotFoundError):     # resolved in the guest, against the share root
            gos.stat(link)
        assert gos.readlink(link) in (str(outside), "../secret")
    assert sorted(gos.listdir("root")) == sorted(os.listdir(share))   # "/" is the share root
    with pytest.raises(OSError):
        gos.open("abs", os.O_CREAT | os.O_WRONLY, 0o644)
    entry = abi.EntryOut.unpack_from(raw(guest, abi.Opcode.LOOKUP, abi.ROOT_ID, [b"abs\0"])[1])
    err, _ = raw(guest, abi.Opcode.OPEN, entry.nodeid, [abi.OpenIn(flags=os.O_RDONLY).pack()])
    assert -err == errno.ELOOP                       # the host never opens through a symlink
    assert os.stat(outside).st_atime == 1_000_000 and outside.read_text() == "do not touch"


def test_short_fuse_header_is_refused_and_the_queue_keeps_working(guest):
    dev = guest.devices["vfs"]
    q = dev.queues[1]
    view = dev.ram.view
    page = dev.ram.pages.alloc(2)
    base = page * 4096
    view[base:base + 10] = b"\x01" * 10
    done = []
    with q.lock:
        q.suppress_calls()
    kick = q.add([(base, 10)], [(base + 4096, 4096)], "garbage")
    if kick:
        q.kick()
    while not done:
        with q.lock:
            q.reap(lambda tok, n: done.append((tok, n)))
    with q.lock:
        q.enable_calls()
    assert done == [("garbage", 0)]                  # refused: nothing written back
    dev.ram.pages.free(page, 2)
    assert guest.mounts["vfs"].os.listdir("/") == []     # the same queue still serves


def test_descriptor_outside_guest_ram_breaks_only_that_queue(host, guest, share):
    other = GuestMachine("other", ram_name=ram_name(), ram_size=16 << 20)
    try:
        other.add_device(host.socket_path, "vfs")
        ogos = other.mount("vfs").os
        q = guest.devices["vfs"].queues[1]
        q.add([(1 << 40, 64)], [(1 << 41, 64)], "bad")   # far outside guest RAM
        q.kick()
        with pytest.raises(OSError) as ei:           # the host reports the queue broken (vring err fd)
            guest.mounts["vfs"].os.listdir("/")
        assert ei.value.errno == errno.EIO
        (share / "x").write_text("1")
        assert ogos.listdir("/") == ["x"]            # the host is alive and serves the others
    finally:
        other.close()


def _vhost_msg(req, payload=b"", flags=1):
    return struct.pack("<III", req, flags, len(payload)) + payload


def test_vhost_user_garbage_is_refused_and_the_host_keeps_serving(host, guest, share):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10)
    s.connect(host.socket_path)
    s.sendall(_vhost_msg(FrontendReq.SET_VRING_NUM, b"\0\0\0\0"))          # 4 bytes, not 8
    s.sendall(_vhost_msg(999))                                             # unknown request
    s.sendall(_vhost_msg(FrontendReq.GET_FEATURES))
    hdr = s.recv(12)
    assert len(hdr) == 12 and struct.unpack("<III", hdr)[0] == FrontendReq.GET_FEATURES
    s.recv(8)
    s.sendall(struct.pack("<III", FrontendReq.SET_OWNER, 1, 1 << 20))       # size past the limit
    assert s.recv(64) == b""                                               # unrecoverable: closed
    s.close()
    (share / "y").write_text("2")
    assert guest.mounts["vfs"].os.listdir("/") == ["y"]


def test_trace_has_one_line_per_request(host, guest):
    gos = guest.mounts["vfs"].os
    gos.mkdir("d")
    with pytest.raises(FileNotFoundError):
        gos.stat("nope")
    lines = [l.split("\t") for l in host.trace.read_text().splitlines()]
    ops = [l[3] for l in lines]
    assert "INIT" in ops and "MKDIR" in ops and "LOOKUP" in ops
    assert any(l[3] == "LOOKUP" and l[5] == str(-errno.ENOENT) for l in lines)


# ---------------------------------------------------------------------------- version table


EV = abi.InitFlags.ENTRY_VERSION


def raw_init(dev, flags) -> abi.InitOut:
    lo, hi = abi.split_init_flags(flags)
    err, body = dev.request(abi.Opcode.INIT, 0, [abi.InitIn(7, 38, 0, lo, hi).pack()], 256)
    assert err == 0
    return abi.InitOut.unpack_from(body)


@pytest.fixture
def vdev(host):
    """A device on the host, INIT with ENTRY_VERSION (raw: the entry replies are read by hand)."""
    m = GuestMachine("v", ram_name=ram_name(), ram_size=16 << 20)
    try:
        dev = m.add_device(host.socket_path, "vfs")
        assert raw_init(dev, abi.InitFlags.INIT_EXT | abi.InitFlags.DO_READDIRPLUS | EV).all_flags & EV
        yield dev
    finally:
        m.close()


def versioned_lookup(dev, parent, n):
    err, body = dev.request(abi.Opcode.LOOKUP, parent, [n + b"\0"], abi.EntryOut.SIZE + abi.EntryVerOut.SIZE)
    assert err == 0 and len(body) == abi.EntryOut.SIZE + abi.EntryVerOut.SIZE
    return abi.EntryOut.unpack_from(body), abi.EntryVerOut.unpack_from(body, abi.EntryOut.SIZE)


def barrier(dev):
    """Any request: its reply comes after every host-side change made before it was sent."""
    err, _ = dev.request(abi.Opcode.GETATTR, abi.ROOT_ID, [abi.GetattrIn().pack()], 256)
    assert err == 0


def test_version_view_and_entry_versions(vdev, share):
    (share / "f").write_bytes(b"abc")
    view = vdev.version_view()
    entry, ev = versioned_lookup(vdev, abi.ROOT_ID, b"f")
    assert ev.version_index == entry.nodeid % view.slots and ev.version == view.version(entry.nodeid)
    assert entry.attr.size == 3 and entry.attr.ino == os.stat(share / "f").st_ino
    with pytest.raises(TypeError):
        view.mem[0] = 1                          # mapped read-only: refused, not a crash
    with pytest.raises(TypeError):
        view._words[4 + entry.nodeid % view.slots] = 0


def test_writes_and_setattr_through_the_device_change_the_slot(vdev, share):
    (share / "f").write_bytes(b"abc")
    view = vdev.version_view()
    entry, _ = versioned_lookup(vdev, abi.ROOT_ID, b"f")
    n = entry.nodeid
    err, body = vdev.request(abi.Opcode.OPEN, n, [abi.OpenIn(os.O_RDWR).pack()], abi.OpenOut.SIZE)
    fh = abi.OpenOut.unpack_from(body).fh
    v0 = view.version(n)
    err, _ = vdev.request(abi.Opcode.WRITE, n, [abi.WriteIn(fh, 0, 2).pack(), b"xy"], abi.WriteOut.SIZE)
    assert err == 0 and view.version(n) > v0
    v1 = view.version(n)
    sa = abi.SetattrIn(valid=abi.SetattrValid.MODE, mode=0o600).pack()
    err, _ = vdev.request(abi.Opcode.SETATTR, n, [sa], abi.AttrOut.SIZE)
    assert err == 0 and view.version(n) > v1


def test_host_side_changes_are_visible_after_any_request(vdev, share):
    (share / "f").write_bytes(b"abc")
    view = vdev.version_view()
    f, _ = versioned_lookup(vdev, abi.ROOT_ID, b"f")
    for _ in range(3):
        before = view.version(f.nodeid)
        os.utime(share / "f", (1_000, 1_000))
        barrier(vdev)
        assert view.version(f.nodeid) > before
    root, moved = view.version(abi.ROOT_ID), view.version(f.nodeid)
    os.rename(share / "f", share / "g")
    barrier(vdev)
    assert view.version(abi.ROOT_ID) > root and view.version(f.nodeid) > moved
    entry, ev = versioned_lookup(vdev, abi.ROOT_ID, b"g")
    assert entry.nodeid == f.nodeid and ev.version == view.version(f.nodeid)


def test_stock_init_gets_stock_entry_replies(host, share):
    (share / "f").write_bytes(b"")
    m = GuestMachine("stock", ram_name=ram_name(), ram_size=16 << 20)
    try:
        dev = m.add_device(host.socket_path, "vfs")
        assert not raw_init(dev, abi.InitFlags.INIT_EXT | abi.InitFlags.DO_READDIRPLUS).all_flags & EV
        err, body = dev.request(abi.Opcode.LOOKUP, abi.ROOT_ID, [b"f\0"], 1024)
        assert err == 0 and len(body) == abi.EntryOut.SIZE
    finally:
        m.close()
