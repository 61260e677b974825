"""``vfscluster top``: live per-guest and per-virtqueue figures of a running cluster.

Three parts, the first two free of I/O where it matters:

* finding clusters: :func:`live_clusters` reads the runtime directory the launcher writes
  (``$TMPDIR/vfsc-<id>/`` with its ``pids`` file and one ``<guest>.ctl`` control socket per guest).
  A cluster is live while its launcher (the pid that starts its id) is, the rule
  :func:`~vfscluster.cluster.launcher.sweep` uses to leave it alone;
* turning two polls into figures: :func:`rate`, :func:`guest_rows`, :func:`queue_rows` (pure), and
  :func:`render` (a ``rich`` table);
* polling: :class:`Poller` asks every guest's ``stats`` control request, each guest from its own
  thread with a timeout, so a stopped or stuck guest shows as "not answering" and never holds the
  display; :func:`run_top` loops over it under ``rich.live.Live`` (or prints plain tables).

top only reads: it sends nothing but ``stats``, which changes nothing in a guest.
"""

from __future__ import annotations

import os
import re
import threading
import time
from dataclasses import dataclass, field

from ..errors import ConfigError
from . import launcher
from .control import ControlClient

STATS_TIMEOUT = 1.0
_CLUSTER_ID = re.compile(r"^(\d+)-[0-9a-f]+$")
UP, NOT_ANSWERING, STOPPED, GONE = "up", "not answering", "stopped", "gone"
STARTING = "starting"       # alive, its control socket not there yet


# -- finding clusters ----------------------------------------------------------------------------

@dataclass(frozen=True)
class GuestEntry:
    """A guest as the runtime directory names it: ``pid`` from the ``pids`` file (None if only
    its control socket is there), ``control`` the path of its control socket."""

    name: str
    pid: int | None
    control: str


@dataclass(frozen=True)
class ClusterDir:
    """A live cluster's runtime directory: its id, launcher pid, host pid (None before the host
    is recorded) and guests in the order they were started."""

    id: str
    path: str
    launcher: int
    host_pid: int | None
    guests: tuple[GuestEntry, ...]


def process_state(pid: int | None) -> str | None:
    """The kernel's state letter of ``pid`` (``R``, ``S``, ``T``, ``Z``, ...), None if there is no
    such process (or ``pid`` is None)."""
    if pid is None:
        return None
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


def _alive(pid: int | None) -> bool:
    return process_state(pid) not in (None, "Z", "X")


def read_cluster(path: str) -> ClusterDir | None:
    """The cluster whose runtime directory is ``path`` (named ``PREFIX + id``), or None if the name
    is not a cluster id.  Members come from the ``pids`` file (``PID ROLE`` lines: ``host`` or
    ``guest NAME``) plus any ``NAME.ctl`` socket it does not list; a directory still being
    written is read as far as it goes."""
    cid = os.path.basename(path)[len(launcher.PREFIX):]
    m = _CLUSTER_ID.match(cid)
    if m is None:
        return None
    host, guests = None, {}
    try:
        with open(os.path.join(path, "pids")) as f:
            lines = f.read().splitlines()
    except OSError:
        lines = []
    for line in lines:
        pid, _, role = line.partition(" ")
        if not pid.isdigit():
            continue
        if role == "host":
            host = int(pid)
        elif role.startswith("guest "):
            name = role[len("guest "):]
            guests[name] = GuestEntry(name, int(pid), os.path.join(path, f"{name}.ctl"))
    try:
        names = sorted(os.listdir(path))
    except OSError:
        names = []
    for n in names:
        if n.endswith(".ctl") and n[:-4] not in guests:
            guests[n[:-4]] = GuestEntry(n[:-4], None, os.path.join(path, n))
    return ClusterDir(cid, path, int(m.group(1)), host, tuple(guests.values()))


