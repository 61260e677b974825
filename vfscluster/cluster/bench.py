"""Benchmarks with baselines measured in the same run (``vfscluster bench …``).

``rtt``: the round trip of a ``cache=none`` ``stat`` through a guest's virtqueue to vfs-hostd and
back (as ``GuestOS.stat``, and as the bare FUSE LOOKUP under it), against (a) an AF_UNIX SEQPACKET
ping-pong between two processes carrying the same bytes (request 42 B, reply 144 B) with the server
doing the same ``os.stat``, (b) the same exchange through shared memory with both ends spinning —
no virtqueue, no FUSE: the floor of a Python request/reply between two processes — and (c)
``os.stat`` in-process.  Goals (issue: foundation): ring ≤ 0.25× SEQPACKET and ≤ 4× in-process
``os.stat``.

``meta``: ``stat`` of an unchanged file from a guest with ``cache=always,versions=on`` against a
``cache=none`` guest and ``os.stat`` on the host, and the cost of coherency: the same reader while
another guest changes the file in a loop (each change moves the file's version slot, so the
reader's next ``stat`` asks the host).  Goals (issue: coherency): versions ≥ 20× faster than
``cache=none`` and at most 1.5× the host's ``os.stat``.

``dax``: :mod:`.benchdax` (DAX vs FUSE_READ vs the host's ``os.pread``).

``queues``: (a) operations per second of a small request (``stat`` of one file with
``cache=none``: one LOOKUP round trip each) from 1, 2, 4 and 8 threads of one guest, with 1 request
queue and with 4 (per-thread queue affinity), as a ratio; (b) the latency of handing an exclusive
``fcntl`` lock from one guest to another (F_SETLKW parked on the host, granted by the other guest's
unlock, delivered as FUSE_NOTIFY_LOCK on the notification queue) against the same handoff between
two local processes on a local file.  The handoff is a strict ping-pong over three one-byte ranges
(each side unlocks the range behind it and waits for the one the other side holds), so every step
is one wake-up of the other side.
"""

from __future__ import annotations

import mmap
import os
import signal
import socket
import statistics
import time
from dataclasses import dataclass

from rich.console import Console
from rich.table import Table

from .launcher import Cluster, _context, scratch_dir
from .procutil import die_with_parent
from .topology import Topology

REQUEST = 42       # fuse_in_header + "f\0"
REPLY = 144        # fuse_out_header + fuse_entry_out


@dataclass(frozen=True)
class Result:
    name: str
    us: float
    n: int


def _timed_loop(fn, seconds: float) -> tuple[float, int]:
    for _ in range(200):
        fn()
    n = 0
    t0 = time.perf_counter()
    end = t0 + seconds
    while True:
        for _ in range(200):
            fn()
        n += 200
        t = time.perf_counter()
        if t >= end:
            return (t - t0) / n * 1e6, n


def _guest_stat_loop(gos, name: str, seconds: float):
    return _timed_loop(lambda: gos.stat(name), seconds)


def _guest_lookup_loop(gos, name: str, seconds: float):
    """The bare FUSE round trip under GuestOS: one LOOKUP through the device (lookup count
    returned with a FORGET now and then, as the client would)."""
    from ..fuse.abi import ROOT_ID, EntryOut, Opcode
    dev = gos.client.transport
    arg = [name.encode() + b"\0"]
    count = [0]

    def one():
        err, body = dev.request(Opcode.LOOKUP, ROOT_ID, arg, EntryOut.SIZE)
        count[0] += 1
    res = _timed_loop(one, seconds)
    nodeid = EntryOut.unpack_from(dev.request(Opcode.LOOKUP, ROOT_ID, arg, EntryOut.SIZE)[1]).nodeid
    import struct
    dev.send_noreply(Opcode.FORGET, nodeid, [struct.pack("<Q", count[0] + 1)])
    return res


