"""The ``vfscluster`` command.

    vfscluster demo                   three DAX guests fetch-adding counters in one MAP_SHARED file
    vfscluster demo --files           three guests on a temporary share, watching each other's files
    vfscluster up TOPOLOGY.toml       start a cluster and keep it up until Ctrl-C
    vfscluster bench rtt              round-trip benchmarks with same-run baselines
    vfscluster bench meta             cached metadata: cache=always,versions=on vs none vs os.stat
    vfscluster bench queues           1 vs 4 request queues from 1-8 threads; lock handoff guest/local
    vfscluster bench dax              DAX vs FUSE_READ vs host os.pread (4 KiB random, 1 MiB sequential)
    vfscluster stress --guests N …    random operations from N guests, checked for stale reads
    vfscluster top [--cluster ID]     live per-guest and per-virtqueue figures of a running cluster
    vfscluster clean [--all]          remove what dead clusters left behind
"""

from __future__ import annotations

import os
import sys
import threading

from .cliutil import ArgumentParser, exit_status, fail, stop_on_termination
from .errors import ConfigError, MemberExited


def _cmd_up(a) -> int:
    from rich.console import Console
    from rich.table import Table

    from .cluster.launcher import Cluster
    from .cluster.topology import Topology
    try:
        topo = Topology.load(a.topology)
    except ConfigError as exc:
        fail("vfscluster up", str(exc))
    console = Console()
    if not os.path.exists(topo.share):
        os.makedirs(topo.share)
        console.print(f"created the share directory {topo.share}")
    try:
        with Cluster.start(topo, trace=a.trace, log_level=a.log_level) as c:
            t = Table(title=f"cluster {c.id} — share {topo.share}")
            for col in ("member", "pid", "cache", "queues", "where"):
                t.add_column(col)
            t.add_row("host (vfs-hostd)", str(c.host.pid), "", "", c.socket_path)
            for g in c.guests:
                t.add_row(f"guest {g.name}", str(g.pid), g.spec.cache, str(g.spec.num_request_queues),
                          g.control_path)
            console.print(t)
            console.print("Up. Ctrl-C stops every member and removes its sockets and shared memory.")
            stop = threading.Event()
            while not stop.wait(1.0):
                dead = [m.name for m in [c.host, *c.guests] if not m.alive()]
                if dead:
                    console.print(f"[red]member(s) exited: {', '.join(dead)}[/red]")
                    return 1
    except KeyboardInterrupt:       # the way to stop `up`: the with-block has cleaned up
        console.print("stopped; every member is gone and its resources removed")
    return 0


def _cmd_clean(a) -> int:
    from .cluster.launcher import sweep
    removed = sweep(everything=a.all)
    for r in removed:
        print(f"removed {r}")
    print(f"{len(removed)} item(s) removed")
    return 0


def _cmd_top(a) -> int:
    from .cluster.top import run_top
    try:
        return run_top(a.cluster, interval=a.interval, iterations=1 if a.once else a.iterations)
    except KeyboardInterrupt as exc:        # Ctrl-C is how top ends; SIGTERM/SIGHUP keep 128+n
        if getattr(exc, "signo", None) is not None:
            raise
        return 0


def _cmd_demo(a) -> int:
    if a.files:
        from .cluster.demo import run_demo
        return run_demo(guests=a.guests)
    from .cluster.mmapdemo import run_mmap_demo
    return run_mmap_demo(guests=a.guests, count=a.count)


def _cmd_bench(a) -> int:
    from .cluster import bench
    return bench.main(a.which, seconds=a.seconds, plot=a.plot, dax_mib=a.dax_mib)


