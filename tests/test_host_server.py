"""vfs-hostd against garbage and escape attempts: it refuses, logs, keeps serving, stays confined."""

import errno
import os
import socket
import struct
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

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
    q = dev.request_queues[0]
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
        q = guest.devices["vfs"].request_queues[0]
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


def _recv_all(s, n: int) -> bytes | None:
    data = b""
    while len(data) < n:
        chunk = s.recv(n - len(data))
        if not chunk:
            return None
        data += chunk
    return data


def _in_sync(s) -> bool:
    """GET_FEATURES, then read until its reply (skipping the replies and acks before it); False
    if the host closed the connection.  A host that answers nothing fails on the socket timeout."""
    s.sendall(_vhost_msg(FrontendReq.GET_FEATURES))
    while True:
        head = _recv_all(s, 12)
        if head is None:
            return False
        req, _flags, size = struct.unpack("<III", head)
        if _recv_all(s, size) is None:
            return False
        if req == FrontendReq.GET_FEATURES:
            return True


def _fd_kinds(kinds: list[str]) -> list[int]:
    fds = []
    for kind in kinds:
        if kind == "eventfd":
            fds.append(os.eventfd(0))
        elif kind == "memfd":
            fd = os.memfd_create("garbage")
            os.ftruncate(fd, 1 << 20)
            fds.append(fd)
        else:
            a, b = socket.socketpair()
            fds.append(a.detach())
            b.close()
    return fds


_WORD = st.one_of(st.sampled_from([0, 1, 2, 8, 128, 256, 0x1000, 0x7F00, 1 << 31, 0xFFFF_FFFF]),
                  st.integers(0, 0xFFFF_FFFF))
_MESSAGE = st.tuples(
    st.sampled_from([*FrontendReq, 0, 99, 1000]),
    st.lists(_WORD, max_size=18),                                   # the payload, in u32s
    st.lists(st.sampled_from(["eventfd", "memfd", "socket"]), max_size=2),
    st.booleans())                                                  # NEED_REPLY


@settings(max_examples=60, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(negotiate=st.booleans(), messages=st.lists(_MESSAGE, min_size=1, max_size=40))
def test_random_vhost_user_messages_never_hang_crash_or_leak_the_host(host, guest, share,
                                                                     negotiate, messages):
    """Any request (known, unknown, unsupported), payload of any size and content, fds of any
    kind and number, with or without NEED_REPLY, negotiated first or not: the host stays in step
    (answers a GET_FEATURES after them) or closes that connection; it keeps no fd of it once it
    is gone; another guest is served throughout."""
    before = len(os.listdir(f"/proc/{host.proc.pid}/fd"))
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10)
    s.connect(host.socket_path)
    try:
        if negotiate:
            s.sendall(_vhost_msg(FrontendReq.SET_FEATURES, struct.pack("<Q", 1 << 30 | 1 << 32)))
            s.sendall(_vhost_msg(FrontendReq.SET_PROTOCOL_FEATURES, struct.pack("<Q", 0x3FFFF)))
            s.sendall(_vhost_msg(FrontendReq.SET_OWNER))
        for req, words, kinds, need in messages:
            payload = b"".join(struct.pack("<I", w) for w in words)
            msg = _vhost_msg(req, payload, flags=1 | (8 if need else 0))
            fds = _fd_kinds(kinds)
            try:
                socket.send_fds(s, [msg], fds) if fds else s.sendall(msg)
            except (BrokenPipeError, ConnectionResetError):
                break                              # the host closed it (a header it cannot skip)
            finally:
                for fd in fds:
                    os.close(fd)
        else:
            assert _in_sync(s)
    finally:
        s.close()
    (share / "seen").write_text("1")
    assert guest.mounts["vfs"].os.listdir("/") == ["seen"]
    (share / "seen").unlink()
    assert host.proc.is_alive()
    deadline = time.monotonic() + 10          # the host drops the connection when its loop
    while len(os.listdir(f"/proc/{host.proc.pid}/fd")) > before:      # sees it go: let it turn
        assert time.monotonic() < deadline, "the host kept fds of a connection that is gone"
        guest.mounts["vfs"].os.listdir("/")


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


# ---------------------------------------------------------------------------- notification queue, locks


