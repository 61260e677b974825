"""History checker: does every read reflect every write that completed before it started?

A history is a list of :class:`Operation` records made by several guests on one small tree of
regular files in fixed directories.  Each records its guest, what it did, its result (or errno)
and its ``time.monotonic_ns()`` start and end — one system-wide clock, so records from different
processes compare.  :func:`check` returns a :class:`CheckResult`: :class:`Finding` s, and per
guest and in total the operations, the reads, the stale reads and the worst staleness.  Pure
functions; no I/O.

The model (in the spirit of Jepsen's Knossos: an explicit search over the states a set of
concurrent writes can produce; registers per file and per attribute, read one at a time)
--------------------------------------------------------------------------------------------------

*State.*  A map from file path to inode, and per inode its content (bytes) and permission bits.
Directories are fixed: the ``dirs`` of the initial :class:`Tree` always exist and are never
written; everything else starts absent unless listed in ``Tree.files``.

*Writes* (operations that succeeded; a write that failed, with any errno, changed nothing):

=========  ==================  =========================================================
kind       args                steps, each taking effect at one instant, in order
=========  ==================  =========================================================
create     ``(mode,)``         CREATE path (needs it absent: O_CREAT|O_EXCL) → new empty inode
unlink     ``()``              UNLINK path (needs it present)
rename     ``(dst,)``          RESOLVE path; RESOLVE dst (may be absent); then nothing if both
                               named the same inode, else RENAME path → dst by name (needs
                               path present; replaces dst)
chmod      ``(mode,)``         RESOLVE path → inode; set the inode's permission bits
truncate   ``(length,)``       RESOLVE; cut or zero-extend the inode's content
write      ``(offset, data)``  RESOLVE; write ``data`` at ``offset`` (a hole reads as zeros)
append     ``(data,)``         RESOLVE; append ``data``
=========  ==================  =========================================================

Operations on a file by path are two steps, as they are in the kernel and over FUSE (LOOKUP, then
SETATTR / OPEN+WRITE on the node): the data lands on the inode the path named when it was
resolved, even if that inode was renamed or unlinked in between.  Creating and unlinking name the
file by (directory, name) and are one step.  ``rename`` looks both names up first and, as the
kernel's ``vfs_rename`` does, succeeds without doing anything when they are the same inode — with
two separate lookups, another guest's rename between them can make a rename a no-op (seen in
cache=none runs: two guests renaming ``b`` to ``d/a`` at once both succeed).

*Timing.*  Every step of an operation takes effect at one instant inside the operation's
``[start_ns, end_ns]``, in the operation's order.  Operations not ordered by real time (one
started before the other ended) may interleave their steps in any order; ``a.end_ns <
b.start_ns`` puts all of ``a`` before ``b``.  Equal timestamps are resolved in favour of the
history (a write ending at the instant a read starts need not be seen).

*How.*  The checker sweeps the history's events in time order and keeps the set of
*configurations* every interleaving can reach at the current instant: a state plus, per write
under way, whether it has acted yet and the *candidates* of each path it resolves — every inode
that path named at some instant since the write started (resolving at any of those instants and
acting later is the same as acting on any candidate).  A write's start adds it to every
configuration and closes the set under all the acts that may happen next; its end keeps the
configurations where it has acted.  This is exact except for ``rename``: its two lookups are not
ordered against each other (an over-approximation: it may accept a no-op rename that needed the
target looked up before the source).

*Reads* are checked one by one, each against the writes only (a read never constrains what another
read may see — that would be linearizability, which is stronger than "not stale"):

* ``stat`` → ``(size, mode & 0o7777)``, or errno ENOENT: the file's size and mode *at one
  instant* of the read (one LOOKUP);
* ``exists`` → ``True``/``False``: likewise;
* ``read`` → the content, or ENOENT: the path resolved at one instant to an inode (or to nothing),
  and that inode held exactly this content at some instant of the read.  (That the second instant
  is after the first is not checked: a slight over-approximation.)
* ``listdir`` (``path`` is a directory) → the names: checked *per name*, as POSIX ``readdir``
  promises — each name listed existed at some instant of the read, each known name of that
  directory that is not listed was absent at some instant of the read, and the directory's
  subdirectories are listed.  (A listing is not required to be one snapshot.)

A read is **stale** when its value is not one the register could hold at any instant of ``[start,
end]``; its **staleness** is ``start`` minus the instant the value stopped being possible — the end
of the write it missed (:attr:`Finding.missed`).  A value that was never possible before the read
ended is reported as ``never-current`` (no staleness).  A read that failed with another errno is
not checked (counted in ``unchecked``).

*A write that cannot have happened* — it succeeded, but in no configuration was its path present
(or absent, for ``create``) at any instant of it: a write through a stale dentry — is reported as
``unexplained-write``; the model then trusts the host: the step is forced, a path that must have
named *some* file is taken to name an unknown one, and whatever the write could have changed
becomes unknown (:data:`ANY`).  Reads of unknown values are not checked until a write makes them
known again (``create``; ``truncate`` to 0; ``unlink``).

*Bounds.*  When the configurations of a moment exceed :data:`MAX_CONFIGS` they are joined: per
vector of acted flags, every field on which the states disagree becomes :data:`ANY` and the
candidate sets are united (counted in ``widenings``).  The checker never reports a read the
model could explain; widening only makes it miss some.  Cost: configurations multiply with the
writes under way at once (≤ the number of guests) that do not commute; 4 guests check at about
the speed they run, 8 guests several times slower.

Deliberately not checked: whether reads agree with *each other* (two reads ordering two
concurrent writes differently; monotonic reads of one guest) — that is linearizability, not
staleness; the errno of failed operations (an ENOENT from ``unlink`` is not taken as an existence
read); what a failed write did (nothing, the model assumes); time stamps, link counts, owners and
inode numbers; symbolic links, hard links and directory changes (the directories are fixed);
that a ``read`` resolved its path before it read the content.  A write through a *stale* dentry
whose path still names some (other) file cannot be told from a correct one: with caching modes
that allow stale dentries, reads after it may be misattributed.

This module holds :data:`MAX_CONFIGS`, the search engine (``_Engine``), :func:`check` and
:func:`summarize`; the records and shared helpers are in ``checker_records``, the step semantics
of the model in ``checker_model`` and the read checks in ``checker_reads``.  Every public name is
importable from here.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable

from .checker_records import (
    WRITE_KINDS, READ_KINDS, ANY, Operation, Tree, Finding, GuestTally, CheckResult, _dirname,
    _patterns, _natural,
)
from .checker_model import (
    _ABSENT, _act, _join_states, _plan, _NO_CANDS,
)
from .checker_reads import (
    _UNCHECKED, _check_read,
)

__all__ = ["ANY", "MAX_CONFIGS", "READ_KINDS", "WRITE_KINDS", "CheckResult", "Finding",
           "GuestTally", "Operation", "Tree", "check", "summarize"]

MAX_CONFIGS = 5000


class _Engine:
    """The configurations of the current instant and what the reads may match (internal).

    A configuration is ``(state id, pending)``: states are interned (``self._states[id]``), and
    ``pending`` is ``((op index, acted, candidates), ...)`` in the order the ops started;
    ``candidates`` is a tuple of frozensets (one per tracked path) until the op acted, then None.
    """

    def __init__(self, ops: list[Operation], tree: Tree) -> None:
        self.ops = ops
        self.dirs = frozenset(tree.dirs)
        paths: set[str] = {p for p, _, _ in tree.files}
        for op in ops:
            if op.kind == "listdir":
                if op.path in self.dirs and op.ok and op.result is not None:
                    paths.update((op.path + "/" + n) if op.path else n for n in op.result)
                continue
            if op.is_write and op.ok:
                for p in (op.path, *(op.args[:1] if op.kind == "rename" else ())):
                    if p in self.dirs or _dirname(p) not in self.dirs or not p:
                        raise ValueError(f"{op.describe()}: writes must name files in the fixed "
                                         f"directories {sorted(self.dirs)}")
            paths.add(op.path)
        self.paths = tuple(sorted(p for p in paths if p not in self.dirs))
        self.plans = {i: _plan(op, i) for i, op in enumerate(ops) if op.is_write and op.ok}
        init = (tuple(sorted((p, -1 - i) for i, (p, _, _) in enumerate(tree.files))),
                tuple(sorted((-1 - i, c, m) for i, (_, c, m) in enumerate(tree.files))))
        self._states: list = []
        self._ids: dict = {}
        self._memo: dict = {}
        self._proj: dict[int, frozenset] = {}
        self.configs: set = {(self._intern(init), ())}
        self.widenings = 0
        self.max_configs = 1
        # facts possible now: key -> set of values; and until[key][value] = (t, missed op index)
        self.now: dict[Any, set] = {}
        self.until: dict[Any, dict] = {}
        self.ended: dict[Any, list] = {}        # key -> [(t, value) as they stopped], in time order
        self._refresh(0, None)

    # -- states --------------------------------------------------------------------------------

    def _intern(self, state) -> int:
        sid = self._ids.get(state)
        if sid is None:
            sid = self._ids[state] = len(self._states)
            self._states.append(state)
        return sid

    def _compact(self) -> None:
        """Forget the states no configuration uses any more (and every memo)."""
        live = {sid for sid, _ in self.configs}
        old = self._states
        self._states, self._ids, self._memo, self._proj = [], {}, {}, {}
        remap = {sid: self._intern(old[sid]) for sid in sorted(live)}
        self.configs = {(remap[sid], pend) for sid, pend in self.configs}

    def _normalize(self, sid: int, pend) -> int:
        """Drop the inodes neither a name nor a pending candidate refers to."""
        names, inodes = self._states[sid]
        keep = {v for _, v in names if v is not ANY}
        for _, _, cands in pend:
            if cands:
                for c in cands:
                    keep.update(c)
        if all(ino in keep for ino, _, _ in inodes):
            return sid
        return self._intern((names, tuple(n for n in inodes if n[0] in keep)))

    def _candidates(self, names, i: int) -> tuple:
        nm = dict(names)
        return tuple(frozenset((nm[p],)) if p in nm else _NO_CANDS for p in self.plans[i][1])

    def _act(self, sid: int, i: int, cands, forced: bool = False) -> tuple[int, ...]:
        key = (sid, i, cands, forced)
        r = self._memo.get(key)
        if r is None:
            r = self._memo[key] = tuple(self._intern(st) for st in
                                        _act(self._states[sid], self.plans[i][0], cands, forced))
        return r

    def _after(self, sid: int, new_sid: int, pend, j: int):
        """The configuration after op ``pend[j]`` acted, leaving state ``new_sid``: the other
        pending ops' candidates take in what their paths name now."""
        i = pend[j][0]
        names = self._states[new_sid][0]
        if names is not self._states[sid][0] and names != self._states[sid][0]:
            nm = dict(names)
            out = []
            for k, (o, acted, cands) in enumerate(pend):
                if k == j:
                    out.append((i, True, None))
                elif cands is not None:
                    upd = tuple(c | {nm[p]} if p in nm and nm[p] not in c else c
                                for c, p in zip(cands, self.plans[o][1]))
                    out.append((o, acted, upd))
                else:
                    out.append((o, acted, cands))
            npend = tuple(out)
        else:
            npend = pend[:j] + ((i, True, None),) + pend[j + 1:]
        return (self._normalize(new_sid, npend), npend)

    # -- configurations ------------------------------------------------------------------------

    def _successors(self, cfg):
        sid, pend = cfg
        for j, (i, acted, cands) in enumerate(pend):
            if not acted:
                for new_sid in self._act(sid, i, cands):
                    yield self._after(sid, new_sid, pend, j)

    def _close(self, frontier) -> None:
        """Add ``frontier`` and everything reachable from it to the (closed) configurations."""
        configs = self.configs
        stack = [c for c in frontier if c not in configs]
        configs.update(stack)
        limit = MAX_CONFIGS
        while stack:
            for succ in self._successors(stack.pop()):
                if succ not in configs:
                    configs.add(succ)
                    stack.append(succ)
            if len(configs) > limit:
                self._widen()
                configs = self.configs
                stack = list(configs)
                limit = 2 * (limit + len(configs))      # terminates: the limit outgrows any set
        self.max_configs = max(self.max_configs, len(configs))

    def _widen(self) -> None:
        """Join the configurations per vector of acted flags: disagreeing fields become ANY,
        candidate sets are united."""
        self.widenings += 1
        groups: dict = {}
        for sid, pend in self.configs:
            sig = tuple((i, acted) for i, acted, _ in pend)
            groups.setdefault(sig, []).append((self._states[sid], pend))
        out = set()
        for sig, members in groups.items():
            joined = self._intern(_join_states([state for state, _ in members]))
            pend = []
            for k, (i, acted) in enumerate(sig):
                cands = None
                if not acted:
                    cands = tuple(frozenset().union(*(m[1][k][2][n] for m in members))
                                  for n in range(len(self.plans[i][1])))
                pend.append((i, acted, cands))
            pend_t = tuple(pend)
            out.add((self._normalize(joined, pend_t), pend_t))
        self.configs = out

    def invoke(self, i: int, t: int) -> None:
        """Op ``i`` started at ``t``: it may act from now on."""
        added = {(sid, pend + ((i, False, self._candidates(self._states[sid][0], i)),))
                 for sid, pend in self.configs}
        # Not closed yet, even under the other ops' acts: after one of them changes what op i's
        # paths name, op i's candidates hold both the old and the new inode.
        self.configs = set()
        self._close(added)
        self._refresh(t, None)

    def complete(self, i: int, t: int) -> bool:
        """Op ``i`` ended at ``t``.  False when no configuration could complete it (then it is
        forced)."""
        done = set()
        for sid, pend in self.configs:
            for j, (k, acted, _) in enumerate(pend):
                if k == i:
                    if acted:
                        npend = pend[:j] + pend[j + 1:]
                        done.add((self._normalize(sid, npend), npend))
                    break
        ok = bool(done)
        if ok:
            self.configs = done         # still closed: a successor of a kept one is kept
        else:
            forced = set()
            for sid, pend in self.configs:
                j = next(j for j, (k, _, _) in enumerate(pend) if k == i)
                for new_sid in self._act(sid, i, pend[j][2], True):
                    _, npend = self._after(sid, new_sid, pend, j)
                    npend = npend[:j] + npend[j + 1:]
                    forced.add((self._normalize(new_sid, npend), npend))
            self.configs = set()
            self._close(forced)
        if len(self._states) > 300_000:
            self._compact()
        self._refresh(t, i)
        return ok

    # -- facts ---------------------------------------------------------------------------------

    def _facts(self, sid: int) -> frozenset:
        facts = self._proj.get(sid)
        if facts is not None:
            return facts
        names, inodes = self._states[sid]
        nm = dict(names)
        ins = {ino: (c, m) for ino, c, m in inodes}
        out = []
        for p in self.paths:
            v = nm.get(p, _ABSENT)
            out.append((("bind", p), v))
            if v is ANY:
                out.append((("exists", p), ANY))
                out.append((("stat", p), ANY))
            elif v is _ABSENT:
                out.append((("exists", p), False))
                out.append((("stat", p), None))
            else:
                c, m = ins[v]
                out.append((("exists", p), True))
                out.append((("stat", p), (ANY if c is ANY else len(c), m)))
        for ino, c, m in inodes:
            out.append((("content", ino), c))
            out.append((("attrs", ino), (ANY if c is ANY else len(c), m)))
        facts = self._proj[sid] = frozenset(out)
        return facts

    def _refresh(self, t: int, missed: int | None) -> None:
        """Recompute the facts possible now; those that stopped being possible end at ``t``."""
        new: set = set()
        for sid in {sid for sid, _ in self.configs}:
            new.update(self._facts(sid))
        now: dict[Any, set] = {}
        for key, v in new:
            now.setdefault(key, set()).add(v)
        for key, vals in self.now.items():
            keep = now.get(key, ())
            for v in vals:
                if v not in keep:
                    self.until.setdefault(key, {})[v] = (t, missed)
                    self.ended.setdefault(key, []).append((t, v))
        self.now = now

    def window(self, key, value, start: int):
        """(True, None) if ``key`` could hold ``value`` at an instant from ``start`` until now;
        else (False, (until, missed)) for the latest instant it could, or (False, None) if
        never."""
        now = self.now.get(key, ())
        ended = self.until.get(key, {})
        best = None
        for pat in _patterns(value):
            if pat in now:
                return True, None
            end = ended.get(pat)
            if end is not None and (best is None or end[0] > best[0]):
                best = end
        if best is not None and best[0] >= start:
            return True, None
        return False, best

    def possible(self, key) -> tuple:
        return tuple(sorted(self.now.get(key, ()), key=repr))


