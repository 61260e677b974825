"""Cluster API: start, reach into guests, stop cleanly in every way, sweep after kill -9."""

import errno
import os
import select
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from vfscluster import Cluster, ConfigError, Topology, sweep
from vfscluster.cluster.launcher import PREFIX, runtime_root

from conftest import alive


def _mine(cid):
    out = [n for n in os.listdir("/dev/shm") if n.startswith(PREFIX + cid)]
    out += [n for n in os.listdir(runtime_root()) if n.startswith(PREFIX + cid)]
    return out


def _write(gos, name, data):
    fd = gos.open(name, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o644)
    try:
        return gos.write(fd, data)
    finally:
        gos.close(fd)


def _read(gos, name):
    fd = gos.open(name, os.O_RDONLY)
    try:
        return gos.read(fd, 1 << 20)
    finally:
        gos.close(fd)


def test_three_guests_see_each_others_writes_at_once(share):
    with Cluster.start(Topology(share, guests=3, cache="none")) as c:
        g0, g1, g2 = c.guests
        fd = g0.os.open("a.txt", os.O_CREAT | os.O_WRONLY, 0o644)
        assert g0.os.write(fd, b"hello") == 5
        g0.os.close(fd)
        assert g1.os.stat("a.txt").st_size == 5
        assert g2.run(_read, "a.txt") == b"hello"
        for i in range(20):                       # each write is visible to the others at once
            writer, reader = c.guests[i % 3], c.guests[(i + 1) % 3]
            writer.run(_write, "a.txt", f"v{i}".encode())
            assert reader.run(_read, "a.txt") == f"v{i}".encode()
        assert (share / "a.txt").read_bytes() == b"v19"
        cid = c.id
    assert _mine(cid) == []


def test_errors_come_back_as_the_same_exceptions(share):
    with Cluster.start(Topology(share, guests=1)) as c:
        g = c.guests[0]
        with pytest.raises(FileNotFoundError) as ei:
            g.os.stat("missing")
        assert ei.value.errno == errno.ENOENT and ei.value.filename == "missing"
        g.os.mkdir("d")
        with pytest.raises(FileExistsError):
            g.os.mkdir("d")

        def boom(gos):
            raise ValueError("inside the guest")
        with pytest.raises(ValueError, match="inside the guest"):
            g.run(boom)
        with pytest.raises(AttributeError):
            g.os.no_such_call()
        assert g.run(lambda gos, a, b=0: a + b, 2, b=3) == 5


def test_exception_in_with_block_stops_everything(share):
    with pytest.raises(RuntimeError):
        with Cluster.start(Topology(share, guests=2)) as c:
            cid, pids = c.id, [c.host.pid] + [g.pid for g in c.guests]
            raise RuntimeError("test")
    assert _mine(cid) == []
    assert not any(alive(p) for p in pids)


def test_keyboard_interrupt_in_with_block_stops_everything(share):
    with pytest.raises(KeyboardInterrupt):
        with Cluster.start(Topology(share, guests=2)) as c:
            cid = c.id
            raise KeyboardInterrupt
    assert _mine(cid) == []


def _members():
    import multiprocess
    return [p for p in multiprocess.active_children() if p.name.startswith("vfs-")]


def test_an_interrupted_start_stops_the_guests_still_starting(share, monkeypatch):
    """Ctrl-C while Cluster.start waits for a guest: the guests started but not ready yet are
    stopped too (they were left running, and the script then hung at exit joining them)."""
    from vfscluster.cluster import launcher
    real = launcher.Cluster._await_ready

    def interrupted(name, proc, conn, timeout):
        if name != "host":
            raise KeyboardInterrupt
        return real(name, proc, conn, timeout)
    monkeypatch.setattr(launcher.Cluster, "_await_ready", staticmethod(interrupted))
    before = set(_members())
    with pytest.raises(KeyboardInterrupt):
        Cluster.start(Topology(share, guests=3))
    assert set(_members()) <= before
    assert not [n for n in os.listdir("/dev/shm") if n.startswith(f"{PREFIX}{os.getpid()}-")]


def _write_and_keep_open(gos, name, data):
    fd = gos.open(name, os.O_CREAT | os.O_WRONLY, 0o644)
    gos.write(fd, data)             # write-back: still in the guest
    return fd


