"""Reading directories, and the ``os.scandir`` objects of :class:`~vfscluster.guest.gos.GuestOS`.

:func:`read_directory` reads a whole open directory (fs/fuse/readdir.c: a page per request,
continuing from the cookie of the last record, until an empty reply), with READDIR or
READDIRPLUS.  :class:`DirEntry` behaves like ``os.DirEntry``: ``name``, ``path`` (the scandir
argument joined with the name; just the name when scandir was given a descriptor), ``inode()``, ``is_dir()``/``is_file()``/``is_symlink()`` from the
entry's type where it can, and ``stat()`` asked from the host the first time (relative to
the descriptor scandir was given, if any), then kept.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import RemoteProtocolError
from ..fuse.abi import Attr, InitFlags
from .client import FuseClient

if TYPE_CHECKING:
    from .gos import GuestOS

__all__ = ["DirRecord", "read_directory", "DirEntry", "ScandirIterator"]

DT_UNKNOWN, DT_DIR, DT_REG, DT_LNK = 0, 4, 8, 10


@dataclass(frozen=True, slots=True)
class DirRecord:
    """One directory entry other than ``.`` and ``..``: name, inode number, DT_* type, and the
    attributes READDIRPLUS returned with it (None from READDIR)."""

    name: bytes
    ino: int
    type: int
    attr: Attr | None = None


def read_directory(client: FuseClient, nodeid: int, fh: int, *, plus: bool) -> list[DirRecord]:
    """Every entry of open directory ``fh`` but ``.`` and ``..``.  ``plus``: use READDIRPLUS
    if the server granted DO_READDIRPLUS (each record's lookup is counted and forgotten by
    the client)."""
    plus = plus and bool(client.flags & InitFlags.DO_READDIRPLUS)
    out: list[DirRecord] = []
    offset = 0
    seen: set[int] = set()
    while True:
        if plus:
            batch = [(d, name, e.attr if e.nodeid else None)
                     for e, d, name in client.readdirplus(nodeid, fh, offset)]
        else:
            batch = [(d, name, None) for d, name in client.readdir(nodeid, fh, offset)]
        if not batch:
            return out
        for dirent, name, attr in batch:
            if name not in (b".", b".."):
                out.append(DirRecord(name, dirent.ino, dirent.type, attr))
        offset = batch[-1][0].off
        if offset in seen:
            raise RemoteProtocolError(f"READDIR cookie {offset} repeats: the listing never ends")
        seen.add(offset)


class DirEntry:
    """An ``os.DirEntry`` look-alike for an entry listed by :meth:`GuestOS.scandir`."""

    __slots__ = ("name", "path", "_gos", "_rec", "_stat", "_lstat", "_dir_fd")

    def __init__(self, gos: GuestOS, dirpath: Any, rec: DirRecord, *,
                 dir_fd: int | None = None) -> None:
        self._gos = gos
        self._rec = rec
        self._dir_fd = dir_fd
        if isinstance(dirpath, bytes):
            self.name: Any = rec.name
        else:
            self.name = os.fsdecode(rec.name)
        self.path: Any = self.name if dir_fd is not None else os.path.join(dirpath, self.name)
        self._stat: os.stat_result | None = None
        self._lstat: os.stat_result | None = None

    def inode(self) -> int:
        """The entry's inode number (from the directory listing)."""
        return self._rec.ino

    def is_symlink(self) -> bool:
        if self._rec.type != DT_UNKNOWN:
            return self._rec.type == DT_LNK
        return self._test(stat.S_IFLNK, follow_symlinks=False)

    def is_dir(self, *, follow_symlinks: bool = True) -> bool:
        return self._test(stat.S_IFDIR, follow_symlinks=follow_symlinks)

    def is_file(self, *, follow_symlinks: bool = True) -> bool:
        return self._test(stat.S_IFREG, follow_symlinks=follow_symlinks)

    def _test(self, fmt: int, *, follow_symlinks: bool) -> bool:
        # CPython DirEntry_test_mode: the d_type answers unless it is unknown or a symlink to
        # follow; a vanished entry is simply not of the type
        dtype = self._rec.type
        if dtype == DT_UNKNOWN or (follow_symlinks and dtype == DT_LNK):
            try:
                st = self.stat(follow_symlinks=follow_symlinks)
            except FileNotFoundError:
                return False
            return stat.S_IFMT(st.st_mode) == fmt
        if dtype == DT_LNK:
            return fmt == stat.S_IFLNK
        return (dtype << 12) == fmt

    def stat(self, *, follow_symlinks: bool = True) -> os.stat_result:
        """``stat`` (or ``lstat``) of the entry's path, asked once and then kept."""
        if follow_symlinks and self.is_symlink():
            if self._stat is None:
                self._stat = self._gos.stat(self.path, dir_fd=self._dir_fd)
            return self._stat
        if self._lstat is None:
            self._lstat = self._gos.lstat(self.path, dir_fd=self._dir_fd)
        return self._lstat

    def __fspath__(self) -> Any:
        return self.path

    def __repr__(self) -> str:
        return f"<DirEntry {self.name!r}>"


class ScandirIterator:
    """The iterator :meth:`GuestOS.scandir` returns (a context manager, with ``close``).
    ``error``: raised by the first ``next()`` instead of an entry (a directory that could be
    opened but not read)."""

    def __init__(self, entries: list[DirEntry], *, error: OSError | None = None) -> None:
        self._it = iter(entries)
        self._error = error

    def __iter__(self) -> ScandirIterator:
        return self

    def __next__(self) -> DirEntry:
        if self._error is not None:
            error, self._error = self._error, None
            raise error
        return next(self._it)

    def close(self) -> None:
        self._it = iter(())

    def __enter__(self) -> ScandirIterator:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

