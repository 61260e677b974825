"""The guest's virtio-fs device against a real vfs-hostd process."""

import errno
import os
import signal
import socket
import struct
import threading
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vfscluster.fuse import abi
from vfscluster.guest.device import DeviceConfig
from vfscluster.guest.machine import GuestMachine

from hostproc import HostProcess, ram_name
from realpeers import boot, require_virtiofsd, rundir  # noqa: F401 (fixture)
from threads import run_threads


@pytest.fixture
def machine():
    m = GuestMachine("test", ram_name=ram_name(), ram_size=16 << 20)
    yield m
    m.close()


@pytest.mark.parametrize("tag,nq,what", [
    ("", 1, "tag"), ("x" * 37, 1, "tag"), ("é" * 19, 1, "tag"), ("ok", 0, "num_request_queues")])
def test_bad_device_config_is_einval(tag, nq, what):
    with pytest.raises(OSError) as ei:
        DeviceConfig(tag, nq)
    assert ei.value.errno == errno.EINVAL and what in str(ei.value)


def test_tag_of_36_bytes_is_fine():
    assert len(DeviceConfig("t" * 36).config_space()) == 40


def test_duplicate_tag_and_unknown_tag(hostd, machine):
    machine.add_device(hostd.socket_path, "share")
    with pytest.raises(OSError) as ei:
        machine.add_device(hostd.socket_path, "share")
    assert ei.value.errno == errno.EEXIST and "share" in str(ei.value)
    with pytest.raises(OSError) as ei:
        machine.mount("nosuchtag")
    assert ei.value.errno == errno.EINVAL and "nosuchtag" in str(ei.value)
    m = machine.mount("share")
    assert m.os.listdir("/") == []


def _lookup_args(name: bytes):
    return [name + b"\0"]


def test_queue_of_8_with_64_in_flight_from_8_threads(share, hostd):
    """A full ring makes submitters wait for used buffers; every reply is the right one."""
    for t in range(8):
        for k in range(8):
            (share / f"f{t}-{k}").write_bytes(b"x" * (t * 8 + k))
    m = GuestMachine("q8", ram_name=ram_name(), ram_size=16 << 20)
    try:
        dev = m.add_device(hostd.socket_path, "vfs", queue_size=8)
        m.mount("vfs")
        errors, results = [], {}
        start = threading.Barrier(8)

        def worker(t):
            try:
                start.wait(10)
                pend = [(k, dev.submit(abi.Opcode.LOOKUP, abi.ROOT_ID, _lookup_args(f"f{t}-{k}".encode()),
                                       abi.EntryOut.SIZE)) for k in range(8)]
                for k, p in pend:
                    err, body = p.wait()
                    results[(t, k)] = (err, abi.EntryOut.unpack_from(body).attr.size)
            except Exception as exc:
                errors.append(exc)

        run_threads(worker, 8)
        assert not errors
        assert len(results) == 64
        assert all(results[(t, k)] == (0, t * 8 + k) for t in range(8) for k in range(8))
        assert dev.request_queues[0].full_waits > 0
    finally:
        m.close()


def test_host_gone_fails_pending_and_later_requests_with_enotconn(share):
    h = HostProcess(share)
    m = GuestMachine("gone", ram_name=ram_name(), ram_size=16 << 20)
    try:
        m.add_device(h.socket_path, "vfs")
        gos = m.mount("vfs").os
        gos.mkdir("d")
        os.kill(h.proc.pid, signal.SIGSTOP)          # the host stops serving: a request stays pending
        outcome = []

        def pending():
            try:
                gos.stat("d")
                outcome.append("ok")
            except OSError as exc:
                outcome.append(exc.errno)
        th = threading.Thread(target=pending)
        th.start()
        th.join(0.3)
        assert th.is_alive()                          # it really is waiting on the host
        t0 = time.monotonic()
        os.kill(h.proc.pid, signal.SIGKILL)
        th.join(5)
        assert outcome == [errno.ENOTCONN]
        with pytest.raises(OSError) as ei:
            gos.listdir("/")
        assert ei.value.errno == errno.ENOTCONN
        assert time.monotonic() - t0 < 2.0
    finally:
        m.close()
        h.stop()


