"""DAX wired into a guest mount (DESIGN §5): the FUSE requests :class:`~vfscluster.guest.daxclient.GuestDax`
needs, the file sizes DAX copies are bounded by, and the ``GuestOS`` hooks (read, write, mmap, truncate).

Which files use DAX: with ``dax=always`` every regular file of the mount (the mount option of Linux);
with ``dax=inode`` (fs/fuse/dax.c ``fuse_should_enable_dax``) the guest offers HAS_INODE_DAX at INIT
and uses DAX only for the regular files whose attributes carry FUSE_ATTR_DAX (the host sets it for
files with the persistent flag FS_DAX_FL, ``chattr +x``), and for none if the host did not grant
HAS_INODE_DAX.  The decision is taken from the attributes of the node an open file was opened on
(a LOOKUP or CREATE reply), so a change of the flag takes effect at the next open (Linux: when the
inode is instantiated again).  The other files of a dax=inode mount go through FUSE_READ /
FUSE_WRITE; ``GuestOS.mmap`` of them is ENODEV (Linux would map them through the page cache, which
this emulation has no mmap of).  ``dax=never``: none of this exists (``client.dax`` is None) and
data goes through FUSE_READ / FUSE_WRITE as before.

The window: the host advertises region 0's size in GET_SHMEM_CONFIG (its ``window_size``, the most it
accepts); the guest reserves ``min(its own window_size, that)``, rounded down to 2 MiB, and never asks
for ranges past it.  No region 0 (a host without DAX): mounting with dax=always is EOPNOTSUPP.

File size.  A DAX copy is bounded by the size this guest knows (the kernel's ``i_size``): fetched with
GETATTR on the first DAX access after an open, then kept up to date by this guest's own writes and
truncations.  A read reaching past the known size asks the host once (GETATTR): appends by other guests
become visible; reads inside the known size send no request at all once their chunks are mapped.  A
shrinking truncation by another guest is safe: the host has replaced the pages past the new end with
zeros in our window first, so a read inside our stale size returns zeros there.  With ``versions=on``
the known size is kept with the file's slot in the metadata-version table, read before the GETATTR
(DESIGN §4's rule), and a DAX read or write first compares the slot (one load from shared memory): a
change by anyone — another guest's truncation or append, a host program — costs one GETATTR at
the next access, so such a guest sees the new size at once, as it sees every other change (a read
stops at the new end; a write past it goes to the host and is not lost past the end of file).

Writes: a write inside the known size is stored through the window; a write reaching past it (extending
the file) goes out whole as FUSE_WRITE (the size change must happen on the host, and a write split in
two could be cut in half by another guest's truncation landing between its parts); O_APPEND writes always
go through FUSE_WRITE.  Reads and writes fall back to FUSE_READ / FUSE_WRITE when the window has no room
(ENOMEM: every range pinned) or the host cannot map (ENOSYS, EOPNOTSUPP).
"""

from __future__ import annotations

import errno
import logging
import mmap as _mmap
import os
import threading

from ..fuse.abi import AttrFlags, InitFlags, Opcode, RemovemappingIn, RemovemappingOne, SetupmappingIn
from .dax import DaxWindow
from .daxclient import NO_FH, GuestDax
from .daxmap import FUSE_DAX_SZ
from .osargs import c_int, c_off, c_ssize

log = logging.getLogger(__name__)

_FALLBACK = (errno.ENOMEM, errno.ENOSYS, errno.EOPNOTSUPP)


