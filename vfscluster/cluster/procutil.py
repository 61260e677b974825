"""Process plumbing shared by the daemons: names, parent-death signal, logging, readiness."""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import signal
import sys

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
PR_SET_PDEATHSIG = 1
PR_SET_NAME = 15


def set_process_name(name: str) -> None:
    """Set the kernel's name of this process (``/proc/PID/comm``, 15 bytes), as ``ps`` shows it."""
    _libc.prctl(PR_SET_NAME, ctypes.c_char_p(name.encode()[:15]), 0, 0, 0)


def die_with_parent(sig: int = signal.SIGTERM, parent: int | None = None) -> None:
    """Have the kernel send ``sig`` to this process when its parent dies (kill -9 included).
    ``parent``: the pid the parent had (else: is it init?) — if the parent died before we asked,
    we were re-parented (to init, or to a subreaper such as systemd --user), and ``sig`` comes now."""
    _libc.prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0)
    ppid = os.getppid()
    if ppid == 1 or (parent is not None and ppid != parent):
        os.kill(os.getpid(), sig)


def setup_logging(level: str | int = "WARNING", prefix: str = "") -> None:
    """Log to stderr.  Handlers inherited from a forking launcher are dropped, not closed: their
    streams belong to the launcher (and may already be closed here)."""
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"%(asctime)s {prefix}%(name)s %(levelname)s: %(message)s"))
    root.addHandler(handler)
    root.setLevel(level if isinstance(level, int) else level.upper())


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
