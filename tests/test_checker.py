"""The history checker on hand-made histories (stale ones are flagged, good ones pass, staleness is
measured right) and on generated ones: an execution where every step happens at one instant inside
its operation's interval never yields a finding."""

from __future__ import annotations

import errno
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vfscluster.cluster import checker
from vfscluster.cluster.checker import Operation, Tree, check

MS = 1_000_000
TREE = Tree(dirs=("", "d"))


def op(guest, kind, path, start_ms, end_ms, *args, result=None, err=None):
    return Operation(guest=guest, kind=kind, path=path, args=args, result=result, errno=err,
                     start_ns=int(start_ms * MS), end_ns=int(end_ms * MS))


def only(result, kind="stale"):
    assert len(result.findings) == 1, [f.describe() for f in result.findings]
    f = result.findings[0]
    assert f.kind == kind, f.describe()
    return f


def created(path="a", mode=0o644, guest="g0", at=0):
    return op(guest, "create", path, at, at + 1, mode)


# ---------------------------------------------------------------------- stale histories


def test_read_after_completed_write_returning_old_value_is_stale():
    h = [created(), op("g0", "append", "a", 2, 3, b"new"),
         op("g1", "read", "a", 5, 6, result=b"")]
    f = only(check(h, TREE))
    assert f.register == "content of a"
    assert f.staleness_ns == 2 * MS and f.staleness_ms == 2.0
    assert f.missed.kind == "append" and f.possible == (b"new",)


def test_stat_size_older_than_completed_truncate_is_stale():
    h = [created(), op("g0", "write", "a", 2, 3, 0, b"hello"),
         op("g0", "truncate", "a", 4, 5, 2),
         op("g1", "stat", "a", 5.5, 6, result=(5, 0o644))]
    f = only(check(h, TREE))
    assert f.register == "size/mode of a" and f.staleness_ns == MS // 2
    assert f.missed.kind == "truncate" and f.possible == ((2, 0o644),)


def test_stat_mode_older_than_completed_chmod_is_stale():
    h = [created(), op("g0", "chmod", "a", 2, 3, 0o600),
         op("g1", "stat", "a", 10, 11, result=(0, 0o644))]
    assert only(check(h, TREE)).staleness_ns == 7 * MS


def test_listdir_missing_a_name_created_before_is_stale():
    h = [created("d/x", at=0), op("g1", "listdir", "d", 4, 5, result=[])]
    f = only(check(h, TREE))
    assert "listing of d: x missing" in f.register and f.staleness_ns == 3 * MS


def test_listdir_showing_an_unlinked_name_is_stale():
    h = [created("a"), op("g0", "unlink", "a", 2, 3),
         op("g1", "listdir", "", 4, 5, result=["a", "d"])]
    f = only(check(h, TREE))
    assert "a listed" in f.register and f.staleness_ns == MS


