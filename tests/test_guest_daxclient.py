"""vfscluster.guest.daxclient: reads, writes and mmap through a real DAX window, with a fake host that
does the host's job in-process — :class:`~vfscluster.host.dax.HostDax` turns each SETUPMAPPING /
REMOVEMAPPING into SHMEM_MAP / SHMEM_UNMAP requests with real file descriptors, delivered to
``GuestDax.shmem_handler`` before the "reply", as the device's back-end channel would.

What could SIGBUS on a regression (truncation) runs in a child process.  Threads synchronise with
events, never with sleeps."""

from __future__ import annotations

import errno
import os
import random
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from vfscluster.fuse.abi import SetupmappingFlags
from vfscluster.guest.dax import PAGE, DaxWindow
from vfscluster.guest.daxclient import NO_FH, GuestDax
from vfscluster.host.dax import DaxRegistry
from vfscluster.vhost_user import BackendReq
from threads import run_threads

pytestmark = pytest.mark.timeout(60)

ROOT = Path(__file__).resolve().parent.parent
MiB = 1 << 20
R = 2 * MiB
WRITE = int(SetupmappingFlags.WRITE)


class FakeHost:
    """The host server's DAX part for several guests (sessions) over real files."""

    def __init__(self, window_size: int) -> None:
        self.registry = DaxRegistry(window_size)
        self.files: dict[int, int] = {}                # nodeid -> O_RDWR fd
        self.guests: dict[int, GuestDax] = {}
        self.setups: list[tuple] = []                  # (sid, nodeid, foffset, length, flags, moffset)
        self.removes: list[tuple[int, list]] = []      # (sid, entries)
        self.violations: list[str] = []
        self.fail_setup: OSError | None = None        # refused before mapping anything
        self.fail_after: OSError | None = None        # refused after mapping (a lost reply)
        self.lock = threading.Lock()

    def add_file(self, nodeid: int, path: Path) -> None:
        self.files[nodeid] = os.open(path, os.O_RDWR)

    def key(self, nodeid: int):
        st = os.fstat(self.files[nodeid])
        return (st.st_dev, st.st_ino)

    def guest(self, sid: int, window: DaxWindow, **kw) -> GuestDax:
        g = GuestDax(window, lambda *a: self.setup(sid, *a), lambda e: self.remove(sid, e), **kw)
        self.guests[sid] = g
        return g

    def setup(self, sid, nodeid, fh, foffset, length, flags, moffset) -> None:
        with self.lock:
            self.setups.append((sid, nodeid, foffset, length, flags, moffset))
        if self.fail_setup is not None:
            raise self.fail_setup
        hd = self.registry.session(sid)
        key = self.key(nodeid)
        with self.registry.inode_lock(key):
            for req in hd.setup(self.files[nodeid], None, key, foffset, length, flags, moffset):
                assert self.guests[sid].shmem_handler(BackendReq.SHMEM_MAP, req.msg, [req.fd]) == 0
        if self.fail_after is not None:
            raise self.fail_after

    def remove(self, sid, entries) -> None:
        g = self.guests[sid]
        for moffset, _ in entries:                     # reclaim must never remove a range in use
            if g.ranges.pins(moffset // R):
                self.violations.append(f"REMOVEMAPPING of pinned range {moffset:#x}")
        with self.lock:
            self.removes.append((sid, list(entries)))
        for u in self.registry.session(sid).remove(entries):
            g.shmem_handler(BackendReq.SHMEM_UNMAP, u, [])

    def truncate(self, nodeid: int, size: int) -> None:
        """What the host does for SETATTR size: revoke every guest's pages past ``size``, then truncate."""
        key = self.key(nodeid)
        with self.registry.inode_lock(key):
            for sid, reqs in self.registry.plan_shrink(key, size).items():
                for req in reqs:
                    assert self.guests[sid].shmem_handler(BackendReq.SHMEM_MAP, req.msg, [req.fd]) == 0
            os.ftruncate(self.files[nodeid], size)

    def close(self) -> None:
        for fd in self.files.values():
            os.close(fd)


def random_file(path: Path, size: int, seed: int = 1) -> bytes:
    data = random.Random(seed).randbytes(size)
    path.write_bytes(data)
    return data


@pytest.fixture
def host():
    h = FakeHost(16 * MiB)
    yield h
    h.close()


def setup_count(host, sid=1):
    return sum(1 for s in host.setups if s[0] == sid)


# ------------------------------------------------------------------------------------ read / write

def test_reads_equal_pread_and_need_no_request_once_mapped(tmp_path, host):
    data = random_file(tmp_path / "f", 5 * MiB + 123)
    host.add_file(7, tmp_path / "f")
    with DaxWindow(16 * MiB) as w:
        g = host.guest(1, w)
        size = len(data)
        cases = [(0, 10), (R - 5, 10), (0, size), (3 * MiB, 4 * MiB), (size - 7, 100), (size, 10), (size + 5, 1),
                 (4 * MiB + 1, 0)]
        for off, n in cases:
            assert g.read(7, NO_FH, off, n, size) == data[off:off + n], (off, n)
        assert setup_count(host) == 3                          # one SETUPMAPPING per 2 MiB chunk
        assert [s[2:] for s in host.setups] == [(i * R, R, int(SetupmappingFlags.READ), s[5])
                                                for i, s in enumerate(sorted(host.setups, key=lambda s: s[2]))]
        before = len(host.setups)
        for off, n in cases:
            assert g.read(7, NO_FH, off, n, size) == data[off:off + n]
        assert len(host.setups) == before and g.stats["hits"] > 0
        assert [c.index for c in g.chunks(7)] == [0, 1, 2]
        assert g.chunks(7)[2].valid == 2 * MiB - (6 * MiB - ((size + PAGE - 1) // PAGE * PAGE))
        with pytest.raises(OSError):
            g.read(7, NO_FH, -1, 1, size)


def test_fast_reads_span_mapped_chunks_and_fall_back_otherwise(tmp_path, host):
    """read_fast copies a range over several mapped chunks with no pin and no request; a chunk not
    mapped (or detached, or beyond its file-backed part) sends it back to read()."""
    data = random_file(tmp_path / "f", 5 * MiB + 123)
    host.add_file(7, tmp_path / "f")
    size = len(data)
    with DaxWindow(16 * MiB) as w:
        g = host.guest(1, w)
        assert g.read(7, NO_FH, 0, R, size) == data[:R]                      # chunk 0 only
        assert g.read_fast(7, R - 10, 20, size) is None                        # chunk 1 not mapped
        assert g.read(7, NO_FH, R, size - R, size) == data[R:]               # chunks 1 and 2
        before = len(host.setups)
        pins = [g.ranges.pins(c.slot) for c in g.chunks(7)]
        cases = [(R - 10, 20), (R - 32 * 1024, 64 * 1024), (R // 2, R), (0, size), (100, size - 200),
                 (R - 1, R + 2)]
        for off, n in cases:
            assert g.read_fast(7, off, n, size) == data[off:off + n], (off, n)
        assert len(host.setups) == before and [g.ranges.pins(c.slot) for c in g.chunks(7)] == pins
        backed = 2 * R + g.chunks(7)[2].valid                                  # (page-rounded)
        assert g.read_fast(7, R + 5, backed - R - 5, backed) is not None
        assert g.read_fast(7, R + 5, backed + 1 - R - 5, backed + 1) is None   # past what chunk 2 backs
        chunk1 = g.chunks(7)[1]
        chunk1.attached = False                                                # as _detach leaves it
        try:
            assert g.read_fast(7, R - 10, 20, size) is None
        finally:
            chunk1.attached = True


def test_writes_equal_pwrite_and_never_extend(tmp_path, host):
    path = tmp_path / "f"
    data = bytearray(random_file(path, 3 * MiB + 100))
    host.add_file(3, path)
    with DaxWindow(16 * MiB) as w:
        g = host.guest(1, w)
        size = len(data)
        rng = random.Random(5)
        for _ in range(40):
            off = rng.randrange(0, size)
            n = rng.randrange(1, MiB)
            chunk = rng.randbytes(n)
            done = g.write(3, NO_FH, off, chunk, size)
            assert done == min(n, size - off)                # a prefix, bounded by the size
            data[off:off + done] = chunk[:done]
        assert Path(path).read_bytes() == bytes(data)
        assert os.path.getsize(path) == size                 # never extended
        assert g.write(3, NO_FH, size, b"tail", size) == 0
        assert g.write(3, NO_FH, size - 2, b"tail", size) == 2
        # the caller completes an extending write with FUSE_WRITE (here: pwrite) of the rest
        os.pwrite(host.files[3], b"il", size)
        assert Path(path).read_bytes()[-4:] == b"tail"


def test_fast_writes_span_writable_chunks_and_fall_back_otherwise(tmp_path, host):
    """write_fast stores over several chunks mapped writable, with no request; a chunk mapped
    read-only (or not at all) stores nothing and sends it back to write()."""
    path = tmp_path / "f"
    data = bytearray(random_file(path, 7 * MiB))
    host.add_file(7, path)
    size = len(data)
    with DaxWindow(16 * MiB) as w:
        g = host.guest(1, w)
        assert g.read(7, NO_FH, 0, size, size) == data                         # all mapped read-only
        blob = random.Random(3).randbytes(R + 64 * 1024)
        assert not g.write_fast(7, R - 32 * 1024, memoryview(blob), size)       # read-only: nothing
        assert g.read(7, NO_FH, 0, size, size) == data
        assert g.write(7, NO_FH, 0, bytes(data), size) == size                 # upgrades every chunk
        before = len(host.setups)
        for off in (R - 32 * 1024, 2 * R - 1, R // 2):
            assert g.write_fast(7, off, memoryview(blob), size)
            data[off:off + len(blob)] = blob
        assert len(host.setups) == before
        assert g.read(7, NO_FH, 0, size, size) == data
        assert path.read_bytes() == data                                        # MAP_SHARED: the file


def test_readonly_mapping_is_upgraded_on_write(tmp_path, host):
    path = tmp_path / "f"
    random_file(path, 3 * MiB)
    host.add_file(1, path)
    with DaxWindow(16 * MiB) as w:
        g = host.guest(1, w)
        g.read(1, NO_FH, 0, 10, 3 * MiB)
        (c,) = g.chunks(1)
        assert not c.writable and not w.lookup(c.slot * R).writable
        assert g.write(1, NO_FH, 100, b"UPGRADED", 3 * MiB) == 8
        assert host.setups[-1][4] & WRITE and host.setups[-1][5] == c.slot * R   # same range, WRITE
        assert g.chunks(1) == [c] and c.writable and w.lookup(c.slot * R).writable
        assert g.stats["upgrades"] == 1
        n = len(host.setups)
        assert g.write(1, NO_FH, 200, b"again", 3 * MiB) == 5 and len(host.setups) == n
        g.read(1, NO_FH, 0, 10, 3 * MiB)
        assert c.writable                                       # never downgraded
        assert os.pread(host.files[1], 8, 100) == b"UPGRADED"


# ------------------------------------------------------------------------------------ reclaim

def test_window_smaller_than_the_working_set(tmp_path, host):
    data = random_file(tmp_path / "f", 24 * MiB, seed=3)      # 12 chunks through 5 ranges
    host.add_file(9, tmp_path / "f")
    with DaxWindow(10 * MiB) as w:
        g = host.guest(1, w, reclaim_chunk=3)
        rng = random.Random(9)
        for _ in range(3):
            for i in rng.sample(range(12), 12):
                off = i * R + rng.randrange(0, R - 4096)
                assert g.read(9, NO_FH, off, 4096, len(data)) == data[off:off + 4096]
        assert g.read(9, NO_FH, 0, len(data), len(data)) == data
        assert g.stats["reclaimed"] > 0 and g.mapped() <= 5
        sizes = [len(e) for _, e in host.removes]
        assert max(sizes) > 1 and max(sizes) <= 3                 # batches of reclaim_chunk
        assert host.violations == []
        assert len(w.mappings()) <= 2 * 5


def test_pinned_range_is_not_reclaimed_during_a_copy(tmp_path, host):
    data = random_file(tmp_path / "f", 16 * MiB, seed=4)
    host.add_file(2, tmp_path / "f")
    with DaxWindow(8 * MiB) as w:                              # 4 ranges
        g = host.guest(1, w)
        in_copy = threading.Event()
        go_on = threading.Event()
        real_view = w.view
        blocked = {}

        def slow_view(offset, length):                       # the first copy stops half-way
            if not blocked:
                blocked["slot"] = offset // R
                in_copy.set()
                assert go_on.wait(20)
            return real_view(offset, length)

        w.view = slow_view
        result = {}
        t = threading.Thread(target=lambda: result.setdefault("a", g.read(2, NO_FH, 100, 1000, len(data))))
        t.start()
        assert in_copy.wait(20)
        assert g.ranges.pins(blocked["slot"]) == 1
        for i in range(1, 8):                                    # churn through every other range
            off = i * R
            assert g.read(2, NO_FH, off, 4096, len(data)) == data[off:off + 4096]
        removed = [m // R for _, e in host.removes for m, _ in e]
        assert removed and blocked["slot"] not in removed
        go_on.set()
        t.join(20)
        assert result["a"] == data[100:1100]
        assert host.violations == []


def test_concurrent_readers_and_writers_in_a_tiny_window(tmp_path, host):
    path = tmp_path / "f"
    size = 20 * MiB
    random_file(path, size, seed=6)
    host.add_file(4, path)
    with DaxWindow(6 * MiB) as w:                              # 3 ranges, 4 threads
        g = host.guest(1, w)
        errors = []

        def worker(k):
            rng = random.Random(k)
            try:
                for _ in range(60):
                    i = rng.randrange(0, size // 4096)
                    off = i * 4096
                    stamp = k.to_bytes(2, "little") * 2048
                    if i % 4 == k:                               # each thread owns its pages
                        assert g.write(4, NO_FH, off, stamp, size) == 4096
                        assert g.read(4, NO_FH, off, 4096, size) == stamp
                    else:
                        assert len(g.read(4, NO_FH, off, 4096, size)) == 4096
            except BaseException as exc:                        # pragma: no cover - reported below
                errors.append(exc)

        run_threads(worker, 4, 50)
        assert errors == [] and host.violations == []
        assert all(g.ranges.pins(s) == 0 for s in g.ranges.busy())


def test_all_ranges_held_by_mmaps_a_read_gets_enomem_at_once_an_mmap_waits(tmp_path, host):
    """Every range pinned by a live mmap buffer: a read (which can go through FUSE_READ instead)
    gets ENOMEM without waiting; an mmap waits for an unpin, and gets ENOMEM after
    ``alloc_timeout``."""
    random_file(tmp_path / "f", 8 * MiB)
    data = Path(tmp_path / "f").read_bytes()
    host.add_file(5, tmp_path / "f")
    with DaxWindow(4 * MiB) as w:                              # 2 ranges
        g = host.guest(1, w, alloc_timeout=20)
        b0 = g.mmap(5, NO_FH, 0, PAGE, False)
        b1 = g.mmap(5, NO_FH, R, PAGE, False)
        with pytest.raises(OSError) as ei:
            g.read(5, NO_FH, 2 * R, 10, 8 * MiB)
        assert ei.value.errno == errno.ENOMEM and g.stats["waits"] == 0
        out = {}
        t = threading.Thread(target=lambda: out.setdefault("m", g.mmap(5, NO_FH, 2 * R, PAGE, False)))
        t.start()
        deadline = time.monotonic() + 20
        while g.stats["waits"] == 0 and time.monotonic() < deadline:
            pass                                                 # spin: the mmap must be waiting
        assert g.stats["waits"] >= 1 and "m" not in out
        b1.close()                                               # unpin: the waiter reclaims it
        t.join(20)
        b2 = out["m"]
        assert bytes(b2[:10]) == data[2 * R:2 * R + 10]
        g.alloc_timeout = 0.2
        with pytest.raises(OSError) as ei:
            g.mmap(5, NO_FH, 3 * R, PAGE, False)
        assert ei.value.errno == errno.ENOMEM
        b0.close()                                               # one range free again: reads map
        assert g.read(5, NO_FH, 3 * R, 10, 8 * MiB) == data[3 * R:3 * R + 10]
        b2.close()
        assert all(g.ranges.pins(s) == 0 for s in g.ranges.busy())


def test_failed_setup_leaks_nothing(tmp_path, host):
    random_file(tmp_path / "f", 4 * MiB)
    host.add_file(6, tmp_path / "f")
    with DaxWindow(8 * MiB) as w:
        g = host.guest(1, w)
        host.fail_setup = OSError(errno.EIO, "no")
        with pytest.raises(OSError) as ei:
            g.read(6, NO_FH, 0, 10, 4 * MiB)
        assert ei.value.errno == errno.EIO
        assert g.ranges.nfree == 4 and g.mapped() == 0 and g.chunks(6) == [] and w.mappings() == []
        host.fail_setup = None
        assert len(g.read(6, NO_FH, 0, 10, 4 * MiB)) == 10


def test_failed_upgrade_keeps_or_zeroes_the_chunk(tmp_path, host):
    data = random_file(tmp_path / "f", 3 * MiB)
    host.add_file(6, tmp_path / "f")
    with DaxWindow(8 * MiB) as w:
        g = host.guest(1, w)
        assert g.read(6, NO_FH, 0, 100, len(data)) == data[:100]
        (c,) = g.chunks(6)
        host.fail_setup = OSError(errno.EACCES, "read-only file")    # refused up front: nothing changed
        with pytest.raises(OSError) as ei:
            g.write(6, NO_FH, 0, b"x", len(data))
        assert ei.value.errno == errno.EACCES
        n = len(host.setups)
        assert g.read(6, NO_FH, 0, 100, len(data)) == data[:100] and len(host.setups) == n
        assert c.valid == R and not w.lookup(c.slot * R).zeroed and not c.writable
        host.fail_setup, host.fail_after = None, OSError(errno.EIO, "reply lost")
        with pytest.raises(OSError):
            g.write(6, NO_FH, 0, b"x", len(data))
        assert c.valid == 0 and all(m.zeroed for m in w.mappings())   # half-known state: zeros
        host.fail_after = None
        assert g.read(6, NO_FH, 0, 100, len(data)) == data[:100]         # mapped again on next use
        assert g.write(6, NO_FH, 0, b"y", len(data)) == 1


# ------------------------------------------------------------------------------------ inode events

def test_invalidate_and_forget_remove_unpinned_ranges(tmp_path, host):
    random_file(tmp_path / "f", 6 * MiB)
    host.add_file(8, tmp_path / "f")
    with DaxWindow(16 * MiB) as w:
        g = host.guest(1, w)
        g.read(8, NO_FH, 0, 6 * MiB, 6 * MiB)
        buf = g.mmap(8, NO_FH, R, PAGE, False)
        assert g.invalidate(8) == 2
        assert sorted(e for _, es in host.removes for e in es) == sorted(
            (c, R) for c in [s[5] for s in host.setups if s[2] != R])
        assert [c.index for c in g.chunks(8)] == [1]             # pinned by the buffer
        assert g.forget(8) == 0 and g.chunks(8) != []
        buf.close()
        assert g.forget(8) == 1 and g.chunks(8) == [] and g.mapped() == 0
        assert g.ranges.nfree == 8 and host.registry.session(1).mappings() == []
        assert g.invalidate(12345) == 0 and g.truncated(12345, 0) == 0


def test_a_collected_mmap_buffer_unpins_without_taking_a_lock_in_the_collecting_thread(tmp_path, host):
    """The collector may run a buffer's finalizer inside the allocator, in a thread that holds
    the allocator's lock (it deadlocked there): the finalizer only queues the unpin."""
    import threading
    random_file(tmp_path / "f", 2 * MiB)
    host.add_file(8, tmp_path / "f")
    with DaxWindow(16 * MiB) as w:
        g = host.guest(1, w)
        buf = g.mmap(8, NO_FH, 0, PAGE, False)
        (c,) = g.chunks(8)
        assert g.ranges.pins(c.slot) == 1
        with g.ranges._cond:                      # as inside RangeAllocator.reclaim_candidates
            t = threading.Thread(target=buf._dax_release)   # what the collector calls
            t.start()
            t.join(5)
            assert not t.is_alive(), "the finalizer waits for a lock its thread holds"
        assert g.slots.flush_later()
        assert g.ranges.pins(c.slot) == 0
        buf.close()                               # after the finalizer ran: nothing twice
        assert g.ranges.pins(c.slot) == 0
        buf2 = g.mmap(8, NO_FH, 0, PAGE, False)
        assert g.ranges.pins(g.chunks(8)[0].slot) == 1
        buf2.close()                              # close unpins at once, itself
        assert g.ranges.pins(g.chunks(8)[0].slot) == 0


def test_a_mapping_larger_than_the_window_is_enomem_without_waiting(tmp_path, host):
    random_file(tmp_path / "f", 12 * MiB)
    host.add_file(8, tmp_path / "f")
    with DaxWindow(8 * MiB) as w:
        g = host.guest(1, w)

        def no_wait():
            raise AssertionError("the mapping waited for ranges that can never all be free")
        g.slots.on_wait = no_wait
        with pytest.raises(OSError) as ei:
            g.mmap(8, NO_FH, 0, 10 * MiB, False)   # 5 ranges, the window has 4
        assert ei.value.errno == errno.ENOMEM and g.ranges.nfree == 4
        with pytest.raises(OSError):
            g.mmap(8, NO_FH, R - PAGE, 3 * R + 2 * PAGE, False)   # 5 ranges, unaligned to them
        with g.mmap(8, NO_FH, 0, 4 * R, False) as buf:           # exactly the window
            assert len(buf) == 4 * R


def test_host_unmap_of_a_live_chunk_zeroes_it_and_the_next_read_maps_again(tmp_path, host):
    data = random_file(tmp_path / "f", 3 * MiB)
    host.add_file(1, tmp_path / "f")
    with DaxWindow(16 * MiB) as w:
        g = host.guest(1, w)
        assert g.read(1, NO_FH, 0, 100, len(data)) == data[:100]
        for u in host.registry.drop_session(1):                 # e.g. the host reset the session
            g.shmem_handler(BackendReq.SHMEM_UNMAP, u, [])
        (c,) = g.chunks(1)
        assert c.valid == 0 and all(m.zeroed for m in w.mappings())   # zeros, never PROT_NONE
        n = len(host.setups)
        assert g.read(1, NO_FH, 0, 100, len(data)) == data[:100]
        assert len(host.setups) == n + 1 and g.stats["refreshes"] == 1


def test_shmem_handler_refuses_ranges_outside_the_window(host):
    from vfscluster.vhost_user import ShmemUnmap
    with DaxWindow(4 * MiB) as w:
        g = host.guest(1, w)
        for bad in (ShmemUnmap(0, 0, 4 * MiB, PAGE, 0), ShmemUnmap(0, 0, 100, PAGE, 0)):
            with pytest.raises(OSError) as ei:
                g.shmem_handler(BackendReq.SHMEM_UNMAP, bad, [])
            assert ei.value.errno == errno.EINVAL


# ------------------------------------------------------------------------------------ mmap

def test_mmap_buffer_is_shared_with_other_guests_and_the_host(tmp_path):
    path = tmp_path / "f"
    data = random_file(path, 5 * MiB)
    host = FakeHost(16 * MiB)
    host.add_file(1, path)
    try:
        with DaxWindow(16 * MiB) as wa, DaxWindow(16 * MiB) as wb:
            a, b = host.guest(1, wa), host.guest(2, wb)
            buf = a.mmap(1, NO_FH, R - PAGE, 2 * PAGE, True)     # spans two chunks
            assert len(buf) == 2 * PAGE and buf[:] == data[R - PAGE:R + PAGE]
            assert [c.index for c in a.chunks(1)] == [0, 1] and all(c.writable for c in a.chunks(1))
            assert all(a.ranges.pins(c.slot) == 1 for c in a.chunks(1))
            b.write(1, NO_FH, R - 10, b"from guest B", 5 * MiB)  # another guest's window
            assert buf[PAGE - 10:PAGE + 2] == b"from guest B"
            os.pwrite(host.files[1], b"host", R + 100)            # the host's page cache
            assert buf[PAGE + 100:PAGE + 104] == b"host"
            buf[0:5] = b"STORE"                                   # and back
            assert b.read(1, NO_FH, R - PAGE, 5, 5 * MiB) == b"STORE"
            assert os.pread(host.files[1], 5, R - PAGE) == b"STORE"
            ro = a.mmap(1, NO_FH, 0, 100, False)
            with pytest.raises(TypeError):
                ro[0:1] = b"x"
            with pytest.raises(ValueError):
                a.mmap(1, NO_FH, 4 * MiB, 2 * MiB, False)         # past the end of the file
            with pytest.raises(OSError):
                a.mmap(1, NO_FH, 100, PAGE, False)                # unaligned offset
            buf.close()
            ro.close()
            assert all(a.ranges.pins(c.slot) == 0 for c in a.chunks(1))
            buf.close()                                           # idempotent
    finally:
        host.close()


def test_mmap_buffer_dropped_without_close_unpins(tmp_path, host):
    random_file(tmp_path / "f", R)
    host.add_file(1, tmp_path / "f")
    with DaxWindow(8 * MiB) as w:
        g = host.guest(1, w)
        buf = g.mmap(1, NO_FH, 0, PAGE, False)
        slot = g.chunks(1)[0].slot
        assert g.ranges.pins(slot) == 1
        del buf
        import gc
        gc.collect()
        assert g.ranges.pins(slot) == 0


# ------------------------------------------------------------------------------------ truncation

TRUNCATE_CHILD = """
import os, sys
from pathlib import Path
from vfscluster.guest.dax import PAGE, DaxWindow
from vfscluster.guest.daxclient import NO_FH
from test_guest_daxclient import FakeHost, random_file
MiB = 1 << 20
path = Path(sys.argv[1])
data = random_file(path, 5 * MiB)
host = FakeHost(16 * MiB)
host.add_file(1, path)
with DaxWindow(16 * MiB) as wa, DaxWindow(16 * MiB) as wb:
    a, b = host.guest(1, wa), host.guest(2, wb)
    stale = len(data)
    assert a.read(1, NO_FH, 0, stale, stale) == data
    buf = a.mmap(1, NO_FH, 2 * MiB, 2 * MiB, False)
    b.read(1, NO_FH, 0, 10, stale)
    new = PAGE + 5
    host.truncate(1, new)                                    # B's SETATTR: every guest revoked first
    got = a.read(1, NO_FH, 0, stale, stale)                  # A still believes the old size
    assert got[:new] == data[:new], "kept"
    assert got[2 * PAGE:] == bytes(stale - 2 * PAGE), "zeros"
    assert buf[:] == bytes(2 * MiB), "buffer zeros"
    assert a.write(1, NO_FH, 3 * MiB, b"lost?", stale) == 0  # not stored into zeros: FUSE_WRITE it
    assert a.write(1, NO_FH, 10, b"kept", stale) == 4
    assert os.pread(host.files[1], 4, 10) == b"kept"
    os.pwrite(host.files[1], b"grown", 3 * MiB)             # the file grows again
    assert a.read(1, NO_FH, 3 * MiB, 5, 3 * MiB + 5) == b"grown"
    assert a.read(1, NO_FH, 3 * MiB - 3, 8, 3 * MiB + 5) == bytes(3) + b"grown"
    n = a.truncated(1, new)
    assert n >= 0 and all(c.valid <= 2 * PAGE for c in a.chunks(1) if c.index == 0)
    buf.close()
host.close()
print("OK")
"""


def test_truncate_then_read_gives_zeros_not_sigbus(tmp_path):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "tests"),
                                                       os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(TRUNCATE_CHILD), str(tmp_path / "f")],
                          capture_output=True, text=True, timeout=50, env=env)
    assert proc.returncode == 0 and proc.stdout.strip() == "OK", (proc.returncode, proc.stdout, proc.stderr)