def test_four_request_queues_eight_threads(share, hostd):
    """Threads are spread over the request queues (affinity); the host serves them all."""
    for i in range(8):
        (share / f"t{i}").write_bytes(b"y" * i)
    m = GuestMachine("mq", ram_name=ram_name(), ram_size=16 << 20)
    try:
        dev = m.add_device(hostd.socket_path, "vfs", num_request_queues=4, queue_size=16)
        gos = m.mount("vfs").os
        results, errors = {}, []
        start = threading.Barrier(8)

        def worker(t):
            try:
                start.wait(10)
                for k in range(50):
                    results[(t, k)] = gos.stat(f"t{t}").st_size
            except Exception as exc:
                errors.append(exc)
        run_threads(worker, 8)
        assert not errors
        assert all(results[(t, k)] == t for t in range(8) for k in range(50))
        used = [q.index for q in dev.request_queues if q.avail_idx > 0]
        assert used == [2, 3, 4, 5]          # every request queue carried requests (1: notifications)
    finally:
        m.close()


# ---------------------------------------------------------------------------- region 1: the version table


def test_version_view_from_vfs_hostd(hostd, machine):
    dev = machine.add_device(hostd.socket_path, "vfs")
    view = dev.version_view()
    assert view.slots == 1 << 16 and dev.version_view(timeout=0) is view
    assert dev.shmem_config.sizes == (1 << 30, 32 + 8 * view.slots)   # region 0: the DAX window (1 GiB)


def test_no_version_table_when_the_host_has_none(share):
    h = HostProcess(share, version_slots=0)
    machine = GuestMachine("nt", ram_name=ram_name(), ram_size=16 << 20)
    try:
        dev = machine.add_device(h.socket_path, "vfs")
        with pytest.raises(OSError) as ei:
            dev.version_view()
        assert ei.value.errno == errno.EOPNOTSUPP and "no metadata-version table" in str(ei.value)
        assert machine.mount("vfs").os.listdir("/") == []
    finally:
        machine.close()
        h.stop()


def test_the_c_virtiofsd_offers_no_version_table(share, rundir):
    require_virtiofsd()
    d = boot.VirtiofsdDaemon(str(share), rundir / "v.sock", cache="none", log_path=rundir / "v.log")
    machine = GuestMachine("cv", ram_name=ram_name(), ram_size=16 << 20)
    try:
        dev = machine.add_device(d.socket_path, "vfs")
        t0 = time.monotonic()
        with pytest.raises(OSError) as ei:
            dev.version_view()
        assert ei.value.errno == errno.EOPNOTSUPP and time.monotonic() - t0 < 1.0   # at once
        assert dev.backend_channel is None
        (share / "x").write_bytes(b"")
        assert machine.mount("vfs").os.listdir("/") == ["x"]
    finally:
        machine.close()
        d.stop()


@pytest.fixture
def inproc_host(share, tmp_path):
    """A HostServer in a thread of this process (so a test can make its device misbehave)."""
    from vfscluster.host.server import HostServer
    srv = HostServer(str(share), str(tmp_path / "h.sock"), thread_pool_size=0, version_slots=64)
    th = threading.Thread(target=srv.serve_forever, daemon=True)
    th.start()
    yield srv
    srv.stop()
    th.join(10)
    srv.close()


