"""The guest's FUSE client: builds requests, parses replies, maps errors, counts lookups.

This is the part of Linux ``fs/fuse`` (``dir.c``, ``inode.c``; ``file.c``, ``readdir.c`` and
``xattr.c`` are in :mod:`~vfscluster.guest.client_files`) that talks to the server; path walking, file descriptors and the os-like API are in
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
import itertools
import stat
import struct
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

from ..errors import LocalProtocolError, RemoteProtocolError
from ..fuse import abi
from ..fuse.abi import (
    ROOT_ID, Attr, AttrOut, BatchForgetIn, EntryOut, EntryVerOut, ForgetIn, GetattrIn,
    InitFlags, InitIn, InitOut, LinkIn, MkdirIn, MknodIn, Opcode, Rename2In, RenameIn, SetattrIn,
    SetattrValid, encode_name,
)
from .cache import NEGATIVE, CachePolicy
from .client_files import FileOps
from .daxmap import FUSE_DAX_SHIFT
from .replies import PAGE_SIZE, check_attr, oserror
from .transport import Credentials, Transport

__all__ = ["FuseClient", "InitInfo", "REQUESTED_INIT_FLAGS", "PAGE_SIZE"]

#: fs/fuse: FUSE_DEFAULT_MAX_PAGES_PER_REQ (without FUSE_MAX_PAGES) and the default max_pages_limit
DEFAULT_MAX_PAGES = 32
MAX_PAGES_LIMIT = 256
#: fs/fuse/inode.c: the read-ahead window a guest announces (VM_READAHEAD_PAGES pages)
DEFAULT_MAX_READAHEAD = 32 * PAGE_SIZE

#: The subset of what a Linux 6.1 virtio-fs guest offers in FUSE_INIT that this client handles.
#: Left out: WRITEBACK_CACHE (write-back is this guest's own choice, the host need not know),
#: EXPLICIT_INVAL_DATA, CACHE_SYMLINKS, request extensions (SECURITY_CTX, CREATE_SUPP_GROUP),
#: POSIX_ACL, EXPORT_SUPPORT, ioctl, splice, submounts.  Locks and DAX flags are added by the
#: mount when it uses them.
REQUESTED_INIT_FLAGS = (
    InitFlags.ASYNC_READ | InitFlags.ATOMIC_O_TRUNC | InitFlags.AUTO_INVAL_DATA
    | InitFlags.BIG_WRITES | InitFlags.DONT_MASK
    | InitFlags.DO_READDIRPLUS | InitFlags.READDIRPLUS_AUTO | InitFlags.ASYNC_DIO
    | InitFlags.NO_OPEN_SUPPORT | InitFlags.PARALLEL_DIROPS | InitFlags.MAX_PAGES
    | InitFlags.NO_OPENDIR_SUPPORT | InitFlags.SETXATTR_EXT | InitFlags.INIT_EXT
)

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


class FuseClient(FileOps):
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
        self._refused = False               # the INIT reply was refused: fs/fuse's conn_error
        self._lock = threading.Lock()
        self._nodes: dict[int, _Node] = {}
        self._unused: OrderedDict[int, None] = OrderedDict()   # known, unpinned, kept by the cache
        self._entryver = False
        #: requests sent (statistics; not exact under concurrency)
        self.requests = 0
        self._pending: list[tuple[int, int]] = []
        self._forget_lock = threading.Lock()     # keeps forgets in the order they were queued
        #: the mount's :class:`~vfscluster.guest.daxfiles.DaxFiles` (None: dax=never)
        self.dax = None
        # operations the server answered ENOSYS (the kernel's fc->no_* bits)
        self._no: set[int] = set()

    # ================================================================== session

    def init(self, *, flags: int = REQUESTED_INIT_FLAGS,
             max_readahead: int = DEFAULT_MAX_READAHEAD) -> InitInfo:
        """FUSE_INIT: offer protocol 7.38 and ``flags``; record what the server granted.

        Raises :class:`RemoteProtocolError` if the server speaks another major version or a
        minor older than 7.31, or its reply is shorter than that minor's fuse_init_out;
        ``ECONNREFUSED`` (and the connection is dead) if ``flags`` asked for MAP_ALIGNMENT (DAX)
        and the server's map_alignment is coarser than the 2 MiB DAX range, as Linux refuses it.
        """
        if self.info is not None:
            raise LocalProtocolError("FUSE_INIT was already sent on this connection")
        if self.cache.uses_versions:
            flags |= InitFlags.ENTRY_VERSION
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
        if granted & InitFlags.MAP_ALIGNMENT and out.map_alignment > FUSE_DAX_SHIFT:
            # fs/fuse/dax.c fuse_dax_check_alignment (MAP_ALIGNMENT is asked for with DAX only):
            # the INIT reply fails and the connection is in error: every request is refused.
            self._destroyed = self._refused = True
            raise OSError(errno.ECONNREFUSED,
                          f"FUSE: map_alignment {out.map_alignment} incompatible with dax mem "
                          f"range size {1 << FUSE_DAX_SHIFT}")
        max_pages = DEFAULT_MAX_PAGES
        if granted & InitFlags.MAX_PAGES:
            max_pages = min(MAX_PAGES_LIMIT, max(out.max_pages, 1))
        self.info = InitInfo(
            major=major, minor=min(minor, abi.KERNEL_MINOR_VERSION), flags=granted,
            max_write=max(PAGE_SIZE, out.max_write), max_pages=max_pages,
            max_readahead=min(out.max_readahead, max_readahead), time_gran=out.time_gran,
            map_alignment=out.map_alignment, max_background=out.max_background,
            congestion_threshold=out.congestion_threshold)
        self._entryver = bool(granted & InitFlags.ENTRY_VERSION)
        self.cache.auto_inval = bool(granted & InitFlags.AUTO_INVAL_DATA)
        if self.cache.uses_versions and not self._entryver:
            raise OSError(errno.EOPNOTSUPP, "versions=on: the host does not send entry versions "
                                            "(InitFlags.ENTRY_VERSION)")
        return self.info

    def destroy(self) -> None:
        """Send the pending FORGETs, then DESTROY; afterwards every call fails with ENOTCONN.
        Nodes still pinned (open files) are not forgotten: DESTROY releases them on the host."""
        self._ready()
        self.cache.pages.flush_all(self)
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
            if node.pins:
                return
            if self.cache.keep_inode(nodeid):
                unused = self._unused
                unused[nodeid] = None
                unused.move_to_end(nodeid)
                if len(unused) <= self.cache.max_unused:
                    return
                nodeid, _ = unused.popitem(last=False)      # the oldest unused inode goes
                node = self._nodes.pop(nodeid)
                self.cache.forget_node(nodeid)
            else:
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
            if self.dax is not None:          # fs/fuse/dax.c: an evicted inode's ranges go first
                for nodeid, _ in batch:
                    self.dax.forget(nodeid)
            if len(batch) == 1:
                nodeid, nlookup = batch[0]
                self.transport.send_noreply(Opcode.FORGET, nodeid, [ForgetIn(nlookup).pack()])
                return
            # fs/fuse/dev.c fuse_read_batch_forget: as many as fit; our transport takes them all.
            # The ForgetOne records are packed in one call (64 dataclasses cost ~2 µs per stat)
            body = BatchForgetIn(len(batch)).pack() + struct.pack(
                f"<{2 * len(batch)}Q", *itertools.chain.from_iterable(batch))
            self.transport.send_noreply(Opcode.BATCH_FORGET, _FORGET_NODEID, [body])

    def drop_caches(self) -> None:
        """``echo 3 > /proc/sys/vm/drop_caches``: write dirty data back, drop every cached
        dentry, attribute and page, and forget every inode nobody uses (FORGET now)."""
        self.cache.pages.flush_all(self)
        with self._lock:
            while self._unused:
                nodeid, _ = self._unused.popitem(last=False)
                self._pending.append((nodeid, self._nodes.pop(nodeid).nlookup))
            self.cache.clear()
        self.flush_forgets()

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
                self._unused.pop(nodeid, None)

    def _pin_cached(self, nodeid: int) -> bool:
        """Pin a node a cached dentry names; False if it was forgotten meanwhile."""
        with self._lock:
            node = self._nodes.get(nodeid)
            if node is None:
                return False
            node.pins += 1
            self._unused.pop(nodeid, None)
            return True

    def _entry(self, body: bytes, expect_type: int | None = None, entry: EntryOut | None = None) -> EntryOut:
        """Decode an entry reply (unless ``entry`` is it, decoded), count it and return it pinned
        (fs/fuse/dir.c create_new_entry / fuse_lookup_name)."""
        if entry is None:
            entry = EntryOut.unpack_from(self._need(body, EntryOut.SIZE))
        if entry.nodeid == 0 or entry.nodeid == ROOT_ID:
            # LOOKUP's negative entry is handled by the caller; elsewhere an invalid nodeid is
            # EIO, and the root (never counted by the server) needs no forget.
            raise oserror(errno.EIO)
        self._counted(entry.nodeid)
        try:
            check_attr(entry.attr)
            if expect_type is not None and stat.S_IFMT(entry.attr.mode) != expect_type:
                raise oserror(errno.EIO)
        except OSError:
            self.put(entry.nodeid)
            raise
        return entry

    # ================================================================== plumbing

    def _ready(self) -> InitInfo:
        if self._destroyed:
            raise oserror(errno.ECONNREFUSED if self._refused else errno.ENOTCONN)
        if self.info is None:
            raise LocalProtocolError("FUSE_INIT has not completed on this connection")
        return self.info

    @staticmethod
    def _error(error: int) -> Exception:
        # fs/fuse/dev.c rejects out-of-range error codes (positive, or <= -512)
        if error > 0 or error <= -512:
            return RemoteProtocolError(f"reply with error code {error}")
        return oserror(-error)

    @staticmethod
    def _need(body: bytes, size: int) -> bytes:
        if len(body) < size:
            raise RemoteProtocolError(f"reply body of {len(body)} bytes, {size} expected")
        return body

    def _call(self, opcode: int, nodeid: int, args: Sequence, reply_size: int) -> bytes:
        self._ready()
        self.requests += 1
        error, body = self.transport.request(opcode, nodeid, args, reply_size, creds=self.creds)
        if error:
            raise self._error(error)
        return body

    # ================================================================== names and attributes

    def lookup(self, parent: int, name: bytes, trace: list | None = None, *,
               fresh: bool = False) -> EntryOut:
        """LOOKUP ``name`` in ``parent``: the entry, pinned (:meth:`put` it).  A negative entry
        (nodeid 0) is ENOENT.

        With a cache, a valid dentry answers without a request (its attributes from the
        attribute cache, or GETATTR), and ENOENT is remembered as a negative dentry.  ``trace``
        collects the ``(nodeid, stamp)`` pairs the answer depends on (the parent's dentry stamp,
        the child's attribute stamp), for the path fast cache.  ``fresh``: ask the host even if
        a timed dentry is still valid (a change is about to be made through this name; the
        version table needs no such care)."""
        cache = self.cache
        pstamp = 0
        if cache.enabled:
            hit = None if fresh and not cache.uses_versions else cache.lookup_dentry(parent, name)
            if hit is not None:
                nodeid, dstamp, dattr = hit
                if nodeid == NEGATIVE:
                    raise oserror(errno.ENOENT)
                if self._pin_cached(nodeid):
                    try:
                        if cache.coupled:
                            attr, astamp = dattr, dstamp
                        else:
                            attr, astamp = self.attr_of(nodeid)
                    except BaseException:
                        self.put(nodeid)
                        raise
                    if trace is not None:
                        trace += ((parent, dstamp), (nodeid, astamp))
                    return EntryOut(nodeid=nodeid, attr=attr)
            pstamp = cache.stamp(parent)
        since = cache.local_gen
        try:
            body = self._call(Opcode.LOOKUP, parent, [encode_name(name)], EntryOut.SIZE
                              + (EntryVerOut.SIZE if self._entryver else 0))
        except OSError as exc:
            if exc.errno == errno.ENOENT:
                cache.store_dentry(parent, name, NEGATIVE, pstamp, since=since)
            raise
        entry = EntryOut.unpack_from(self._need(body, EntryOut.SIZE))
        if entry.nodeid == 0:
            cache.store_dentry(parent, name, NEGATIVE, pstamp, since=since)
            raise oserror(errno.ENOENT)
        astamp = self._entry_stamp(body, EntryOut.SIZE, entry.nodeid, pstamp)
        entry = self._entry(body, entry=entry)
        if cache.enabled:
            cache.store_dentry(parent, name, entry.nodeid, pstamp, entry.attr, since)
            cache.store_attr(entry.nodeid, entry.attr, astamp, since)
            if trace is not None:
                trace += ((parent, pstamp), (entry.nodeid, astamp))
        return entry

    def lookup_parent(self, nodeid: int) -> EntryOut:
        """LOOKUP ``..`` in directory ``nodeid``: its parent, pinned — unless it is the root,
        which the server does not count and nobody pins.  Always asked of the host, never
        cached: the kernel answers ``..`` from the dentry's parent, which follows a rename, and
        a dentry ``..`` would not.  (A path walk needs it only to climb above the directory it
        started in: a ``dir_fd``.)"""
        body = self._call(Opcode.LOOKUP, nodeid, [encode_name(b"..")], EntryOut.SIZE
                          + (EntryVerOut.SIZE if self._entryver else 0))
        entry = EntryOut.unpack_from(self._need(body, EntryOut.SIZE))
        if entry.nodeid == 0:
            raise oserror(errno.ENOENT)
        if entry.nodeid == ROOT_ID:
            check_attr(entry.attr)
            return entry
        return self._entry(body, entry=entry)

    def _entry_stamp(self, body: bytes, offset: int, nodeid: int, pre: int) -> int:
        """The stamp of an entry's attributes: the version the host sent after the entry
        (EntryVerOut at ``offset``) when entry versions were negotiated, else ``pre`` (the
        stamp taken before the request: a deadline, or 0)."""
        if not self._entryver:
            return pre
        ver = EntryVerOut.unpack_from(self._need(body, offset + EntryVerOut.SIZE), offset)
        if ver.version_index != nodeid & (self.cache.view.slots - 1):
            raise RemoteProtocolError(f"entry version for slot {ver.version_index}, nodeid "
                                      f"{nodeid} is in slot {nodeid & (self.cache.view.slots - 1)}")
        return ver.version

    def _entry_reply(self, opcode: int, parent: int, name: bytes, args: Sequence,
                     expect_type: int) -> EntryOut:
        """MKNOD, MKDIR, SYMLINK, LINK: send, count the new entry, update the caches."""
        cache = self.cache
        pstamp = cache.stamp(parent) if cache.enabled else 0
        since = cache.local_gen
        body = self._call(opcode, parent, args,
                          EntryOut.SIZE + (EntryVerOut.SIZE if self._entryver else 0))
        cache.changed(parent, names=((parent, name),))
        entry = EntryOut.unpack_from(self._need(body, EntryOut.SIZE))
        astamp = self._entry_stamp(body, EntryOut.SIZE, entry.nodeid, pstamp)
        entry = self._entry(body, expect_type, entry=entry)
        self._cache_new_entry(parent, name, entry, astamp, pstamp, since)
        return entry

    def _cache_new_entry(self, parent: int, name: bytes, entry: EntryOut, astamp: int,
                         pstamp: int, since: int) -> None:
        """Cache what MKNOD, MKDIR, SYMLINK, LINK or CREATE made, after the two changes this call
        makes to the caches (the parent's, at the reply, and the new node's here) — unless
        another change in this guest ran since the request was sent (``since``: ``local_gen``
        then): it may have undone this one, e.g. unlinked the name (Linux's parent ``i_rwsem``
        orders the two; nothing does here), so nothing is kept."""
        cache = self.cache
        if not cache.enabled:
            return
        cache.changed(entry.nodeid)
        if not cache.uses_versions and cache.local_gen != since + 2:
            return
        cache.store_attr(entry.nodeid, entry.attr, astamp)
        if not cache.uses_versions:
            # by time, the new name is as good as a looked-up one; with versions this guest's
            # own change moved the parent's slot, whose new value nobody read before it
            cache.store_dentry(parent, name, entry.nodeid, pstamp, entry.attr)

    def attr_of(self, nodeid: int, fh: int | None = None) -> tuple[Attr, int]:
        """``(attributes, stamp)`` of ``nodeid``: cached while valid, else GETATTR."""
        hit = self.cache.get_attr(nodeid)
        if hit is not None:
            return hit
        cache = self.cache
        stamp, since = cache.stamp(nodeid), cache.local_gen
        attr = self._getattr(nodeid, fh).attr
        cache.store_attr(nodeid, attr, stamp, since)
        return attr, stamp

    def getattr(self, nodeid: int, fh: int | None = None) -> AttrOut:
        """GETATTR (with FUSE_GETATTR_FH when ``fh`` is given); always asks the host, and
        refreshes the attribute cache."""
        cache = self.cache
        stamp = cache.stamp(nodeid) if cache.enabled else 0
        since = cache.local_gen
        out = self._getattr(nodeid, fh)
        cache.store_attr(nodeid, out.attr, stamp, since)
        return out

    def _getattr(self, nodeid: int, fh: int | None) -> AttrOut:
        arg = GetattrIn(abi.GETATTR_FH, fh) if fh is not None else GetattrIn()
        out = AttrOut.unpack_from(self._need(
            self._call(Opcode.GETATTR, nodeid, [arg.pack()], AttrOut.SIZE), AttrOut.SIZE))
        check_attr(out.attr)
        return out

    def setattr(self, nodeid: int, arg: SetattrIn, *, writeback_times: bool = False) -> AttrOut:
        """SETATTR: change what ``arg.valid`` (SetattrValid) names; the new attributes.  A size
        change writes this guest's dirty data of the file back first and drops its pages.  An
        mtime set while data is dirty becomes the time the write-back gives the host (not when
        ``writeback_times``: that is the write-back's own SETATTR)."""
        resize = bool(arg.valid & SetattrValid.SIZE)
        if resize:
            self.cache.pages.flush(self, nodeid)
        try:
            out = AttrOut.unpack_from(self._need(
                self._call(Opcode.SETATTR, nodeid, [arg.pack()], AttrOut.SIZE), AttrOut.SIZE))
        finally:
            self.cache.changed(nodeid, data=resize)
        check_attr(out.attr)
        self.cache.saw_attr(nodeid, out.attr, own=True)     # now the known size and mtime
        if arg.valid & (SetattrValid.MTIME | SetattrValid.MTIME_NOW) and not writeback_times:
            # a utime while data waits: the write-back must not set the older time of the writes
            seconds = out.attr.mtime - (1 << 64 if out.attr.mtime >> 63 else 0)
            self.cache.pages.set_dirty_mtime(nodeid, seconds * 1_000_000_000 + out.attr.mtimensec)
        return out

    def readlink(self, nodeid: int) -> bytes:
        """READLINK: the target (at most PAGE_SIZE - 1 bytes, as the kernel reads it)."""
        body = self._call(Opcode.READLINK, nodeid, [], PAGE_SIZE - 1)
        if b"\0" in body:
            raise RemoteProtocolError("READLINK reply contains NUL")
        return bytes(body)

    def symlink(self, parent: int, name: bytes, target: bytes) -> EntryOut:
        """SYMLINK ``parent/name`` -> ``target``: the new entry, pinned."""
        return self._entry_reply(Opcode.SYMLINK, parent, name,
                                 [encode_name(name), encode_name(target)], stat.S_IFLNK)

    def mknod(self, parent: int, name: bytes, mode: int, rdev: int = 0, umask: int = 0) -> EntryOut:
        """MKNOD ``parent/name`` (``mode`` includes the type): the new entry, pinned."""
        return self._entry_reply(Opcode.MKNOD, parent, name,
                                 [MknodIn(mode, rdev, umask).pack(), encode_name(name)],
                                 stat.S_IFMT(mode))

    def mkdir(self, parent: int, name: bytes, mode: int, umask: int = 0) -> EntryOut:
        """MKDIR ``parent/name`` with permission bits ``mode``: the new entry, pinned."""
        return self._entry_reply(Opcode.MKDIR, parent, name,
                                 [MkdirIn(mode, umask).pack(), encode_name(name)], stat.S_IFDIR)

    def unlink(self, parent: int, name: bytes) -> None:
        """UNLINK ``parent/name``."""
        try:
            self._call(Opcode.UNLINK, parent, [encode_name(name)], 0)
        finally:
            self.cache.changed(parent, names=((parent, name),))

    def rmdir(self, parent: int, name: bytes) -> None:
        """RMDIR ``parent/name``."""
        try:
            self._call(Opcode.RMDIR, parent, [encode_name(name)], 0)
        finally:
            self.cache.changed(parent, names=((parent, name),))

    def rename(self, parent: int, name: bytes, newparent: int, newname: bytes,
               flags: int = 0) -> None:
        """RENAME, or RENAME2 when ``flags`` (RENAME_NOREPLACE, RENAME_EXCHANGE) are given; a
        server without RENAME2 makes flags EINVAL (fs/fuse/dir.c fuse_rename2)."""
        names = [encode_name(name), encode_name(newname)]
        try:
            self._rename(parent, names, newparent, flags)
        finally:
            self.cache.changed(parent, newparent, names=((parent, name), (newparent, newname)))

    def _rename(self, parent: int, names: list, newparent: int, flags: int) -> None:
        if not flags:
            self._call(Opcode.RENAME, parent, [RenameIn(newparent).pack(), *names], 0)
            return
        if Opcode.RENAME2 in self._no:
            raise oserror(errno.EINVAL)
        try:
            self._call(Opcode.RENAME2, parent, [Rename2In(newparent, flags).pack(), *names], 0)
        except OSError as exc:
            if exc.errno == errno.ENOSYS:
                self._no.add(Opcode.RENAME2)
                raise oserror(errno.EINVAL) from None
            raise

    def link(self, nodeid: int, newparent: int, newname: bytes) -> EntryOut:
        """LINK: ``newparent/newname`` becomes another name of ``nodeid``; the entry, pinned."""
        self.cache.changed(nodeid)
        return self._entry_reply(Opcode.LINK, newparent, newname,
                                 [LinkIn(nodeid).pack(), encode_name(newname)], None)
