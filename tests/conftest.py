"""Shared fixtures, and the suite-wide leak check: after the whole run (all xdist workers), no
shared-memory object or runtime directory of ours whose launcher is gone may be left, and no
vfs-hostd / vfs-guest process of ours may still be alive."""

from __future__ import annotations

import os
import tempfile

import pytest

from vfscluster.cluster.procutil import pid_alive


def _stat_fields(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return []


def _ppid(pid: int) -> int:
    fields = _stat_fields(pid)
    return int(fields[1]) if len(fields) > 1 else 0


def alive(pid: int) -> bool:
    """Running or sleeping — not gone and not a zombie waiting to be reaped."""
    fields = _stat_fields(pid)
    return bool(fields) and fields[0] != "Z"


def _descends_from(pid: int, ancestor: int) -> bool:
    for _ in range(64):
        if pid == ancestor:
            return True
        if pid <= 1:
            return False
        pid = _ppid(pid)
    return False


def stray_processes() -> list[str]:
    """vfs-hostd / vfs-guest processes that are orphans or our descendants."""
    me = os.getpid()
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/comm") as f:
                comm = f.read().strip()
        except OSError:
            continue
        if comm in ("vfs-hostd", "vfs-guest") and alive(int(pid)) and (
                _ppid(int(pid)) == 1 or _descends_from(int(pid), me)):
            found.append(f"{comm}[{pid}]")
    return found


def leftovers(*, mine_only: bool = False) -> list[str]:
    """vfsc-* objects in /dev/shm and $TMPDIR whose launcher is this process (or, unless
    ``mine_only``, whose launcher is dead)."""
    out = []
    for d in ("/dev/shm", tempfile.gettempdir()):
        for n in os.listdir(d):
            if not n.startswith("vfsc-"):
                continue
            owner = n[5:].split("-")[0]
            if not owner.isdigit():
                continue
            if int(owner) == os.getpid() or (not mine_only and not pid_alive(int(owner))):
                out.append(os.path.join(d, n))
    return out


@pytest.fixture(scope="session", autouse=True)
def _no_leaks_from_this_worker():
    yield
    left = leftovers(mine_only=True)
    assert not left, f"left behind by this test process: {left}"


def pytest_sessionfinish(session, exitstatus):
    if hasattr(session.config, "workerinput"):     # an xdist worker: the controller checks at the end
        return
    procs, left = stray_processes(), leftovers()
    if procs or left:
        tr = session.config.pluginmanager.get_plugin("terminalreporter")
        if tr is not None:
            tr.write_line(f"LEAK CHECK FAILED: stray processes {procs}, leftovers {left}", red=True)
        session.exitstatus = 1


@pytest.fixture
def share(tmp_path):
    d = tmp_path / "share"
    d.mkdir()
    return d


@pytest.fixture
def hostd(share):
    """A real vfs-hostd process serving ``share`` (``hostproc.HostProcess``), stopped after."""
    from hostproc import HostProcess
    h = HostProcess(share)
    yield h
    h.stop()
