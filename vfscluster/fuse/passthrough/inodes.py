"""The inode store: nodeid <-> host inode, with lookup counts per session.

A host inode is keyed by ``(st_dev, st_ino)`` and gets one global nodeid, the same in every
session (the metadata-version table is indexed by nodeid, and two guests must agree on it).
Nodeids are never reused (a counter from 2; :data:`ROOT_ID` is the share root), so the FUSE
generation is always 0.  Each inode holds an ``O_PATH | O_NOFOLLOW`` fd, which also keeps the
host inode alive and its ``(st_dev, st_ino)`` from being reused while it is in the store.

Lookup counts are kept per session: LOOKUP and friends add to ``refs[session]``, FORGET takes
away, and the inode (and its fd) goes when no session holds a count.  The root is never dropped
and needs no count.

Unknown nodeids, and nodeids that the asking session holds no count for, are EBADF (as
virtiofsd answers): a guest can only name inodes it was given.

Observers (:meth:`InodeStore.add_observer`: the host's inotify watcher, its DAX) hear of every inode
that enters or leaves the store, synchronously: ``added(inode)`` before the acquiring call returns
(so before anyone reads the new inode's attributes through the store), ``removed(inode)`` while
its fd is still open.  Both are called with the store's lock held: an observer must not call the
store's locking methods, and it handles its own errors (it must not raise).
"""

from __future__ import annotations

import errno
import itertools
import os
import stat
import threading
from collections.abc import Iterable
from typing import Protocol

from ..abi import ROOT_ID


def ebadf() -> OSError:
    return OSError(errno.EBADF, os.strerror(errno.EBADF))


class Inode:
    """One host inode: its O_PATH ``fd``, ``key`` (st_dev, st_ino), file type bits ``fmt``
    (``st_mode & S_IFMT``) and lookup counts by session."""

    __slots__ = ("nodeid", "fd", "key", "fmt", "refs")

    def __init__(self, nodeid: int, fd: int, key: tuple[int, int], fmt: int) -> None:
        self.nodeid = nodeid
        self.fd = fd
        self.key = key
        self.fmt = fmt
        self.refs: dict[int, int] = {}

    @property
    def is_dir(self) -> bool:
        return self.fmt == stat.S_IFDIR

    @property
    def is_symlink(self) -> bool:
        return self.fmt == stat.S_IFLNK

    def __repr__(self) -> str:
        return f"Inode(nodeid={self.nodeid}, fd={self.fd}, key={self.key}, refs={self.refs})"


class InodeObserver(Protocol):
    """Told of inodes entering and leaving the store (see the module docstring)."""

    def added(self, inode: Inode) -> None: ...

    def removed(self, inode: Inode) -> None: ...


