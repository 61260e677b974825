"""vfscluster.host.dax: SETUPMAPPING / REMOVEMAPPING validation and the per-session mapping table,
EOF clamping, truncation revocation (ranges_past / revoke_past / plan_shrink), the zero source — with
real files and real descriptors."""

from __future__ import annotations

import errno
import fcntl
import mmap
import os
import threading
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vfscluster.fuse.abi import SetupmappingFlags
from vfscluster.guest.daxmap import Mapping
from vfscluster.host.dax import (DAX_SHMID, FALLOC_FL_COLLAPSE_RANGE, WHOLE_WINDOW, DaxRegistry, HostDax,
                                 MapRequest, is_zero_source, shrinks, zero_source)
from vfscluster.vhost_user import SHMEM_MAP_F_WRITABLE, ShmemMap, ShmemUnmap

pytestmark = pytest.mark.timeout(30)

PAGE = mmap.PAGESIZE
MiB = 1 << 20
R = 2 * MiB
W = 16 * MiB
RD = int(SetupmappingFlags.READ)
RW = int(SetupmappingFlags.READ | SetupmappingFlags.WRITE)


@pytest.fixture
def big(tmp_path) -> Path:
    p = tmp_path / "big"
    with open(p, "wb") as f:
        f.truncate(8 * MiB)
    return p


@pytest.fixture
def fds():
    opened = []

    def open_(path, flags=os.O_RDWR):
        fd = os.open(path, flags)
        opened.append(fd)
        return fd
    yield open_
    for fd in opened:
        os.close(fd)


def key_of(fd: int) -> tuple[int, int]:
    st = os.fstat(fd)
    return (st.st_dev, st.st_ino)


def check(exc_info, code: int) -> None:
    assert exc_info.value.errno == code, exc_info.value


def roundtrip(msg):
    """The produced payload passes the vhost-user layer's own validation."""
    return type(msg).unpack(msg.pack())


# ------------------------------------------------------------------------------------ setup

def test_setup_maps_the_file_and_records_it(big, fds):
    fd = fds(big)
    hd = HostDax(W)
    reqs = hd.setup(fd, None, "A", 2 * MiB, R, RW, 4 * MiB)
    assert reqs == [MapRequest(ShmemMap(DAX_SHMID, 2 * MiB, 4 * MiB, R, SHMEM_MAP_F_WRITABLE), fd, False)]
    assert roundtrip(reqs[0].msg) == reqs[0].msg
    assert hd.mappings() == [Mapping(4 * MiB, R, "A", 2 * MiB, True)]
    assert hd.mapped_bytes == R and len(hd) == 1 and hd.inodes() == {"A"}
    ro = hd.setup(fd, None, "A", 0, R, RD, 0)
    assert ro[0].msg.flags == 0 and ro[0].fd == fd
    assert hd.stats["setup"] == 2


def test_setup_clamps_to_eof_with_the_zero_source(tmp_path, fds):
    p = tmp_path / "small"
    p.write_bytes(b"x" * (PAGE + 10))
    fd = fds(p)
    hd = HostDax(W)
    reqs = hd.setup(fd, None, "S", 0, R, RW, R)
    assert [r.zero for r in reqs] == [False, True]
    f, z = reqs
    assert (f.msg.fd_offset, f.msg.shm_offset, f.msg.len, f.msg.flags) == (0, R, 2 * PAGE, SHMEM_MAP_F_WRITABLE)
    assert (z.msg.shm_offset, z.msg.len, z.msg.flags) == (R + 2 * PAGE, R - 2 * PAGE, 0)
    assert is_zero_source(z.fd) and not is_zero_source(fd)
    assert hd.mappings() == [Mapping(R, 2 * PAGE, "S", 0, True),
                             Mapping(R + 2 * PAGE, R - 2 * PAGE, None, 2 * PAGE, False)]
    assert hd.mapped_bytes == 2 * PAGE
    # wholly past EOF: only zeros; an explicit file_size overrides fstat
    only = hd.setup(fd, None, "S", R, R, RD, 0)
    assert [r.zero for r in only] == [True] and only[0].msg.len == R
    assert [r.zero for r in hd.setup(fd, None, "S", 0, R, RD, 0, file_size=R)] == [False]
    # clamping off: the whole range is the file
    assert [r.zero for r in HostDax(W, clamp_to_eof=False).setup(fd, None, "S", 0, R, RD, 0)] == [False]


