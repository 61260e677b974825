"""``vfscluster stress``: N guests hammer a small shared tree; the history is checked for stale reads.

Each guest runs one loop inside its own process (one :meth:`GuestHandle.run` per guest, all at
once from caller threads) until a common deadline: random operations on a tree of five file names
in two directories (few names, so guests collide all the time) — ``create`` (O_CREAT|O_EXCL),
``write`` (pwrite at a small offset), ``append`` (O_APPEND), ``truncate``, ``rename`` (also across
the directories), ``unlink``, ``chmod``, and the reads ``stat``, ``read`` (whole content) and
``listdir``.  Every operation is logged with ``time.monotonic_ns()`` (one clock for every process
of the machine) before it starts and after it ends; every written byte string is unique, so a
read's content says which writes it saw.  The merged history goes to
:func:`vfscluster.cluster.checker.check`.  An operation that failed (any errno, also from the
``close`` after a write) is taken to have changed nothing; a ``read`` is one READ request as long
as the file stays under 64 KiB (it does: truncates keep files short).

In Python::

    report = run_stress(guests=4, seconds=5, cache="none")
    report.result.total.stale_reads          # 0 with cache=none
    print_report(report)

From the command line (:func:`main`)::

    vfscluster stress --guests 4 --seconds 10 --cache none [--versions] [--writeback]
                      [--timeout S] [--seed N]

prints one row per guest and a total (operations, ops/s, reads, stale reads, worst staleness), and
exits 1 when a mode that promises coherency (``cache=none``, or ``--versions``, without
``--writeback``) showed any finding.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import secrets
import shutil
import sys
import time
from dataclasses import dataclass, field
from typing import Callable

from .checker import CheckResult, Operation, Tree, check
from .topology import CACHE_MODES

__all__ = ["DIRS", "FILES", "StressReport", "add_arguments", "main", "print_report", "read_log",
           "render", "run_cli", "run_stress", "write_log"]

#: the directories of the stress tree (relative to its root), fixed for the whole run
DIRS = ("", "d")
#: the file names every guest works on
FILES = ("a", "b", "c", "d/a", "d/b")
#: operation mix (relative weights)
MIX = {"create": 12, "write": 10, "append": 12, "truncate": 5, "rename": 8, "unlink": 6,
       "chmod": 6, "stat": 16, "read": 16, "listdir": 9}
MODES = (0o600, 0o604, 0o640, 0o644)
READ_SIZE = 1 << 16
MAX_GUESTS = 16

ProgressFn = Callable[[str, float, float], None]


# ====================================================================== inside a guest


def _guest_loop(gos, root: str, index: int, seed: int, deadline_ns: int) -> list[tuple]:
    """The workload of one guest (runs inside the guest process): random operations until
    ``deadline_ns``; returns ``[(kind, path, args, result, errno, start_ns, end_ns), …]``."""
    import os as _os
    import random as _random
    import stat as _stat
    import time as _time

    rng = _random.Random(seed)
    kinds = list(MIX)
    weights = [MIX[k] for k in kinds]
    clock = _time.monotonic_ns
    gos.umask(0)
    log: list[tuple] = []
    seq = 0

    def full(p: str) -> str:
        return f"{root}/{p}" if p else root

    while clock() < deadline_ns:
        kind = rng.choices(kinds, weights)[0]
        seq += 1
        path = rng.choice(DIRS if kind == "listdir" else FILES)
        token = f"[{index}.{seq}]".encode()
        if kind == "create":
            args = (rng.choice(MODES),)
        elif kind == "write":
            args = (rng.choice((0, 2, 6)), token)
        elif kind == "append":
            args = (token,)
        elif kind == "truncate":
            args = (rng.choice((0, 0, 3, 8)),)
        elif kind == "rename":
            args = (rng.choice(FILES),)
        elif kind == "chmod":
            args = (rng.choice(MODES),)
        else:
            args = ()
        p = full(path)
        result = err = None
        start = clock()
        try:
            if kind == "create":
                gos.close(gos.open(p, _os.O_CREAT | _os.O_EXCL | _os.O_WRONLY, args[0]))
            elif kind == "write":
                fd = gos.open(p, _os.O_WRONLY)
                try:
                    gos.pwrite(fd, args[1], args[0])
                finally:
                    gos.close(fd)
            elif kind == "append":
                fd = gos.open(p, _os.O_WRONLY | _os.O_APPEND)
                try:
                    gos.write(fd, args[0])
                finally:
                    gos.close(fd)
            elif kind == "truncate":
                gos.truncate(p, args[0])
            elif kind == "rename":
                gos.rename(p, full(args[0]))
            elif kind == "unlink":
                gos.unlink(p)
            elif kind == "chmod":
                gos.chmod(p, args[0])
            elif kind == "stat":
                st = gos.stat(p)
                result = (st.st_size, _stat.S_IMODE(st.st_mode))
            elif kind == "read":
                fd = gos.open(p, _os.O_RDONLY)
                try:
                    result = gos.pread(fd, READ_SIZE, 0)
                finally:
                    gos.close(fd)
            else:
                result = tuple(sorted(gos.listdir(p)))
        except OSError as exc:
            err = exc.errno
            result = None
        end = clock()
        log.append((kind, path, args, result, err, start, end))
    return log


# ====================================================================== the run


@dataclass(frozen=True)
class StressReport:
    """What a stress run did and what the checker found."""

    guests: int
    seconds: float
    cache: str
    versions: bool
    writeback: bool
    seed: int
    elapsed_s: float            # wall time of the workload (first start to last end)
    check_s: float              # time the checker took
    result: CheckResult
    history: tuple[Operation, ...] = field(default=(), repr=False, compare=False)
    dax: str = "never"
    #: why the run proves nothing: a member died during the workload (e.g. "the host exited
    #: (exit code -9)"), or None
    lost: str | None = None

    @property
    def operations(self) -> int:
        return self.result.total.operations

    @property
    def ops_per_s(self) -> float:
        return self.operations / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def coherent(self) -> bool:
        """Whether the mode promises that no read is stale.  Write-back holds writes in the
        writer until close, so other guests may read older data meanwhile; with DAX a read is a
        size check then a copy out of the window, so a read racing another guest's size change
        may see a mix (a torn read, as with DAX between VMs: nothing orders the two guests)."""
        return (self.cache == "none" or self.versions) and not self.writeback \
            and self.dax == "never"

    @property
    def coherent_metadata(self) -> bool:
        """Whether the mode promises that no size, mode, existence or listing read is stale: as
        :attr:`coherent`, but with DAX too — sizes and modes still change only through the host
        (an extending write and a truncate go through it), so the version table covers them."""
        return (self.cache == "none" or self.versions) and not self.writeback

    def promised(self, finding) -> bool:
        """Whether the mode promises that the finding's kind of read is never stale (file
        contents: :attr:`coherent`; the rest: :attr:`coherent_metadata`)."""
        if finding.register.startswith("content of"):
            return self.coherent
        return self.coherent_metadata

    @property
    def broken(self) -> tuple:
        """The findings the mode promised would not happen."""
        return tuple(f for f in self.result.findings if self.promised(f))

    @property
    def mode(self) -> str:
        return (f"cache={self.cache}" + (",versions=on" if self.versions else "")
                + (",writeback" if self.writeback else "")
                + (f",dax={self.dax}" if self.dax != "never" else ""))

    @property
    def exit_status(self) -> int:
        return 1 if self.lost or self.broken else 0


def run_stress(guests: int = 4, seconds: float = 5.0, cache: str = "none", versions: bool = False,
               writeback: bool = False, seed: int | None = None, share: str | os.PathLike | None = None,
               progress: ProgressFn | None = None, timeout: float = 1.0,
               dax: str = "never") -> StressReport:
    """Start a cluster of ``guests`` on ``share`` (a temporary directory if None), run the
    workload for ``seconds`` and check the history.  ``progress(phase, done, total)`` is called
    now and then: phase ``"start"`` (0, then 1 when the cluster is up), ``"run"`` (seconds of
    ``seconds``), ``"check"`` (fraction of the history checked, ending with ``(1, 1)``)."""
    from .launcher import Cluster, scratch_dir
    from .topology import Topology

    if seed is None:
        seed = secrets.randbelow(1 << 31)
    report = progress or (lambda phase, done, total: None)
    with contextlib.ExitStack() as stack:
        if share is None:
            share = stack.enter_context(scratch_dir("stress"))
        share = os.fspath(share)
        topo = Topology(share, guests, cache=cache, versions=versions, writeback=writeback,
                        timeout=timeout, dax=dax, window_size=64 << 20)
        rootname = f"stress-{secrets.token_hex(4)}"
        os.makedirs(os.path.join(share, rootname, "d"))
        stack.callback(shutil.rmtree, os.path.join(share, rootname), True)
        report("start", 0, 1)
        with Cluster.start(topo) as c:
            report("start", 1, 1)
            rng = random.Random(seed)
            seeds = [rng.randrange(1 << 62) for _ in c.guests]
            total_ns = int(seconds * 1e9)
            begin = time.monotonic_ns()
            deadline = begin + total_ns
            logs = c.run_together(
                [(g, _guest_loop, "/" + rootname, i, s, deadline)
                 for i, (g, s) in enumerate(zip(c.guests, seeds))],
                tick=lambda: report("run", min(seconds, (time.monotonic_ns() - begin) / 1e9), seconds))
            names = [g.name for g in c.guests]
            lost = ", ".join(c.exited()) or None
    history = [Operation(guest=name, kind=k, path=p, args=tuple(a), result=r, errno=e,
                         start_ns=s, end_ns=t)
               for name, log in zip(names, logs) for k, p, a, r, e, s, t in log]
    report("check", 0, 1)
    t0 = time.perf_counter()
    result = check(history, Tree(dirs=DIRS),
                   progress=lambda done, total: report("check", done / max(total, 1), 1))
    check_s = time.perf_counter() - t0
    if history:
        elapsed = (max(o.end_ns for o in history) - min(o.start_ns for o in history)) / 1e9
    else:
        elapsed = 0.0
    return StressReport(guests=len(names), seconds=seconds, cache=cache, versions=versions,
                        writeback=writeback, seed=seed, elapsed_s=elapsed, check_s=check_s,
                        result=result, history=tuple(history), dax=dax, lost=lost)


# ====================================================================== the history log


def _enc(v):
    if isinstance(v, (bytes, bytearray)):
        return {"hex": bytes(v).hex()}
    if isinstance(v, (tuple, list)):
        return [_enc(x) for x in v]
    return v


def _dec(v):
    if isinstance(v, dict) and set(v) == {"hex"}:
        return bytes.fromhex(v["hex"])
    if isinstance(v, list):
        return tuple(_dec(x) for x in v)
    return v


def write_log(history, path: str | os.PathLike) -> None:
    """Write a history as JSON lines (one operation a line; bytes as ``{"hex": …}``)."""
    with open(path, "w") as f:
        for o in history:
            f.write(json.dumps({"guest": o.guest, "kind": o.kind, "path": o.path,
                                "args": _enc(o.args), "result": _enc(o.result), "errno": o.errno,
                                "start_ns": o.start_ns, "end_ns": o.end_ns}) + "\n")


def read_log(path: str | os.PathLike) -> list[Operation]:
    """Read a history written by :func:`write_log` (check it with ``check(h, Tree(dirs=DIRS))``)."""
    with open(path) as f:
        return [Operation(**{k: _dec(v) if k in ("args", "result") else v
                             for k, v in json.loads(line).items()})
                for line in f if line.strip()]


# ====================================================================== reporting


def render(report: StressReport):
    """The table: per guest and total — operations, ops/s, reads, stale reads, worst staleness."""
    from rich.table import Table

    r = report.result
    t = Table(title=f"stress: {report.guests} guest(s), {report.mode}, {report.elapsed_s:.1f} s, "
                    f"seed {report.seed}")
    for col, just in (("guest", "left"), ("operations", "right"), ("ops/s", "right"),
                      ("reads", "right"), ("stale reads", "right"), ("worst staleness ms", "right")):
        t.add_column(col, justify=just)
    secs = report.elapsed_s or 1.0
    rows = list(r.per_guest) + [r.total]
    for i, g in enumerate(rows):
        stale = str(g.stale_reads)
        if g.stale_reads:
            stale = f"[{'red' if report.coherent else 'yellow'}]{stale}[/]"
        t.add_row(g.guest, str(g.operations), f"{g.operations / secs:.0f}", str(g.reads), stale,
                  f"{g.worst_staleness_ms:.3f}", end_section=(i == len(rows) - 2))
    return t


def print_report(report: StressReport, console=None, *, show: int = 10) -> None:
    from rich.console import Console

    console = console or Console()
    console.print(render(report))
    r = report.result
    extra = []
    if r.total.never_current:
        extra.append(f"{r.total.never_current} read(s) saw a value that was never current")
    if r.total.unexplained_writes:
        extra.append(f"{r.total.unexplained_writes} write(s) could not have happened as logged")
    if r.total.unchecked:
        extra.append(f"{r.total.unchecked} read(s) failed and were not checked")
    if r.widenings:
        extra.append(f"the checker widened {r.widenings} time(s)")
    for line in extra:
        console.print(line)
    for f in r.findings[:show]:
        console.print(f"  {f.describe()}", markup=False, highlight=False)
    if len(r.findings) > show:
        console.print(f"  … and {len(r.findings) - show} more")
    console.print(f"checked {r.total.operations} operations in {report.check_s:.2f} s")
    if report.lost:
        console.print(f"[red]the run proves nothing: {report.lost} during the workload[/red]")
    elif not r.findings:
        console.print(f"[green]no stale read[/green] ({report.mode})")
    elif report.broken:
        what = "coherency" if report.coherent else "coherent metadata"
        console.print(f"[red]{report.mode} promises {what}, but {len(report.broken)} read(s) were "
                      f"stale[/red]")
    elif report.coherent_metadata:
        console.print(f"[yellow]{report.mode}: torn reads of file data are expected (DAX); sizes, "
                      f"modes, names and listings were coherent[/yellow]")
    else:
        console.print(f"[yellow]{report.mode} caches: stale reads are expected[/yellow]")


# ====================================================================== command line


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``vfscluster stress`` (for a subcommand parser)."""
    p.add_argument("--guests", type=int, default=4,
                   help="number of guests (1-16, default 4; checking slows down sharply beyond "
                        "about 6: it follows every interleaving of the concurrent writes)")
    p.add_argument("--seconds", type=float, default=10.0, help="how long they run (default 10)")
    p.add_argument("--cache", choices=CACHE_MODES, default="none", help="guest cache mode")
    p.add_argument("--versions", action="store_true", help="guests use the metadata-version table")
    p.add_argument("--writeback", action="store_true", help="guests use a writeback cache")
    p.add_argument("--dax", choices=("never", "always"), default="never",
                   help="file data through the guests' DAX windows")
    p.add_argument("--timeout", type=float, default=1.0,
                   help="cache=auto: seconds attributes and names stay cached (default 1)")
    p.add_argument("--seed", type=int, help="seed of the random workload (default: random)")
    p.add_argument("--share", metavar="DIR",
                   help="run in a fresh subdirectory of DIR (default: a temporary directory)")
    p.add_argument("--show", type=int, default=10, metavar="N", help="findings to list (default 10)")
    p.add_argument("--log", metavar="FILE", help="also write the history as JSON lines to FILE")


