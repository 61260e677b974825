"""DAX end to end (issue 5): real vfs-hostd and guest processes with ``dax=always``.

Guest A's stores through its mapping are read by guest B through B's own mapping with no FUSE
request in between (B's ``client.requests`` does not move); fetch-adds on the mapped memory from
several guests add up exactly; a window smaller than the working set (reclaim) still gives the right
data; a shrinking truncate from a third guest leaves the others alive and reading zeros; read-only
mappings refuse writes with Python errors; the host's files equal what the guests wrote.  Functions
run inside the guests with ``guest.run``; a mapping kept between calls lives on the GuestOS object.
"""

from __future__ import annotations

import concurrent.futures as cf
import errno
import mmap
import os
import random

import pytest

from vfscluster import Cluster, Topology

pytestmark = pytest.mark.timeout(120)
PAGE = mmap.PAGESIZE


# ----------------------------------------------------------------------------- in-guest helpers

def g_map(gos, name, length, writable=True, offset=0):
    """Open and map ``name``; kept on the GuestOS object.  Returns the requests sent so far."""
    fd = gos.open(name, os.O_RDWR if writable else os.O_RDONLY)
    prot = mmap.PROT_READ | (mmap.PROT_WRITE if writable else 0)
    gos._test_maps = getattr(gos, "_test_maps", []) + [(fd, gos.mmap(fd, length, offset, prot))]
    return gos.client.requests


def g_store(gos, index, offset, data):
    """Store through mapping ``index``; returns the requests this took (0 expected)."""
    before = gos.client.requests
    gos._test_maps[index][1][offset:offset + len(data)] = data
    return gos.client.requests - before


def g_load(gos, index, offset, n):
    before = gos.client.requests
    data = bytes(gos._test_maps[index][1][offset:offset + n])
    return data, gos.client.requests - before


def g_unmap_all(gos):
    for fd, buf in getattr(gos, "_test_maps", []):
        buf.close()
        gos.close(fd)
    gos._test_maps = []


def g_pread(gos, name, n, offset):
    fd = gos.open(name, os.O_RDONLY)
    try:
        return gos.pread(fd, n, offset)
    finally:
        gos.close(fd)


