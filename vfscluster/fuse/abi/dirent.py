"""Directory records: the fuse_dirent struct and the READDIR / READDIRPLUS record helpers.

``Dirent`` (the fixed part of a record), the record sizes, and packing and iterating the records
of a READDIR or READDIRPLUS reply body.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from vfscluster.errors import LocalProtocolError, RemoteProtocolError

from .attr import EntryOut
from .constants import DIRENT_NAME_MAX, NAME_OFFSET, NAME_OFFSET_DIRENTPLUS
from .wire import WireStruct, _S, _wire

# --------------------------------------------------------------------------------------------
# Directories
# --------------------------------------------------------------------------------------------


@_wire
@dataclass(frozen=True, slots=True)
class Dirent(WireStruct):
    """The fixed part of struct fuse_dirent (then ``namelen`` name bytes, padded to 8)."""

    STRUCT = _S("QQII")
    ino: int = 0
    off: int = 0  # cookie of the next entry
    namelen: int = 0
    type: int = 0  # DT_* = (st_mode & S_IFMT) >> 12


# --------------------------------------------------------------------------------------------
# Directory records
# --------------------------------------------------------------------------------------------

_DIRENT = Dirent.STRUCT


def dirent_size(namelen: int) -> int:
    """FUSE_DIRENT_SIZE: bytes of a READDIR record with a ``namelen``-byte name (8-aligned)."""
    return (NAME_OFFSET + namelen + 7) & ~7


def direntplus_size(namelen: int) -> int:
    """FUSE_DIRENTPLUS_SIZE: bytes of a READDIRPLUS record (8-aligned)."""
    return (NAME_OFFSET_DIRENTPLUS + namelen + 7) & ~7


def dirent_type(mode: int) -> int:
    """The DT_* value for an ``st_mode``."""
    return (mode & 0o170000) >> 12


def _bad_name(name: bytes) -> str | None:
    if not 0 < len(name) <= DIRENT_NAME_MAX:
        return f"name length {len(name)} outside 1..{DIRENT_NAME_MAX}"
    if b"/" in name or b"\0" in name:
        return f"name {name!r} contains '/' or NUL"
    return None


def pack_dirent(ino: int, off: int, type: int, name: bytes) -> bytes:
    """One READDIR record: fuse_dirent + name + zero padding to a multiple of 8."""
    name = bytes(name)
    problem = _bad_name(name)
    if problem:
        raise LocalProtocolError(f"dirent: {problem}")
    n = len(name)
    return _DIRENT.pack(ino, off, n, type) + name + bytes(-(NAME_OFFSET + n) & 7)


def pack_direntplus(entry: EntryOut, ino: int, off: int, type: int, name: bytes) -> bytes:
    """One READDIRPLUS record: fuse_entry_out + fuse_dirent + name + zero padding."""
    return entry.pack() + pack_dirent(ino, off, type, name)


def _dirent_at(buf: Any, pos: int, end: int) -> tuple[Dirent, bytes, int]:
    """The Dirent whose fixed part is at ``pos``, its name, and the end of its padded record."""
    dirent = Dirent.unpack_from(buf, pos)
    n = dirent.namelen
    if not 0 < n <= DIRENT_NAME_MAX:
        raise RemoteProtocolError(f"dirent namelen {n} outside 1..{DIRENT_NAME_MAX}")
    rec_end = pos + ((Dirent.SIZE + n + 7) & ~7)
    if rec_end > end:
        raise RemoteProtocolError(
            f"dirent record ({n}-byte name) runs {rec_end - end} bytes past the buffer"
        )
    name = bytes(buf[pos + Dirent.SIZE : pos + Dirent.SIZE + n])
    if b"/" in name or b"\0" in name:
        raise RemoteProtocolError(f"dirent name {name!r} contains '/' or NUL")
    return dirent, name, rec_end


def iter_dirents(buf: Any) -> Iterator[tuple[Dirent, bytes]]:
    """The (Dirent, name) records of a READDIR reply body."""
    end = len(buf)
    pos = 0
    while pos < end:
        if end - pos < NAME_OFFSET:
            raise RemoteProtocolError(f"truncated dirent: {end - pos} bytes left")
        dirent, name, pos = _dirent_at(buf, pos, end)
        yield dirent, name


def iter_direntplus(buf: Any) -> Iterator[tuple[EntryOut, Dirent, bytes]]:
    """The (EntryOut, Dirent, name) records of a READDIRPLUS reply body."""
    end = len(buf)
    pos = 0
    while pos < end:
        if end - pos < NAME_OFFSET_DIRENTPLUS:
            raise RemoteProtocolError(f"truncated direntplus: {end - pos} bytes left")
        entry = EntryOut.unpack_from(buf, pos)
        dirent, name, pos = _dirent_at(buf, pos + EntryOut.SIZE, end)
        yield entry, dirent, name