def test_notifier_waits_for_a_buffer_and_refuses_bad_ones(caplog):
    """The host's Notifier against a driver queue: no buffer -> the notification waits and kicks
    are requested; bad buffers are returned unused and logged; a good one carries NOTIFY_LOCK."""
    import types

    from vfscluster.host.notify import NOTIFY_BUF_SIZE, Notifier
    from vfscluster.virtio.device_queue import QueueState
    from vfscluster.virtio.driver_queue import DriverQueue
    from virtio_helpers import anon_memory

    gpa = 0x10000
    mem, mm = anon_memory(gpa=gpa)
    ram = memoryview(mm)
    dq = DriverQueue(ram, 0, 8, gpa_base=gpa, user_base=mem.regions[0].user_addr, event_idx=True)
    st = QueueState(size=8, desc_addr=dq.desc_user, avail_addr=dq.avail_user, used_addr=dq.used_user,
                    event_idx=True, enabled=True)
    dq.kick_fd = st.kick_fd = os.eventfd(0, os.EFD_NONBLOCK)
    dq.call_fd = st.call_fd = os.eventfd(0, os.EFD_NONBLOCK)
    try:
        q = st.build(mem)
        n = Notifier("t", types.SimpleNamespace(notify_index=1, queues=[None, q]))
        n.lock_done(42, 0)
        assert n.pending == 1 and n.sent == 0
        buf = 0x8000
        assert dq.add([], [(gpa + buf, NOTIFY_BUF_SIZE - 1)], "short") is True   # kicks were asked for
        dq.add([(gpa + buf, 8)], [(gpa + buf + 64, 64)], "readable")
        assert n.flush() == 0 and n.pending == 1 and n.refused == 2
        dq.add([], [(gpa + buf + 256, 64)], "good")
        assert n.flush() == 1 and n.pending == 0
        got = []
        with dq.lock:
            dq.reap(lambda tok, length: got.append((tok, length)))
        assert got == [("short", 0), ("readable", 0), ("good", NOTIFY_BUF_SIZE)]
        assert ram[buf + 256:buf + 256 + NOTIFY_BUF_SIZE].tobytes() == (
            abi.OutHeader(NOTIFY_BUF_SIZE, abi.NOTIFY_LOCK, 0).pack() + abi.NotifyLockOut(42, 0).pack())
        assert caplog.text.count("notification buffer refused") == 2
        n.close()
        n.lock_done(43, 0)
        assert n.pending == 0
    finally:
        for fd in (dq.kick_fd, dq.call_fd):
            os.close(fd)


@pytest.fixture
def inproc(share, tmp_path):
    """A HostServer in a thread of this process (its lock table can be looked at)."""
    import threading

    from vfscluster.host.server import HostServer
    srv = HostServer(str(share), str(tmp_path / "h.sock"), thread_pool_size=0, version_slots=64)
    th = threading.Thread(target=srv.serve_forever, daemon=True)
    th.start()
    machines = []

    def machine(name, **kw):
        m = GuestMachine(name, ram_name=ram_name(), ram_size=16 << 20)
        machines.append(m)
        m.add_device(srv.socket_path, "vfs", **kw)
        return m
    srv.machine = machine
    yield srv
    for m in machines:
        m.close()
    srv.stop()
    th.join(10)
    srv.close()


def _bg(fn, *args, **kw):
    import concurrent.futures as cf
    ex = cf.ThreadPoolExecutor(1)
    fut = ex.submit(fn, *args, **kw)
    ex.shutdown(wait=False)
    return fut


def test_interrupted_setlkw_leaves_no_waiter_on_the_host(inproc, share):
    import fcntl
    a, b = inproc.machine("a"), inproc.machine("b")
    ga, gb = a.mount("vfs").os, b.mount("vfs").os
    fa = ga.open("f", os.O_CREAT | os.O_RDWR, 0o644)
    fb = gb.open("f", os.O_RDWR)
    ga.fcntl_lock(fa, fcntl.F_SETLK, fcntl.F_WRLCK)
    with pytest.raises(OSError) as ei:
        gb.fcntl_lock(fb, fcntl.F_SETLKW, fcntl.F_WRLCK, timeout=0.2)
    assert ei.value.errno == errno.EINTR
    locks = inproc.fs.locks
    assert locks.table.waiters() == [] and locks.parked() == 0
    assert locks.table.counts() == {"keys": 1, "posix": 1, "flock": 0, "waiters": 0}
    assert b.devices["vfs"].lock_waits.parked() == 0
    ga.close(fa)                                           # FLUSH: unlock on close
    assert locks.table.counts()["posix"] == 0
    gb.fcntl_lock(fb, fcntl.F_SETLK, fcntl.F_WRLCK)


def test_a_grant_waits_for_a_notification_buffer(inproc, monkeypatch):
    """The guest gives no notification buffer: the host keeps the grant until the guest adds one
    (its kick wakes the host; no timer)."""
    import fcntl

    from vfscluster.guest.notify import NotifyQueue
    a = inproc.machine("a")
    with monkeypatch.context() as mp:
        mp.setattr(NotifyQueue, "post_all", lambda self: None)
        b = inproc.machine("b")
    ga, gb = a.mount("vfs").os, b.mount("vfs").os
    dev = b.devices["vfs"]
    fa = ga.open("f", os.O_CREAT | os.O_RDWR, 0o644)
    fb = gb.open("f", os.O_RDWR)
    ga.fcntl_lock(fa, fcntl.F_SETLK, fcntl.F_WRLCK, 0, 1)
    waiter = _bg(gb.fcntl_lock, fb, fcntl.F_SETLKW, fcntl.F_WRLCK, 0, 1)
    assert dev.lock_waits.wait_parked(1, 10)
    ga.fcntl_lock(fa, fcntl.F_SETLK, fcntl.F_UNLCK, 0, 1)     # granted to b on the host...
    session = next(s for s in inproc.sessions.values() if s.notifier.pending)
    assert session.notifier.pending == 1 and session.notifier.sent == 0
    assert dev.lock_waits.parked() == 1 and not waiter.done()  # ...but b cannot be told yet
    dev.notify.post_all()                                      # buffers, and a kick
    assert waiter.result(timeout=10) is None
    assert session.notifier.pending == 0 and session.notifier.sent == 1
    with pytest.raises(BlockingIOError):                       # b holds it now
        ga.fcntl_lock(fa, fcntl.F_SETLK, fcntl.F_WRLCK, 0, 1)


