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


def die_with_parent(sig: int = signal.SIGTERM) -> None:
    """Have the kernel send ``sig`` to this process when its parent dies (kill -9 included)."""
    _libc.prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0)
    if os.getppid() == 1:    # the parent died before we asked
        os.kill(os.getpid(), sig)


def setup_logging(level: str | int = "WARNING", prefix: str = "") -> None:
    logging.basicConfig(level=level if isinstance(level, int) else level.upper(), stream=sys.stderr,
                        format=f"%(asctime)s {prefix}%(name)s %(levelname)s: %(message)s", force=True)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