def test_garbage_shmem_map_is_refused_and_logged(inproc_host, machine, monkeypatch, tmp_path, caplog):
    from vfscluster.host.device import FsBackendDevice
    from vfscluster.vhost_user import BackendReq, ShmemMap
    real = FsBackendDevice._map_versions
    junk = tmp_path / "junk"
    junk.write_bytes(b"\xff" * 4096)
    r, w = os.pipe()

    def garbage_first(self, sock):
        fd = self.versions.ro_fd
        size = self.versions.size
        jfd = os.open(junk, os.O_RDONLY)
        try:
            for m, f in ((ShmemMap(1, 0, 0, size, 1), fd),          # writable
                         (ShmemMap(1, 0, 0, 16, 0), fd),            # shorter than a table
                         (ShmemMap(1, 0, 0, size + 8, 0), fd),      # past the region
                         (ShmemMap(1, 8, 0, 64, 0), fd),            # not from offset 0
                         (ShmemMap(7, 0, 0, size, 0), fd),          # no such region
                         (ShmemMap(1, 0, 0, 4096 if size >= 4096 else size, 0), jfd),   # no magic
                         (ShmemMap(1, 0, 0, size, 0), r)):          # not a file
                self.backend_channel.request(BackendReq.SHMEM_MAP, m, [f], need_reply=False)
        finally:
            os.close(jfd)
        real(self, sock)

    monkeypatch.setattr(FsBackendDevice, "_map_versions", garbage_first)
    try:
        dev = machine.add_device(inproc_host.socket_path, "vfs")
        view = dev.version_view(timeout=10)            # the good one came last: all were handled
        assert view.slots == 64
        refused = [rec.getMessage() for rec in caplog.records if "refused SHMEM_MAP" in rec.getMessage()]
        reasons = ["read-only", "shorter than a version table", "past region 1", "from offset 0",
                   "region 7 is not served", "not a version table", "not a shared-memory file"]
        assert len(refused) == len(reasons)
        for msg, why in zip(refused, reasons):
            assert why in msg, (msg, why)
        assert machine.mount("vfs").os.listdir("/") == []         # the device keeps working
    finally:
        os.close(r)
        os.close(w)


# ------------------------------------------------------------------ notification queue, parked locks


def test_lock_waits_accept_the_notification_before_the_reply():
    from vfscluster.guest.notify import LockWaits
    waits = LockWaits()
    w = waits.register(10)
    assert waits.deliver(10, 0) and w.wait(0) and w.notified     # before "queued" came
    assert not waits.deliver(10, 0)                                       # once only
    assert not waits.deliver(11, 0)                                       # waits for nothing
    waits.mark_parked(w)
    assert waits.parked() == 0                                            # answered already
    w2 = waits.register(12)
    waits.mark_parked(w2)
    assert waits.parked() == 1 and waits.wait_parked(1, 0)
    waits.fail_all(errno.ENOTCONN)
    assert w2.wait(0) and w2.error == -errno.ENOTCONN and waits.parked() == 0
    with pytest.raises(OSError) as ei:
        waits.register(14)
    assert ei.value.errno == errno.ENOTCONN
    waits.unregister(10)
    waits.unregister(12)


def _lock_pair(srv):
    import fcntl
    ma = GuestMachine("la", ram_name=ram_name(), ram_size=16 << 20)
    mb = GuestMachine("lb", ram_name=ram_name(), ram_size=16 << 20)
    ma.add_device(srv.socket_path, "vfs")
    mb.add_device(srv.socket_path, "vfs")
    ga, gb = ma.mount("vfs").os, mb.mount("vfs").os
    fa = ga.open("f", os.O_CREAT | os.O_RDWR, 0o644)
    fb = gb.open("f", os.O_RDWR)
    ga.fcntl_lock(fa, fcntl.F_SETLK, fcntl.F_WRLCK)
    return (ma, ga, fa), (mb, gb, fb)


