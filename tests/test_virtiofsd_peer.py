"""Our guest emulator (``GuestMachine``: vhost-user front-end + FUSE client + GuestOS) drives the real
C virtiofsd of QEMU 7.2 (``/usr/lib/qemu/virtiofsd``, one connection, one request queue): basic
operations checked against the host directory, and the differential conformance machine of
``test_conformance.py`` run on both hosts, vfs-hostd and the C virtiofsd.  Where virtiofsd answers
differently from a local file system, ``deploy/qemu/VIRTIOFSD-NOTES.md`` says how and why.
"""

from __future__ import annotations

import errno
import os
import secrets
import stat

import pytest

from realpeers import boot, require_virtiofsd, rundir  # noqa: F401 (fixture)
from test_conformance import _run_machine_in_guest as _run_machine
from vfscluster.guest.machine import GuestMachine

TAG = "vfs"
# virtiofsd options of the runs below: cache=none as our emulator's cache mode, xattr on (it is
# off by default: every xattr call would be ENOTSUP), default sandbox (namespace).
VIRTIOFSD_ARGS = ["-o", "xattr"]


def _ram_name() -> str:
    return f"/vfsc-{os.getpid()}-{secrets.token_hex(3)}-x-ram"


class Peer:
    """A back end (``virtiofsd`` or ``vfs-hostd``) serving ``share`` and one guest emulator
    mounted on it."""

    def __init__(self, kind: str, share: str, rundir) -> None:
        sock = rundir / f"{kind}.sock"
        if kind == "virtiofsd":
            self.daemon = boot.VirtiofsdDaemon(share, sock, cache="none", log_path=rundir / f"{kind}.log",
                                               extra_args=VIRTIOFSD_ARGS)
        else:
            self.daemon = boot.HostDaemon(share, sock, tag=TAG, log_path=rundir / f"{kind}.log",
                                          log_level="WARNING")
        self.machine = None
        try:
            self.machine = GuestMachine(f"g-{kind}", ram_name=_ram_name(), ram_size=64 << 20)
            self.machine.add_device(self.daemon.socket_path, TAG)
            self.os = self.machine.mount(TAG).os
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        try:
            if self.machine is not None:
                self.machine.close()
        finally:
            # virtiofsd exits by itself once its one front-end has gone; vfs-hostd is stopped
            self.daemon.stop()


@pytest.fixture(params=["virtiofsd", "vfs-hostd"])
def peer(request, share, rundir):
    if request.param == "virtiofsd":
        require_virtiofsd()
    p = Peer(request.param, str(share), rundir)
    try:
        yield p
    finally:
        p.close()


def _write(gos, path, data, flags=os.O_CREAT | os.O_WRONLY | os.O_TRUNC, mode=0o644):
    fd = gos.open(path, flags, mode)
    try:
        return gos.write(fd, data)
    finally:
        gos.close(fd)


def _read(gos, path, n=1 << 20):
    fd = gos.open(path, os.O_RDONLY)
    try:
        return gos.read(fd, n)
    finally:
        gos.close(fd)


@pytest.mark.timeout(60)
def test_basic_operations(peer, share):
    gos = peer.os
    (share / "host.txt").write_bytes(b"from the host\n")
    assert _read(gos, "host.txt") == b"from the host\n"
    assert gos.stat("host.txt").st_size == 14
    assert gos.stat("host.txt").st_ino == (share / "host.txt").stat().st_ino

    assert _write(gos, "a.txt", b"hello") == 5
    fd = gos.open("a.txt", os.O_WRONLY | os.O_APPEND)
    gos.write(fd, b" world")
    gos.close(fd)
    assert (share / "a.txt").read_bytes() == b"hello world"
    big = os.urandom(3 << 20) + b"tail"                       # several max_write chunks
    _write(gos, "big.bin", big)
    assert (share / "big.bin").read_bytes() == big
    assert _read(gos, "big.bin", 4 << 20) == big

    gos.mkdir("d")
    gos.mkdir("d/e", 0o750)
    assert stat.S_IMODE((share / "d" / "e").stat().st_mode) == 0o750 & ~os.umask(os.umask(0))
    _write(gos, "d/e/f", b"x")
    assert sorted(gos.listdir("d")) == ["e"]
    with pytest.raises(OSError) as e:
        gos.rmdir("d")
    assert e.value.errno == errno.ENOTEMPTY

    gos.rename("a.txt", "b.txt")
    _write(gos, "c.txt", b"other")
    gos.rename("b.txt", "c.txt")                               # over an existing file
    assert (share / "c.txt").read_bytes() == b"hello world"
    assert not (share / "a.txt").exists() and not (share / "b.txt").exists()

    gos.symlink("c.txt", "link")
    assert gos.readlink("link") == "c.txt"
    assert os.readlink(share / "link") == "c.txt"
    assert _read(gos, "link") == b"hello world"
    assert stat.S_ISLNK(gos.lstat("link").st_mode)

    gos.link("c.txt", "hard")
    assert gos.stat("c.txt").st_nlink == 2
    assert (share / "hard").stat().st_ino == (share / "c.txt").stat().st_ino

    gos.truncate("c.txt", 3)
    assert gos.stat("hard").st_size == 3 and (share / "c.txt").read_bytes() == b"hel"
    gos.chmod("c.txt", 0o600)
    assert stat.S_IMODE((share / "c.txt").stat().st_mode) == 0o600
    gos.utime("c.txt", ns=(1_000_000_007, 2_000_000_009))
    assert (share / "c.txt").stat().st_mtime_ns == 2_000_000_009

    gos.setxattr("c.txt", "user.k", b"v")
    assert gos.getxattr("c.txt", "user.k") == b"v"
    assert "user.k" in gos.listxattr("c.txt")
    assert os.getxattr(share / "c.txt", "user.k") == b"v"

    for n in range(300):
        _write(gos, f"d/n{n}", b"")
    assert len(gos.listdir("d")) == 301
    assert {e.name for e in gos.scandir("d") if e.is_file()} == {f"n{n}" for n in range(300)}

    gos.unlink("hard")
    gos.unlink("link")
    with pytest.raises(FileNotFoundError):
        gos.stat("hard")
    assert sorted(os.listdir(share)) == ["big.bin", "c.txt", "d", "host.txt"]