class DaxFiles:
    """One mount's DAX: the window, the :class:`GuestDax`, the known file sizes.  Thread-safe."""

    def __init__(self, client, device, window_size: int, mode: str = "always") -> None:
        sizes = device.shmem_config.sizes
        offered = sizes[0] if sizes else 0
        size = min(window_size, offered) // FUSE_DAX_SZ * FUSE_DAX_SZ
        if size <= 0:
            raise OSError(errno.EOPNOTSUPP, f"{os.strerror(errno.EOPNOTSUPP)}: dax: the host offers no "
                                            f"DAX window (shared-memory region 0 of {offered} bytes)")
        self.client = client
        self.device = device
        #: "always" or "inode" (then only files with FUSE_ATTR_DAX; none if the host refused)
        self.mode = mode
        self._per_inode = mode == "inode"
        self._granted = bool(client.flags & InitFlags.HAS_INODE_DAX)
        self.window = DaxWindow(size)
        self.gdax = GuestDax(self.window, self._setup, self._remove)
        #: nodeid -> (known size, the slot version read before it was fetched: versions=on); one
        #: entry, so a lock-free reader never pairs a size with another fetch's version
        self._sizes: dict[int, tuple[int, int | None]] = {}
        #: versions=on: the mount's version table
        self._view = client.cache.view
        self._lock = threading.Lock()
        device.set_shmem_handler(0, self.gdax.shmem_handler)
        device.on_failure.append(self.gdax.slots.abort)     # a read waiting for a range must not outlive the host

    def uses(self, node) -> bool:
        """Does the open file of ``node`` (a :class:`~vfscluster.guest.namei.Node`) use DAX?"""
        if not node.is_reg:
            return False
        if not self._per_inode:
            return True
        return self._granted and bool(node.attr.flags & AttrFlags.DAX)

    def close(self) -> None:
        """After DESTROY: stop taking SHMEM_MAPs, release the window (live mmap buffers stay valid)."""
        self.device.set_shmem_handler(0, None)
        try:
            self.window.close()
        except OSError as exc:
            log.warning("DAX window not released: %s", exc)

    # -- FUSE requests -------------------------------------------------------------------------

    def _setup(self, nodeid: int, fh: int, foffset: int, length: int, flags: int, moffset: int) -> None:
        self.client._call(Opcode.SETUPMAPPING, nodeid,
                          [SetupmappingIn(fh, foffset, length, flags, moffset).pack()], 0)

    def _remove(self, entries: list) -> None:
        for i in range(0, len(entries), 256):
            batch = entries[i:i + 256]
            body = b"".join([RemovemappingIn(len(batch)).pack(),
                             *(RemovemappingOne(o, n).pack() for o, n in batch)])
            self.client._call(Opcode.REMOVEMAPPING, 1, [body], 0)

    # -- sizes ---------------------------------------------------------------------------------

    def opened(self, nodeid: int) -> None:
        """An open of the file: its size is asked again at the next DAX access (close-to-open)."""
        with self._lock:
            self._sizes.pop(nodeid, None)

    def _fetch(self, nodeid: int, fh: int | None) -> int:
        view = self._view
        seen = view.version(nodeid) if view is not None else 0     # before the GETATTR
        size = self.client.getattr(nodeid, fh).attr.size
        with self._lock:
            self._sizes[nodeid] = (size, seen)
        return size

    def _known(self, nodeid: int) -> int | None:
        """The known size of ``nodeid``, or None: none yet, or (versions=on) its slot moved
        since it was fetched.  Lock-free: the dict read (a size with its own version) and the slot
        load are atomic."""
        known = self._sizes.get(nodeid)
        if known is None:
            return None
        view = self._view
        if view is not None and view.version(nodeid) != known[1]:
            return None
        return known[0]

    def size(self, nodeid: int, fh: int | None) -> int:
        known = self._known(nodeid)
        return self._fetch(nodeid, fh) if known is None else known

    def grew(self, nodeid: int, end: int) -> None:
        with self._lock:
            known = self._sizes.get(nodeid)
            if known is not None:
                self._sizes[nodeid] = (max(known[0], end), known[1])

    def truncated(self, nodeid: int, size: int) -> None:
        """This guest truncated the file to ``size`` (SETATTR size or O_TRUNC succeeded)."""
        with self._lock:
            known = self._sizes.get(nodeid)
            self._sizes[nodeid] = (size, None if known is None else known[1])
        self.gdax.truncated(nodeid, size)

    def forget(self, nodeid: int) -> None:
        """The inode is evicted: its unpinned chunks go (REMOVEMAPPING) before the FORGET."""
        with self._lock:
            self._sizes.pop(nodeid, None)
        try:
            self.gdax.forget(nodeid)
        except OSError as exc:
            log.info("DAX forget of nodeid %d: %s", nodeid, exc)

    # -- data ----------------------------------------------------------------------------------

    def read_quick(self, nodeid: int, offset: int, n: int) -> bytes | None:
        """:meth:`GuestDax.read_fast` within the known size, or None."""
        size = self._known(nodeid)
        if size is None or offset + n > size:
            return None
        return self.gdax.read_fast(nodeid, offset, n, size)

    def write_quick(self, nodeid: int, offset: int, view: memoryview) -> bool:
        """:meth:`GuestDax.write_fast` within the known size; False: nothing stored."""
        size = self._known(nodeid)
        return size is not None and self.gdax.write_fast(nodeid, offset, view, size)

    def read(self, nodeid: int, fh: int, offset: int, n: int) -> bytes | None:
        """Up to ``n`` bytes at ``offset`` through the window; None: use FUSE_READ instead."""
        size = self._known(nodeid)
        if size is not None and offset + n <= size:
            data = self.gdax.read_fast(nodeid, offset, n, size)
            if data is not None:
                return data
        if size is None or offset + n > size:    # none known (or stale), or past it: grown?
            size = self._fetch(nodeid, fh)           # (one GETATTR either way)
        try:
            return self.gdax.read(nodeid, NO_FH, offset, n, size)
        except OSError as exc:
            if exc.errno in _FALLBACK:
                return None
            raise

    def write(self, nodeid: int, fh: int, offset: int, view: memoryview) -> int:
        """Store all of ``view`` through the window and return its length, or store nothing
        that counts and return 0 (the caller then sends all of it as FUSE_WRITE).  Never a
        prefix: a write split into a window store and an extending FUSE_WRITE is two writes, and
        another guest's truncation between them (our known size is older than it) would keep
        the tail, past a hole, and lose the head, stored past the host's new end of file."""
        size = self._known(nodeid)
        if size is not None and self.gdax.write_fast(nodeid, offset, view, size):
            return len(view)
        size = self.size(nodeid, fh)
        if offset + len(view) > size:
            return 0                    # extending: the host writes all of it, at once
        try:
            n = self.gdax.write(nodeid, NO_FH, offset, view, size)
        except OSError as exc:
            if exc.errno in _FALLBACK:
                return 0
            raise
        return n if n == len(view) else 0   # (the FUSE_WRITE rewrites the prefix stored)

    def mmap(self, nodeid: int, offset: int, length: int, writable: bool):
        return self.gdax.mmap(nodeid, NO_FH, offset, length, writable)


