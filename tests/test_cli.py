"""The command line: mistakes are one clear line and exit status 2; demo and clean work."""

import subprocess
import sys

import pytest


def run(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "vfscluster", *args], capture_output=True, text=True,
                          timeout=timeout)


def run_daemon(module, *args):
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("args", [
    [], ["frobnicate"], ["up"], ["up", "/no/such/topology.toml"], ["bench", "nothing"], ["bench", "dax", "--dax-mib", "1"],
    ["demo", "--guests", "0"], ["demo", "--guests", "x"], ["demo", "--count", "0"],
    ["bench", "rtt", "--seconds", "-1"], ["bench", "rtt", "--seconds", "inf"],
    ["bench", "rtt", "--plot", "/no/such/dir/rtt.png"],
])
def test_mistakes_are_one_line_and_exit_2(args):
    r = run(*args)
    assert r.returncode == 2, r
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "error" in lines[0], r.stderr


def test_bad_topology_file_is_one_line(tmp_path):
    (tmp_path / "t.toml").write_text('share = "x"\ncache = "sometimes"\n')
    r = run("up", str(tmp_path / "t.toml"))
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "cache" in r.stderr


@pytest.mark.parametrize("module,args", [
    ("daemons.hostd", ["--socket-path", "/tmp/x.sock"]),
    ("daemons.hostd", ["--socket-path", "/tmp/x.sock", "--shared-dir", "/no/such/dir"]),
    ("daemons.hostd", ["--socket-path", "/no/such/dir/x.sock", "--shared-dir", "."]),
    ("daemons.hostd", ["--socket-path", "/tmp/x.sock", "--shared-dir", ".", "--tag", ""]),
    ("daemons.hostd", ["--socket-path", "/tmp/x.sock", "--shared-dir", ".", "--tag", "t" * 37]),
    ("daemons.hostd", ["--socket-path", "/tmp/x.sock", "--shared-dir", ".", "--trace", "/no/such/t"]),
    ("daemons.guest", ["--socket-path", "/tmp/x.sock"]),
    ("daemons.guest", ["--socket-path", "/tmp/x.sock", "--control", "/tmp/c.sock", "--name", "a/b"]),
    ("daemons.guest", ["--socket-path", "/tmp/x.sock", "--control", "/tmp/c.sock", "--timeout", "nan"]),
])
def test_daemon_mistakes_exit_2(module, args):
    r = run_daemon(module, *args)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_guest_daemon_names_the_socket_it_cannot_reach(tmp_path):
    missing = str(tmp_path / "no-host.sock")
    r = run_daemon("daemons.guest", "--socket-path", missing, "--control", str(tmp_path / "c.sock"))
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert missing in r.stderr and "No such file or directory" in r.stderr


def test_demo_runs_and_agrees():
    r = run("demo", "--count", "2000")
    assert r.returncode == 0, r.stderr + r.stdout
    assert "no increment was lost" in " ".join(r.stdout.split())


def test_files_demo_runs_and_agrees():
    r = run("demo", "--files")
    assert r.returncode == 0, r.stderr + r.stdout
    assert "every guest saw every change" in r.stdout


def test_clean_reports():
    r = run("clean")
    assert r.returncode == 0 and "removed" in r.stdout


@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM", "SIGHUP"])
def test_up_runs_until_ctrl_c_and_cleans_up(tmp_path, sig):
    """Ctrl-C, and also SIGTERM or SIGHUP (a closed terminal, a service stop): every member
    stopped and every socket and shm object removed (those left the runtime directory)."""
    import os
    import signal
    (tmp_path / "t.toml").write_text(f'share = "{tmp_path}/share"\nguests = 2\n')
    p = subprocess.Popen([sys.executable, "-m", "vfscluster", "up", str(tmp_path / "t.toml")],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env={**os.environ, "COLUMNS": "200"})
    try:
        seen = []
        for line in p.stdout:
            seen.append(line)
            if line.startswith("Up."):
                break
        out = "".join(seen)
        assert "guest g0" in out and "guest g1" in out and "host" in out, out
        cid = [w for w in out.split() if w.startswith("/tmp/vfsc-")][0].split("/")[2]
        p.send_signal(getattr(signal, sig))
        assert p.wait(30) == 0, p.stderr.read()
        assert not os.path.exists(f"/tmp/{cid}")
        assert not [n for n in os.listdir("/dev/shm") if n.startswith(cid)]
    finally:
        if p.poll() is None:
            p.kill()
            p.wait(10)


