"""Bookkeeping of the DAX window, without system calls: what is mapped where, and which 2 MiB
ranges are free.

* :class:`Mapping` / :class:`MappingTable`: the exact picture of a window (or of a
  :class:`~vfscluster.guest.dax.MappedBuffer`): ordered, non-overlapping pieces, each a window
  range → (file identity, file offset, writable), or anonymous zero pages left by a truncation
  (``file is None``).  Not locked: its owner (``DaxWindow``) holds its own lock around it.
* :class:`RangeAllocator`: the window's free-range allocator in fixed-size ranges, like the free and
  busy lists of Linux ``fs/fuse/dax.c`` (``fcd->free_ranges`` / ``fcd->busy_ranges``), with pin
  counts (the kernel's ``dmap->refcnt``), LRU order and reclaim candidates.  Thread-safe.

Constants are those of ``fs/fuse/dax.c`` under the same names.
"""

from __future__ import annotations

import bisect
import errno
import os
import threading
from collections import OrderedDict, deque
from dataclasses import dataclass

# fs/fuse/dax.c: "Default memory range size.  A power of 2 so it agrees with common FUSE_INIT
# map_alignment values 4KB and 64KB."
FUSE_DAX_SHIFT = 21
FUSE_DAX_SZ = 1 << FUSE_DAX_SHIFT
# fs/fuse/dax.c: "Number of ranges reclaimer will try to free in one invocation".
FUSE_DAX_RECLAIM_CHUNK = 10
# fs/fuse/dax.c: "Dax memory reclaim threshold in percetage of total ranges.  When free number of
# free ranges drops below this threshold, reclaim can trigger.  Default is 20%".  A percentage: the
# kernel computes max(nr_ranges * FUSE_DAX_RECLAIM_THRESHOLD / 100, 1) and kicks its reclaim worker
# when nr_free_ranges is below that (__kick_dmap_free_worker).
FUSE_DAX_RECLAIM_THRESHOLD = 20

FileId = tuple[int, int]
"""Identity of a mapped file: ``(st_dev, st_ino)`` of the descriptor it was mapped from."""


def einval(what: str) -> OSError:
    return OSError(errno.EINVAL, f"{os.strerror(errno.EINVAL)}: {what}")


@dataclass(frozen=True, slots=True)
class Mapping:
    """One piece of a window: ``[window_offset, window_offset + length)`` maps ``length`` bytes of
    ``file`` from ``file_offset`` (``writable``: mapped ``PROT_READ|PROT_WRITE``, else ``PROT_READ``).

    ``file is None`` means the piece holds anonymous zero pages that replaced file pages before a
    truncation (``DaxWindow.zero``); ``file_offset`` then still tells which file range it was, and
    ``was`` which file (so that the pages can be given back when the file grows again).
    """

    window_offset: int
    length: int
    file: FileId | None
    file_offset: int
    writable: bool
    was: FileId | None = None

    @property
    def end(self) -> int:
        return self.window_offset + self.length

    @property
    def zeroed(self) -> bool:
        return self.file is None

    def clip(self, start: int, end: int) -> "Mapping":
        """The part of this piece inside ``[start, end)`` (which must overlap it)."""
        lo, hi = max(start, self.window_offset), min(end, self.window_offset + self.length)
        if lo == self.window_offset and hi - lo == self.length:
            return self
        return Mapping(lo, hi - lo, self.file, self.file_offset + (lo - self.window_offset), self.writable,
                       self.was)


