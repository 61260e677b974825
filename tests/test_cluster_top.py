"""``vfscluster top``: finding clusters, polling guests' stats, the figures and the command."""

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import pytest

from vfscluster import Cluster, Topology
from vfscluster.cluster import top
from vfscluster.cluster.launcher import PREFIX, runtime_root
from vfscluster.cluster.top import GONE, NOT_ANSWERING, UP, Sample

pytestmark = pytest.mark.timeout(60)


def run_top(*args, env=None):
    return subprocess.run([sys.executable, "-m", "vfscluster", "top", *args], capture_output=True,
                          text=True, timeout=45, env=env)


def guest_line(out: str, name: str) -> list[str]:
    """The row of guest ``name`` in the guests table (the first table: its first row of that name)."""
    for line in out.splitlines():
        if line.split()[:1] == [name]:
            return line.split()
    raise AssertionError(f"no row for {name} in:\n{out}")


def queue_lines(out: str, name: str) -> list[list[str]]:
    """Rows of the virtqueues table for guest ``name``: [guest, index, role, kicks/s, kicks, ...]."""
    rows = out.split("virtqueues", 1)[1].splitlines()
    return [line.split() for line in rows if line.split()[:1] == [name]]


def stat_many(g, name: str, n: int) -> None:
    for _ in range(n):
        g.os.stat(name)


# -- the figures (pure) ------------------------------------------------------------------------

def _stats(pid=10, requests=0, kicks=(0, 0), dax=None):
    return {"pid": pid, "in_flight": 0, "requests": requests, "dax": dax,
            "cache": {"mode": "cache=none", "hits": 1, "misses": 2, "reads_hit": 3, "reads_missed": 4,
                      "dirty_inodes": 0},
            "queues": [{"index": i, "role": "hiprio" if i == 0 else "request", "kicks": k,
                        "full_waits": 0, "in_flight": 0, "spin_ns": 200_000, "spin_hits": 5, "blocks": 6}
                       for i, k in enumerate(kicks)]}


def test_rate_is_the_difference_over_the_time_and_unknown_when_it_cannot_be_known():
    assert top.rate(10, 30, 2.0) == 10.0
    assert top.rate(5, 5, 0.5) == 0.0
    assert top.rate(None, 30, 1.0) is None          # first poll
    assert top.rate(10, None, 1.0) is None          # no answer
    assert top.rate(10, 30, 0) is None and top.rate(10, 30, None) is None
    assert top.rate(30, 10, 1.0) is None            # counter went back: another process


def test_rows_compute_rates_between_two_polls():
    prev = {"g0": Sample("g0", 10, UP, 100.0, _stats(requests=100, kicks=(1, 50)))}
    cur = {"g0": Sample("g0", 10, UP, 100.5, _stats(requests=300, kicks=(2, 150))),
           "g1": Sample("g1", 11, GONE, 100.5)}
    g0, g1 = top.guest_rows(prev, cur)
    assert (g0.name, g0.requests, g0.req_rate, g0.cache_mode) == ("g0", 300, 400.0, "cache=none")
    assert (g0.lookup_hits, g0.lookup_misses, g0.reads_hit, g0.reads_missed) == (1, 2, 3, 4)
    assert g1.state == GONE and g1.requests is None and g1.req_rate is None
    q = top.queue_rows(prev, cur)
    assert [(r.guest, r.index, r.role, r.kicks, r.kick_rate) for r in q] == [
        ("g0", 0, "hiprio", 2, 2.0), ("g0", 1, "request", 150, 200.0)]
    first = top.guest_rows(None, cur)[0]                  # a single poll: no rates
    assert first.requests == 300 and first.req_rate is None
    assert top.queue_rows(None, cur)[1].kick_rate is None


