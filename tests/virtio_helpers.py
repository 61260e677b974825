"""Helpers for virtio unit tests: anonymous guest memory and raw descriptor writing."""

from __future__ import annotations

import mmap

from vfscluster.virtio.memory import GuestMemory, Region, buffer_address
from vfscluster.virtio.driver_queue import QueueClosed
from vfscluster.virtio.ring import DESC


def anon_memory(size: int = 1 << 20, gpa: int = 0x10000) -> tuple[GuestMemory, mmap.mmap]:
    mm = mmap.mmap(-1, size)
    return GuestMemory([Region(gpa=gpa, size=size, user_addr=buffer_address(mm), mem=mm)]), mm


def put_desc(table, i: int, addr: int, length: int, flags: int = 0, nxt: int = 0) -> None:
    DESC.pack_into(table, i * 16, addr, length, flags, nxt)


def publish_chain(q, descs, token) -> None:
    """Publish a hand-made chain on driver queue ``q``, as a buggy or hostile driver would: one
    descriptor per ``(addr, length, flags, next)`` of ``descs``, written before the chain is made
    available (a ``next`` of None: the chain's following descriptor).  The chain's head goes back
    to ``token``'s owner like any other (the queue's bookkeeping is kept), and the device is
    kicked if it asks for it.  QueueClosed if the queue is closed (broken), as for ``add``."""
    with q.lock:
        if q.closed:
            raise QueueClosed()
        ids = [q._free.pop() for _ in descs]
        for i, (addr, length, flags, nxt) in enumerate(descs):
            if nxt is None:
                nxt = ids[i + 1] if i + 1 < len(ids) else 0
            DESC.pack_into(q.desc, ids[i] * 16, addr, length, flags, nxt)
        q._chains[ids[0]] = (ids, token)
        q._a16[2 + q.avail_idx % q.size] = ids[0]
        q.avail_idx = (q.avail_idx + 1) & 0xFFFF
        q._a16[1] = q.avail_idx
        kick = q._should_kick()
    if kick:
        q.kick()
