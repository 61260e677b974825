"""The guest's DAX client (DESIGN §5), after Linux ``fs/fuse/dax.c``: file data read and written straight
through the DAX window, file chunks mapped on demand with FUSE_SETUPMAPPING, ranges reclaimed with
FUSE_REMOVEMAPPING, ``mmap`` buffers that are the window's pages.

:class:`GuestDax` owns a :class:`~vfscluster.guest.dax.DaxWindow` and two callables the wiring binds to
FUSE requests::

    request_setup(nodeid, fh, foffset, length, flags, moffset) -> None   # FUSE_SETUPMAPPING
    request_remove([(moffset, length), ...]) -> None                      # FUSE_REMOVEMAPPING (<= 256)

Both raise OSError with the host's errno.  The host applies its ``SHMEM_MAP`` / ``SHMEM_UNMAP`` to the
window *before* it replies, through :meth:`GuestDax.shmem_handler` — the device's handler for
shared-memory region 0 — so when ``request_setup`` returns the range is mapped.

Per inode a dict of 2 MiB file chunks (chunk ``i`` = file bytes ``[i << 21, (i + 1) << 21)``) → a
:class:`Chunk`: its window range (``slot``), whether it is mapped writable, and ``valid``: how many
bytes from the chunk's start are backed by the file.  The host maps the file only up to its end
(page-rounded) and the rest of the range with its zero source, and revokes file pages past a shrinking
truncate with the zero source too (``vfscluster.host.dax``); the handler keeps ``valid`` accordingly.
So an access never touches a file page past the end of the file (no SIGBUS), and an access the caller
believes inside the file but beyond ``valid`` maps the chunk again (the file has grown since).

Rules of the road (the kernel's):

* ``read`` / ``write`` are bounded by the ``file_size`` the caller knows (its i_size).  ``write`` never
  extends a file: it stores ``[offset, min(offset + len, file_size))`` and returns how many bytes it
  stored — always a prefix of ``data``; the caller sends FUSE_WRITE for the rest (fs/fuse/dax.c sends
  every extending write through FUSE_WRITE: the size change must happen on the host).
* A chunk is pinned (``RangeAllocator.pin``) while a copy uses it and while an ``mmap`` buffer lives;
  reclaim removes only unpinned ranges, least recently used first, ``reclaim_chunk`` at a time in one
  REMOVEMAPPING.  It runs in the allocating thread when free ranges fall below 20 %, and synchronously
  when none is free; if every range is pinned the allocation waits for an unpin (OSError ENOMEM after
  ``alloc_timeout`` seconds — the caller may fall back to FUSE_READ / FUSE_WRITE).  A read or write
  does not wait when every range is held by live ``mmap`` buffers (only a program's close frees
  those): ENOMEM at once; an ``mmap`` waits (daxslots).
* A read-only mapping is upgraded with a new SETUPMAPPING (flag WRITE) when a write or a writable
  ``mmap`` needs it; mappings are never downgraded.

Fast paths (:meth:`GuestDax.read_fast`, :meth:`GuestDax.write_fast`): a copy over chunks already
mapped takes no pin and sends nothing; it holds ``_fast`` across its check of ``Chunk.attached`` and the
copy, and :meth:`GuestDax._detach` takes ``_fast`` too, so a chunk's range cannot be unmapped under a
copy (an attached chunk's range is always mapped: file pages, the zero source or zero pages).

Locks: one per inode (the kernel's ``fi->dax->sem``), held while looking a chunk up and across a
SETUPMAPPING of it; never while copying data, and never by :meth:`~GuestDax.shmem_handler` (it runs on
the device's channel thread while a request thread waits in ``request_setup``).  Thread-safe.
"""

from __future__ import annotations

import errno
import logging
import os
import threading
import weakref
from collections.abc import Callable

from ..fuse.abi import REMOVEMAPPING_MAX_ENTRY, SetupmappingFlags
from ..host.dax import is_zero_source
from ..vhost_user import SHMEM_MAP_F_WRITABLE, BackendReq, ShmemMap
from .dax import PAGE, DaxWindow
from .daxbuffer import DaxMmap, alias_spans
from .daxmap import FUSE_DAX_RECLAIM_CHUNK, einval
from .daxslots import SlotPool
from .memcopy import pieces, read_out, write_in

