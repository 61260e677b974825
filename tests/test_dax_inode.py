"""dax=inode end to end: real vfs-hostd and guest processes.  The host sets FUSE_ATTR_DAX in the
attributes of regular files carrying the persistent flag FS_DAX_FL (``chattr +x``; fallback: the
user xattr ``user.vfscluster.dax``) for sessions that negotiated HAS_INODE_DAX; a dax=inode guest
uses the DAX window for exactly those files and FUSE_READ / FUSE_WRITE for the others.  A dax=always
guest and a guest without DAX in the same cluster are unaffected."""

from __future__ import annotations

import errno
import fcntl
import mmap
import os
import struct

import pytest

from vfscluster import Cluster, Topology
from vfscluster.fuse.passthrough.daxhooks import DAX_XATTR, FS_DAX_FL, FS_IOC_GETFLAGS

pytestmark = pytest.mark.timeout(120)
PAGE = mmap.PAGESIZE
FS_IOC_SETFLAGS = 0x40086602


def set_dax_flag(path, on: bool = True) -> str:
    """``chattr +x`` (``-x``) on ``path``; where the file system has no such flag, the fallback
    xattr.  Returns which one was used."""
    fd = os.open(path, os.O_RDONLY)
    try:
        flags = struct.unpack("=i", fcntl.ioctl(fd, FS_IOC_GETFLAGS, bytes(8))[:4])[0]
        flags = flags | FS_DAX_FL if on else flags & ~FS_DAX_FL
        fcntl.ioctl(fd, FS_IOC_SETFLAGS, struct.pack("=i", flags) + bytes(4))
        return "chattr"
    except OSError:
        if on:
            os.setxattr(path, DAX_XATTR, b"1")
        else:
            try:
                os.removexattr(path, DAX_XATTR)
            except OSError as e:
                if e.errno != errno.ENODATA:
                    raise
        return "xattr"
    finally:
        os.close(fd)


# ----------------------------------------------------------------------------- in-guest helpers

def g_reads(gos, name, n, offset, times=2):
    """Open ``name``, pread it ``times`` times; (data, requests of each pread), DAX stats moves."""
    fd = gos.open(name, os.O_RDONLY)
    try:
        out, asked = [], []
        for _ in range(times):
            before = gos.client.requests
            out.append(gos.pread(fd, n, offset))
            asked.append(gos.client.requests - before)
        assert len(set(out)) == 1
        return out[0], asked
    finally:
        gos.close(fd)


def g_write(gos, name, data, offset):
    """pwrite inside the file twice; (written, requests the second write took).  (Through DAX the
    first may ask GETATTR and a writable SETUPMAPPING; the second sends nothing.)"""
    fd = gos.open(name, os.O_RDWR)
    try:
        gos.pwrite(fd, data, offset)
        before = gos.client.requests
        n = gos.pwrite(fd, data, offset)
        return n, gos.client.requests - before
    finally:
        gos.close(fd)


def g_map_read(gos, name, n):
    """mmap the file read-only and read ``n`` bytes; the errno instead when refused."""
    fd = gos.open(name, os.O_RDONLY)
    try:
        try:
            with gos.mmap(fd, PAGE, 0, mmap.PROT_READ) as buf:
                return bytes(buf[0:n])
        except OSError as exc:
            return exc.errno
    finally:
        gos.close(fd)


def g_setups(gos):
    return gos.client.dax.gdax.stats["setups"] if gos.client.dax is not None else None


def g_dax_mode(gos):
    return None if gos.client.dax is None else gos.client.dax.mode


# ----------------------------------------------------------------------------- tests

@pytest.fixture
def share_files(share):
    (share / "marked").write_bytes(b"m" * 3 * PAGE)
    (share / "plain").write_bytes(b"p" * 3 * PAGE)
    set_dax_flag(share / "marked")
    return share