def test_demo_stops_at_once_and_says_so_when_the_host_dies():
    """The demo's stores need no host, so it noticed nothing until its end (20 s), then printed a
    traceback: it now checks the members at each refresh and says in one line what broke."""
    import glob
    import os
    import signal
    import time
    p = subprocess.Popen([sys.executable, "-m", "vfscluster", "demo", "--count", "100000000"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        host = None
        deadline = time.monotonic() + 60
        while host is None:
            assert time.monotonic() < deadline and p.poll() is None
            for f in glob.glob(f"/tmp/vfsc-{p.pid}-*/pids"):
                with open(f) as fh:
                    host = next((int(line.split()[0]) for line in fh if line.split()[1:] == ["host"]), None)
        while len(glob.glob(f"/tmp/vfsc-{p.pid}-*/g?.ctl")) < 3:  # every guest is (about) up
            assert time.monotonic() < deadline and p.poll() is None
        os.kill(host, signal.SIGKILL)
        assert p.wait(30) == 1
        err = p.stderr.read()
        assert ("vfscluster demo: the cluster broke: the host exited (exit code -9)" in err
                or "vfscluster demo: the cluster broke: g" in err), err    # (a guest still starting)
        assert "Traceback" not in err, err
        assert not glob.glob(f"/tmp/vfsc-{p.pid}-*")
    finally:
        if p.poll() is None:
            p.kill()
            p.wait(10)


@pytest.mark.timeout(120)
def test_bench_meta_runs_and_prints_its_goals(tmp_path):
    """A smoke run (no timing assert: the goals' verdicts are printed, not tested)."""
    r = run("bench", "meta", "--seconds", "0.05", "--plot", str(tmp_path / "meta.png"))
    assert r.returncode == 0, r.stderr
    for text in ("os.stat on the host", "cache=always,versions=on", "cache=none",
                 "versions=on stat / host os.stat", "asked the host"):
        assert text in r.stdout, r.stdout
    assert (tmp_path / "meta.png").stat().st_size > 0


@pytest.mark.timeout(120)
def test_bench_rtt_runs_and_prints_its_goals(tmp_path):
    """A smoke run of `bench rtt` (interleaved rounds; no timing assert: verdicts are printed)."""
    r = run("bench", "rtt", "--seconds", "0.06", "--plot", str(tmp_path / "rtt.png"))
    assert r.returncode == 0, r.stderr + r.stdout
    out = " ".join(r.stdout.split())
    for text in ("GuestOS.stat", "bare FUSE LOOKUP", "SEQPACKET", "both spinning", "os.stat in-process"):
        assert text in out, out
    assert out.count("met:") + out.count("missed:") == 3
    assert (tmp_path / "rtt.png").stat().st_size > 0


def test_guest_daemon_refuses_versions_without_a_cache():
    r = run_daemon("daemons.guest", "--socket-path", "/tmp/x.sock", "--control", "/tmp/x.ctl",
                   "--versions")
    assert r.returncode == 2 and "--versions needs" in r.stderr


@pytest.mark.timeout(120)
def test_bench_dax_runs_and_prints_its_goals():
    """A smoke run of `bench dax` on a tiny file (no timing assert: the numbers are printed)."""
    r = run("bench", "dax", "--seconds", "0.05", "--dax-mib", "4")
    assert r.returncode == 0, r.stderr + r.stdout
    out = " ".join(r.stdout.split())
    assert "dax=always" in out and "FUSE_READ" in out and "os.pread on the host" in out
    assert out.count("met:") + out.count("missed:") == 2 and "goal ≥ 10" in out and "goal ≥ 1)" in out
    assert "256 placements of one buffer" in out and "window copy is the slower at" in out


@pytest.mark.timeout(120)
def test_bench_dax_placements_on_a_file_of_an_odd_number_of_mib():
    """--dax-mib takes any size from 2: the placement sweep copies whole 1 MiB blocks of a 3 MiB
    file (its second stream, half the file away, is not block-aligned: a short copy failed, and
    the mapping then would not close — BufferError)."""
    r = run("bench", "dax", "--seconds", "0.05", "--dax-mib", "3")
    assert r.returncode == 0, r.stderr + r.stdout
    assert "256 placements of one buffer" in " ".join(r.stdout.split())


def test_bench_queues_runs_and_prints_its_ratios():
    """A smoke run of `bench queues` (no timing assert: the numbers are printed, not tested)."""
    r = run("bench", "queues", "--seconds", "0.05")
    assert r.returncode == 0, r.stderr
    for text in ("1 vs 4 request queues", "threads", "4 queues / 1", "8 threads / 1 thread",
                 "lock handoff guest → guest", "lock handoff local process", "guest handoff / local handoff"):
        assert text in r.stdout, r.stdout
