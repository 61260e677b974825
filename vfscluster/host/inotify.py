"""Changes made on the host behind the server's back bump the version table (DESIGN §4), via inotify.

:class:`Inotify` is a thin ctypes binding (``inotify_init1`` / ``inotify_add_watch`` /
``inotify_rm_watch``; the fd is non-blocking and close-on-exec).  :class:`ShareWatcher` watches every
inode the passthrough inode store knows, directories and files (and symlinks, FIFOs, ...) alike: it
is the store's observer, so an inode is watched before the call that brought it into the store
returns, so before anyone can read its attributes for a versioned reply; the watch is added through
``/proc/self/fd/<its O_PATH fd>`` and removed when the inode leaves the store.  An inotify watch
belongs to the inode, not to a name, so a file's own watch (``FILE_MASK``: MODIFY, ATTRIB,
MOVE_SELF) sees a change made through any of its names, hard links in directories no guest ever
looked up included.  Events become bumps:

* an event on an inode's own watch bumps it: a file's data or attributes (st_nlink too: link, unlink,
  a rename over it) changed, or one of its names moved (ctime); a directory's attributes changed
  (ATTRIB), it moved or went (MOVE_SELF, DELETE_SELF), or a name in it appeared, went or moved
  (CREATE, DELETE, MOVED_*: its mtime, ctime, size);
* an event a directory reports about one of its entries (``D/N``) bumps only ``D`` when a name came
  or went, and nothing else: the inode ``N`` stands for, if the store has it, had its own event.
  Until some inode goes without a watch of its own, directory watches do not even ask for
  IN_MODIFY (``DIR_MASK``), so a write raises one event.  Files' watches live in an inotify instance of
  their own (the kernel merges an event only with the one queued last: in one queue a directory's
  ATTRIB about ``f`` and ``f``'s own would alternate), so a stream of writes, or of attribute
  changes, to one file coalesces; :attr:`ShareWatcher.fd` is then an epoll fd over the two;
* ``IN_Q_OVERFLOW`` (events were lost) bumps every slot (``bump_all``).

The fallback: an inode whose watch cannot be added (the per-user watch limit, ENOSPC, logged once;
after ENOSPC no file gets a watch until every inode without one has left the store, so what is left
goes to directories, whose watch covers all their entries) is counted in :attr:`unwatched`; from
the first such inode on, every directory watch also asks for IN_MODIFY (``WATCH_MASK``, for good),
and while some inode is unwatched an event about entry ``N`` of ``D`` bumps the inode the store knows
as ``D/N`` (``fstatat(D, N, AT_SYMLINK_NOFOLLOW)`` -> (st_dev, st_ino) -> nodeid), the answer
remembered per (watch, name) until a namespace event for that name or until the store drops the
nodeid (nodeids are never reused), so a stream of writes to one file costs no ``fstatat`` each.

Limits: changes that raise no inotify event are not seen (a host program's writes through a shared
``mmap``, changes made by another machine to a network file system); an
inode without a watch of its own (the fallback above) is seen only through the directories the
store knows (a change through a hard link elsewhere is missed; the child of a DELETE or MOVED_FROM
is gone by the time the event is read).  The server's own changes raise events too: those cost one
extra bump (an extra refresh in a guest), never a missed one; each file the store takes in costs
one ``inotify_add_watch`` and one watch of the user's ``fs.inotify.max_user_watches``.

Threading: :meth:`ShareWatcher.drain` runs in the server loop; ``added`` / ``removed`` run in whatever
thread acquires or forgets inodes, under the store's lock.  A directory's fd is used by :meth:`drain`
only under the watcher's lock, and ``removed`` (which the store calls before closing that fd) takes the
same lock, so the fd is never used after it was closed.  The store holds one entry per (st_dev,
st_ino), so one per watch; should two entries ever share an inode (inotify answers the same watch
descriptor), the watch is shared and removed with the last of them.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import select
import struct
import threading
from collections.abc import Iterator

from ..fuse.passthrough.inodes import Inode, InodeStore
from .versions import VersionTable

log = logging.getLogger(__name__)

IN_MODIFY = 0x0000_0002
IN_ATTRIB = 0x0000_0004
IN_MOVED_FROM = 0x0000_0040
IN_MOVED_TO = 0x0000_0080
IN_CREATE = 0x0000_0100
IN_DELETE = 0x0000_0200
IN_DELETE_SELF = 0x0000_0400
IN_MOVE_SELF = 0x0000_0800
IN_Q_OVERFLOW = 0x0000_4000
IN_IGNORED = 0x0000_8000
IN_ONLYDIR = 0x0100_0000
IN_ISDIR = 0x4000_0000
IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = os.O_CLOEXEC

#: What a directory watch asks for once some inode of the store has no watch of its own: every change
#: of metadata or data of the directory or its entries.
WATCH_MASK = (IN_MODIFY | IN_ATTRIB | IN_MOVED_FROM | IN_MOVED_TO | IN_CREATE | IN_DELETE
              | IN_DELETE_SELF | IN_MOVE_SELF | IN_ONLYDIR)
#: ... and while every inode has one: no IN_MODIFY (a directory raises none about itself; its entries'
#: own watches report their writes), so a write raises one event, not two that never coalesce.
DIR_MASK = WATCH_MASK & ~IN_MODIFY
#: What the watch of a non-directory asks for: its data (MODIFY: write, truncate), its attributes
#: (ATTRIB: chmod, chown, utimes, xattrs, and st_nlink on link / unlink / rename over it) and its
#: ctime when one of its names moves (MOVE_SELF), whichever of its names the change went through.
FILE_MASK = IN_MODIFY | IN_ATTRIB | IN_MOVE_SELF
#: Events that change the watched directory's own entries (and so its mtime, ctime, size).
NAMESPACE_EVENTS = IN_CREATE | IN_DELETE | IN_MOVED_FROM | IN_MOVED_TO

EVENT = struct.Struct("iIII")     # struct inotify_event: wd, mask, cookie, len; then len bytes of name
READ_SIZE = 64 * 1024
_MAX_EVENT = EVENT.size + 256     # NAME_MAX + NUL, padded
_MAX_NAMES = 1 << 16              # remembered (watch, name) -> nodeid answers

_libc = ctypes.CDLL(None, use_errno=True)
_libc.inotify_init1.argtypes = [ctypes.c_int]
_libc.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
_libc.inotify_rm_watch.argtypes = [ctypes.c_int, ctypes.c_int]


def _check(result: int, what: str) -> int:
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return result


def parse_events(data: bytes) -> Iterator[tuple[int, int, int, bytes]]:
    """(wd, mask, cookie, name) of each ``struct inotify_event`` in ``data`` (name without its NUL
    padding; b"" for an event about the watched directory itself)."""
    off, end = 0, len(data)
    while off + EVENT.size <= end:
        wd, mask, cookie, n = EVENT.unpack_from(data, off)
        off += EVENT.size
        name = bytes(data[off:off + n]).rstrip(b"\0")
        off += n
        yield wd, mask, cookie, name


class Inotify:
    """One inotify instance (non-blocking, close-on-exec)."""

    def __init__(self) -> None:
        self.fd = _check(_libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC), "inotify_init1")
        self._poll = select.poll()
        self._poll.register(self.fd, select.POLLIN)

    def pending(self) -> bool:
        """Are events queued?  (A zero-timeout poll: a third of the cost of a read that finds
        nothing, which raises.)"""
        return bool(self._poll.poll(0))

    def add_watch(self, path: str | bytes, mask: int) -> int:
        """The watch descriptor of ``path`` (the same one again for an inode already watched)."""
        return _check(_libc.inotify_add_watch(self.fd, os.fsencode(path), mask), "inotify_add_watch")

    def rm_watch(self, wd: int) -> None:
        _check(_libc.inotify_rm_watch(self.fd, wd), "inotify_rm_watch")

    def read(self) -> bytes:
        """The events queued now (b"" if none): one non-blocking read."""
        try:
            return os.read(self.fd, READ_SIZE)
        except BlockingIOError:
            return b""

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class ShareWatcher:
    """Watches the inodes of ``inodes`` and bumps ``table`` for changes made outside the server.

    Install it with ``inodes.add_observer(watcher)`` (the constructor does); call :meth:`drain` from the
    server loop before it handles requests, and when :attr:`fd` is readable.
    """

    def __init__(self, inodes: InodeStore, table: VersionTable) -> None:
        self.inodes = inodes
        self.table = table
        self.inotify = Inotify()                        # directories' watches
        self.file_inotify = self._second_queue()        # files' (the same one if none can be had)
        self._queues = {self.inotify.fd: self.inotify}
        self._poll = select.poll()
        self._poll.register(self.inotify.fd, select.POLLIN)
        self._epoll: select.epoll | None = None         # what :attr:`fd` is when there are two
        if self.file_inotify is not self.inotify:
            try:
                self._epoll = select.epoll()
            except OSError as exc:
                log.warning("no epoll fd over two inotify instances (%s): files share one", exc)
                self.file_inotify.close()
                self.file_inotify = self.inotify
        if self._epoll is not None:
            self._queues[self.file_inotify.fd] = self.file_inotify
            self._poll.register(self.file_inotify.fd, select.POLLIN)
            self._epoll.register(self.inotify.fd, select.EPOLLIN)
            self._epoll.register(self.file_inotify.fd, select.EPOLLIN)
        self._lock = threading.Lock()
        self._dirs: dict[int, tuple[int, int]] = {}     # wd -> (nodeid, O_PATH fd of the directory)
        self._files: dict[int, tuple[int, ...]] = {}    # wd -> nodeids of a non-directory (one: below)
        self._wd_of: dict[int, int] = {}                # nodeid -> wd
        self._unwatched: set[int] = set()               # nodeids in the store without a watch
        self._files_off = False                         # ENOSPC: no file watches while _unwatched
        self._names: dict[tuple[int, bytes], int] = {}  # (wd, name) -> nodeid it stood for
        self.events = 0
        self.overflows = 0
        self.failed_watches = 0
        self._full = False                              # the watch limit was logged
        self._dir_mask = DIR_MASK                       # WATCH_MASK from the first unwatched inode on
        inodes.add_observer(self)

    def _second_queue(self) -> Inotify:
        """An inotify instance of its own for the files' watches: the kernel coalesces an event with
        the one queued last only, so with one queue a directory's event about its entry ``f`` and
        ``f``'s own would alternate and a stream of changes to ``f`` would never coalesce.  Without
        one (``fs.inotify.max_user_instances``, EMFILE) files share the directories' instance."""
        try:
            return Inotify()
        except OSError as exc:
            log.warning("no second inotify instance (%s): a stream of attribute changes to a file "
                        "costs two events each", exc)
            return self.inotify

    @property
    def fd(self) -> int:
        """Readable when events are queued (one inotify fd, or an epoll fd over the two)."""
        if self._epoll is not None:
            return -1 if self._epoll.closed else self._epoll.fileno()
        return self.inotify.fd

    @property
    def watched(self) -> int:
        """How many watches the watcher holds (directories and files)."""
        return len(self._dirs) + len(self._files)

    @property
    def unwatched(self) -> int:
        """How many inodes of the store have no watch of their own (their add failed)."""
        return len(self._unwatched)

    # -- InodeObserver (called under the store's lock) -----------------------------------------
    def added(self, inode: Inode) -> None:
        nodeid = inode.nodeid
        with self._lock:
            if self.inotify.fd < 0:
                return
            if not inode.is_dir and self._files_off:
                self._unwatch(nodeid)
                return
            try:
                if inode.is_dir:
                    wd = self.inotify.add_watch(f"/proc/self/fd/{inode.fd}", self._dir_mask)
                else:
                    wd = self.file_inotify.add_watch(f"/proc/self/fd/{inode.fd}", FILE_MASK)
            except OSError as exc:
                self._failed(inode, exc)
                self._unwatch(nodeid)
                return
            if inode.is_dir:
                self._dirs[wd] = (nodeid, inode.fd)
            else:       # the same wd again only if the store held one inode twice: share it
                self._files[wd] = self._files.get(wd, ()) + (nodeid,)
            self._wd_of[nodeid] = wd

    def _unwatch(self, nodeid: int) -> None:
        """``nodeid`` is in the store without a watch of its own: directories must report every
        change of their entries from now on (before the caller returns, so before anyone reads its
        attributes)."""
        self._unwatched.add(nodeid)
        if self._dir_mask == WATCH_MASK:
            return
        self._dir_mask = WATCH_MASK          # for good: flapping would cost a pass over _dirs each time
        for wd, (dnodeid, dirfd) in self._dirs.items():
            try:
                again = self.inotify.add_watch(f"/proc/self/fd/{dirfd}", WATCH_MASK)
            except OSError as exc:
                log.warning("cannot widen the inotify watch of directory nodeid %d (%s): writes to "
                            "its entries made on the host may go unseen", dnodeid, exc)
                continue
            if again != wd:                  # the same inode: the kernel answers the same wd
                log.warning("inotify answered watch %d for directory nodeid %d, watched as %d",
                            again, dnodeid, wd)

    def _failed(self, inode: Inode, exc: OSError) -> None:
        self.failed_watches += 1
        if exc.errno == errno.ENOSPC and not self._files_off:
            # the watch limit (max_user_watches): keep what is left for directories, whose watch
            # covers every entry; file watches resume once every inode without one has left
            self._files_off = True
            if not self._full:
                self._full = True
                log.warning("inotify watch limit reached (fs.inotify.max_user_watches) at nodeid %d: "
                            "files get no watch of their own while this lasts, so a change made on "
                            "the host through a name in an unwatched directory is not seen",
                            inode.nodeid)
            return
        if self.failed_watches % 1000 == 1:       # the first, then one in a thousand
            log.warning("cannot watch %s nodeid %d for host-side changes (%s): changes made "
                        "outside the server reach guests only through its directories' watches and "
                        "their own requests", "directory" if inode.is_dir else "file",
                        inode.nodeid, exc)

    def removed(self, inode: Inode) -> None:
        nodeid = inode.nodeid
        with self._lock:
            if self._unwatched:
                self._unwatched.discard(nodeid)
                if not self._unwatched:
                    self._files_off = False
                    self._names.clear()         # only the fallback (an unwatched inode) uses them
            wd = self._wd_of.pop(nodeid, None)
            if wd is None:
                return
            if inode.is_dir:
                if self._dirs.get(wd, (None,))[0] != nodeid:
                    return
                del self._dirs[wd]
            else:
                nodeids = self._files.get(wd, ())
                if nodeid not in nodeids:
                    return
                rest = tuple(n for n in nodeids if n != nodeid)
                if rest:
                    self._files[wd] = rest
                    return
                del self._files[wd]
            try:
                (self.inotify if inode.is_dir else self.file_inotify).rm_watch(wd)
            except OSError as exc:       # EINVAL: the kernel dropped it already (inode evicted)
                log.debug("inotify_rm_watch(%d) of nodeid %d: %s", wd, nodeid, exc)

    # -- the server loop -----------------------------------------------------------------------
    def drain(self) -> int:
        """Read every queued event (non-blocking) and bump the slots they concern; returns the
        number of events read (0: nothing was queued, at the cost of one zero-timeout poll)."""
        ready = self._poll.poll(0)
        if not ready:
            return 0
        count = 0
        with self._lock:
            for fd, _ in ready:
                queue = self._queues.get(fd)
                if queue is None or queue.fd < 0:
                    continue                   # closed meanwhile
                # (watch descriptors are per instance: each queue's name only its own watches)
                dirs = self._dirs if queue is self.inotify else {}
                files = self._files if queue is self.file_inotify else {}
                data = queue.read()
                while data:
                    count += self._apply(data, dirs, files)
                    if len(data) <= READ_SIZE - 2 * _MAX_EVENT:     # a short read: queue empty
                        break
                    data = queue.read()
        self.events += count
        return count

    def _apply(self, data: bytes, dirs: dict[int, tuple[int, int]],
               files: dict[int, tuple[int, ...]]) -> int:
        """Bump what the events in ``data`` concern; ``dirs`` / ``files``: the watches of the queue
        ``data`` was read from (``_dirs`` / ``_files``, or {})."""
        bump: set[int] = set()
        count = 0
        names = self._names
        known = self.inodes.known
        for wd, mask, _cookie, name in parse_events(data):
            count += 1
            if mask & IN_Q_OVERFLOW:
                self.overflows += 1
                log.warning("inotify queue overflowed: every version slot is bumped")
                self.table.bump_all()
                continue
            watched = dirs.get(wd)
            if watched is None:
                nodeids = files.get(wd)
                if nodeids is None:
                    continue                   # a watch removed already (its IN_IGNORED, say)
                if mask & IN_IGNORED:          # the kernel dropped it (not our rm_watch: mapped)
                    del files[wd]
                    self._lost(wd, nodeids)
                bump.update(nodeids)
                continue
            nodeid, dirfd = watched
            if mask & IN_IGNORED:              # the watch is gone (directory evicted, unmounted)
                del dirs[wd]
                self._lost(wd, (nodeid,))
                bump.add(nodeid)
                continue
            if not name:
                bump.add(nodeid)
                continue
            if mask & NAMESPACE_EVENTS:
                bump.add(nodeid)
                if names:
                    names.pop((wd, name), None)
                if not self._unwatched:        # an inode the name stands for (came, went) that
                    continue                   # is in the store had its own event (ATTRIB, MOVE_SELF)
            elif not self._unwatched:          # ditto: the entry's own watch reported it
                continue
            else:
                child = names.get((wd, name))
                if child is not None and known(child):
                    bump.add(child)
                    continue
            child = self._child(wd, dirfd, name)
            if child is not None:
                bump.add(child)
        if bump:
            self.table.bump(bump)
        return count

    def _lost(self, wd: int, nodeids: tuple[int, ...]) -> None:
        """The kernel dropped watch ``wd`` of ``nodeids``: those still in the store are unwatched
        (``removed`` pops ``_wd_of`` first: a nodeid mapped to ``wd`` has not been removed)."""
        for n in nodeids:
            if self._wd_of.get(n) == wd:
                del self._wd_of[n]
                self._unwatch(n)

    def _child(self, wd: int, dirfd: int, name: bytes) -> int | None:
        """The nodeid the store knows as entry ``name`` of the directory (remembered), or None."""
        try:
            st = os.stat(name, dir_fd=dirfd, follow_symlinks=False)
        except OSError:
            return None                        # gone already (DELETE, MOVED_FROM, or raced away)
        child = self.inodes.nodeid_of((st.st_dev, st.st_ino))
        if child is not None:
            if len(self._names) >= _MAX_NAMES:
                self._names.clear()
            self._names[(wd, name)] = child
        return child

    def close(self) -> None:
        """Stop observing the store and close the inotify fds (watches go with them)."""
        self.inodes.remove_observer(self)
        with self._lock:
            self._dirs.clear()
            self._files.clear()
            self._wd_of.clear()
            self._unwatched.clear()
            self._names.clear()
            self._queues.clear()
            if self._epoll is not None:
                self._epoll.close()
            if self.file_inotify is not self.inotify:
                self.file_inotify.close()
            self.inotify.close()