def _quiet_child(parent: int) -> None:
    """In a baseline's child process: Ctrl-C is for the parent, which ends the child itself (a
    KeyboardInterrupt here would only print a traceback), and the child dies with the parent
    (``parent``: its pid), kill -9 included — a spinning ping-pong server would spin for ever."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    for sig in (signal.SIGTERM, signal.SIGHUP):     # not the launcher's handlers (cliutil)
        signal.signal(sig, signal.SIG_DFL)
    die_with_parent(signal.SIGKILL, parent=parent)


def _seqpacket_server(sock, other_end, path: str, parent: int) -> None:
    _quiet_child(parent)
    other_end.close()        # the copy fork gave us: else the parent's close would never be EOF here
    reply = bytes(REPLY)
    while True:
        data = sock.recv(4096)
        if not data:
            return
        os.stat(path)
        sock.send(reply)


_SHM_REQ, _SHM_REP = 64, 128     # where the request and the reply sit (words 0 and 1: counters)
_SHM_STOP = (1 << 64) - 1


def _shm_server(mem: mmap.mmap, path: str, parent: int) -> None:
    """The far end of the shared-memory ping-pong: spins on the request counter (word 0), takes the
    request out, does the ``os.stat``, writes the reply and publishes the counter (word 1)."""
    _quiet_child(parent)
    words = memoryview(mem).cast("Q")
    reply = bytes(REPLY)
    seen = 0
    while True:
        n = words[0]
        if n == seen:
            continue
        if n == _SHM_STOP:
            return
        seen = n
        bytes(mem[_SHM_REQ:_SHM_REQ + REQUEST])     # carry the request out, as a server does
        os.stat(path)
        mem[_SHM_REP:_SHM_REP + REPLY] = reply
        words[1] = n            # x86 TSO: the reply's stores are seen before this one


def _shm_loop(path: str, seconds: float) -> tuple[float, int]:
    """Request/reply through an anonymous shared mapping with a forked server, both ends spinning
    (each burns a CPU meanwhile, so the server lives only for this loop)."""
    import multiprocess
    mem = mmap.mmap(-1, mmap.PAGESIZE)
    proc = multiprocess.get_context("fork").Process(target=_shm_server, args=(mem, path, os.getpid()),
                                                    daemon=True)
    proc.start()
    words = memoryview(mem).cast("Q")
    req = bytes(REQUEST)
    sent = [0]

    def one():
        sent[0] += 1
        n = sent[0]
        mem[_SHM_REQ:_SHM_REQ + REQUEST] = req
        words[0] = n
        spins = 0
        while words[1] != n:
            spins += 1
            if not spins & 0xFFFF and not proc.is_alive():
                raise RuntimeError("the shared-memory ping-pong server died")
        return bytes(mem[_SHM_REP:_SHM_REP + REPLY])
    try:
        return _timed_loop(one, seconds)
    finally:
        words[0] = _SHM_STOP
        proc.join(5)
        if proc.is_alive():
            proc.kill()
            proc.join()
        words.release()
        mem.close()


RTT_ROUNDS = 3


def bench_rtt(seconds: float = 2.0, console: Console | None = None) -> list[Result]:
    """The five round trips, measured in ``RTT_ROUNDS`` interleaved rounds of ``seconds /
    RTT_ROUNDS`` each (the cluster and the SEQPACKET pair stay up throughout), so that a passing
    disturbance of the machine touches every row alike; each row reports its median round."""
    console = console or Console()
    per = seconds / RTT_ROUNDS
    names = ("ring: GuestOS.stat (guest → vfs-hostd)", "ring: bare FUSE LOOKUP round trip",
             "AF_UNIX SEQPACKET + os.stat", "shared memory, both spinning + os.stat (floor)",
             "os.stat in-process")
    rounds: list[list[tuple[float, int]]] = [[] for _ in names]
    with scratch_dir("bench") as share:
        path = os.path.join(share, "f")
        with open(path, "wb") as f:
            f.write(b"x" * 100)
        ctx = _context()
        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        proc = ctx.Process(target=_seqpacket_server, args=(b, a, path, os.getpid()), daemon=True)
        proc.start()
        b.close()
        req = bytes(REQUEST)

        def ping():
            a.send(req)
            a.recv(4096)
        try:
            with Cluster.start(Topology(share, 1, cache="none")) as c:
                g = c.guests[0]
                for r in range(RTT_ROUNDS):
                    with console.status(f"round {r + 1}/{RTT_ROUNDS}: stat through the ring, "
                                        f"SEQPACKET and shared-memory ping-pongs, os.stat…"):
                        rounds[0].append(g.run(_guest_stat_loop, "f", per))
                        rounds[1].append(g.run(_guest_lookup_loop, "f", per))
                        rounds[2].append(_timed_loop(ping, per))
                        rounds[3].append(_shm_loop(path, per))
                        rounds[4].append(_timed_loop(lambda: os.stat(path), per))
        finally:
            a.close()
            proc.join(5)
    return [Result(name, statistics.median(us for us, _ in rs), sum(n for _, n in rs))
            for name, rs in zip(names, rounds)]


def _chmod_loop(gos, name: str, seconds: float):
    modes = (0o644, 0o640)
    i = [0]

    def one():
        i[0] += 1
        gos.chmod(name, modes[i[0] & 1])
    return _timed_loop(one, seconds)


def _stat_counting_loop(gos, name: str, seconds: float):
    """``stat`` in a loop; also returns how many of them asked the host."""
    client = gos.client
    before = client.requests
    us, n = _timed_loop(lambda: gos.stat(name), seconds)
    return us, n, client.requests - before


def bench_meta(seconds: float = 2.0, console: Console | None = None) -> tuple[list[Result], dict]:
    console = console or Console()
    results = []
    extra = {}
    with scratch_dir("bench") as share:
        os.makedirs(os.path.join(share, "d", "e"))
        path = os.path.join(share, "d", "e", "f")
        with open(path, "wb") as f:
            f.write(b"x" * 100)
        name = "d/e/f"
        us, n = _timed_loop(lambda: os.stat(path), seconds)
        results.append(Result("os.stat on the host", us, n))
        topo = Topology(share, [{"name": "versions", "cache": "always", "versions": True},
                                {"name": "none", "cache": "none"},
                                {"name": "always", "cache": "always"},
                                {"name": "writer", "cache": "none"}])
        with console.status("stat of an unchanged file from each guest…"):
            with Cluster.start(topo) as c:
                ver, none, always, writer = c.guests
                us, n, _ = ver.run(_stat_counting_loop, name, seconds)
                results.append(Result("guest stat, cache=always,versions=on", us, n))
                us, n, _ = always.run(_stat_counting_loop, name, seconds)
                results.append(Result("guest stat, cache=always (no coherency)", us, n))
                us, n, _ = none.run(_stat_counting_loop, name, seconds)
                results.append(Result("guest stat, cache=none", us, n))
                (wus, wn), (us, n, asked) = c.run_together(
                    [(writer, _chmod_loop, name, seconds * 1.2), (ver, _stat_counting_loop, name, seconds)])
                results.append(Result("versions=on stat while another guest chmods", us, n))
                results.append(Result("  the other guest's chmod meanwhile", wus, wn))
                extra["refreshed"] = asked / max(n, 1)
    return results, extra


def _report(title: str, results: list[Result], goals: list[tuple[str, float, float]], console: Console) -> bool:
    t = Table(title=title)
    t.add_column("measurement")
    t.add_column("µs/op", justify="right")
    t.add_column("ops", justify="right")
    t.add_column("× first row", justify="right")
    base = results[0].us
    for r in results:
        t.add_row(r.name, f"{r.us:.2f}", str(r.n), f"{r.us / base:.2f}")
    console.print(t)
    ok = True
    for text, ratio, limit in goals:
        met = ratio <= limit
        ok &= met
        console.print(f"{'[green]met[/green]' if met else '[red]missed[/red]'}: {text}: {ratio:.3g} (goal ≤ {limit})")
    return ok


def _plot(path: str, title: str, results: list[Result]) -> None:
    """A bar per row, in table order from the top, each labelled with its µs; the axis is
    logarithmic when the rows span more than 20× (a cached stat next to a round trip)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    longest = max(len(r.name) for r in results)
    fig, ax = plt.subplots(figsize=(4 + 0.075 * longest, 0.9 + 0.4 * len(results)))
    names = [r.name for r in results][::-1]
    values = [r.us for r in results][::-1]
    bars = ax.barh(names, values)
    ax.bar_label(bars, labels=[f"{v:.3g}" for v in values], padding=3, fontsize=8)
    if max(values) > 20 * min(values):
        ax.set_xscale("log")
    ax.set_xlim(right=max(values) * (3 if ax.get_xscale() == "log" else 1.15))
    ax.set_xlabel("µs per operation")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main(which: str, *, seconds: float = 2.0, plot: str | None = None, dax_mib: int = 64) -> int:
    console = Console()
    if which == "rtt":
        res = bench_rtt(seconds, console)
        ring, bare, seq, _floor, local = res
        _report("round trip of one stat", res, [
            ("GuestOS.stat through the ring / SEQPACKET", ring.us / seq.us, 0.25),
            ("GuestOS.stat through the ring / in-process os.stat", ring.us / local.us, 4.0),
            ("bare LOOKUP through the ring / SEQPACKET", bare.us / seq.us, 0.25)], console)
        if plot:
            _plot(plot, "round trip of one stat", res)
            console.print(f"plot written to {plot}")
        return 0
    if which == "meta":
        res, extra = bench_meta(seconds, console)
        host, ver, always, none, busy, _writer = res
        _report("stat of a cached file: versions vs none vs the host", res, [
            ("versions=on stat / cache=none stat (goal: 20× faster)", ver.us / none.us, 0.05),
            ("versions=on stat / host os.stat", ver.us / host.us, 1.5)], console)
        console.print(f"while another guest changed the file, {extra['refreshed']:.1%} of the "
                      f"reader's stats asked the host")
        if plot:
            _plot(plot, "stat of a cached file", res)
            console.print(f"plot written to {plot}")
        return 0
    if which == "dax":
        from .benchdax import bench_dax, report
        groups, huge, places = bench_dax(seconds, dax_mib << 20, console)
        report(groups, huge, dax_mib << 20, console, places)
        if plot:
            _plot(plot, "file reads: DAX vs FUSE_READ vs the host", [r for g in groups for r, _ in g])
            console.print(f"plot written to {plot}")
        return 0
    if which == "queues":
        rows, handoffs = bench_queues(seconds, console)
        _report_queues(rows, handoffs, console)
        if plot:
            _plot(plot, "exclusive lock handoff", handoffs)
            console.print(f"plot written to {plot}")
        return 0
    raise ValueError(which)


