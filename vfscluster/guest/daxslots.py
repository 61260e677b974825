"""The DAX window's ranges as :class:`~vfscluster.guest.daxclient.GuestDax` takes them: the
:class:`~vfscluster.guest.daxmap.RangeAllocator` plus reclaim on demand and waiting for a range, as
``alloc_dax_mapping_reclaim`` / ``range_waitq`` do in Linux ``fs/fuse/dax.c``.

:meth:`SlotPool.take` returns a free range already pinned.  Below the reclaim threshold (20 % free) it
runs one reclaim pass in the taking thread; with no range free it reclaims synchronously; if every busy
range is pinned it waits until an unpin or a free happens somewhere (a generation counter under a
condition, so a wake-up between the failed reclaim and the wait is never lost), for at most
``timeout`` seconds in all (then OSError ENOMEM).  :meth:`SlotPool.abort` (the host went away) ends
every wait at once with its errno.

Ranges that live ``mmap`` buffers pin are *held* (:meth:`SlotPool.hold`): they come free only when a
program closes a buffer, not when a copy ends.  Linux never waits for those — it takes a mapped range
back (zaps the page tables, the program faults again later) — but a buffer here is the window's
memory itself, so its ranges cannot move.  A taker that can do without a range (a read or write,
which then goes through FUSE_READ / FUSE_WRITE) says so (``wait_held=False``) and gets ENOMEM at
once when every range is held; an ``mmap`` waits.
"""

from __future__ import annotations

import errno
import logging
import os
import queue
import threading
import time
from collections.abc import Callable

from .daxmap import RangeAllocator

log = logging.getLogger(__name__)

# Unpins asked for by the finalizers of garbage-collected mmap buffers.  A finalizer runs wherever
# the collector happens to run — possibly inside this module, in a thread that holds the very lock
# an unpin takes — so it only queues (SimpleQueue.put is reentrant, made for weakref callbacks)
# and one thread of the process unpins.
_later: queue.SimpleQueue = queue.SimpleQueue()
_reaper_lock = threading.Lock()
_reaper: threading.Thread | None = None


def _start_reaper() -> None:
    global _reaper
    with _reaper_lock:
        if _reaper is None or not _reaper.is_alive():       # (a forked child has none)
            _reaper = threading.Thread(target=_reap, name="dax-unpin", daemon=True)
            _reaper.start()


def _reap() -> None:
    while True:
        pool, item = _later.get()
        if pool is None:
            item.set()                                       # a flush marker
            continue
        try:
            pool.release(item)
        except OSError as exc:
            log.warning("DAX: unpinning the ranges of a collected mmap buffer: %s", exc)


class SlotPool:
    """``reclaim()`` frees some unpinned ranges and returns how many (GuestDax.reclaim); ``on_wait``
    is called each time a taker has to wait.  Thread-safe."""

    def __init__(self, ranges: RangeAllocator, reclaim: Callable[[], int], timeout: float,
                 on_wait: Callable[[], None] = lambda: None) -> None:
        self.ranges = ranges
        self.reclaim = reclaim
        self.timeout = timeout
        self.on_wait = on_wait
        self._cond = threading.Condition()
        self._gen = 0
        self._waiters = 0
        self._held: dict[int, int] = {}     # range -> live mmap buffers pinning it
        self._dead = 0              # errno once aborted
        _start_reaper()

    def abort(self, err: int) -> None:
        """The connection is gone: every taker waiting now or later gets ``OSError(err)``."""
        with self._cond:
            self._dead = err
            self._gen += 1
            self._cond.notify_all()

    def _check_alive(self) -> None:
        if self._dead:
            raise OSError(self._dead, os.strerror(self._dead))

    def take(self, wait_held: bool = True) -> int:
        """A free range, pinned (module docstring).  ``wait_held=False``: ENOMEM at once, instead
        of waiting, when every range is held by live mmap buffers."""
        deadline = time.monotonic() + self.timeout
        while True:
            self._check_alive()
            slot = self.ranges.alloc()
            if slot is not None:
                self.ranges.pin(slot)
                if self.ranges.needs_reclaim:
                    try:
                        self.reclaim()
                    except OSError as exc:
                        log.warning("DAX reclaim failed: %s", exc)
                return slot
            with self._cond:
                self._waiters += 1
                gen = self._gen
            try:
                if self.reclaim():
                    continue
                if not wait_held and self.all_held():
                    raise OSError(errno.ENOMEM, f"{os.strerror(errno.ENOMEM)}: every DAX range is "
                                                f"held by a live mmap buffer")
                self.on_wait()
                with self._cond:
                    if not self._cond.wait_for(lambda: self._gen != gen, deadline - time.monotonic()):
                        raise OSError(errno.ENOMEM, f"{os.strerror(errno.ENOMEM)}: every DAX range "
                                                    f"stayed pinned for {self.timeout} s")
                    self._check_alive()
            finally:
                with self._cond:
                    self._waiters -= 1

    def hold(self, slots: list[int]) -> None:
        """A live mmap buffer pins ``slots`` (pinned already) until :meth:`release`."""
        with self._cond:
            for slot in slots:
                self._held[slot] = self._held.get(slot, 0) + 1

    def release(self, slots: list[int]) -> None:
        """The mmap buffer of :meth:`hold` is gone: its ranges are no longer held, and unpinned."""
        with self._cond:
            for slot in slots:
                n = self._held[slot] - 1
                if n:
                    self._held[slot] = n
                else:
                    del self._held[slot]
        self.unpin_all(slots)

    def all_held(self) -> bool:
        """Is every range of the window held by some live mmap buffer?"""
        with self._cond:
            return len(self._held) >= self.ranges.nranges

    def unpin(self, slot: int) -> None:
        if self.ranges.unpin(slot) == 0 and self._waiters:
            self.changed()

    def unpin_all(self, slots: list[int]) -> None:
        for slot in slots:
            self.unpin(slot)

    def release_later(self, slots: list[int]) -> None:
        """:meth:`release` soon, in another thread: for finalizers, which may run while this
        thread holds any lock (module comment).  Takes no lock."""
        _later.put((self, slots))

    @staticmethod
    def flush_later(timeout: float = 10.0) -> bool:
        """Wait until every unpin queued before this call is done."""
        done = threading.Event()
        _later.put((None, done))
        return done.wait(timeout)

    def give_back(self, slot: int) -> None:
        """Free a range taken but not used (it must be unpinned)."""
        self.ranges.free(slot)
        self.changed()

    def changed(self) -> None:
        """A range was freed or unpinned: wake the takers waiting."""
        with self._cond:
            self._gen += 1
            self._cond.notify_all()


__all__ = ["SlotPool"]