log = logging.getLogger(__name__)

#: ``fuse_setupmapping_in.fh`` of Linux (a dummy: the host maps by inode).  Pass it as ``fh``.
NO_FH = (1 << 64) - 1

RequestSetup = Callable[[int, int, int, int, int, int], None]
RequestRemove = Callable[[list], None]


def _round_up(n: int) -> int:
    return -(-n // PAGE) * PAGE


class Chunk:
    """One mapped file chunk: file bytes ``[index * range_size, …)`` of ``nodeid`` at window range
    ``slot``; ``valid`` bytes from its start are file-backed (the rest holds zeros)."""

    __slots__ = ("inode", "nodeid", "index", "slot", "writable", "valid", "attached", "maps")

    def __init__(self, inode: "_InodeDax", nodeid: int, index: int, slot: int) -> None:
        self.inode = inode
        self.nodeid = nodeid
        self.index = index
        self.slot = slot
        self.writable = False
        self.valid = 0
        self.attached = True          # in its inode's dict; False once reclaim/invalidate took it
        self.maps = 0                 # SHMEM_MAP / SHMEM_UNMAP requests that reached its range

    def __repr__(self) -> str:
        return (f"<Chunk node {self.nodeid} #{self.index} slot {self.slot} valid {self.valid:#x}"
                f"{' rw' if self.writable else ' ro'}{'' if self.attached else ' detached'}>")


class _InodeDax:
    __slots__ = ("lock", "chunks")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.chunks: dict[int, Chunk] = {}


class GuestDax:
    """DAX data access of one guest mount over ``window`` (module docstring)."""

    def __init__(self, window: DaxWindow, request_setup: RequestSetup, request_remove: RequestRemove, *,
                 reclaim_chunk: int = FUSE_DAX_RECLAIM_CHUNK, alloc_timeout: float = 30.0) -> None:
        self.window = window
        self.ranges = window.ranges
        self.R = window.range_size
        self.request_setup = request_setup
        self.request_remove = request_remove
        self.reclaim_chunk = max(1, reclaim_chunk)
        self._lock = threading.Lock()                  # _inodes, _slots, Chunk.valid/writable/attached
        self._inodes: dict[int, _InodeDax] = {}
        self._slots: dict[int, Chunk] = {}
        self._reclaim_lock = threading.Lock()
        self.slots = SlotPool(self.ranges, self.reclaim, alloc_timeout, lambda: self._count("waits"))
        self._fast = threading.Lock()                  # fast-path copies vs _detach (module docstring)
        self._memory = window.memory
        self.stats = dict.fromkeys(("hits", "setups", "upgrades", "refreshes", "remove_requests",
                                    "removed", "reclaimed", "waits"), 0)

    # -- data ----------------------------------------------------------------------------------

    def read(self, nodeid: int, fh: int, offset: int, size: int, file_size: int) -> bytes:
        """Up to ``size`` bytes from ``offset``, no further than ``file_size``, copied out of the
        window (SETUPMAPPING of the chunks not mapped yet).  Bytes the host has no more (its file is
        shorter than ``file_size``: a truncation the caller has not seen) read as zeros."""
        if offset < 0 or size < 0:
            raise einval(f"DAX read of {size} bytes at {offset}")
        end = min(offset + size, file_size)
        if end <= offset:
            return b""
        out = bytearray(end - offset)
        into = memoryview(out)
        pos = offset
        while pos < end:
            index = pos // self.R
            cstart = index * self.R
            cend = min(cstart + self.R, end)
            c = self._acquire(nodeid, fh, index, False, _round_up(cend - cstart))
            try:
                n = min(cend, cstart + c.valid) - pos
                if n > 0:
                    view = self.window.view(c.slot * self.R + pos - cstart, n)
                    try:
                        write_in(into, pos - offset, view)
                    finally:
                        view.release()
            finally:
                self.slots.unpin(c.slot)
            pos = cend
        return bytes(out)

    def read_fast(self, nodeid: int, offset: int, size: int, file_size: int) -> bytes | None:
        """The common case of :meth:`read` with no request, no pin and one uncontended lock: every
        chunk of ``[offset, offset + size)`` is mapped and file-backed as far as the range goes,
        inside ``file_size``.  None otherwise (call :meth:`read`)."""
        end = offset + size
        if end > file_size or size <= 0:
            return None
        inode = self._inodes.get(nodeid)
        if inode is None:
            return None
        R = self.R
        index = offset // R
        cstart = index * R
        if end > cstart + R:                 # several chunks: one bytes.join of their pieces
            spans = self._spans(inode, offset, end, False)
            if spans is None:
                return None
            mem = self._memory
            with self._fast:
                if not all(c.attached for c, _, _ in spans):
                    return None
                return b"".join([p for c, start, n in spans for p in pieces(mem, c.slot * R + start, n)])
        c = inode.chunks.get(index)   # one chunk (the common case, written out: 0.5 µs less)
        if c is None or end > cstart + c.valid:
            return None
        with self._fast:                 # an attached chunk's range is mapped (file or zero pages)
            if not c.attached:
                return None
            return read_out(self._memory, c.slot * R + offset - cstart, size)

    def _spans(self, inode: "_InodeDax", offset: int, end: int, write: bool) -> list | None:
        """For the fast paths over several chunks: ``(chunk, start in chunk, length)`` for each
        chunk of ``[offset, end)``, or None if one is not mapped (writable, for ``write``) or not
        file-backed as far as the range goes.  The caller checks ``attached`` under ``_fast``."""
        R = self.R
        spans = []
        pos = offset
        while pos < end:
            cstart = pos - pos % R
            stop = min(cstart + R, end)
            c = inode.chunks.get(pos // R)
            if c is None or stop > cstart + c.valid or (write and not c.writable):
                return None
            spans.append((c, pos - cstart, stop - pos))
            pos = stop
        return spans

    def write_fast(self, nodeid: int, offset: int, data: memoryview, file_size: int) -> bool:
        """The common case of :meth:`write`: every chunk ``data`` (a byte memoryview) lands in is
        mapped writable and file-backed as far as it goes, inside ``file_size``.  False: nothing
        was stored (call :meth:`write`)."""
        n = len(data)
        end = offset + n
        if end > file_size or n <= 0:
            return False
        inode = self._inodes.get(nodeid)
        if inode is None:
            return False
        R = self.R
        index = offset // R
        cstart = index * R
        if end > cstart + R:                 # several chunks
            spans = self._spans(inode, offset, end, True)
            if spans is None:
                return False
            mem = self._memory
            with self._fast:
                if not all(c.attached for c, _, _ in spans):
                    return False
                pos = 0
                for c, start, k in spans:
                    write_in(mem, c.slot * R + start, data[pos:pos + k])
                    pos += k
            return True
        c = inode.chunks.get(index)          # one chunk (the common case, written out)
        if c is None or not c.writable or end > cstart + c.valid:
            return False
        with self._fast:
            if not c.attached:
                return False
            write_in(self._memory, c.slot * R + offset - cstart, data)
        return True

    def write(self, nodeid: int, fh: int, offset: int, data, file_size: int) -> int:
        """Store ``data`` at ``offset`` through the window, but only ``[offset, min(offset + len,
        file_size))``: returns how many bytes were stored, a prefix of ``data`` (0 when ``offset >=
        file_size``).  The caller sends FUSE_WRITE for ``data[n:]`` at ``offset + n`` — the extending
        part, or what the host no longer has (a truncation the caller has not seen)."""
        src = memoryview(data).cast("B")
        if offset < 0:
            raise einval(f"DAX write at {offset}")
        end = min(offset + len(src), file_size)
        pos = offset
        while pos < end:
            index = pos // self.R
            cstart = index * self.R
            cend = min(cstart + self.R, end)
            c = self._acquire(nodeid, fh, index, True, _round_up(cend - cstart))
            try:
                n = min(cend, cstart + c.valid) - pos
                if n <= 0:
                    break
                try:
                    self.window.copy_in(c.slot * self.R + pos - cstart, src[pos - offset:pos - offset + n])
                except OSError as exc:
                    if exc.errno != errno.ESTALE:    # revoked meanwhile: a truncation won the race
                        raise
                    break
            finally:
                self.slots.unpin(c.slot)
            pos += n
            if pos < cend:
                break
        return max(0, pos - offset)

    def mmap(self, nodeid: int, fh: int, offset: int, length: int, writable: bool) -> DaxMmap:
        """A buffer of ``length`` bytes of the file from ``offset`` (page-aligned) that *is* the
        window's pages (MAP_SHARED with the host's page cache and every other guest); its chunks stay
        pinned until it is closed.  ValueError if the file (as the host has it) is shorter than
        ``offset + length`` rounded up to a page (``mmap.mmap`` says the same); EINVAL for a bad offset
        or length; ENOMEM at once for a mapping of more ranges than the window has."""
        if offset < 0 or offset % PAGE or length <= 0:
            raise einval(f"DAX mmap of {length} bytes at {offset}")
        stop = offset + _round_up(length)
        need = (stop - 1) // self.R - offset // self.R + 1
        if need > self.ranges.nranges:    # it could never be pinned whole: say so now, not in 30 s
            raise OSError(errno.ENOMEM, f"{os.strerror(errno.ENOMEM)}: a DAX mapping of {need} "
                                        f"ranges in a window of {self.ranges.nranges}")
        chunks: list[Chunk] = []
        spans = []
        try:
            pos = offset
            while pos < stop:
                index = pos // self.R
                cstart = index * self.R
                cend = min(cstart + self.R, stop)
                c = self._acquire(nodeid, fh, index, writable, cend - cstart, wait_held=True)
                chunks.append(c)
                if c.valid < cend - cstart:
                    raise ValueError("mmap length is greater than file size")
                spans.append((c.slot * self.R + pos - cstart, cend - pos))
                pos = cend
            buf = alias_spans(self.window, spans, length, writable)
        except BaseException:
            for c in chunks:
                self.slots.unpin(c.slot)
            raise
        slots = [c.slot for c in chunks]
        self.slots.hold(slots)
        buf._dax_release = weakref.finalize(buf, self.slots.release_later, slots)  # if collected
        buf._dax_unpin = lambda: self.slots.release(slots)                         # at close()
        return buf

    # -- inode events --------------------------------------------------------------------------

    def invalidate(self, nodeid: int) -> int:
        """REMOVEMAPPING of every unpinned chunk of the inode (pinned ones — copies in flight, live
        mmap buffers — stay).  Returns how many ranges were removed."""
        with self._lock:
            inode = self._inodes.get(nodeid)
        if inode is None:
            return 0
        with inode.lock:
            victims = [c for c in list(inode.chunks.values()) if self._detach_if_unpinned(c)]
        return self._remove(victims)

    def forget(self, nodeid: int) -> int:
        """The inode is evicted (FORGET): :meth:`invalidate`, and forget it if nothing stays pinned."""
        n = self.invalidate(nodeid)
        with self._lock:
            inode = self._inodes.get(nodeid)
            if inode is not None and not inode.chunks:
                del self._inodes[nodeid]
        return n

    def truncated(self, nodeid: int, new_size: int) -> int:
        """After a truncation to ``new_size`` (ours or one we heard of): no chunk counts file bytes past
        it any more, and unpinned chunks wholly past it are removed (returns how many).  The host has
        already revoked the pages past it (SHMEM_MAP of zeros); this is bookkeeping and housekeeping."""
        cut = _round_up(new_size)
        with self._lock:
            inode = self._inodes.get(nodeid)
        if inode is None:
            return 0
        with inode.lock:
            with self._lock:
                for c in inode.chunks.values():
                    c.valid = max(0, min(c.valid, cut - c.index * self.R))
            victims = [c for c in list(inode.chunks.values())
                       if c.index * self.R >= cut and self._detach_if_unpinned(c)]
        return self._remove(victims)

    # -- the device's handler for shared-memory region 0 ---------------------------------------

    def shmem_handler(self, request: BackendReq, body: ShmemMap, fds: list) -> int:
        """``VirtioFsDevice.set_shmem_handler(0, gdax.shmem_handler)``: apply the host's SHMEM_MAP /
        SHMEM_UNMAP to the window and keep the chunks' ``valid`` in step.

        * SHMEM_MAP of a file: map it (``flags`` bit 0 = writable).
        * SHMEM_MAP of the zero source (a write-sealed memfd): the host revokes that range (a truncation)
          or fills a range past EOF: file pages there become zero pages, in the window and in every mmap
          buffer aliasing them; holes get the zero source mapped read-only.
        * SHMEM_UNMAP: back to ``PROT_NONE`` — except ranges of chunks still in use (not removed by us):
          those are zeroed instead, as an unmapped page under a running copy would kill the process,
          and mapped again on their next use.
        Raises OSError EINVAL for a range outside the window or not page-aligned (the device answers
        the host with a failure)."""
        o, n = body.shm_offset, body.len
        if o % PAGE or n % PAGE or n <= 0 or o + n > self.window.size:
            raise einval(f"shared-memory region 0 range {o:#x}+{n:#x} of a {self.window.size:#x}-byte window")
        if request is BackendReq.SHMEM_UNMAP:
            for so, sn, c in self._segments(o, n):
                with self._lock:
                    live = c is not None and c.attached
                    if live:
                        c.valid = 0
                        c.maps += 1
                if live:
                    self.window.zero(so, sn)
                else:
                    self.window.unmap(so, sn)
            return 0
        fd = fds[0]
        if is_zero_source(fd):
            with self._lock:
                for so, _, c in self._segments(o, n):
                    if c is not None:
                        c.valid = min(c.valid, so % self.R)
                        c.maps += 1
            self.window.zero(o, n)
            for m in self._holes(o, n):
                self.window.map(fd, body.fd_offset + m[0] - o, m[0], m[1], False)
            return 0
        self.window.map(fd, body.fd_offset, o, n, bool(body.flags & SHMEM_MAP_F_WRITABLE))
        with self._lock:
            for so, sn, c in self._segments(o, n):
                if c is not None:
                    c.maps += 1
                    if so % self.R <= c.valid:
                        c.valid = max(c.valid, so % self.R + sn)
        return 0

    # -- reclaim -------------------------------------------------------------------------------

    def reclaim(self, n: int | None = None) -> int:
        """REMOVEMAPPING of up to ``n`` (``reclaim_chunk``) unpinned ranges, least recently used first,
        in one request; returns how many ranges were freed."""
        n = self.reclaim_chunk if n is None else n
        with self._reclaim_lock:
            victims = []
            for slot in self.ranges.reclaim_candidates(n):
                with self._lock:
                    c = self._slots.get(slot)
                if c is None:
                    continue
                with c.inode.lock:
                    if self._detach_if_unpinned(c):
                        victims.append(c)
            freed = self._remove(victims)
        with self._lock:
            self.stats["reclaimed"] += freed
        return freed

    # -- introspection -------------------------------------------------------------------------

    @property
    def alloc_timeout(self) -> float:
        return self.slots.timeout

    @alloc_timeout.setter
    def alloc_timeout(self, value: float) -> None:
        self.slots.timeout = value

    def chunks(self, nodeid: int) -> list[Chunk]:
        with self._lock:
            inode = self._inodes.get(nodeid)
            return sorted(inode.chunks.values(), key=lambda c: c.index) if inode else []

    def mapped(self) -> int:
        """Chunks mapped now."""
        with self._lock:
            return len(self._slots)

    # -- internals -----------------------------------------------------------------------------

    def _inode(self, nodeid: int) -> _InodeDax:
        with self._lock:
            inode = self._inodes.get(nodeid)
            if inode is None:
                inode = self._inodes[nodeid] = _InodeDax()
            return inode

    def _acquire(self, nodeid: int, fh: int, index: int, writable: bool, need: int,
                 wait_held: bool = False) -> Chunk:
        """The chunk, mapped (writable if asked), pinned; mapped again first if fewer than ``need``
        bytes of it are file-backed (once: the caller copes with a chunk still short).  With no
        range free: ``wait_held`` (an mmap) waits even when every range is held by live mmap
        buffers; a copy gets ENOMEM then, and goes through FUSE (daxslots)."""
        inode = self._inode(nodeid)
        while True:
            with inode.lock:
                c = inode.chunks.get(index)
                if c is not None:
                    self.ranges.pin(c.slot)
                    try:
                        if (writable and not c.writable) or c.valid < need:
                            kind = "upgrades" if writable and not c.writable else "refreshes"
                            self._setup(fh, c, writable or c.writable, kind)
                        else:
                            self._count("hits")
                        self.ranges.touch(c.slot)
                    except BaseException:
                        self.slots.unpin(c.slot)
                        raise
                    return c
            slot = self.slots.take(wait_held)
            with inode.lock:
                if index in inode.chunks:             # another thread mapped it meanwhile
                    self.slots.unpin(slot)
                    self.slots.give_back(slot)
                    continue
                c = Chunk(inode, nodeid, index, slot)
                inode.chunks[index] = c
                with self._lock:
                    self._slots[slot] = c
                try:
                    self._setup(fh, c, writable, "setups")
                except BaseException:
                    self._detach(c)
                    self.window.unmap(slot * self.R, self.R)
                    self.slots.unpin(slot)
                    self._release_slot(c)
                    self.slots.changed()
                    raise
                return c

    def _setup(self, fh: int, c: Chunk, writable: bool, kind: str) -> None:
        """FUSE_SETUPMAPPING of the whole chunk (under its inode's lock, chunk pinned)."""
        flags = SetupmappingFlags.READ | (SetupmappingFlags.WRITE if writable else 0)
        before = c.maps
        try:
            self.request_setup(c.nodeid, fh, c.index * self.R, self.R, int(flags), c.slot * self.R)
        except BaseException:
            if kind != "setups" and c.maps != before:
                # the host failed half-way (and forgot the range): zeros until the next use maps it again
                with self._lock:
                    c.valid = 0
                self.window.zero(c.slot * self.R, self.R)
            raise
        with self._lock:
            c.writable = c.writable or writable
            self.stats[kind] += 1

    def _detach_if_unpinned(self, c: Chunk) -> bool:
        """Under ``c.inode.lock``: take ``c`` out of its inode if it is attached and unpinned."""
        if not c.attached or c.inode.chunks.get(c.index) is not c or self.ranges.pins(c.slot):
            return False
        self._detach(c)
        return True

    def _detach(self, c: Chunk) -> None:
        with self._fast, self._lock:        # no fast-path copy is using it past this point
            c.attached = False
        if c.inode.chunks.get(c.index) is c:
            del c.inode.chunks[c.index]

    def _remove(self, victims: list[Chunk]) -> int:
        """REMOVEMAPPING of detached chunks (batched), then free their ranges."""
        if not victims:
            return 0
        for i in range(0, len(victims), REMOVEMAPPING_MAX_ENTRY):
            batch = victims[i:i + REMOVEMAPPING_MAX_ENTRY]
            try:
                self.request_remove([(c.slot * self.R, self.R) for c in batch])
                self._count("remove_requests")
            except OSError as exc:            # the kernel ignores these too
                log.warning("DAX REMOVEMAPPING of %d ranges failed: %s", len(batch), exc)
            for c in batch:                   # the host's SHMEM_UNMAP did it; make sure (idempotent)
                self.window.unmap(c.slot * self.R, self.R)
        for c in victims:
            self._release_slot(c)
        with self._lock:
            self.stats["removed"] += len(victims)
        self.slots.changed()
        return len(victims)

    def _release_slot(self, c: Chunk) -> None:
        with self._lock:
            if self._slots.get(c.slot) is c:
                del self._slots[c.slot]
        self.ranges.free(c.slot)

    def _count(self, what: str) -> None:
        with self._lock:
            self.stats[what] += 1

    def _segments(self, o: int, n: int) -> list[tuple[int, int, Chunk | None]]:
        """``[o, o + n)`` cut at range boundaries: ``(offset, length, chunk of that slot or None)``."""
        out = []
        pos, end = o, o + n
        while pos < end:
            stop = min(end, (pos // self.R + 1) * self.R)
            out.append((pos, stop - pos, self._slots.get(pos // self.R)))
            pos = stop
        return out

    def _holes(self, o: int, n: int) -> list[tuple[int, int]]:
        """Unmapped spans of the window in ``[o, o + n)``."""
        holes, pos, end = [], o, o + n
        for m in self.window.mappings():
            if m.end <= pos or m.window_offset >= end:
                continue
            if m.window_offset > pos:
                holes.append((pos, m.window_offset - pos))
            pos = max(pos, m.end)
        if pos < end:
            holes.append((pos, end - pos))
        return holes


__all__ = ["NO_FH", "Chunk", "DaxMmap", "GuestDax"]