# ---------------------------------------------------------------------------- bench queues

THREADS = (1, 2, 4, 8)
WIDE = 4          # the multiqueue guest's request queues


def _ops_per_second(gos, name: str, nthreads: int, seconds: float) -> float:
    """``stat(name)`` from ``nthreads`` threads for ``seconds``: operations per second."""
    import threading
    counts = [0] * nthreads
    start = threading.Barrier(nthreads + 1)
    end = [0.0]

    failed: list[BaseException] = []

    def worker(i: int) -> None:
        try:
            for _ in range(20):
                gos.stat(name)
            start.wait()
            n = 0
            while True:
                for _ in range(20):
                    gos.stat(name)
                n += 20
                if time.perf_counter() >= end[0]:
                    break
            counts[i] = n
        except (OSError, threading.BrokenBarrierError) as exc:   # e.g. the guest shutting down
            failed.append(exc)
            start.abort()
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(nthreads)]
    for t in threads:
        t.start()
    end[0] = time.perf_counter() + seconds
    t0 = time.perf_counter()
    try:
        start.wait()
    except threading.BrokenBarrierError:
        pass
    for t in threads:
        t.join()
    if failed:
        raise failed[0]
    return sum(counts) / (time.perf_counter() - t0)


def _dance(lock, unlock, role: int, n: int) -> tuple[float, float]:
    """The handoff ping-pong (module docstring): side 0 starts holding ranges 0 and 1, side 1
    range 2; ``n`` steps each; returns (start, end) on the system-wide monotonic clock."""
    t0 = time.monotonic()
    if role == 0:
        for i in range(n):
            unlock(i % 3)
            lock((i - 1) % 3)
    else:
        for k in range(n):
            lock(k % 3)
            unlock((k - 1) % 3)
    return t0, time.monotonic()


