"""``vfscluster bench dax``: file reads through the DAX window against FUSE_READ and the host.

One cluster, two guests: ``dax`` (``dax=always``) and ``fuse`` (``dax=never``, every read a FUSE_READ
round trip), both ``cache=none``, reading the same file of ``size`` bytes (64 MiB): 4 KiB preads at
random page-aligned offsets, and 1 MiB preads in sequence (wrapping).  Each guest first reads the
whole file once (for DAX that maps every 2 MiB chunk: later reads send no request — the table shows
how many requests the timed DAX loops sent).

The file is written in 2 MiB pieces, so that the host's page cache holds it in 2 MiB folios (ext4,
Linux 6.16+): ``os.pread`` then copies out of few large folios, and the DAX window maps the file
with 2 MiB pages, as the kernel's direct map does — the same page size on both sides (the report
says how much of the file the guest mapped so).  A second file of the same size written 4 KiB at a
time, cached in 4 KiB pages, shows the other end: there ``os.pread`` walks 256 folios per MiB and
DAX reads it 2.5–3× faster.

The baseline is ``os.pread`` of the host's file (the page cache, no VM in between), timed inside the
DAX guest's process, the two taking turns of ``TURN`` reads (:func:`_in_turns`) over the same pages
of the file into the same malloc block.  On this VM the same 1 MiB copy runs up to 15 % faster or
slower depending on which pages it reads and on where in its page (and 64-byte line) malloc put the
destination — a user-space ``rep movsb`` minds a destination out of line with its source more than
the kernel's copy does — so separate loops in separate processes mostly measured that.

Goals (issue 5): DAX 4 KiB random ≥ 10× faster than FUSE_READ, DAX 1 MiB sequential at least as
fast as the host's ``os.pread`` (on the file in 2 MiB folios).

How much that last ratio owes to the destination, :func:`_placements` shows: the same 1 MiB copies —
out of the DAX window (a read-only ``GuestOS.mmap`` of the file, whose bytes are the window's pages)
and by the host kernel (``os.preadv`` of the host's file) — into one buffer moved through every
16-byte step of a page.  The report gives the spread of kernel / window over those placements; a
``pread`` result lands wherever malloc put the process's 1 MiB block, one of them.
"""
from __future__ import annotations

import mmap
import os
import random
import statistics
import time

from rich.console import Console

from ..guest.memcopy import data_address
from .launcher import Cluster, scratch_dir
from .topology import Topology

FILE = "big"              # written in 2 MiB pieces: cached in 2 MiB folios
SMALL_PAGES = "big-4k"    # the same written 4 KiB at a time: cached in 4 KiB pages
SMALL = 4096
LARGE = 1 << 20
HUGE = 2 << 20
TURN = 16          # reads per turn when two readers take turns (_in_turns)
PAGE = mmap.PAGESIZE
PLACE_STEP = 16    # _placements: the destination moves through its page in steps of this


