"""The host's worker threads for blocking work, shared fairly by the guests.

One vfs-hostd serves every guest, where virtiofsd runs one process (and one thread pool) per guest.
A plain FIFO pool would let one guest's burst — hundreds of FSYNCs, or SETUPMAPPINGs that each wait
up to ``ack_timeout`` for a stuck guest's ack — queue in front of every other guest's single
request.  :class:`FairPool` keeps one FIFO per key (the host uses the session id), serves the keys
round-robin, and lets no key occupy more than ``per_key`` workers at once (by default all but one),
so another guest's request always finds a worker soon.  Within one key, tasks start in FIFO order.

A task that raises is logged with its traceback (a worker never dies of it, and nothing is lost
silently in a Future nobody reads).  :meth:`shutdown` lets the workers finish every queued task,
then joins them.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable, Hashable
from typing import Any

log = logging.getLogger(__name__)


class FairPool:
    """``workers`` threads serving per-key FIFOs round-robin, at most ``per_key`` at once per key."""

    def __init__(self, workers: int, *, name: str = "vfs-worker", per_key: int | None = None) -> None:
        if workers < 1:
            raise ValueError(f"a pool needs at least one worker, not {workers}")
        self.workers = workers
        #: the most workers one key may occupy at once (default: all but one, at least one)
        self.per_key = per_key if per_key is not None else max(1, workers - 1)
        if self.per_key < 1:
            raise ValueError(f"per_key must be at least 1, not {per_key}")
        self._cond = threading.Condition()
        self._tasks: dict[Hashable, deque] = {}      # key -> its queued tasks (only keys with some)
        self._order: deque[Hashable] = deque()        # the keys of _tasks, in round-robin order
        self._running: dict[Hashable, int] = {}       # key -> tasks of it running now
        self._closed = False
        self._threads = [threading.Thread(target=self._worker, name=f"{name}-{n}", daemon=True)
                         for n in range(workers)]
        for t in self._threads:
            t.start()

    def submit(self, key: Hashable, fn: Callable[..., Any], *args: Any) -> None:
        """Queue ``fn(*args)`` behind ``key``'s earlier tasks.  RuntimeError after shutdown."""
        with self._cond:
            if self._closed:
                raise RuntimeError("the pool is shut down")
            tasks = self._tasks.get(key)
            if tasks is None:
                tasks = self._tasks[key] = deque()
                self._order.append(key)
            tasks.append((fn, args))
            self._cond.notify()

    def queued(self, key: Hashable | None = None) -> int:
        """Tasks waiting for a worker (of ``key``, or of all keys)."""
        with self._cond:
            if key is not None:
                return len(self._tasks.get(key, ()))
            return sum(len(t) for t in self._tasks.values())

    def shutdown(self) -> None:
        """Run what is queued, then stop and join the workers.  Idempotent."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        for t in self._threads:
            if t is not threading.current_thread():
                t.join()

    # ------------------------------------------------------------------------------- workers

    def _take(self) -> tuple[Hashable, Callable, tuple] | None:
        """The next task (lock held): the first key in round-robin order below its cap."""
        order = self._order
        for _ in range(len(order)):
            key = order.popleft()
            if self._running.get(key, 0) >= self.per_key:
                order.append(key)
                continue
            tasks = self._tasks[key]
            fn, args = tasks.popleft()
            if tasks:
                order.append(key)                 # its turn again after every other key's
            else:
                del self._tasks[key]
            self._running[key] = self._running.get(key, 0) + 1
            return key, fn, args
        return None

    def _worker(self) -> None:
        cond = self._cond
        while True:
            with cond:
                while (task := self._take()) is None:
                    if self._closed and not self._tasks:
                        return
                    cond.wait()
            key, fn, args = task
            try:
                fn(*args)
            except Exception:                     # a worker outlives any task
                log.exception("host worker: a task of %r failed", key)
            finally:
                with cond:
                    left = self._running[key] - 1
                    if left:
                        self._running[key] = left
                    else:
                        del self._running[key]
                    cond.notify()                 # the key may be below its cap again
