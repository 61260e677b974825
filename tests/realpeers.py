"""Helpers for the tests against real peers: a Linux guest under QEMU (``deploy/qemu/boot.py``)
and the C virtiofsd of QEMU 7.2.

On a machine without the Debian packages these tests skip with the reason; under CI
(``CI=true``) a missing package is a failure instead, so that CI can never pass by skipping them.
"""

from __future__ import annotations

import importlib.util
import os
import secrets
import shutil
import sys
import tempfile

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BOOT_PY = os.path.join(REPO, "deploy", "qemu", "boot.py")


def _load_boot():
    """``deploy/qemu/boot.py`` as the module ``vfsc_qemu_boot`` (deploy/ is not a package)."""
    name = "vfsc_qemu_boot"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, BOOT_PY)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


boot = _load_boot()


def unavailable(reason: str) -> None:
    """Skip with ``reason``, or fail under CI."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI=true and a real-peer test cannot run: {reason}", pytrace=False)
    pytest.skip(reason)


def require_qemu() -> None:
    missing = boot.missing_requirements()
    if missing:
        unavailable("cannot boot a Linux guest; missing: " + "; ".join(missing))


def require_virtiofsd() -> None:
    if not os.access(boot.VIRTIOFSD, os.X_OK):
        unavailable(f"no C virtiofsd at {boot.VIRTIOFSD} (apt-get install qemu-system-common)")
    if os.geteuid() != 0:
        unavailable("the C virtiofsd needs root (its sandbox and the share's ownership)")


class RunDir:
    """A runtime directory named like the launcher's (``$TMPDIR/vfsc-<pid>-<rand>``), so the
    suite's leak check sees it if a test leaves it behind; removed by :meth:`remove`."""

    def __init__(self) -> None:
        self.path = tempfile.mkdtemp(prefix=f"vfsc-{os.getpid()}-{secrets.token_hex(3)}-")

    def __truediv__(self, name: str) -> str:
        return os.path.join(self.path, name)

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


@pytest.fixture
def rundir():
    d = RunDir()
    try:
        yield d
    finally:
        d.remove()


def keep_artifact(path: str, name: str) -> None:
    """Copy ``path`` to ``$VFS_TEST_ARTIFACTS/name`` when that variable is set (CI sets it)."""
    dest = os.environ.get("VFS_TEST_ARTIFACTS")
    if dest and os.path.exists(path):
        os.makedirs(dest, exist_ok=True)
        shutil.copyfile(path, os.path.join(dest, name))


def read_trace(path: str) -> list[tuple[str, int, str, int, str]]:
    """The ``--trace`` file as (guest, queue, opcode, nodeid, result) rows."""
    rows = []
    with open(path) as f:
        for line in f:
            parts = line.rstrip("\n").split("\t")
            if len(parts) >= 6:
                rows.append((parts[1], int(parts[2]), parts[3], int(parts[4]), parts[5]))
    return rows


#: inotify: a file opened for writing was closed; a name was moved in
_IN_CLOSE_WRITE = 0x0000_0008
_IN_MOVED_TO = 0x0000_0080


class FileWaiter:
    """Waits, on inotify events rather than a sleep loop, until a file named ``name`` is closed
    after writing (or moved) into ``directory``.  Make it before starting what writes the file
    (the watch must exist first), then call :meth:`wait`."""

    def __init__(self, directory, name: str) -> None:
        from vfscluster.host.inotify import Inotify
        self.name = os.fsencode(name)
        self.ino = Inotify()
        self.ino.add_watch(os.fspath(directory), _IN_CLOSE_WRITE | _IN_MOVED_TO)

    def wait(self, timeout: float, alive) -> None:
        """Return once the file is there; AssertionError if ``alive()`` turns false or
        ``timeout`` seconds pass first."""
        import select
        import time
        from vfscluster.host.inotify import parse_events
        deadline = time.monotonic() + timeout
        try:
            while True:
                assert alive(), f"the writer of {self.name!r} ended first"
                left = deadline - time.monotonic()
                assert left > 0, f"{self.name!r} never appeared"
                ready, _, _ = select.select([self.ino.fd], [], [], min(left, 1.0))
                if ready and any(name == self.name for _, _, _, name in parse_events(self.ino.read())):
                    return
        finally:
            self.ino.close()