def test_existence_after_unlink_completed_is_stale():
    h = [created(), op("g0", "unlink", "a", 2, 3),
         op("g1", "exists", "a", 3.25, 4, result=True),
         op("g2", "stat", "a", 3.5, 4, result=(0, 0o644))]
    r = check(h, TREE)
    assert [f.op.guest for f in r.findings] == ["g1", "g2"]
    assert [f.staleness_ns for f in r.findings] == [MS // 4, MS // 2]
    assert r.total.stale_reads == 2 and r.total.worst_staleness_ns == MS // 2


def test_absent_after_create_completed_is_stale():
    h = [created(at=0), op("g1", "stat", "a", 2, 3, err=errno.ENOENT),
         op("g1", "read", "a", 2, 3, err=errno.ENOENT)]
    r = check(h, TREE)
    assert len(r.findings) == 2 and all(f.staleness_ns == MS for f in r.findings)


def test_old_name_after_rename_completed_is_stale():
    h = [created("a"), op("g0", "append", "a", 1, 2, b"x"),
         op("g0", "rename", "a", 3, 4, "d/b"),
         op("g1", "read", "a", 6, 7, result=b"x"),
         op("g1", "read", "d/b", 6, 7, result=b"x")]
    f = only(check(h, TREE))
    assert f.op.path == "a" and f.staleness_ns == 2 * MS and f.missed.kind == "rename"


def test_staleness_is_measured_from_the_write_that_ended_the_value():
    # "v1" was current until the second write ended at 20 ms; the read starting at 65 ms is 45 ms
    # stale (not 60: the first write is not the one it missed)
    h = [created(), op("g0", "write", "a", 5, 6, 0, b"v1"),
         op("g0", "write", "a", 15, 20, 0, b"v2"),
         op("g0", "write", "a", 30, 31, 0, b"v3"),
         op("g1", "read", "a", 65, 66, result=b"v1")]
    f = only(check(h, TREE))
    assert f.staleness_ns == 45 * MS and f.missed.args == (0, b"v2")


def test_value_never_written_is_never_current():
    h = [created(), op("g1", "read", "a", 2, 3, result=b"garbage"),
         op("g1", "stat", "a", 2, 3, result=(0, 0o777))]
    r = check(h, TREE)
    assert [f.kind for f in r.findings] == ["never-current", "never-current"]
    assert all(f.staleness_ns is None for f in r.findings)
    assert r.total.never_current == 2 and r.total.stale_reads == 2


def test_value_from_a_write_that_started_after_the_read_ended_is_never_current():
    h = [created(), op("g1", "read", "a", 2, 3, result=b"future"),
         op("g0", "write", "a", 4, 5, 0, b"future")]
    assert only(check(h, TREE), "never-current").op.kind == "read"


def test_fixed_directory_missing_from_listing_is_flagged():
    h = [op("g0", "listdir", "", 0, 1, result=[])]
    assert "directory d missing" in only(check(h, TREE), "never-current").register


def test_fixed_directories_always_exist():
    h = [op("g0", "stat", "d", 0, 1, err=errno.ENOENT), op("g0", "exists", "d", 0, 1, result=False),
         op("g0", "listdir", "d", 0, 1, err=errno.ENOENT),
         op("g1", "stat", "d", 0, 1, result=(4096, 0o755)), op("g1", "exists", "", 0, 1, result=True)]
    r = check(h, TREE)
    assert [f.op.guest for f in r.findings] == ["g0"] * 3 and r.total.unchecked == 1


def test_write_through_a_name_long_gone_is_unexplained():
    h = [created(), op("g0", "unlink", "a", 2, 3),
         op("g1", "chmod", "a", 5, 6, 0o600)]
    r = check(h, TREE)
    f = only(r, "unexplained-write")
    assert f.op.kind == "chmod" and r.total.unexplained_writes == 1 and r.total.stale_reads == 0


# ---------------------------------------------------------------------- good histories


def test_reads_after_writes_see_them():
    h = [created(), op("g0", "append", "a", 1, 2, b"xy"),
         op("g1", "read", "a", 3, 4, result=b"xy"),
         op("g2", "stat", "a", 3, 4, result=(2, 0o644)),
         op("g0", "chmod", "a", 5, 6, 0o600),
         op("g1", "stat", "a", 7, 8, result=(2, 0o600)),
         op("g0", "rename", "a", 9, 10, "d/a"),
         op("g1", "listdir", "d", 11, 12, result=["a"]),
         op("g2", "listdir", "", 11, 12, result=["d"]),
         op("g1", "read", "d/a", 13, 14, result=b"xy"),
         op("g2", "exists", "a", 13, 14, result=False),
         op("g0", "unlink", "d/a", 15, 16),
         op("g1", "stat", "d/a", 17, 18, err=errno.ENOENT)]
    r = check(h, TREE)
    assert r.clean, [f.describe() for f in r.findings]
    assert r.total.operations == 13 and r.total.reads == 8


@pytest.mark.parametrize("seen", [b"", b"new"])
def test_read_overlapping_a_write_may_see_either_value(seen):
    h = [created(), op("g0", "write", "a", 2, 6, 0, b"new"),
         op("g1", "read", "a", 3, 4, result=seen)]
    assert check(h, TREE).clean


@pytest.mark.parametrize("seen", [b"AB", b"BA"])
def test_concurrent_appends_may_be_ordered_either_way(seen):
    h = [created(), op("g0", "append", "a", 2, 6, b"A"), op("g1", "append", "a", 3, 5, b"B"),
         op("g2", "read", "a", 10, 11, result=seen)]
    assert check(h, TREE).clean


def test_concurrent_appends_cannot_lose_one():
    h = [created(), op("g0", "append", "a", 2, 6, b"A"), op("g1", "append", "a", 3, 5, b"B"),
         op("g2", "read", "a", 10, 11, result=b"A")]
    # "A" alone was possible until B had to be in, at B's end (5 ms)
    f = only(check(h, TREE))
    assert f.staleness_ns == 5 * MS and f.missed.args == (b"B",)


def test_a_write_ending_as_the_read_starts_need_not_be_seen():
    h = [created(), op("g0", "append", "a", 2, 5, b"x"), op("g1", "read", "a", 5, 6, result=b"")]
    assert check(h, TREE).clean


def test_a_write_lands_on_the_inode_its_path_named_when_resolved():
    # g0's append resolved "a" early, then "a" was renamed to "b" and g1 appended to "b", and
    # then g0's data landed: "b" holds "BA" — possible only because resolving and writing are
    # two instants
    h = [created(), op("g0", "append", "a", 2, 20, b"A"),
         op("g1", "rename", "a", 4, 5, "b"),
         op("g1", "append", "b", 6, 7, b"B"),
         op("g2", "read", "b", 30, 31, result=b"BA")]
    assert check(h, TREE).clean


def test_a_read_sees_the_inode_it_resolved_even_after_a_rename():
    h = [created(), op("g2", "read", "a", 2, 20, result=b"B"),
         op("g1", "rename", "a", 4, 5, "b"),
         op("g1", "append", "b", 6, 7, b"B")]
    assert check(h, TREE).clean


def test_a_rename_racing_another_rename_of_the_same_file_may_do_nothing():
    # what a cache=none run showed: g2 looked "b" up (the file c had become), g0 renamed it to
    # "d/a", g2 looked "d/a" up — the same inode — and so did nothing, successfully
    h = [created("b"), created("c", guest="g3"),
         op("g0", "rename", "b", 2, 30, "d/a"),
         op("g2", "unlink", "b", 4, 5),
         op("g3", "rename", "c", 6, 10, "b"),
         op("g2", "rename", "b", 11, 29, "d/a"),
         op("g1", "stat", "d/a", 31, 32, result=(0, 0o644)),
         op("g1", "listdir", "", 31, 32, result=["d"])]
    assert check(h, TREE).clean


def test_three_removals_of_one_name_need_two_recreations():
    h = [created("b"), created("c", guest="g3"),
         op("g0", "rename", "b", 2, 30, "d/a"),
         op("g2", "unlink", "b", 4, 5),
         op("g3", "rename", "c", 6, 10, "b"),
         op("g2", "unlink", "b", 11, 29)]
    f = only(check(h, TREE), "unexplained-write")
    assert f.op.kind in ("rename", "unlink")


def test_a_write_may_resolve_its_path_before_a_pending_rename_moves_the_file():
    # g1's rename was under way when g0's truncate started; the truncate resolved "a" first,
    # the rename then moved the file to "b", g2 appended, and the truncate landed last
    h = [created("a"),
         op("g1", "rename", "a", 2, 6, "b"),
         op("g0", "truncate", "a", 3, 20, 0),
         op("g2", "append", "b", 7, 8, b"x"),
         op("g2", "read", "b", 25, 26, result=b"")]
    assert check(h, TREE).clean


def test_listing_is_checked_per_name_not_as_one_snapshot():
    # a is unlinked and b created while the listing runs: seeing both (or neither) is allowed
    h = [created("a"), op("g0", "unlink", "a", 3, 4), op("g1", "create", "b", 5, 6, 0o644)]
    for names in (["a", "b", "d"], ["d"], ["a", "d"], ["b", "d"]):
        assert check(h + [op("g2", "listdir", "", 2, 7, result=names)], TREE).clean, names


def test_failed_writes_change_nothing_and_other_errors_are_unchecked():
    h = [created(), op("g1", "create", "a", 2, 3, 0o600, err=errno.EEXIST),
         op("g1", "stat", "a", 4, 5, result=(0, 0o644)),
         op("g1", "read", "a", 4, 5, err=errno.EACCES)]
    r = check(h, TREE)
    assert r.clean and r.total.unchecked == 1


def test_initial_tree_and_per_guest_tallies():
    tree = Tree(dirs=["d"], files={"a": (b"init", 0o600)})
    h = [op("g1", "read", "a", 0, 1, result=b"init"), op("g10", "stat", "a", 0, 1, result=(4, 0o600)),
         op("g2", "truncate", "a", 2, 3, 1), op("g2", "read", "a", 4, 5, result=b"init")]
    r = check(h, tree)
    assert [g.guest for g in r.per_guest] == ["g1", "g2", "g10"]
    g2 = r.per_guest[1]
    assert (g2.operations, g2.reads, g2.stale_reads, g2.worst_staleness_ms) == (2, 1, 1, 1.0)
    assert r.total.operations == 4 and r.total.stale_reads == 1


def test_operation_validation():
    with pytest.raises(ValueError, match="unknown operation kind"):
        op("g0", "frob", "a", 0, 1)
    with pytest.raises(ValueError, match="before it starts"):
        op("g0", "stat", "a", 2, 1)
    with pytest.raises(ValueError, match="argument"):
        op("g0", "write", "a", 0, 1, b"x")
    with pytest.raises(ValueError, match="fixed"):
        check([op("g0", "unlink", "d", 0, 1)], TREE)


def test_widening_stays_sound(monkeypatch):
    monkeypatch.setattr(checker, "MAX_CONFIGS", 4)
    h = [created(), created("b", guest="g1"),
         op("g0", "append", "a", 2, 9, b"A"), op("g1", "append", "a", 3, 8, b"B"),
         op("g2", "chmod", "b", 3, 8, 0o600), op("g3", "chmod", "b", 3, 8, 0o640),
         op("g2", "read", "a", 10, 11, result=b"BA"), op("g3", "stat", "b", 10, 11, result=(0, 0o640))]
    r = check(h, TREE)
    assert r.clean and r.widenings > 0


def test_what_an_unexplained_write_could_have_touched_becomes_unknown():
    # the chmod went through a name long gone: to some file — maybe b — so b's mode is unknown,
    # but its size is not
    h = [created("a"), created("b", guest="g1"), op("g0", "unlink", "a", 2, 3),
         op("g2", "chmod", "a", 5, 6, 0o600)]
    for seen, clean in (((0, 0o600), True), ((0, 0o640), True), ((5, 0o644), False)):
        r = check(h + [op("g3", "stat", "b", 8, 9, result=seen)], TREE)
        assert [f.kind for f in r.findings] == ["unexplained-write"] + ([] if clean else ["never-current"])


# ---------------------------------------------------------------------- generated executions


class _Inode:
    def __init__(self, mode):
        self.content, self.mode = b"", mode


PATHS = ("a", "b", "d/a")


def _schedule(plan, rng):
    """Lay ``plan`` — per guest a list of (kind, path, arg, duration, gap) — out in time: the
    operations of each guest one after the other."""
    ops = []
    for g, seq in enumerate(plan):
        t = rng.randrange(5)
        for kind, path, arg, dur, gap in seq:
            start, end = t + gap, t + gap + dur
            t = end
            ops.append(dict(guest=f"g{g}", kind=kind, path=path, arg=arg, start=start, end=end,
                            token=f"<{len(ops)}>".encode()))
    return ops


def _execute(ops, rng):
    """Run the scheduled operations with every step at one random instant inside its operation's
    interval, on a straightforward model of the file system (and of GuestOS's two- and
    three-step operations); returns ``[(result, errno), …]``."""
    names: dict[str, _Inode] = {}
    points = []                  # (time, tiebreak, step no, op index)
    for key, o in enumerate(ops):
        nsteps = (2 if o["kind"] in ("chmod", "truncate", "write", "append", "read") else
                  3 if o["kind"] == "rename" else 1)
        ats = sorted(rng.randint(o["start"], o["end"]) for _ in range(nsteps))
        tb = rng.random()
        points += [(at, tb, n, key) for n, at in enumerate(ats)]
    out = [dict(result=None, err=None, bound=None, same=False) for _ in ops]
    for _, _, n, key in sorted(points):
        o, r = ops[key], out[key]
        if r["err"] is not None:
            continue
        k, p = o["kind"], o["path"]
        if k == "create":
            if p in names:
                r["err"] = errno.EEXIST
            else:
                names[p] = _Inode(o["arg"])
        elif k == "unlink":
            if names.pop(p, None) is None:
                r["err"] = errno.ENOENT
        elif k == "rename":                 # GuestOS.rename: lookup, lookup, same? else RENAME
            if n == 0:
                if p not in names:
                    r["err"] = errno.ENOENT
                r["bound"] = names.get(p)
            elif n == 1:
                r["same"] = names.get(o["arg"]) is r["bound"]
            elif r["same"] or o["arg"] == p and p in names:
                pass
            elif p not in names:
                r["err"] = errno.ENOENT
            else:
                names[o["arg"]] = names.pop(p)
        elif k in ("stat", "exists"):
            node = names.get(p)
            if k == "exists":
                r["result"] = node is not None
            elif node is None:
                r["err"] = errno.ENOENT
            else:
                r["result"] = (len(node.content), node.mode)
        elif k == "listdir":
            r["result"] = tuple(sorted({q.rpartition("/")[2] for q in names
                                        if q.rpartition("/")[0] == p} | ({"d"} if p == "" else set())))
        elif n == 0:                                    # resolving step
            if p not in names:
                r["err"] = errno.ENOENT
            else:
                r["bound"] = names[p]
        else:
            node = r["bound"]
            if k == "read":
                r["result"] = node.content
            elif k == "chmod":
                node.mode = o["arg"]
            elif k == "truncate":
                node.content = node.content[:o["arg"]].ljust(o["arg"], b"\0")
            elif k == "append":
                node.content += o["token"]
            else:
                off = o["arg"]
                c = node.content.ljust(off, b"\0")
                node.content = c[:off] + o["token"] + c[off + len(o["token"]):]
    return [(r["result"], r["err"]) for r in out]


def _history(ops, outcomes):
    history = []
    for o, (result, err) in zip(ops, outcomes):
        k = o["kind"]
        args = {"create": (o["arg"],), "rename": (o["arg"],), "chmod": (o["arg"],),
                "truncate": (o["arg"],), "write": (o["arg"], o["token"]),
                "append": (o["token"],), "unlink": ()}.get(k, ())
        history.append(Operation(guest=o["guest"], kind=k, path=o["path"], args=args,
                                 result=result, errno=err, start_ns=o["start"], end_ns=o["end"]))
    return history


def _simulate(plan, rng):
    """One execution of ``plan``: the history as the guests would have logged it."""
    ops = _schedule(plan, rng)
    return _history(ops, _execute(ops, rng))


def _mixed(plan, rng, runs=40):
    """Many executions of the same schedule; those whose writes had the same outcomes as the
    first are merged: each read takes its value from one of them, at random.  Reads are checked
    one by one, so the merged history must be clean too — and it holds far rarer values than
    any single run."""
    ops = _schedule(plan, rng)
    first = _execute(ops, rng)
    writes = [i for i, o in enumerate(ops) if o["kind"] not in ("stat", "exists", "read", "listdir")]
    seen = [[x] for x in first]
    for _ in range(runs):
        other = _execute(ops, rng)
        if all(other[i] == first[i] for i in writes):
            for i, x in enumerate(other):
                seen[i].append(x)
    return _history(ops, [rng.choice(v) for v in seen])


_KIND_ARG = {
    "create": st.sampled_from([0o600, 0o644]), "unlink": st.none(), "rename": st.sampled_from(PATHS),
    "chmod": st.sampled_from([0o600, 0o640, 0o644]), "truncate": st.sampled_from([0, 1, 3]),
    "write": st.sampled_from([0, 2]), "append": st.none(), "stat": st.none(), "exists": st.none(),
    "read": st.none(), "listdir": st.none(),
}
_op = st.sampled_from(sorted(_KIND_ARG)).flatmap(
    lambda k: st.tuples(st.just(k), st.just("") if k == "listdir" else st.sampled_from(PATHS),
                        _KIND_ARG[k], st.one_of(st.integers(0, 6), st.integers(20, 60)),
                        st.integers(0, 6)))
_plans = st.lists(st.lists(_op, min_size=1, max_size=12), min_size=1, max_size=4)


def _sequential(plan):
    """All guests' operations one after the other, each taking no time."""
    return [[(k, p, a, 0, gap + 1) for seq in plan for k, p, a, _, gap in seq]]


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_plans, st.randoms(use_true_random=False))
def test_sequential_executions_never_yield_findings(plan, rnd):
    """One guest at a time, every operation atomic: a linearizable history is always clean."""
    history = _simulate(_sequential(plan), rnd)
    r = check(history, TREE)
    assert r.clean, [f.describe() for f in r.findings]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_plans, st.randoms(use_true_random=False))
