"""Helpers for virtio unit tests: anonymous guest memory and raw descriptor writing."""

from __future__ import annotations

import mmap

from vfscluster.virtio.memory import GuestMemory, Region, buffer_address
from vfscluster.virtio.ring import DESC


def anon_memory(size: int = 1 << 20, gpa: int = 0x10000) -> tuple[GuestMemory, mmap.mmap]:
    mm = mmap.mmap(-1, size)
    return GuestMemory([Region(gpa=gpa, size=size, user_addr=buffer_address(mm), mem=mm)]), mm


def put_desc(table, i: int, addr: int, length: int, flags: int = 0, nxt: int = 0) -> None:
    DESC.pack_into(table, i * 16, addr, length, flags, nxt)