def test_grant_that_overtakes_its_queued_reply(inproc_host, monkeypatch):
    """The host completes a parked SETLKW before its +1 reply is on the ring: the guest finds
    the notification waiting when the reply comes (the series' reordering patch)."""
    import fcntl

    from vfscluster.fuse.passthrough import PassthroughFs
    (ma, ga, fa), (mb, gb, fb) = _lock_pair(inproc_host)
    try:
        real = PassthroughFs.setlkw

        def grant_first(self, ctx, nodeid, fh, owner, lock, flags, done):
            done(0)                        # NOTIFY_LOCK goes out before the reply is written
            return True
        monkeypatch.setattr(PassthroughFs, "setlkw", grant_first)
        gb.fcntl_lock(fb, fcntl.F_SETLKW, fcntl.F_WRLCK, timeout=10)
        dev = mb.devices["vfs"]
        assert dev.notify.wait_handled(1, 10) and dev.notify.received == 1
        assert dev.lock_waits.parked() == 0
        monkeypatch.setattr(PassthroughFs, "setlkw", real)
        with pytest.raises(OSError) as ei:         # the real one still parks, and times out
            gb.fcntl_lock(fb, fcntl.F_SETLKW, fcntl.F_WRLCK, timeout=0)
        assert ei.value.errno == errno.EINTR
    finally:
        ma.close()
        mb.close()


def test_keyboard_interrupt_withdraws_a_parked_setlkw(inproc_host, monkeypatch):
    """The caller's KeyboardInterrupt while its SETLKW is parked: INTERRUPT, -EINTR from the host,
    no waiter left; KeyboardInterrupt is raised.  (Injected where the wait is: a real SIGINT
    that lands just before the thread blocks on a lock is only seen at its next wake-up —
    CPython's signal delivery, not something a wait without a timer can change.)"""
    import fcntl

    from vfscluster.guest.notify import LockWait
    (ma, ga, fa), (mb, gb, fb) = _lock_pair(inproc_host)
    try:
        real = LockWait.wait
        calls = []

        def interrupted(self, timeout=None):
            calls.append(timeout)
            if len(calls) == 1:
                raise KeyboardInterrupt
            return real(self, timeout)
        monkeypatch.setattr(LockWait, "wait", interrupted)
        with pytest.raises(KeyboardInterrupt):
            gb.fcntl_lock(fb, fcntl.F_SETLKW, fcntl.F_WRLCK)
        dev = mb.devices["vfs"]
        assert calls[0] is None and dev.notify.wait_handled(1, 10)    # the outcome came: -EINTR
        assert dev.notify.received == 1 and dev.lock_waits.parked() == 0
        assert inproc_host.fs.locks.table.waiters() == [] and inproc_host.fs.locks.parked() == 0
        ga.close(fa)
        gb.fcntl_lock(fb, fcntl.F_SETLK, fcntl.F_WRLCK)      # not taken by a leftover waiter
    finally:
        ma.close()
        mb.close()


def _parked_setlkw(machine, gos, fd):
    """A thread whose F_SETLKW on ``fd`` the host has parked; (thread, [errno or 0 once it ends])."""
    import fcntl
    outcome = []

    def wait():
        try:
            gos.fcntl_lock(fd, fcntl.F_SETLKW, fcntl.F_WRLCK)
            outcome.append(0)
        except OSError as exc:
            outcome.append(exc.errno)
    th = threading.Thread(target=wait)
    th.start()
    assert machine.devices["vfs"].lock_waits.wait_parked(1, 10)
    return th, outcome


def test_parked_setlkw_fails_with_enotconn_when_the_host_dies(share):
    h = HostProcess(share)
    try:
        (ma, ga, fa), (mb, gb, fb) = _lock_pair(h)
        try:
            th, outcome = _parked_setlkw(mb, gb, fb)
            os.kill(h.proc.pid, signal.SIGKILL)
            th.join(5)
            assert outcome == [errno.ENOTCONN]
        finally:
            ma.close()
            mb.close()
    finally:
        h.stop()