def _offsets(size: int, step: int, n: int, rnd: bool, stream: int = 0,
             streams: int = 1) -> list[int]:
    """``n`` offsets of ``step``-byte reads: random page-aligned ones, or in sequence (wrapping).
    Stream ``stream`` of ``streams`` readers taking turns: its own random seed, or a sequence that
    starts ``stream / streams`` of the way into the file (so with two, each read finds its data as
    long untouched as a lone sequential reader would)."""
    if rnd:
        r = random.Random(5 + stream)
        return [r.randrange(0, size // step) * step for _ in range(n)]
    start = (size // step) * stream // streams * step
    return [(start + i * step) % size for i in range(n)]


def _pread_loop(pread, size: int, step: int, rnd: bool, seconds: float):
    """(µs per pread, how many) of ``pread(step, offset)`` over ``seconds``."""
    offs = _offsets(size, step, 4096, rnd)
    for o in offs[:64]:
        pread(step, o)
    n, t0 = 0, time.perf_counter()
    end = t0 + seconds
    while True:
        for o in offs[(n % 4096):(n % 4096) + 64]:
            pread(step, o)
        n += 64
        t = time.perf_counter()
        if t >= end:
            return (t - t0) / n * 1e6, n


def _guest_loop(gos, name: str, size: int, step: int, rnd: bool, seconds: float):
    """In a guest: warm up (read the whole file once), then the timed loop; also the requests sent
    during the timed loop."""
    fd = gos.open(name, os.O_RDONLY)
    try:
        for off in range(0, size, LARGE):
            gos.pread(fd, LARGE, off)
        before = gos.client.requests
        us, n = _pread_loop(lambda k, o: gos.pread(fd, k, o), size, step, rnd, seconds)
        return us, n, gos.client.requests - before
    finally:
        gos.close(fd)


def _in_turns(preads: list, size: int, step: int, rnd: bool, seconds: float) -> list:
    """Time ``preads`` (functions ``pread(n, offset)``) against each other: they take turns of
    ``TURN`` reads (in ABBA order) until ``seconds`` have passed, each on its own stream of
    offsets, so a slow spell of the machine touches all alike.  (µs per read, reads) of each."""
    clock = time.perf_counter_ns
    k = len(preads)
    offs = [_offsets(size, step, 4096, rnd, j, k) for j in range(k)]
    for pread, o in zip(preads, offs):
        for off in o[:TURN]:
            pread(step, off)
    spent, done = [0] * k, 0
    end = clock() + seconds * 1e9
    order = list(range(k))
    while clock() < end:
        for j in order:
            pread, batch = preads[j], offs[j][done % 4096:done % 4096 + TURN]
            t0 = clock()
            for off in batch:
                pread(step, off)
            spent[j] += clock() - t0
        done += TURN
        order.reverse()
    return [(ns / done / 1e3, done) for ns in spent]


def _guest_vs_host(gos, name: str, host_path: str, size: int, step: int, rnd: bool,
                   seconds: float):
    """In a guest: ``os.pread`` of the host's file against ``gos.pread`` of the same file, both
    warmed up (the whole file read once), then timed in turns (:func:`_in_turns`).  Returns
    ((µs, reads) of the host, (µs, reads) of the guest, requests the guest's timed reads sent)."""
    fd = gos.open(name, os.O_RDONLY)
    hfd = os.open(host_path, os.O_RDONLY)
    try:
        for off in range(0, size, LARGE):
            gos.pread(fd, LARGE, off)
            os.pread(hfd, LARGE, off)
        before = gos.client.requests
        host, guest = _in_turns([lambda k, o: os.pread(hfd, k, o), lambda k, o: gos.pread(fd, k, o)],
                                size, step, rnd, seconds)
        return host, guest, gos.client.requests - before
    finally:
        os.close(hfd)
        gos.close(fd)


def _placements(gos, name: str, host_path: str, size: int, reads: int) -> list:
    """In a guest: 1 MiB copies out of the DAX window (a read-only ``gos.mmap`` of the whole file, in
    two halves as :func:`~vfscluster.guest.memcopy.read_out` copies) and by the kernel (``os.preadv``
    of the host's file) into one buffer placed at each ``PLACE_STEP`` of a page, ``reads`` of each per
    placement, taking turns on two streams half the file apart (cold pages for both).  Returns
    ``[(offset in the page, µs of the window copy, µs of the kernel's)]``."""
    fd = gos.open(name, os.O_RDONLY)
    hfd = os.open(host_path, os.O_RDONLY)
    try:
        with gos.mmap(fd, size, 0, mmap.PROT_READ) as m:
            # every view of the mapping goes before it closes (else BufferError, which would hide
            # the error that got us out, and the mapping's ranges would stay pinned)
            with memoryview(m) as src:
                return _place_rows(src, hfd, size, reads)
    finally:
        os.close(hfd)
        gos.close(fd)


def _place_rows(src: memoryview, hfd: int, size: int, reads: int) -> list:
    """:func:`_placements`' copies out of ``src`` (the mapped file) and ``hfd``: whole 1 MiB blocks
    of the file (its size need not be a multiple of 1 MiB, nor of 2 MiB: the two streams are
    ``blocks // 2`` blocks apart)."""
    blocks = size // LARGE
    if blocks < 1:
        raise ValueError(f"_placements needs a file of at least {LARGE} bytes, not {size}")
    buf = bytearray(LARGE + 2 * PAGE)
    clock, half, rows, j = time.perf_counter_ns, LARGE // 2, [], 0
    with memoryview(buf) as view:
        pad = (-data_address(buf)) % PAGE
        for off in range(0, blocks * LARGE, LARGE):        # map every chunk first
            view[pad:pad + LARGE] = src[off:off + LARGE]
        for d in range(0, PAGE, PLACE_STEP):
            with view[pad + d:pad + d + LARGE] as dst, dst[:half] as lo, dst[half:] as hi:
                window = kernel = 0
                for _ in range(reads):
                    a, b = j % blocks * LARGE, (j + blocks // 2) % blocks * LARGE
                    if j % 2:
                        a, b = b, a
                    j += 1
                    t0 = clock()
                    lo[:] = src[a:a + half]
                    hi[:] = src[a + half:a + LARGE]
                    t1 = clock()
                    os.preadv(hfd, [dst], b)
                    kernel += clock() - t1
                    window += t1 - t0
                rows.append((d, window / reads / 1e3, kernel / reads / 1e3))
    return rows


def _write_file(path: str, size: int, piece: int) -> None:
    """``size`` bytes (one random ``piece`` over and over) in ``write`` calls of ``piece`` bytes: the
    page cache keeps the file in folios of that size (ext4 on Linux 6.16+; smaller elsewhere),
    which decides whether a DAX window can map it with 2 MiB pages."""
    data = os.urandom(piece)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        for off in range(0, size, piece):
            n = min(piece, size - off)
            if os.write(fd, data[:n]) != n:
                raise OSError(f"short write to {path}")
    finally:
        os.close(fd)


def _huge_mapped(gos) -> int:
    """In a guest: bytes of file mappings this process maps with 2 MiB pages (FilePmdMapped)."""
    with open("/proc/self/smaps_rollup") as f:
        for line in f:
            if line.startswith("FilePmdMapped:"):
                return int(line.split()[1]) * 1024
    return 0


def bench_dax(seconds: float = 2.0, size: int = 64 << 20, console: Console | None = None) -> tuple:
    """``(groups, huge, places)``: groups of rows ``(Result, requests)`` — 4 KiB random and 1 MiB
    sequential reads of a file cached in 2 MiB folios (host, DAX, FUSE_READ), then 1 MiB sequential
    reads of one cached in 4 KiB pages (host, DAX) — how many bytes of the first the DAX guest mapped
    with 2 MiB pages, and :func:`_placements` of that file."""
    from .bench import Result
    console = console or Console()
    groups = []
    with scratch_dir("bench") as share:
        path, small = os.path.join(share, FILE), os.path.join(share, SMALL_PAGES)
        _write_file(path, size, HUGE)
        _write_file(small, size, SMALL)
        topo = Topology(share, [{"name": "dax", "dax": "always"}, {"name": "fuse", "dax": "never"}])
        with console.status(f"reading {size >> 20} MiB files through DAX, FUSE_READ and os.pread…"):
            with Cluster.start(topo) as c:
                dax, fuse = c.guests
                for step, rnd, label in ((SMALL, True, "4 KiB random"), (LARGE, False, "1 MiB sequential")):
                    (hus, hn), (dus, dn), req = dax.run(_guest_vs_host, FILE, path, size, step, rnd,
                                                        seconds)
                    us, n, freq = fuse.run(_guest_loop, FILE, size, step, rnd, seconds)
                    groups.append([(Result(f"{label}: os.pread on the host file", hus, hn), 0),
                                   (Result(f"{label}: guest pread, dax=always", dus, dn), req),
                                   (Result(f"{label}: guest pread, FUSE_READ (dax=never)", us, n), freq)])
                huge = dax.run(_huge_mapped)
                label = "1 MiB sequential, file in 4 KiB pages"
                (hus, hn), (dus, dn), req = dax.run(_guest_vs_host, SMALL_PAGES, small, size, LARGE,
                                                    False, seconds)
                groups.append([(Result(f"{label}: os.pread on the host", hus, hn), 0),
                               (Result(f"{label}: guest pread, dax=always", dus, dn), req)])
                places = dax.run(_placements, FILE, path, size, max(2, min(16, int(seconds * 8))))
    return groups, huge, places


def report(groups: list, huge: int, size: int, console: Console, places: list = ()) -> bool:
    from rich.table import Table
    t = Table(title="file reads: DAX window vs FUSE_READ vs the host")
    t.add_column("measurement")
    t.add_column("µs/op", justify="right")
    t.add_column("ops", justify="right")
    t.add_column("requests", justify="right")
    t.add_column("× host", justify="right")
    for group in groups:
        base = group[0][0].us
        for r, req in group:
            t.add_row(r.name, f"{r.us:.2f}", str(r.n), str(req), f"{r.us / base:.2f}")
    console.print(t)
    [(h4, _), (d4, _), (f4, _)], [(h1, _), (d1, _), (f1, _)], [(hs, _), (ds, _)] = groups
    ok = True
    for text, ratio, limit in (
            ("4 KiB random: FUSE_READ / DAX (goal ≥ 10)", f4.us / d4.us, 10.0),
            ("1 MiB sequential: host os.pread / DAX (goal ≥ 1)", h1.us / d1.us, 1.0)):
        met = ratio >= limit
        ok &= met
        console.print(f"{'[green]met[/green]' if met else '[red]missed[/red]'}: {text}: {ratio:.3g}")
    console.print(f"1 MiB sequential: FUSE_READ / DAX = {f1.us / d1.us:.3g}")
    console.print(f"the DAX guest mapped {huge >> 20} of the file's {size >> 20} MiB with 2 MiB pages; "
                  f"for the file in 4 KiB pages, host os.pread / DAX = {hs.us / ds.us:.3g}")
    if places:
        ratios = [k / w for _, w, k in places]
        slower = sum(r < 1 for r in ratios)
        console.print(f"the same 1 MiB copy into {len(places)} placements of one buffer in its page "
                      f"(every {PLACE_STEP} bytes): kernel (os.preadv) / DAX window copy median "
                      f"{statistics.median(ratios):.3g}, from {min(ratios):.3g} to {max(ratios):.3g}; "
                      f"the window copy is the slower at {slower} of {len(places)}")
    return ok


__all__ = ["bench_dax", "report"]
