"""Guest memory: the regions of guest RAM as the device (host) or the driver (guest) sees them.

A region has a guest-physical base address (what descriptors carry), a size, a frontend-virtual base
address (what vhost-user ``SET_VRING_ADDR`` carries: the VMM's ``userspace_addr``) and the local mapping
of its bytes.  Every translation checks bounds and raises :class:`~vfscluster.errors.QueueError` for an
address the peer should not have sent.
"""

from __future__ import annotations

import ctypes
import mmap
import os
from dataclasses import dataclass, field

from ..errors import QueueError


def buffer_address(buf) -> int:
    """The virtual address of a writable buffer (an ``mmap`` or ``bytearray``) in this process."""
    return ctypes.addressof(ctypes.c_char.from_buffer(buf))


@dataclass(eq=False)
class Region:
    """One contiguous region of guest memory mapped in this process."""

    gpa: int
    size: int
    user_addr: int
    mem: mmap.mmap
    fd: int | None = None
    view: memoryview = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.view = memoryview(self.mem)

    @classmethod
    def map_fd(cls, fd: int, gpa: int, size: int, user_addr: int, offset: int = 0) -> "Region":
        """Map ``size`` bytes of ``fd`` at ``offset`` (takes ownership of ``fd``)."""
        if size <= 0:
            raise QueueError(f"memory region of size {size}")
        try:
            total = os.fstat(fd).st_size
            if offset + size > total:
                raise QueueError(f"memory region [{offset:#x}, +{size:#x}) past the end of its fd ({total:#x})")
            mem = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE, offset=offset)
        except (OSError, ValueError) as exc:
            os.close(fd)
            raise QueueError(f"cannot map memory region: {exc}") from exc
        return cls(gpa=gpa, size=size, user_addr=user_addr, mem=mem, fd=fd)

    def close(self) -> None:
        self.view.release()
        try:
            self.mem.close()
        except BufferError:  # a view is still exported somewhere; the mapping goes when it is released
            pass
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


class GuestMemory:
    """The set of regions; translates guest-physical and frontend-virtual addresses to local views."""

    def __init__(self, regions: list[Region] | tuple[Region, ...] = ()) -> None:
        self.regions: tuple[Region, ...] = tuple(regions)
        for a in self.regions:
            for b in self.regions:
                if a is not b and a.gpa < b.gpa + b.size and b.gpa < a.gpa + a.size:
                    raise QueueError(f"overlapping memory regions at {a.gpa:#x} and {b.gpa:#x}")

    def view(self, gpa: int, length: int) -> memoryview:
        """A view of ``length`` bytes at guest-physical address ``gpa``, inside one region."""
        for r in self.regions:
            off = gpa - r.gpa
            if 0 <= off and off + length <= r.size:
                return r.view[off:off + length]
        raise QueueError(f"guest address range [{gpa:#x}, +{length:#x}) is outside guest memory")

    def user_view(self, uaddr: int, length: int) -> memoryview:
        """A view of ``length`` bytes at frontend-virtual address ``uaddr``."""
        for r in self.regions:
            off = uaddr - r.user_addr
            if 0 <= off and off + length <= r.size:
                return r.view[off:off + length]
        raise QueueError(f"frontend address range [{uaddr:#x}, +{length:#x}) is outside guest memory")

    def user_to_gpa(self, uaddr: int) -> int:
        for r in self.regions:
            off = uaddr - r.user_addr
            if 0 <= off < r.size:
                return r.gpa + off
        raise QueueError(f"frontend address {uaddr:#x} is outside guest memory")

    def close(self) -> None:
        for r in self.regions:
            r.close()
        self.regions = ()
