"""A guest's read-only view of the host's metadata-version table (see ``host/versions.py``).

The rule that makes caching correct (DESIGN §4): a cached item is stored with the slot version
read *before* the data was read, and stays valid while the slot still holds that version.
"""

from __future__ import annotations

import mmap
import os

from ..errors import RemoteProtocolError
from ..host.versions import HEADER, HEADER_WORDS, MAGIC


class VersionView:
    """Maps a version table read-only from its fd (or shared-memory name)."""

    def __init__(self, fd: int, size: int | None = None) -> None:
        size = os.fstat(fd).st_size if size is None else size
        if size < HEADER.size + 8:
            raise RemoteProtocolError(f"version table of {size} bytes")
        self.mem = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ)
        magic, slots, _gen, _ = HEADER.unpack_from(self.mem, 0)
        if magic != MAGIC or slots < 1 or slots & (slots - 1) or HEADER.size + 8 * slots > size:
            self.mem.close()
            raise RemoteProtocolError(f"not a version table (magic {magic:#x}, {slots} slots, {size} bytes)")
        self.slots = slots
        self._mask = slots - 1
        self._words = memoryview(self.mem).cast("Q")

    @classmethod
    def open(cls, name: str) -> "VersionView":
        fd = os.open(f"/dev/shm/{name.lstrip('/')}", os.O_RDONLY | os.O_CLOEXEC)
        try:
            return cls(fd)
        finally:
            os.close(fd)

    def version(self, nodeid: int) -> int:
        """The slot of ``nodeid`` now (one aligned 8-byte load)."""
        return self._words[HEADER_WORDS + (nodeid & self._mask)]

    def generation(self) -> int:
        return self._words[2]

    def close(self) -> None:
        self._words.release()
        self.mem.close()
