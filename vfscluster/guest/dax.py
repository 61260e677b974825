"""The guest's DAX window: a reserved range of address space into which host file ranges are mapped
``MAP_SHARED`` (DESIGN §5), so that every guest mapping the same file shares the host's page-cache
pages, and the buffers ``GuestOS.mmap`` hands to workloads.

* :class:`DaxWindow` reserves ``size`` bytes ``PROT_NONE`` and maps, unmaps and zeroes page-aligned
  ranges of it with ctypes ``mmap(MAP_FIXED)``; its :class:`~vfscluster.guest.daxmap.MappingTable`
  says exactly what is mapped where, its :class:`~vfscluster.guest.daxmap.RangeAllocator`
  (``window.ranges``) hands out the 2 MiB ranges.
* :class:`MappedBuffer` is a ``mmap.mmap`` whose pages alias a mapped window range (see its docstring).

Memory safety.  Touching ``PROT_NONE`` memory, or file pages past the file's end, kills the process
(SIGSEGV / SIGBUS).  Hence:

* :meth:`DaxWindow.view`, :meth:`~DaxWindow.copy_out`, :meth:`~DaxWindow.copy_in` and
  :meth:`~DaxWindow.mapped_buffer` refuse (EINVAL) a range that is not wholly mapped.
* :meth:`DaxWindow.zero` / :meth:`~DaxWindow.zero_file_tail` replace file pages with anonymous zero
  pages of the same protection — in the window and in every live MappedBuffer aliasing those file
  pages — so a host truncation that follows cannot SIGBUS this guest (DESIGN §5).  Replacement with
  ``MAP_FIXED`` is atomic for a concurrent reader: it sees the old data or zeros.
* A view or a copy in progress must not overlap a concurrent :meth:`~DaxWindow.unmap`, a failing
  :meth:`~DaxWindow.map` or :meth:`~DaxWindow.close` of the window: callers pin the range
  (``window.ranges.pin``) while they use it and reclaim unmaps only unpinned ranges, as
  ``fs/fuse/dax.c`` does with ``dmap->refcnt``.  A view does not keep its range mapped.
* Callers bound their accesses by the file size they know (as the kernel bounds DAX reads by
  ``i_size``): a window range may extend past the end of its file (2 MiB ranges of small files).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import mmap
import os
import threading
import weakref

from .memcopy import data_address, memory_at, read_out, write_in
from .daxmap import FUSE_DAX_SZ, FileId, Mapping, MappingTable, RangeAllocator, einval

PAGE = mmap.PAGESIZE

# <asm-generic/mman-common.h>, <asm-generic/mman.h> (x86-64 and arm64 agree); <linux/mman.h>
MAP_FIXED = 0x10
MAP_NORESERVE = 0x4000
MREMAP_MAYMOVE = 1
MREMAP_FIXED = 2
PROT_NONE = 0
PROT_READ = mmap.PROT_READ
PROT_WRITE = mmap.PROT_WRITE
MAP_SHARED = mmap.MAP_SHARED
MAP_PRIVATE = mmap.MAP_PRIVATE
MAP_ANONYMOUS = mmap.MAP_ANONYMOUS

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_mmap = _libc.mmap
_mmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long)
_mmap.restype = ctypes.c_void_p
_munmap = _libc.munmap
_munmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t)
_munmap.restype = ctypes.c_int
_mprotect = _libc.mprotect
_mprotect.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
_mprotect.restype = ctypes.c_int
# mremap is variadic (new_address); on x86-64 and arm64 Linux integer arguments pass alike.
_mremap = _libc.mremap
_mremap.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_size_t, ctypes.c_int, ctypes.c_void_p)
_mremap.restype = ctypes.c_void_p
MAP_FAILED = ctypes.c_void_p(-1).value


def _oserror(what: str) -> OSError:
    err = ctypes.get_errno()
    return OSError(err, f"{os.strerror(err)}: {what}")


def _map_fixed(addr: int, length: int, prot: int, flags: int, fd: int = -1, offset: int = 0) -> None:
    """``mmap(addr, length, prot, flags | MAP_FIXED, fd, offset)``; OSError with its errno."""
    res = _mmap(addr, length, prot, flags | MAP_FIXED, fd, offset)
    if res == MAP_FAILED:
        raise _oserror(f"mmap({addr:#x}, {length:#x})")
    if res != addr:      # pragma: no cover - MAP_FIXED places exactly or fails
        raise OSError(errno.EFAULT, f"mmap(MAP_FIXED) placed {res:#x}, not {addr:#x}")


def _anon_fixed(addr: int, length: int, prot: int) -> None:
    """Replace ``[addr, addr + length)`` with private anonymous pages (zeros) of protection ``prot``."""
    _map_fixed(addr, length, prot, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE)


def _prot(writable: bool) -> int:
    return PROT_READ | PROT_WRITE if writable else PROT_READ


def file_id(fd: int) -> FileId:
    """The identity the mapping table records for the file open on ``fd``."""
    st = os.fstat(fd)
    return (st.st_dev, st.st_ino)


def _round_up(n: int) -> int:
    return -(-n // PAGE) * PAGE


def _zero_pieces(table: MappingTable, base: int, pieces: list[Mapping], prot_of) -> list[Mapping]:
    """Replace each file-backed piece of ``table`` (at address ``base``) with zero pages of protection
    ``prot_of(piece)`` and record it as zeroed; returns the pieces as they were."""
    done = []
    for p in pieces:
        if p.zeroed:
            continue
        _anon_fixed(base + p.window_offset, p.length, prot_of(p))
        table.carve(p.window_offset, p.end)
        table.insert(Mapping(p.window_offset, p.length, None, p.file_offset, p.writable, p.file))
        done.append(p)
    return done


class MappedBuffer(mmap.mmap):
    """The object ``GuestOS.mmap`` returns: a ``mmap.mmap`` whose pages are the DAX window's pages.

    Design.  Python 3.11 offers no pure-Python buffer export, so the class *is* a ``mmap.mmap``
    (created anonymous, ``ACCESS_WRITE`` for a writable map, ``ACCESS_READ`` otherwise) whose pages are
    then replaced, piece by piece, by aliases of the window range: ``mremap(window_addr, 0, len,
    MREMAP_MAYMOVE | MREMAP_FIXED, buffer_addr)`` — with ``old_size == 0`` on a ``MAP_SHARED`` mapping
    the kernel creates a second mapping of the *same* file pages at ``buffer_addr`` (mremap(2)).
    A read-only buffer is then ``mprotect``-ed ``PROT_READ`` even where the window is writable.
    Everything else is ``mmap.mmap``'s own, sound machinery:

    * ``memoryview(buf)`` is read-only for an ``ACCESS_READ`` map: writes raise TypeError (as do
      ``buf[i] = x`` and ``buf.write``), and the pages are ``PROT_READ`` underneath as well;
    * a writable buffer exports a writable buffer: ``atomics.atomicview(buffer=memoryview(buf)[0:8],
      atype=atomics.INT)`` works, across processes that map the same file;
    * ``len``, item access, slicing (copies to ``bytes``), ``find``, ``flush`` (msync), ``closed``;
    * ``close()`` (also via ``with``) raises BufferError while a memoryview is exported, and after it
      every access raises ValueError — nothing is left that can touch unmapped memory.

    The alias is independent of the window range: unmapping or remapping the window later leaves the
    buffer on its file pages (like a user mmap outliving its fd).  ``DaxWindow.zero`` and
    ``zero_file_tail`` also zero the buffer's pages of the truncated file range, so a truncation on
    the host never SIGBUSes a reader of the buffer.  Pieces of the window that were already zeroed
    stay the buffer's own zero pages.  Create one with :meth:`DaxWindow.mapped_buffer`.

    Why not a ctypes array (``(c_ubyte * n).from_address``) for writable maps: it exports a writable
    buffer too, but counts no exports, so ``close()`` could not refuse while a memoryview is alive and
    that memoryview would then touch unmapped memory (SIGSEGV).  ``mmap.mmap.__exit__`` calls the C
    close directly, hence the override below, which also takes the window's lock (zeroing a closed
    buffer's address would clobber whatever is mapped there next).
    """

    def __new__(cls, *args, **kwargs):
        raise TypeError("MappedBuffer objects come from DaxWindow.mapped_buffer()")

    @classmethod
    def _create(cls, window: "DaxWindow", length: int, writable: bool) -> "MappedBuffer":
        self = mmap.mmap.__new__(cls, -1, length, access=mmap.ACCESS_WRITE if writable else mmap.ACCESS_READ)
        self._window = window
        self.writable = writable
        self._addr = data_address(self)
        self._table = MappingTable()     # offsets relative to the buffer
        return self

    def close(self) -> None:
        """Unmap the buffer (idempotent).  BufferError while a memoryview of it is alive."""
        with self._window._lock:
            mmap.mmap.close(self)
            self._window._buffers.discard(self)

    def __exit__(self, *exc) -> bool:
        self.close()
        return False

    def resize(self, newsize: int) -> None:
        """Refused: the buffer's pages are fixed aliases of a file range."""
        raise einval("a MappedBuffer cannot be resized")

    def mappings(self) -> list[Mapping]:
        """What the buffer's pages hold, offsets relative to the buffer."""
        with self._window._lock:
            return list(self._table)