class MappingTable:
    """Ordered, non-overlapping :class:`Mapping` pieces keyed by window offset.

    Contract: :meth:`insert` only into a hole (callers :meth:`carve` first), so the table is always
    exactly what the address space holds.  Not thread-safe.
    """

    def __init__(self) -> None:
        self._starts: list[int] = []
        self._items: list[Mapping] = []

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self):
        return iter(list(self._items))

    def clear(self) -> None:
        self._starts.clear()
        self._items.clear()

    def _first_overlapping(self, start: int) -> int:
        """Index of the first piece whose end is past ``start``."""
        i = bisect.bisect_right(self._starts, start) - 1
        if i < 0 or self._items[i].end <= start:
            i += 1
        return i

    def lookup(self, offset: int) -> Mapping | None:
        """The piece holding byte ``offset``, or None."""
        i = bisect.bisect_right(self._starts, offset) - 1
        if i >= 0 and self._items[i].end > offset:
            return self._items[i]
        return None

    def overlapping(self, start: int, end: int) -> list[Mapping]:
        """The pieces overlapping ``[start, end)``, clipped to it, in order."""
        out = []
        i = self._first_overlapping(start)
        while i < len(self._items) and self._items[i].window_offset < end:
            out.append(self._items[i].clip(start, end))
            i += 1
        return out

    def covering(self, start: int, end: int) -> list[Mapping] | None:
        """The clipped pieces that cover ``[start, end)`` without a hole, or None if there is one."""
        pieces = self.overlapping(start, end)
        pos = start
        for p in pieces:
            if p.window_offset != pos:
                return None
            pos = p.end
        return pieces if pos >= end else None

    def carve(self, start: int, end: int) -> list[Mapping]:
        """Remove everything in ``[start, end)``, splitting the pieces that straddle its edges;
        returns the removed parts (clipped), in order."""
        i = self._first_overlapping(start)
        j = i
        while j < len(self._items) and self._items[j].window_offset < end:
            j += 1
        if i == j:
            return []
        old = self._items[i:j]
        keep = []
        if old[0].window_offset < start:
            keep.append(old[0].clip(old[0].window_offset, start))
        if old[-1].end > end:
            keep.append(old[-1].clip(end, old[-1].end))
        self._items[i:j] = keep
        self._starts[i:j] = [m.window_offset for m in keep]
        return [m.clip(start, end) for m in old]

    def insert(self, m: Mapping) -> None:
        """Add ``m`` into a hole of the table (ValueError if it overlaps a piece: carve first)."""
        if m.length <= 0:
            raise ValueError(f"empty mapping {m}")
        i = bisect.bisect_left(self._starts, m.window_offset)
        if (i > 0 and self._items[i - 1].end > m.window_offset) or (
                i < len(self._items) and self._items[i].window_offset < m.end):
            raise ValueError(f"{m} overlaps the table")
        self._starts.insert(i, m.window_offset)
        self._items.insert(i, m)

    def file_pieces(self, file: FileId, fstart: int, fend: int, *, zeroed: bool = False) -> list[Mapping]:
        """The pieces mapping bytes ``[fstart, fend)`` of ``file``, clipped to that file range
        (``zeroed``: instead, the zero pieces that replaced such bytes)."""
        out = []
        for m in self._items:
            if (m.was if zeroed else m.file) != file or (zeroed and m.file is not None):
                continue
            lo, hi = max(fstart, m.file_offset), min(fend, m.file_offset + m.length)
            if lo < hi:
                out.append(m.clip(m.window_offset + (lo - m.file_offset),
                                  m.window_offset + (hi - m.file_offset)))
        return out