def live_clusters(root: str | None = None) -> list[ClusterDir]:
    """Clusters in ``root`` (default :func:`launcher.runtime_root`) whose launcher is alive,
    oldest launcher first."""
    root = launcher.runtime_root() if root is None else root
    found = []
    for n in os.listdir(root):
        path = os.path.join(root, n)
        if not n.startswith(launcher.PREFIX) or not os.path.isdir(path):
            continue
        c = read_cluster(path)
        if c is not None and _alive(c.launcher):
            found.append(c)
    return sorted(found, key=lambda c: (c.launcher, c.id))


def pick_cluster(clusters: list[ClusterDir], wanted: str | None, root: str | None = None) -> ClusterDir:
    """The cluster to show: ``wanted`` (an id, or the directory name ``vfsc-ID``), else the only
    one.  Raises :class:`ConfigError` (one line) when there is none, when ``wanted`` is not among
    them, or when there are several and ``wanted`` is None."""
    ids = ", ".join(c.id for c in clusters)
    if wanted is not None:
        wanted = wanted.removeprefix(launcher.PREFIX)
        for c in clusters:
            if c.id == wanted:
                return c
        raise ConfigError(f"no running cluster {wanted}" + (f" (running: {ids})" if ids else
                                                             " (no cluster is running)"))
    if not clusters:
        raise ConfigError(f"no running cluster in {root or launcher.runtime_root()} "
                          "(start one with `vfscluster up TOPOLOGY`)")
    if len(clusters) > 1:
        raise ConfigError(f"{len(clusters)} clusters are running ({ids}); pick one with --cluster ID")
    return clusters[0]


# -- figures (pure) ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Sample:
    """One poll of one guest: ``state`` is UP (``stats`` holds its reply), NOT_ANSWERING (alive
    but no reply within the timeout), STARTING (alive, its control socket not made yet), STOPPED
    (its process is stopped, e.g. SIGSTOP) or GONE (its process exited); ``at`` is the
    ``time.monotonic()`` of the reply (or of giving up)."""

    name: str
    pid: int | None
    state: str
    at: float
    stats: dict | None = None


Snapshot = dict          # guest name -> Sample, for one poll of every guest


def rate(prev: float | None, cur: float | None, seconds: float | None) -> float | None:
    """``(cur - prev) / seconds``: a counter's rate between two polls.  None when it cannot be
    known: a value or the time is missing, ``seconds`` is not positive, or the counter went back
    (a different process answered)."""
    if prev is None or cur is None or seconds is None or seconds <= 0 or cur < prev:
        return None
    return (cur - prev) / seconds


def _same_guest(prev: Sample | None, cur: Sample) -> bool:
    return (prev is not None and prev.stats is not None and cur.stats is not None
            and prev.stats.get("pid", prev.pid) == cur.stats.get("pid", cur.pid))


@dataclass(frozen=True)
class GuestRow:
    """What top shows of one guest; rates are None on a first poll or across a restart, every
    figure is None while the guest does not answer."""

    name: str
    pid: int | None
    state: str
    cache_mode: str | None = None
    req_rate: float | None = None
    requests: int | None = None
    in_flight: int | None = None
    lookup_hits: int | None = None
    lookup_misses: int | None = None
    reads_hit: int | None = None
    reads_missed: int | None = None
    dirty_inodes: int | None = None
    #: the guest's DAX counters as its stats give them (None: no DAX window), plus ``setups_rate``
    dax: dict | None = field(default=None)


@dataclass(frozen=True)
class QueueRow:
    """What top shows of one virtqueue of an answering guest."""

    guest: str
    index: int
    role: str
    kick_rate: float | None
    kicks: int
    in_flight: int | None
    full_waits: int
    spin_hits: int
    blocks: int
    spin_ns: int