def test_zero_source_is_sealed_zeros_and_shared():
    fd = zero_source(R)
    assert zero_source(PAGE) == fd                     # one per host
    assert os.fstat(fd).st_size >= R
    seals = fcntl.fcntl(fd, fcntl.F_GET_SEALS)
    assert seals & fcntl.F_SEAL_WRITE and seals & fcntl.F_SEAL_SHRINK and seals & fcntl.F_SEAL_GROW
    with pytest.raises(OSError):
        os.pwrite(fd, b"x", 0)
    with pytest.raises(OSError):
        os.ftruncate(fd, 0)
    with mmap.mmap(fd, R, mmap.MAP_SHARED, mmap.PROT_READ) as m:
        assert m[:] == bytes(R)
    assert os.pread(fd, 4096, R - 4096) == bytes(4096)
    with pytest.raises(ValueError):
        zero_source(0)


@pytest.mark.parametrize("args, code", [
    (dict(flags=1 << 5), errno.EINVAL),                     # unknown flag
    (dict(moffset=PAGE // 2), errno.EINVAL),                # misaligned window offset
    (dict(foffset=100), errno.EINVAL),                      # misaligned file offset
    (dict(length=PAGE + 1), errno.EINVAL),                  # length not whole pages
    (dict(length=0), errno.EINVAL),
    (dict(moffset=W - R + PAGE), errno.EINVAL),             # past the window's end
    (dict(moffset=W), errno.EINVAL),
    (dict(foffset=(1 << 63) - PAGE), errno.EINVAL),        # past off_t
    (dict(foffset=-PAGE), errno.EINVAL),
])
def test_setup_validation_einval(big, fds, args, code):
    fd = fds(big)
    hd = HostDax(W)
    a = dict(foffset=0, length=R, flags=RD, moffset=0) | args
    with pytest.raises(OSError) as ei:
        hd.setup(fd, None, "A", a["foffset"], a["length"], a["flags"], a["moffset"])
    check(ei, code)
    assert hd.mappings() == []


def test_setup_validation_access(big, tmp_path, fds):
    hd = HostDax(W)
    ro = fds(big, os.O_RDONLY)
    with pytest.raises(OSError) as ei:
        hd.setup(ro, None, "A", 0, R, RW, 0)               # WRITE on a read-only handle
    check(ei, errno.EACCES)
    hd.setup(ro, None, "A", 0, R, RD, 0)                   # reading is fine
    rw = fds(big)
    with pytest.raises(OSError) as ei:
        hd.setup(rw, False, "A", 0, R, RW, R)              # the handle says read-only
    check(ei, errno.EACCES)
    wo = fds(big, os.O_WRONLY)
    with pytest.raises(OSError) as ei:
        hd.setup(wo, None, "A", 0, R, RD, R)               # mmap needs read access
    check(ei, errno.EACCES)
    d = fds(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    with pytest.raises(OSError) as ei:
        hd.setup(d, None, "D", 0, R, RD, R)
    check(ei, errno.EACCES)
    opath = fds(big, os.O_PATH)
    with pytest.raises(OSError) as ei:
        hd.setup(opath, None, "A", 0, R, RD, R)
    check(ei, errno.EBADF)
    closed = os.open(big, os.O_RDONLY)
    os.close(closed)
    with pytest.raises(OSError) as ei:
        hd.setup(closed, None, "A", 0, R, RD, R)
    check(ei, errno.EBADF)
    assert hd.mappings() == [Mapping(0, R, "A", 0, False)]


def test_alignment_from_map_alignment(big, fds):
    fd = fds(big)
    hd = HostDax(W, alignment=R)                           # a host announcing map_alignment = 21
    with pytest.raises(OSError) as ei:
        hd.setup(fd, None, "A", 0, R, RD, PAGE)
    check(ei, errno.EINVAL)
    with pytest.raises(OSError) as ei:
        hd.setup(fd, None, "A", PAGE, R, RD, 0)
    check(ei, errno.EINVAL)
    hd.setup(fd, None, "A", R, R, RD, R)
    for bad in (dict(window_size=W, alignment=PAGE // 2), dict(window_size=W, alignment=3 * PAGE),
                dict(window_size=0), dict(window_size=R + PAGE, alignment=R)):
        with pytest.raises(ValueError):
            HostDax(**bad)


def test_overlapping_setup_splits_and_replaces(big, fds):
    fd = fds(big)
    hd = HostDax(W)
    hd.setup(fd, None, "A", 0, 4 * R, RD, 0)
    hd.setup(fd, None, "B", 6 * MiB, R, RW, R + PAGE)       # inside A
    assert hd.mappings() == [Mapping(0, R + PAGE, "A", 0, False),
                             Mapping(R + PAGE, R, "B", 6 * MiB, True),
                             Mapping(2 * R + PAGE, 2 * R - PAGE, "A", 2 * R + PAGE, False)]
    hd.setup(fd, None, "C", 0, 4 * R, RD, 0)                 # exactly over everything
    assert hd.mappings() == [Mapping(0, 4 * R, "C", 0, False)]


# ------------------------------------------------------------------------------------ remove

def test_remove_returns_unmaps_and_updates_the_table(big, fds):
    fd = fds(big)
    hd = HostDax(W)
    hd.setup(fd, None, "A", 0, R, RD, 0)
    hd.setup(fd, None, "A", R, R, RD, R)
    hd.setup(fd, None, "A", 2 * R, R, RD, 2 * R)
    out = hd.remove([(R, R), (2 * R + PAGE, PAGE), (6 * R, R), (0, 0)])   # a hole is fine, len 0 skipped
    assert out == [ShmemUnmap(DAX_SHMID, 0, R, R, 0), ShmemUnmap(DAX_SHMID, 0, 2 * R + PAGE, PAGE, 0),
                   ShmemUnmap(DAX_SHMID, 0, 6 * R, R, 0)]
    assert all(roundtrip(u) == u for u in out)
    assert hd.mappings() == [Mapping(0, R, "A", 0, False), Mapping(2 * R, PAGE, "A", 2 * R, False),
                             Mapping(2 * R + 2 * PAGE, R - 2 * PAGE, "A", 2 * R + 2 * PAGE, False)]
    assert hd.stats["remove"] == 3
    assert hd.remove([(0, WHOLE_WINDOW)]) == [ShmemUnmap(DAX_SHMID, 0, 0, W, 0)]
    assert hd.mappings() == []


@pytest.mark.parametrize("entries", [[], [(PAGE // 2, PAGE)], [(0, PAGE + 1)], [(W - PAGE, 2 * PAGE)],
                                     [(R, WHOLE_WINDOW)], [(0, R), (W, R)]])
def test_remove_validation_is_all_or_nothing(big, fds, entries):
    fd = fds(big)
    hd = HostDax(W)
    hd.setup(fd, None, "A", 0, R, RD, 0)
    with pytest.raises(OSError) as ei:
        hd.remove(entries)
    check(ei, errno.EINVAL)
    assert hd.mappings() == [Mapping(0, R, "A", 0, False)]


# ------------------------------------------------------------------------------------ truncation

def test_ranges_past_and_revoke_past(big, fds):
    fd = fds(big)
    hd = HostDax(W)
    hd.setup(fd, None, "A", 0, R, RW, 3 * R)             # file [0, 2M) at window 6M
    hd.setup(fd, None, "A", R, R, RD, 0)                 # file [2M, 4M) at window 0
    hd.setup(fd, None, "B", R, R, RD, R)                 # another inode
    hd.setup(fd, None, "A", 3 * R, R, RD, 5 * R)         # file [6M, 8M) at window 10M
    new = R + 10                                           # keeps the page holding byte R + 9
    assert hd.ranges_past("A", new) == [(PAGE, R - PAGE), (5 * R, R)]
    assert hd.ranges_past("A", 0) == hd.ranges_of("A") == [(0, R), (3 * R, R), (5 * R, R)]
    assert hd.ranges_past("A", 4 * R) == [] and hd.ranges_past("nope", 0) == []
    assert hd.ranges_past("A", R // 2) == [(0, R), (3 * R + R // 2, R // 2), (5 * R, R)]
    reqs = hd.revoke_past("A", new)
    assert [(r.msg.shm_offset, r.msg.len, r.msg.flags, r.zero) for r in reqs] == [
        (PAGE, R - PAGE, 0, True), (5 * R, R, 0, True)]
    assert all(is_zero_source(r.fd) and r.msg.fd_offset + r.msg.len <= os.fstat(r.fd).st_size for r in reqs)
    assert hd.ranges_past("A", new) == []                  # recorded as zeros
    assert Mapping(PAGE, R - PAGE, None, R + PAGE, False, "A") in hd.mappings()   # remembers its file
    assert hd.ranges_of("B") == [(R, R)] and hd.stats["revoked"] == 2
    with pytest.raises(OSError) as ei:
        hd.ranges_past("A", -1)
    check(ei, errno.EINVAL)


def test_registry_plans_a_shrink_over_every_session(big, fds):
    fd = fds(big)
    reg = DaxRegistry(W)
    s1, s2, s3 = reg.session(1), reg.session(2), reg.session(3)
    assert reg.session(1) is s1 and set(reg.sessions()) == {1, 2, 3}
    s1.setup(fd, None, "A", 0, R, RW, 0)
    s2.setup(fd, None, "A", R, R, RD, 2 * R)
    s3.setup(fd, None, "B", 0, R, RD, 0)
    assert reg.holders("A") == [1, 2]
    assert reg.ranges_past("A", PAGE) == {1: [(PAGE, R - PAGE)], 2: [(2 * R, R)]}
    plan = reg.plan_shrink("A", PAGE)
    assert {sid: [(r.msg.shm_offset, r.msg.len) for r in reqs] for sid, reqs in plan.items()} == {
        1: [(PAGE, R - PAGE)], 2: [(2 * R, R)]}
    assert reg.plan_shrink("A", PAGE) == {}
    assert reg.drop_session(2) == [ShmemUnmap(DAX_SHMID, 0, 0, W, 0)]
    assert reg.drop_session(2) == [] and set(reg.sessions()) == {1, 3}
    assert HostDax(W).reset() == []


def test_restore_gives_back_the_revoked_pieces_inside_the_grown_file(big, fds):
    fd = fds(big)
    reg = DaxRegistry(W)
    s1, s2 = reg.session(1), reg.session(2)
    s1.setup(fd, None, "A", 0, R, RW, 0)                 # file [0, 2M) writable at window 0
    s2.setup(fd, None, "A", 0, R, RD, 4 * R)             # read-only in the other session
    s2.setup(fd, None, "B", 0, R, RD, 0)
    reg.plan_shrink("A", PAGE)
    assert reg.revoked_keys == {"A"} and s1.revoked("A") and not s1.revoked("B")
    plan = reg.plan_grow("A", 3 * PAGE + 1, fd, True)    # up to 4 pages come back
    assert {sid: [(r.msg.fd_offset, r.msg.shm_offset, r.msg.len, r.msg.flags, r.zero, r.fd)
                  for r in reqs] for sid, reqs in plan.items()} == {
        1: [(PAGE, PAGE, 3 * PAGE, 1, False, fd)], 2: [(PAGE, 4 * R + PAGE, 3 * PAGE, 0, False, fd)]}
    assert Mapping(0, PAGE, "A", 0, True) in s1.mappings() and Mapping(PAGE, 3 * PAGE, "A", PAGE, True) \
        in s1.mappings()
    assert reg.revoked_keys == {"A"}                         # the rest of the range is still revoked
    assert reg.plan_grow("A", 3 * PAGE, fd, True) == {}       # nothing more inside that size
    plan = reg.plan_grow("A", 10 * R, fd, False)             # fd read-only: no writable piece
    assert [(r.msg.shm_offset, r.msg.len, r.msg.flags) for r in plan[1]] == [(4 * PAGE, R - 4 * PAGE, 0)]
    assert reg.revoked_keys == set() and not s1.revoked("A") and not s2.revoked("A")
    # a revoked range the guest removed (or set up again for something else) is not restored
    reg.plan_shrink("A", 0)
    s1.remove([(0, R)])
    s2.setup(fd, None, "B", 0, R, RD, 4 * R)
    assert reg.plan_grow("A", R, fd, True) == {} and reg.revoked_keys == set()


def test_forget_revoked_leaves_zeros_that_never_come_back(big, fds):
    fd = fds(big)
    reg = DaxRegistry(W)
    s1 = reg.session(1)
    s1.setup(fd, None, "A", 0, R, RW, 0)
    reg.plan_shrink("A", 0)
    reg.forget_revoked("A")
    assert reg.revoked_keys == set() and not s1.revoked("A")
    assert Mapping(0, R, None, 0, False) in s1.mappings()     # still zeros in the window
    reg.revoked_keys.add("A")                                  # even if asked again
    assert reg.plan_grow("A", R, fd, True) == {}


def test_inode_lock_excludes_per_inode_only():
    reg = DaxRegistry(W)
    inside = threading.Event()
    release = threading.Event()
    order = []

    def holder():
        with reg.inode_lock("A"):
            inside.set()
            release.wait(10)
            order.append("holder out")

    t = threading.Thread(target=holder)
    t.start()
    assert inside.wait(10)
    with reg.inode_lock("B"):                              # another inode: not blocked
        order.append("B")
    got = threading.Event()

    def waiter():
        with reg.inode_lock("A"):
            order.append("waiter in")
            got.set()

    t2 = threading.Thread(target=waiter)
    t2.start()
    assert not got.wait(0.05)                              # still held (a bounded check, not a sync)
    release.set()
    t.join(10)
    t2.join(10)
    assert order == ["B", "holder out", "waiter in"]
    assert reg._inode_locks == {}                          # no lock left behind


def test_fallocate_modes_that_shrink():
    assert shrinks(FALLOC_FL_COLLAPSE_RANGE) and not shrinks(0) and not shrinks(0x01 | 0x02)


# ------------------------------------------------------------------------------------ a model

_PAGES = W // PAGE
_OP = st.one_of(
    st.tuples(st.just("setup"), st.sampled_from(["A", "B"]), st.integers(0, 2 * R // PAGE + 3),
              st.integers(-1, _PAGES // 2), st.integers(0, _PAGES + 2), st.sampled_from([RD, RW, 1 << 5])),
    st.tuples(st.just("remove"), st.lists(st.tuples(st.integers(0, _PAGES + 2),
                                                    st.integers(-1, _PAGES // 2)), max_size=3)))


@given(ops=st.lists(_OP, min_size=1, max_size=25))
@settings(max_examples=200, deadline=None)
def test_setups_and_removes_against_a_page_model(tmp_path_factory, ops):
    """Random SETUPMAPPINGs (files A and B of 2 MiB, ranges into and past EOF, over each other,
    past the window, misaligned, bad flags) and REMOVEMAPPINGs (holes, several entries, bad ones):
    after each, the table is exactly what a page-by-page model says — each window page maps a
    file page, the zero source, or nothing — and a refused call changed nothing."""
    path = tmp_path_factory.mktemp("model") / "f"
    path.write_bytes(b"")
    os.truncate(path, R)
    fd = os.open(path, os.O_RDWR)
    try:
        hd = HostDax(W)
        model: list = [None] * _PAGES             # per window page: (file, file offset, writable)
        for op in ops:
            if op[0] == "setup":
                _, key, fpage, length, mpage, flags = op
                foffset, moffset = fpage * PAGE, mpage * PAGE
                length = length * PAGE if length >= 0 else PAGE // 2
                ok = flags in (RD, RW) and length > 0 and length % PAGE == 0 and moffset + length <= W
                try:
                    hd.setup(fd, None, key, foffset, length, flags, moffset, file_size=R)
                    assert ok, op
                except OSError as exc:
                    assert not ok and exc.errno == errno.EINVAL, (op, exc)
                    continue
                for i in range(length // PAGE):
                    off = foffset + i * PAGE
                    model[mpage + i] = (key, off, flags == RW) if off < R else (None, off, False)
            else:
                entries = [(m * PAGE, n * PAGE if n >= 0 else PAGE // 2) for m, n in op[1]]
                ok = bool(entries) and all(n == 0 or (n % PAGE == 0 and m + n <= W) for m, n in entries)
                try:
                    hd.remove(entries)
                    assert ok, op
                except OSError as exc:
                    assert not ok and exc.errno == errno.EINVAL, (op, exc)
                    continue
                for m, n in entries:
                    model[m // PAGE:(m + n) // PAGE] = [None] * (n // PAGE)
            pages: list = [None] * _PAGES
            for mp in hd.mappings():
                for i in range(mp.length // PAGE):
                    assert pages[mp.window_offset // PAGE + i] is None       # no overlap
                    pages[mp.window_offset // PAGE + i] = (mp.file, mp.file_offset + i * PAGE,
                                                           mp.writable)
            assert pages == model
    finally:
        os.close(fd)