def test_stop_is_bounded_when_a_guest_does_not_answer(share, monkeypatch):
    """A stopped (SIGSTOP) guest never answers "shutdown": stop() gives up on it after
    STOP_TIMEOUT and kills it (it waited for ever) — and the other guests, asked at the same
    time, still write their write-back data back before they go."""
    from vfscluster.cluster import launcher
    monkeypatch.setattr(launcher, "STOP_TIMEOUT", 3.0)
    c = Cluster.start(Topology(share, [{"name": "stuck"},
                                       {"name": "wb", "cache": "always", "writeback": True}]))
    pids = [c.host.pid] + [g.pid for g in c.guests]
    data = os.urandom(4 << 20)
    c.guests[1].run(_write_and_keep_open, "w", data)
    assert (share / "w").stat().st_size == 0
    c.guests[0].kill(signal.SIGSTOP)
    import threading
    t = threading.Thread(target=c.stop)
    t.start()
    t.join(30)
    assert not t.is_alive()
    assert not any(alive(p) for p in pids) and _mine(c.id) == []
    assert (share / "w").read_bytes() == data


def test_a_second_ctrl_c_during_stop_still_ends_every_member(share, monkeypatch):
    """The second Ctrl-C lands while stop() waits for a guest: every member is killed before
    the KeyboardInterrupt goes on (the host, which ignores Ctrl-C, was left running and the
    launcher hung at exit joining it)."""
    from vfscluster.cluster import launcher
    c = Cluster.start(Topology(share, guests=2))
    pids = [c.host.pid] + [g.pid for g in c.guests]

    def second_ctrl_c(proc, deadline):
        raise KeyboardInterrupt
    monkeypatch.setattr(launcher.Cluster, "_reap", staticmethod(second_ctrl_c))
    with pytest.raises(KeyboardInterrupt):
        c.stop()
    assert not any(alive(p) for p in pids) and _mine(c.id) == []


def test_members_start_under_forkserver_too(share, monkeypatch):
    """Under forkserver a member's parent is the fork server, not the launcher: it must not take
    that for its launcher's death."""
    monkeypatch.setenv("VFSCLUSTER_START_METHOD", "forkserver")
    with Cluster.start(Topology(share, guests=1)) as c:
        c.guests[0].run(_write, "fs", b"ok")
        assert (share / "fs").read_bytes() == b"ok"


def test_members_die_with_a_launcher_that_died_before_they_asked(tmp_path):
    """die_with_parent(parent=pid): a member whose launcher died before the member set its
    parent-death signal (re-parented to init or to a subreaper) gets the signal at once."""
    script = textwrap.dedent("""
        import os, signal
        from vfscluster.cluster.procutil import die_with_parent
        die_with_parent(signal.SIGKILL, parent=os.getppid() + 100000)   # not our parent
        signal.pause()                                                  # only the signal ends us
    """)
    p = subprocess.run([sys.executable, "-c", script], timeout=60)
    assert p.returncode == -signal.SIGKILL


def test_check_members_names_the_members_that_exited(share):
    from vfscluster import MemberExited
    with Cluster.start(Topology(share, guests=2)) as c:
        c.check_members()
        assert c.exited() == []
        c.host.kill(signal.SIGKILL)
        c.host.process.join(10)
        c.guests[1].kill(signal.SIGKILL)
        c.guests[1].process.join(10)
        with pytest.raises(MemberExited, match=r"^the host exited \(exit code -9\), guest g1 exited"):
            c.check_members()


def test_kill_9_of_a_guest_leaves_the_others_working(share):
    with Cluster.start(Topology(share, guests=3)) as c:
        c.guests[1].kill(signal.SIGKILL)
        c.guests[1].process.join(10)
        c.guests[0].run(_write, "x", b"still here")
        assert c.guests[2].run(_read, "x") == b"still here"
        with pytest.raises(ConnectionError):
            c.guests[1].os.listdir("/")
        cid = c.id
    assert _mine(cid) == []


def test_kill_9_of_the_host_gives_enotconn_within_2s(share):
    with Cluster.start(Topology(share, guests=2)) as c:
        c.guests[0].run(_write, "x", b"1")
        c.host.kill(signal.SIGKILL)
        t0 = time.monotonic()
        for g in c.guests:
            with pytest.raises(OSError) as ei:
                g.os.stat("x")
            assert ei.value.errno == errno.ENOTCONN
        assert time.monotonic() - t0 < 2.0
        cid = c.id
    assert _mine(cid) == []