class DaxCalls:
    """``GuestOS.mmap`` (mixed into GuestOS, which provides ``client`` and ``_file``)."""

    def mmap(self, fd: int, length: int, offset: int = 0,
             prot: int = _mmap.PROT_READ | _mmap.PROT_WRITE):
        """A ``MAP_SHARED`` mapping of ``length`` bytes of the open file ``fd`` from ``offset`` (a
        multiple of the page size): an object with the buffer protocol (``memoryview``, slicing,
        ``len``, ``close``, context manager) whose bytes *are* the DAX window's pages — stores are
        seen at once by every guest mapping the file.  ``prot`` without PROT_WRITE gives a read-only
        buffer (writing raises TypeError); PROT_EXEC is accepted and changes nothing.  Arguments
        are converted as ``mmap.mmap`` converts them (TypeError, OverflowError).  Errors as Linux: ENODEV without DAX (the mount has no
        window; also, unlike Linux, which maps through the page cache, a file of a dax=inode mount
        without FUSE_ATTR_DAX), EACCES for a file not open for reading, or PROT_WRITE on a file not
        open for writing; EINVAL for a bad length or offset; ENODEV for a non-regular file;
        ValueError when the mapping would reach past the end of the file (as ``mmap.mmap``)."""
        dax = self.client.dax
        length, offset, prot = c_ssize(length), c_off(offset), c_int(prot)
        if length <= 0 or offset < 0 or offset % _mmap.PAGESIZE:
            raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))
        if prot & ~(_mmap.PROT_READ | _mmap.PROT_WRITE | _mmap.PROT_EXEC):
            raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))
        with self._file(fd) as f:
            if f.is_path:
                raise OSError(errno.EBADF, os.strerror(errno.EBADF))
            if dax is None or not dax.uses(f.node):     # (dax=inode: a file without FUSE_ATTR_DAX)
                raise OSError(errno.ENODEV, os.strerror(errno.ENODEV))
            size = self.client.getattr(f.nodeid, f.fh).attr.size     # mmap.mmap's fstat
            if offset > size or size - offset < length:
                raise ValueError("mmap length is greater than file size")
            if not f.readable or (prot & _mmap.PROT_WRITE and not f.writable):
                raise OSError(errno.EACCES, os.strerror(errno.EACCES))
            return dax.mmap(f.nodeid, offset, length, bool(prot & _mmap.PROT_WRITE))


__all__ = ["DaxCalls", "DaxFiles"]