def test_rows_give_no_rate_across_a_restarted_guest_and_keep_dax_counters():
    dax = {"setups": 4, "removed": 1, "mapped": 3, "ranges": 512}
    prev = {"g0": Sample("g0", 10, UP, 1.0, _stats(pid=10, requests=500, dax=dax))}
    cur = {"g0": Sample("g0", 12, UP, 2.0, _stats(pid=12, requests=600, dax=dict(dax, setups=9)))}
    row = top.guest_rows(prev, cur)[0]
    assert row.pid == 12 and row.req_rate is None and row.dax["setups_rate"] is None
    same = {"g0": Sample("g0", 12, UP, 4.0, _stats(pid=12, requests=600, dax=dict(dax, setups=13)))}
    row = top.guest_rows(cur, same)[0]
    assert row.req_rate == 0.0 and row.dax["setups_rate"] == 2.0 and row.dax["mapped"] == 3


def test_render_shows_every_guest_and_queue_and_dax_only_when_used():
    from rich.console import Console
    c = top.ClusterDir("1-abcdef", "/nowhere", 1, 2, ())
    cur = {"g0": Sample("g0", 10, UP, 1.0, _stats(requests=7)), "g1": Sample("g1", 11, NOT_ANSWERING, 1.0)}
    console = Console(width=200, record=True, file=open(os.devnull, "w"))
    console.print(top.render(c, None, cur, interval=1.0))
    out = console.export_text()
    assert guest_line(out, "g0")[:6] == ["g0", "10", "up", "none", "7", "0"]   # no rate: blank
    assert guest_line(out, "g1") == ["g1", "11", "not", "answering"]
    assert [r[:3] for r in queue_lines(out, "g0")] == [["g0", "0", "hiprio"], ["g0", "1", "request"]]
    assert "DAX" not in out
    cur["g0"] = Sample("g0", 10, UP, 1.0, _stats(dax={"setups": 4, "removed": 1, "mapped": 3, "ranges": 512}))
    console.print(top.render(c, None, cur, interval=1.0))
    assert "3/512" in console.export_text()


# -- finding clusters --------------------------------------------------------------------------

def test_no_running_cluster_is_one_line_and_exit_2(tmp_path):
    r = run_top("--once", env={**os.environ, "TMPDIR": str(tmp_path)})
    assert r.returncode == 2, r
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "no running cluster" in lines[0] and r.stdout == "", r.stderr


def test_an_unknown_cluster_id_is_one_line_and_exit_2():
    r = run_top("--once", "--cluster", "1-000000")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "no running cluster 1-000000" in r.stderr


@pytest.mark.parametrize("args", [["--interval", "0"], ["--interval", "x"], ["--interval", "nan"],
                                  ["-n", "0"], ["--once", "-n", "3"], ["--frobnicate"]])
def test_mistakes_are_one_line_and_exit_2(args):
    r = run_top(*args)
    assert r.returncode == 2, r
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "error" in lines[0], r.stderr


def test_several_clusters_without_cluster_is_exit_2_naming_them(share):
    (share / "a").mkdir()
    (share / "b").mkdir()
    with Cluster.start(Topology(share / "a", guests=1)) as c1, \
            Cluster.start(Topology(share / "b", guests=1)) as c2:
        found = {c.id for c in top.live_clusters()}
        assert {c1.id, c2.id} <= found
        r = run_top("--once")
        assert r.returncode == 2, r
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and "--cluster" in lines[0] and c1.id in lines[0] and c2.id in lines[0]
        with pytest.raises(top.ConfigError, match="clusters are running"):
            top.pick_cluster(top.live_clusters(), None)
        assert top.pick_cluster(top.live_clusters(), PREFIX + c2.id).id == c2.id
    assert not {c1.id, c2.id} & {c.id for c in top.live_clusters()}


# -- against live clusters ---------------------------------------------------------------------

