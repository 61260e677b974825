"""The stress run: cache=none shows no stale read, the table renders, the command line's mistakes
are one line and exit status 2; and the checker sees staleness in a real history when a guest is
made to answer from a (simulated) cache."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from vfscluster.cluster import stress
from vfscluster.cluster.checker import CheckResult, Finding, Operation, Tree, check, summarize
from vfscluster.cluster.stress import (StressReport, main, print_report, read_log, render, run_stress,
                                       write_log)


def test_short_run_with_cache_none(tmp_path):
    """4 guests, 2 seconds, cache=none: no stale read, a plausible amount of work, progress
    reported, the stress tree removed, the table rendered — and the same real history, with guest
    g0 made to answer its stats and reads from a 50 ms cache, is caught.  (One test: one cluster,
    even when xdist spreads this module over workers.)"""
    phases = []
    share = tmp_path / "share"
    share.mkdir()
    r = run_stress(guests=4, seconds=2.0, cache="none", seed=1234, share=share,
                   progress=lambda phase, done, total: phases.append((phase, done, total)))

    assert r.result.findings == (), [f.describe() for f in r.result.findings[:5]]
    assert r.result.total.stale_reads == 0 and r.exit_status == 0 and r.coherent

    assert [g.guest for g in r.result.per_guest] == ["g0", "g1", "g2", "g3"]
    assert 1.5 < r.elapsed_s < 10
    for g in r.result.per_guest:
        assert g.operations >= 20 and 0 < g.reads < g.operations, g
    assert r.result.total.operations == len(r.history) >= 200
    assert {o.kind for o in r.history} == set(stress.MIX)
    # the guests collided: some creates failed with EEXIST, some reads with ENOENT
    assert any(o.kind == "create" and o.errno for o in r.history)
    assert any(o.kind == "create" and not o.errno for o in r.history)
    assert any(o.kind in ("stat", "read") and o.errno for o in r.history)

    assert [p for p, _, _ in phases][:2] == ["start", "start"]
    run = [(d, t) for p, d, t in phases if p == "run"]
    assert run and run[-1] == (2.0, 2.0) and all(0 <= d <= t for d, t in run)
    assert phases[-1] == ("check", 1, 1)
    assert list(share.iterdir()) == []

    out = io.StringIO()
    print_report(r, Console(file=out, width=140, color_system=None))
    text = out.getvalue()
    for word in ("operations", "ops/s", "stale reads", "worst staleness ms", "g3", "total",
                 "no stale read", "cache=none"):
        assert word in text, text
    total_row = next(line for line in text.splitlines() if "total" in line)
    assert str(r.result.total.operations) in total_row

    _cached_guest_is_caught(r.history, ttl=50_000_000)

    write_log(r.history[:300], tmp_path / "h.jsonl")
    assert tuple(read_log(tmp_path / "h.jsonl")) == r.history[:300]


def _cached_guest_is_caught(history, ttl):
    """Rewrite g0's stats and reads as a cache of ``ttl`` ns would have answered them (as
    cache=auto would with that timeout): stale reads are flagged, none older than the cache."""
    cache: dict[tuple, tuple] = {}
    forged = []
    for o in sorted(history, key=lambda o: o.start_ns):
        if o.guest == "g0" and o.kind in ("stat", "read"):
            hit = cache.get((o.kind, o.path))
            if hit is not None and o.start_ns - hit[0] <= ttl:
                o = Operation(guest=o.guest, kind=o.kind, path=o.path, result=hit[1], errno=hit[2],
                              start_ns=o.start_ns, end_ns=o.end_ns)
            else:
                cache[(o.kind, o.path)] = (o.start_ns, o.result, o.errno)
        forged.append(o)
    res = check(forged, Tree(dirs=stress.DIRS))
    assert res.total.stale_reads > 0
    assert {f.op.guest for f in res.findings} == {"g0"}
    assert all(f.kind == "stale" and 0 < f.staleness_ns <= ttl for f in res.findings), \
        [f.describe() for f in res.findings if not (f.kind == "stale" and f.staleness_ns <= ttl)]


@pytest.mark.parametrize("cache,versions,timeout", [
    ("always", True, 1.0),          # the point of the version table: cached, yet 0 stale reads
    ("auto", False, 0.3),           # stale reads appear, none older than the timeout (+ margin)
    ("always", False, 1.0),         # stale reads appear, and the checker sees them
])
def test_stress_in_each_cache_mode(tmp_path, cache, versions, timeout):
    share = tmp_path / "share"
    share.mkdir()
    r = run_stress(guests=4, seconds=2.5, cache=cache, versions=versions, seed=99, share=share,
                   timeout=timeout)
    total = r.result.total
    assert total.operations >= 200
    if versions:
        assert r.coherent and r.exit_status == 0
        assert r.result.findings == (), [f.describe() for f in r.result.findings[:5]]
        return
    assert not r.coherent and r.exit_status == 0
    assert total.stale_reads > 0, total
    if cache == "auto":
        margin = 0.3
        assert total.worst_staleness_ns <= (timeout + margin) * 1e9, total


@pytest.mark.parametrize("flags,shown", [
    (["--writeback"], "writeback"), (["--versions"], "versions=on"),
    (["--dax", "always"], "dax=always"),
])
def test_writeback_versions_and_dax_flags_reach_the_guests(tmp_path, flags, shown, capsys):
    args = ["--guests", "2", "--seconds", "0.5", "--cache", "always", *flags, "--share", str(tmp_path)]
    status = main(args)
    out = capsys.readouterr().out
    assert shown in out
    assert status == 0


def _fake(cache="none", versions=False, stale=1, dax="never", register="size/mode of a"):
    op = Operation(guest="g0", kind="stat", path="a", result=(1, 0o644), start_ns=5, end_ns=6)
    findings = tuple(Finding(op=op, kind="stale", register=register, staleness_ns=3_000_000)
                     for _ in range(stale))
    per, total = summarize([op], findings)
    return StressReport(guests=1, seconds=1.0, cache=cache, versions=versions, writeback=False,
                        seed=7, elapsed_s=1.0, check_s=0.0,
                        result=CheckResult(findings, per, total), dax=dax)


@pytest.mark.parametrize("register,status", [("size/mode of a", 1), ("existence of a", 1),
                                             ("listing of d: a", 1), ("content of a", 0)])
def test_with_dax_only_torn_file_data_is_expected(register, status, capsys):
    """DAX reads of file data may be torn, but sizes, modes, names and listings still go through
    the host and its version table: a stale one fails the run (it hid a lost chmod once)."""
    for cache, versions in (("none", False), ("always", True)):
        r = _fake(cache, versions, dax="always", register=register)
        assert r.exit_status == status
        print_report(r, Console(file=io.StringIO()))
    assert _fake("always", False, dax="always", register=register).exit_status == 0


@pytest.mark.parametrize("cache,versions,status", [
    ("none", False, 1), ("always", True, 1), ("auto", False, 0), ("always", False, 0)])
def test_exit_status_follows_what_the_mode_promises(cache, versions, status):
    assert _fake(cache, versions).exit_status == status
    assert _fake(cache, versions, stale=0).exit_status == 0


def test_stale_reads_show_in_the_table():
    out = io.StringIO()
    print_report(_fake("auto"), Console(file=out, width=140, color_system=None))
    text = out.getvalue()
    assert "3.000" in text and "expected" in text and "size/mode of a" in text
    assert render(_fake()).row_count == 2


@pytest.mark.parametrize("args", [
    ["--guests", "0"], ["--guests", "x"], ["--cache", "sometimes"], ["--seconds", "-1"],
    ["--seconds", "soon"], ["--bogus"], ["--share", "/no/such/dir"], ["extra"],
    ["--log", "/no/such/dir/h.jsonl"], ["--timeout", "-1"], ["--cache", "none", "--versions"],
])
def test_command_line_mistakes_are_one_line_and_exit_2(args, capsys):
    with pytest.raises(SystemExit) as exc:
        main(args)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "error" in err[0], err


def test_command_line_run(tmp_path, capsys):
    log = tmp_path / "h.jsonl"
    assert main(["--guests", "2", "--seconds", "0.5", "--seed", "3", "--log", str(log)]) == 0
    out = capsys.readouterr().out
    assert "total" in out and "no stale read" in out and "seed 3" in out
    assert len(read_log(log)) > 10


def test_a_run_whose_host_dies_fails_and_says_so(tmp_path):
    """Every read after the host's death fails and goes unchecked: such a run proves nothing, so
    it must not pass as "no stale read"."""
    import os
    import signal

    import multiprocess
    killed = []

    def progress(phase, done, total):
        if phase == "run" and not killed:
            for p in multiprocess.active_children():
                if p.name == "vfs-hostd":
                    os.kill(p.pid, signal.SIGKILL)
                    killed.append(p.pid)
    r = run_stress(guests=2, seconds=1.0, seed=7, share=tmp_path, progress=progress)
    assert killed and r.lost == "the host exited (exit code -9)" and r.exit_status == 1
    out = io.StringIO()
    print_report(r, Console(file=out, width=120))
    assert "the run proves nothing: the host exited" in out.getvalue()
    assert "no stale read" not in out.getvalue()