def test_concurrent_executions_never_yield_findings(plan, rnd):
    """Several guests at once, each step at some instant inside its operation: always clean."""
    history = _simulate(plan, rnd)
    r = check(history, TREE)
    assert r.clean, [f.describe() for f in r.findings]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_plans, st.randoms(use_true_random=False))
def test_concurrent_executions_stay_clean_when_widened(plan, rnd):
    history = _simulate(plan, rnd)
    old = checker.MAX_CONFIGS
    checker.MAX_CONFIGS = 3
    try:
        r = check(history, TREE)
    finally:
        checker.MAX_CONFIGS = old
    assert r.clean, [f.describe() for f in r.findings]


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_plans, st.randoms(use_true_random=False), st.data())
def test_a_sequential_read_given_an_overwritten_value_is_stale(plan, rnd, data):
    """Sequential history; a stat changed to a value an earlier stat of the same path saw but
    that is not current any more: flagged as stale, by more than nothing."""
    history = sorted(_simulate(_sequential(plan), rnd), key=lambda o: o.start_ns)
    seen: dict[str, set] = {}
    candidates = []
    for i, o in enumerate(history):
        if o.kind == "stat":
            v = None if o.errno else o.result
            old = sorted(seen.get(o.path, set()) - {v}, key=repr)
            if old:
                candidates.append((i, old))
            seen.setdefault(o.path, set()).add(v)
    if not candidates:
        return
    i, old = data.draw(st.sampled_from(candidates))
    value = data.draw(st.sampled_from(old))
    o = history[i]
    forged = Operation(guest=o.guest, kind="stat", path=o.path, result=value,
                       errno=errno.ENOENT if value is None else None,
                       start_ns=o.start_ns, end_ns=o.end_ns)
    r = check(history[:i] + [forged] + history[i + 1:], TREE)
    assert [f.op for f in r.findings] == [forged], [f.describe() for f in r.findings]
    assert r.findings[0].kind == "stale" and r.findings[0].staleness_ns > 0


