"""The guest's FUSE client: builds requests, parses replies, maps errors, counts lookups.

This is the part of Linux ``fs/fuse`` (``dir.c``, ``file.c``, ``inode.c``, ``readdir.c``,
``xattr.c``) that talks to the server; path walking, file descriptors and the os-like API are in
:mod:`vfscluster.guest.gos`.  One :class:`FuseClient` serves one mount over one
:class:`~vfscluster.guest.transport.Transport`; every method may be called from many threads.

Errors: an error reply raises ``OSError(errno, os.strerror(errno))``; a reply the client cannot
accept (too short, an error code outside ``-511..0``) raises
:class:`~vfscluster.errors.RemoteProtocolError`; attributes of an impossible file type or size
are ``EIO``, as the kernel's ``fuse_invalid_attr`` makes them.

Lookup counts (the kernel's ``fi->nlookup``): every reply that hands out a nodeid (LOOKUP,
CREATE, MKNOD, MKDIR, SYMLINK, LINK, and READDIRPLUS records other than ``.`` and ``..``) made
the server count one reference.  The client counts them per nodeid and owes them back in a
FORGET.  Independently, users *pin* a node while they use it (a path walk in progress, an open
file); the methods that return an entry return it pinned, and the user calls :meth:`put` when
done (the kernel's ``iput``).  When the last pin goes and the cache policy does not keep the
inode (``cache=none``: never), its whole count is queued for FORGET; queued forgets go out as one
FORGET, or as a BATCH_FORGET when several are pending, once ``forget_batch`` have accumulated, at
:meth:`flush_forgets` and at :meth:`destroy`.  The root (nodeid 1) is never counted.
"""

from __future__ import annotations

import errno
import os
import stat
import threading
from collections.abc import Sequence
from dataclasses import dataclass

from ..errors import LocalProtocolError, RemoteProtocolError
from ..fuse import abi
from ..fuse.abi import (
    ROOT_ID, AccessIn, AttrOut, BatchForgetIn, CreateIn, Dirent, EntryOut, FallocateIn, FlushIn,
    ForgetIn, ForgetOne, FsyncIn, GetattrIn, GetxattrIn, GetxattrOut, InitFlags, InitIn, InitOut,
    Kstatfs, LinkIn, LseekIn, LseekOut, MkdirIn, MknodIn, Opcode, OpenIn, OpenOut, ReadIn,
    ReleaseIn, Rename2In, RenameIn, SetattrIn, SetxattrIn, WriteIn, WriteOut, encode_name,
)
from .cache import CachePolicy
from .transport import Credentials, Transport

__all__ = ["FuseClient", "InitInfo", "REQUESTED_INIT_FLAGS", "PAGE_SIZE"]

PAGE_SIZE = 4096
#: fs/fuse: FUSE_DEFAULT_MAX_PAGES_PER_REQ (without FUSE_MAX_PAGES) and the default max_pages_limit
DEFAULT_MAX_PAGES = 32
MAX_PAGES_LIMIT = 256
#: fs/fuse/inode.c: the read-ahead window a guest announces (VM_READAHEAD_PAGES pages)
DEFAULT_MAX_READAHEAD = 32 * PAGE_SIZE
#: include/uapi/linux/limits.h: XATTR_SIZE_MAX, XATTR_LIST_MAX
XATTR_SIZE_MAX = 65536
XATTR_LIST_MAX = 65536
#: fs/fuse/readdir.c reads directories a page at a time
READDIR_SIZE = PAGE_SIZE

#: The subset of what a Linux 6.1 virtio-fs guest offers in FUSE_INIT that this client handles.
#: Left out: locks (POSIX_LOCKS, FLOCK_LOCKS: a later issue), caching (WRITEBACK_CACHE,
#: AUTO_INVAL_DATA, EXPLICIT_INVAL_DATA, CACHE_SYMLINKS: cache=none), request extensions
#: (SECURITY_CTX, CREATE_SUPP_GROUP), POSIX_ACL, EXPORT_SUPPORT, ioctl, splice, submounts, DAX.
REQUESTED_INIT_FLAGS = (
    InitFlags.ASYNC_READ | InitFlags.ATOMIC_O_TRUNC | InitFlags.BIG_WRITES | InitFlags.DONT_MASK
    | InitFlags.DO_READDIRPLUS | InitFlags.READDIRPLUS_AUTO | InitFlags.ASYNC_DIO
    | InitFlags.NO_OPEN_SUPPORT | InitFlags.PARALLEL_DIROPS | InitFlags.MAX_PAGES
    | InitFlags.NO_OPENDIR_SUPPORT | InitFlags.SETXATTR_EXT | InitFlags.INIT_EXT
)

