"""vfscluster.fuse.passthrough.locks: FUSE locks as OFD locks and flock on a handle's fd."""

from __future__ import annotations

import errno
import fcntl
import os

import pytest

from vfscluster.fuse.abi import LK_FLOCK, FileLock
from vfscluster.fuse.passthrough import locks

RD, WR, UN = fcntl.F_RDLCK, fcntl.F_WRLCK, fcntl.F_UNLCK
EOF_ = locks.OFFSET_MAX


@pytest.fixture
def fds(tmp_path):
    p = tmp_path / "f"
    p.write_bytes(b"x" * 100)
    a, b = os.open(p, os.O_RDWR), os.open(p, os.O_RDWR)  # two open file descriptions
    yield a, b
    os.close(a)
    os.close(b)


def test_to_flock_ranges():
    assert locks.to_flock(FileLock(10, 19, WR, 0)) == locks._FLOCK.pack(WR, 0, 10, 10, 0)
    assert locks.to_flock(FileLock(5, EOF_, RD, 0)) == locks._FLOCK.pack(RD, 0, 5, 0, 0)
    for bad in (FileLock(5, 4, RD, 0), FileLock(0, 1, 7, 0), FileLock(1 << 63, EOF_, RD, 0)):
        with pytest.raises(OSError) as info:
            locks.to_flock(bad)
        assert info.value.errno == errno.EINVAL


def test_ofd_locks_conflict_between_descriptions(fds):
    a, b = fds
    locks.setlk(a, FileLock(10, 19, WR, 0), 0)
    got = locks.getlk(b, FileLock(0, EOF_, RD, 0), 0)
    assert (got.start, got.end, got.type, got.pid) == (10, 19, WR, 0)
    with pytest.raises(OSError) as info:
        locks.setlk(b, FileLock(15, 15, RD, 0), 0)
    assert info.value.errno in (errno.EAGAIN, errno.EACCES)
    locks.setlk(b, FileLock(20, EOF_, RD, 0), 0)
    assert locks.getlk(a, FileLock(0, 9, WR, 0), 0).type == UN
    got = locks.getlk(a, FileLock(50, 60, WR, 0), 0)
    assert (got.start, got.end, got.type) == (20, EOF_, RD)
    os.close(os.dup(a))  # closing another fd of the process drops nothing (unlike F_SETLK)
    assert locks.getlk(b, FileLock(10, 10, RD, 0), 0).type == WR
    locks.setlk(a, FileLock(0, EOF_, UN, 0), 0)
    assert locks.getlk(b, FileLock(0, 19, WR, 0), 0).type == UN


def test_flock(fds):
    a, b = fds
    locks.setlk(a, FileLock(0, EOF_, RD, 0), LK_FLOCK)
    locks.setlk(b, FileLock(0, EOF_, RD, 0), LK_FLOCK)
    with pytest.raises(BlockingIOError):
        locks.setlk(b, FileLock(0, EOF_, WR, 0), LK_FLOCK)
    locks.setlk(a, FileLock(0, EOF_, UN, 0), LK_FLOCK)
    locks.setlk(b, FileLock(0, EOF_, WR, 0), LK_FLOCK)
    with pytest.raises(OSError) as info:
        locks.getlk(a, FileLock(0, EOF_, RD, 0), LK_FLOCK)
    assert info.value.errno == errno.EINVAL
