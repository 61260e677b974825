"""vfscluster.fuse.passthrough.syscalls: renameat2, fallocate, syncfs, utimensat via ctypes."""

from __future__ import annotations

import errno
import os

import pytest

from vfscluster.fuse.passthrough import syscalls


def test_renameat2(tmp_path):
    (tmp_path / "a").write_bytes(b"a")
    (tmp_path / "b").write_bytes(b"b")
    d = os.open(tmp_path, os.O_PATH)
    try:
        with pytest.raises(FileExistsError):
            syscalls.renameat2(d, b"a", d, b"b", syscalls.RENAME_NOREPLACE)
        syscalls.renameat2(d, b"a", d, b"b", syscalls.RENAME_EXCHANGE)
        assert (tmp_path / "a").read_bytes() == b"b" and (tmp_path / "b").read_bytes() == b"a"
        with pytest.raises(OSError) as info:
            syscalls.renameat2(d, b"a", d, b"c", syscalls.RENAME_EXCHANGE)
        assert info.value.errno == errno.ENOENT
    finally:
        os.close(d)


def test_fallocate_and_syncfs(tmp_path):
    fd = os.open(tmp_path / "f", os.O_RDWR | os.O_CREAT)
    try:
        syscalls.fallocate(fd, 0, 0, 4096)
        assert os.fstat(fd).st_size == 4096
        with pytest.raises(OSError) as info:
            syscalls.fallocate(fd, 0, 0, 0)
        assert info.value.errno == errno.EINVAL
        syscalls.syncfs(fd)
    finally:
        os.close(fd)
    with pytest.raises(OSError) as info:
        syscalls.syncfs(-1)
    assert info.value.errno == errno.EBADF


def test_utimensat_omit_and_now(tmp_path):
    p = tmp_path / "f"
    p.write_bytes(b"")
    os.utime(p, ns=(10**9, 2 * 10**9))
    syscalls.utimensat(str(p), None, 5 * 10**9)
    st = os.stat(p)
    assert (st.st_atime_ns, st.st_mtime_ns) == (10**9, 5 * 10**9)
    syscalls.utimensat(str(p), None, None, atime_now=True)
    st = os.stat(p)
    assert st.st_atime_ns > 10**18 and st.st_mtime_ns == 5 * 10**9
    with pytest.raises(FileNotFoundError):
        syscalls.utimensat(str(tmp_path / "missing"), 0, 0)


def test_cached_pages_counts_what_the_page_cache_holds(tmp_path):
    page = os.sysconf("SC_PAGE_SIZE")
    fd = os.open(tmp_path / "f", os.O_RDWR | os.O_CREAT)
    try:
        os.write(fd, os.urandom(64 * page))
        os.fsync(fd)
        try:
            assert syscalls.cached_pages(fd, 0, 64 * page) == 64
        except OSError as exc:
            if exc.errno == errno.ENOSYS:
                pytest.skip("cachestat(2) needs Linux 6.5")
            raise
        assert syscalls.cached_pages(fd, 8 * page, 2 * page) == 2
        assert syscalls.cached_pages(fd, 64 * page, page) == 0             # past the end
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)                  # clean pages: evicted
        if syscalls.cached_pages(fd, 0, 64 * page) == 64:
            pytest.skip("this file system keeps its pages (tmpfs)")
        assert syscalls.cached_pages(fd, 0, 64 * page) < 64
    finally:
        os.close(fd)
    with pytest.raises(OSError) as info:
        syscalls.cached_pages(fd, 0, page)
    assert info.value.errno == errno.EBADF