def test_garbage_notifications_and_interrupts_are_refused(inproc, caplog):
    import logging
    caplog.set_level(logging.INFO, logger="vfscluster.fuse.locking")
    a = inproc.machine("a")
    gos = a.mount("vfs").os
    dev = a.devices["vfs"]
    session = next(iter(inproc.sessions.values()))
    session.notifier.send(99, bytes(16))                                   # unknown code
    session.notifier.lock_done(12345, 0)                                   # waits for nothing
    session.notifier.send(abi.NOTIFY_LOCK, abi.NotifyLockOut(1, 7).pack())  # positive error
    session.notifier.send(abi.NOTIFY_LOCK, bytes(8))                       # short
    assert dev.notify.wait_handled(4, 10)
    assert dev.notify.refused == 4 and dev.notify.received == 0
    assert caplog.text.count("notification refused") == 4
    dev.send_noreply(abi.Opcode.INTERRUPT, 0, [abi.InterruptIn(777).pack()])   # nothing parked
    gos.listdir("/")
    gos.listdir("/")                    # two round trips: the host has handled the INTERRUPT
    assert "INTERRUPT of unique 777: no parked request" in caplog.text
    assert dev.notify.wait_handled(4, 0) and gos.listdir("/") == []       # all still working


def test_a_guest_without_notifications_keeps_the_old_layout_and_local_locks(inproc):
    import fcntl
    m = inproc.machine("plain", notifications=False)
    dev = m.devices["vfs"]
    assert dev.notify is None and dev.first_request == 1 and [q.index for q in dev.queues] == [0, 1]
    gos = m.mount("vfs").os
    assert not gos.client.flags & (abi.InitFlags.POSIX_LOCKS | abi.InitFlags.FLOCK_LOCKS)
    fd = gos.open("f", os.O_CREAT | os.O_RDWR, 0o644)
    gos.fcntl_lock(fd, fcntl.F_SETLK, fcntl.F_WRLCK)            # guest-local, as Linux without
    assert inproc.fs.locks.table.counts()["posix"] == 0         # POSIX_LOCKS keeps it
    other = type(gos)(gos.client)
    fd2 = other.open("f", os.O_RDWR)
    with pytest.raises(BlockingIOError):
        other.fcntl_lock(fd2, fcntl.F_SETLK, fcntl.F_RDLCK)
    with pytest.raises(OSError) as ei:
        other.fcntl_lock(fd2, fcntl.F_SETLKW, fcntl.F_RDLCK, timeout=0.05)
    assert ei.value.errno == errno.EINTR


def test_a_big_read_the_page_cache_holds_is_served_inline(share, tmp_path):
    """READ above 128 KiB goes to the thread pool unless cachestat(2) says the host's page cache
    holds the whole range (then a pool thread's wake-up would cost more than the copy)."""
    import threading

    from vfscluster.fuse.passthrough import syscalls
    from vfscluster.host.server import HostServer
    data = os.urandom(1 << 20)
    path = share / "big"
    path.write_bytes(data)
    fd = os.open(path, os.O_RDONLY)
    os.fsync(fd)
    try:
        syscalls.cached_pages(fd, 0, 1 << 20)
    except OSError as exc:
        os.close(fd)
        if exc.errno == errno.ENOSYS:
            pytest.skip("cachestat(2) needs Linux 6.5")
        raise
    srv = HostServer(str(share), str(tmp_path / "h.sock"), thread_pool_size=2)
    th = threading.Thread(target=srv.serve_forever, daemon=True)
    th.start()
    m = GuestMachine("t", ram_name=ram_name(), ram_size=16 << 20)
    try:
        m.add_device(srv.socket_path, "vfs")
        g = m.mount("vfs").os
        gfd = g.open("big", os.O_RDONLY)
        assert g.pread(gfd, 1 << 20, 0) == data and srv.pooled == 0     # cached: inline
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)              # clean pages: evicted
        if syscalls.cached_pages(fd, 0, 1 << 20) == 256:
            pytest.skip("this file system keeps its pages (tmpfs)")
        assert g.pread(gfd, 1 << 20, 0) == data
        assert srv.pooled == 1                                          # this one waited for the disk
        assert g.pread(gfd, 1 << 20, 0) == data and srv.pooled == 1     # cached again: inline
        g.close(gfd)
    finally:
        os.close(fd)
        m.close()
        srv.stop()
        th.join(10)
        srv.close()