def guest_rows(prev: Snapshot | None, cur: Snapshot) -> list[GuestRow]:
    """One row per guest of ``cur`` (in its order), rates from ``prev`` (the poll before, or None)."""
    rows = []
    for name, s in cur.items():
        if s.stats is None:
            rows.append(GuestRow(name, s.pid, s.state))
            continue
        st, p = s.stats, (prev or {}).get(name)
        same = _same_guest(p, s)
        dt = s.at - p.at if same else None
        cache = st.get("cache") or {}
        dax = st.get("dax")
        if dax is not None:
            before = (p.stats.get("dax") or {}) if same else {}
            dax = {**dax, "setups_rate": rate(before.get("setups"), dax.get("setups"), dt)}
        rows.append(GuestRow(
            name, st.get("pid", s.pid), s.state, cache.get("mode"),
            rate(p.stats.get("requests") if same else None, st.get("requests"), dt),
            st.get("requests"), st.get("in_flight"), cache.get("hits"), cache.get("misses"),
            cache.get("reads_hit"), cache.get("reads_missed"), cache.get("dirty_inodes"), dax))
    return rows


def queue_rows(prev: Snapshot | None, cur: Snapshot) -> list[QueueRow]:
    """One row per virtqueue of every answering guest of ``cur``, kicks/s from ``prev``."""
    rows = []
    for name, s in cur.items():
        if s.stats is None:
            continue
        p = (prev or {}).get(name)
        same = _same_guest(p, s)
        before = {q["index"]: q for q in p.stats.get("queues", ())} if same else {}
        for q in s.stats.get("queues", ()):
            b = before.get(q["index"], {})
            rows.append(QueueRow(name, q["index"], q.get("role", "request" if q["index"] else "hiprio"),
                                 rate(b.get("kicks"), q["kicks"], s.at - p.at if same else None),
                                 q["kicks"], q.get("in_flight"), q["full_waits"], q["spin_hits"],
                                 q["blocks"], q["spin_ns"]))
    return rows


# -- rendering -----------------------------------------------------------------------------------

def _n(v) -> str:
    return "" if v is None else str(v)


def _r(v: float | None) -> str:
    return "" if v is None else f"{v:.0f}" if v >= 10 or v == 0 else f"{v:.1f}"


def _mode(mode: str | None) -> str:
    """``cache=always,versions=on,writeback`` as ``always+ver+wb``; ``cache=auto,timeout=1`` as
    ``auto 1s``."""
    if not mode:
        return ""
    out = mode.removeprefix("cache=").replace(",versions=on", "+ver").replace(",writeback", "+wb")
    return re.sub(r",timeout=(\S+)", r" \1s", out)


_STATE_STYLE = {UP: "green", NOT_ANSWERING: "yellow", STARTING: "yellow", STOPPED: "yellow",
                GONE: "red"}