def test_generated_histories_of_four_busy_guests_are_clean_and_fast():
    rng = random.Random(7)
    kinds = sorted(_KIND_ARG)
    plan = []
    for g in range(4):
        seq = []
        for _ in range(400):
            k = rng.choice(kinds)
            p = "" if k == "listdir" else rng.choice(PATHS)
            a = {"create": 0o644, "rename": rng.choice(PATHS), "chmod": rng.choice([0o600, 0o644]),
                 "truncate": rng.choice([0, 2]), "write": rng.choice([0, 3])}.get(k)
            seq.append((k, p, a, rng.randint(1, 30), rng.randint(0, 5)))
        plan.append(seq)
    r = check(_simulate(plan, rng), TREE)
    assert r.clean, [f.describe() for f in r.findings][:5]
    assert r.total.operations == 1600


def test_the_model_goes_on_after_an_unexplained_write():
    h = [created(), op("g0", "unlink", "a", 2, 3),
         op("g1", "chmod", "a", 5, 6, 0o600),
         op("g0", "create", "a", 7, 8, 0o640), op("g2", "stat", "a", 9, 10, result=(0, 0o640)),
         op("g2", "stat", "a", 9, 10, result=(0, 0o644))]
    r = check(h, TREE)
    assert [f.kind for f in r.findings] == ["unexplained-write", "stale"]


