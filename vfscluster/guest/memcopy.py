"""Copies between the DAX window and Python objects at the speed of the kernel's own copy.

A guest's DAX read is a copy out of the window, a host's ``os.pread`` a ``copy_to_user`` out of the
page cache; both move the same bytes, so the copy routine decides which is faster.  The kernel
copies with ``rep movsb`` at any size.  glibc's ``memcpy`` (2.36 here) uses ``rep movsb`` only up to
a stop threshold derived from the cache sizes (on these AMD machines the per-core L2, 1 MiB), and
above it a vector loop that streams uncached data about 35 % slower (DESIGN §10: 1 MiB from a
64 MiB file, 40 µs against 29–31 µs).  So large copies go in pieces below that threshold.

The copies work on byte memoryviews (the DAX window keeps one over its whole reservation): a read
is ``view[a:b].tobytes()``, or ``b"".join`` of the pieces, which copies each straight into the new
object, once, as ``os.pread`` does; a write is slice assignment.  Going through ctypes instead
(``PyBytes_FromStringAndSize(NULL, n)`` and ``memmove`` on addresses) cost 2–3 µs more per 1 MiB
read (35.4 against 32.6 µs, in turns with ``os.pread`` at 33.4) and 0.2 µs more per 4 KiB; a
Python loop over the pieces 0.9 µs more than two halves.

What is left is where the bytes land.  ``bench dax`` copies 1 MiB of cold pages into one buffer
placed at each 16-byte step of a page, out of the window and by the kernel (``os.preadv``): over
those 256 placements the kernel's copy takes a median 1.09× the window copy's time (0.86–1.45×),
but at 15–30 % of them the window copy is the slower one, with no pattern in the address a program
could aim for (AMD's ``rep movsb`` minds ``(dst - src) % 4096``: glibc bug 30994).  A result
``bytes`` lands wherever malloc puts it (the same block for every read of a loop, decided by the
process's earlier allocations), so per process a 1 MiB DAX read is 0.9–1.15× the time of
``os.pread`` into the same block; moving the destination to a line boundary by copying a few head
bytes first does not help (the source then leaves its line).  Between processes, and between parts
of a file (where its page-cache pages sit in physical memory), the same copy also varies by up to
15 % on this VM: ``bench dax`` therefore times ``os.pread`` in the DAX guest's own process, in
turns with the DAX reads.
"""

from __future__ import annotations

import ctypes

#: the largest piece one copy moves: below glibc's rep-movsb stop threshold (1 MiB here)
PIECE = (1 << 20) - 64


def pieces(view: memoryview, start: int, n: int) -> list[memoryview]:
    """``view[start:start + n]`` as slices of at most ``PIECE`` bytes, for ``bytes.join``: up to
    ``2 * PIECE`` (one 2 MiB DAX chunk) two halves, as a loop over pieces costs 0.9 µs more."""
    end = start + n
    if n <= PIECE:
        return [view[start:end]]
    if n <= 2 * PIECE:
        mid = start + n // 2
        return [view[start:mid], view[mid:end]]
    return [view[s:min(s + PIECE, end)] for s in range(start, end, PIECE)]


def read_out(view: memoryview, start: int, n: int) -> bytes:
    """A new ``bytes`` holding ``view[start:start + n]`` (``view``: a byte memoryview).  The range
    must be mapped memory: a fault here is a segfault, so callers check their ranges first."""
    if n <= PIECE:
        return view[start:start + n].tobytes()
    return b"".join(pieces(view, start, n))


def write_in(view: memoryview, start: int, data) -> int:
    """Store ``data`` (a bytes-like object: C-contiguous, or a 1-D byte memoryview of any stride;
    TypeError otherwise) at ``view[start:]`` (``view``: a writable byte memoryview, mapped over the
    whole range); returns how many bytes."""
    src = data if type(data) is memoryview and data.format == "B" and data.ndim == 1 \
        else memoryview(data).cast("B")
    n = len(src)
    if n <= PIECE:
        view[start:start + n] = src
        return n
    for dst, piece in zip(pieces(view, start, n), pieces(src, 0, n)):   # the same cuts
        dst[:] = piece
    return n


def memory_at(address: int, length: int) -> memoryview:
    """A writable byte memoryview of ``length`` bytes at ``address`` (e.g. a whole DAX window
    reservation: nothing is touched until a slice of it is read or written)."""
    return memoryview((ctypes.c_ubyte * length).from_address(address)).cast("B")


class _PyBuffer(ctypes.Structure):
    """``Py_buffer`` (Include/pybuffer.h)."""

    _fields_ = [("buf", ctypes.c_void_p), ("obj", ctypes.c_void_p), ("len", ctypes.c_ssize_t),
                ("itemsize", ctypes.c_ssize_t), ("readonly", ctypes.c_int), ("ndim", ctypes.c_int),
                ("format", ctypes.c_char_p), ("shape", ctypes.c_void_p), ("strides", ctypes.c_void_p),
                ("suboffsets", ctypes.c_void_p), ("internal", ctypes.c_void_p)]


_get_buffer = ctypes.pythonapi.PyObject_GetBuffer
_get_buffer.argtypes = (ctypes.py_object, ctypes.POINTER(_PyBuffer), ctypes.c_int)
_get_buffer.restype = ctypes.c_int
_release_buffer = ctypes.pythonapi.PyBuffer_Release
_release_buffer.argtypes = (ctypes.POINTER(_PyBuffer),)
_release_buffer.restype = None


def data_address(obj) -> int:
    """Address of the memory a (possibly read-only) buffer exporter holds; valid while ``obj``
    lives and is not resized."""
    view = _PyBuffer()
    _get_buffer(obj, ctypes.byref(view), 0)
    try:
        return view.buf
    finally:
        _release_buffer(ctypes.byref(view))
