"""Running a test's worker in several threads at once."""

from __future__ import annotations

import threading
from collections.abc import Callable


def run_threads(worker: Callable[[int], object], n: int, timeout: float | None = 60) -> list[threading.Thread]:
    """Start ``worker(0)`` … ``worker(n - 1)`` in threads, join each (``timeout`` seconds at
    most per thread) and return the threads (the caller may check that none is still alive)."""
    threads = [threading.Thread(target=worker, args=(k,)) for k in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout)
    return threads
