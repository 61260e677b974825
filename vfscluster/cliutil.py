"""Command-line plumbing shared by ``vfscluster``, ``vfs-hostd`` and ``vfs-guest``."""

from __future__ import annotations

import argparse
import signal
import sys
from typing import NoReturn


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but a mistake is ONE clear line on stderr and exit status 2."""

    def error(self, message: str):  # type: ignore[override]
        sys.stderr.write(f"{self.prog}: error: {message} (see --help)\n")
        raise SystemExit(2)


def fail(prog: str, message: str) -> NoReturn:
    sys.stderr.write(f"{prog}: error: {message}\n")
    raise SystemExit(2)


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP, raised like Ctrl-C so that the same paths stop the cluster and remove
    what it made; the exit status is ``128 + signo``."""

    def __init__(self, signo: int) -> None:
        super().__init__(signal.Signals(signo).name)
        self.signo = signo


def stop_on_termination() -> None:
    """Make SIGTERM and SIGHUP raise :class:`Terminated` in this (the main) thread."""
    def handler(signo, _frame):
        raise Terminated(signo)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, handler)


def exit_status(exc: KeyboardInterrupt) -> int:
    """128 + the signal that interrupted the command (SIGINT for a plain Ctrl-C)."""
    return 128 + getattr(exc, "signo", signal.SIGINT)
