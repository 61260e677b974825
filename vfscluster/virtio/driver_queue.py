"""Driver side of a split virtqueue: add chains, kick, reap used buffers, wait when full.

The guest owns the ring memory.  :class:`DriverQueue` is thread-safe: submitters add chains under
``lock``; whoever reaps (a spinning submitter or the completion thread) does so under the same lock.
A full ring makes the submitter wait on ``space`` — a condition signalled when used buffers are
reaped, never a timer (the v6 patch's "TODO use completion instead of timeout").
"""

from __future__ import annotations

import os
import threading
from typing import Any, Callable, Sequence

from ..errors import LocalProtocolError
from .fence import barrier
from .ring import (DESC, DESC_F_NEXT, DESC_F_WRITE, DESC_SIZE, USED_ELEM, USED_F_NO_NOTIFY,
                   avail_event_offset, layout, need_event, used_event_offset, valid_queue_size)


class QueueClosed(Exception):
    """The queue was shut down while a submitter waited for room."""


class DriverQueue:
    """A split virtqueue laid out in ``ram[base:]`` (a writable memoryview of guest RAM)."""

    def __init__(self, ram: memoryview, base: int, size: int, *, gpa_base: int = 0, user_base: int = 0,
                 event_idx: bool = True, index: int = 0) -> None:
        if not valid_queue_size(size):
            raise LocalProtocolError(f"queue size {size} is not a power of two")
        self.index = index
        self.size = size
        self.event_idx = event_idx
        d, a, u, end = layout(size, base)
        self.end = end
        self.desc = ram[d:d + 16 * size]
        self.avail = ram[a:u]
        self.used = ram[u:end]
        self.desc_gpa, self.avail_gpa, self.used_gpa = gpa_base + d, gpa_base + a, gpa_base + u
        self.desc_user, self.avail_user, self.used_user = user_base + d, user_base + a, user_base + u
        self.desc[:] = bytes(len(self.desc))
        self.avail[:] = bytes(len(self.avail))
        self.used[:] = bytes(len(self.used))
        self._a16 = self.avail.cast("H")     # single-load/store u16 access (see ring.py)
        self._u16 = self.used.cast("H")
        self._used_event_off = used_event_offset(size)
        self._avail_event_off = avail_event_offset(size)
        self.lock = threading.Lock()
        self.space = threading.Condition(self.lock)
        self._free: list[int] = list(range(size - 1, -1, -1))
        self._chains: dict[int, tuple[list[int], Any]] = {}
        self.avail_idx = 0
        self._kicked_at = 0            # avail idx at the last kick decision
        self.last_used = 0
        self.kick_fd: int | None = None
        self.call_fd: int | None = None
        self.err_fd: int | None = None
        self.closed = False
        self._suppressed = False
        self.spinners = 0              # threads polling the used ring (calls suppressed meanwhile)
        self.space_waiters = 0         # threads in wait_for_space (reaping wakes them)
        self.sleepers = 0              # submitters blocked on their completion (they need calls)
        self.on_used: Callable[[Any, int], None] | None = None   # the reaper's callback (wait_for_space)
        #: told (lock held) that the device broke the ring: the queue is closed, the chains in
        #: flight will never complete (:meth:`reap`)
        self.on_broken: Callable[[str], None] | None = None
        self.kicks = 0
        self.full_waits = 0

    # -- submission ----------------------------------------------------------------------------
    def in_flight(self) -> int:
        return len(self._chains)

    def add(self, readable: Sequence[tuple[int, int]], writable: Sequence[tuple[int, int]], token: Any,
            *, wait: bool = True) -> bool:
        """Publish a chain of (gpa, length) buffers; returns True if the device must be kicked.

        Blocks (without a timer) while fewer than ``len(readable)+len(writable)`` descriptors are free.
        Caller must then call :meth:`kick` if True (outside the lock is fine).
        """
        n = len(readable) + len(writable)
        if n == 0 or n > self.size:
            raise LocalProtocolError(f"chain of {n} descriptors for a queue of {self.size}")
        with self.lock:
            while len(self._free) < n:
                if self.closed:
                    raise QueueClosed()
                if not wait:
                    raise BlockingIOError("queue full")
                self.full_waits += 1
                self.wait_for_space()
            if self.closed:
                raise QueueClosed()
            free = self._free
            ids = [free.pop() for _ in range(n)]
            bufs = [(a, l, 0) for a, l in readable] + [(a, l, DESC_F_WRITE) for a, l in writable]
            last = n - 1
            for i, (addr, length, flags) in enumerate(bufs):
                if i < last:
                    DESC.pack_into(self.desc, ids[i] * DESC_SIZE, addr, length, flags | DESC_F_NEXT, ids[i + 1])
                else:
                    DESC.pack_into(self.desc, ids[i] * DESC_SIZE, addr, length, flags, 0)
            head = ids[0]
            self._chains[head] = (ids, token)
            self._a16[2 + self.avail_idx % self.size] = head
            self.avail_idx = (self.avail_idx + 1) & 0xFFFF
            self._a16[1] = self.avail_idx      # TSO: ring entry visible before idx
            return self._should_kick()

    def add_pair(self, in_gpa: int, in_len: int, out_gpa: int, out_len: int, token: Any,
                 spinning: bool = False) -> bool:
        """:meth:`add` for the common chain: one device-readable buffer, then one device-writable
        buffer (omitted when ``out_len`` is 0)."""
        n = 2 if out_len else 1
        with self.lock:
            free = self._free
            while len(free) < n:
                if self.closed:
                    raise QueueClosed()
                self.full_waits += 1
                self.wait_for_space(spinning)
            if self.closed:
                raise QueueClosed()
            head = free.pop()
            if n == 2:
                tail = free.pop()
                DESC.pack_into(self.desc, head * DESC_SIZE, in_gpa, in_len, DESC_F_NEXT, tail)
                DESC.pack_into(self.desc, tail * DESC_SIZE, out_gpa, out_len, DESC_F_WRITE, 0)
                self._chains[head] = ([head, tail], token)
            else:
                DESC.pack_into(self.desc, head * DESC_SIZE, in_gpa, in_len, 0, 0)
                self._chains[head] = ([head], token)
            idx = self.avail_idx
            self._a16[2 + idx % self.size] = head
            self.avail_idx = idx = (idx + 1) & 0xFFFF
            self._a16[1] = idx      # TSO: ring entry visible before idx
            return self._should_kick()

    def wait_for_space(self, spinning: bool = False) -> None:
        """Sleep until used buffers are reaped or the queue closes.  Caller holds ``lock``.

        ``spinning``: the caller is one of :attr:`spinners` (it registered before submitting).
        While it waits for room it polls nothing, so it stops counting: otherwise spinners that
        all wait here would keep calls suppressed with nobody reaping.  A queue whose calls are
        suppressed with nobody polling it (completions reaped lazily) asks for a call first; if
        used buffers are there already, they are reaped with :attr:`on_used` instead of sleeping."""
        if spinning:
            self.spinners -= 1
        try:
            if self._suppressed and not self.spinners and self.enable_calls() and self.on_used is not None:
                self.reap(self.on_used)
                return
            self.space_waiters += 1
            try:
                self.space.wait()
            finally:
                self.space_waiters -= 1
        finally:
            if spinning:
                self.spinners += 1
                if self.spinners == 1:
                    self.suppress_calls()

    def _should_kick(self) -> bool:
        barrier()   # avail.idx store before reading the device's suppression field
        old, new = self._kicked_at, self.avail_idx
        self._kicked_at = new
        if self.event_idx:
            return need_event(self._u16[self._avail_event_off >> 1], new, old)
        return not (self._u16[0] & USED_F_NO_NOTIFY)

    def kick(self) -> None:
        if self.kick_fd is not None:
            self.kicks += 1
            os.eventfd_write(self.kick_fd, 1)

    # -- completion ----------------------------------------------------------------------------
    def used_idx(self) -> int:
        return self._u16[1]

    def used_view(self) -> memoryview:
        """The used ring as u16s (index 1 is ``used.idx``), for a spinner's tight loop."""
        return self._u16

    def has_used(self) -> bool:
        return self._u16[1] != self.last_used

    def reap(self, complete: Callable[[Any, int], None]) -> int:
        """Take every used entry; ``complete(token, length)`` for each.  Caller holds ``lock``.

        Unless calls are suppressed, it then re-arms ``used_event`` at the new position (as Linux's
        virtqueue_get_buf does) and looks once more, so a completion published meanwhile is not left
        waiting for a call that the device, seeing a stale ``used_event``, would not make.

        A device that breaks the ring — a used index more than the queue size ahead, a head that
        is not a chain in flight (unknown, or returned twice) — breaks the queue
        (:meth:`_device_broke`).  A closed queue reaps nothing: what its requests became was
        decided when it closed (a late used entry of a broken queue is dropped).
        """
        if self.closed:
            return 0
        count = 0
        while True:
            idx = self._u16[1]
            if ((idx - self.last_used) & 0xFFFF) > self.size:
                self._device_broke(f"used index jumped from {self.last_used} to {idx}")
                break
            while self.last_used != idx:
                head, length = USED_ELEM.unpack_from(self.used, 4 + 8 * (self.last_used % self.size))
                self.last_used = (self.last_used + 1) & 0xFFFF
                entry = self._chains.pop(head, None)
                if entry is None:
                    self._device_broke(f"used entry for chain head {head}, which is not in flight")
                    break
                ids, token = entry
                self._free.extend(ids)
                complete(token, length)
                count += 1
            if self.closed or self._suppressed or not self.event_idx:
                break
            self._a16[self._used_event_off >> 1] = self.last_used
            barrier()
            if self._u16[1] == self.last_used:
                break
        if count and self.space_waiters:
            self.space.notify_all()
        return count

    def _device_broke(self, reason: str) -> None:
        """The device broke the ring protocol: close the queue (submitters waiting for room get
        :class:`QueueClosed`) and tell :attr:`on_broken` (lock held), whose business the chains
        still in flight are.  Caller holds ``lock``."""
        self.closed = True
        self.space.notify_all()
        if self.on_broken is not None:
            self.on_broken(reason)

    def suppress_calls(self) -> None:
        """Ask the device not to call (someone is polling the used ring).  Caller holds ``lock``."""
        self._suppressed = True
        if self.event_idx:
            self._a16[self._used_event_off >> 1] = (self.last_used - 1) & 0xFFFF
        else:
            self._a16[0] = 1

    def enable_calls(self) -> bool:
        """Ask for a call on the next used buffer; True if one arrived meanwhile (reap it).
        Caller holds ``lock``."""
        self._suppressed = False
        if self.event_idx:
            self._a16[self._used_event_off >> 1] = self.last_used
        else:
            self._a16[0] = 0
        barrier()
        return self.has_used()

    def close(self) -> None:
        """Wake every submitter waiting for room; they get :class:`QueueClosed`."""
        with self.lock:
            self.closed = True
            self.space.notify_all()

    def pending_tokens(self) -> list[Any]:
        return [tok for _, tok in self._chains.values()]