class DaxWindow:
    """A reserved ``PROT_NONE`` window of ``size`` bytes of address space (anonymous,
    ``MAP_PRIVATE | MAP_NORESERVE``: no memory is committed) at ``base``, cut into ``size //
    range_size`` ranges handed out by ``self.ranges`` (a RangeAllocator).

    ``size`` must be a positive multiple of ``range_size``, itself a positive multiple of the page
    size (EINVAL otherwise).  All methods are thread-safe; offsets and lengths of :meth:`map`,
    :meth:`unmap` and :meth:`zero` are page-aligned and inside the window (EINVAL otherwise — the
    virtio-fs spec refuses a mapping past the window end); after :meth:`close` every method but
    ``close`` raises ``OSError(EBADF)``.  Garbage collection does not unmap the window (a view does
    not keep its window alive): close it.
    """

    def __init__(self, size: int = 1 << 30, range_size: int = FUSE_DAX_SZ) -> None:
        if range_size <= 0 or range_size % PAGE:
            raise einval(f"DAX range size {range_size:#x} is not a positive multiple of the page size")
        if size <= 0 or size % range_size:
            raise einval(f"DAX window size {size:#x} is not a positive multiple of {range_size:#x}")
        self.size = size
        self.range_size = range_size
        self._lock = threading.Lock()
        self._table = MappingTable()
        self._buffers: weakref.WeakSet[MappedBuffer] = weakref.WeakSet()
        self.closed = False
        base = _mmap(None, size, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0)
        if base == MAP_FAILED:
            raise _oserror(f"reserving a DAX window of {size:#x} bytes")
        self.base: int = base
        #: a byte memoryview over the whole reservation (touch only mapped pieces of it)
        self.memory = memory_at(base, size)
        self.ranges = RangeAllocator(size // range_size)

    def __repr__(self) -> str:
        return f"<DaxWindow {self.base:#x}+{self.size:#x} {len(self._table)} mappings{' closed' if self.closed else ''}>"

    # -- checks --------------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self.closed:
            raise OSError(errno.EBADF, f"{os.strerror(errno.EBADF)}: the DAX window is closed")

    def _check_span(self, offset: int, length: int, *, aligned: bool, empty_ok: bool = False) -> None:
        if aligned and (offset % PAGE or length % PAGE):
            raise einval(f"DAX range {offset:#x}+{length:#x} is not page-aligned")
        if offset < 0 or length < 0 or (length == 0 and not empty_ok) or offset + length > self.size:
            raise einval(f"DAX range {offset:#x}+{length:#x} is outside the window of {self.size:#x} bytes")

    def _covering(self, offset: int, length: int) -> list[Mapping]:
        """Under the lock: the pieces covering the range, EINVAL if any byte of it is not mapped."""
        self._check_open()
        pieces = self._table.covering(offset, offset + length)
        if pieces is None:
            raise einval(f"DAX range {offset:#x}+{length:#x} is not wholly mapped")
        return pieces

    # -- mapping -------------------------------------------------------------------------------

    def map(self, fd: int, fd_offset: int, window_offset: int, length: int, writable: bool) -> Mapping:
        """``mmap(base + window_offset, length, PROT_READ [| PROT_WRITE], MAP_SHARED | MAP_FIXED, fd,
        fd_offset)``: what the VMM does for FUSE_SETUPMAPPING / vhost-user SHMEM_MAP.

        Whatever was mapped in the range is replaced; the table's pieces that overlapped it are split.
        The caller may close ``fd`` afterwards (the mapping keeps the file).  Returns the new piece.
        Errors: EINVAL for an unaligned range or one past the window end, or a negative/unaligned
        ``fd_offset``; mmap's errno otherwise (EACCES: ``writable`` on a read-only fd; EBADF; ENODEV)
        — after a failed mmap the range is left unmapped, as after :meth:`unmap` (MAP_FIXED may have
        removed the old mapping already).
        """
        self._check_span(window_offset, length, aligned=True)
        if fd_offset < 0 or fd_offset % PAGE:
            raise einval(f"file offset {fd_offset:#x} is not page-aligned")
        ident = file_id(fd)
        with self._lock:
            self._check_open()
            addr = self.base + window_offset
            try:
                _map_fixed(addr, length, _prot(writable), MAP_SHARED, fd, fd_offset)
            except OSError:
                _anon_fixed(addr, length, PROT_NONE)
                self._table.carve(window_offset, window_offset + length)
                raise
            self._table.carve(window_offset, window_offset + length)
            m = Mapping(window_offset, length, ident, fd_offset, writable)
            self._table.insert(m)
            self._restore_buffers(m)
            return m

    def unmap(self, window_offset: int, length: int) -> list[Mapping]:
        """Return the range to ``PROT_NONE`` anonymous memory (what REMOVEMAPPING / SHMEM_UNMAP do);
        returns the pieces that were mapped there (clipped).  Unmapping a hole is not an error.
        Live MappedBuffers created from the range keep their own alias of the file."""
        self._check_span(window_offset, length, aligned=True)
        with self._lock:
            self._check_open()
            _anon_fixed(self.base + window_offset, length, PROT_NONE)
            return self._table.carve(window_offset, window_offset + length)

    def zero(self, window_offset: int, length: int) -> list[Mapping]:
        """Truncation safety: replace every file-backed page of the range with an anonymous zero page
        of the same protection (holes stay holes), and likewise those same file pages in every live
        MappedBuffer of this window.  Reads then see zeros and never SIGBUS, whatever the host does to
        the file; the file itself is not changed.  The pieces stay in the table with ``file=None``:
        :meth:`view` shows them read-only and :meth:`copy_in` refuses them (ESTALE) — a store there
        would be lost.  Returns the file-backed pieces replaced (as they were)."""
        self._check_span(window_offset, length, aligned=True)
        with self._lock:
            self._check_open()
            pieces = self._table.overlapping(window_offset, window_offset + length)
            done = _zero_pieces(self._table, self.base, pieces, lambda p: _prot(p.writable))
            for p in done:
                self._zero_buffers(p.file, p.file_offset, p.file_offset + p.length)
            return done

    def zero_file_tail(self, file: FileId, new_size: int) -> list[Mapping]:
        """Before the host shrinks ``file`` to ``new_size``: :meth:`zero` every page of it wholly past
        ``new_size`` (the page holding the new end stays: it remains valid), wherever it is mapped in
        the window or in a live MappedBuffer.  Returns the window pieces replaced."""
        if new_size < 0 or file is None:
            raise einval(f"zero_file_tail({file!r}, {new_size})")
        start = _round_up(new_size)
        with self._lock:
            self._check_open()
            pieces = self._table.file_pieces(file, start, 1 << 63)
            done = _zero_pieces(self._table, self.base, pieces, lambda p: _prot(p.writable))
            self._zero_buffers(file, start, 1 << 63)
            return done

    def _zero_buffers(self, file: FileId, fstart: int, fend: int) -> None:
        """Under the lock: zero the pages of ``file`` in ``[fstart, fend)`` in every live buffer (a
        buffer closes under the same lock, so none can be unmapped meanwhile)."""
        for buf in list(self._buffers):
            if buf.closed:
                continue
            prot = _prot(buf.writable)
            _zero_pieces(buf._table, buf._addr, buf._table.file_pieces(file, fstart, fend), lambda p: prot)

    def _restore_buffers(self, m: Mapping) -> None:
        """Under the lock, after the window piece ``m`` was mapped: live buffers whose pages of that
        file range were zeroed for a truncation alias the file again — the file grew back, and a
        MAP_SHARED mapping sees it again, as in Linux (not a writable buffer over a read-only piece:
        a store would fault; it keeps its zeros)."""
        for buf in list(self._buffers):
            if buf.closed or (buf.writable and not m.writable):
                continue
            for z in buf._table.file_pieces(m.file, m.file_offset, m.file_offset + m.length, zeroed=True):
                src = self.base + m.window_offset + (z.file_offset - m.file_offset)
                if _mremap(src, 0, z.length, MREMAP_MAYMOVE | MREMAP_FIXED,
                           buf._addr + z.window_offset) == MAP_FAILED:
                    raise _oserror(f"mremap alias of DAX range {z.file_offset:#x}+{z.length:#x}")
                if not buf.writable and _mprotect(buf._addr + z.window_offset, z.length, PROT_READ) != 0:
                    raise _oserror("mprotect(PROT_READ) of a restored buffer piece")
                buf._table.carve(z.window_offset, z.end)
                buf._table.insert(Mapping(z.window_offset, z.length, m.file, z.file_offset, buf.writable))

    # -- the table -----------------------------------------------------------------------------

    def mappings(self) -> list[Mapping]:
        """Snapshot of the mapping table, ordered by window offset."""
        with self._lock:
            return list(self._table)

    def lookup(self, window_offset: int) -> Mapping | None:
        """The piece holding byte ``window_offset``, or None."""
        with self._lock:
            return self._table.lookup(window_offset)

    def address(self, window_offset: int) -> int:
        """Virtual address of a window offset."""
        if not 0 <= window_offset < self.size:
            raise einval(f"window offset {window_offset:#x} is outside the window")
        return self.base + window_offset

    # -- data ----------------------------------------------------------------------------------

    def view(self, window_offset: int, length: int) -> memoryview:
        """A memoryview (format ``B``) over window memory; any byte range of mapped pieces.  Read-only
        if any part of the range is mapped read-only or zeroed, writable otherwise.  EINVAL unless
        the whole range is mapped.  It does not keep the range mapped: pin it while using it."""
        self._check_span(window_offset, length, aligned=False, empty_ok=True)
        with self._lock:
            pieces = self._covering(window_offset, length)
            readonly = any(not p.writable or p.zeroed for p in pieces)
        mv = memoryview((ctypes.c_ubyte * length).from_address(self.base + window_offset)).cast("B")
        return mv.toreadonly() if readonly else mv

    def copy_out(self, window_offset: int, length: int) -> bytes:
        """The bytes of a wholly mapped range (the DAX read path); EINVAL if it is not."""
        self._check_span(window_offset, length, aligned=False, empty_ok=True)
        with self._lock:
            self._covering(window_offset, length)
        return read_out(self.memory, window_offset, length)

    def copy_in(self, window_offset: int, data) -> None:
        """Store ``data`` (bytes-like) into a wholly mapped range (the DAX write path).

        EINVAL if the range is not wholly mapped; EACCES if any part is mapped read-only — what
        Linux gives there: a DAX write into a read-only range makes fs/fuse/dax.c upgrade it with
        FUSE_SETUPMAPPING_FLAG_WRITE, and the host's ``mmap(PROT_WRITE, MAP_SHARED)`` of a file it
        opened read-only fails with EACCES (mmap(2)).  (EBADF is the VFS's answer to write(2) on an
        fd opened without write access, a check GuestOS makes before DAX.)  ESTALE if any part was
        zeroed for a truncation (the store would be lost; map the range again)."""
        src = memoryview(data).cast("B")
        length = len(src)
        self._check_span(window_offset, length, aligned=False, empty_ok=True)
        with self._lock:
            pieces = self._covering(window_offset, length)
            if not all(p.writable for p in pieces):
                raise OSError(errno.EACCES, f"{os.strerror(errno.EACCES)}: DAX range "
                                            f"{window_offset:#x}+{length:#x} is mapped read-only")
            if any(p.zeroed for p in pieces):
                raise OSError(errno.ESTALE, f"{os.strerror(errno.ESTALE)}: DAX range "
                                            f"{window_offset:#x}+{length:#x} was zeroed for a truncation")
        write_in(self.memory, window_offset, src)

    def mapped_buffer(self, window_offset: int, length: int, writable: bool) -> MappedBuffer:
        """A :class:`MappedBuffer` of ``length`` bytes aliasing the window from ``window_offset``
        (page-aligned; the pages up to ``length`` rounded up must be mapped: EINVAL otherwise).
        ``writable`` needs every piece mapped writable (EACCES, as mmap(2) for PROT_WRITE on a
        read-only file) and not zeroed (ESTALE).  The caller keeps ``length`` within the file's size,
        as ``mmap.mmap`` does (pages past the end of a file SIGBUS when touched)."""
        if length <= 0:
            raise einval(f"mapped buffer of {length} bytes")
        span = _round_up(length)
        self._check_span(window_offset, span, aligned=True)
        with self._lock:
            pieces = self._covering(window_offset, span)
            if writable and not all(p.writable for p in pieces):
                raise OSError(errno.EACCES, f"{os.strerror(errno.EACCES)}: DAX range "
                                            f"{window_offset:#x}+{span:#x} is mapped read-only")
            if writable and any(p.zeroed for p in pieces):
                raise OSError(errno.ESTALE, f"{os.strerror(errno.ESTALE)}: DAX range "
                                            f"{window_offset:#x}+{span:#x} was zeroed for a truncation")
            buf = MappedBuffer._create(self, length, writable)
            try:
                for p in pieces:
                    rel = p.window_offset - window_offset
                    if not p.zeroed:
                        res = _mremap(self.base + p.window_offset, 0, p.length,
                                      MREMAP_MAYMOVE | MREMAP_FIXED, buf._addr + rel)
                        if res == MAP_FAILED:
                            raise _oserror(f"mremap alias of DAX range {p.window_offset:#x}+{p.length:#x}")
                    buf._table.insert(Mapping(rel, p.length, p.file, p.file_offset, writable, p.was))
                if not writable and _mprotect(buf._addr, span, PROT_READ) != 0:
                    raise _oserror("mprotect(PROT_READ) of a mapped buffer")
            except OSError:
                mmap.mmap.close(buf)
                raise
            self._buffers.add(buf)
            return buf

    # -- lifetime ------------------------------------------------------------------------------

    def close(self) -> None:
        """Unmap the whole window (idempotent).  Views of it must be gone; MappedBuffers stay valid."""
        with self._lock:
            if self.closed:
                return
            if _munmap(self.base, self.size) != 0:
                raise _oserror(f"munmap of the DAX window {self.base:#x}+{self.size:#x}")
            self.closed = True
            self._table.clear()

    def __enter__(self) -> "DaxWindow":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