def check(history: Iterable[Operation], initial: Tree | None = None, *,
          progress: Callable[[int, int], None] | None = None) -> CheckResult:
    """Check a history (any order) against the model of the module docstring.  ``progress(done,
    total)`` (optional) is called now and then with the events processed so far."""
    tree = initial if initial is not None else Tree()
    ops = sorted(history, key=lambda o: (o.start_ns, o.end_ns, o.guest, o.kind, o.path))
    eng = _Engine(ops, tree)
    # events at one instant: write starts, then read ends, then write ends (in the history's favour)
    events = []
    for i, op in enumerate(ops):
        if op.is_write:
            if op.ok:
                events.append((op.start_ns, 0, i))
                events.append((op.end_ns, 2, i))
        else:
            events.append((op.end_ns, 1, i))
    events.sort()
    findings: list[Finding] = []
    unchecked: set[int] = set()
    for n, (t, kind, i) in enumerate(events):
        if progress is not None and not n % 1000:
            progress(n, len(events))
        op = ops[i]
        if kind == 0:
            eng.invoke(i, t)
        elif kind == 2:
            if not eng.complete(i, t):
                findings.append(Finding(op=op, kind="unexplained-write",
                                        register=f"path {op.path}", observed="success"))
        else:
            bad = _check_read(eng, op)
            if bad is _UNCHECKED:
                unchecked.add(i)
            elif bad is not None:
                fk, register, possible, staleness, missed = bad
                findings.append(Finding(op=op, kind=fk, register=register,
                                        observed="ENOENT" if op.errno else op.result,
                                        possible=possible, staleness_ns=staleness,
                                        missed=ops[missed] if missed is not None else None))
    if progress is not None:
        progress(len(events), len(events))
    findings.sort(key=lambda f: (f.op.start_ns, f.op.guest))
    per_guest, total = summarize(ops, findings, unchecked=[ops[i] for i in unchecked])
    return CheckResult(tuple(findings), per_guest, total, eng.widenings, eng.max_configs)


