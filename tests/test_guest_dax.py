"""vfscluster.guest.dax / daxmap: the DAX window, its mapping table, MappedBuffer and the range
allocator, on real memory and real files.

Whatever could kill the interpreter on failure (SIGBUS after a truncation) runs in a child process, so a
regression shows as a failed test instead of a dead xdist worker.  Cross-process tests synchronise by
spinning on the shared pages (with a deadline), never by sleeping."""

from __future__ import annotations

import errno
import mmap
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st

from threads import run_threads
from vfscluster.guest.dax import PAGE, DaxWindow, MappedBuffer, file_id
from vfscluster.guest.daxmap import (FUSE_DAX_RECLAIM_CHUNK, FUSE_DAX_RECLAIM_THRESHOLD, FUSE_DAX_SZ,
                                     Mapping, RangeAllocator)

pytestmark = pytest.mark.timeout(60)

ROOT = Path(__file__).resolve().parent.parent
MiB = 1 << 20


def stamped_file(path: Path, npages: int) -> Path:
    """A file whose page ``i`` is filled with the 4-byte little-endian stamp ``i + 1``."""
    with open(path, "wb") as f:
        for i in range(npages):
            f.write((i + 1).to_bytes(4, "little") * (PAGE // 4))
    return path


def stamp(data: bytes) -> int:
    return int.from_bytes(data[:4], "little")


def open_fd(path: Path, flags: int = os.O_RDWR) -> int:
    return os.open(path, flags)


def check_errno(exc_info, code: int) -> None:
    assert exc_info.value.errno == code, exc_info.value


def run_child(script: str, *args: str, timeout: float = 40) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    return subprocess.run([sys.executable, "-c", textwrap.dedent(script), *args], capture_output=True,
                          text=True, timeout=timeout, env=env)


def maps_lines(lo: int, hi: int) -> list[tuple[int, int, str, str]]:
    """/proc/self/maps entries overlapping [lo, hi): (start, end, perms, path)."""
    out = []
    with open("/proc/self/maps") as f:
        for line in f:
            parts = line.split(maxsplit=5)
            a, b = (int(x, 16) for x in parts[0].split("-"))
            if a < hi and b > lo:
                out.append((a, b, parts[1], parts[5].strip() if len(parts) > 5 else ""))
    return out


def page_perms(window: DaxWindow, npages: int) -> list[str]:
    """Protection and sharing of each window page, from /proc/self/maps."""
    perms = [""] * npages
    for a, b, p, _ in maps_lines(window.base, window.base + npages * PAGE):
        for addr in range(max(a, window.base), min(b, window.base + npages * PAGE), PAGE):
            perms[(addr - window.base) // PAGE] = p
    return perms


# ------------------------------------------------------------------------------------- the window


def test_reserve_close_and_context_manager():
    w = DaxWindow(8 * MiB)
    assert w.size == 8 * MiB and w.base % PAGE == 0 and w.ranges.nranges == 4
    assert set(page_perms(w, 8 * MiB // PAGE)) == {"---p"}
    assert w.mappings() == []
    w.close()
    w.close()                                           # idempotent
    assert w.closed
    with pytest.raises(OSError) as ei:
        w.unmap(0, PAGE)
    check_errno(ei, errno.EBADF)
    with DaxWindow(2 * MiB) as w2:
        assert not w2.closed
    assert w2.closed


@pytest.mark.parametrize("size, range_size", [(3 * MiB, 2 * MiB), (0, 2 * MiB), (-2 * MiB, 2 * MiB),
                                              (2 * MiB, 1000), (2 * MiB, 0)])
def test_bad_window_size_is_einval(size, range_size):
    with pytest.raises(OSError) as ei:
        DaxWindow(size, range_size)
    check_errno(ei, errno.EINVAL)


def test_default_window_is_one_gib_of_2mib_ranges():
    with DaxWindow() as w:
        assert w.size == 1 << 30 and w.range_size == FUSE_DAX_SZ == 2 * MiB
        assert w.ranges.nranges == 512


def test_map_writable_store_is_in_the_file_and_file_writes_are_in_the_window(tmp_path):
    path = stamped_file(tmp_path / "f", 1024)
    fd = open_fd(path)
    with DaxWindow(8 * MiB) as w:
        m = w.map(fd, 2 * MiB, 2 * MiB, 2 * MiB, writable=True)
        os.close(fd)                                    # the mapping keeps the file
        assert m == Mapping(2 * MiB, 2 * MiB, file_id_of(path), 2 * MiB, True)
        assert w.mappings() == [m] and w.lookup(2 * MiB + 5) == m and w.lookup(0) is None
        v = w.view(2 * MiB + 100, 8)
        assert not v.readonly
        assert stamp(w.copy_out(2 * MiB, 4)) == 512 + 1
        v[:] = b"DAXSTORE"
        with open(path, "rb") as f:
            assert os.pread(f.fileno(), 8, 2 * MiB + 100) == b"DAXSTORE"
        with open(path, "r+b") as f:
            os.pwrite(f.fileno(), b"hostside", 2 * MiB + 4096)
        assert w.copy_out(2 * MiB + 4096, 8) == b"hostside"
        w.copy_in(3 * MiB, bytearray(b"copyin"))
        assert Path(path).read_bytes()[3 * MiB:3 * MiB + 6] == b"copyin"
        v.release()


def file_id_of(path: Path) -> tuple[int, int]:
    st_ = os.stat(path)
    return (st_.st_dev, st_.st_ino)


def test_two_windows_share_the_file_pages(tmp_path):
    path = stamped_file(tmp_path / "f", 512)
    fd = open_fd(path)
    with DaxWindow(4 * MiB) as a, DaxWindow(4 * MiB) as b:
        a.map(fd, 0, 0, 2 * MiB, True)
        b.map(fd, 0, 2 * MiB, 2 * MiB, True)
        os.close(fd)
        va, vb = a.view(0, 2 * MiB), b.view(2 * MiB, 2 * MiB)
        va[4096:4100] = b"ping"
        assert bytes(vb[4096:4100]) == b"ping"          # no syscall between the store and the load
        vb[8192:8196] = b"pong"
        assert bytes(va[8192:8196]) == b"pong"
        va.release()
        vb.release()


CHILD_SPIN = """
    import os, sys, time
    from vfscluster.guest.dax import DaxWindow
    fd = os.open(sys.argv[1], os.O_RDWR)
    with DaxWindow(2 << 20) as w:
        w.map(fd, 0, 0, 2 << 20, True)
        os.close(fd)
        v = w.view(0, 4096)
        v[16] = 1                                   # ready
        deadline = time.monotonic() + 30
        while v[0] != 7:                            # spin on the shared page
            if time.monotonic() > deadline:
                sys.exit("no flag from the parent")
        v[8] = v[1] + 1                             # answer
        v.release()
"""


def test_two_processes_see_each_others_stores_without_a_syscall(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(bytes(2 * MiB))
    fd = open_fd(path)
    with DaxWindow(2 * MiB) as w:
        w.map(fd, 0, 0, 2 * MiB, True)
        os.close(fd)
        v = w.view(0, 4096)
        env = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
        child = subprocess.Popen([sys.executable, "-c", textwrap.dedent(CHILD_SPIN), str(path)], env=env)
        try:
            deadline = time.monotonic() + 30
            while v[16] != 1:
                assert child.poll() is None and time.monotonic() < deadline, "child never got ready"
            v[1] = 41
            v[0] = 7                                    # x86-64 keeps store order (TSO)
            while v[8] == 0:
                assert time.monotonic() < deadline, "no answer from the child"
            assert v[8] == 42
            assert child.wait(timeout=30) == 0
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()
        v.release()


def test_read_only_map(tmp_path):
    path = stamped_file(tmp_path / "f", 16)
    fd = open_fd(path, os.O_RDONLY)
    with DaxWindow(2 * MiB) as w:
        m = w.map(fd, 0, 0, 16 * PAGE, writable=False)
        assert not m.writable
        v = w.view(0, 16 * PAGE)
        assert v.readonly
        with pytest.raises(TypeError):
            v[0] = 1
        assert stamp(bytes(v[5 * PAGE:5 * PAGE + 4])) == 6
        with pytest.raises(OSError) as ei:
            w.copy_in(0, b"x")
        check_errno(ei, errno.EACCES)
        assert page_perms(w, 16) == ["r--s"] * 16
        # a writable map of a read-only fd: mmap's EACCES, and the range is left unmapped
        with pytest.raises(OSError) as ei:
            w.map(fd, 0, 4 * PAGE, 4 * PAGE, writable=True)
        check_errno(ei, errno.EACCES)
        assert [(p.window_offset, p.length) for p in w.mappings()] == [(0, 4 * PAGE), (8 * PAGE, 8 * PAGE)]
        assert page_perms(w, 16)[4:8] == ["---p"] * 4
        v.release()
        os.close(fd)


def test_view_of_a_writable_range_with_a_read_only_part_is_read_only(tmp_path):
    path = stamped_file(tmp_path / "f", 16)
    rw, ro = open_fd(path), open_fd(path, os.O_RDONLY)
    with DaxWindow(2 * MiB) as w:
        w.map(rw, 0, 0, 8 * PAGE, True)
        w.map(ro, 8 * PAGE, 8 * PAGE, 8 * PAGE, False)
        assert not w.view(0, 8 * PAGE).readonly
        assert w.view(7 * PAGE, 2 * PAGE).readonly
        assert stamp(w.copy_out(8 * PAGE, 4)) == 9
    os.close(rw)
    os.close(ro)


def test_unmap_then_view_is_einval_and_splits(tmp_path):
    path = stamped_file(tmp_path / "f", 512)
    fd = open_fd(path)
    with DaxWindow(4 * MiB) as w:
        w.map(fd, 0, 0, 2 * MiB, True)
        os.close(fd)
        removed = w.unmap(4 * PAGE, 4 * PAGE)
        assert [(p.window_offset, p.length, p.file_offset) for p in removed] == [(4 * PAGE, 4 * PAGE, 4 * PAGE)]
        assert [(p.window_offset, p.length, p.file_offset) for p in w.mappings()] == [
            (0, 4 * PAGE, 0), (8 * PAGE, 2 * MiB - 8 * PAGE, 8 * PAGE)]
        for off, length in [(4 * PAGE, 1), (3 * PAGE, 2 * PAGE), (2 * MiB, 1), (0, 2 * MiB)]:
            for op in (w.view, w.copy_out):
                with pytest.raises(OSError) as ei:
                    op(off, length)
                check_errno(ei, errno.EINVAL)
        with pytest.raises(OSError) as ei:
            w.copy_in(5 * PAGE, b"x")
        check_errno(ei, errno.EINVAL)
        assert page_perms(w, 12)[3:9] == ["rw-s", "---p", "---p", "---p", "---p", "rw-s"]
        assert w.unmap(2 * MiB, 2 * MiB) == []          # a hole: nothing to remove, no error
        assert stamp(w.copy_out(8 * PAGE, 4)) == 9


def test_overlapping_maps_split_the_table_exactly(tmp_path):
    a = stamped_file(tmp_path / "a", 64)
    b = stamped_file(tmp_path / "b", 64)
    fa, fb = open_fd(a), open_fd(b, os.O_RDONLY)
    ia, ib = file_id(fa), file_id(fb)
    with DaxWindow(2 * MiB) as w:
        w.map(fa, 0, 0, 16 * PAGE, True)                 # A: pages 0..16 of a
        w.map(fb, 32 * PAGE, 4 * PAGE, 4 * PAGE, False)  # B over [4, 8): pages 32.. of b
        w.map(fa, 40 * PAGE, 6 * PAGE, 4 * PAGE, True)   # C over [6, 10): pages 40.. of a
        assert w.mappings() == [
            Mapping(0, 4 * PAGE, ia, 0, True),
            Mapping(4 * PAGE, 2 * PAGE, ib, 32 * PAGE, False),
            Mapping(6 * PAGE, 4 * PAGE, ia, 40 * PAGE, True),
            Mapping(10 * PAGE, 6 * PAGE, ia, 10 * PAGE, True)]
        expect = [1, 2, 3, 4, 33, 34, 41, 42, 43, 44, 11, 12, 13, 14, 15, 16]
        assert [stamp(w.copy_out(i * PAGE, 4)) for i in range(16)] == expect
        assert page_perms(w, 16)[3:7] == ["rw-s", "r--s", "r--s", "rw-s"]
        w.map(fa, 0, 0, 16 * PAGE, True)                 # a map over all of them replaces them
        assert w.mappings() == [Mapping(0, 16 * PAGE, ia, 0, True)]
        assert [stamp(w.copy_out(i * PAGE, 4)) for i in range(16)] == list(range(1, 17))
    os.close(fa)
    os.close(fb)


NPAGES = 24
ops = st.lists(st.tuples(st.sampled_from(["map_a", "map_b_ro", "unmap", "zero"]),
                         st.integers(0, NPAGES - 1), st.integers(1, 8), st.integers(0, 32)),
               max_size=12)


@settings(max_examples=40, deadline=None)
@given(ops)
def test_table_is_exactly_what_the_address_space_holds(tmp_path_factory, seq):
    """Random map/unmap/zero sequences against a page model: the table, the bytes and the kernel's
    own view (/proc/self/maps) agree page by page."""
    d = tmp_path_factory.mktemp("model")
    fa, fb = open_fd(stamped_file(d / "a", 64)), open_fd(stamped_file(d / "b", 64), os.O_RDONLY)
    ids = {"a": file_id(fa), "b": file_id(fb)}
    model: list = [None] * NPAGES         # None: hole; ("zero", w) ; (name, file page, writable)
    with DaxWindow(NPAGES * PAGE, PAGE) as w:
        for op, first, n, fpage in seq:
            n = min(n, NPAGES - first)
            if op == "map_a":
                w.map(fa, fpage * PAGE, first * PAGE, n * PAGE, True)
                model[first:first + n] = [("a", fpage + i, True) for i in range(n)]
            elif op == "map_b_ro":
                w.map(fb, fpage * PAGE, first * PAGE, n * PAGE, False)
                model[first:first + n] = [("b", fpage + i, False) for i in range(n)]
            elif op == "unmap":
                w.unmap(first * PAGE, n * PAGE)
                model[first:first + n] = [None] * n
            else:
                w.zero(first * PAGE, n * PAGE)
                model[first:first + n] = [m if m is None or m[0] == "zero" else ("zero", m[2])
                                          for m in model[first:first + n]]
        table: list = [None] * NPAGES
        prev_end = 0
        for m in w.mappings():
            assert m.window_offset >= prev_end and m.length > 0
            prev_end = m.end
            for i in range(m.length // PAGE):
                page = m.window_offset // PAGE + i
                table[page] = (("zero", m.writable) if m.zeroed else
                               ("a" if m.file == ids["a"] else "b", m.file_offset // PAGE + i, m.writable))
        assert table == model
        perms = page_perms(w, NPAGES)
        for i, m in enumerate(model):
            if m is None:
                assert perms[i] == "---p"
                continue
            writable = m[-1]
            if m[0] == "zero":
                assert perms[i] == ("rw-p" if writable else "r--p")
                assert w.copy_out(i * PAGE, PAGE) == bytes(PAGE)
            else:
                assert perms[i] == ("rw-s" if writable else "r--s")
                assert stamp(w.copy_out(i * PAGE, 4)) == m[1] + 1
    os.close(fa)
    os.close(fb)


def test_zero_keeps_protection_reads_zeros_and_leaves_the_file(tmp_path):
    path = stamped_file(tmp_path / "f", 16)
    before = path.read_bytes()
    fd = open_fd(path)
    with DaxWindow(2 * MiB) as w:
        w.map(fd, 0, 0, 8 * PAGE, True)
        w.map(fd, 8 * PAGE, 8 * PAGE, 4 * PAGE, False)
        done = w.zero(6 * PAGE, 8 * PAGE)               # 2 writable + 4 read-only pages + 2 of hole
        assert [(p.window_offset, p.length, p.writable) for p in done] == [(6 * PAGE, 2 * PAGE, True),
                                                                          (8 * PAGE, 4 * PAGE, False)]
        assert w.copy_out(6 * PAGE, 6 * PAGE) == bytes(6 * PAGE)
        assert stamp(w.copy_out(5 * PAGE, 4)) == 6
        assert page_perms(w, 14) == ["rw-s"] * 6 + ["rw-p"] * 2 + ["r--p"] * 4 + ["---p"] * 2
        assert [p.zeroed for p in w.mappings()] == [False, True, True]
        assert w.view(6 * PAGE, PAGE).readonly              # a store there would be lost
        with pytest.raises(OSError) as ei:
            w.copy_in(6 * PAGE, b"x")
        check_errno(ei, errno.ESTALE)
        assert w.zero(6 * PAGE, 2 * PAGE) == []            # already zero
    assert path.read_bytes() == before
    os.close(fd)


TRUNCATE_CHILD = """
    import os, sys
    from vfscluster.guest.dax import DaxWindow, PAGE
    path, mode = sys.argv[1], sys.argv[2]
    fd = os.open(path, os.O_RDWR)
    with DaxWindow(2 << 20) as w:
        w.map(fd, 0, 0, 2 << 20, True)
        buf = w.mapped_buffer(0, 64 * PAGE, writable=False)
        if mode == "zero":
            w.zero(4 * PAGE, (2 << 20) - 4 * PAGE)
        elif mode == "tail":
            w.zero_file_tail(w.mappings()[0].file, 3 * PAGE + 100)
        os.ftruncate(fd, 3 * PAGE + 100)            # the host shrinks the file
        v = w.view(0, 64 * PAGE)
        print(sum(v[3 * PAGE:4 * PAGE]), sum(v[4 * PAGE:64 * PAGE]), sum(buf[4 * PAGE:64 * PAGE]), flush=True)
        v.release()
        buf.close()
"""


@pytest.mark.parametrize("mode", ["zero", "tail"])
def test_truncation_after_zero_does_not_sigbus(tmp_path, mode):
    path = tmp_path / "f"
    path.write_bytes(b"\1" * (2 * MiB))
    r = run_child(TRUNCATE_CHILD, str(path), mode)
    assert r.returncode == 0, r.stderr
    # the page holding the new end keeps its first 100 bytes (the rest of it reads as zeros)
    assert r.stdout.split() == ["100", "0", "0"]
    assert path.stat().st_size == 3 * PAGE + 100


def test_truncation_without_zero_does_sigbus(tmp_path):
    """The control: what zero() prevents is real."""
    path = tmp_path / "f"
    path.write_bytes(b"\1" * (2 * MiB))
    r = run_child(TRUNCATE_CHILD, str(path), "none")
    assert r.returncode == -signal.SIGBUS, (r.returncode, r.stdout, r.stderr)


@pytest.mark.parametrize("args", [
    (0, 2 * MiB - PAGE, 2 * PAGE),        # past the window end
    (0, 2 * MiB, PAGE),                   # starts at the end
    (0, 0, 4 * MiB),                      # longer than the window
    (0, 100, PAGE),                       # misaligned window offset
    (100 * PAGE + 1, 0, PAGE),            # misaligned file offset
    (0, 0, 100),                          # misaligned length
    (0, 0, 0),                            # empty
    (-PAGE, 0, PAGE),                     # negative file offset
    (0, -PAGE, PAGE),                     # negative window offset
])
def test_map_bad_ranges_are_einval(tmp_path, args):
    path = stamped_file(tmp_path / "f", 4)
    fd = open_fd(path)
    with DaxWindow(2 * MiB) as w:
        with pytest.raises(OSError) as ei:
            w.map(fd, *args, True)
        check_errno(ei, errno.EINVAL)
        assert w.mappings() == []
        file_offset_only = args[0] % PAGE or args[0] < 0
        for op in () if file_offset_only else (w.unmap, w.zero):
            with pytest.raises(OSError) as ei:
                op(*args[1:])
            check_errno(ei, errno.EINVAL)
    os.close(fd)


def test_map_a_closed_fd_is_ebadf(tmp_path):
    path = stamped_file(tmp_path / "f", 4)
    fd = open_fd(path)
    os.close(fd)
    with DaxWindow(2 * MiB) as w:
        with pytest.raises(OSError) as ei:
            w.map(fd, 0, 0, PAGE, True)
        check_errno(ei, errno.EBADF)


def test_copies_span_pieces(tmp_path):
    a, b = stamped_file(tmp_path / "a", 8), stamped_file(tmp_path / "b", 8)
    fa, fb = open_fd(a), open_fd(b)
    with DaxWindow(2 * MiB) as w:
        w.map(fa, 0, 0, 4 * PAGE, True)
        w.map(fb, 4 * PAGE, 4 * PAGE, 4 * PAGE, True)
        w.copy_in(4 * PAGE - 3, b"abcdef")
        assert w.copy_out(4 * PAGE - 3, 6) == b"abcdef"
        assert a.read_bytes()[4 * PAGE - 3:4 * PAGE] == b"abc"
        assert b.read_bytes()[4 * PAGE:4 * PAGE + 3] == b"def"
        assert w.copy_out(0, 0) == b"" and len(w.view(10, 0)) == 0
    os.close(fa)
    os.close(fb)


def test_window_is_thread_safe(tmp_path):
    """Threads mapping, reading and unmapping their own ranges concurrently keep the table exact."""
    path = stamped_file(tmp_path / "f", 256)
    fd = open_fd(path)
    errors: list[BaseException] = []
    with DaxWindow(8 * MiB, 64 * PAGE) as w:
        def worker(k: int) -> None:
            try:
                for i in range(200):
                    off = k * 64 * PAGE
                    w.map(fd, (i % 4) * 64 * PAGE, off, 64 * PAGE, i % 2 == 0)
                    assert stamp(w.copy_out(off + PAGE, 4)) == (i % 4) * 64 + 2
                    w.unmap(off + 32 * PAGE, 32 * PAGE)
            except BaseException as e:       # reported by the main thread
                errors.append(e)
        run_threads(worker, 8, None)
        assert errors == []
        assert [(m.window_offset, m.length) for m in w.mappings()] == [(k * 64 * PAGE, 32 * PAGE) for k in range(8)]
    os.close(fd)


# ------------------------------------------------------------------------------------- MappedBuffer


def test_mapped_buffer_read_only(tmp_path):
    path = stamped_file(tmp_path / "f", 16)
    fd = open_fd(path)
    with DaxWindow(2 * MiB) as w:
        w.map(fd, 0, 0, 16 * PAGE, True)
        buf = w.mapped_buffer(PAGE, 3 * PAGE + 10, writable=False)
        assert isinstance(buf, mmap.mmap) and not buf.closed and not buf.writable
        assert len(buf) == 3 * PAGE + 10
        assert stamp(buf[:4]) == 2 and stamp(buf[2 * PAGE:2 * PAGE + 4]) == 4 and buf[3 * PAGE] == 5
        assert buf[-1] == 0 and buf[3 * PAGE:][:4] == (5).to_bytes(4, "little")
        mv = memoryview(buf)
        assert mv.readonly and len(mv) == len(buf)
        with pytest.raises(TypeError):
            mv[0] = 1
        with pytest.raises(TypeError):
            buf[0] = 1
        with pytest.raises(TypeError):
            buf.write(b"x")
        # underneath, the alias is the file's pages, read-only even though the window is writable
        lines = maps_lines(buf._addr, buf._addr + 4 * PAGE)
        assert {(p, name) for _, _, p, name in lines} == {("r--s", str(path))}
        with pytest.raises(BufferError):
            buf.close()                                 # a memoryview is exported
        mv.release()
        with buf:
            pass
        assert buf.closed
        with pytest.raises(ValueError):
            buf[0]
        buf.close()                                     # idempotent
    os.close(fd)


def test_mapped_buffer_writable_and_independent_of_the_window(tmp_path):
    path = stamped_file(tmp_path / "f", 16)
    fd = open_fd(path)
    with DaxWindow(2 * MiB) as w:
        w.map(fd, 0, 0, 16 * PAGE, True)
        with w.mapped_buffer(0, 8 * PAGE, writable=True) as buf:
            assert buf.writable and not memoryview(buf).readonly
            buf[10:15] = b"hello"
            assert os.pread(fd, 5, 10) == b"hello" and w.copy_out(10, 5) == b"hello"
            w.copy_in(20, b"world")
            assert buf[20:25] == b"world"
            w.unmap(0, 16 * PAGE)                       # the buffer keeps its own alias of the file
            assert buf[10:15] == b"hello" and stamp(buf[7 * PAGE:]) == 8
            os.pwrite(fd, b"later", 30)
            assert buf[30:35] == b"later"
            with pytest.raises(OSError) as ei:
                buf.resize(PAGE)
            check_errno(ei, errno.EINVAL)
        assert buf.closed
    os.close(fd)


def test_mapped_buffer_refusals(tmp_path):
    path = stamped_file(tmp_path / "f", 16)
    fd = open_fd(path, os.O_RDONLY)
    with pytest.raises(TypeError):
        MappedBuffer(-1, PAGE)
    with DaxWindow(2 * MiB) as w:
        w.map(fd, 0, 0, 4 * PAGE, False)
        for args, code in [((0, 4 * PAGE, True), errno.EACCES),         # PROT_WRITE on a read-only map
                           ((0, 4 * PAGE + 1, False), errno.EINVAL),    # the rounded-up page is a hole
                           ((8 * PAGE, PAGE, False), errno.EINVAL),     # a hole
                           ((100, PAGE, False), errno.EINVAL),          # misaligned
                           ((0, 0, False), errno.EINVAL)]:
            with pytest.raises(OSError) as ei:
                w.mapped_buffer(*args)
            check_errno(ei, code)
        w.zero(0, PAGE)
        buf = w.mapped_buffer(0, 2 * PAGE, False)       # zeroed pages: the buffer's own zeros
        assert buf[:PAGE] == bytes(PAGE) and stamp(buf[PAGE:]) == 2
        assert [m.zeroed for m in buf.mappings()] == [True, False]
        buf.close()
    os.close(fd)


def test_zero_file_tail_reaches_buffers_whose_window_range_is_gone(tmp_path):
    path = stamped_file(tmp_path / "f", 16)
    fd = open_fd(path)
    fid = file_id(fd)
    with DaxWindow(2 * MiB) as w:
        w.map(fd, 0, 0, 16 * PAGE, True)
        buf = w.mapped_buffer(0, 16 * PAGE, True)
        w.unmap(0, 16 * PAGE)
        w.map(fd, 8 * PAGE, 32 * PAGE, 8 * PAGE, False)
        done = w.zero_file_tail(fid, 10 * PAGE)
        assert [(p.window_offset, p.file_offset, p.length) for p in done] == [(34 * PAGE, 10 * PAGE, 6 * PAGE)]
        assert stamp(buf[9 * PAGE:]) == 10 and buf[10 * PAGE:] == bytes(6 * PAGE)
        assert stamp(w.copy_out(33 * PAGE, 4)) == 10 and w.copy_out(34 * PAGE, 6 * PAGE) == bytes(6 * PAGE)
        assert [(m.window_offset, m.zeroed) for m in buf.mappings()] == [(0, False), (10 * PAGE, True)]
        assert stamp(path.read_bytes()[15 * PAGE:]) == 16         # the file is untouched
        buf.close()
        for bad in ((fid, -1), (None, 0)):
            with pytest.raises(OSError) as ei:
                w.zero_file_tail(*bad)
            check_errno(ei, errno.EINVAL)
    os.close(fd)


@pytest.mark.parametrize("writable", [True, False])
def test_buffers_zeroed_for_a_truncation_see_the_file_again_when_its_range_is_mapped_again(
        tmp_path, writable):
    """Shrink, then grow back: a MAP_SHARED mapping sees the file again (Linux refaults the pages);
    here the range mapped again into the window (the host's SHMEM_MAP once the file grew) gives the
    buffers' zeroed pieces of that file range back their file pages."""
    path = stamped_file(tmp_path / "f", 16)
    fd = open_fd(path)
    fid = file_id(fd)
    with DaxWindow(2 * MiB) as w:
        w.map(fd, 0, 0, 16 * PAGE, True)
        buf = w.mapped_buffer(0, 16 * PAGE, writable)
        w.zero_file_tail(fid, 4 * PAGE)
        os.ftruncate(fd, 4 * PAGE)
        assert buf[8 * PAGE:8 * PAGE + 4] == bytes(4)
        os.ftruncate(fd, 16 * PAGE)
        os.pwrite(fd, (99).to_bytes(4, "little"), 8 * PAGE)
        w.map(fd, 6 * PAGE, 6 * PAGE, 4 * PAGE, True)     # part of the zeroed range, mapped again
        assert stamp(buf[8 * PAGE:]) == 99                 # the file's page, not the zeros
        assert buf[12 * PAGE:12 * PAGE + 4] == bytes(4)    # outside the range mapped again: zeros
        assert [(m.window_offset, m.length, m.zeroed) for m in buf.mappings()] == [
            (0, 4 * PAGE, False), (4 * PAGE, 2 * PAGE, True), (6 * PAGE, 4 * PAGE, False),
            (10 * PAGE, 6 * PAGE, True)]
        if writable:
            buf[9 * PAGE:9 * PAGE + 4] = (7).to_bytes(4, "little")
            assert stamp(os.pread(fd, 4, 9 * PAGE)) == 7   # stores reach the file again
        else:
            with pytest.raises(TypeError):
                memoryview(buf)[8 * PAGE] = 1
        buf.close()
    os.close(fd)


def test_a_writable_buffer_keeps_its_zeros_when_the_range_comes_back_read_only(tmp_path):
    path = stamped_file(tmp_path / "f", 4)
    fd = open_fd(path)
    with DaxWindow(2 * MiB) as w:
        w.map(fd, 0, 0, 4 * PAGE, True)
        buf = w.mapped_buffer(0, 4 * PAGE, True)
        w.zero_file_tail(file_id(fd), 0)
        w.map(fd, 0, 0, 4 * PAGE, False)
        assert buf[:4] == bytes(4) and all(m.zeroed for m in buf.mappings())
        buf[0:4] = b"safe"                                  # its own zero page: no fault
        buf.close()
    os.close(fd)


ATOMICS_CHILD = """
    import os, sys, time
    import atomics
    from vfscluster.guest.dax import DaxWindow
    path, n = sys.argv[1], int(sys.argv[2])
    fd = os.open(path, os.O_RDWR)
    with DaxWindow(2 << 20) as w:
        w.map(fd, 0, 0, 2 << 20, True)
        os.close(fd)
        with w.mapped_buffer(0, 4096, writable=True) as buf:
            mv = memoryview(buf)
            with atomics.atomicview(buffer=mv[0:8], atype=atomics.INT) as counter, \\
                    atomics.atomicview(buffer=mv[8:16], atype=atomics.INT) as ready:
                ready.fetch_inc()
                deadline = time.monotonic() + 30
                while ready.load() < 2:
                    if time.monotonic() > deadline:
                        sys.exit("the other side never started")
                for _ in range(n):
                    counter.fetch_inc()
            mv.release()
"""


def test_atomics_fetch_add_across_processes_is_exact(tmp_path):
    atomics = pytest.importorskip("atomics")
    path = tmp_path / "counter"
    path.write_bytes(bytes(2 * MiB))
    n = 20000
    env = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    children = [subprocess.Popen([sys.executable, "-c", textwrap.dedent(ATOMICS_CHILD), str(path), str(n)],
                                 env=env) for _ in range(2)]
    try:
        assert [c.wait(timeout=50) for c in children] == [0, 0]
    finally:
        for c in children:
            if c.poll() is None:
                c.kill()
                c.wait()
    fd = open_fd(path)
    with DaxWindow(2 * MiB) as w:
        w.map(fd, 0, 0, 2 * MiB, True)
        with w.mapped_buffer(0, 8, writable=True) as buf:
            with atomics.atomicview(buffer=buf, atype=atomics.INT) as a:    # the buffer itself exports
                assert a.load() == 2 * n
    os.close(fd)


# ------------------------------------------------------------------------------------- RangeAllocator


def test_kernel_constants():
    assert FUSE_DAX_SZ == 2 * MiB
    assert FUSE_DAX_RECLAIM_THRESHOLD == 20         # percent, fs/fuse/dax.c
    assert FUSE_DAX_RECLAIM_CHUNK == 10


def test_allocator_alloc_free_and_threshold():
    r = RangeAllocator(10)
    assert r.free_threshold == 2 and r.free_fraction == 1.0 and not r.needs_reclaim
    got = [r.alloc() for _ in range(10)]
    assert got == list(range(10)) and r.alloc() is None
    assert r.nfree == 0 and r.free_fraction == 0.0 and r.needs_reclaim
    r.free(3)
    r.free(7)
    assert r.nfree == 2 and not r.needs_reclaim and r.free_fraction == pytest.approx(0.2)
    assert r.alloc() == 3 and r.needs_reclaim                   # free list order: first freed first
    assert RangeAllocator(3).free_threshold == 1                # max(3 * 20 // 100, 1)
    assert RangeAllocator(512).free_threshold == 102


def test_allocator_misuse():
    r = RangeAllocator(4)
    for bad in (lambda: r.free(0), lambda: r.pin(0), lambda: r.touch(9), lambda: r.free(-1),
                lambda: RangeAllocator(0)):
        with pytest.raises(OSError) as ei:
            bad()
        check_errno(ei, errno.EINVAL)
    i = r.alloc()
    with pytest.raises(OSError) as ei:
        r.unpin(i)
    check_errno(ei, errno.EINVAL)
    r.pin(i)
    with pytest.raises(OSError) as ei:
        r.free(i)
    check_errno(ei, errno.EBUSY)
    assert r.unpin(i) == 0
    r.free(i)
    with pytest.raises(OSError) as ei:
        r.free(i)
    check_errno(ei, errno.EINVAL)


def test_allocator_lru_pins_and_reclaim_candidates():
    r = RangeAllocator(8)
    for _ in range(6):
        r.alloc()
    assert r.busy() == [0, 1, 2, 3, 4, 5]
    r.touch(0)
    r.touch(2)
    assert r.busy() == [1, 3, 4, 5, 0, 2]
    assert r.pin(1) == 1 and r.pin(1) == 2 and r.pin(4) == 1 and r.pins(1) == 2
    assert r.reclaim_candidates(3) == [3, 5, 0]
    assert r.reclaim_candidates() == [3, 5, 0, 2]
    r.unpin(1)
    assert r.reclaim_candidates() == [3, 5, 0, 2]
    r.unpin(1)
    assert r.reclaim_candidates() == [1, 3, 5, 0, 2]
    assert r.busy() == [1, 3, 4, 5, 0, 2]                       # candidates change nothing
    for i in r.reclaim_candidates(2):
        r.free(i)
    assert r.busy() == [4, 5, 0, 2] and r.nfree == 4


def test_allocator_wait_free():
    r = RangeAllocator(1)
    i = r.alloc()
    assert r.wait_free(timeout=0) is False
    result = []
    t = threading.Thread(target=lambda: result.append(r.wait_free(timeout=30)))
    t.start()
    r.free(i)
    t.join()
    assert result == [True]


def test_allocator_is_thread_safe():
    r = RangeAllocator(16)
    held: set[int] = set()
    lock = threading.Lock()
    errors: list[str] = []

    def worker() -> None:
        for _ in range(2000):
            i = r.alloc()
            if i is None:
                continue
            with lock:
                if i in held:
                    errors.append(f"range {i} handed out twice")
                held.add(i)
            r.pin(i)
            r.touch(i)
            r.unpin(i)
            with lock:
                held.discard(i)
            r.free(i)

    run_threads(lambda _: worker(), 8, None)
    assert errors == [] and r.nfree == 16 and r.busy() == [] and sorted(r._free) == list(range(16))
