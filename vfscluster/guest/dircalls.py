"""Listing directories: ``listdir`` and ``scandir`` of :class:`~vfscluster.guest.gos.GuestOS`,
by path or by descriptor (a mixin: GuestOS provides ``client``, ``_fds``, ``stat``).

By path: resolve (following symlinks; ENOTDIR unless a directory), OPENDIR, read it all
(READDIR, or READDIRPLUS for ``scandir`` when the server offers it, as the kernel does for a
first read), RELEASEDIR; a plain listing may come from the mount's cache.

By descriptor, as CPython does it on Linux — ``dup`` the descriptor (EBADF, unnamed),
``fdopendir`` (ENOTDIR for what is not a directory, named by the descriptor), ``rewinddir``,
read, ``rewinddir`` again before ``closedir``: the listing is read through the descriptor's own
open directory, from the start, and its position is 0 afterwards (the dup shares it).  An
``O_PATH`` directory descriptor is EBADF from the read: at once for ``listdir``, at the first
entry for ``scandir``.  The entries' ``path`` is their name, and ``DirEntry.stat()`` asks
relative to the descriptor (``stat(name, dir_fd=fd)``: EBADF once it is closed).  ``-1`` is no
descriptor at all for CPython: it lists the working directory, the share root.
"""

from __future__ import annotations

import errno
import operator
import os
from typing import Any

from .client import FuseClient
from .dirent import DirEntry, DirRecord, ScandirIterator, read_directory
from .files import FdTable, OpenFile
from .namei import PathWalk, check_path, oserror
from .osargs import errors, fspath

__all__ = ["DirCalls"]


def _path_or_fd(path: Any) -> Any:
    """``path`` as CPython's ``path_converter`` (allow_fd) takes it: an int within a C ``int``
    (OverflowError) stays a descriptor, -1 meaning none: the working directory."""
    if isinstance(path, int):
        fd = operator.index(path)
        if fd > 0x7FFFFFFF:
            raise OverflowError("fd is greater than maximum")
        if fd < -0x80000000:
            raise OverflowError("fd is less than minimum")
        return "." if fd == -1 else fd
    return "." if path is None else path


def _fspath(path: Any, func: str) -> tuple[bytes, Any]:
    """:func:`~.osargs.fspath`, with the TypeError of a call that takes a descriptor too."""
    try:
        return fspath(path, func)
    except TypeError:
        raise TypeError(f"{func}: path should be string, bytes, os.PathLike, integer or None, "
                        f"not {type(path).__name__}") from None


class DirCalls:
    """listdir, scandir; mixed into GuestOS."""

    client: FuseClient
    _fds: FdTable

    def listdir(self, path: Any = None) -> list:
        """``os.listdir`` (READDIR): names without ``.`` and ``..``, str unless ``path`` is
        bytes.  An int is a directory descriptor (see the module's documentation)."""
        path = _path_or_fd(path)
        if isinstance(path, int):
            f, dup = self._dir_file(path)
            try:
                with errors(path):
                    if f.is_path:
                        raise oserror(errno.EBADF)
                    records = self._read_fd(f)
            finally:
                f.put()
                self._fds.unreserve(dup)
            return [os.fsdecode(r.name) for r in records]
        raw, p = _fspath(path, "listdir")
        records = self._list_dir(p, raw, plus=False)
        return [r.name if isinstance(p, bytes) else os.fsdecode(r.name) for r in records]

    def scandir(self, path: Any = ".") -> ScandirIterator:
        """``os.scandir``: DirEntry objects (READDIRPLUS when the server offers it, as the
        kernel does for a first read).  Their ``stat()`` asks the host when first called.  An
        int is a directory descriptor (see the module's documentation)."""
        path = _path_or_fd(path)
        if isinstance(path, int):
            f, dup = self._dir_file(path)
            try:
                if f.is_path:               # CPython's first readdir() fails, not scandir()
                    return ScandirIterator([], error=_named_ebadf(path))
                with errors(path):
                    records = self._read_fd(f, plus=True)
            finally:
                f.put()
                self._fds.unreserve(dup)
            return ScandirIterator([DirEntry(self, None, r, dir_fd=path) for r in records])
        raw, p = _fspath(path, "scandir")
        records = self._list_dir(p, raw, plus=True)
        return ScandirIterator([DirEntry(self, p, r) for r in records])

    def _dir_file(self, fd: int) -> tuple[OpenFile, int]:
        """dup() and fdopendir(): the open file of ``fd`` (a reference for the caller) and the
        number its dup holds meanwhile (reserved: the caller unreserves it); EBADF and EMFILE
        unnamed, ENOTDIR named by the descriptor."""
        with errors():
            f = self._fds.get(fd)
            try:
                dup = self._fds.reserve()
            except OSError:
                f.put()
                raise
        if not f.is_dir:
            f.put()
            self._fds.unreserve(dup)
            raise OSError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), fd)
        return f, dup

    def _read_fd(self, f: OpenFile, *, plus: bool = False) -> list[DirRecord]:
        """Every entry, read through the file's own handle; its position is rewound."""
        records = read_directory(self.client, f.nodeid, f.fh, plus=plus)
        with f.pos_lock:
            f.pos = 0
        return records

    def _list_dir(self, p: Any, raw: bytes, *, plus: bool) -> list[DirRecord]:
        """Resolve (following symlinks; ENOTDIR unless a directory), OPENDIR, read it all,
        RELEASEDIR — holding a descriptor number meanwhile, as opendir(3) does (EMFILE before the
        walk, as open(2) gives it)."""
        with errors(p):
            check_path(raw)             # getname(): its ENOENT / ENAMETOOLONG come before EMFILE
            with self._fds.holding():
                return self._list_node(raw, plus)

    def _list_node(self, raw: bytes, plus: bool) -> list[DirRecord]:
        c = self.client
        flags = os.O_RDONLY | os.O_DIRECTORY
        with PathWalk(c) as w:
            node = w.resolve(raw, follow=True, must_dir=True)
        try:
            cache = c.cache
            if not plus:
                listing = cache.get_listing(node.nodeid)
                if listing is not None:
                    return listing
            stamp = cache.stamp(node.nodeid) if cache.enabled else 0
            since = cache.local_gen
            opened = c.opendir(node.nodeid, flags)
            try:
                records = read_directory(c, node.nodeid, opened.fh, plus=plus)
            finally:
                c.releasedir(node.nodeid, opened.fh, flags)
            if not plus:
                cache.store_listing(node.nodeid, records, stamp, since)
            return records
        finally:
            c.put(node.nodeid)


def _named_ebadf(fd: int) -> OSError:
    return OSError(errno.EBADF, os.strerror(errno.EBADF), fd)
