"""Adaptive polling: spin briefly on shared memory before sleeping on an eventfd.

Waking a process on the other vCPU costs 35–55 µs here; a spin round trip costs well under 1 µs but
burns the core (DESIGN §10).  So a waiter spins for a bounded budget and then blocks.  The budget
adapts: a spin that times out halves it (down to 0: pure blocking), a spin that succeeds doubles it
back towards the maximum.  With a single CPU spinning only delays the peer, so the budget is 0.
"""

from __future__ import annotations

import os
from dataclasses import dataclass


def cpus_available() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover
        return os.cpu_count() or 1


@dataclass(slots=True)
class SpinBudget:
    """How long (ns) to spin before blocking; adapts to whether spinning pays off."""

    max_ns: int = 50_000
    min_ns: int = 2_000
    ns: int = -1

    def __post_init__(self) -> None:
        if cpus_available() < 2:
            self.max_ns = 0
        if self.ns < 0:
            self.ns = self.max_ns

    def hit(self) -> None:
        """The spin found what it waited for."""
        if self.ns < self.max_ns:
            self.ns = min(self.max_ns, max(self.min_ns, self.ns * 2))

    def miss(self) -> None:
        """The spin timed out and the waiter had to block."""
        self.ns //= 2
        if self.ns < self.min_ns:
            self.ns = 0

    def reset(self) -> None:
        """Give spinning another chance (e.g. after a blocking wait that was woken quickly)."""
        if self.ns == 0:
            self.ns = self.min_ns if self.max_ns else 0