def test_once_shows_each_guest_and_queue_with_counts_that_moved(share):
    (share / "f").write_bytes(b"x")
    with Cluster.start(Topology(share, guests=2, cache="none")) as c:
        before = run_top("--once", "--cluster", c.id, "--interval", "0.1")
        assert before.returncode == 0, before.stderr
        assert f"cluster {c.id}" in before.stdout
        stat_many(c.guests[0], "f", 20)
        stat_many(c.guests[1], "f", 35)
        after = run_top("--once", "--cluster", c.id, "--interval", "0.1")
        assert after.returncode == 0 and after.stderr == "", after.stderr
        for g, n in zip(c.guests, (20, 35)):
            b, a = guest_line(before.stdout, g.name), guest_line(after.stdout, g.name)
            assert a[1] == str(g.pid) and a[2] == "up" and a[3] == "none"
            # columns: guest pid state cache req/s requests in-flight ...
            assert int(a[5]) >= int(b[5]) + n, (before.stdout, after.stdout)
            qb, qa = queue_lines(before.stdout, g.name), queue_lines(after.stdout, g.name)
            assert [q[1] for q in qa] == [str(i) for i in range(len(qa))] and len(qa) >= 2
            assert qa[0][2] == "hiprio" and qa[-1][2] == "request"
            # the requests went through a request queue: a kick, a spin hit or a block each
            # (mostly: one the completion thread reaped before its submitter waited counts none)
            moved = lambda rows: sum(int(q[4]) + int(q[7]) + int(q[8]) for q in rows if q[2] == "request")
            assert moved(qa) > moved(qb)


def test_poller_rates_follow_the_requests_made_between_polls(share):
    (share / "f").write_bytes(b"x")
    with Cluster.start(Topology(share, guests=2, cache="none", num_request_queues=2)) as c:
        (cluster,) = [x for x in top.live_clusters() if x.id == c.id]
        assert [(g.name, g.pid) for g in cluster.guests] == [(g.name, g.pid) for g in c.guests]
        assert cluster.host_pid == c.host.pid
        poller = top.Poller(cluster)
        try:
            first = poller.poll()
            stat_many(c.guests[1], "f", 40)
            second = poller.poll()
        finally:
            poller.close()
        rows = {r.name: r for r in top.guest_rows(first, second)}
        assert rows["g1"].requests >= first["g1"].stats["requests"] + 40
        assert rows["g1"].req_rate > 0 and rows["g1"].state == UP
        assert rows["g0"].req_rate == 0 and rows["g0"].pid == c.guests[0].pid
        queues = [q for q in top.queue_rows(first, second) if q.guest == "g1"]
        assert [q.role for q in queues] == ["hiprio", "notify", "request", "request"]
        assert all(q.kick_rate is not None for q in queues)


def test_a_killed_guest_is_gone_and_a_stopped_one_does_not_hang_top(share):
    with Cluster.start(Topology(share, guests=3)) as c:
        c.guests[1].kill()                       # SIGKILL: a zombie until the launcher reaps it
        os.kill(c.guests[2].pid, signal.SIGSTOP)
        try:
            t0 = time.monotonic()
            r = run_top("--once", "--cluster", c.id, "--interval", "0.1")
            assert time.monotonic() - t0 < 30
            assert r.returncode == 0, r.stderr
            assert guest_line(r.stdout, "g0")[2] == "up"
            assert guest_line(r.stdout, "g1")[2:] == ["gone"]
            assert guest_line(r.stdout, "g2")[2:] == ["stopped"]
            assert queue_lines(r.stdout, "g1") == [] and queue_lines(r.stdout, "g0")
        finally:
            os.kill(c.guests[2].pid, signal.SIGCONT)
        c.guests[1].process.join(5)              # reaped: no such process any more
        poller = top.Poller(next(x for x in top.live_clusters() if x.id == c.id))
        try:
            snap = poller.poll()
        finally:
            poller.close()
        assert [snap[n].state for n in ("g0", "g1", "g2")] == [UP, GONE, UP]