def test_a_guest_told_to_stop_by_sigterm_exits_even_when_the_host_does_not_answer(share, monkeypatch):
    """SIGTERM (what a guest gets when its launcher dies) while the host is stopped: the unmount's
    DESTROY is never answered, and no one is left to kill the guest, so it exits after
    ``SIGNAL_STOP_GRACE`` (found by a campaign: it stayed for ever)."""
    import vfscluster.guest.process as guest_process
    monkeypatch.setattr(guest_process, "SIGNAL_STOP_GRACE", 1.0)     # (the guests are forked)
    with Cluster.start(Topology(share, guests=1)) as c:
        g = c.guests[0]
        c.host.kill(signal.SIGSTOP)
        try:
            os.kill(g.process.pid, signal.SIGTERM)
            g.process.join(30)
            assert g.process.exitcode is not None, "the guest is still waiting for the host"
        finally:
            c.host.kill(signal.SIGCONT)


def _fsync_then_write_more(gos, name, synced, unsynced, how):
    """Write ``synced`` and fsync it, then leave ``unsynced`` behind unsynced; the file stays open.
    ``how``: ``write`` (write + fsync) or ``mmap`` (stores through a MAP_SHARED DAX mapping, then
    fsync of its descriptor)."""
    fd = gos.open(name, os.O_CREAT | os.O_RDWR, 0o644)
    if how == "mmap":
        gos.ftruncate(fd, len(synced) + len(unsynced))
        m = gos.mmap(fd, len(synced) + len(unsynced))
        m[:len(synced)] = synced
        gos.fsync(fd)
        m[len(synced):] = unsynced
        return True
    assert gos.write(fd, synced) == len(synced)
    gos.fsync(fd)
    gos.write(fd, unsynced)
    return True


@pytest.mark.parametrize("victim", ["guest", "host"])
@pytest.mark.parametrize("guest, how", [
    ({"cache": "none"}, "write"),
    ({"cache": "always", "writeback": True}, "write"),          # dirty pages in the guest
    ({"cache": "none", "dax": "always"}, "write"),              # copies into the DAX window
    ({"cache": "none", "dax": "always"}, "mmap"),               # stores into a shared mapping
], ids=["none", "writeback", "dax", "dax-mmap"])
def test_fsynced_data_survives_kill_9(share, victim, guest, how):
    """What a guest fsync'ed is in the host's file after kill -9 of the guest or of the host,
    whatever the cache mode; what it did not fsync may or may not be."""
    synced = bytes(range(256)) * 64                             # 16 KiB
    with Cluster.start(Topology(share, guests=[guest])) as c:
        assert c.guests[0].run(_fsync_then_write_more, "f", synced, b"later" * 100, how)
        member = c.host if victim == "host" else c.guests[0]
        member.kill(signal.SIGKILL)
        member.process.join(10)
        assert not member.process.is_alive()
        assert (share / "f").read_bytes()[:len(synced)] == synced
        cid = c.id
    assert _mine(cid) == []


def _spin_for(gos, seconds):
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        gos.stat("/")
    return "ran to the end"


def _fail(gos):
    raise ValueError("this guest's call fails")


def test_run_together_returns_results_in_order(share):
    with Cluster.start(Topology(share, guests=2)) as c:
        ticks = []
        got = c.run_together([(g, _write, f"f{i}", b"x" * (i + 1)) for i, g in enumerate(c.guests)],
                             tick=lambda: ticks.append(1))
        assert got == [1, 2]


@pytest.mark.parametrize("how", ["ctrl-c", "a call fails"])
def test_run_together_stops_the_cluster_instead_of_waiting_for_the_rest(share, how):
    """Ctrl-C while guests run long calls (the demo, stress), or one call failing, stops the
    cluster at once: the other calls end with it instead of running to their end."""
    def tick():
        raise KeyboardInterrupt
    with Cluster.start(Topology(share, guests=2)) as c:
        if how == "ctrl-c":
            calls, expected = [(g, _spin_for, 600) for g in c.guests], KeyboardInterrupt
        else:
            calls, expected = [(c.guests[0], _spin_for, 600), (c.guests[1], _fail)], ValueError
        with pytest.raises(expected):
            c.run_together(calls, tick=tick if how == "ctrl-c" else None)
        assert not any(g.alive() for g in c.guests) and not c.host.alive()
        cid = c.id
    assert _mine(cid) == []