@pytest.mark.timeout(240)
def test_conformance_on_both_hosts(peer, share):
    """The differential machine (GuestOS vs ``os`` on a local directory) with the guest emulator on
    the C virtiofsd and on vfs-hostd: the same random sequences, the same answers from both hosts.
    CONFORMANCE_EXAMPLES / CONFORMANCE_STEPS enlarge the search."""
    ran = _run_machine(peer.os, int(os.environ.get("CONFORMANCE_EXAMPLES", 60)),
                       int(os.environ.get("CONFORMANCE_STEPS", 30)))
    assert ran > 0
    assert os.listdir(share) == []


# ------------------------------------------------------------------- documented differences
# Each assertion below is a virtiofsd behaviour written down in deploy/qemu/VIRTIOFSD-NOTES.md; if
# a new virtiofsd changes one, this test says which note to update.

@pytest.mark.timeout(60)
def test_documented_virtiofsd_behaviours(share, rundir):
    require_virtiofsd()
    from vfscluster.fuse.abi import ROOT_ID, InitFlags, Opcode, OpenIn, OpenOut
    os.mkfifo(share / "fifo")
    (share / "f").write_bytes(b"x")
    daemon = boot.VirtiofsdDaemon(str(share), rundir / "v.sock", cache="none", log_path=rundir / "v.log")
    m = GuestMachine("g", ram_name=_ram_name(), ram_size=64 << 20)
    try:
        m.add_device(daemon.socket_path, TAG)
        mount = m.mount(TAG)
        gos, client = mount.os, mount.client
        # N1: FUSE 7.36 (QEMU 7.2's copy of fuse_kernel.h); no READDIRPLUS with cache=none
        assert client.info.minor == 36
        assert not client.flags & InitFlags.DO_READDIRPLUS
        assert client.flags & InitFlags.READDIRPLUS_AUTO
        # N2: extended attributes are off unless -o xattr: every call is EOPNOTSUPP
        for call in (lambda: gos.getxattr("f", "user.x"), lambda: gos.setxattr("f", "user.x", b"1"),
                     lambda: gos.listxattr("f"), lambda: gos.removexattr("f", "user.x")):
            with pytest.raises(OSError) as e:
                call()
            assert e.value.errno == errno.EOPNOTSUPP
        # N3: OPEN of a FIFO is EBADF (vfs-hostd: ENXIO; a kernel never sends it: a guest opens
        # a FIFO as a pipe of its own, and so does GuestOS)
        entry = client.lookup(ROOT_ID, b"fifo")
        err, _ = client.transport.request(Opcode.OPEN, entry.nodeid,
                                          [OpenIn(os.O_RDONLY | os.O_NONBLOCK).pack()], OpenOut.SIZE)
        client.put(entry.nodeid)
        assert err == -errno.EBADF
        fd = gos.open("fifo", os.O_RDONLY | os.O_NONBLOCK)
        assert stat.S_ISFIFO(gos.fstat(fd).st_mode)
        gos.close(fd)
        # N4: no DAX and no O_TMPFILE in QEMU 7.2's virtiofsd: ENOSYS
        for opcode, args in ((Opcode.SETUPMAPPING, [bytes(40)]), (Opcode.TMPFILE, [bytes(16), b"t\0"])):
            err, _ = client.transport.request(opcode, 1, args, 256)
            assert err == -errno.ENOSYS, (opcode, err)
    finally:
        m.close()
    # N5: one connection only: once its front-end has gone, virtiofsd exits (status 0)
    assert daemon.wait(10) == 0, daemon.log()
    daemon.stop()


@pytest.mark.timeout(60)
def test_virtiofsd_refuses_a_second_request_queue(share, rundir):
    """N6: virtiofsd serves hiprio + one request queue (GET_QUEUE_NUM = 2); a device with two request
    queues is refused at once with EINVAL (QEMU itself would go on and the guest would hang)."""
    require_virtiofsd()
    daemon = boot.VirtiofsdDaemon(str(share), rundir / "v.sock", cache="none", log_path=rundir / "v.log")
    m = GuestMachine("g", ram_name=_ram_name(), ram_size=64 << 20)
    try:
        with pytest.raises(OSError) as e:
            m.add_device(daemon.socket_path, TAG, num_request_queues=2)
        assert e.value.errno == errno.EINVAL and "serves 2 queues" in str(e.value)
    finally:
        m.close()
    assert daemon.wait(10) is not None, daemon.log()
    daemon.stop()
