"""``mmap`` buffers over several DAX window ranges: what :meth:`GuestDax.mmap
<vfscluster.guest.daxclient.GuestDax.mmap>` returns when a file range spans 2 MiB chunks that sit in
unrelated window ranges.

:func:`alias_spans` is ``DaxWindow.mapped_buffer`` generalised from one window range to a list of them,
with the same rules and the same machinery (it works under the window's lock on its table and its set
of live buffers, so ``DaxWindow.zero`` / ``zero_file_tail`` reach these buffers too).  It belongs in
``DaxWindow.mapped_buffer`` itself (a ``spans`` form); it lives here only because that module was
frozen while this one was written.
"""

from __future__ import annotations

import errno
import mmap
import os
from collections.abc import Sequence

from . import dax as _dax
from .dax import DaxWindow, MappedBuffer
from .daxmap import Mapping


class DaxMmap(MappedBuffer):
    """What :meth:`GuestDax.mmap` returns: a :class:`~vfscluster.guest.dax.MappedBuffer` whose window
    chunks stay pinned until it is closed (or garbage-collected), so reclaim cannot take them and a
    truncation on the host still reaches its pages."""

    def close(self) -> None:
        MappedBuffer.close(self)
        release = getattr(self, "_dax_release", None)
        if release is not None and release.detach() is not None:    # not yet: unpin now
            self._dax_unpin()


def alias_spans(window: DaxWindow, spans: Sequence[tuple[int, int]], length: int,
                 writable: bool) -> DaxMmap:
    """A buffer of ``length`` bytes whose consecutive page spans alias the window ``spans``
    (``(window_offset, span_length)``, page-aligned, totalling ``length`` rounded up to a page) — the
    multi-range form of ``DaxWindow.mapped_buffer``, with its rules (EINVAL unless wholly mapped,
    EACCES / ESTALE for a writable buffer over read-only / zeroed pieces)."""
    with window._lock:
        found = []
        for wo, n in spans:
            pieces = window._covering(wo, n)
            if writable and not all(p.writable for p in pieces):
                raise OSError(errno.EACCES, f"{os.strerror(errno.EACCES)}: DAX range {wo:#x}+{n:#x} is read-only")
            if writable and any(p.zeroed for p in pieces):
                raise OSError(errno.ESTALE, f"{os.strerror(errno.ESTALE)}: DAX range {wo:#x}+{n:#x} was zeroed")
            found.append((wo, n, pieces))
        buf = DaxMmap._create(window, length, writable)
        try:
            pos = 0
            for wo, n, pieces in found:
                for p in pieces:
                    rel = pos + p.window_offset - wo
                    if not p.zeroed:
                        res = _dax._mremap(window.base + p.window_offset, 0, p.length,
                                           _dax.MREMAP_MAYMOVE | _dax.MREMAP_FIXED, buf._addr + rel)
                        if res == _dax.MAP_FAILED:
                            raise _dax._oserror(f"mremap alias of DAX range {p.window_offset:#x}+{p.length:#x}")
                    buf._table.insert(Mapping(rel, p.length, p.file, p.file_offset, writable, p.was))
                pos += n
            if not writable and _dax._mprotect(buf._addr, pos, _dax.PROT_READ) != 0:
                raise _dax._oserror("mprotect(PROT_READ) of a mapped buffer")
        except OSError:
            mmap.mmap.close(buf)
            raise
        window._buffers.add(buf)
        return buf


__all__ = ["DaxMmap", "alias_spans"]
