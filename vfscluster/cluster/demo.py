"""``vfscluster demo``: guests on one share, each changing files and the others seeing it at once.

A built-in topology (``cache=none``) on a temporary directory.  Every step is done by one guest;
then every guest looks, and the table shows what each one saw.  The demo checks that all guests saw
the change and says so (exit status 0), or shows where they disagreed (exit status 1).
"""

from __future__ import annotations

import os

from rich.console import Console
from rich.table import Table

from .launcher import Cluster, scratch_dir
from .topology import Topology


def _look(gos, name: str):
    """What a guest sees of ``name``: its content, or that it does not exist."""
    try:
        fd = gos.open(name, os.O_RDONLY)
    except FileNotFoundError:
        return "(no such file)"
    try:
        return gos.read(fd, 4096).decode()
    finally:
        gos.close(fd)


def run_demo(guests: int = 3, console: Console | None = None) -> int:
    console = console or Console()
    with scratch_dir("demo") as share:
        topo = Topology(share, guests, cache="none")
        console.print(f"[bold]vfscluster demo[/bold]: 1 host (vfs-hostd) + {guests} guest processes "
                      f"sharing [cyan]{share}[/cyan] over vhost-user, cache=none")
        with Cluster.start(topo) as c:
            names = [g.name for g in c.guests]
            table = Table(title="each guest acts; every guest then looks")
            table.add_column("step")
            table.add_column("who")
            table.add_column("did")
            for n in names:
                table.add_column(f"{n} sees")
            ok = True
            step = 0
            for i, actor in enumerate(c.guests):
                first = f"{actor.name}.txt"
                text = f"hello from {actor.name}"
                step += 1
                fd = actor.os.open(first, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o644)
                actor.os.write(fd, text.encode())
                actor.os.close(fd)
                seen = [g.run(_look, first) for g in c.guests]
                ok &= all(s == text for s in seen)
                table.add_row(str(step), actor.name, f"create {first}: {text!r}", *seen)

                other = c.guests[(i + 1) % len(c.guests)]
                renamed = f"{actor.name}.moved"
                step += 1
                other.os.rename(first, renamed)
                listings = [g.os.listdir("/") for g in c.guests]
                ok &= all(renamed in lst and first not in lst for lst in listings)
                table.add_row(str(step), other.name, f"rename {first} → {renamed}",
                              *[(f"{renamed} ✓" if renamed in lst and first not in lst else ", ".join(sorted(lst)))
                                for lst in listings])

                step += 1
                fd = actor.os.open(renamed, os.O_WRONLY | os.O_APPEND)
                actor.os.write(fd, b" +more")
                actor.os.close(fd)
                sizes = [str(g.os.stat(renamed).st_size) for g in c.guests]
                ok &= len(set(sizes)) == 1 and int(sizes[0]) == len(text) + 6
                table.add_row(str(step), actor.name, f"append ' +more' to {renamed}", *[f"size {s}" for s in sizes])
            console.print(table)
            on_host = sorted(os.listdir(share))
            console.print(f"on the host, {share} holds: {', '.join(on_host)}")
        if ok:
            console.print("[green]every guest saw every change at once (cache=none)[/green]")
            return 0
        console.print("[red]the guests disagreed — see the table[/red]")
        return 1
