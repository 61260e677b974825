"""vfscluster.fuse.passthrough.handles: fh -> fd per session."""

from __future__ import annotations

import errno
import os

import pytest

from vfscluster.fuse.passthrough.handles import Handle, HandleTable, close_handle


def _fd_open(fd: int) -> bool:
    try:
        os.fstat(fd)
        return True
    except OSError:
        return False


def test_fhs_are_unique_and_per_session(tmp_path):
    t = HandleTable()
    h1 = Handle(os.open(tmp_path, os.O_RDONLY), 1, is_dir=True)
    h2 = Handle(os.open(tmp_path, os.O_RDONLY), 1, is_dir=True)
    fh1, fh2 = t.add(0, h1), t.add(1, h2)
    assert fh1 != fh2
    assert t.get(0, fh1) is h1 and t.get(1, fh2) is h2
    with pytest.raises(OSError) as info:
        t.get(1, fh1)
    assert info.value.errno == errno.EBADF
    assert t.count() == 2 and t.count(0) == 1
    assert t.remove(0, fh1) is h1
    with pytest.raises(OSError):
        t.remove(0, fh1)
    close_handle(h1)
    close_handle(h1)  # once only
    assert h1.fd == -1
    t.close()
    assert not _fd_open(h2.fd) and h2.fd == -1


def test_drop_session_closes_its_fds(tmp_path):
    t = HandleTable()
    fds = [os.open(tmp_path, os.O_RDONLY) for _ in range(3)]
    for fd in fds[:2]:
        t.add(7, Handle(fd, 1))
    other = Handle(fds[2], 1)
    t.add(8, other)
    assert t.drop_session(7) == 2
    assert not any(_fd_open(fd) for fd in fds[:2]) and _fd_open(fds[2])
    assert t.drop_session(7) == 0
    t.close()
