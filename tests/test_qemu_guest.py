"""A real Linux guest (Debian's kernel under QEMU, ``deploy/qemu/boot.py``) mounts vfs-hostd with
``mount -t virtiofs`` and works on the share; then the same with two guest emulators on the same
host socket; then the boot script's command line; then a host that dies under a booted guest.

Each boot is bounded (``run_guest`` timeout, guest watchdog) and every test has a pytest timeout.
"""

from __future__ import annotations

import hashlib
import os
import re
import signal
import stat
import subprocess
import sys
import threading

import pytest

from realpeers import FileWaiter, boot, keep_artifact, read_trace, require_qemu, rundir  # noqa: F401 (fixture)

TAG = "vfs"
BOOT_TIMEOUT = 150          # QEMU is killed after this; the guest's watchdog fires 10 s before


@pytest.fixture(autouse=True)
def _needs_qemu():
    require_qemu()


def _sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _sections(output: str) -> dict[str, list[str]]:
    """The guest's output split at its ``== name`` lines."""
    out: dict[str, list[str]] = {}
    cur = out.setdefault("", [])
    for line in output.splitlines():
        if line.startswith("== "):
            cur = out.setdefault(line[3:].strip(), [])
        else:
            cur.append(line)
    return out


GUEST_SCRIPT = r"""
set -e
echo "== write"
echo line1 > a.txt
echo line2 >> a.txt
printf 'no newline' > p.txt
printf ' appended' >> p.txt
cat a.txt p.txt; echo
echo "== dd"
dd if=/dev/urandom of=big.bin bs=1M count=16 2>/dev/null
sha256sum big.bin
echo 3 > /proc/sys/vm/drop_caches          # read it back from the host; evicted inodes are FORGOTten
sha256sum big.bin
echo "== ls"
ls -l hostdir
echo "== stat"
stat -c '%n %s %a %h %F %i' host.txt hostdir/f2 hostdir
cat host.txt
echo "== dirs"
mkdir d1
mkdir d1/sub
rmdir d1/sub
rmdir d1
mkdir -p keep/sub
[ ! -e d1 ] && echo "d1 gone"
echo "== rename"
mv a.txt b.txt
echo other > c.txt
mv b.txt c.txt                              # over an existing file
[ ! -e a.txt ] && [ ! -e b.txt ] && echo "sources gone"
cat c.txt
echo "== symlink"
ln -s c.txt link
readlink link
cat link
echo "== hardlink"
ln c.txt hard
stat -c '%h' c.txt
[ "$(stat -c %i c.txt)" = "$(stat -c %i hard)" ] && echo "same inode"
echo "== truncate"
truncate -s 3 c.txt
stat -c '%s' c.txt
cat hard; echo
echo "== chmod"
chmod 640 c.txt
stat -c '%a' c.txt
echo "== find"
find tree -type f | wc -l
find tree -type d | wc -l
find tree -name 'f7*' | wc -l
cat tree/d3/f42
echo "== rm"
mkdir gone; for i in 1 2 3 4 5; do echo $i > gone/$i; done
rm -r gone
[ ! -e gone ] && echo "removed"
echo "== sync"
sync
echo "== umount"
cd /
umount /mnt
grep -c ' /mnt ' /proc/mounts || true
echo "== done"
"""