def _racy_plan(rng):
    """Two names, many renames and path-resolving writes, some long operations: the mix that
    exercises what a write resolves while other writes move files."""
    weights = {"rename": 4, "truncate": 2, "append": 3, "write": 1, "chmod": 1, "read": 4,
               "stat": 3, "create": 3, "unlink": 1, "listdir": 1}
    kinds = list(weights)
    plan = []
    for _ in range(rng.randint(2, 4)):
        seq = []
        for _ in range(rng.randint(3, 25)):
            k = rng.choices(kinds, [weights[x] for x in kinds])[0]
            arg = {"create": rng.choice([0o644, 0o600]), "rename": rng.choice(PATHS[:2]),
                   "chmod": rng.choice([0o600, 0o644]), "truncate": rng.choice([0, 1]),
                   "write": 0}.get(k)
            seq.append((k, "" if k == "listdir" else rng.choice(PATHS[:2]), arg,
                        rng.choice([rng.randint(0, 4), rng.randint(10, 40)]), rng.randint(0, 4)))
        plan.append(seq)
    return plan


def test_racy_generated_executions_never_yield_findings():
    """Seeded (a known model bug — candidates not widened by a rename pending when a write
    started — shows up within these seeds)."""
    for seed in range(300):
        rng = random.Random(seed)
        r = check(_mixed(_racy_plan(rng), rng), TREE)
        assert r.clean, (seed, [f.describe() for f in r.findings][:3])


