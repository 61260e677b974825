"""vfscluster.fuse.passthrough.confine: one-component names, O_PATH steps, reopen, is_inside."""

from __future__ import annotations

import errno
import os
import stat

import pytest

from vfscluster.fuse.passthrough.confine import (check_name, is_inside, open_child, proc_path,
                                                 reopen)


@pytest.mark.parametrize("name", [b"", b"/", b"a/b", b"../x", b"/etc", b"a\0"])
def test_check_name_refuses(name):
    with pytest.raises(OSError) as info:
        check_name(name)
    assert info.value.errno == errno.EINVAL


@pytest.mark.parametrize("name", [b"a", b".", b"..", b"...", b" x", "é".encode()])
def test_check_name_accepts(name):
    check_name(name)


def test_open_child_never_follows(tmp_path):
    (tmp_path / "t").write_bytes(b"t")
    os.symlink("t", tmp_path / "l")
    d = os.open(tmp_path, os.O_PATH)
    fd = open_child(d, b"l")
    try:
        assert stat.S_ISLNK(os.fstat(fd).st_mode)
        assert os.stat(proc_path(fd)).st_ino == os.lstat(tmp_path / "l").st_ino
        with pytest.raises(OSError) as info:
            reopen(fd, os.fstat(fd).st_mode, os.O_RDONLY)
        assert info.value.errno == errno.ELOOP
    finally:
        os.close(fd)
        os.close(d)


def test_reopen(tmp_path):
    (tmp_path / "f").write_bytes(b"abc")
    os.mkfifo(tmp_path / "p")
    d = os.open(tmp_path, os.O_PATH)
    f = open_child(d, b"f")
    p = open_child(d, b"p")
    try:
        io = reopen(f, stat.S_IFREG, os.O_RDONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW)
        assert os.read(io, 3) == b"abc"
        os.close(io)
        dirfd = reopen(d, stat.S_IFDIR, os.O_RDONLY)
        assert sorted(os.listdir(dirfd)) == ["f", "p"]
        os.close(dirfd)
        with pytest.raises(OSError) as info:
            reopen(p, stat.S_IFIFO, os.O_RDONLY)
        assert info.value.errno == errno.ENXIO
    finally:
        for fd in (f, p, d):
            os.close(fd)


def test_is_inside(tmp_path):
    (tmp_path / "share" / "a" / "b").mkdir(parents=True)
    (tmp_path / "out").mkdir()
    root = os.open(tmp_path / "share", os.O_PATH)
    st = os.fstat(root)
    key = (st.st_dev, st.st_ino)
    b = os.open(tmp_path / "share" / "a" / "b", os.O_PATH)
    out = os.open(tmp_path / "out", os.O_PATH)
    try:
        assert is_inside(root, key) and is_inside(b, key)
        assert not is_inside(out, key)
        fds = len(os.listdir("/proc/self/fd"))
        is_inside(b, key)
        is_inside(out, key)
        assert len(os.listdir("/proc/self/fd")) == fds  # nothing leaked
    finally:
        for fd in (root, b, out):
            os.close(fd)
