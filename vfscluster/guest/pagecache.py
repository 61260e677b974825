"""The guest's page cache: file data kept between reads, and write-back of dirty data.

Clean data: per inode a :class:`PageSet` of 4 KiB pages (the last one may be short: end of
file), stamped like every cached item (see :mod:`~vfscluster.guest.cache`): with ``versions``
the set is valid while the inode's slot holds the value read before its pages were read; with
``auto`` it lives from one open to the next (close-to-open: dropped at every open, as the kernel
does when the server does not answer FOPEN_KEEP_CACHE); with ``always`` until this guest changes
the file.  Misses are read with READ in runs of at least :data:`READAHEAD` bytes, clipped at the
file size the caller knows (as the kernel clips at ``i_size``).

Dirty data (``writeback``): writes are kept in the guest as extents in the order they were made
and go to the host with WRITE at close (FLUSH time), fsync, truncate, unmount, or when more than
:data:`DIRTY_LIMIT` bytes wait.  Reads of this guest see them (laid over the clean data), and the
file size this guest sees is at least the end of the last dirty byte.  Other guests see nothing
until the data is written back: that is what write-back caching means.

As in Linux (``file_update_time`` on a write-back mount, then ``fuse_flush_times``), a write sets
the file's mtime and ctime in the guest at once, and the write-back ends with a SETATTR that gives
the host the guest's mtime (the WRITEs themselves leave the host's time of write-back).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING, Any

from ..fuse.abi import SetattrIn, SetattrValid

if TYPE_CHECKING:
    from .client import FuseClient

__all__ = ["PageCache", "PageSet", "PAGE", "READAHEAD", "DIRTY_LIMIT"]

log = logging.getLogger(__name__)

PAGE = 4096
#: fs/fuse: the read-ahead window of a virtio-fs guest (VM_READAHEAD_PAGES = 32 pages)
READAHEAD = 32 * PAGE
#: dirty bytes one inode may hold before they are written back
DIRTY_LIMIT = 8 << 20
#: clean bytes the whole mount may hold before the page cache is emptied
CLEAN_LIMIT = 256 << 20


class PageSet:
    """Clean pages of one inode: ``pages[index] -> bytes`` (``PAGE`` bytes, or fewer at EOF)."""

    __slots__ = ("stamp", "pages")

    def __init__(self, stamp: int) -> None:
        self.stamp = stamp
        self.pages: dict[int, bytes] = {}


class _Dirty:
    """Dirty extents of one inode, oldest first: ``(offset, data, fh)``."""

    __slots__ = ("extents", "end", "nbytes")

    def __init__(self) -> None:
        self.extents: list[tuple[int, bytes, int]] = []
        self.end = 0
        self.nbytes = 0


class PageCache:
    """Clean and dirty data of one mount (owned by its :class:`~vfscluster.guest.cache.CachePolicy`)."""

    def __init__(self, policy: Any) -> None:
        self.policy = policy
        self._sets: dict[int, PageSet] = {}
        self._dirty: dict[int, _Dirty] = {}
        self._flushing: dict[int, list[_Dirty]] = {}    # taken by a write-back still under way
        self._mtime: dict[int, int] = {}      # the file's mtime (ns) here while data is pending
        self._lock = threading.Lock()
        self._landed = threading.Condition(self._lock)    # a write-back under way ended
        self._clean_bytes = 0
        self.reads_hit = 0
        self.reads_missed = 0

    # ------------------------------------------------------------------ clean data

    def drop(self, nodeid: int) -> None:
        """Forget the clean pages of ``nodeid`` (dirty data stays)."""
        self._sets.pop(nodeid, None)

    def clear(self) -> None:
        """Forget every clean page."""
        with self._lock:
            self._sets.clear()
            self._clean_bytes = 0

    def opened(self, nodeid: int) -> None:
        """A file of ``nodeid`` is being opened: close-to-open for ``cache=auto`` without
        versions drops its pages."""
        p = self.policy
        if p.enabled and not p.uses_versions and p.mode.value == "auto":
            self.drop(nodeid)

    def read(self, client: FuseClient, nodeid: int, fh: int, offset: int, size: int,
             file_size: int, *, flags: int = 0, lock_owner: int = 0) -> bytes:
        """``size`` bytes at ``offset`` of ``nodeid``, whose size the caller believes is
        ``file_size`` (dirty data included), from the page cache, reading what is missing.

        A READ the host answers is newer than any size the guest holds: when one reaches the end
        of the file (a short reply) that end is the file's, and when it returns data past
        ``file_size`` the file has grown; either way its answer wins."""
        # before the host's data: a write-back may land meanwhile (no lock when nothing is dirty)
        layers = self._pending(nodeid) if self._dirty or self._flushing else ()
        data = self._read_clean(client, nodeid, fh, offset, size, file_size, flags, lock_owner)
        if not layers:
            return data
        end = min(offset + size, file_size)
        return self._overlay(data, offset, end, layers) if end > offset else b""

    def _read_clean(self, client, nodeid, fh, offset, size, clip, flags, lock_owner) -> bytes:
        p = self.policy
        stamp = p.stamp(nodeid)
        ps = self._sets.get(nodeid)
        if ps is None or (p.uses_versions and ps.stamp != stamp):
            ps = PageSet(stamp)
            self._sets[nodeid] = ps
        pages = ps.pages
        want_end = offset + size
        first = offset // PAGE
        fetched = False
        while True:
            end = min(want_end, clip)
            if end <= offset:
                break
            last = (end - 1) // PAGE
            idx = first
            while idx <= last and idx in pages and len(pages[idx]) == PAGE:
                idx += 1
            if idx > last or (idx in pages and idx * PAGE + len(pages[idx]) >= end):
                break                           # all there (a short page: end of file)
            run_end = idx + 1
            while run_end <= last and run_end not in pages:
                run_end += 1
            want = max((run_end - idx) * PAGE, READAHEAD)
            got = client.read(nodeid, fh, idx * PAGE, want, flags=flags, lock_owner=lock_owner)
            fetched = True
            self._store(nodeid, ps, idx, got)
            host_end = idx * PAGE + len(got)
            if len(got) < want:
                for i in [i for i in pages if i * PAGE >= host_end and i != host_end // PAGE]:
                    del pages[i]                # past the end of the file now
                clip = host_end
            else:
                clip = max(clip, host_end)
        if fetched:
            self.reads_missed += 1
        else:
            self.reads_hit += 1
        end = min(want_end, clip)
        if end <= offset:
            return b""
        out = []
        for i in range(first, (end - 1) // PAGE + 1):
            page = pages.get(i)
            if page is None:
                break
            out.append(page)
            if len(page) < PAGE:
                break
        data = b"".join(out)
        start = offset - first * PAGE
        return data[start:start + (end - offset)]

    def _store(self, nodeid: int, ps: PageSet, idx: int, data: bytes) -> None:
        view = memoryview(data)
        n = len(view)
        with self._lock:
            if self._clean_bytes + n > CLEAN_LIMIT:     # memory pressure: start over
                self._sets.clear()
                ps.pages.clear()
                self._sets[nodeid] = ps
                self._clean_bytes = 0
            self._clean_bytes += n
        pages = ps.pages
        for off in range(0, n, PAGE):
            pages[idx + off // PAGE] = bytes(view[off:off + PAGE])
        if n == 0:
            pages[idx] = b""

    # ------------------------------------------------------------------ dirty data

    def _pending(self, nodeid: int) -> list[_Dirty]:
        """The data of ``nodeid`` the host may not have yet, oldest first: what write-backs under
        way took (their WRITEs may not have landed: reads still see it, as Linux's pages under
        writeback stay in the page cache), then what is dirty."""
        with self._lock:
            return self._pending_locked(nodeid)

    def _pending_locked(self, nodeid: int) -> list[_Dirty]:
        layers = list(self._flushing.get(nodeid, ()))
        d = self._dirty.get(nodeid)
        if d is not None and d.extents:
            layers.append(d)
        return layers

    def dirty_end(self, nodeid: int) -> int:
        """The end of the last byte of ``nodeid`` the host may not have yet (0: none)."""
        if not self._dirty and not self._flushing:
            return 0
        return max((d.end for d in self._pending(nodeid)), default=0)

    def pending_state(self, nodeid: int) -> tuple[int, int] | None:
        """``(end, mtime_ns)`` of the data of ``nodeid`` the host may not have yet — the end of
        its last byte and the mtime this guest gave the file — in one snapshot; None if none."""
        if not self._dirty and not self._flushing:
            return None
        with self._lock:
            layers = self._pending_locked(nodeid)
            mtime = self._mtime.get(nodeid)
        if not layers or mtime is None:
            return None
        return max(d.end for d in layers), mtime

    def set_dirty_mtime(self, nodeid: int, mtime_ns: int) -> None:
        """An explicit mtime was set (utime) while data is pending: the write-back keeps it."""
        with self._lock:
            if nodeid in self._mtime:
                self._mtime[nodeid] = mtime_ns

    def write(self, client: FuseClient, nodeid: int, fh: int, offset: int, data: Any) -> int:
        """Keep ``data`` at ``offset`` dirty (write-back); written back once more than
        :data:`DIRTY_LIMIT` bytes wait.  Returns the bytes taken (all of them)."""
        chunk = bytes(data)
        with self._lock:
            d = self._dirty.get(nodeid)
            if d is None:
                d = self._dirty[nodeid] = _Dirty()
            d.extents.append((offset, chunk, fh))
            d.end = max(d.end, offset + len(chunk))
            d.nbytes += len(chunk)
            self._mtime[nodeid] = time.time_ns()
            full = d.nbytes > DIRTY_LIMIT
        self.policy.local_gen += 1
        if full:
            self.flush(client, nodeid)
        return len(chunk)

    def flush(self, client: FuseClient, nodeid: int) -> None:
        """Write the dirty data of ``nodeid`` back (WRITE each extent in order), then drop its
        clean pages and attributes (the host's are now newer), and wait for the write-backs of
        the file other threads had under way (fsync, truncate and close must not return before
        their data landed, as Linux waits on pages under writeback).  The first error is raised
        after the rest was tried; the failed data is dropped (as the kernel's write-back does)."""
        with self._lock:
            earlier = list(self._flushing.get(nodeid, ()))
            d = self._dirty.get(nodeid)
            if d is not None and d.extents:
                self._flushing.setdefault(nodeid, []).append(d)   # first: readers look without the lock
                del self._dirty[nodeid]
            else:
                self._dirty.pop(nodeid, None)
                d = None
        error = None
        if d is not None:
            try:
                error = self._write_back(client, nodeid, d)
                self.policy.changed(nodeid, data=True)
            finally:
                with self._lock:
                    under_way = self._flushing[nodeid]
                    under_way.remove(d)
                    if not under_way:
                        del self._flushing[nodeid]
                    self._landed.notify_all()
        if earlier:
            with self._lock:
                self._landed.wait_for(lambda: not any(
                    e is x for e in earlier for x in self._flushing.get(nodeid, ())))
        if error is not None:
            raise error
        if d is not None:
            self._flush_times(client, nodeid)

    @staticmethod
    def _write_back(client: FuseClient, nodeid: int, d: _Dirty) -> OSError | None:
        error = None
        for offset, data, fh in d.extents:
            try:
                done = 0
                while done < len(data):
                    n = client.write(nodeid, fh, offset + done, memoryview(data)[done:])
                    if n <= 0:
                        break
                    done += n
            except OSError as exc:
                error = error or exc
        return error

    def _flush_times(self, client: FuseClient, nodeid: int) -> None:
        """fs/fuse/dir.c fuse_flush_times: the file's mtime as this guest has it now (its writes'
        time, or a utime made since) to the host; forgotten once no data of the file is pending.
        Its failure is not the writer's (the data is written; the kernel's write_inode error
        reaches no close), so it is logged, not raised."""
        with self._lock:
            mtime = self._mtime.get(nodeid)
        if mtime is None:
            return
        seconds, ns = divmod(mtime, 1_000_000_000)
        try:
            client.setattr(nodeid, SetattrIn(valid=int(SetattrValid.MTIME),
                                             mtime=seconds & 0xFFFF_FFFF_FFFF_FFFF, mtimensec=ns),
                           writeback_times=True)
        except OSError as exc:
            log.info("nodeid %d: the mtime of written-back data was not set: %s", nodeid, exc)
        with self._lock:
            if self._mtime.get(nodeid) == mtime and nodeid not in self._dirty \
                    and nodeid not in self._flushing:
                del self._mtime[nodeid]

    def flush_all(self, client: FuseClient) -> None:
        """Write back every inode's dirty data (unmount, syncfs)."""
        for nodeid in list(self._dirty):
            self.flush(client, nodeid)

    @staticmethod
    def _overlay(data: bytes, offset: int, end: int, layers: list[_Dirty]) -> bytes:
        buf = bytearray(data)
        if len(buf) < end - offset:
            buf.extend(bytes(end - offset - len(buf)))     # a hole up to the dirty end
        for d in layers:
            for off, chunk, _fh in d.extents:
                lo, hi = max(off, offset), min(off + len(chunk), end)
                if lo < hi:
                    buf[lo - offset:hi - offset] = chunk[lo - off:hi - off]
        return bytes(buf)

    def stats(self) -> dict:
        return {"page_sets": len(self._sets), "clean_bytes": self._clean_bytes,
                "dirty_inodes": len(self._dirty), "reads_hit": self.reads_hit,
                "reads_missed": self.reads_missed}