class RangeAllocator:
    """The free-range allocator of a DAX window of ``nranges`` equal ranges (index ``i`` is window
    offset ``i * range_size``), modelled on ``fs/fuse/dax.c``:

    * ``alloc()`` takes the first free range (``list_first_entry(&fcd->free_ranges)``) and puts it at
      the tail of the busy list; ``free()`` returns a range to the tail of the free list.
    * the busy list is in LRU order (oldest first); ``touch()`` moves a range to the tail.  (The
      kernel's reclaim worker rotates its busy list as it scans; here callers touch on use.)
    * ``pin()``/``unpin()`` count users of a busy range (the kernel's ``dmap->refcnt`` beyond the
      tree's own reference): a pinned range is never a reclaim candidate and cannot be freed.
    * ``needs_reclaim`` is the kernel's trigger: fewer free ranges than
      ``max(nranges * FUSE_DAX_RECLAIM_THRESHOLD // 100, 1)``.

    Misuse (an index out of range, freeing a free range, pinning a free one, unpinning below zero)
    raises ``OSError(EINVAL)``; freeing a pinned range raises ``OSError(EBUSY)``.  All methods are
    thread-safe.
    """

    def __init__(self, nranges: int) -> None:
        if nranges <= 0:
            raise einval(f"a DAX window of {nranges} ranges")
        self.nranges = nranges
        self._free: deque[int] = deque(range(nranges))
        self._busy: OrderedDict[int, int] = OrderedDict()    # index -> pin count, oldest first
        self._cond = threading.Condition(threading.Lock())

    @property
    def free_threshold(self) -> int:
        """Reclaim starts below this many free ranges (fs/fuse/dax.c ``__kick_dmap_free_worker``)."""
        return max(self.nranges * FUSE_DAX_RECLAIM_THRESHOLD // 100, 1)

    @property
    def nfree(self) -> int:
        return len(self._free)

    @property
    def free_fraction(self) -> float:
        """Free ranges / all ranges, in [0, 1]."""
        return len(self._free) / self.nranges

    @property
    def needs_reclaim(self) -> bool:
        """True when the kernel would kick its reclaim worker."""
        return len(self._free) < self.free_threshold

    def _busy_index(self, index: int) -> int:
        if index not in self._busy:
            raise einval(f"DAX range {index} is not busy (of {self.nranges})")
        return self._busy[index]

    def alloc(self) -> int | None:
        """A free range, now busy (unpinned, most recently used); None when none is free."""
        with self._cond:
            if not self._free:
                return None
            index = self._free.popleft()
            self._busy[index] = 0
            return index

    def free(self, index: int) -> None:
        """Return a busy, unpinned range to the free list (EINVAL if not busy, EBUSY if pinned)."""
        with self._cond:
            if self._busy_index(index):
                raise OSError(errno.EBUSY, f"{os.strerror(errno.EBUSY)}: DAX range {index} is pinned")
            del self._busy[index]
            self._free.append(index)
            self._cond.notify()

    def wait_free(self, timeout: float | None = None) -> bool:
        """Block until a range is free (the kernel's ``range_waitq``); False if ``timeout`` passed."""
        with self._cond:
            return self._cond.wait_for(lambda: bool(self._free), timeout)

    def touch(self, index: int) -> None:
        """Mark a busy range most recently used."""
        with self._cond:
            self._busy_index(index)
            self._busy.move_to_end(index)

    def pin(self, index: int) -> int:
        """Add a user to a busy range; returns the new pin count."""
        with self._cond:
            n = self._busy_index(index) + 1
            self._busy[index] = n
            return n

    def unpin(self, index: int) -> int:
        """Drop a user of a busy range; returns the new pin count (EINVAL below zero)."""
        with self._cond:
            n = self._busy_index(index) - 1
            if n < 0:
                raise einval(f"DAX range {index} is not pinned")
            self._busy[index] = n
            return n

    def pins(self, index: int) -> int:
        """Pin count of a busy range."""
        with self._cond:
            return self._busy_index(index)

    def busy(self) -> list[int]:
        """The busy ranges, least recently used first."""
        with self._cond:
            return list(self._busy)

    def reclaim_candidates(self, n: int = FUSE_DAX_RECLAIM_CHUNK) -> list[int]:
        """Up to ``n`` unpinned busy ranges, least recently used first.  Changes nothing: the caller
        unmaps (REMOVEMAPPING) each one and then ``free()``s it — which fails with EBUSY if it got
        pinned in between."""
        with self._cond:
            out = []
            for index, pins in self._busy.items():
                if len(out) >= n:
                    break
                if pins == 0:
                    out.append(index)
            return out