@pytest.mark.timeout(BOOT_TIMEOUT + 60)
def test_linux_guest_works_on_vfs_hostd(rundir, share):
    (share / "host.txt").write_text("made on the host\n")
    (share / "hostdir").mkdir()
    for i in (1, 2, 3):
        (share / "hostdir" / f"f{i}").write_text(f"file {i}\n" * i)
    tree = share / "tree"
    for d in range(10):
        (tree / f"d{d}").mkdir(parents=True)
        for f in range(100):
            (tree / f"d{d}" / f"f{f}").write_text(f"{d}/{f}\n")
    trace = rundir / "trace.tsv"
    with boot.HostDaemon(str(share), rundir / "hostd.sock", tag=TAG, trace=trace,
                         log_path=rundir / "hostd.log") as host:
        # 3 GiB of RAM: QEMU splits it below and above 4 GiB, so the host maps two regions
        r = boot.run_guest(host.socket_path, TAG, GUEST_SCRIPT, timeout=BOOT_TIMEOUT, mem_mb=3072)
        host.stop()
        host_log = host.log()
    keep_artifact(trace, "qemu-guest-trace.tsv")
    print(f"boot: {r.seconds:.1f} s accel={r.accel}")
    assert r.status == 0, r.describe()
    assert not r.timed_out
    s = _sections(r.output)

    # what the guest printed
    assert s["write"] == ["line1", "line2", "no newline appended"]
    digest = _sha256(share / "big.bin")
    assert (share / "big.bin").stat().st_size == 16 << 20
    assert s["dd"] == [f"{digest}  big.bin"] * 2
    ls = s["ls"]
    assert ls[0].startswith("total")
    for i in (1, 2, 3):
        line = next(l for l in ls if l.endswith(f" f{i}"))
        assert line.startswith("-rw-r--r--"), line
        assert line.split()[4] == str(len(f"file {i}\n" * i)), line
    for line, p in zip(s["stat"][:3], ("host.txt", "hostdir/f2", "hostdir")):
        st = os.lstat(share / p)
        name, size, mode, nlink, *kind, ino = line.split()
        assert (name, int(mode, 8), int(nlink), int(ino)) == (p, stat.S_IMODE(st.st_mode), st.st_nlink, st.st_ino)
        if not stat.S_ISDIR(st.st_mode):
            assert int(size) == st.st_size
    assert s["stat"][3] == "made on the host"
    assert s["dirs"] == ["d1 gone"]
    assert s["rename"] == ["sources gone", "line1", "line2"]
    assert s["symlink"] == ["c.txt", "line1", "line2"]
    assert s["hardlink"] == ["2", "same inode"]
    assert s["truncate"] == ["3", "lin"]
    assert s["chmod"] == ["640"]
    assert s["find"] == ["1000", "11", "110", "3/42"]
    assert s["rm"] == ["removed"]
    assert s["umount"] == ["0"]
    assert "done" in s
    assert r.umount_rc is None            # the script unmounted; /init found nothing left to do

    # what the host has
    names = sorted(os.listdir(share))
    assert names == ["big.bin", "c.txt", "hard", "host.txt", "hostdir", "keep", "link", "p.txt", "tree"]
    assert (share / "c.txt").read_bytes() == b"lin"
    assert stat.S_IMODE((share / "c.txt").stat().st_mode) == 0o640
    assert (share / "c.txt").stat().st_nlink == 2
    assert (share / "c.txt").stat().st_ino == (share / "hard").stat().st_ino
    assert os.readlink(share / "link") == "c.txt"
    assert (share / "p.txt").read_text() == "no newline appended"
    assert (share / "keep" / "sub").is_dir()

    # the protocol trace: one line per request, (guest, queue, opcode, nodeid, result)
    rows = read_trace(trace)
    ops = {op for _, _, op, _, _ in rows}
    assert rows[0][2] == "INIT", rows[:3]
    for want in ("INIT", "LOOKUP", "GETATTR", "WRITE", "READ", "DESTROY"):
        assert want in ops, f"no {want} in the trace: {sorted(ops)}"
    assert ops & {"CREATE", "MKNOD"}, sorted(ops)
    assert ops & {"RENAME", "RENAME2"}, sorted(ops)
    assert ops & {"READDIRPLUS", "READDIR"}, sorted(ops)
    assert ops >= {"MKDIR", "RMDIR", "SYMLINK", "READLINK", "LINK", "SETATTR", "UNLINK"}, sorted(ops)
    forgets = [row for row in rows if row[2] in ("FORGET", "BATCH_FORGET")]
    assert forgets and all(q == 0 for _, q, _, _, _ in forgets), "FORGETs must come on the hiprio queue"
    assert all(q != 0 for _, q, op, _, _ in rows if op not in ("FORGET", "BATCH_FORGET", "INTERRUPT"))
    assert rows[-1][2] == "DESTROY" and rows[-1][4] == "0"
    assert len({g for g, *_ in rows}) == 1
    noreply = {"FORGET", "BATCH_FORGET", "INTERRUPT"}
    bad = [row for row in rows if (row[4] != "noreply" if row[2] in noreply else row[4] != "0")
           and row[2] not in ("LOOKUP", "GETXATTR")]     # ENOENT before a create, ENODATA
    assert not bad, f"requests that failed: {bad[:10]}; console:\n{r.console}"

    # after umount (DESTROY) the host holds nothing for that guest
    m = re.findall(r"session (\d+) dropped: released (\d+) inodes \(\d+ freed\) and (\d+) handles; "
                   r"it now holds (\d+) inodes; the store holds (\d+) inodes and (\d+) handles", host_log)
    assert m, host_log
    sid, released, handles, now, store, store_handles = map(int, m[0])
    assert released > 0 and now == 0 and store == 1 and store_handles == 0, m
    assert "WARNING" not in host_log and "ERROR" not in host_log, host_log
    regions = re.findall(r"memory table of (\d+) region", host_log)
    assert regions and int(regions[-1]) == 2, host_log


# ------------------------------------------------------------------- mixed cluster

MIXED_SCRIPT = r"""
echo "== from emulators"
cat from-g0.txt from-g1.txt
echo "from the linux guest" > from-vm.txt
echo "vm was here" >> from-g0.txt
echo ready > vm-ready.tmp && mv vm-ready.tmp vm-ready
i=0; until [ -e live-g1.txt ]; do      # an emulator writes it while this guest runs
  i=$((i+1)); [ $i -gt 1200 ] && { echo "live-g1.txt never came"; exit 3; }; sleep 0.05; done
echo "== live"
cat live-g1.txt
echo "== done"
"""


