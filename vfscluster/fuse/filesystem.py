"""The file-system interface the FUSE server calls (the counterpart of virtiofsd's ``filesystem.rs``).

:class:`FileSystem` has one method per FUSE operation, each named after its opcode in lower case.
The base class implements none of them: every operation raises ``OSError(ENOSYS)``, which the
server sends back as ``-ENOSYS`` (the Linux guest then stops asking for most of them).  A concrete
file system (:class:`~vfscluster.fuse.passthrough.PassthroughFs`) overrides what it supports.

Conventions every method follows:

* the first argument is a :class:`Context` (who asks, and on which guest connection);
* inode numbers are FUSE ``nodeid`` ints, file handles are the ``fh`` ints the file system
  returned from ``open``/``opendir``/``create``; names are ``bytes`` without the NUL;
* failure is ``OSError`` with the errno Linux gives for the same operation on a local file system
  (the server turns it into ``-errno``).  Anything else escaping a method is a bug;
* results are plain Python values (``os.stat_result``, ints, bytes, the small records below); the
  server owns the wire format;
* a file system may be shared by several sessions (guest connections) and called from several
  threads at once; lookup counts and handles belong to the session that obtained them
  (``ctx.session``), and :meth:`FileSystem.drop_session` releases them all.

Operations that return an :class:`Entry` (``lookup``, ``mknod``, ``mkdir``, ``symlink``, ``link``,
``create``, ``tmpfile`` and each entry of ``readdirplus``) add one to the session's lookup count of
the returned inode; ``forget`` and ``batch_forget`` take counts away.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from .abi import FileLock

__all__ = ["Context", "Entry", "DirEntry", "SetattrChanges", "FileLock", "FileSystem", "enosys"]


class Context(NamedTuple):
    """Who sent a request: the caller's ids as the guest reports them, the request's ``unique``
    and the ``session`` (an int naming the guest connection; one :class:`~.server.Server` each).

    An immutable record.  It is a ``NamedTuple`` rather than a frozen dataclass because one is
    built for every request: 0.35 µs against 0.9 µs.
    """

    uid: int = 0
    gid: int = 0
    pid: int = 0
    unique: int = 0
    session: int = 0


class Entry(NamedTuple):
    """A directory entry as LOOKUP and the creating operations return it.

    ``attr`` is an ``os.stat_result`` (the server converts it to ``fuse_attr``; ``attr_flags`` are
    ``fuse_attr.flags``, e.g. ``AttrFlags.DAX``).  ``entry_timeout`` and ``attr_timeout`` are
    seconds the guest may cache the name and the attributes.  ``version`` is reserved for the
    metadata-version table: ``(slot index, version read before the attributes)``.

    ``nodeid == 0`` is a negative entry: the name does not exist, and the guest may cache that
    for ``entry_timeout``.

    An immutable record, a ``NamedTuple`` for the reason :class:`Context` is one (one per LOOKUP).
    """

    nodeid: int
    generation: int
    attr: os.stat_result
    entry_timeout: float = 0.0
    attr_timeout: float = 0.0
    attr_flags: int = 0
    version: tuple[int, int] | None = None


@dataclass(frozen=True, slots=True)
class DirEntry:
    """One record of a directory listing: inode number (``st_ino``, not a nodeid), the cookie of
    the *next* entry (``offset``: pass it back to continue after this one), the ``DT_*`` type and
    the name."""

    ino: int
    offset: int
    type: int
    name: bytes


@dataclass(frozen=True, slots=True)
class SetattrChanges:
    """What a SETATTR asks to change; ``None`` (or ``False``) leaves a field alone.

    Times are nanoseconds since the epoch; ``atime_now``/``mtime_now`` mean "the current time"
    (``UTIME_NOW``) and win over the ``*_ns`` value.  ``ctime_ns`` is what the guest asked for;
    Linux cannot set ctime, so a host file system may ignore it.  ``kill_suidgid``: clear the
    set-user-id bit and the set-group-id bit (when group-executable), as a write by an
    unprivileged user would.  ``lock_owner`` is the owner of a truncating ``ftruncate``.
    """

    mode: int | None = None
    uid: int | None = None
    gid: int | None = None
    size: int | None = None
    atime_ns: int | None = None
    mtime_ns: int | None = None
    atime_now: bool = False
    mtime_now: bool = False
    ctime_ns: int | None = None
    kill_suidgid: bool = False
    lock_owner: int | None = None


def enosys() -> OSError:
    """``OSError(ENOSYS)``: the operation is not implemented."""
    return OSError(errno.ENOSYS, os.strerror(errno.ENOSYS))


class FileSystem:
    """A file system served over FUSE.  Every operation raises ``OSError(ENOSYS)`` here."""

    # ---------------------------------------------------------------- session

    def init(self, ctx: Context, flags: int) -> int:
        """INIT: a guest connects.

        ``flags`` is the 64-bit ``InitFlags`` set the guest offers.  Return the flags this file
        system accepts (the server enables ``offered & (its own protocol flags | returned)``, so
        returning more than was offered is harmless).  The server treats ENOSYS as "nothing
        beyond the protocol flags".
        """
        raise enosys()

    def destroy(self, ctx: Context) -> None:
        """DESTROY: the guest unmounts (or a new INIT arrives on a live session).  The server
        calls :meth:`drop_session` afterwards itself.  ENOSYS is ignored."""
        raise enosys()

    def drop_session(self, session: int) -> None:
        """Release every lookup count and close every handle that ``session`` holds (the guest
        disconnected or sent DESTROY).  Not a FUSE operation; the base does nothing.  Call it
        when no request of that session is in flight."""

    # ---------------------------------------------------------------- names and inodes

    def lookup(self, ctx: Context, parent: int, name: bytes) -> Entry:
        """LOOKUP ``name`` in directory ``parent``.  Adds one lookup count.

        Errors: ENOENT (no such name), ENOTDIR (``parent`` is not a directory), EBADF (unknown
        ``parent``), EINVAL (a name that is not one path component), ENAMETOOLONG.
        """
        raise enosys()

    def forget(self, ctx: Context, nodeid: int, nlookup: int) -> None:
        """FORGET: the guest drops ``nlookup`` references to ``nodeid``.  No reply is sent, so
        errors are only logged; unknown nodeids are ignored."""
        raise enosys()

    def batch_forget(self, ctx: Context, requests: Sequence[tuple[int, int]]) -> None:
        """BATCH_FORGET: :meth:`forget` for every ``(nodeid, nlookup)``.  No reply."""
        raise enosys()

    def getattr(self, ctx: Context, nodeid: int, fh: int | None) -> tuple[os.stat_result, float]:
        """GETATTR: ``(attributes, attr_timeout seconds)``.  ``fh`` is set when the guest asks
        through an open file (``fstat``)."""
        raise enosys()

    def setattr(
        self, ctx: Context, nodeid: int, changes: SetattrChanges, fh: int | None
    ) -> tuple[os.stat_result, float]:
        """SETATTR: apply ``changes`` (through ``fh`` when given) in the order mode, owner,
        size, times, and return the new ``(attributes, attr_timeout)``.

        Errors as ``chmod``/``chown``/``truncate``/``utimensat`` give them: EPERM, EISDIR
        (truncating a directory), EINVAL (negative size), EFBIG, EOPNOTSUPP (chmod of a symlink).
        """
        raise enosys()

    def readlink(self, ctx: Context, nodeid: int) -> bytes:
        """READLINK: the target of symlink ``nodeid``.  EINVAL when it is not a symlink."""
        raise enosys()

    def symlink(self, ctx: Context, parent: int, name: bytes, target: bytes) -> Entry:
        """SYMLINK: create ``name`` in ``parent`` pointing to ``target``.  EEXIST if taken."""
        raise enosys()

    def mknod(
        self, ctx: Context, parent: int, name: bytes, mode: int, rdev: int, umask: int
    ) -> Entry:
        """MKNOD: create a regular file, FIFO, socket or device node; ``mode`` includes the
        file type, permission bits are ``mode & ~umask``.  ``rdev`` is a userspace ``dev_t``."""
        raise enosys()

    def mkdir(self, ctx: Context, parent: int, name: bytes, mode: int, umask: int) -> Entry:
        """MKDIR ``name`` in ``parent`` with permissions ``mode & ~umask``.  EEXIST, ENOENT,
        ENOTDIR, EMLINK, ENOSPC as ``mkdirat`` gives them."""
        raise enosys()

    def unlink(self, ctx: Context, parent: int, name: bytes) -> Sequence[int]:
        """UNLINK ``name`` from ``parent``.  EISDIR for a directory, ENOENT.

        Returns the nodeids of the known inodes it changed other than ``parent`` (the unlinked
        inode, if the file system has a nodeid for it), for the metadata-version table.
        """
        raise enosys()

    def rmdir(self, ctx: Context, parent: int, name: bytes) -> Sequence[int]:
        """RMDIR ``name`` from ``parent``.  ENOTEMPTY, ENOTDIR, EINVAL (``.``), EBUSY.
        Returns the other nodeids it changed, like :meth:`unlink`."""
        raise enosys()

    def rename(
        self,
        ctx: Context,
        parent: int,
        name: bytes,
        newparent: int,
        newname: bytes,
        flags: int = 0,
    ) -> Sequence[int]:
        """RENAME / RENAME2 ``parent/name`` to ``newparent/newname``.  ``flags`` are
        ``renameat2`` flags (RENAME_NOREPLACE 1, RENAME_EXCHANGE 2; others EINVAL).

        Errors as ``renameat2`` gives them: EEXIST (NOREPLACE), ENOENT, EXDEV, EISDIR, ENOTDIR,
        ENOTEMPTY, EINVAL (a directory into itself).  Returns the other nodeids it changed (the
        moved inode and a replaced one), like :meth:`unlink`.
        """
        raise enosys()

    def link(self, ctx: Context, nodeid: int, newparent: int, newname: bytes) -> Entry:
        """LINK: a new name ``newparent/newname`` for ``nodeid``.  EPERM for a directory,
        EEXIST, EMLINK.  Adds one lookup count to ``nodeid``."""
        raise enosys()

    # ---------------------------------------------------------------- files

    def open(self, ctx: Context, nodeid: int, flags: int) -> tuple[int, int]:
        """OPEN with ``open(2)`` ``flags`` (no O_CREAT).  Returns ``(fh, fopen_flags)`` where
        ``fopen_flags`` are ``OpenOutFlags`` (DIRECT_IO, KEEP_CACHE...).  ELOOP for a symlink,
        EISDIR when writing a directory."""
        raise enosys()

    def create(
        self, ctx: Context, parent: int, name: bytes, mode: int, flags: int, umask: int
    ) -> tuple[Entry, int, int]:
        """CREATE: create (``O_CREAT`` and, when given, ``O_EXCL``) and open ``parent/name``.
        Returns ``(entry, fh, fopen_flags)``.  EEXIST with O_EXCL, ELOOP when the name is a
        symlink, EISDIR for a directory."""
        raise enosys()

    def tmpfile(
        self, ctx: Context, parent: int, name: bytes, mode: int, flags: int, umask: int
    ) -> tuple[Entry, int, int]:
        """TMPFILE: an unnamed file in ``parent`` (``O_TMPFILE``), as :meth:`create`."""
        raise enosys()

    def read(
        self, ctx: Context, nodeid: int, fh: int, offset: int, size: int, bufs: list[memoryview]
    ) -> int:
        """READ up to ``size`` bytes at ``offset`` into ``bufs`` (writable views, in order, whose
        lengths add up to ``size``; fill them with ``preadv``).  Returns the bytes read (short at
        end of file).  EBADF (unknown fh), EISDIR."""
        raise enosys()

    def read_is_cached(self, session: int, fh: int, offset: int, size: int) -> bool:
        """A hint for servers that hand slow requests to threads, not a FUSE operation: would a
        READ of ``[offset, offset + size)`` of handle ``fh`` of ``session`` be served from memory,
        without waiting for a disk?  False when unknown (the base), so the server plays safe."""
        return False

    def shutting_down(self) -> None:
        """A hook, not a FUSE operation: the server is about to end every session (it is
        stopping).  Requests parked in the file system should fail now rather than be granted
        by the releases that follow.  Nothing in the base."""

    def write_may_wait(self, session: int, fh: int) -> bool:
        """A hint like :meth:`read_is_cached`: may a WRITE to handle ``fh`` of ``session`` wait for
        other peers (e.g. DAX acks)?  False in the base."""
        return False

    def write(
        self, ctx: Context, nodeid: int, fh: int, offset: int, bufs: list[memoryview], flags: int
    ) -> int:
        """WRITE the bytes of ``bufs`` (read-only views, in order) at ``offset`` (``pwritev``).
        ``flags`` is ``fuse_write_in.write_flags`` (WRITE_CACHE, WRITE_LOCKOWNER,
        WRITE_KILL_SUIDGID).  Returns the bytes written.  EBADF, EFBIG, ENOSPC."""
        raise enosys()

    def flush(self, ctx: Context, nodeid: int, fh: int, lock_owner: int) -> None:
        """FLUSH: the guest closed a file descriptor of ``fh`` (``close(2)`` may report write
        errors)."""
        raise enosys()

    def release(
        self,
        ctx: Context,
        nodeid: int,
        fh: int,
        flags: int,
        flush: bool,
        flock_release: bool,
        lock_owner: int | None,
    ) -> None:
        """RELEASE: the last reference to ``fh`` is gone; close it.  ``flush``: flush first;
        ``flock_release``: drop the BSD locks of ``lock_owner``."""
        raise enosys()

    def fsync(self, ctx: Context, nodeid: int, fh: int, datasync: bool) -> None:
        """FSYNC ``fh`` (``fdatasync`` when ``datasync``)."""
        raise enosys()

    def fallocate(
        self, ctx: Context, nodeid: int, fh: int, mode: int, offset: int, length: int
    ) -> None:
        """FALLOCATE ``fallocate(2)`` on ``fh`` with its ``mode`` bits (KEEP_SIZE, PUNCH_HOLE...).
        EOPNOTSUPP, EINVAL, ENOSPC, EBADF (not open for writing)."""
        raise enosys()

    def lseek(self, ctx: Context, nodeid: int, fh: int, offset: int, whence: int) -> int:
        """LSEEK (the guest sends SEEK_DATA and SEEK_HOLE): the resulting offset.  ENXIO past
        the end."""
        raise enosys()

    def copy_file_range(
        self,
        ctx: Context,
        nodeid_in: int,
        fh_in: int,
        off_in: int,
        nodeid_out: int,
        fh_out: int,
        off_out: int,
        length: int,
        flags: int,
    ) -> int:
        """COPY_FILE_RANGE: copy ``length`` bytes; returns how many were copied.  EINVAL for
        nonzero ``flags`` or overlapping ranges in one file, EXDEV, EBADF."""
        raise enosys()

    def bmap(self, ctx: Context, nodeid: int, blocksize: int, block: int) -> int:
        """BMAP: the device block of file block ``block`` (block devices only)."""
        raise enosys()

    # ---------------------------------------------------------------- file system

    def statfs(self, ctx: Context, nodeid: int) -> os.statvfs_result:
        """STATFS of the file system holding ``nodeid``."""
        raise enosys()

    def syncfs(self, ctx: Context, nodeid: int) -> None:
        """SYNCFS: write back the whole file system holding ``nodeid``."""
        raise enosys()

    def access(self, ctx: Context, nodeid: int, mask: int) -> None:
        """ACCESS: may ``ctx.uid``/``ctx.gid`` use ``nodeid`` as ``mask`` (R_OK|W_OK|X_OK, or
        F_OK)?  EACCES when not."""
        raise enosys()

    # ---------------------------------------------------------------- extended attributes

    def setxattr(self, ctx: Context, nodeid: int, name: bytes, value: bytes, flags: int) -> None:
        """SETXATTR ``name`` = ``value``; ``flags`` XATTR_CREATE (EEXIST) / XATTR_REPLACE
        (ENODATA).  EPERM for ``user.`` attributes of symlinks and special files, ENOTSUP."""
        raise enosys()

    def getxattr(self, ctx: Context, nodeid: int, name: bytes, size: int) -> bytes | int:
        """GETXATTR with FUSE size semantics: ``size == 0`` returns the value's length (an int);
        otherwise the value (``bytes``), or ERANGE if it is longer than ``size``.  ENODATA when
        there is no such attribute."""
        raise enosys()

    def listxattr(self, ctx: Context, nodeid: int, size: int) -> bytes | int:
        """LISTXATTR: the names, each followed by NUL, with the size semantics of
        :meth:`getxattr`."""
        raise enosys()

    def removexattr(self, ctx: Context, nodeid: int, name: bytes) -> None:
        """REMOVEXATTR ``name``.  ENODATA when absent."""
        raise enosys()

    # ---------------------------------------------------------------- directories

    def opendir(self, ctx: Context, nodeid: int, flags: int) -> tuple[int, int]:
        """OPENDIR: open directory ``nodeid`` for READDIR; returns ``(fh, fopen_flags)``.
        ENOTDIR when it is not a directory."""
        raise enosys()

    def readdir(self, ctx: Context, nodeid: int, fh: int, offset: int) -> Iterable[DirEntry]:
        """READDIR from cookie ``offset`` (0 = the start, then a previous entry's ``offset``).

        Returns an iterable of :class:`DirEntry` (``.`` and ``..`` included, as Linux lists
        them); the server stops consuming it when the reply is full, so it should be lazy.
        """
        raise enosys()

    def readdirplus(
        self, ctx: Context, nodeid: int, fh: int, offset: int
    ) -> Iterable[tuple[DirEntry, Entry | None]]:
        """READDIRPLUS: like :meth:`readdir`, each record with the :class:`Entry` a LOOKUP of
        its name would give (adding a lookup count), or ``None`` for ``.`` and ``..`` (sent
        with nodeid 0: no lookup).  The server calls :meth:`forget` for an entry it produced
        but could not fit, so the iterable must be lazy (one lookup per item taken)."""
        raise enosys()

    def releasedir(self, ctx: Context, nodeid: int, fh: int, flags: int) -> None:
        """RELEASEDIR: close directory handle ``fh``."""
        raise enosys()

    def fsyncdir(self, ctx: Context, nodeid: int, fh: int, datasync: bool) -> None:
        """FSYNCDIR: ``fsync`` the directory handle ``fh``."""
        raise enosys()

    # ---------------------------------------------------------------- locks

    def getlk(
        self, ctx: Context, nodeid: int, fh: int, owner: int, lock: FileLock, flags: int
    ) -> FileLock:
        """GETLK (``F_GETLK``): the first lock that would conflict with ``lock`` (``end``
        inclusive, ``0x7fffffffffffffff`` = to the end), or ``lock`` with ``type`` F_UNLCK when
        none would."""
        raise enosys()

    def setlk(
        self,
        ctx: Context,
        nodeid: int,
        fh: int,
        owner: int,
        lock: FileLock,
        flags: int,
        sleep: bool,
    ) -> None:
        """SETLK / SETLKW (``sleep``): take or release (``F_UNLCK``) ``lock`` for ``owner``.
        EAGAIN when it conflicts and ``sleep`` is false; ``flags & LK_FLOCK`` means a BSD
        ``flock``."""
        raise enosys()

    # ---------------------------------------------------------------- DAX

    def setupmapping(
        self,
        ctx: Context,
        nodeid: int,
        fh: int,
        foffset: int,
        length: int,
        flags: int,
        moffset: int,
    ) -> None:
        """SETUPMAPPING: map ``length`` bytes of the file at ``foffset`` into the DAX window at
        ``moffset``; ``flags`` are SetupmappingFlags (READ, WRITE)."""
        raise enosys()

    def removemapping(self, ctx: Context, mappings: Sequence[tuple[int, int]]) -> None:
        """REMOVEMAPPING: unmap each ``(moffset, length)`` range of the DAX window."""
        raise enosys()

    def inode_dax(self, ctx: Context, nodeid: int) -> bool:
        """Per-inode DAX (``dax=inode`` guests): should the regular file ``nodeid`` use DAX?  True
        sets FUSE_ATTR_DAX in its attributes.  The server asks only in sessions that negotiated
        HAS_INODE_DAX (which :meth:`init` must accept), and only for regular files; an error
        (ENOSYS here) leaves the flag unset."""
        raise enosys()

    def maps_writable(self, ctx: Context, nodeid: int) -> bool:
        """Does the session hold a writable DAX mapping of ``nodeid``?  Its stores then reach the
        file with no request, so the server counts its FLUSH and FSYNC of the file as a change
        (the metadata-version table moves, and ``versions=on`` guests drop their cached data).
        False here (no DAX)."""
        return False

    # ---------------------------------------------------------------- not served yet

    def statx(
        self, ctx: Context, nodeid: int, fh: int | None, flags: int, mask: int
    ) -> os.stat_result:
        """STATX (7.39; the server does not speak it yet and answers ENOSYS)."""
        raise enosys()

    def ioctl(
        self, ctx: Context, nodeid: int, fh: int, flags: int, cmd: int, arg: bytes, out_size: int
    ) -> bytes:
        """IOCTL (the server answers ENOSYS without calling this)."""
        raise enosys()

    def poll(self, ctx: Context, nodeid: int, fh: int, kh: int, flags: int, events: int) -> int:
        """POLL (the server answers ENOSYS without calling this)."""
        raise enosys()
