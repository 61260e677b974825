"""The guest's virtio-fs device against a real vfs-hostd process."""

import errno
import os
import signal
import struct
import threading
import time

import pytest

from vfscluster.fuse import abi
from vfscluster.guest.device import DeviceConfig
from vfscluster.guest.machine import GuestMachine

from hostproc import HostProcess, ram_name


@pytest.fixture
def host(share):
    h = HostProcess(share)
    yield h
    h.stop()


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


def test_duplicate_tag_and_unknown_tag(host, machine):
    machine.add_device(host.socket_path, "share")
    with pytest.raises(OSError) as ei:
        machine.add_device(host.socket_path, "share")
    assert ei.value.errno == errno.EEXIST and "share" in str(ei.value)
    with pytest.raises(OSError) as ei:
        machine.mount("nosuchtag")
    assert ei.value.errno == errno.EINVAL and "nosuchtag" in str(ei.value)
    m = machine.mount("share")
    assert m.os.listdir("/") == []


def run_threads(worker, n: int) -> None:
    threads = [threading.Thread(target=worker, args=(t,)) for t in range(n)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(60)


def _lookup_args(name: bytes):
    return [name + b"\0"]


def test_queue_of_8_with_64_in_flight_from_8_threads(share, host):
    """A full ring makes submitters wait for used buffers; every reply is the right one."""
    for t in range(8):
        for k in range(8):
            (share / f"f{t}-{k}").write_bytes(b"x" * (t * 8 + k))
    m = GuestMachine("q8", ram_name=ram_name(), ram_size=16 << 20)
    try:
        dev = m.add_device(host.socket_path, "vfs", queue_size=8)
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
        assert dev.queues[1].full_waits > 0
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


def test_four_request_queues_eight_threads(share, host):
    """Threads are spread over the request queues (affinity); the host serves them all."""
    for i in range(8):
        (share / f"t{i}").write_bytes(b"y" * i)
    m = GuestMachine("mq", ram_name=ram_name(), ram_size=16 << 20)
    try:
        dev = m.add_device(host.socket_path, "vfs", num_request_queues=4, queue_size=16)
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
        used = [q.index for q in dev.queues[1:] if q.avail_idx > 0]
        assert used == [1, 2, 3, 4]          # every request queue carried requests
    finally:
        m.close()