def test_a_broken_notification_ring_fails_the_parked_lock_waits(share, hostd, caplog):
    """A host that breaks the used ring of the notification queue can deliver no grant: a parked
    SETLKW ends with EIO instead of waiting for ever, and it says why."""
    (ma, ga, fa), (mb, gb, fb) = _lock_pair(hostd)
    try:
        th, outcome = _parked_setlkw(mb, gb, fb)
        dev = mb.devices["vfs"]
        ring = dev.notify.queue
        with ring.lock:                                  # the host's used index, jumping
            ring.used[2:4] = ((ring.last_used + ring.size + 1) & 0xFFFF).to_bytes(2, "little")
        dev.notify.reap()                                # what the completion thread does on a call
        th.join(10)
        assert outcome == [errno.EIO]
        assert "failing its requests with EIO" in caplog.text
    finally:
        ma.close()
        mb.close()


def test_hiprio_completions_are_reaped_by_later_senders(share, hostd):
    """FORGETs ask for no call: the next sender reaps what the host returned, and a sender that
    finds the hiprio ring full gets room (no call comes, nobody polls) instead of hanging."""
    (share / "f").write_bytes(b"x")
    m = GuestMachine("hi", ram_name=ram_name(), ram_size=16 << 20)
    try:
        dev = m.add_device(hostd.socket_path, "vfs", queue_size=8)
        m.mount("vfs")
        hiprio = dev.queues[0]
        nodeid = None
        for _ in range(40):                    # 40 lookups, 40 FORGETs of one each: 5 rings' worth
            err, body = dev.request(abi.Opcode.LOOKUP, abi.ROOT_ID, _lookup_args(b"f"), abi.EntryOut.SIZE)
            assert err == 0
            nodeid = abi.EntryOut.unpack_from(body).nodeid
        for _ in range(40):
            dev.send_noreply(abi.Opcode.FORGET, nodeid, [abi.ForgetIn(1).pack()])
        assert hiprio.in_flight() <= 8
        err, _ = dev.request(abi.Opcode.LOOKUP, abi.ROOT_ID, _lookup_args(b"f"), abi.EntryOut.SIZE)
        assert err == 0                          # the host is still serving
    finally:
        m.close()


@pytest.mark.parametrize("how", ["queue broken", "host gone"])
def test_forgets_in_flight_when_hiprio_fails_give_their_pages_back(share, hostd, how):
    """FORGETs have nobody waiting for them: when their queue fails (broken, or the host gone)
    with some in flight, their pages go back to guest RAM — which every device of the guest
    allocates from — instead of being lost."""
    (share / "f").write_bytes(b"x")
    m = GuestMachine("forgets", ram_name=ram_name(), ram_size=16 << 20)
    try:
        dev = m.add_device(hostd.socket_path, "vfs", queue_size=8)
        m.mount("vfs")
        hiprio, pages = dev.queues[0], m.ram.pages
        err, body = dev.request(abi.Opcode.LOOKUP, abi.ROOT_ID, _lookup_args(b"f"), abi.EntryOut.SIZE)
        assert err == 0
        nodeid = abi.EntryOut.unpack_from(body).nodeid
        before = pages.used
        for _ in range(4):     # each sender reaps what came before it; the last stays in flight
            dev.send_noreply(abi.Opcode.FORGET, nodeid, [abi.ForgetIn(0).pack()])
        with hiprio.lock:
            in_flight = hiprio.in_flight()
            assert in_flight >= 1 and pages.used == before + in_flight
        if how == "queue broken":
            dev._fail_queue(hiprio, errno.EIO)     # what the completion thread does on the err fd
        else:
            os.kill(hostd.proc.pid, signal.SIGKILL)
            dev._completer.join(10)                 # it ends after failing every queue
            assert dev.disconnected and not dev._completer.is_alive()
        assert pages.used == before
        with hiprio.lock:
            assert hiprio.reap(dev._complete) == 0  # and no late entry frees them twice
        assert pages.used == before
    finally:
        m.close()