@pytest.fixture
def cluster(share_files):
    topo = Topology(share_files, guests=[{"name": "inode", "dax": "inode", "window_size": 16 << 20},
                                         {"name": "always", "dax": "always", "window_size": 16 << 20},
                                         {"name": "stock"}])
    with Cluster.start(topo) as c:
        yield c


def test_dax_inode_guest_uses_the_window_only_for_marked_files(cluster, share_files):
    ig, _, _ = cluster.guests
    assert ig.run(g_dax_mode) == "inode"
    # a marked file: after the first access maps its chunk, reads send no request at all
    data, asked = ig.run(g_reads, "marked", 5, 10)
    assert data == b"mmmmm" and asked[1] == 0
    assert ig.run(g_setups) >= 1
    n, asked_w = ig.run(g_write, "marked", b"DAX", 100)
    assert (n, asked_w) == (3, 0)                     # stored through the window
    assert ig.run(g_map_read, "marked", 4) == b"mmmm"
    # an unmarked file: every read is a FUSE_READ, no mapping is set up, mmap is ENODEV
    setups = ig.run(g_setups)
    data, asked = ig.run(g_reads, "plain", 5, 10)
    assert data == b"ppppp" and asked == [1, 1]
    n, asked_w = ig.run(g_write, "plain", b"FUSE", 200)
    assert (n, asked_w) == (4, 1)                     # one FUSE_WRITE
    assert ig.run(g_map_read, "plain", 4) == errno.ENODEV
    assert ig.run(g_setups) == setups
    assert (share_files / "plain").read_bytes()[200:204] == b"FUSE"
    assert ig.run(g_reads, "marked", 3, 100)[0] == b"DAX"


def test_other_guests_are_unaffected(cluster):
    ig, ag, sg = cluster.guests
    assert ag.run(g_dax_mode) == "always" and sg.run(g_dax_mode) is None
    # dax=always: both files through the window
    for name, ch in (("marked", b"m"), ("plain", b"p")):
        data, asked = ag.run(g_reads, name, 4, 2 * PAGE)
        assert data == ch * 4 and asked[1] == 0
        assert ag.run(g_map_read, name, 2) == ch * 2
    # no DAX: FUSE_READ for both, mmap is ENODEV
    for name, ch in (("marked", b"m"), ("plain", b"p")):
        data, asked = sg.run(g_reads, name, 4, 2 * PAGE)
        assert data == ch * 4 and asked == [1, 1]
        assert sg.run(g_map_read, name, 2) == errno.ENODEV
    # what the dax=inode guest writes through its window the others read
    assert ig.run(g_write, "marked", b"shared", PAGE) == (6, 0)
    assert ag.run(g_reads, "marked", 6, PAGE)[0] == b"shared"
    assert sg.run(g_reads, "marked", 6, PAGE)[0] == b"shared"


def test_the_flag_is_decided_again_at_the_next_open(cluster, share_files):
    ig = cluster.guests[0]
    assert ig.run(g_reads, "plain", 2, 0) == (b"pp", [1, 1])
    set_dax_flag(share_files / "plain")
    data, asked = ig.run(g_reads, "plain", 2, 0)
    assert data == b"pp" and asked[1] == 0
    set_dax_flag(share_files / "marked", on=False)
    assert ig.run(g_reads, "marked", 2, 0) == (b"mm", [1, 1])
    assert ig.run(g_map_read, "marked", 2) == errno.ENODEV


def test_dax_inode_from_toml(share_files, tmp_path):
    (tmp_path / "t.toml").write_text(f'share = "{share_files}"\n[[guests]]\nname = "i"\ndax = "inode"\n'
                                     f'window_size = {8 << 20}\n')
    topo = Topology.load(tmp_path / "t.toml")
    assert topo.guests[0].dax == "inode"
    with Cluster.start(topo) as c:
        g = c.guests[0]
        assert g.run(g_reads, "marked", 1, 0)[1][1] == 0
        assert g.run(g_reads, "plain", 1, 0) == (b"p", [1, 1])