def render(cluster: ClusterDir, prev: Snapshot | None, cur: Snapshot, *, interval: float,
           host_state: str = ""):
    """A ``rich`` renderable: a title line, the guests table, a DAX table (only when some guest
    has a DAX window: its counters as the stats name them) and the virtqueues table.  Rates are
    blank when ``prev`` is None or the guest did not answer both polls."""
    from rich import box
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    grows, qrows = guest_rows(prev, cur), queue_rows(prev, cur)

    def table(title: str, cols: list[str], left: tuple[str, ...]) -> Table:
        t = Table(title=title, box=box.SIMPLE_HEAD, title_justify="left", show_edge=False,
                  pad_edge=False, collapse_padding=True)
        for c in cols:         # a narrow terminal folds cells (no min_width: rich drops columns)
            t.add_column(c, justify="left" if c in left else "right", overflow="fold")
        return t

    g = table("guests", ["guest", "pid", "state", "cache", "req/s", "requests", "in\nflight",
                         "lookups\nhit/miss", "page reads\nhit/miss", "dirty\nfiles"],
              ("guest", "state", "cache"))
    for r in grows:
        up = r.requests is not None
        g.add_row(r.name, _n(r.pid), Text(r.state, style=_STATE_STYLE.get(r.state, "")),
                  _mode(r.cache_mode), _r(r.req_rate), _n(r.requests), _n(r.in_flight),
                  f"{r.lookup_hits}/{r.lookup_misses}" if up else "",
                  f"{r.reads_hit}/{r.reads_missed}" if up else "", _n(r.dirty_inodes))
    parts = [g]
    daxed = [r for r in grows if r.dax is not None]
    if daxed:
        keys = [k for k in daxed[0].dax if k not in ("setups_rate", "mapped", "ranges")]
        d = table("DAX windows", ["guest", "setups/s", *(k.replace("_", "\n") for k in keys),
                                  "ranges\nin use"], ("guest",))
        for r in daxed:
            used = f"{r.dax['mapped']}/{r.dax['ranges']}" if "ranges" in r.dax else ""
            d.add_row(r.name, _r(r.dax["setups_rate"]), *(_n(r.dax.get(k)) for k in keys), used)
        parts.append(d)
    q = table("virtqueues", ["guest", "queue", "role", "kicks/s", "kicks", "in\nflight", "full\nwaits",
                             "spin\nhits", "blocks", "spin\nbudget µs"], ("guest", "role"))
    for r in qrows:
        q.add_row(r.guest, str(r.index), r.role, _r(r.kick_rate), str(r.kicks), _n(r.in_flight),
                  str(r.full_waits), str(r.spin_hits), str(r.blocks), f"{r.spin_ns / 1000:g}")
    parts.append(q)
    host = f" · host pid {cluster.host_pid} {host_state}".rstrip() if cluster.host_pid else ""
    title = Text(f"cluster {cluster.id}{host} · {len(cur)} guest(s) · every {interval:g} s "
                 f"· {time.strftime('%H:%M:%S')}", style="bold")
    return Group(title, *parts)


# -- polling -------------------------------------------------------------------------------------

class _Probe:
    """Asks one guest for its stats from a thread of its own (one control connection, kept).  A
    guest that does not answer ties up only this thread — even in ``connect`` once a stopped
    guest's listen backlog is full — and the probe is then busy: :meth:`ask` returns False."""

    def __init__(self, path: str, timeout: float) -> None:
        self.client = ControlClient(path)
        self.timeout = timeout
        self.done = threading.Event()
        self.done.set()
        self._go = threading.Event()
        self.result: tuple[dict | None, float] = (None, 0.0)
        self._closed = False
        threading.Thread(target=self._loop, name="top-probe", daemon=True).start()

    def ask(self) -> bool:
        if not self.done.is_set():
            return False
        self.done.clear()
        self._go.set()
        return True

    def _loop(self) -> None:
        while True:
            self._go.wait()
            self._go.clear()
            if self._closed:
                return
            try:
                stats = self.client.call_within(self.timeout, "stats")
            except Exception:           # ConnectionError, or a guest's error reply
                stats = None
            self.result = (stats, time.monotonic())
            self.done.set()

    def close(self) -> None:
        """Close the connection; the thread ends (now, or when its call in progress returns)."""
        self._closed = True
        self._go.set()
        self.client.close()