def test_sweep_after_the_launcher_is_killed(share, tmp_path):
    """A launcher killed with kill -9: its members die with it; `sweep` removes the rest."""
    script = tmp_path / "launcher.py"
    script.write_text(textwrap.dedent(f"""
        import sys
        from vfscluster import Cluster, Topology
        c = Cluster.start(Topology({str(share)!r}, guests=2))
        print(c.id, c.host.pid, *[g.pid for g in c.guests], flush=True)
        sys.stdin.read()
    """))
    p = subprocess.Popen([sys.executable, str(script)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        cid, *pids = p.stdout.readline().split()
        assert _mine(cid)                               # its runtime directory is there
        p.kill()
        p.wait(10)
        for pid in map(int, pids):                      # members die with their launcher
            try:
                pidfd = os.pidfd_open(pid)
            except ProcessLookupError:
                continue
            try:
                assert select.select([pidfd], [], [], 10)[0], f"member {pid} outlived its launcher"
            finally:
                os.close(pidfd)
        removed = sweep()
        assert any(cid in r for r in removed)
        assert _mine(cid) == []
    finally:
        if p.poll() is None:
            p.kill()
            p.wait(10)


def test_sweep_removes_the_scratch_shares_of_dead_commands():
    """bench, demo and stress make their share in a scratch directory named with their pid; after
    a kill -9 (no cleanup ran) sweep removes it, and only once that process is gone."""
    from vfscluster.cluster.launcher import runtime_root, scratch_dir
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    root = runtime_root()
    gone = os.path.join(root, f"vfscluster-bench-{dead.pid}-abc")
    live = os.path.join(root, f"vfscluster-stress-{os.getppid()}-abc")
    other = os.path.join(root, f"vfscluster-benchmark-{dead.pid}-abc")     # not ours
    for d in (gone, live, other):
        os.makedirs(os.path.join(d, "sub"))
    try:
        with scratch_dir("demo") as mine:
            assert os.path.basename(mine).startswith(f"vfscluster-demo-{os.getpid()}-")
            removed = sweep()
            assert gone in removed and not os.path.exists(gone)
            assert os.path.isdir(live) and os.path.isdir(other) and os.path.isdir(mine)
    finally:
        for d in (gone, live, other):
            shutil.rmtree(d, ignore_errors=True)


def test_topology_from_toml(tmp_path):
    t = Topology.load(os.path.join(os.path.dirname(__file__), "..", "deploy", "topologies", "three-guests.toml"))
    assert [g.name for g in t.guests] == ["alpha", "beta", "gamma"]
    assert [(g.cache, g.versions) for g in t.guests] == [("none", False), ("always", True),
                                                        ("auto", False)]
    (tmp_path / "t.toml").write_text('share = "s"\ncache = "none"\n[[guests]]\nname = "a"\n[[guests]]\ncache = "none"\n')
    t = Topology.load(tmp_path / "t.toml")
    assert t.share == str(tmp_path / "s") and [g.name for g in t.guests] == ["a", "g1"]


@pytest.mark.parametrize("kwargs,msg", [
    (dict(guests=0), "at least one guest"),
    (dict(guests=1, cache="sometimes"), "cache must be one of"),
    (dict(guests=[{"name": "a"}, {"name": "a"}]), "unique"),
    (dict(guests=1, colour="red"), "unknown topology option"),
    (dict(guests=[{"qeue_size": 8}]), "unknown option"),
    (dict(guests=1, queue_size=100), "power of two"),
    (dict(guests=1, versions=True), "needs cache=auto or cache=always"),
    (dict(guests=1, dax="sometimes"), "dax must be one of"),
    (dict(guests=1, dax="always", window_size=3 << 20), "multiple of 2 MiB"),
    (dict(guests=[{"name": "a/b"}]), "guest name"),               # it names shm objects and sockets
    (dict(guests=[{"name": ""}]), "guest name"),
    (dict(guests=[{"name": "n" * 33}]), "guest name"),
    (dict(guests=1, cache="auto", timeout=float("nan")), "timeout must be"),
    (dict(guests=1, tag=""), "tag"),
    (dict(guests=1, tag="t" * 37), "tag"),
    (dict(guests=1, host_queues=0), "host_queues"),
])
def test_topology_mistakes_are_config_errors(tmp_path, kwargs, msg):
    with pytest.raises(ConfigError, match=msg):
        Topology(tmp_path, **kwargs)


def test_bad_toml_is_a_config_error(tmp_path):
    (tmp_path / "bad.toml").write_text("share = \n")
    with pytest.raises(ConfigError, match="bad.toml"):
        Topology.load(tmp_path / "bad.toml")
    with pytest.raises(ConfigError, match="does not exist"):
        Topology.load(tmp_path / "missing.toml")