@pytest.mark.parametrize("spin_ns", [0, 2000])
def test_short_spins_on_a_full_ring_never_strand_a_waiter(share, hostd, spin_ns):
    """Submitters that registered as spinners and then wait for ring room poll nothing: they must
    not keep calls suppressed while every in-flight request's owner sleeps (that hung: 8 threads,
    queue of 8, 2 µs spins)."""
    (share / "f").write_bytes(b"x")
    m = GuestMachine("short", ram_name=ram_name(), ram_size=16 << 20)
    try:
        dev = m.add_device(hostd.socket_path, "vfs", queue_size=8)
        for budget in dev._spin:               # short spins that stay short (no adapting to 0)
            budget.ns = budget.max_ns = spin_ns
        gos = m.mount("vfs").os
        errors = []

        def worker(t):
            try:
                for i in range(1500):
                    if i % 3 == 0:
                        pending = dev.submit(abi.Opcode.LOOKUP, abi.ROOT_ID, _lookup_args(b"f"),
                                             abi.EntryOut.SIZE)
                        assert pending.wait()[0] == 0
                    else:
                        assert gos.stat("f").st_size == 1
            except Exception as exc:
                errors.append(exc)

        threads = run_threads(worker, 8, 20)
        assert not any(t.is_alive() for t in threads), "a waiter was stranded"
        assert not errors
        assert dev.request_queues[0].full_waits > 0
    finally:
        m.close()


def _used_but_not_reaped(dev, q, name: bytes):
    """A LOOKUP the host has answered, its used entry not yet reaped (calls suppressed)."""
    with q.lock:
        q.suppress_calls()
    pending = dev.submit(abi.Opcode.LOOKUP, abi.ROOT_ID, _lookup_args(name), abi.EntryOut.SIZE)
    deadline = time.monotonic() + 10
    while not q.has_used():                  # the host answers in microseconds
        assert time.monotonic() < deadline, "the host never answered"
    return pending


def test_a_used_entry_after_the_queue_broke_is_dropped(share, hostd, machine):
    """The host reports a queue broken (vring error fd) after it used some of its chains: those
    requests fail with EIO with the rest, and their late used entries complete nothing twice
    (that killed the completion thread: a lock released twice)."""
    (share / "f").write_bytes(b"x")
    dev = machine.add_device(hostd.socket_path, "vfs")
    gos = machine.mount("vfs").os
    q = dev.request_queues[0]
    pending = _used_but_not_reaped(dev, q, b"f")
    dev._fail_queue(q, errno.EIO)                 # what the completion thread does on the err fd
    with q.lock:
        assert q.reap(dev._complete) == 0          # the late entry: dropped
    with pytest.raises(OSError) as ei:
        pending.wait()
    assert ei.value.errno == errno.EIO
    with pytest.raises(OSError) as ei:
        gos.stat("f")
    assert ei.value.errno == errno.EIO
    assert dev._completer.is_alive()


@pytest.mark.parametrize("garbage", ["unknown head", "index jump"])
def test_a_host_that_breaks_the_used_ring_fails_the_queue_with_eio(share, hostd, machine, caplog,
                                                                   garbage):
    (share / "f").write_bytes(b"x")
    dev = machine.add_device(hostd.socket_path, "vfs")
    gos = machine.mount("vfs").os
    q = dev.request_queues[0]
    pending = _used_but_not_reaped(dev, q, b"f")
    with q.lock:                                  # the host's last used entry, rewritten
        slot = 4 + 8 * (q.last_used % q.size)
        if garbage == "unknown head":
            q.used[slot:slot + 4] = (q.size + 3).to_bytes(4, "little")
        else:
            q.used[2:4] = ((q.last_used + q.size + 1) & 0xFFFF).to_bytes(2, "little")
    with pytest.raises(OSError) as ei:
        pending.wait()                            # reaps, finds the garbage
    assert ei.value.errno == errno.EIO
    assert "failing its requests with EIO" in caplog.text
    with pytest.raises(OSError) as ei:
        gos.stat("f")
    assert ei.value.errno == errno.EIO
    assert dev._completer.is_alive()