def g_pwrite(gos, name, data, offset):
    fd = gos.open(name, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        return gos.pwrite(fd, data, offset)
    finally:
        gos.close(fd)


def g_fetch_add(gos, name, index, count):
    import atomics
    fd = gos.open(name, os.O_RDWR)
    try:
        with gos.mmap(fd, PAGE, 0) as buf:
            view = memoryview(buf)
            mine = 8 * (1 + index)
            with atomics.atomicview(buffer=view[0:8], atype=atomics.UINT) as shared, \
                    atomics.atomicview(buffer=view[mine:mine + 8], atype=atomics.UINT) as own:
                for _ in range(count):
                    shared.inc()
                    own.inc()
            view.release()
    finally:
        gos.close(fd)


def g_errors(gos, name):
    """What the read-only and refused cases raise, as (type name, errno) pairs."""
    out = {}
    fd = gos.open(name, os.O_RDONLY)
    try:
        try:
            gos.mmap(fd, PAGE, 0, mmap.PROT_READ | mmap.PROT_WRITE)
        except OSError as exc:
            out["rw map of O_RDONLY"] = exc.errno
        with gos.mmap(fd, PAGE, 0, mmap.PROT_READ) as buf:
            for what, fn in (("item", lambda: buf.__setitem__(0, 1)),
                             ("slice", lambda: buf.__setitem__(slice(0, 2), b"xx")),
                             ("memoryview", lambda: memoryview(buf).__setitem__(0, 1))):
                try:
                    fn()
                    out[what] = None
                except TypeError:
                    out[what] = "TypeError"
            out["still reads"] = bytes(buf[0:4])
        for what, args in (("unaligned offset", (fd, PAGE, 1)), ("zero length", (fd, 0, 0))):
            try:
                gos.mmap(*args)
            except OSError as exc:
                out[what] = exc.errno
        try:
            gos.mmap(fd, 1 << 30, 0, mmap.PROT_READ)
        except ValueError:
            out["past EOF"] = "ValueError"
    finally:
        gos.close(fd)
    return out


def g_stats(gos):
    return dict(gos.client.dax.gdax.stats) if gos.client.dax is not None else None


# ----------------------------------------------------------------------------- tests

@pytest.fixture
def cluster(share):
    (share / "f").write_bytes(b"a" * 3 * PAGE)
    with Cluster.start(Topology(share, guests=3, dax="always", window_size=16 << 20)) as c:
        yield c


def test_store_in_one_guest_is_read_by_another_without_a_request(cluster):
    a, b, _ = cluster.guests
    a.run(g_map, "f", 2 * PAGE)
    b.run(g_map, "f", 2 * PAGE)
    assert a.run(g_store, 0, 10, b"hello") == 0
    data, asked = b.run(g_load, 0, 8, 9)
    assert data == b"aahelloaa" and asked == 0
    assert b.run(g_store, 0, PAGE + 1, b"back") == 0
    assert a.run(g_load, 0, PAGE, 6) == (b"abacka", 0)
    # DAX reads go through the window too: mapped already, so no request either
    assert b.run(g_pread, "f", 5, 10) == b"hello"
    a.run(g_unmap_all)
    b.run(g_unmap_all)


def test_fetch_adds_from_every_guest_add_up(share):
    (share / "c").write_bytes(bytes(PAGE))
    count = 5000
    with Cluster.start(Topology(share, guests=3, dax="always", window_size=8 << 20)) as c:
        with cf.ThreadPoolExecutor(3) as ex:
            list(ex.map(lambda ig: ig[1].run(g_fetch_add, "c", ig[0], count), enumerate(c.guests)))
        seen = c.guests[0].run(g_pread, "c", 32, 0)
    vals = [int.from_bytes(seen[i:i + 8], "little") for i in range(0, 32, 8)]
    assert vals == [3 * count, count, count, count]
    on_host = (share / "c").read_bytes()[:32]
    assert on_host == seen


def test_window_smaller_than_the_working_set(share):
    size = 24 << 20                         # 12 chunks through a window of 2 ranges (4 MiB)
    (share / "big").write_bytes(bytes(size))
    r = random.Random(1)
    writes = [(r.randrange(0, size - 8192), r.randbytes(r.randrange(1, 8192))) for _ in range(60)]
    expect = bytearray(size)
    for off, data in writes:
        expect[off:off + len(data)] = data
    with Cluster.start(Topology(share, guests=2, dax="always", window_size=4 << 20)) as c:
        a, b = c.guests
        for off, data in writes:
            assert a.run(g_pwrite, "big", data, off) == len(data)
        for off, _ in writes[::5]:
            assert b.run(g_pread, "big", 8192, off) == bytes(expect[off:off + 8192])
        got = b"".join(b.run(g_pread, "big", 1 << 20, off) for off in range(0, size, 1 << 20))
        assert got == bytes(expect)
        stats = a.run(g_stats)
        assert stats["reclaimed"] > 0 or stats["removed"] > 0
    assert (share / "big").read_bytes() == bytes(expect)


def test_truncate_under_a_mapping_leaves_zeros_not_sigbus(cluster, share):
    a, b, c = cluster.guests
    a.run(g_map, "f", 3 * PAGE, False)
    b.run(g_map, "f", 3 * PAGE, True)
    assert b.run(g_load, 0, 2 * PAGE, 4)[0] == b"aaaa"
    c.run(lambda gos: gos.truncate("f", 10))
    assert (share / "f").stat().st_size == 10
    # past the new end (page-rounded) both see zeros, through the mapping and through read
    assert a.run(g_load, 0, 2 * PAGE, 4) == (b"\0\0\0\0", 0)
    assert b.run(g_load, 0, PAGE, 4) == (b"\0\0\0\0", 0)
    assert a.run(g_load, 0, 0, 10)[0] == b"a" * 10
    assert a.run(g_pread, "f", 100, 0) == b"a" * 10
    # both guests are alive and keep working
    assert b.run(g_pwrite, "f", b"zz", 2) == 2
    assert a.run(g_pread, "f", 4, 0) == b"aazz"
    a.run(g_unmap_all)
    b.run(g_unmap_all)


@pytest.mark.parametrize("grow", ["truncate", "write"])
def test_a_file_shrunk_and_grown_back_is_seen_again_through_live_mappings(cluster, share, grow):
    """As a MAP_SHARED mapping in Linux: after the shrink the pages past the end read zeros, and once
    the file grows back (a SETATTR size, or a WRITE past the end) the same live mappings show the
    file again — another guest's writes, and their own stores reach the file."""
    a, b, c = cluster.guests
    a.run(g_map, "f", 3 * PAGE, False)
    b.run(g_map, "f", 3 * PAGE, True)
    c.run(lambda gos: gos.truncate("f", 10))
    assert a.run(g_load, 0, 2 * PAGE, 4) == (b"\0\0\0\0", 0)
    if grow == "truncate":
        c.run(lambda gos: gos.truncate("f", 3 * PAGE))
    assert c.run(g_pwrite, "f", b"back", 2 * PAGE) == 4
    assert (share / "f").stat().st_size == 2 * PAGE + (PAGE if grow == "truncate" else 4)
    assert a.run(g_load, 0, 2 * PAGE, 4) == (b"back", 0)
    assert b.run(g_load, 0, 2 * PAGE, 4) == (b"back", 0)
    assert b.run(g_store, 0, 2 * PAGE, b"BACK") == 0
    assert a.run(g_load, 0, 2 * PAGE, 4) == (b"BACK", 0)
    a.run(g_unmap_all)
    b.run(g_unmap_all)
    assert (share / "f").read_bytes()[2 * PAGE:2 * PAGE + 4] == b"BACK"


def test_read_only_mappings_refuse_writes_cleanly(cluster):
    a = cluster.guests[0]
    out = a.run(g_errors, "f")
    assert out == {"rw map of O_RDONLY": errno.EACCES, "item": "TypeError", "slice": "TypeError",
                   "memoryview": "TypeError", "still reads": b"aaaa",
                   "unaligned offset": errno.EINVAL, "zero length": errno.EINVAL, "past EOF": "ValueError"}


MMAP_CASES = {"to the end": (4097, 0), "one past the end": (4098, 0), "the whole last page": (8192, 0),
              "past the end from page 1": (2, PAGE), "float offset": (1, 1.0), "offset 2**64": (1, 1 << 64)}


def g_mmap_arguments(gos, name):
    """Outcomes of GuestOS.mmap for MMAP_CASES on a 4097-byte file."""
    import mmap as _m
    fd = gos.open(name, os.O_RDWR)
    out = {}
    try:
        for what, (length, offset) in MMAP_CASES.items():
            try:
                with gos.mmap(fd, length, offset, _m.PROT_READ | _m.PROT_EXEC) as buf:
                    out[what] = len(buf)
            except (ValueError, TypeError, OverflowError) as exc:
                out[what] = type(exc).__name__
    finally:
        gos.close(fd)
    return out


def test_mmap_takes_its_arguments_as_mmap_mmap(cluster, share):
    """ValueError past the end of the file (not of its last page), TypeError, OverflowError; and
    PROT_EXEC is taken — each as mmap.mmap on the same file."""
    import mmap as _m
    (share / "odd").write_bytes(b"o" * 4097)
    got = cluster.guests[0].run(g_mmap_arguments, "odd")
    expected = {}
    with open(share / "odd", "rb") as f:
        for what, (length, offset) in MMAP_CASES.items():
            try:
                with _m.mmap(f.fileno(), length, _m.MAP_SHARED, _m.PROT_READ | _m.PROT_EXEC,
                             offset=offset) as m:
                    expected[what] = len(m)
            except (ValueError, TypeError, OverflowError) as exc:
                expected[what] = type(exc).__name__
    assert got == expected


def test_host_files_equal_what_guests_wrote(share):
    (share / "f").write_bytes(b"x" * 5000)
    with Cluster.start(Topology(share, guests=2, dax="always", window_size=8 << 20)) as c:
        a, b = c.guests
        assert a.run(g_pwrite, "f", b"A" * 100, 4950) == 100         # part in place, part extends
        assert b.run(g_pwrite, "new", b"B" * 70000, 3 << 20) == 70000  # a new file, sparse
        assert b.run(g_pwrite, "f", b"b", 0) == 1
        assert a.run(g_pread, "f", 3, 0) == b"bxx"
        assert a.run(g_pread, "new", 4, (3 << 20) + 69998) == b"BB"
    assert (share / "f").read_bytes() == b"b" + b"x" * 4949 + b"A" * 100
    data = (share / "new").read_bytes()
    assert len(data) == (3 << 20) + 70000 and data[3 << 20:] == b"B" * 70000 and not any(data[:3 << 20])


def test_mmap_needs_dax(share):
    (share / "f").write_bytes(b"x" * PAGE)
    with Cluster.start(Topology(share, guests=1)) as c:
        def try_map(gos):
            fd = gos.open("f", os.O_RDONLY)
            try:
                gos.mmap(fd, PAGE)
            except OSError as exc:
                return exc.errno
            finally:
                gos.close(fd)
        assert c.guests[0].run(try_map) == errno.ENODEV


def g_raw_setup(gos, name, moffset, length):
    """A SETUPMAPPING straight from the client (not through GuestDax): the host's answer."""
    from vfscluster.fuse.abi import SetupmappingFlags
    from vfscluster.guest.daxclient import NO_FH
    fd = gos.open(name, os.O_RDONLY)
    try:
        nodeid = gos._fds.peek(fd).nodeid
        try:
            gos.client.dax._setup(nodeid, NO_FH, 0, length, int(SetupmappingFlags.READ), moffset)
        except OSError as exc:
            return exc.errno
        return 0
    finally:
        gos.close(fd)


def test_window_size_and_maps_past_its_end(share):
    (share / "f").write_bytes(b"q" * PAGE)
    with Cluster.start(Topology(share, guests=1, dax="always", window_size=4 << 20)) as c:
        g = c.guests[0]
        assert g.run(lambda gos: gos.client.dax.window.size) == 4 << 20
        assert g.run(g_raw_setup, "f", 4 << 20, 2 << 20) == errno.EINVAL       # past the end
        assert g.run(g_raw_setup, "f", 3 << 20, 2 << 20) == errno.EINVAL       # straddles it
        assert g.run(g_raw_setup, "f", 2 << 20, 2 << 20) == 0                  # the last range
        assert g.run(g_pread, "f", 3, 0) == b"qqq"


def test_dax_and_fuse_guests_see_each_others_data(share):
    (share / "f").write_bytes(b"." * 10000)
    with Cluster.start(Topology(share, [{"name": "dax", "dax": "always"}, {"name": "fuse"}])) as c:
        dax, fuse = c.guests
        assert dax.run(g_pwrite, "f", b"from-dax", 100) == 8
        assert fuse.run(g_pread, "f", 8, 100) == b"from-dax"
        assert fuse.run(g_pwrite, "f", b"from-fuse", 200) == 9
        assert dax.run(g_pread, "f", 9, 200) == b"from-fuse"
        # the dax guest truncates by opening with O_TRUNC, then writes again
        def trunc_write(gos):
            fd = gos.open("f", os.O_RDWR | os.O_TRUNC)
            try:
                gos.write(fd, b"new")
                return gos.pread(fd, 10, 0)
            finally:
                gos.close(fd)
        assert dax.run(trunc_write) == b"new"
        assert fuse.run(g_pread, "f", 10, 0) == b"new"
    assert (share / "f").read_bytes() == b"new"


def test_kill_9_of_a_mapping_guest_does_not_hold_up_truncation(cluster, share):
    import signal
    a, b, c = cluster.guests
    a.run(g_map, "f", 3 * PAGE, True)
    b.run(g_map, "f", 3 * PAGE, False)
    a.kill(signal.SIGKILL)
    a.process.join(10)
    c.run(lambda gos: gos.truncate("f", 0))
    assert (share / "f").stat().st_size == 0
    assert b.run(g_load, 0, 0, 4) == (b"\0\0\0\0", 0)
    b.run(g_unmap_all)


def test_a_read_with_every_range_held_by_mmaps_goes_through_fuse_at_once(share):
    """Every range held by a live mapping: a read of another file does not wait for a program to
    close one (it used to, up to 30 s): it goes through FUSE_READ."""
    (share / "a").write_bytes(b"a" * (4 << 20))
    (share / "b").write_bytes(b"b" * PAGE)
    with Cluster.start(Topology(share, 1, cache="none", dax="always", window_size=4 << 20)) as c:
        g = c.guests[0]
        g.run(g_map, "a", 4 << 20, False)
        assert g.run(g_pread, "b", 10, 0) == b"b" * 10
        assert g.run(g_pwrite, "b", b"BB", 1) == 2
        assert g.run(g_pread, "b", 4, 0) == b"bBBb"
        assert g.run(lambda gos: gos.client.dax.gdax.stats["waits"]) == 0
        g.run(g_unmap_all)
        assert g.run(g_pread, "b", 4, 0) == b"bBBb"      # a range free again: through the window
        assert g.run(g_stats)["setups"] >= 3


def g_map_quiet(gos, name, length):
    """g_map, as an errno if it fails."""
    try:
        g_map(gos, name, length, False)
        return 0
    except OSError as exc:
        return exc.errno


def test_an_mmap_waiting_for_window_space_fails_when_the_host_dies(share):
    """Every range held by a live mapping: an mmap of another file waits for one (up to 30 s).
    The host's death ends that wait with ENOTCONN at once, as it ends every pending call."""
    import signal
    import threading
    import time
    (share / "a").write_bytes(b"a" * (4 << 20))
    (share / "b").write_bytes(b"b" * PAGE)
    with Cluster.start(Topology(share, 1, cache="none", dax="always", window_size=4 << 20)) as c:
        g = c.guests[0]
        g.run(g_map, "a", 4 << 20, False)
        got = []
        t = threading.Thread(target=lambda: got.append(g.run(g_map_quiet, "b", PAGE)))
        t.start()
        deadline = time.monotonic() + 30
        while g.run(lambda gos: gos.client.dax.gdax.stats["waits"]) == 0:    # the mmap waits
            assert time.monotonic() < deadline and t.is_alive()
        c.host.kill(signal.SIGKILL)
        t.join(10)                          # the wait alone would last 30 s
        assert not t.is_alive() and got == [errno.ENOTCONN]


def test_a_guest_stalled_past_the_ack_timeout_goes_on_through_fuse(cluster, share):
    """A guest stopped while another truncates a file it maps loses its back-end channel (the
    host waits ``ack_timeout`` for it, then goes on).  Resumed, it still reads and writes: its
    SETUPMAPPINGs are EOPNOTSUPP and its DAX falls back to FUSE_READ/FUSE_WRITE (every access
    that needed a new range was EIO)."""
    import signal
    a, _, c = cluster.guests
    a.run(g_map, "f", 3 * PAGE, False)
    a.kill(signal.SIGSTOP)
    try:
        c.run(lambda gos: gos.truncate("f", 0))              # waits for a's ack, then goes on
    finally:
        a.kill(signal.SIGCONT)
    a.run(g_unmap_all)
    (share / "f").write_bytes(b"z" * (3 << 20))
    assert a.run(g_pread, "f", 10, (2 << 20) + 5) == b"z" * 10           # a range never mapped


def g_fsync_map(gos, index):
    gos.fsync(gos._test_maps[index][0])


def test_versions_guests_see_dax_stores_after_the_writers_close_or_fsync(share):
    """DAX stores pass no host: the writer's FLUSH (close) and FSYNC of a file it maps writable
    count as the change, so a cache=always,versions=on guest drops its cached data then (it
    kept reading the old data for ever)."""
    (share / "f").write_bytes(b"t" * (2 * PAGE))
    topo = Topology(share, [{"name": "dax", "dax": "always", "window_size": 16 << 20},
                            {"name": "ver", "cache": "always", "versions": True}])
    with Cluster.start(topo) as c:
        dax, ver = c.guests
        assert ver.run(g_pread, "f", 4, 0) == b"tttt"
        dax.run(g_pwrite, "f", b"AAAA", 0)                  # inside the file: a window store
        assert dax.run(g_stats)["setups"] >= 1
        assert ver.run(g_pread, "f", 4, 0) == b"AAAA"
        dax.run(g_map, "f", 2 * PAGE, True)
        assert dax.run(g_store, 0, PAGE, b"BBBB") == 0
        dax.run(g_fsync_map, 0)
        assert ver.run(g_pread, "f", 4, PAGE) == b"BBBB"
        dax.run(g_unmap_all)


def test_an_unanswered_ack_is_bounded_and_closes_the_channel():
    """DaxService._send: a guest that never answers costs ``ack_timeout``, not a hang."""
    import socket
    import time
    from vfscluster.host.daxwire import DaxService
    from vfscluster.vhost_user import BackendChannel, BackendReq, ShmemUnmap
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    ch = BackendChannel(ours)
    try:
        svc = DaxService(None, 2 << 20, lambda sid: ch if sid == 1 else None, ack_timeout=0.2)
        t0 = time.monotonic()
        assert svc._send(1, BackendReq.SHMEM_UNMAP, ShmemUnmap(0, 0, 0, PAGE, 0)) == -1
        assert time.monotonic() - t0 < 5
        assert svc.stats["ack_failures"] == 1
        assert theirs.recv(4096)                      # the request did reach the peer
        assert theirs.recv(4096) == b""               # then the channel was shut down
        assert svc._send(2, BackendReq.SHMEM_UNMAP, ShmemUnmap(0, 0, 0, PAGE, 0)) == -1   # no channel
    finally:
        ch.close()
        theirs.close()


def _reader(gos, n):
    fd, buf = gos._test_maps.pop()          # mapped before the truncations start (g_map)
    bad = 0
    try:
        for i in range(n):
            d = gos.pread(fd, 65536, (i * 65536) % (3 << 20))
            bad += bool(set(d) - {ord("x"), 0})
            bad += buf[(i * 64) % PAGE] not in (ord("x"), 0)
    finally:
        buf.close()
        gos.close(fd)
    return bad


def _truncator(gos, n):
    for _ in range(n):
        gos.truncate("f", 0)
        fd = gos.open("f", os.O_RDWR)
        try:
            gos.pwrite(fd, b"x" * (3 << 20), 0)
        finally:
            gos.close(fd)
    return n


def test_truncations_racing_readers_and_mappings(share):
    """Readers (pread and a live mapping) in two guests while a third truncates and rewrites the
    file again and again: nobody dies, everybody reads the file's bytes or zeros."""
    (share / "f").write_bytes(b"x" * (3 << 20))
    with Cluster.start(Topology(share, guests=3, dax="always", window_size=8 << 20)) as c:
        a, b, t = c.guests
        a.run(g_map, "f", PAGE, False)
        b.run(g_map, "f", PAGE, False)
        with cf.ThreadPoolExecutor(3) as ex:
            futs = [ex.submit(a.run, _reader, 3000), ex.submit(b.run, _reader, 3000),
                    ex.submit(t.run, _truncator, 8)]
            assert [f.result(timeout=100) for f in futs] == [0, 0, 8]
    assert (share / "f").read_bytes() == b"x" * (3 << 20)


def test_dax_in_a_toml_guest_table(tmp_path):
    (tmp_path / "t.toml").write_text('share = "s"\n[[guests]]\ndax = "always"\nwindow_size = 67108864\n'
                                     '[[guests]]\n')
    t = Topology.load(tmp_path / "t.toml")
    assert [(g.dax, g.window_size) for g in t.guests] == [("always", 64 << 20), ("never", 1 << 30)]


def g_pwrite_with_shrink_after_size_fetch(gos, name, offset, data):
    """pwrite through DAX; between the guest's size fetch (GETATTR after the open) and its store
    through the window, the file is cut to 3 bytes through the host (a SETATTR the guest's
    DaxFiles does not hear of: what another guest's truncate is to this one)."""
    from vfscluster.fuse.abi import SetattrIn, SetattrValid
    dax = gos.client.dax
    real_fetch = dax._fetch

    def fetch_then_shrink(nodeid, fh):
        size = real_fetch(nodeid, fh)
        gos.client.setattr(nodeid, SetattrIn(valid=int(SetattrValid.SIZE), size=3))
        return size

    dax._fetch = fetch_then_shrink
    fd = gos.open(name, os.O_WRONLY)
    try:
        return gos.pwrite(fd, data, offset)
    finally:
        dax._fetch = real_fetch
        gos.close(fd)


def test_a_dax_write_racing_a_shrink_is_one_write(tmp_path):
    """A write that reaches past the size the guest knows goes to the host whole.  It used to be
    split: the part inside the known size stored through the window, the rest sent as an extending
    FUSE_WRITE; a shrink by another guest between the two kept the tail past a hole of zeros and
    lost the head, stored past the host's new end (found by a mixed-mode stress run)."""
    share = tmp_path / "share"
    share.mkdir()
    (share / "f").write_bytes(b"abcdefghij")     # the DAX guest knows 10 bytes; the write ends at 14
    with Cluster.start(Topology(share, [{"dax": "always"}, {"cache": "none"}],
                                window_size=16 << 20)) as c:
        dax_guest, reader = c.guests
        assert dax_guest.run(g_pwrite_with_shrink_after_size_fetch, "f", 6, b"[10.127]") == 8
        # all of the write before the truncate, or all of it after: never half of each
        assert reader.run(g_pread, "f", 64, 0) in (b"abc", b"abc\0\0\0[10.127]")
    assert (share / "f").read_bytes() in (b"abc", b"abc\0\0\0[10.127]")


def g_keep_open(gos, name):
    gos._test_fd = gos.open(name, os.O_RDWR)


def g_kept_pread(gos, n, offset):
    return gos.pread(gos._test_fd, n, offset)


def g_kept_pwrite(gos, data, offset):
    return gos.pwrite(gos._test_fd, data, offset)


def g_kept_close(gos):
    gos.close(gos._test_fd)


def test_a_versions_dax_guest_sees_another_guests_shrink_at_once(share):
    """With versions=on a DAX guest checks the file's version slot before trusting the size it
    knows: after another guest's shrink its read stops at the new end (it read the zeros past it),
    and a write past the new end goes to the host (it was stored past the host's end of file and
    lost)."""
    (share / "f").write_bytes(b"a" * (2 * PAGE))
    topo = Topology(share, [{"name": "a", "dax": "always", "cache": "always", "versions": True,
                             "window_size": 16 << 20}, {"name": "b"}])
    with Cluster.start(topo) as c:
        a, b = c.guests
        a.run(g_keep_open, "f")
        assert a.run(g_kept_pread, 8, 0) == b"a" * 8          # size known, chunk mapped
        asked = a.run(lambda gos: gos.client.requests)
        assert a.run(g_kept_pread, 8, 8) == b"a" * 8
        assert a.run(lambda gos: gos.client.requests) == asked   # no change: no request
        b.run(lambda gos: gos.truncate("f", 100))
        asked = a.run(lambda gos: gos.client.requests)
        assert a.run(g_kept_pread, 200, 0) == b"a" * 100
        assert a.run(lambda gos: gos.client.requests) == asked + 1    # one GETATTR, no more
        b.run(lambda gos: gos.truncate("f", 10))
        assert a.run(g_kept_pwrite, b"xyz", 200) == 3
        assert a.run(g_kept_pread, 300, 0) == b"a" * 10 + bytes(190) + b"xyz"
        a.run(g_kept_close)
    assert (share / "f").read_bytes() == b"a" * 10 + bytes(190) + b"xyz"


def test_a_versions_size_is_never_paired_with_a_newer_fetch_s_version():
    """Two size fetches of one file overlap (two threads of a guest): A reads the slot (v1) and
    asks GETATTR; another guest shrinks the file (v2); B fetches (0 at v2) and stores it; then A's
    answer, the size before the shrink, arrives and is stored.  A lock-free reader between A's
    stores must never take A's old size with B's version (it took 100 while the file had 0)."""
    from types import SimpleNamespace
    from vfscluster.guest.daxfiles import DaxFiles
    from vfscluster.guest.daxmap import FUSE_DAX_SZ

    slot, size, nodeid, calls = [1], [100], 7, []

    def getattr_(n, fh):
        calls.append(n)
        if len(calls) == 1:                         # A's GETATTR, answered before the shrink
            old = size[0]
            slot[0], size[0] = 2, 0                 # another guest's shrink
            assert dax._fetch(nodeid, None) == 0    # B, meanwhile
            return SimpleNamespace(attr=SimpleNamespace(size=old))
        return SimpleNamespace(attr=SimpleNamespace(size=size[0]))

    device = SimpleNamespace(shmem_config=SimpleNamespace(sizes=[FUSE_DAX_SZ]), on_failure=[],
                             set_shmem_handler=lambda i, h: None)
    client = SimpleNamespace(flags=0, cache=SimpleNamespace(view=SimpleNamespace(
        version=lambda n: slot[0])), getattr=getattr_)
    dax = DaxFiles(client, device, FUSE_DAX_SZ)
    taken = []

    class Watched(dict):                            # at every store: what a reader takes then
        def __setitem__(self, k, v):
            super().__setitem__(k, v)
            taken.append(dax._known(nodeid))
    try:
        for name, value in list(vars(dax).items()):
            if type(value) is dict:
                setattr(dax, name, Watched(value))
        assert dax._fetch(nodeid, None) == 100      # A: its answer is from before the shrink
        assert all(k in (None, 0) for k in taken), taken
        assert dax._known(nodeid) is None and dax.size(nodeid, None) == 0
    finally:
        dax.close()


TWO_RANGES = 4 << 20        # a window of two 2 MiB ranges


def g_keep_f_open(gos):
    gos._test_fd = gos.open("f", os.O_RDWR)


def g_pin_the_window(gos):
    """A live mmap buffer over the whole window: every range pinned, so DAX reads fall back."""
    gos._test_big = gos.open("big", os.O_RDONLY)
    gos._test_map = gos.mmap(gos._test_big, TWO_RANGES, 0, mmap.PROT_READ)


def g_unpin(gos):
    gos._test_map.close()
    gos.close(gos._test_big)


def g_kept_f_pread(gos):
    return gos.pread(gos._test_fd, 8, 0)


def g_kept_f_pwrite(gos, data):
    return gos.pwrite(gos._test_fd, data, 0)


@pytest.mark.parametrize("cache", ["always+versions", "auto"])
def test_a_dax_guest_reads_its_own_write_when_the_window_is_full(tmp_path, cache):
    """One guest, one thread, one descriptor, strictly sequential: write, then read the same
    bytes back.  The read comes back with the value before the write (seen with
    cache=always,versions=on and with cache=auto; cache=none has no page cache)."""
    share = tmp_path / "share"
    share.mkdir()
    (share / "big").write_bytes(b"b" * TWO_RANGES)
    (share / "f").write_bytes(b"old!" * 1024)
    spec = {"name": "a", "dax": "always", "window_size": TWO_RANGES,
            "cache": cache.split("+")[0], "versions": cache.endswith("versions")}
    with Cluster.start(Topology(share, [spec])) as c:
        a = c.guests[0]
        a.run(g_keep_f_open)
        a.run(g_pin_the_window)
        assert a.run(g_kept_f_pread) == b"old!old!"       # FUSE_READ fallback, into the page cache
        a.run(g_unpin)
        assert a.run(g_kept_f_pwrite, b"NEW!NEW!") == 8  # through the window
        assert a.run(g_kept_f_pread) == b"NEW!NEW!"
        a.run(g_pin_the_window)
        try:
            assert (share / "f").read_bytes()[:8] == b"NEW!NEW!"
            assert a.run(g_kept_f_pread) == b"NEW!NEW!"   # its own acknowledged write
        finally:
            a.run(g_unpin)


def g_read8(gos, name):
    fd = gos.open(name, os.O_RDONLY)
    try:
        return gos.pread(fd, 8, 0)
    finally:
        gos.close(fd)


def g_close_kept(gos):
    gos.close(gos._test_fd)


def g_fsync_kept(gos):
    gos.fsync(gos._test_fd)


@pytest.mark.parametrize("publish", ["close", "fsync"])
def test_dax_stores_are_published_at_close_even_after_their_range_was_reclaimed(tmp_path, publish):
    """README: a guest with cache=always,versions=on sees data another guest stored through DAX
    once the writer closes or fsyncs the file.  Here the writer's range of the file goes back to
    the host (reclaim: it reads three other files through a two-range window) between its store
    and its close/fsync; the reader then opens the file afresh and still reads the old bytes."""
    share = tmp_path / "share"
    share.mkdir()
    for n in ("g1", "g2", "g3"):
        (share / n).write_bytes(b"g" * (2 << 20))
    (share / "f").write_bytes(b"old!" * 1024)
    topo = Topology(share, [{"name": "a", "dax": "always", "cache": "none", "window_size": TWO_RANGES},
                            {"name": "d", "cache": "always", "versions": True}])
    with Cluster.start(topo) as c:
        a, d = c.guests
        assert d.run(g_read8, "f") == b"old!old!"          # cached, with its version
        a.run(g_keep_f_open)
        assert a.run(g_kept_f_pwrite, b"NEW!NEW!") == 8            # a store through the window
        for n in ("g1", "g2", "g3"):                        # its range of f is reclaimed
            a.run(g_read8, n)
        assert a.stats()["dax"]["reclaimed"] >= 1
        a.run(g_fsync_kept if publish == "fsync" else g_close_kept)
        assert (share / "f").read_bytes()[:8] == b"NEW!NEW!"
        assert d.run(g_read8, "f") == b"NEW!NEW!"
        if publish == "fsync":
            a.run(g_close_kept)