def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(prog="vfscluster", description="virtio-fs emulation: host, guests, shared memory")
    sub = p.add_subparsers(dest="cmd", metavar="COMMAND", parser_class=ArgumentParser)
    sub.required = True
    d = sub.add_parser("demo", help="three DAX guests sharing counters through mmap (--files: a directory)")
    d.add_argument("--guests", type=int, default=3)
    d.add_argument("--files", action="store_true", help="the file demo: guests watching each other's files")
    d.add_argument("--count", type=int, default=500_000, help="fetch-adds per guest (mmap demo)")
    d.set_defaults(fn=_cmd_demo)
    u = sub.add_parser("up", help="start a cluster from a TOML topology; Ctrl-C stops it")
    u.add_argument("topology")
    u.add_argument("--trace", metavar="FILE", help="host protocol trace file")
    u.add_argument("--log-level", default="WARNING")
    u.set_defaults(fn=_cmd_up)
    b = sub.add_parser("bench", help="benchmarks (ratios against baselines measured in the same run)")
    b.add_argument("which", choices=("rtt", "meta", "queues", "dax"))
    b.add_argument("--seconds", type=float, default=2.0, help="time per measurement")
    b.add_argument("--plot", metavar="PNG", help="also write a bar chart")
    b.add_argument("--dax-mib", type=int, default=64, metavar="MIB", help="bench dax: size of the file read")
    b.set_defaults(fn=_cmd_bench)
    st = sub.add_parser("stress", help="random operations from N guests; a checker finds stale reads")
    from .cluster import stress
    stress.add_arguments(st)
    st.set_defaults(fn=stress.run_cli)
    t = sub.add_parser("top", help="live per-guest and per-virtqueue figures of a running cluster")
    t.add_argument("--cluster", metavar="ID", help="the cluster to show (needed when several run)")
    t.add_argument("--interval", type=float, default=1.0, metavar="SECONDS", help="time between polls")
    t.add_argument("--once", action="store_true", help="print one snapshot (two polls apart) and exit")
    t.add_argument("--iterations", "-n", type=int, metavar="N", help="exit after N displays")
    t.set_defaults(fn=_cmd_top)
    c = sub.add_parser("clean", help="remove shared memory, sockets and processes of dead clusters")
    c.add_argument("--all", action="store_true", help="also clusters whose launcher is still alive")
    c.set_defaults(fn=_cmd_clean)
    a = p.parse_args(argv)
    if getattr(a, "guests", 3) is not None and a.cmd == "demo" and not 1 <= a.guests <= 16:
        fail("vfscluster demo", "--guests must be between 1 and 16")
    if a.cmd == "bench" and a.dax_mib < 2:
        fail("vfscluster bench", "--dax-mib must be at least 2")
    if a.cmd == "bench" and not 0 < a.seconds <= 3600:
        fail("vfscluster bench", "--seconds must be a positive number of seconds (at most 3600)")
    if a.cmd == "bench" and a.plot and not os.path.isdir(os.path.dirname(os.path.abspath(a.plot))):
        fail("vfscluster bench", f"--plot {a.plot!r}: no such directory")
    if a.cmd == "top" and not 0.05 <= a.interval <= 3600:
        fail("vfscluster top", "--interval must be a number of seconds between 0.05 and 3600")
    if a.cmd == "top" and a.iterations is not None and a.iterations < 1:
        fail("vfscluster top", "--iterations must be at least 1")
    if a.cmd == "top" and a.once and a.iterations not in (None, 1):
        fail("vfscluster top", "--once and --iterations N disagree (--once is --iterations 1)")
    if a.cmd == "demo" and a.count < 1:
        fail("vfscluster demo", "--count must be at least 1")
    stop_on_termination()
    try:
        return a.fn(a)
    except ConfigError as exc:
        fail(f"vfscluster {a.cmd}", str(exc))
    except KeyboardInterrupt as exc:
        return exit_status(exc)
    except (MemberExited, ConnectionError) as exc:      # a member killed under the command
        sys.stderr.write(f"vfscluster {a.cmd}: the cluster broke: {exc}\n")
        return 1


if __name__ == "__main__":
    sys.exit(main())