_VALID_TYPES = frozenset((stat.S_IFREG, stat.S_IFDIR, stat.S_IFLNK, stat.S_IFCHR, stat.S_IFBLK,
                          stat.S_IFIFO, stat.S_IFSOCK))
_MAX_SIZE = (1 << 63) - 1
_FORGET_NODEID = 0


@dataclass(frozen=True, slots=True)
class InitInfo:
    """What FUSE_INIT settled: the protocol minor both sides speak, the flags the server granted
    (of those offered), and the limits the client applies."""

    major: int
    minor: int
    flags: InitFlags
    max_write: int
    max_pages: int
    max_readahead: int
    time_gran: int
    map_alignment: int
    max_background: int
    congestion_threshold: int


class _Node:
    """Client-side state of a nodeid: counts owed to the server, and local users."""

    __slots__ = ("nlookup", "pins")

    def __init__(self) -> None:
        self.nlookup = 0
        self.pins = 0


def _oserror(err: int) -> OSError:
    return OSError(err, os.strerror(err))


def _check_attr(attr: abi.Attr) -> None:
    """fs/fuse/fuse_i.h fuse_invalid_attr(): an impossible file type or size is EIO."""
    if stat.S_IFMT(attr.mode) not in _VALID_TYPES or attr.size > _MAX_SIZE:
        raise _oserror(errno.EIO)


