"""Device side of a split virtqueue.

:class:`QueueState` is what the driver told us (vhost-user ``SET_VRING_*``): plain, untrusted values.
:meth:`QueueState.build` checks them against guest memory and gives a :class:`Queue`, the only thing
that touches the rings.  A queue that sees garbage (an avail index that jumped more than the queue
size, a bad chain) raises :class:`~vfscluster.errors.QueueError`; the caller marks it broken.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass

from ..errors import QueueError
from .chain import DescriptorChain, walk_chain
from .fence import barrier
from .memory import GuestMemory
from .ring import (AVAIL_F_NO_INTERRUPT, USED_ELEM, USED_F_NO_NOTIFY, avail_event_offset, avail_size,
                   desc_table_size, need_event, used_event_offset, used_size, valid_queue_size)


@dataclass(slots=True)
class QueueState:
    """Plain, unchecked queue configuration as received from the driver."""

    size: int = 0
    desc_addr: int = 0          # frontend-virtual addresses (vhost-user SET_VRING_ADDR)
    avail_addr: int = 0
    used_addr: int = 0
    next_avail: int = 0         # SET_VRING_BASE
    next_used: int = 0
    event_idx: bool = False
    indirect: bool = False
    enabled: bool = False
    kick_fd: int | None = None
    call_fd: int | None = None
    err_fd: int | None = None

    def build(self, mem: GuestMemory) -> "Queue":
        """Check the configuration against ``mem`` and make the live queue."""
        if not valid_queue_size(self.size):
            raise QueueError(f"queue size {self.size} is not a power of two in 1..32768")
        if self.desc_addr & 0xF or self.avail_addr & 0x1 or self.used_addr & 0x3:
            raise QueueError("misaligned ring address")
        desc = mem.user_view(self.desc_addr, desc_table_size(self.size))
        avail = mem.user_view(self.avail_addr, avail_size(self.size))
        used = mem.user_view(self.used_addr, used_size(self.size))
        return Queue(self, mem, desc, avail, used)


class Queue:
    """A checked split virtqueue, device side.  ``lock`` serialises the used ring between threads."""

    def __init__(self, state: QueueState, mem: GuestMemory, desc: memoryview, avail: memoryview,
                 used: memoryview) -> None:
        self.state = state
        self.mem = mem
        self.size = state.size
        self.desc = desc
        self.avail = avail
        self.used = used
        self._a16 = avail.cast("H")          # single-load/store u16 access (see ring.py)
        self._u16 = used.cast("H")
        self.next_avail = state.next_avail & 0xFFFF
        self.next_used = state.next_used & 0xFFFF
        self.event_idx = state.event_idx
        self.indirect = state.indirect
        self.lock = threading.Lock()
        self.broken: str | None = None
        self._used_event_off = used_event_offset(self.size)
        self._avail_event_off = avail_event_offset(self.size)
        self._signalled_used = self.next_used   # used idx at the last call (EVENT_IDX bookkeeping)
        self.popped = 0
        self.notifications = 0

    # -- available ring ------------------------------------------------------------------------
    def avail_idx(self) -> int:
        return self._a16[1]

    def has_work(self) -> bool:
        return self._a16[1] != self.next_avail

    def pop(self) -> DescriptorChain | None:
        """The next available chain, checked, or None."""
        idx = self._a16[1]
        if idx == self.next_avail:
            return None
        if ((idx - self.next_avail) & 0xFFFF) > self.size:
            raise QueueError(f"avail index jumped from {self.next_avail} to {idx} (queue size {self.size})")
        head = self._a16[2 + self.next_avail % self.size]
        self.next_avail = (self.next_avail + 1) & 0xFFFF
        self.popped += 1
        return walk_chain(self.mem, self.desc, self.size, head, indirect_ok=self.indirect)

    # -- used ring -----------------------------------------------------------------------------
    def add_used(self, head: int, length: int) -> None:
        """Return chain ``head`` with ``length`` bytes written.  Caller holds ``lock`` if threads share it."""
        slot = self.next_used % self.size
        USED_ELEM.pack_into(self.used, 4 + 8 * slot, head, length)
        self.next_used = (self.next_used + 1) & 0xFFFF
        self._u16[1] = self.next_used   # x86 TSO keeps the element store before this

    def needs_notification(self) -> bool:
        """Should the driver be called for the used entries added since the last call?"""
        barrier()   # our used.idx store must be visible before we read the driver's used_event
        old, new = self._signalled_used, self.next_used
        if old == new:
            return False
        if self.event_idx:
            self._signalled_used = new
            return need_event(self._a16[self._used_event_off >> 1], new, old)
        self._signalled_used = new
        return not (self._a16[0] & AVAIL_F_NO_INTERRUPT)

    def notify(self) -> None:
        """Signal the call eventfd (if any)."""
        fd = self.state.call_fd
        if fd is not None:
            self.notifications += 1
            try:
                os.eventfd_write(fd, 1)
            except OSError:
                pass  # the driver closed its call fd: it is going away; nothing to tell it

    def add_used_and_notify(self, head: int, length: int) -> None:
        with self.lock:
            self.add_used(head, length)
            if self.needs_notification():
                self.notify()

    # -- kick suppression ----------------------------------------------------------------------
    def disable_kicks(self) -> None:
        """Ask the driver not to kick (we are polling)."""
        if self.event_idx:
            self._u16[self._avail_event_off >> 1] = (self.next_avail - 1) & 0xFFFF
        else:
            self._u16[0] = USED_F_NO_NOTIFY

    def enable_kicks(self) -> bool:
        """Ask for a kick on the next buffer; returns True if work arrived meanwhile (process it)."""
        if self.event_idx:
            self._u16[self._avail_event_off >> 1] = self.next_avail
        else:
            self._u16[0] = 0
        barrier()   # the request for kicks must be visible before we look at avail.idx again
        return self.has_work()

    def mark_broken(self, reason: str) -> None:
        """Stop using the queue and tell the driver (its vring error eventfd, if it gave one)."""
        self.broken = reason
        fd = self.state.err_fd
        if fd is not None:
            try:
                os.eventfd_write(fd, 1)
            except OSError:
                pass  # the driver closed it: it is going away

    def sync_state(self) -> QueueState:
        """Write the ring position back into the plain state (GET_VRING_BASE)."""
        self.state.next_avail = self.next_avail
        self.state.next_used = self.next_used
        return self.state