def test_a_guest_that_does_not_answer_shows_so_within_the_timeout():
    """A live process whose control socket never accepts (a stuck guest): "not answering" after
    the timeout, and the next poll does not wait on it again while the question is pending."""
    root = tempfile.mkdtemp(prefix="vfstop-")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        cdir = os.path.join(root, f"{PREFIX}{os.getpid()}-abc123")
        os.mkdir(cdir)
        listener.bind(os.path.join(cdir, "stuck.ctl"))
        listener.listen(1)
        with open(os.path.join(cdir, "pids"), "w") as f:
            f.write(f"{os.getpid()} guest stuck\n")
        (cluster,) = top.live_clusters(root)
        assert [g.name for g in cluster.guests] == ["stuck"]
        poller = top.Poller(cluster, timeout=0.3)
        try:
            t0 = time.monotonic()
            assert poller.poll()["stuck"].state == NOT_ANSWERING
            assert poller.poll()["stuck"].state == NOT_ANSWERING
            assert time.monotonic() - t0 < 5
        finally:
            poller.close()
        assert top.run_top(iterations=1, interval=0.05, root=root, timeout=0.2, live=False,
                           console=_quiet_console()) == 0
    finally:
        listener.close()
        shutil.rmtree(root, ignore_errors=True)


def _quiet_console():
    from rich.console import Console
    return Console(file=open(os.devnull, "w"), width=200)


def test_ctrl_c_ends_top_with_status_0_and_the_end_of_the_cluster_ends_it_too(share):
    with Cluster.start(Topology(share, guests=1)) as c:
        p = subprocess.Popen([sys.executable, "-m", "vfscluster", "top", "--cluster", c.id,
                              "--interval", "0.1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
        try:
            for line in p.stdout:               # plain tables, one after another (not a terminal)
                if line.startswith("virtqueues"):
                    break
            p.send_signal(signal.SIGINT)
            out, err = p.communicate(timeout=20)
        finally:
            p.kill()
            p.wait()
        assert p.returncode == 0 and "Traceback" not in err, err
        q = subprocess.Popen([sys.executable, "-m", "vfscluster", "top", "--cluster", c.id,
                              "--interval", "0.1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
        for line in q.stdout:
            if line.startswith("virtqueues"):
                break
    try:
        out, err = q.communicate(timeout=20)     # the cluster stopped: top says so and exits
    finally:
        q.kill()
        q.wait()
    assert q.returncode == 0 and f"cluster {c.id} has ended" in out, (out, err)
    assert c.id not in {x.id for x in top.live_clusters(runtime_root())}


def test_a_live_guest_without_its_control_socket_yet_is_starting_not_gone(tmp_path):
    """``vfscluster top`` run while ``vfscluster up`` starts ten guests showed every one of them
    as ``gone`` in its first snapshots; README: gone means the process exited."""
    from vfscluster.cluster import top

    cdir = tmp_path / f"vfsc-{os.getpid()}-abc123"
    cdir.mkdir()
    (cdir / "pids").write_text(f"{os.getpid()} guest g0\n")    # alive, no g0.ctl yet
    poller = top.Poller(top.read_cluster(str(cdir)), timeout=0.2)
    try:
        snap = poller.poll()
    finally:
        poller.close()
    assert snap["g0"].state == top.STARTING


def test_closing_a_poller_ends_its_probe_threads(tmp_path):
    """Each guest's probe thread ends with the poller (they were left waiting for good)."""
    import threading
    from vfscluster.cluster import top

    cdir = tmp_path / f"vfsc-{os.getpid()}-abc124"
    cdir.mkdir()
    (cdir / "pids").write_text(f"{os.getpid()} guest g0\n{os.getpid()} guest g1\n")
    before = {t for t in threading.enumerate() if t.name == "top-probe"}
    poller = top.Poller(top.read_cluster(str(cdir)), timeout=0.2)
    poller.poll()
    mine = {t for t in threading.enumerate() if t.name == "top-probe"} - before
    assert len(mine) == 2
    poller.close()
    for t in mine:
        t.join(10)
    assert not any(t.is_alive() for t in mine)
