"""``vfscluster demo``: MAP_SHARED between guests through their DAX windows.

Three guests (``dax=always``) map the same 4 KiB of one file.  Each guest increments, with a
lock-free fetch-add on the mapped memory (the ``atomics`` package), one shared counter and its own
counter, ``count`` times.  None of those stores is a request: the mapping is the host's page-cache
pages of the file, mapped into every guest's window.  Meanwhile a live table shows what every
guest reads from its own mapping, so the counters visibly move together; at the end the demo
checks that the shared counter is the sum of all increments (and the host's file says the same)
and says so (exit status 0), or shows the difference (exit status 1).

File layout: 8-byte little-endian counters, slot 0 shared, slot ``1 + i`` guest ``i``'s own.
"""

from __future__ import annotations

import mmap
import os
import struct
import time

from rich.console import Console
from rich.live import Live
from rich.table import Table

from .launcher import Cluster, scratch_dir
from .topology import Topology

FILE = "counters"
SIZE = 4096
_U64 = struct.Struct("<Q")
#: inside a guest process: name -> (fd, buffer) of the mapping the peeks read
_PEEKS: dict = {}


def _increment(gos, name: str, index: int, count: int) -> float:
    """Runs in a guest: ``count`` fetch-adds on the shared slot and on this guest's slot;
    returns the seconds it took."""
    import atomics
    fd = gos.open(name, os.O_RDWR)
    try:
        with gos.mmap(fd, SIZE, 0, mmap.PROT_READ | mmap.PROT_WRITE) as buf:
            view = memoryview(buf)
            mine = 8 * (1 + index)
            t0 = time.perf_counter()
            with atomics.atomicview(buffer=view[0:8], atype=atomics.UINT) as shared, \
                    atomics.atomicview(buffer=view[mine:mine + 8], atype=atomics.UINT) as own:
                for _ in range(count):
                    shared.inc()
                    own.inc()
            took = time.perf_counter() - t0
            view.release()
            return took
    finally:
        gos.close(fd)


def _peek(gos, name: str, slots: int) -> list[int]:
    """Runs in a guest: the counters as this guest's own mapping shows them (mapped once)."""
    held = _PEEKS.get(name)
    if held is None:
        fd = gos.open(name, os.O_RDONLY)
        held = _PEEKS[name] = (fd, gos.mmap(fd, SIZE, 0, mmap.PROT_READ))
    buf = held[1]
    return [_U64.unpack_from(buf, 8 * i)[0] for i in range(slots)]


def _unpeek(gos, name: str) -> None:
    held = _PEEKS.pop(name, None)
    if held is not None:
        held[1].close()
        gos.close(held[0])


def _table(names: list[str], seen: dict[str, list[int]], target: int) -> Table:
    t = Table(title=f"what each guest reads from its own mapping (goal: shared = {target:,})")
    t.add_column("guest")
    t.add_column("shared", justify="right")
    for n in names:
        t.add_column(f"{n}'s own", justify="right")
    for n in names:
        values = seen.get(n)
        if values is None:
            t.add_row(n, "…", *["…"] * len(names))
        else:
            t.add_row(n, f"{values[0]:,}", *[f"{v:,}" for v in values[1:]])
    return t


def run_mmap_demo(guests: int = 3, count: int = 500_000, console: Console | None = None) -> int:
    console = console or Console()
    with scratch_dir("demo") as share:
        with open(os.path.join(share, FILE), "wb") as f:
            f.write(bytes(SIZE))
        topo = Topology(share, guests, dax="always", window_size=64 << 20)
        console.print(f"[bold]vfscluster demo[/bold]: 1 host (vfs-hostd) + {guests} guest processes "
                      f"with DAX windows, all mapping [cyan]{FILE}[/cyan] MAP_SHARED; each does "
                      f"{count:,} lock-free fetch-adds on a shared counter and on its own")
        with Cluster.start(topo) as c:
            names = [g.name for g in c.guests]
            slots = 1 + len(names)
            target = count * len(names)
            seen: dict[str, list[int]] = {}
            with Live(_table(names, seen, target), console=console, refresh_per_second=10) as live:
                def refresh() -> None:
                    c.check_members()               # a dead host: say so now, not at the end
                    for g in c.guests:              # a display refresh, not synchronisation
                        seen[g.name] = g.run(_peek, FILE, slots)
                    live.update(_table(names, seen, target))
                took = c.run_together([(g, _increment, FILE, i, count) for i, g in enumerate(c.guests)],
                                      tick=refresh)
                refresh()                           # what every guest sees at the end
            for g in c.guests:
                g.run(_unpeek, FILE)
        with open(os.path.join(share, FILE), "rb") as f:
            raw = f.read(8 * slots)
            on_host = [_U64.unpack_from(raw, 8 * i)[0] for i in range(slots)]
    rate = sum(count * 2 / t for t in took if t > 0)
    console.print()
    console.print(f"{len(names)} guests did {2 * target:,} fetch-adds in about {max(took):.2f} s "
                  f"({rate:,.0f}/s together), no request to the host among them")
    good = all(v == [target] + [count] * len(names) for v in seen.values()) and \
        on_host == [target] + [count] * len(names)
    if good:
        console.print(f"[green]the shared counter is {target:,} = {len(names)} × {count:,} in every "
                      f"guest and in the host's file: no increment was lost[/green]")
        return 0
    console.print(f"[red]lost increments: guests saw {seen}, the host's file holds {on_host}[/red]")
    return 1
