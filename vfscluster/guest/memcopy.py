"""Copies between the DAX window and Python objects at the speed of the kernel's own copy.

A guest's DAX read is a copy out of the window, a host's ``os.pread`` a ``copy_to_user`` out of the
page cache; both move the same bytes, so the copy routine decides which is faster.  The kernel
copies with ``rep movsb`` at any size.  glibc's ``memcpy`` (2.36 here) uses ``rep movsb`` only up to
a stop threshold derived from the cache sizes (on these AMD machines the per-core L2, 1 MiB), and
above it a vector loop that streams uncached data about 35 % slower (DESIGN §10: 1 MiB from a
64 MiB file, 40 µs against 29–31 µs).  So large copies go in pieces below that threshold, which
costs a few C calls and brings a 1 MiB DAX read level with ``os.pread``.

What is left is noise from the memory itself, larger than any of these effects on this VM: the same
1 MiB copy runs up to 15 % faster or slower depending on which part of a file it reads (where its
page-cache pages sit in physical memory, and how the hypervisor backs them), and between processes
depending on where malloc put the destination.  Timed against each other in turns over the same
pages and the same destination, the destination's offset within a 64-byte line makes no difference
(35.0–35.8 µs for offsets 0/16/32/48), and a copy out of a window mapping is level with ``os.pread``
(within ±5 %: the kernel reads its source through the direct map's huge pages, we through the
window's 4 KiB pages; we pay a few ctypes calls where it pays a system call).  ``bench dax``
therefore times ``os.pread`` in the DAX guest's own process, in turns with the DAX reads.

:func:`copy_out` builds the result ``bytes`` in place (``PyBytes_FromStringAndSize(NULL, n)`` is
the C API's way to make a bytes object to fill), so the data is copied once, as ``os.pread`` does.
"""

from __future__ import annotations

import ctypes

#: the largest piece one memmove copies: below glibc's rep-movsb stop threshold (1 MiB here)
PIECE = (1 << 20) - 64

_new_bytes = ctypes.pythonapi.PyBytes_FromStringAndSize
_new_bytes.restype = ctypes.py_object
_new_bytes.argtypes = (ctypes.c_void_p, ctypes.c_ssize_t)
_bytes_data = ctypes.pythonapi.PyBytes_AsString
_bytes_data.restype = ctypes.c_void_p
_bytes_data.argtypes = (ctypes.py_object,)
_memmove = ctypes.memmove


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


def copy(dst: int, src: int, n: int) -> None:
    """Copy ``n`` bytes from address ``src`` to address ``dst`` (ranges must not overlap and must
    be mapped: a fault here is a segfault, so callers check their ranges first)."""
    if n <= PIECE:
        _memmove(dst, src, n)
        return
    done = 0
    while done < n:
        k = min(PIECE, n - done)
        _memmove(dst + done, src + done, k)
        done += k


def copy_out(src: int, n: int) -> bytes:
    """A new ``bytes`` holding the ``n`` bytes at address ``src``."""
    if n <= PIECE:
        return ctypes.string_at(src, n) if n > 0 else b""
    out = _new_bytes(None, n)
    copy(_bytes_data(out), src, n)
    return out


def copy_in(dst: int, buf) -> int:
    """Copy a contiguous bytes-like object (``bytes``, a memoryview, even a read-only one) to
    address ``dst``, holding its buffer exported meanwhile; returns how many bytes."""
    view = _PyBuffer()
    _get_buffer(buf, ctypes.byref(view), 0)       # PyBUF_SIMPLE: contiguous bytes, or BufferError
    try:
        copy(dst, view.buf, view.len)
        return view.len
    finally:
        _release_buffer(ctypes.byref(view))


def data_address(obj) -> int:
    """Address of the memory a (possibly read-only) buffer exporter holds; valid while ``obj``
    lives and is not resized."""
    view = _PyBuffer()
    _get_buffer(obj, ctypes.byref(view), 0)
    try:
        return view.buf
    finally:
        _release_buffer(ctypes.byref(view))

