"""A request's place on a ring, guest side: its buffer in guest RAM and its completion.

:class:`Pending` is one request in flight (the token the driver queue hands back on completion);
:class:`ThreadBuffer` is the pair of pages, completion lock and Pending that one thread reuses for
its small synchronous requests, so that the common request allocates nothing.
"""

from __future__ import annotations

import threading

from .ram import PAGE


class ThreadBuffer:
    """Two pages of guest RAM, a completion lock and a :class:`Pending` that one thread reuses for
    its small synchronous requests (a thread has at most one such request in flight), so the
    common path allocates nothing.  The lock is held between requests: the completer releases it,
    the waiter takes it back."""

    __slots__ = ("page", "pages", "busy", "pending")

    def __init__(self, pages) -> None:
        self.pages = pages
        self.page = pages.alloc(2)
        self.busy = False
        lock = threading.Lock()
        lock.acquire()
        self.pending = Pending(self.page, 2, self, self.page * PAGE + PAGE, 0, 0, lock)

    def __del__(self) -> None:        # the thread ended: give the pages back
        self.pages.free(self.page, 2)


class Pending:
    """One request on a ring: its buffer in guest RAM and its completion."""

    __slots__ = ("page", "npages", "owner", "out_off", "out_size", "unique", "done", "length", "error", "lock")

    def __init__(self, page: int, npages: int, owner: ThreadBuffer | None, out_off: int, out_size: int,
                 unique: int, lock: threading.Lock | None = None) -> None:
        self.page = page
        self.npages = npages
        self.owner = owner
        self.out_off = out_off
        self.out_size = out_size
        self.unique = unique
        self.done = False
        self.length = 0
        self.error = 0
        if lock is None:
            lock = threading.Lock()
            lock.acquire()
        self.lock = lock


__all__ = ["Pending", "ThreadBuffer"]
