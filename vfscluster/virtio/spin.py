"""Adaptive polling: spin briefly on shared memory before sleeping on an eventfd.

Waking a process on the other vCPU costs 35–55 µs here; a spin round trip costs well under 1 µs but
burns the core (DESIGN §10).  So a waiter spins for a bounded budget and then blocks.  The budget
adapts the way Linux's haltpoll governor does: after a blocking wait, if the event came soon (a longer
spin would have caught it) the budget grows; if it came later the budget shrinks (down to 0: pure
blocking).  "Soon" is ``window_ns``, well above ``max_ns``: the measured wait includes the wake-up
itself, which alone costs about as much as the whole spin budget on these machines.  With a single CPU spinning only delays the peer, so the budget stays 0.
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

    max_ns: int = 100_000
    min_ns: int = 5_000
    window_ns: int = 400_000
    ns: int = -1
    hits: int = 0
    blocks: int = 0

    def __post_init__(self) -> None:
        if cpus_available() < 2:
            self.max_ns = 0
        if self.ns < 0:
            self.ns = self.max_ns

    def hit(self) -> None:
        """The spin found what it waited for."""
        self.hits += 1

    def blocked(self, waited_ns: int) -> None:
        """The waiter spun in vain (or not at all) and then slept ``waited_ns``."""
        self.blocks += 1
        if not self.max_ns:
            return
        if waited_ns <= self.window_ns:
            self.ns = min(self.max_ns, max(self.min_ns, self.ns * 2))
        else:
            self.ns //= 2
            if self.ns < self.min_ns:
                self.ns = 0
