"""Structs of creating, opening, reading and writing files.

OPEN, CREATE, MKNOD, MKDIR, RENAME(2), LINK, READ, WRITE, RELEASE, FLUSH, FSYNC, FALLOCATE,
LSEEK and COPY_FILE_RANGE requests and their replies.
"""

from __future__ import annotations

from dataclasses import dataclass

from .wire import WireStruct, _S, _wire

# --------------------------------------------------------------------------------------------
# Creating, opening, reading, writing
# --------------------------------------------------------------------------------------------


@_wire
@dataclass(frozen=True, slots=True)
class OpenIn(WireStruct):
    """struct fuse_open_in (OPEN, OPENDIR)."""

    STRUCT = _S("II")
    flags: int = 0  # open(2) flags
    open_flags: int = 0  # OPEN_KILL_SUIDGID


@_wire
@dataclass(frozen=True, slots=True)
class OpenOut(WireStruct):
    """struct fuse_open_out (``open_flags`` is OpenOutFlags)."""

    STRUCT = _S("QIi")
    fh: int = 0
    open_flags: int = 0
    backing_id: int = 0


@_wire
@dataclass(frozen=True, slots=True)
class CreateIn(WireStruct):
    """struct fuse_create_in (followed by name\\0)."""

    STRUCT = _S("4I")
    flags: int = 0
    mode: int = 0
    umask: int = 0
    open_flags: int = 0


@_wire
@dataclass(frozen=True, slots=True)
class MknodIn(WireStruct):
    """struct fuse_mknod_in (followed by name\\0)."""

    STRUCT = _S("3I4x")
    mode: int = 0
    rdev: int = 0
    umask: int = 0


@_wire
@dataclass(frozen=True, slots=True)
class MkdirIn(WireStruct):
    """struct fuse_mkdir_in (followed by name\\0)."""

    STRUCT = _S("II")
    mode: int = 0
    umask: int = 0


@_wire
@dataclass(frozen=True, slots=True)
class RenameIn(WireStruct):
    """struct fuse_rename_in (followed by oldname\\0newname\\0)."""

    STRUCT = _S("Q")
    newdir: int = 0


@_wire
@dataclass(frozen=True, slots=True)
class Rename2In(WireStruct):
    """struct fuse_rename2_in (followed by oldname\\0newname\\0)."""

    STRUCT = _S("QI4x")
    newdir: int = 0
    flags: int = 0  # RENAME_NOREPLACE / RENAME_EXCHANGE / RENAME_WHITEOUT


@_wire
@dataclass(frozen=True, slots=True)
class LinkIn(WireStruct):
    """struct fuse_link_in (followed by newname\\0)."""

    STRUCT = _S("Q")
    oldnodeid: int = 0


@_wire
@dataclass(frozen=True, slots=True)
class ReadIn(WireStruct):
    """struct fuse_read_in (READ, READDIR, READDIRPLUS)."""

    STRUCT = _S("QQIIQI4x")
    fh: int = 0
    offset: int = 0
    size: int = 0
    read_flags: int = 0  # READ_LOCKOWNER
    lock_owner: int = 0
    flags: int = 0


@_wire
@dataclass(frozen=True, slots=True)
class WriteIn(WireStruct):
    """struct fuse_write_in (followed by ``size`` bytes of data)."""

    STRUCT = _S("QQIIQI4x")
    fh: int = 0
    offset: int = 0
    size: int = 0
    write_flags: int = 0  # WRITE_CACHE / WRITE_LOCKOWNER / WRITE_KILL_SUIDGID
    lock_owner: int = 0
    flags: int = 0


@_wire
@dataclass(frozen=True, slots=True)
class WriteOut(WireStruct):
    """struct fuse_write_out."""

    STRUCT = _S("I4x")
    size: int = 0


@_wire
@dataclass(frozen=True, slots=True)
class ReleaseIn(WireStruct):
    """struct fuse_release_in (RELEASE, RELEASEDIR)."""

    STRUCT = _S("QIIQ")
    fh: int = 0
    flags: int = 0
    release_flags: int = 0  # RELEASE_FLUSH / RELEASE_FLOCK_UNLOCK
    lock_owner: int = 0


@_wire
@dataclass(frozen=True, slots=True)
class FlushIn(WireStruct):
    """struct fuse_flush_in."""

    STRUCT = _S("Q8xQ")
    fh: int = 0
    lock_owner: int = 0


@_wire
@dataclass(frozen=True, slots=True)
class FsyncIn(WireStruct):
    """struct fuse_fsync_in (FSYNC, FSYNCDIR)."""

    STRUCT = _S("QI4x")
    fh: int = 0
    fsync_flags: int = 0  # FSYNC_FDATASYNC


@_wire
@dataclass(frozen=True, slots=True)
class FallocateIn(WireStruct):
    """struct fuse_fallocate_in."""

    STRUCT = _S("3QI4x")
    fh: int = 0
    offset: int = 0
    length: int = 0
    mode: int = 0


@_wire
@dataclass(frozen=True, slots=True)
class LseekIn(WireStruct):
    """struct fuse_lseek_in."""

    STRUCT = _S("QQI4x")
    fh: int = 0
    offset: int = 0
    whence: int = 0


@_wire
@dataclass(frozen=True, slots=True)
class LseekOut(WireStruct):
    """struct fuse_lseek_out."""

    STRUCT = _S("Q")
    offset: int = 0


@_wire
@dataclass(frozen=True, slots=True)
class CopyFileRangeIn(WireStruct):
    """struct fuse_copy_file_range_in (reply: WriteOut, or CopyFileRangeOut for opcode 53)."""

    STRUCT = _S("7Q")
    fh_in: int = 0
    off_in: int = 0
    nodeid_out: int = 0
    fh_out: int = 0
    off_out: int = 0
    len: int = 0
    flags: int = 0


@_wire
@dataclass(frozen=True, slots=True)
class CopyFileRangeOut(WireStruct):
    """struct fuse_copy_file_range_out (reply to COPY_FILE_RANGE_64)."""

    STRUCT = _S("Q")
    bytes_copied: int = 0