def run_cli(args: argparse.Namespace, prog: str = "vfscluster stress") -> int:
    """Run ``vfscluster stress`` with parsed ``args``; returns the exit status."""
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    from ..cliutil import fail
    from ..errors import ConfigError

    if not 1 <= args.guests <= MAX_GUESTS:
        fail(prog, f"--guests must be between 1 and {MAX_GUESTS}")
    if not 0 < args.seconds <= 24 * 3600:
        fail(prog, "--seconds must be a positive number of seconds")
    if args.share is not None and not os.path.isdir(args.share):
        fail(prog, f"--share {args.share!r} is not a directory")
    if args.timeout < 0:
        fail(prog, "--timeout must be >= 0")
    if args.show < 0:
        fail(prog, "--show must be >= 0")
    if args.log and not os.path.isdir(os.path.dirname(os.path.abspath(args.log))):
        fail(prog, f"--log {args.log!r}: no such directory")
    console = Console()
    bar = Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[note]}"),
                   TimeRemainingColumn(), console=Console(stderr=True), transient=True)
    tasks: dict[str, int] = {}

    def progress(phase: str, done: float, total: float) -> None:
        label = {"start": "starting the cluster", "run": "running the workload",
                 "check": "checking the history"}[phase]
        if phase not in tasks:
            tasks[phase] = bar.add_task(label, total=total, note="")
        note = f"{done:.0f}/{total:.0f} s" if phase == "run" else ""
        bar.update(tasks[phase], completed=done, note=note)

    try:
        with bar:
            report = run_stress(guests=args.guests, seconds=args.seconds, cache=args.cache,
                                versions=args.versions, writeback=args.writeback, seed=args.seed,
                                share=args.share, progress=progress, timeout=args.timeout,
                                dax=args.dax)
    except ConfigError as exc:
        fail(prog, str(exc))
    except KeyboardInterrupt:
        return 130
    print_report(report, console, show=args.show)
    if args.log:
        write_log(report.history, args.log)
        console.print(f"history written to {args.log}")
    return report.exit_status


def main(argv: list[str] | None = None) -> int:
    """``vfscluster stress [options]``: ``argv`` without the program and command names."""
    from ..cliutil import ArgumentParser

    p = ArgumentParser(prog="vfscluster stress",
                       description="N guests run random operations on a small shared tree; every "
                                   "read is checked against the writes that completed before it")
    add_arguments(p)
    return run_cli(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