class Poller:
    """Polls every guest of one cluster; :meth:`poll` returns a :data:`Snapshot`.  Members are
    read again at each poll (a cluster still starting gains guests)."""

    def __init__(self, cluster: ClusterDir, *, timeout: float = STATS_TIMEOUT) -> None:
        self.cluster = cluster
        self.timeout = timeout
        self._probes: dict[str, _Probe] = {}

    def refresh(self) -> bool:
        """Read the runtime directory again; False when the cluster is over (its directory is
        gone or its launcher exited)."""
        c = read_cluster(self.cluster.path) if os.path.isdir(self.cluster.path) else None
        if c is None or not _alive(c.launcher):
            return False
        self.cluster = c
        return True

    def host_state(self) -> str:
        return _state_of(self.cluster.host_pid)

    def poll(self) -> Snapshot:
        """Ask every guest at once and wait up to ``timeout`` for the answers.  A guest whose
        previous question is still unanswered is not asked again, nor one whose process is
        stopped or gone (its state is all there is to show)."""
        self.refresh()
        asked = []
        for g in self.cluster.guests:
            p = self._probes.get(g.name)
            if p is None or p.client.path != g.control:
                p = self._probes[g.name] = _Probe(g.control, self.timeout)
            if _state_of(g.pid) == UP and p.ask():
                asked.append(p)
        deadline = time.monotonic() + self.timeout
        for p in asked:
            p.done.wait(max(0.0, deadline - time.monotonic()))
        snap: Snapshot = {}
        for g in self.cluster.guests:
            p = self._probes[g.name]
            stats, at = p.result if p.done.is_set() else (None, time.monotonic())
            if stats is not None:
                snap[g.name] = Sample(g.name, stats.get("pid", g.pid), UP, at, stats)
                p.result = (None, at)           # an old reply is never shown twice
            else:
                state = _state_of(g.pid)
                if state == UP and not os.path.exists(g.control):
                    state = STARTING if g.pid is not None else GONE    # (no pid: the socket decides)
                elif state == UP:
                    state = NOT_ANSWERING
                snap[g.name] = Sample(g.name, g.pid, state, at)
        return snap

    def close(self) -> None:
        for p in self._probes.values():
            p.close()


def _state_of(pid: int | None) -> str:
    """UP for a running or sleeping process, STOPPED, or GONE (no such process, or a zombie)."""
    if pid is None:
        return UP           # unknown: the control socket decides
    s = process_state(pid)
    if s in (None, "Z", "X"):
        return GONE
    return STOPPED if s in ("T", "t") else UP


def run_top(cluster_id: str | None = None, *, interval: float = 1.0, iterations: int | None = None,
            live: bool | None = None, console=None, root: str | None = None,
            timeout: float = STATS_TIMEOUT) -> int:
    """Show the live cluster ``cluster_id`` (or the only one in ``root``) until Ctrl-C, or for
    ``iterations`` displays.  The first display comes after two polls ``interval`` apart (rates
    need two).  ``live`` (default: when the console is a terminal and ``iterations`` is not 1)
    redraws one view in place; otherwise each display is printed as plain tables.  Returns 0
    (also on Ctrl-C, which is caught here, and when the cluster ends: a last line says so);
    raises :class:`ConfigError` when there is no such cluster."""
    from rich.console import Console
    from rich.live import Live
    from rich.text import Text

    cluster = pick_cluster(live_clusters(root), cluster_id, root)
    console = console or Console()
    if not console.is_terminal:
        console.width = max(console.width, 200)      # scripts: one line per row, never wrapped
    live = console.is_terminal and iterations != 1 if live is None else live
    poller = Poller(cluster, timeout=timeout)
    view = Live(Text(f"cluster {cluster.id}: polling its guests ..."), console=console,
                auto_refresh=False) if live else None
    shown = 0
    try:
        if view is not None:
            view.start()
        started = time.monotonic()
        prev = poller.poll()
        while iterations is None or shown < iterations:
            time.sleep(max(0.0, started + interval - time.monotonic()))
            started = time.monotonic()
            if not poller.refresh():
                if view is not None:
                    view.stop()
                    view = None
                console.print(f"cluster {cluster.id} has ended")
                return 0
            cur = poller.poll()
            table = render(poller.cluster, prev, cur, interval=interval, host_state=poller.host_state())
            if view is not None:
                view.update(table, refresh=True)
            else:
                if shown:
                    console.print()
                console.print(table)
            prev = cur
            shown += 1
    except KeyboardInterrupt as exc:
        if getattr(exc, "signo", None) is not None:     # SIGTERM/SIGHUP (cliutil.Terminated)
            raise
    finally:
        if view is not None:
            view.stop()
        poller.close()
    return 0