class FuseClient:
    """FUSE requests over a transport, with the kernel's lookup-count bookkeeping.

    ``cache`` is a :class:`~vfscluster.guest.cache.CachePolicy` or a cache-mode value accepted
    by it (default ``cache=none``).  ``creds`` go into every request header (None: the
    transport's default).  Call :meth:`init` before anything else.
    """

    def __init__(self, transport: Transport, cache: "CachePolicy | str | None" = None, *,
                 creds: Credentials | None = None) -> None:
        self.transport = transport
        self.cache = cache if isinstance(cache, CachePolicy) else CachePolicy(cache)
        self.creds = creds
        self.info: InitInfo | None = None
        self._destroyed = False
        self._lock = threading.Lock()
        self._nodes: dict[int, _Node] = {}
        self._pending: list[tuple[int, int]] = []
        self._forget_lock = threading.Lock()     # keeps forgets in the order they were queued
        # operations the server answered ENOSYS (the kernel's fc->no_* bits)
        self._no: set[int] = set()

    # ================================================================== session

    def init(self, *, flags: int = REQUESTED_INIT_FLAGS,
             max_readahead: int = DEFAULT_MAX_READAHEAD) -> InitInfo:
        """FUSE_INIT: offer protocol 7.38 and ``flags``; record what the server granted.

        Raises :class:`RemoteProtocolError` if the server speaks another major version or a
        minor older than 7.31, or its reply is shorter than that minor's fuse_init_out.
        """
        if self.info is not None:
            raise LocalProtocolError("FUSE_INIT was already sent on this connection")
        lo, hi = abi.split_init_flags(flags)
        init_in = InitIn(abi.KERNEL_VERSION, abi.KERNEL_MINOR_VERSION, max_readahead, lo, hi)
        error, body = self.transport.request(Opcode.INIT, 0, [init_in.pack()], InitOut.SIZE,
                                             creds=self.creds)
        if error:
            raise self._error(error)
        if len(body) < 8:
            raise RemoteProtocolError(f"FUSE_INIT reply of {len(body)} bytes")
        major, minor = int.from_bytes(body[0:4], "little"), int.from_bytes(body[4:8], "little")
        if major != abi.KERNEL_VERSION:
            raise RemoteProtocolError(f"server speaks FUSE {major}.{minor}, we speak 7.x")
        if minor < abi.MIN_MINOR_VERSION:
            raise RemoteProtocolError(f"server speaks FUSE 7.{minor}, at least "
                                      f"7.{abi.MIN_MINOR_VERSION} is needed")
        out = InitOut.unpack_compat(body, 0, min(abi.init_out_size(minor), InitOut.SIZE))
        granted = InitFlags(out.all_flags & int(flags))
        max_pages = DEFAULT_MAX_PAGES
        if granted & InitFlags.MAX_PAGES:
            max_pages = min(MAX_PAGES_LIMIT, max(out.max_pages, 1))
        self.info = InitInfo(
            major=major, minor=min(minor, abi.KERNEL_MINOR_VERSION), flags=granted,
            max_write=max(PAGE_SIZE, out.max_write), max_pages=max_pages,
            max_readahead=min(out.max_readahead, max_readahead), time_gran=out.time_gran,
            map_alignment=out.map_alignment, max_background=out.max_background,
            congestion_threshold=out.congestion_threshold)
        return self.info

    def destroy(self) -> None:
        """Send the pending FORGETs, then DESTROY; afterwards every call fails with ENOTCONN.
        Nodes still pinned (open files) are not forgotten: DESTROY releases them on the host."""
        self._ready()
        self.flush_forgets()
        try:
            error, _ = self.transport.request(Opcode.DESTROY, 0, [], 0, creds=self.creds)
        finally:
            self._destroyed = True
        if error and error != -errno.ENOSYS:
            raise self._error(error)

    @property
    def flags(self) -> InitFlags:
        """The INIT flags the server granted."""
        return self._ready().flags

    @property
    def read_chunk(self) -> int:
        """The largest READ one request carries: ``min(max_pages pages, transport.max_io)``."""
        info = self._ready()
        return max(1, min(info.max_pages * PAGE_SIZE, self.transport.max_io))

    @property
    def write_chunk(self) -> int:
        """The largest WRITE one request carries: ``min(max_write, max_pages pages, max_io)``."""
        info = self._ready()
        return max(1, min(info.max_write, info.max_pages * PAGE_SIZE, self.transport.max_io))

    # ================================================================== lookup counts

    def hold(self, nodeid: int) -> None:
        """Pin ``nodeid`` once more (it must be pinned already, or be the root)."""
        if nodeid == ROOT_ID:
            return
        with self._lock:
            node = self._nodes.get(nodeid)
            if node is None or node.pins <= 0:
                raise LocalProtocolError(f"hold of nodeid {nodeid}, which nobody holds")
            node.pins += 1

    def put(self, nodeid: int, n: int = 1) -> None:
        """Drop ``n`` pins of ``nodeid`` (the kernel's ``iput``).  When none is left and the
        cache policy does not keep the inode, its lookup count is queued for FORGET."""
        if nodeid == ROOT_ID or n == 0:
            return
        with self._lock:
            node = self._nodes.get(nodeid)
            if node is None or node.pins < n:
                raise LocalProtocolError(f"put of nodeid {nodeid} more often than it was held")
            node.pins -= n
            if node.pins or self.cache.keep_inode(nodeid):
                return
            del self._nodes[nodeid]
            self._pending.append((nodeid, node.nlookup))
            if len(self._pending) < self.cache.forget_batch:
                return
        self.flush_forgets()

    def flush_forgets(self) -> None:
        """Send every queued forget now: one FORGET, or one BATCH_FORGET for several."""
        with self._forget_lock:
            with self._lock:
                batch, self._pending = self._pending, []
            if not batch or self._destroyed:
                return
            if len(batch) == 1:
                nodeid, nlookup = batch[0]
                self.transport.send_noreply(Opcode.FORGET, nodeid, [ForgetIn(nlookup).pack()])
                return
            # fs/fuse/dev.c fuse_read_batch_forget: as many as fit; our transport takes them all
            body = b"".join([BatchForgetIn(len(batch)).pack(),
                             *(ForgetOne(nodeid, n).pack() for nodeid, n in batch)])
            self.transport.send_noreply(Opcode.BATCH_FORGET, _FORGET_NODEID, [body])

    def lookup_counts(self) -> dict[int, tuple[int, int]]:
        """``{nodeid: (lookup count owed to the server, pins)}`` of every known node (tests)."""
        with self._lock:
            return {k: (v.nlookup, v.pins) for k, v in self._nodes.items()}

    @property
    def pending_forgets(self) -> int:
        """How many nodeids wait in the forget queue."""
        with self._lock:
            return len(self._pending)

    def _counted(self, nodeid: int, pin: bool = True) -> None:
        """The server counted one reference to ``nodeid``: owe it, and pin it if asked."""
        with self._lock:
            node = self._nodes.get(nodeid)
            if node is None:
                node = self._nodes[nodeid] = _Node()
            node.nlookup += 1
            if pin:
                node.pins += 1

    def _entry(self, body: bytes, expect_type: int | None = None, entry: EntryOut | None = None) -> EntryOut:
        """Decode an entry reply (unless ``entry`` is it, decoded), count it and return it pinned
        (fs/fuse/dir.c create_new_entry / fuse_lookup_name)."""
        if entry is None:
            entry = EntryOut.unpack_from(self._need(body, EntryOut.SIZE))
        if entry.nodeid == 0 or entry.nodeid == ROOT_ID:
            # LOOKUP's negative entry is handled by the caller; elsewhere an invalid nodeid is
            # EIO, and the root (never counted by the server) needs no forget.
            raise _oserror(errno.EIO)
        self._counted(entry.nodeid)
        try:
            _check_attr(entry.attr)
            if expect_type is not None and stat.S_IFMT(entry.attr.mode) != expect_type:
                raise _oserror(errno.EIO)
        except OSError:
            self.put(entry.nodeid)
            raise
        return entry

    # ================================================================== plumbing

    def _ready(self) -> InitInfo:
        if self._destroyed:
            raise _oserror(errno.ENOTCONN)
        if self.info is None:
            raise LocalProtocolError("FUSE_INIT has not completed on this connection")
        return self.info

    @staticmethod
    def _error(error: int) -> Exception:
        # fs/fuse/dev.c rejects out-of-range error codes (positive, or <= -512)
        if error > 0 or error <= -512:
            return RemoteProtocolError(f"reply with error code {error}")
        return _oserror(-error)

    @staticmethod
    def _need(body: bytes, size: int) -> bytes:
        if len(body) < size:
            raise RemoteProtocolError(f"reply body of {len(body)} bytes, {size} expected")
        return body

    def _call(self, opcode: int, nodeid: int, args: Sequence, reply_size: int) -> bytes:
        self._ready()
        error, body = self.transport.request(opcode, nodeid, args, reply_size, creds=self.creds)
        if error:
            raise self._error(error)
        return body

    # ================================================================== names and attributes

    def lookup(self, parent: int, name: bytes) -> EntryOut:
        """LOOKUP ``name`` in ``parent``: the entry, pinned (:meth:`put` it).  A negative entry
        (nodeid 0) is ENOENT."""
        body = self._call(Opcode.LOOKUP, parent, [encode_name(name)], EntryOut.SIZE)
        entry = EntryOut.unpack_from(self._need(body, EntryOut.SIZE))
        if entry.nodeid == 0:
            raise _oserror(errno.ENOENT)
        return self._entry(body, entry=entry)

    def getattr(self, nodeid: int, fh: int | None = None) -> AttrOut:
        """GETATTR (with FUSE_GETATTR_FH when ``fh`` is given)."""
        arg = GetattrIn(abi.GETATTR_FH, fh) if fh is not None else GetattrIn()
        out = AttrOut.unpack_from(self._need(
            self._call(Opcode.GETATTR, nodeid, [arg.pack()], AttrOut.SIZE), AttrOut.SIZE))
        _check_attr(out.attr)
        return out

    def setattr(self, nodeid: int, arg: SetattrIn) -> AttrOut:
        """SETATTR: change what ``arg.valid`` (SetattrValid) names; the new attributes."""
        out = AttrOut.unpack_from(self._need(
            self._call(Opcode.SETATTR, nodeid, [arg.pack()], AttrOut.SIZE), AttrOut.SIZE))
        _check_attr(out.attr)
        return out

    def readlink(self, nodeid: int) -> bytes:
        """READLINK: the target (at most PAGE_SIZE - 1 bytes, as the kernel reads it)."""
        body = self._call(Opcode.READLINK, nodeid, [], PAGE_SIZE - 1)
        if b"\0" in body:
            raise RemoteProtocolError("READLINK reply contains NUL")
        return bytes(body)

    def symlink(self, parent: int, name: bytes, target: bytes) -> EntryOut:
        """SYMLINK ``parent/name`` -> ``target``: the new entry, pinned."""
        body = self._call(Opcode.SYMLINK, parent, [encode_name(name), encode_name(target)],
                          EntryOut.SIZE)
        return self._entry(body, stat.S_IFLNK)

    def mknod(self, parent: int, name: bytes, mode: int, rdev: int = 0, umask: int = 0) -> EntryOut:
        """MKNOD ``parent/name`` (``mode`` includes the type): the new entry, pinned."""
        body = self._call(Opcode.MKNOD, parent, [MknodIn(mode, rdev, umask).pack(),
                                                 encode_name(name)], EntryOut.SIZE)
        return self._entry(body, stat.S_IFMT(mode))

    def mkdir(self, parent: int, name: bytes, mode: int, umask: int = 0) -> EntryOut:
        """MKDIR ``parent/name`` with permission bits ``mode``: the new entry, pinned."""
        body = self._call(Opcode.MKDIR, parent, [MkdirIn(mode, umask).pack(), encode_name(name)],
                          EntryOut.SIZE)
        return self._entry(body, stat.S_IFDIR)

    def unlink(self, parent: int, name: bytes) -> None:
        """UNLINK ``parent/name``."""
        self._call(Opcode.UNLINK, parent, [encode_name(name)], 0)

    def rmdir(self, parent: int, name: bytes) -> None:
        """RMDIR ``parent/name``."""
        self._call(Opcode.RMDIR, parent, [encode_name(name)], 0)

    def rename(self, parent: int, name: bytes, newparent: int, newname: bytes,
               flags: int = 0) -> None:
        """RENAME, or RENAME2 when ``flags`` (RENAME_NOREPLACE, RENAME_EXCHANGE) are given; a
        server without RENAME2 makes flags EINVAL (fs/fuse/dir.c fuse_rename2)."""
        names = [encode_name(name), encode_name(newname)]
        if not flags:
            self._call(Opcode.RENAME, parent, [RenameIn(newparent).pack(), *names], 0)
            return
        if Opcode.RENAME2 in self._no:
            raise _oserror(errno.EINVAL)
        try:
            self._call(Opcode.RENAME2, parent, [Rename2In(newparent, flags).pack(), *names], 0)
        except OSError as exc:
            if exc.errno == errno.ENOSYS:
                self._no.add(Opcode.RENAME2)
                raise _oserror(errno.EINVAL) from None
            raise

    def link(self, nodeid: int, newparent: int, newname: bytes) -> EntryOut:
        """LINK: ``newparent/newname`` becomes another name of ``nodeid``; the entry, pinned."""
        body = self._call(Opcode.LINK, newparent, [LinkIn(nodeid).pack(), encode_name(newname)],
                          EntryOut.SIZE)
        return self._entry(body)

    # ================================================================== files

    def open(self, nodeid: int, flags: int) -> OpenOut:
        """OPEN (O_CREAT, O_EXCL and O_NOCTTY are the VFS's business and are not sent; O_TRUNC
        only with ATOMIC_O_TRUNC).  A server with NO_OPEN_SUPPORT that answers ENOSYS opens
        everything from then on without a request: fh 0, no RELEASE."""
        return self._open(Opcode.OPEN, nodeid, flags, InitFlags.NO_OPEN_SUPPORT)

    def opendir(self, nodeid: int, flags: int = os.O_RDONLY) -> OpenOut:
        """OPENDIR, with OPEN's rules (NO_OPENDIR_SUPPORT)."""
        return self._open(Opcode.OPENDIR, nodeid, flags, InitFlags.NO_OPENDIR_SUPPORT)

    def _open(self, opcode: int, nodeid: int, flags: int, no_flag: int) -> OpenOut:
        flags &= ~(os.O_CREAT | os.O_EXCL | os.O_NOCTTY | os.O_CLOEXEC)
        if not self.flags & InitFlags.ATOMIC_O_TRUNC:
            flags &= ~os.O_TRUNC
        if opcode in self._no:
            return OpenOut()
        try:
            body = self._call(opcode, nodeid, [OpenIn(flags).pack()], OpenOut.SIZE)
        except OSError as exc:
            if exc.errno == errno.ENOSYS and self.flags & no_flag:
                self._no.add(opcode)
                return OpenOut()
            raise
        return OpenOut.unpack_from(self._need(body, OpenOut.SIZE))

    def create(self, parent: int, name: bytes, flags: int, mode: int,
               umask: int = 0) -> tuple[EntryOut, OpenOut]:
        """CREATE and open ``parent/name`` (``mode`` includes S_IFREG): the entry (pinned) and
        the open reply.  A server without CREATE gets MKNOD + OPEN (fs/fuse/dir.c)."""
        flags &= ~(os.O_NOCTTY | os.O_CLOEXEC)
        if Opcode.CREATE not in self._no:
            try:
                body = self._call(Opcode.CREATE, parent,
                                  [CreateIn(flags, mode, umask).pack(), encode_name(name)],
                                  EntryOut.SIZE + OpenOut.SIZE)
            except OSError as exc:
                if exc.errno != errno.ENOSYS:
                    raise
                self._no.add(Opcode.CREATE)
            else:
                self._need(body, EntryOut.SIZE + OpenOut.SIZE)
                opened = OpenOut.unpack_from(body, EntryOut.SIZE)
                entry = EntryOut.unpack_from(body)
                if entry.nodeid in (0, ROOT_ID):
                    raise _oserror(errno.EIO)
                self._counted(entry.nodeid)
                try:
                    _check_attr(entry.attr)
                    if stat.S_IFMT(entry.attr.mode) != stat.S_IFREG:
                        raise _oserror(errno.EIO)
                except OSError:
                    self._release(Opcode.RELEASE, entry.nodeid, opened.fh, flags, 0, 0)
                    self.put(entry.nodeid)
                    raise
                return entry, opened
        entry = self.mknod(parent, name, stat.S_IFREG | (mode & 0o7777), 0, umask)
        try:
            return entry, self.open(entry.nodeid, flags & ~os.O_TRUNC)
        except BaseException:
            self.put(entry.nodeid)
            raise

    def read(self, nodeid: int, fh: int, offset: int, size: int, *, flags: int = 0,
             lock_owner: int = 0) -> bytes:
        """READ ``size`` bytes at ``offset``, split into requests of :attr:`read_chunk`; stops
        at the first short reply (end of file).  ``flags`` are the file's open flags; a
        ``lock_owner`` is sent with READ_LOCKOWNER (as direct I/O does)."""
        chunk = self.read_chunk
        read_flags = abi.READ_LOCKOWNER if lock_owner else 0
        parts: list[bytes] = []
        while size > 0:
            n = min(size, chunk)
            arg = ReadIn(fh, offset, n, read_flags, lock_owner, flags)
            body = self._call(Opcode.READ, nodeid, [arg.pack()], n)
            if len(body) > n:
                raise RemoteProtocolError(f"READ of {n} bytes answered with {len(body)}")
            parts.append(body)
            if len(body) < n:
                break
            offset += n
            size -= n
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def write(self, nodeid: int, fh: int, offset: int, data, *, flags: int = 0,
              write_flags: int = 0, lock_owner: int = 0) -> int:
        """WRITE ``data`` at ``offset`` in requests of at most :attr:`write_chunk` bytes.
        Returns the bytes written: a short write stops; an error after some bytes were written
        returns their count (as fs/fuse/file.c fuse_direct_io does).  A ``lock_owner`` is sent
        with WRITE_LOCKOWNER."""
        if lock_owner:
            write_flags |= abi.WRITE_LOCKOWNER
        view = memoryview(data).cast("B")
        chunk = self.write_chunk
        done = 0
        total = len(view)
        while done < total:
            n = min(total - done, chunk)
            arg = WriteIn(fh, offset + done, n, write_flags, lock_owner, flags)
            try:
                body = self._call(Opcode.WRITE, nodeid, [arg.pack(), view[done:done + n]],
                                  WriteOut.SIZE)
                written = WriteOut.unpack_from(self._need(body, WriteOut.SIZE)).size
                if written > n:
                    raise _oserror(errno.EIO)
            except OSError:
                if done:
                    return done
                raise
            done += written
            if written < n:
                break
        return done

    def flush(self, nodeid: int, fh: int, lock_owner: int = 0) -> None:
        """FLUSH (at every close of a descriptor); ENOSYS means never again and success."""
        if Opcode.FLUSH in self._no:
            return
        try:
            self._call(Opcode.FLUSH, nodeid, [FlushIn(fh, lock_owner).pack()], 0)
        except OSError as exc:
            if exc.errno != errno.ENOSYS:
                raise
            self._no.add(Opcode.FLUSH)

    def release(self, nodeid: int, fh: int, flags: int = 0, *, release_flags: int = 0,
                lock_owner: int = 0) -> None:
        """RELEASE the file handle (not sent when opened without OPEN: NO_OPEN_SUPPORT).
        Errors are ignored: nothing can be reported to anyone (the kernel sends it async)."""
        if Opcode.OPEN not in self._no:
            self._release(Opcode.RELEASE, nodeid, fh, flags, release_flags, lock_owner)

    def releasedir(self, nodeid: int, fh: int, flags: int = 0) -> None:
        """RELEASEDIR the directory handle (not sent under NO_OPENDIR_SUPPORT)."""
        if Opcode.OPENDIR not in self._no:
            self._release(Opcode.RELEASEDIR, nodeid, fh, flags, 0, 0)

    def _release(self, opcode: int, nodeid: int, fh: int, flags: int, release_flags: int,
                 lock_owner: int) -> None:
        try:
            self._call(opcode, nodeid, [ReleaseIn(fh, flags, release_flags, lock_owner).pack()], 0)
        except OSError:
            pass

    def fsync(self, nodeid: int, fh: int, datasync: bool = False) -> None:
        """FSYNC (FSYNC_FDATASYNC when ``datasync``); ENOSYS means never again and success."""
        self._fsync(Opcode.FSYNC, nodeid, fh, datasync)

    def fsyncdir(self, nodeid: int, fh: int, datasync: bool = False) -> None:
        """FSYNCDIR, with FSYNC's rules."""
        self._fsync(Opcode.FSYNCDIR, nodeid, fh, datasync)

    def _fsync(self, opcode: int, nodeid: int, fh: int, datasync: bool) -> None:
        if opcode in self._no:
            return
        arg = FsyncIn(fh, abi.FSYNC_FDATASYNC if datasync else 0)
        try:
            self._call(opcode, nodeid, [arg.pack()], 0)
        except OSError as exc:
            if exc.errno != errno.ENOSYS:
                raise
            self._no.add(opcode)

    def lseek(self, nodeid: int, fh: int, offset: int, whence: int) -> int:
        """LSEEK (SEEK_DATA / SEEK_HOLE).  ENOSYS is remembered and raised again at once, so the
        caller can fall back to the generic answer (fs/fuse/file.c fuse_lseek)."""
        if Opcode.LSEEK in self._no:
            raise _oserror(errno.ENOSYS)
        try:
            body = self._call(Opcode.LSEEK, nodeid, [LseekIn(fh, offset, whence).pack()],
                              LseekOut.SIZE)
        except OSError as exc:
            if exc.errno == errno.ENOSYS:
                self._no.add(Opcode.LSEEK)
            raise
        return LseekOut.unpack_from(self._need(body, LseekOut.SIZE)).offset

    def fallocate(self, nodeid: int, fh: int, mode: int, offset: int, length: int) -> None:
        """FALLOCATE; a server without it makes it EOPNOTSUPP."""
        if Opcode.FALLOCATE in self._no:
            raise _oserror(errno.EOPNOTSUPP)
        try:
            self._call(Opcode.FALLOCATE, nodeid, [FallocateIn(fh, offset, length, mode).pack()], 0)
        except OSError as exc:
            if exc.errno == errno.ENOSYS:
                self._no.add(Opcode.FALLOCATE)
                raise _oserror(errno.EOPNOTSUPP) from None
            raise

    # ================================================================== directories

    def readdir(self, nodeid: int, fh: int, offset: int,
                size: int = READDIR_SIZE) -> list[tuple[Dirent, bytes]]:
        """READDIR from cookie ``offset``: the ``(Dirent, name)`` records (empty at the end)."""
        body = self._call(Opcode.READDIR, nodeid, [ReadIn(fh, offset, size).pack()], size)
        return list(abi.iter_dirents(body))

    def readdirplus(self, nodeid: int, fh: int, offset: int, size: int = READDIR_SIZE, *,
                    pin: bool = False) -> list[tuple[EntryOut, Dirent, bytes]]:
        """READDIRPLUS from cookie ``offset``: ``(EntryOut, Dirent, name)`` records.

        Each record with a nonzero nodeid other than ``.`` and ``..`` counts one lookup
        (fs/fuse/readdir.c fuse_direntplus_link).  With ``pin`` those nodes are returned pinned
        (the caller puts each once); otherwise they are released at once.  A record with
        impossible attributes is forgotten and returned with nodeid 0.
        """
        body = self._call(Opcode.READDIRPLUS, nodeid, [ReadIn(fh, offset, size).pack()], size)
        records = list(abi.iter_direntplus(body))
        out: list[tuple[EntryOut, Dirent, bytes]] = []
        counted: list[int] = []
        for entry, dirent, name in records:
            if entry.nodeid and name not in (b".", b".."):
                if entry.nodeid == ROOT_ID:         # invalid_nodeid(); the root is not counted
                    entry = EntryOut()
                else:
                    self._counted(entry.nodeid)
                    counted.append(entry.nodeid)
                    try:
                        _check_attr(entry.attr)
                    except OSError:                 # fuse_force_forget()
                        self.put(counted.pop())
                        entry = EntryOut()
            out.append((entry, dirent, name))
        if not pin:
            for nid in counted:
                self.put(nid)
        return out

    # ================================================================== file system

    def statfs(self, nodeid: int = ROOT_ID) -> abi.Kstatfs:
        """STATFS of the file system holding ``nodeid``."""
        body = self._call(Opcode.STATFS, nodeid, [], Kstatfs.SIZE)
        return Kstatfs.unpack_from(self._need(body, Kstatfs.SIZE))

    def syncfs(self) -> None:
        """SYNCFS; ENOSYS means never again and success."""
        if Opcode.SYNCFS in self._no:
            return
        try:
            self._call(Opcode.SYNCFS, ROOT_ID, [abi.SyncfsIn().pack()], 0)
        except OSError as exc:
            if exc.errno != errno.ENOSYS:
                raise
            self._no.add(Opcode.SYNCFS)

    def access(self, nodeid: int, mask: int) -> None:
        """ACCESS (R_OK|W_OK|X_OK or F_OK); ENOSYS means never again and allowed."""
        if Opcode.ACCESS in self._no:
            return
        try:
            self._call(Opcode.ACCESS, nodeid, [AccessIn(mask).pack()], 0)
        except OSError as exc:
            if exc.errno != errno.ENOSYS:
                raise
            self._no.add(Opcode.ACCESS)

    # ================================================================== extended attributes

    def setxattr(self, nodeid: int, name: bytes, value, flags: int = 0) -> None:
        """SETXATTR (fuse_setxattr_in is 16 bytes with SETXATTR_EXT, else 8)."""
        size = abi.setxattr_in_size(bool(self.flags & InitFlags.SETXATTR_EXT))
        arg = SetxattrIn(len(value), flags).pack()[:size]
        self._xattr_call(Opcode.SETXATTR, nodeid, [arg, encode_name(name), value], 0)

    def getxattr(self, nodeid: int, name: bytes, size: int = XATTR_SIZE_MAX) -> "bytes | int":
        """GETXATTR: the value (``size`` > 0; ERANGE if longer), or its length (``size`` 0)."""
        body = self._xattr_call(Opcode.GETXATTR, nodeid, [GetxattrIn(size).pack(),
                                                          encode_name(name)],
                                size or GetxattrOut.SIZE)
        if not size:
            return GetxattrOut.unpack_from(self._need(body, GetxattrOut.SIZE)).size
        return bytes(body)

    def listxattr(self, nodeid: int, size: int = XATTR_LIST_MAX) -> "bytes | int":
        """LISTXATTR: the NUL-terminated names (``size`` > 0), or their length (``size`` 0)."""
        body = self._xattr_call(Opcode.LISTXATTR, nodeid, [GetxattrIn(size).pack()],
                                size or GetxattrOut.SIZE)
        if not size:
            return GetxattrOut.unpack_from(self._need(body, GetxattrOut.SIZE)).size
        if body and not body.endswith(b"\0"):
            raise RemoteProtocolError("LISTXATTR reply does not end with NUL")
        return bytes(body)

    def removexattr(self, nodeid: int, name: bytes) -> None:
        """REMOVEXATTR."""
        self._xattr_call(Opcode.REMOVEXATTR, nodeid, [encode_name(name)], 0)

    def _xattr_call(self, opcode: int, nodeid: int, args: Sequence, reply_size: int) -> bytes:
        # fs/fuse/xattr.c: a server without the operation makes it EOPNOTSUPP from then on
        if opcode in self._no:
            raise _oserror(errno.EOPNOTSUPP)
        try:
            return self._call(opcode, nodeid, args, reply_size)
        except OSError as exc:
            if exc.errno == errno.ENOSYS:
                self._no.add(opcode)
                raise _oserror(errno.EOPNOTSUPP) from None
            raise