@pytest.mark.timeout(BOOT_TIMEOUT + 90)
def test_mixed_cluster_linux_guest_and_two_emulators(share):
    """One vfs-hostd, two vfs-guest emulators (cache=none) and one Linux guest on the same host
    socket: each reads what the others wrote, before, during and after the Linux guest's run."""
    from vfscluster import Cluster, Topology

    def put(gos, name, data):
        fd = gos.open(name + ".tmp", os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o644)
        gos.write(fd, data)
        gos.close(fd)
        gos.rename(name + ".tmp", name)

    def get(gos, name):
        fd = gos.open(name, os.O_RDONLY)
        try:
            return gos.read(fd, 1 << 16)
        finally:
            gos.close(fd)

    with Cluster.start(Topology(share, guests=2, cache="none")) as c:
        g0, g1 = c.guests
        g0.run(put, "from-g0.txt", b"written by g0\n")
        g1.run(put, "from-g1.txt", b"written by g1\n")
        assert g1.run(get, "from-g0.txt") == b"written by g0\n"
        assert g0.run(get, "from-g1.txt") == b"written by g1\n"

        result = {}

        def vm():
            result["r"] = boot.run_guest(c.socket_path, c.topology.tag, MIXED_SCRIPT, timeout=BOOT_TIMEOUT)
        ready = FileWaiter(c.topology.share, "vm-ready")
        t = threading.Thread(target=vm)
        t.start()
        try:
            # Wait for the Linux guest to say it is up (inotify on the share: the guest and this
            # test have no other channel), then write while it waits for us.
            ready.wait(BOOT_TIMEOUT, t.is_alive)
            assert "vm-ready" in g1.os.listdir("/")
            assert g1.run(get, "vm-ready") == b"ready\n"
            assert g0.run(get, "from-vm.txt") == b"from the linux guest\n"
            g1.run(put, "live-g1.txt", b"g1 wrote this while the vm ran\n")
        finally:
            t.join(BOOT_TIMEOUT + 30)
        r = result["r"]
        assert r.status == 0, r.describe()
        s = _sections(r.output)
        assert s["from emulators"] == ["written by g0", "written by g1"]
        assert s["live"] == ["g1 wrote this while the vm ran"]
        # after the Linux guest has gone, both emulators see everything it wrote
        for g in (g0, g1):
            assert g.run(get, "from-g0.txt") == b"written by g0\nvm was here\n"
            assert g.run(get, "from-vm.txt") == b"from the linux guest\n"
            assert sorted(g.os.listdir("/")) == ["from-g0.txt", "from-g1.txt", "from-vm.txt",
                                                 "live-g1.txt", "vm-ready"]
    assert (share / "from-vm.txt").read_text() == "from the linux guest\n"


# ------------------------------------------------------------------- the command line

@pytest.mark.timeout(BOOT_TIMEOUT + 60)
def test_boot_script_command_line_with_a_topology(tmp_path):
    """The README's command: ``deploy/qemu/boot.py --topology T.toml -c SCRIPT`` starts a vfs-hostd
    for the topology's share, boots, prints the script's output and exits with its status."""
    share = tmp_path / "s"
    share.mkdir()
    (share / "hello.txt").write_text("hello from the host\n")
    topo = tmp_path / "t.toml"
    topo.write_text('share = "s"\ntag = "clitag"\nguests = 1\n')
    p = subprocess.run([sys.executable, boot.__file__, "--topology", str(topo), "--quiet",
                        "--timeout", str(BOOT_TIMEOUT), "-c", "cat hello.txt; echo made > out.txt; exit 7"],
                       capture_output=True, text=True, timeout=BOOT_TIMEOUT + 30)
    assert p.returncode == 7, p.stderr
    assert p.stdout == "hello from the host\n"
    assert (share / "out.txt").read_text() == "made\n"
    assert "status=7" in p.stderr


# ------------------------------------------------------------------- a host that dies

@pytest.mark.timeout(BOOT_TIMEOUT + 60)
def test_guest_powers_off_when_the_host_dies(rundir, share):
    """vfs-hostd is killed while the guest uses the mount: guest I/O then blocks for ever (FUSE
    requests are never answered), and the guest's watchdog still powers it off in bounded time."""
    script = "echo up > up.txt\nwhile :; do ls > /dev/null; cat up.txt > /dev/null; done\n"
    with boot.HostDaemon(str(share), rundir / "hostd.sock", tag=TAG, log_path=rundir / "hostd.log") as host:
        result = {}

        def vm():
            result["r"] = boot.run_guest(host.socket_path, TAG, script, timeout=BOOT_TIMEOUT, watchdog=12)
        up = FileWaiter(share, "up.txt")
        t = threading.Thread(target=vm)
        t.start()
        try:
            up.wait(BOOT_TIMEOUT, t.is_alive)                # the guest's first write
            os.kill(host.proc.pid, signal.SIGKILL)
            host.proc.wait()
        finally:
            t.join(BOOT_TIMEOUT + 30)
    r = result["r"]
    assert r.status is None and not r.timed_out, r.describe()
    assert "VFSBOOT: WATCHDOG" in r.console, r.describe()
    assert r.seconds < 60, r.describe()
