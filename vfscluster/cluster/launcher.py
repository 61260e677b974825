"""Start and stop N-guest clusters; reach into guests; sweep what dead clusters left behind.

::

    with Cluster.start(Topology(share=d, guests=3)) as c:
        c.guests[0].os.open("a.txt", os.O_CREAT | os.O_WRONLY, 0o644)
        c.guests[1].os.stat("a.txt")
        c.guests[2].run(fn, *args)          # fn(guest_os, *args) inside that guest process

Processes are started with ``multiprocess`` (dill pickling).  Each cluster has an id
``<launcher pid>-<random>``; its sockets live in ``$TMPDIR/vfsc-<id>/`` and its shared-memory
objects are named ``/vfsc-<id>-…``.  Leaving the ``with`` block (normally, by exception or Ctrl-C)
stops every member and removes all of it; members die with the launcher (parent-death signal), and
:func:`sweep` (``vfscluster clean``) removes what a cluster whose launcher is gone left behind.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import secrets
import shutil
import signal
import stat
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Callable

import multiprocess

from ..errors import ConfigError, MemberExited
from .control import ControlClient
from .procutil import die_with_parent, pid_alive
from .topology import GuestSpec, Topology

log = logging.getLogger(__name__)

PREFIX = "vfsc-"
SHM_DIR = "/dev/shm"
STARTUP_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0


def runtime_root() -> str:
    return tempfile.gettempdir()


def _context():
    """Members are forked: fast, and a caller's script needs no ``if __name__ == "__main__"`` guard
    (spawn and forkserver re-import the caller's main module).  The child closes every inherited
    descriptor it does not need (see :func:`_close_inherited`)."""
    return multiprocess.get_context(os.environ.get("VFSCLUSTER_START_METHOD", "fork"))


def _close_inherited(keep: int) -> None:
    """In a freshly forked member: close the sockets inherited from the launcher (other clusters'
    control connections must not be held open by this process), keeping ``keep``.  Pipes stay:
    one of them is multiprocess's sentinel, whose closing tells the launcher this process exited.
    ``sys.stdout``/``sys.stderr`` are made fresh objects on fds 1 and 2 (the launcher may have
    replaced those objects, e.g. pytest's capture)."""
    for fd in sorted(int(n) for n in os.listdir("/proc/self/fd")):
        if fd > 2 and fd != keep:
            try:
                if stat.S_ISSOCK(os.fstat(fd).st_mode):
                    os.close(fd)
            except OSError:
                pass
    sys.stdout = open(1, "w", buffering=1, closefd=False)
    sys.stderr = open(2, "w", buffering=1, closefd=False)


def _member_main(conn, role: str, kwargs: dict, launcher: int | None) -> None:
    """Body of a forked member: run the host or a guest, telling the launcher when it is ready
    (or why it failed) over ``conn``.  Before anything else: Ctrl-C is the launcher's (members
    are stopped by it; SIGINT was blocked across the fork, see :func:`_start_member`), and the
    member dies with the launcher, even one that died before this line."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    for sig in (signal.SIGTERM, signal.SIGHUP):     # not the launcher's handlers (cliutil)
        signal.signal(sig, signal.SIG_DFL)
    die_with_parent(parent=launcher)
    if role == "host":
        from ..host.process import run_host as run
    else:
        from ..guest.process import run_guest as run
    _close_inherited(conn.fileno())
    try:
        run(**kwargs, ready=lambda info: conn.send(("ready", info)), managed=True)
    except BaseException as exc:
        try:
            conn.send(("error", f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"))
        except OSError:
            pass
        raise


class _GuestOSProxy:
    """``guest.os.NAME(*args)`` runs ``GuestOS.NAME`` inside the guest process."""

    def __init__(self, client: ControlClient) -> None:
        self._client = client

    def __getattr__(self, name: str) -> Callable:
        if name.startswith("_"):
            raise AttributeError(name)

        def call(*args, **kwargs):
            return self._client.call("os." + name, *args, **kwargs)
        call.__name__ = name
        return call


@dataclass
class Member:
    """A process of the cluster."""

    name: str
    role: str
    process: Any

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.is_alive()

    def kill(self, sig: int = signal.SIGKILL) -> None:
        os.kill(self.pid, sig)


class GuestHandle(Member):
    """A guest of a running cluster."""

    def __init__(self, name: str, process, spec: GuestSpec, control_path: str) -> None:
        super().__init__(name, "guest", process)
        self.spec = spec
        self.control_path = control_path
        self.client = ControlClient(control_path)
        self.os = _GuestOSProxy(self.client)

    def run(self, fn: Callable, *args, **kwargs):
        """Run ``fn(guest_os, *args, **kwargs)`` inside the guest process and return its result."""
        return self.client.call("run", fn, *args, **kwargs)

    def stats(self) -> dict:
        return self.client.call("stats")


class Cluster:
    """A running host and its guests.  Use :meth:`start` (a context manager)."""

    def __init__(self, topology: Topology, cid: str, runtime_dir: str) -> None:
        self.topology = topology
        self.id = cid
        self.runtime_dir = runtime_dir
        self.socket_path = os.path.join(runtime_dir, "host.sock")
        self.host: Member | None = None
        self.guests: list[GuestHandle] = []
        self._ctx = _context()
        self._stopped = False
        self._procs: list = []          # every member process started, ready or not, host first

    # -- start ---------------------------------------------------------------------------------
    @classmethod
    def start(cls, topology: Topology, *, log_level: str = "WARNING", trace: str | None = None,
              startup_timeout: float = STARTUP_TIMEOUT) -> "Cluster":
        if not isinstance(topology, Topology):
            raise ConfigError(f"Cluster.start needs a Topology, not {type(topology).__name__}")
        if not os.path.isdir(topology.share):
            raise ConfigError(f"share directory {topology.share!r} does not exist")
        cid = f"{os.getpid()}-{secrets.token_hex(3)}"
        rdir = os.path.join(runtime_root(), PREFIX + cid)
        os.mkdir(rdir, 0o700)
        c = cls(topology, cid, rdir)
        try:
            c._start_host(log_level, trace, startup_timeout)
            procs = [c._spawn_guest(spec, log_level) for spec in topology.guests]
            for spec, (proc, conn, ctl) in zip(topology.guests, procs):
                c._await_ready(spec.name, proc, conn, startup_timeout)
                c.guests.append(GuestHandle(spec.name, proc, spec, ctl))
        except BaseException:
            c.stop()
            raise
        return c

    def _record(self, pid: int, role: str) -> None:
        with open(os.path.join(self.runtime_dir, "pids"), "a") as f:
            f.write(f"{pid} {role}\n")

    def _start_host(self, log_level: str, trace: str | None, timeout: float) -> None:
        t = self.topology
        kwargs = dict(shared_dir=t.share, socket_path=self.socket_path, tag=t.tag,
                      thread_pool_size=t.thread_pool_size, num_request_queues=t.host_queues,
                      trace=trace, log_level=log_level,
                      window_size=max([g.window_size for g in t.guests if g.dax != "never"] or [1 << 30]))
        proc, parent = self._start_member("host", kwargs, "vfs-hostd")
        self.host = Member("host", "host", proc)
        self._record(proc.pid, "host")
        self._await_ready("host", proc, parent, timeout)

    def _spawn_guest(self, spec: GuestSpec, log_level: str):
        ctl = os.path.join(self.runtime_dir, f"{spec.name}.ctl")
        kwargs = dict(name=spec.name, socket_path=self.socket_path, control_path=ctl,
                      ram_name=f"/{PREFIX}{self.id}-{spec.name}-ram", tag=self.topology.tag,
                      cache=spec.cache, num_request_queues=spec.num_request_queues,
                      queue_size=spec.queue_size, ram_size=spec.ram_size, log_level=log_level,
                      versions=spec.versions, writeback=spec.writeback, timeout=spec.timeout,
                      dax=spec.dax, window_size=spec.window_size)
        proc, parent = self._start_member("guest", kwargs, f"vfs-guest-{spec.name}")
        self._record(proc.pid, f"guest {spec.name}")
        return proc, parent, ctl

    def _start_member(self, role: str, kwargs: dict, name: str):
        """Fork a member with SIGINT blocked, so that a Ctrl-C during its start-up is the
        launcher's alone (the member ignores it before unblocking); a Ctrl-C meanwhile reaches
        the launcher once the member is recorded, and stop() then ends it too."""
        parent, child = self._ctx.Pipe(duplex=False)
        # forked members are our children; under forkserver or spawn their parent is another
        # process, and only "re-parented to init" can be checked
        launcher = os.getpid() if self._ctx.get_start_method() == "fork" else None
        proc = self._ctx.Process(target=_member_main, args=(child, role, kwargs, launcher), name=name)
        old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            proc.start()
            self._procs.append(proc)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)
            child.close()
        return proc, parent

    @staticmethod
    def _await_ready(name: str, proc, conn, timeout: float) -> dict:
        try:
            if not conn.poll(timeout):
                raise MemberExited(f"{name} did not start within {timeout:.0f} s")
            status, info = conn.recv()
        except EOFError:
            proc.join(1)
            raise MemberExited(f"{name} exited during start-up (exit code {proc.exitcode})") from None
        finally:
            conn.close()
        if status != "ready":
            log.info("%s failed to start: %s", name, info)          # with the member's traceback
            raise MemberExited(f"{name} failed to start: {info.splitlines()[0] if info else info}")
        return info

    # -- work --------------------------------------------------------------------------------
    def run_together(self, calls: Sequence[tuple], *, tick: Callable[[], None] | None = None,
                     every: float = 0.1) -> list:
        """Run each ``(guest, fn, *args)`` of ``calls`` at the same time (``guest.run(fn, *args)``,
        a thread each) and return their results in order; ``tick()`` is called about every
        ``every`` seconds while they run (a display refresh).  If a call fails, or the wait is
        interrupted (Ctrl-C), the cluster is stopped at once — which ends the other calls — and
        the exception goes on: nobody waits for the rest of a long run.  A call that failed
        because a member died (ENOTCONN, a closed control channel) becomes :class:`MemberExited`
        naming it."""
        import concurrent.futures as cf
        ex = cf.ThreadPoolExecutor(max_workers=max(1, len(calls)), thread_name_prefix="run-together")
        try:
            futures = [ex.submit(g.run, fn, *args) for g, fn, *args in calls]
            pending = set(futures)
            while pending:
                done, pending = cf.wait(pending, timeout=every if tick is not None else None,
                                        return_when=cf.FIRST_EXCEPTION)
                for f in done:
                    if f.exception() is not None:
                        raise f.exception()
                if tick is not None:
                    tick()
            return [f.result() for f in futures]
        except BaseException as exc:
            gone = self._gone_under(exc)
            self.stop()
            if gone:
                raise MemberExited(", ".join(gone)) from exc
            raise
        finally:
            ex.shutdown(wait=True)                     # quick: the calls returned or were ended

    def exited(self) -> list[str]:
        """What members have exited, e.g. ``["the host exited (exit code -9)"]`` (empty: none)."""
        return [f"{'the host' if m.role == 'host' else 'guest ' + m.name} exited "
                f"(exit code {m.process.exitcode})"
                for m in (self.host, *self.guests) if m is not None and not m.alive()]

    def _gone_under(self, exc: BaseException) -> list[str]:
        """:meth:`exited`, when ``exc`` looks like a member's death (ENOTCONN from the guests, a
        closed control channel): the dying process may take a moment to be reaped."""
        if isinstance(exc, MemberExited) or not (
                isinstance(exc, ConnectionError) or getattr(exc, "errno", None) == errno.ENOTCONN):
            return []
        if self.host is not None:
            self.host.process.join(1.0 if self.host.alive() else 0)
        return self.exited()

    def check_members(self) -> None:
        """Raise :class:`MemberExited` if a member is gone (e.g. from a long run's ``tick``)."""
        gone = self.exited()
        if gone:
            raise MemberExited(", ".join(gone))

    # -- stop ----------------------------------------------------------------------------------
    def stop(self) -> None:
        """Stop every member (guests first, so they unmount cleanly) and remove every resource,
        within ``STOP_TIMEOUT`` seconds (then what is left is killed).  Interrupted (a second
        Ctrl-C) or failing, it kills every member at once before the exception goes on: a member
        left running would hold the launcher's exit (multiprocess joins its children)."""
        if self._stopped:
            return
        self._stopped = True
        try:
            self._stop_members(time.monotonic() + STOP_TIMEOUT)
        except BaseException:
            self._kill_members()
            raise
        finally:
            _remove_cluster_files(self.id)

    def _stop_members(self, deadline: float) -> None:
        """Ask every ready guest to shut down, all at once (each may have write-back data to
        write: a stuck one must not eat the others' time), then give them ``STOP_TIMEOUT`` from
        when the last request was answered or gave up."""
        ready = {id(g.process) for g in self.guests}

        def shutdown(g: GuestHandle) -> None:
            try:
                if g.alive():
                    g.client.call_within(max(0.1, deadline - time.monotonic()), "shutdown")
            except (ConnectionError, OSError):
                pass
            g.client.close()
        asks = [threading.Thread(target=shutdown, args=(g,), daemon=True) for g in self.guests]
        for t in asks:
            t.start()
        for t in asks:
            t.join()
        deadline = time.monotonic() + STOP_TIMEOUT
        guests = [p for p in self._procs if self.host is None or p is not self.host.process]
        for proc in guests:
            if id(proc) not in ready:        # still starting (start() was interrupted or failed)
                self._terminate(proc)
        for proc in guests:
            self._reap(proc, deadline)
        if self.host is not None:
            self._terminate(self.host.process)
            self._reap(self.host.process, deadline)

    def _kill_members(self) -> None:
        """SIGKILL and reap every member, even through more Ctrl-Cs."""
        for proc in self._procs:
            for _ in range(3):
                try:
                    if proc.pid is not None and proc.is_alive():
                        proc.kill()
                        proc.join(2)
                    break
                except KeyboardInterrupt:
                    continue

    @staticmethod
    def _terminate(proc) -> None:
        if proc.pid is not None and proc.is_alive():
            try:
                os.kill(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

    @staticmethod
    def _reap(proc, deadline: float) -> None:
        if proc.pid is None:
            return
        proc.join(max(0.0, deadline - time.monotonic()))
        if proc.is_alive():
            log.warning("%s did not stop in time; killing it", proc.name)
            proc.kill()
            proc.join(5)

    def __enter__(self) -> "Cluster":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<Cluster {self.id} {len(self.guests)} guests on {self.topology.share}>"


SCRATCH = "vfscluster-"
_SCRATCH_NAME = re.compile(rf"^{SCRATCH}(bench|demo|stress)-(\d+)-")


def scratch_dir(kind: str) -> tempfile.TemporaryDirectory:
    """A temporary share for a command's own cluster (``kind``: bench, demo or stress), named with
    this process's pid: :func:`sweep` removes it once the process is gone (kill -9 leaves it)."""
    return tempfile.TemporaryDirectory(prefix=f"{SCRATCH}{kind}-{os.getpid()}-")


def _sweep_scratch(everything: bool) -> list[str]:
    removed = []
    root = runtime_root()
    for n in os.listdir(root):
        m = _SCRATCH_NAME.match(n)
        path = os.path.join(root, n)
        if m is None or not os.path.isdir(path):
            continue
        owner = int(m.group(2))
        if owner == os.getpid() or (not everything and pid_alive(owner)):
            continue
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    return removed


def _remove_cluster_files(cid: str) -> list[str]:
    removed = []
    rdir = os.path.join(runtime_root(), PREFIX + cid)
    if os.path.isdir(rdir):
        shutil.rmtree(rdir, ignore_errors=True)
        removed.append(rdir)
    try:
        names = os.listdir(SHM_DIR)
    except FileNotFoundError:
        names = []
    for n in names:
        if n.startswith(f"{PREFIX}{cid}-"):
            try:
                os.unlink(os.path.join(SHM_DIR, n))
                removed.append(os.path.join(SHM_DIR, n))
            except FileNotFoundError:
                pass
    return removed


def _cluster_ids() -> set[str]:
    ids = set()
    for n in os.listdir(runtime_root()):
        if n.startswith(PREFIX) and os.path.isdir(os.path.join(runtime_root(), n)):
            ids.add(n[len(PREFIX):])
    try:
        for n in os.listdir(SHM_DIR):
            if n.startswith(PREFIX):
                parts = n[len(PREFIX):].split("-")
                if len(parts) >= 2:
                    ids.add(f"{parts[0]}-{parts[1]}")
    except FileNotFoundError:
        pass
    return ids


def sweep(*, everything: bool = False) -> list[str]:
    """Remove what clusters whose launcher is dead left behind (all clusters with ``everything``):
    kill their member processes still alive, unlink their shared memory, remove their sockets —
    and the temporary shares of commands (:func:`scratch_dir`) whose process is gone."""
    removed = _sweep_scratch(everything)
    for cid in sorted(_cluster_ids()):
        try:
            owner = int(cid.split("-")[0])
        except ValueError:
            continue
        if not everything and pid_alive(owner) and owner != os.getpid():
            continue
        pids = os.path.join(runtime_root(), PREFIX + cid, "pids")
        if os.path.exists(pids):
            with open(pids) as f:
                for line in f:
                    pid, _, role = line.strip().partition(" ")
                    if pid.isdigit() and pid_alive(int(pid)) and _is_ours(int(pid)):
                        os.kill(int(pid), signal.SIGKILL)
                        removed.append(f"process {pid} ({role})")
        removed += _remove_cluster_files(cid)
    return removed


def _is_ours(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip() in ("vfs-hostd", "vfs-guest")
    except OSError:
        return False