def summarize(ops: Iterable[Operation], findings: Iterable[Finding], *,
              unchecked: Iterable[Operation] = ()) -> tuple[tuple[GuestTally, ...], GuestTally]:
    """Per guest (natural order of names) and total tallies."""
    counts: dict[str, dict] = {}

    def row(g):
        return counts.setdefault(g, dict(operations=0, reads=0, stale_reads=0, never_current=0,
                                         unexplained_writes=0, unchecked=0, worst_staleness_ns=0))
    for op in ops:
        r = row(op.guest)
        r["operations"] += 1
        if not op.is_write:
            r["reads"] += 1
    for op in unchecked:
        row(op.guest)["unchecked"] += 1
    for f in findings:
        r = row(f.op.guest)
        if f.kind == "unexplained-write":
            r["unexplained_writes"] += 1
            continue
        r["stale_reads"] += 1
        if f.kind == "never-current":
            r["never_current"] += 1
        if f.staleness_ns is not None:
            r["worst_staleness_ns"] = max(r["worst_staleness_ns"], f.staleness_ns)
    per = tuple(GuestTally(g, **counts[g]) for g in sorted(counts, key=_natural))
    tot = dict(operations=0, reads=0, stale_reads=0, never_current=0, unexplained_writes=0,
               unchecked=0, worst_staleness_ns=0)
    for g in per:
        for k in tot:
            tot[k] = max(tot[k], getattr(g, k)) if k == "worst_staleness_ns" else tot[k] + getattr(g, k)
    return per, GuestTally("total", **tot)