# -- stat is two steps (the path names an inode; that inode's attributes are read later) ------------

def _stat_history(stat_result):
    return [
        op("g1", "create", "d/b", 0, 1, 0o640),
        op("g1", "append", "d/b", 2, 3, b"[x]"),                # d/b: 3 bytes
        op("g0", "stat", "d/b", 10, 100, result=stat_result),   # slow: a dentry, later GETATTR
        op("g1", "rename", "d/b", 20, 21, "c"),                 # the inode moves to c
        op("g1", "append", "c", 30, 31, b"[12345]"),            # and grows to 10 bytes
    ]


def test_stat_may_read_the_attributes_of_the_inode_its_path_named_earlier_in_it():
    """As stat(2) takes it (path walk, then ->getattr), and a caching guest (a dentry, then
    GETATTR): a stat overtaken by a rename and an append may show the appended inode's size.  A
    multi-threaded stress run failed on exactly this before stat was checked through the inode."""
    r = check(_stat_history((10, 0o640)), Tree(dirs=("", "d")))
    assert not r.findings, [f.describe() for f in r.findings]


def test_stat_of_attributes_no_inode_of_the_path_had_during_it_is_still_found():
    r = check(_stat_history((8, 0o640)), Tree(dirs=("", "d")))
    assert [f.kind for f in r.findings] == ["never-current"]


def test_stat_saying_enoent_is_still_one_instant():
    h = _stat_history(None)
    h[2] = op("g0", "stat", "d/b", 10, 15, err=errno.ENOENT)    # before the rename: d/b existed
    r = check(h, Tree(dirs=("", "d")))
    assert len(r.findings) == 1 and r.findings[0].register == "size/mode of d/b"