def _guest_dance_setup(gos, name: str, role: int) -> None:
    import fcntl
    fd = gos.open(name, os.O_RDWR)
    for r in ((0, 1) if role == 0 else (2,)):
        gos.fcntl_lock(fd, fcntl.F_SETLK, fcntl.F_WRLCK, r, 1)
    gos._bench_lock_fd = fd


def _guest_dance(gos, role: int, n: int) -> tuple[float, float]:
    import fcntl
    fd = gos._bench_lock_fd
    try:
        return _dance(lambda r: gos.fcntl_lock(fd, fcntl.F_SETLKW, fcntl.F_WRLCK, r, 1),
                      lambda r: gos.fcntl_lock(fd, fcntl.F_SETLK, fcntl.F_UNLCK, r, 1), role, n)
    finally:
        del gos._bench_lock_fd
        gos.close(fd)


def _local_dancer(conn, path: str, role: int, n: int, parent: int) -> None:
    """A local process's side: set up on the first message, dance on the second."""
    import fcntl
    _quiet_child(parent)
    fd = os.open(path, os.O_RDWR)
    conn.recv()
    for r in ((0, 1) if role == 0 else (2,)):
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, r)
    conn.send("ready")
    conn.recv()
    conn.send(_dance(lambda r: fcntl.lockf(fd, fcntl.LOCK_EX, 1, r),
                     lambda r: fcntl.lockf(fd, fcntl.LOCK_UN, 1, r), role, n))
    os.close(fd)


