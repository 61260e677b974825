"""The metadata-version table (DESIGN §4): the 2019 virtio-fs design's coherency scheme.

A shared-memory object: a 32-byte header (magic, slot count, generation, reserved) and an array
of u64 counters.  The host is the only writer; guests map it read-only.  ``slot = nodeid mod
slots``; a collision costs an extra refresh, never a stale read.  The host bumps the slot of every
inode an operation changed *after* the change and *before* its reply.

The host hands guests :attr:`VersionTable.ro_fd`, a read-only open of the same object (a guest cannot
map it writable, whatever it asks for).  ``unlink_name=True`` removes the name at once: the table then
lives as long as its fds, and nothing is left in /dev/shm whatever happens to the process.

Access is through ``memoryview.cast("Q")`` item access: one aligned 8-byte load or store (atomic on
x86-64 and arm64).  Within the host several threads may bump, so bumps take a lock; a
read-modify-write across processes is never needed because the host is the only writer.
"""

from __future__ import annotations

import mmap
import os
import struct
import threading
from typing import Iterable

import posix_ipc

MAGIC = int.from_bytes(b"VFSCVT01", "little")
HEADER = struct.Struct("<QQQQ")          # magic, slots, generation, reserved
HEADER_WORDS = HEADER.size // 8
DEFAULT_SLOTS = 1 << 16
#: The table is the virtio-fs device's VIRTIO shared-memory region 1 (region 0 is the DAX window).
SHMID = 1


def table_size(slots: int) -> int:
    return HEADER.size + 8 * slots


class VersionTable:
    """The host's (writable) version table: ``fd`` opens it read-write, ``ro_fd`` read-only (the one to
    give away); ``size`` is its length in bytes."""

    def __init__(self, name: str, slots: int = DEFAULT_SLOTS, *, unlink_name: bool = False) -> None:
        if slots < 1 or slots & (slots - 1):
            raise ValueError(f"version table slots must be a power of two, not {slots}")
        shm = posix_ipc.SharedMemory(name, posix_ipc.O_CREX, mode=0o644, size=table_size(slots))
        try:
            self.mem = mmap.mmap(shm.fd, table_size(slots))
            self.fd = os.dup(shm.fd)
            os.set_inheritable(self.fd, False)
            # A new open file description, read-only: what guests get (see the module docstring).
            self.ro_fd = os.open(f"/proc/self/fd/{self.fd}", os.O_RDONLY | os.O_CLOEXEC)
        except BaseException:
            posix_ipc.unlink_shared_memory(name)
            raise
        finally:
            shm.close_fd()
        self.name = name
        self.size = table_size(slots)
        self.closed = False
        self.slots = slots
        self._mask = slots - 1
        self._words = memoryview(self.mem).cast("Q")
        HEADER.pack_into(self.mem, 0, MAGIC, slots, 1, 0)
        self._lock = threading.Lock()
        self.bumps = 0
        if unlink_name:
            self.unlink()

    def slot(self, nodeid: int) -> int:
        return nodeid & self._mask

    def version(self, nodeid: int) -> int:
        return self._words[HEADER_WORDS + (nodeid & self._mask)]

    def bump(self, nodeids: Iterable[int]) -> None:
        """Increment the slot of each nodeid (a slot shared by several of them once is enough)."""
        words, mask = self._words, self._mask
        with self._lock:
            for i in {HEADER_WORDS + (n & mask) for n in nodeids}:
                words[i] = (words[i] + 1) & 0xFFFF_FFFF_FFFF_FFFF
                self.bumps += 1

    def bump_all(self) -> None:
        """Invalidate everything (e.g. the inotify queue overflowed): bump the generation too."""
        with self._lock:
            w = self._words
            for i in range(HEADER_WORDS, HEADER_WORDS + self.slots):
                w[i] = (w[i] + 1) & 0xFFFF_FFFF_FFFF_FFFF
            w[2] += 1

    def unlink(self) -> None:
        try:
            posix_ipc.unlink_shared_memory(self.name)
        except posix_ipc.ExistentialError:
            pass

    def close(self) -> None:
        """Unlink the name (if still there) and release the mapping and both fds; idempotent."""
        if self.closed:
            return
        self.closed = True
        self.unlink()
        self._words.release()
        self.mem.close()
        os.close(self.fd)
        os.close(self.ro_fd)