class InodeStore:
    """Thread-safe map nodeid -> :class:`Inode` and (st_dev, st_ino) -> Inode."""

    def __init__(self, root_fd: int, root_st: os.stat_result) -> None:
        self._lock = threading.Lock()
        self._observers: list[InodeObserver] = []
        self._next = itertools.count(ROOT_ID + 1)
        self.root = Inode(ROOT_ID, root_fd, (root_st.st_dev, root_st.st_ino), stat.S_IFDIR)
        self._by_id: dict[int, Inode] = {ROOT_ID: self.root}
        self._by_key: dict[tuple[int, int], Inode] = {self.root.key: self.root}

    def __len__(self) -> int:
        return len(self._by_id)

    # ------------------------------------------------------------------ reading

    def get(self, session: int, nodeid: int) -> Inode:
        """The inode ``session`` knows as ``nodeid``; EBADF if it holds no count for it."""
        inode = self._by_id.get(nodeid)
        if inode is None or (nodeid != ROOT_ID and session not in inode.refs):
            raise ebadf()
        return inode

    def get_any(self, nodeid: int) -> Inode:
        """The inode ``nodeid`` whoever holds it (for the host's own use); EBADF if unknown."""
        inode = self._by_id.get(nodeid)
        if inode is None:
            raise ebadf()
        return inode

    def known(self, nodeid: int) -> bool:
        """Is ``nodeid`` in the store?  (Nodeids are never reused: while it is, it names the same
        host inode.)"""
        return nodeid in self._by_id

    def nodeid_of(self, key: tuple[int, int]) -> int | None:
        """The nodeid of host inode ``key`` if the store has one."""
        inode = self._by_key.get(key)
        return None if inode is None else inode.nodeid

    def refs(self, session: int, nodeid: int) -> int:
        """The lookup count ``session`` holds on ``nodeid`` (0 if none or unknown)."""
        inode = self._by_id.get(nodeid)
        return 0 if inode is None else inode.refs.get(session, 0)

    def held_by(self, session: int) -> int:
        """How many inodes ``session`` holds a lookup count on (the root, which needs none, aside)."""
        with self._lock:
            return sum(1 for inode in self._by_id.values() if session in inode.refs)

    def add_observer(self, observer: InodeObserver) -> None:
        """Install ``observer``; it is told ``added`` at once for every inode already in the
        store, the root included."""
        with self._lock:
            self._observers.append(observer)
            for inode in self._by_id.values():
                observer.added(inode)

    def remove_observer(self, observer: InodeObserver) -> None:
        with self._lock:
            if observer in self._observers:
                self._observers.remove(observer)

    # ------------------------------------------------------------------ counting

    def acquire(self, session: int, fd: int, st: os.stat_result) -> Inode:
        """Add one count for the inode of O_PATH ``fd`` (described by ``st``).  The store takes
        ``fd``: it keeps it for a new inode, or closes it when the inode was already known."""
        key = (st.st_dev, st.st_ino)
        with self._lock:
            inode = self._by_key.get(key)
            if inode is None:
                inode = Inode(next(self._next), fd, key, stat.S_IFMT(st.st_mode))
                self._by_id[inode.nodeid] = inode
                self._by_key[key] = inode
                fd = -1
                for observer in self._observers:
                    observer.added(inode)
            if inode.nodeid != ROOT_ID:
                inode.refs[session] = inode.refs.get(session, 0) + 1
        if fd >= 0:
            os.close(fd)
        return inode

    def acquire_key(self, session: int, key: tuple[int, int]) -> Inode | None:
        """Add one count to the inode with ``key`` if the store has it (its fd keeps the host
        inode alive, so the key still names the same file); None otherwise."""
        with self._lock:
            inode = self._by_key.get(key)
            if inode is not None and inode.nodeid != ROOT_ID:
                inode.refs[session] = inode.refs.get(session, 0) + 1
        return inode

    def acquire_known(self, session: int, inode: Inode) -> None:
        """Add one count to an inode already in the store (e.g. LINK's source)."""
        if inode.nodeid == ROOT_ID:
            return
        with self._lock:
            if self._by_id.get(inode.nodeid) is not inode:
                raise ebadf()
            inode.refs[session] = inode.refs.get(session, 0) + 1

    def forget(self, session: int, nodeid: int, nlookup: int) -> None:
        """Take ``nlookup`` counts of ``session`` from ``nodeid``; unknown nodeids are ignored."""
        self.forget_many(session, ((nodeid, nlookup),))

    def forget_many(self, session: int, items: Iterable[tuple[int, int]]) -> None:
        """:meth:`forget` for each ``(nodeid, nlookup)``, under one lock."""
        dead: list[int] = []
        with self._lock:
            for nodeid, nlookup in items:
                inode = self._by_id.get(nodeid)
                if inode is None or nodeid == ROOT_ID:
                    continue
                left = inode.refs.get(session, 0) - nlookup
                if left > 0:
                    inode.refs[session] = left
                    continue
                inode.refs.pop(session, None)
                if not inode.refs:
                    dead.append(self._remove(inode))
        for fd in dead:
            os.close(fd)

    def drop_session(self, session: int) -> int:
        """Take away every count ``session`` holds; returns how many inodes were released."""
        dead: list[int] = []
        with self._lock:
            for inode in list(self._by_id.values()):
                if inode.refs.pop(session, None) is not None and not inode.refs:
                    dead.append(self._remove(inode))
        for fd in dead:
            os.close(fd)
        return len(dead)

    def _remove(self, inode: Inode) -> int:
        for observer in self._observers:
            observer.removed(inode)
        del self._by_id[inode.nodeid]
        if self._by_key.get(inode.key) is inode:
            del self._by_key[inode.key]
        fd, inode.fd = inode.fd, -1
        return fd

    def close(self) -> None:
        """Close every fd, the root's included (the store is unusable afterwards)."""
        with self._lock:
            self._observers.clear()
            fds = [inode.fd for inode in self._by_id.values() if inode.fd >= 0]
            for inode in self._by_id.values():
                inode.fd = -1
            self._by_id.clear()
            self._by_key.clear()
        for fd in fds:
            os.close(fd)