def _handoff_us(times: list[tuple[float, float]], n: int) -> float:
    """µs per handoff: from when both sides run to when both are done, over 2n handoffs."""
    return (max(e for _, e in times) - max(s for s, _ in times)) / (2 * n) * 1e6


def bench_queues(seconds: float = 2.0, console: Console | None = None) -> tuple[list, list[Result]]:
    """((threads, ops/s with 1 queue, ops/s with WIDE queues) rows, [guest handoff, local])."""
    console = console or Console()
    rows = []
    with scratch_dir("bench") as share:
        path = os.path.join(share, "f")
        with open(path, "wb") as f:
            f.write(b"x" * 100)
        topo = Topology(share, [{"name": "q1", "num_request_queues": 1},
                                {"name": f"q{WIDE}", "num_request_queues": WIDE},
                                {"name": "other"}], cache="none")
        n_guest = max(20, int(seconds * 150))
        with Cluster.start(topo) as c:
            narrow, wide, other = c.guests
            for t in THREADS:
                with console.status(f"stat from {t} thread(s), 1 and {WIDE} request queues…"):
                    rows.append((t, narrow.run(_ops_per_second, "f", t, seconds),
                                 wide.run(_ops_per_second, "f", t, seconds)))
            with console.status("lock handoff between two guests…"):
                narrow.run(_guest_dance_setup, "f", 0)
                other.run(_guest_dance_setup, "f", 1)
                guest_us = _handoff_us(c.run_together([(g, _guest_dance, role, n_guest)
                                                        for role, g in enumerate((narrow, other))]),
                                       n_guest)
        n_local = max(200, int(seconds * 2000))
        with console.status("lock handoff between two local processes…"):
            ctx = _context()
            pipes, procs = [], []
            for role in (0, 1):
                a, b = ctx.Pipe()
                procs.append(ctx.Process(target=_local_dancer, args=(b, path, role, n_local, os.getpid()),
                                         daemon=True))
                procs[-1].start()
                pipes.append(a)
            for a in pipes:            # side 0 takes its ranges before side 1 starts
                a.send("setup")
                a.recv()
            for a in pipes:
                a.send("go")
            local_us = _handoff_us([a.recv() for a in pipes], n_local)
            for p in procs:
                p.join(10)
    handoffs = [Result("lock handoff guest → guest (F_SETLKW + NOTIFY_LOCK)", guest_us, 2 * n_guest),
                Result("lock handoff local process → process (fcntl)", local_us, 2 * n_local)]
    return rows, handoffs


def _report_queues(rows: list, handoffs: list[Result], console: Console) -> None:
    t = Table(title=f"cache=none stat from one guest: 1 vs {WIDE} request queues")
    t.add_column("threads", justify="right")
    t.add_column("ops/s, 1 queue", justify="right")
    t.add_column(f"ops/s, {WIDE} queues", justify="right")
    t.add_column(f"{WIDE} queues / 1", justify="right")
    for threads, one, wide in rows:
        t.add_row(str(threads), f"{one:,.0f}", f"{wide:,.0f}", f"{wide / one:.2f}")
    console.print(t)
    base1, basew = rows[0][1], rows[0][2]
    for threads, one, wide in rows[1:]:
        console.print(f"{threads} threads / 1 thread: {one / base1:.2f}× with 1 queue, "
                      f"{wide / basew:.2f}× with {WIDE} queues")
    _report("exclusive lock handoff", handoffs, [], console)
    guest, local = handoffs
    console.print(f"guest handoff / local handoff: {guest.us / local.us:.1f}×")