# ---------------------------------------------------------------------- a backend that lies

def _recv_message(s):
    """One vhost-user message off ``s`` (header, payload, fds), or None at EOF."""
    head, fds = b"", []
    while len(head) < 12:
        data, anc, _flags, _ = s.recvmsg(12 - len(head), socket.CMSG_LEN(8 * 4))
        if not data:
            return None
        head += data
        fds += [fd for _, _, cdata in anc for fd in struct.unpack(f"{len(cdata) // 4}i", cdata)]
    body = b""
    while len(body) < struct.unpack_from("<I", head, 8)[0]:
        chunk = s.recv(struct.unpack_from("<I", head, 8)[0] - len(body))
        if not chunk:
            return None
        body += chunk
    return head, body, fds


def _relay(src, dst, plan):
    """Carry messages from ``src`` to ``dst``, the n-th changed as ``plan[n]`` says (cycled)."""
    n = 0
    try:
        while (msg := _recv_message(src)) is not None:
            head, body, fds = msg
            how = plan[n % len(plan)] if plan else "pass"
            n += 1
            if how == "hangup":
                break
            if how == "flip" and body:
                body = bytes([body[0] ^ 0xFF]) + body[1:]
            elif how in ("cut", "grow"):
                body = body[:len(body) // 2] if how == "cut" else body + b"\xa5" * 8
                head = head[:8] + struct.pack("<I", len(body))
            elif how == "request":
                head = struct.pack("<I", struct.unpack_from("<I", head)[0] ^ 1) + head[4:]
            elif how == "flags":
                head = head[:4] + struct.pack("<I", 0x45) + head[8:]
            elif how == "stall":                      # a header that promises more than comes
                head = head[:8] + struct.pack("<I", len(body) + 64)
            socket.send_fds(dst, [head + body], fds) if fds else dst.sendall(head + body)
            for fd in fds:
                os.close(fd)
    except OSError:
        pass
    finally:
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


@settings(max_examples=25, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(plan=st.lists(st.sampled_from(["pass", "pass", "pass", "hangup", "flip", "cut", "grow",
                                      "request", "flags"]), max_size=12),
       stall=st.booleans())
def test_a_backend_that_lies_fails_the_device_with_oserror(hostd, share, tmp_path_factory, plan,
                                                         stall, monkeypatch):
    """The host's replies pass through a relay that breaks some of them (hangs up, flips, cuts
    or lengthens a payload, changes the request code or the flags, or promises bytes that never
    come): plugging the device either works or fails with one OSError — never another exception,
    never a hang — and the machine closes cleanly."""
    from vfscluster.guest import devsetup
    monkeypatch.setattr(devsetup, "REPLY_TIMEOUT", 0.5)
    if stall:
        plan = [*plan, "stall"]
    path = str(tmp_path_factory.mktemp("relay") / "relay.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(1)
    relays = []

    def accept():
        guest_side, _ = listener.accept()
        host_side = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        host_side.connect(hostd.socket_path)
        relays.extend(threading.Thread(target=_relay, args=a, daemon=True)
                      for a in ((guest_side, host_side, []), (host_side, guest_side, plan)))
        for t in relays:
            t.start()
    acceptor = threading.Thread(target=accept, daemon=True)
    acceptor.start()
    m = GuestMachine("lied-to", ram_name=ram_name(), ram_size=16 << 20)
    try:
        try:
            m.add_device(path, "vfs")
            (share / "f").write_bytes(b"x")
            assert m.mount("vfs").os.listdir("/") == ["f"]
        except OSError:
            pass
    finally:
        m.close()
        listener.close()
        acceptor.join(10)
        for t in relays:
            t.join(10)
            assert not t.is_alive()
