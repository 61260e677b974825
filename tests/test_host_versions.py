"""The metadata-version table: host writes, a guest (another process) reads, never torn."""

import os
import secrets

import multiprocess
import pytest

from vfscluster.guest.versions import VersionView
from vfscluster.host.versions import VersionTable
from vfscluster.errors import RemoteProtocolError


def _name():
    return f"/vfsc-{os.getpid()}-{secrets.token_hex(3)}-vt"


def test_bump_and_read_through_a_read_only_view():
    t = VersionTable(_name(), slots=8)
    try:
        v = VersionView(t.fd)
        assert v.slots == 8 and v.version(3) == 0
        t.bump([3, 11])                 # same slot: bumped once
        assert v.version(3) == 1 and v.version(11) == 1 and v.version(4) == 0
        t.bump([3, 4])
        assert (v.version(3), v.version(4)) == (2, 1)
        gen = v.generation()
        t.bump_all()
        assert v.generation() == gen + 1 and v.version(5) == 1
        with pytest.raises(TypeError):
            v._words[4] = 7             # read-only mapping
        v.close()
    finally:
        t.close()
    assert not os.path.exists("/dev/shm" + t.name)


def test_view_refuses_garbage(tmp_path):
    p = tmp_path / "x"
    p.write_bytes(b"\0" * 64)
    fd = os.open(p, os.O_RDONLY)
    try:
        with pytest.raises(RemoteProtocolError):
            VersionView(fd)
    finally:
        os.close(fd)


def _reader(fd, n):
    v = VersionView(fd)
    last, bad = 0, 0
    for _ in range(n):
        x = v.version(1)
        if x < last:
            bad += 1
        last = x
    return bad


def test_reads_in_another_process_are_never_torn():
    t = VersionTable(_name(), slots=4)
    try:
        words = t._words
        words[4 + 1] = (1 << 32) - 64     # reads cross the 32-bit boundary while we bump
        ctx = multiprocess.get_context("fork")
        with ctx.Pool(1) as pool:
            res = pool.apply_async(_reader, (t.fd, 300_000))
            for _ in range(200_000):
                t.bump([1])
                if res.ready():
                    break
            assert res.get(60) == 0
    finally:
        t.close()


def test_the_fd_given_to_guests_cannot_be_mapped_writable():
    import mmap
    t = VersionTable(_name(), slots=8, unlink_name=True)
    try:
        assert not os.path.exists("/dev/shm" + t.name)      # unlinked at once: nothing to leak
        assert os.fstat(t.ro_fd).st_size == t.size == 32 + 8 * 8
        with pytest.raises(PermissionError):
            mmap.mmap(t.ro_fd, t.size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        v = VersionView(t.ro_fd)
        t.bump([5])
        assert v.version(5) == 1
        with pytest.raises(TypeError):
            v.mem[0] = 1
        v.close()
    finally:
        t.close()
        t.close()                                            # idempotent
