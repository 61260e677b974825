"""Guest RAM: one POSIX shared-memory object, mapped by this guest and (over vhost-user) by the host.

The object is named ``/vfsc-<cluster>-<guest>-ram``.  Its name is unlinked as soon as it is mapped:
the host receives the file descriptor over ``SET_MEM_TABLE`` (SCM_RIGHTS), so nothing needs the name
afterwards, and a guest killed with ``kill -9`` leaves nothing behind in /dev/shm.

Layout: static allocations (virtqueues) from the bottom, a page allocator for request buffers above.
"""

from __future__ import annotations

import mmap
import os
import threading

import posix_ipc

from ..virtio.memory import buffer_address

PAGE = 4096


class PageAllocator:
    """First-fit allocator of contiguous pages (a byte per page; ``bytes.find`` does the search in C)."""

    def __init__(self, first_page: int, npages: int) -> None:
        self.first = first_page
        self.npages = npages
        self._map = bytearray(npages)
        self._hint = 0
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self.used = 0
        self.closed = False

    def alloc(self, npages: int, *, wait: bool = True) -> int:
        """Page number of ``npages`` free contiguous pages; waits (no timer) while none are free."""
        if npages > self.npages:
            raise MemoryError(f"request for {npages} pages exceeds guest RAM ({self.npages} pages)")
        want = b"\0" * npages
        with self._cond:
            while True:
                pos = self._map.find(want, self._hint)
                if pos < 0:
                    pos = self._map.find(want, 0)
                if pos >= 0:
                    self._map[pos:pos + npages] = b"\1" * npages
                    self._hint = pos + npages if pos + npages < self.npages else 0
                    self.used += npages
                    return self.first + pos
                if not wait or self.closed:
                    raise MemoryError("guest RAM exhausted")
                self._cond.wait()

    def free(self, page: int, npages: int) -> None:
        with self._cond:
            pos = page - self.first
            self._map[pos:pos + npages] = bytes(npages)
            self.used -= npages
            self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            self.closed = True
            self._cond.notify_all()


class GuestRam:
    """The guest's RAM.  ``gpa`` 0 is the first byte; ``user_addr`` is where this process maps it."""

    def __init__(self, name: str, size: int, *, static_size: int = 1 << 20) -> None:
        if size % PAGE or size <= static_size:
            raise ValueError(f"guest RAM size {size} must be a multiple of {PAGE} above {static_size}")
        shm = posix_ipc.SharedMemory(name, posix_ipc.O_CREX, mode=0o600, size=size)
        try:
            self.mem = mmap.mmap(shm.fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
            self.fd = os.dup(shm.fd)
            os.set_inheritable(self.fd, False)
        finally:
            shm.close_fd()
            shm.unlink()          # the fd is what the host gets; the name is not needed any more
        self.name = name
        self.size = size
        self.gpa = 0
        self.view = memoryview(self.mem)
        self.user_addr = buffer_address(self.mem)
        self._static_top = 0
        self._static_size = static_size
        self.pages = PageAllocator(static_size // PAGE, (size - static_size) // PAGE)

    def alloc_static(self, size: int, alignment: int = 64) -> int:
        """Offset of ``size`` bytes of never-freed memory (rings, config)."""
        off = (self._static_top + alignment - 1) & ~(alignment - 1)
        if off + size > self._static_size:
            raise MemoryError("static guest memory exhausted")
        self._static_top = off + size
        return off

    def close(self) -> None:
        self.pages.close()
        self.view.release()
        try:
            self.mem.close()
        except BufferError:
            pass  # a view of the RAM is still referenced; the mapping goes with it
        os.close(self.fd)
