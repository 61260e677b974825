"""Open file and directory handles, per session.

A FUSE ``fh`` names one open host fd (``open``/``create``/``opendir`` made it, ``release`` /
``releasedir`` or :meth:`HandleTable.drop_session` closes it).  fh numbers come from one counter
shared by all sessions, so an fh is never valid in two sessions, and a session cannot use
another's fh: lookups are keyed by (session, fh); an unknown fh is EBADF.

A directory handle also keeps the listing it serves: a snapshot of the directory taken by the
first READDIR at offset 0 (and again at each later offset 0, i.e. ``rewinddir``), so offsets
are stable indexes into it (cookie of entry ``i`` = ``i + 1``) whatever happens to the
directory meanwhile, as getdents on a local directory keeps its position.
"""

from __future__ import annotations

import errno
import itertools
import os
import stat
import threading
from dataclasses import dataclass, field


def ebadf() -> OSError:
    return OSError(errno.EBADF, os.strerror(errno.EBADF))


@dataclass(eq=False, slots=True)
class Handle:
    """An open fd on inode ``nodeid``; ``is_dir`` for OPENDIR handles, which carry ``entries``
    (the listing snapshot: ``(st_ino, DT_* type, name)`` tuples) under ``lock``."""

    fd: int
    nodeid: int
    is_dir: bool = False
    entries: list[tuple[int, int, bytes]] | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)


class HandleTable:
    """Thread-safe (session, fh) -> :class:`Handle`."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._next = itertools.count(1)
        self._by_session: dict[int, dict[int, Handle]] = {}

    def add(self, session: int, handle: Handle) -> int:
        """Register ``handle`` (the table now owns its fd) and return its new fh."""
        fh = next(self._next)
        with self._lock:
            self._by_session.setdefault(session, {})[fh] = handle
        return fh

    def get(self, session: int, fh: int) -> Handle:
        """The handle ``session`` opened as ``fh``; EBADF if there is none."""
        handles = self._by_session.get(session)
        handle = None if handles is None else handles.get(fh)
        if handle is None:
            raise ebadf()
        return handle

    def remove(self, session: int, fh: int) -> Handle:
        """Take ``fh`` out of the table (the caller closes its fd); EBADF if unknown."""
        with self._lock:
            handles = self._by_session.get(session)
            handle = None if handles is None else handles.pop(fh, None)
            if handles is not None and not handles:
                del self._by_session[session]
        if handle is None:
            raise ebadf()
        return handle

    def count(self, session: int | None = None) -> int:
        """Open handles of ``session`` (of all sessions when None)."""
        with self._lock:
            if session is not None:
                return len(self._by_session.get(session, ()))
            return sum(len(h) for h in self._by_session.values())

    def drop_session(self, session: int) -> int:
        """Close every handle of ``session``; returns how many."""
        with self._lock:
            handles = self._by_session.pop(session, {})
        for handle in handles.values():
            close_handle(handle)
        return len(handles)

    def close(self) -> None:
        """Close every handle of every session."""
        with self._lock:
            sessions, self._by_session = self._by_session, {}
        for handles in sessions.values():
            for handle in handles.values():
                close_handle(handle)


def close_handle(handle: Handle) -> None:
    """Close ``handle``'s fd once."""
    fd, handle.fd = handle.fd, -1
    if fd >= 0:
        os.close(fd)


_DT_DIR = stat.S_IFDIR >> 12


def snapshot(fd: int, is_root: bool) -> list[tuple[int, int, bytes]]:
    """The listing of open directory ``fd``: ``.``, ``..`` then every entry, as
    ``(st_ino, DT_* type, name)``.  ``..`` of the share root is reported as the root itself.
    A directory removed while open lists nothing, not even ``.`` and ``..`` (as getdents)."""
    st = os.fstat(fd)
    if st.st_nlink == 0:
        return []
    up = st if is_root else os.stat("..", dir_fd=fd, follow_symlinks=False)
    out = [(st.st_ino, _DT_DIR, b"."), (up.st_ino, _DT_DIR, b"..")]
    with os.scandir(fd) as it:  # on a dup of fd; rewound when closed
        for e in it:
            out.append((e.inode(), _dtype(e), os.fsencode(e.name)))
    return out


def _dtype(e: os.DirEntry) -> int:
    if e.is_symlink():
        return stat.S_IFLNK >> 12
    if e.is_dir(follow_symlinks=False):
        return _DT_DIR
    if e.is_file(follow_symlinks=False):
        return stat.S_IFREG >> 12
    try:
        return stat.S_IFMT(e.stat(follow_symlinks=False).st_mode) >> 12
    except OSError:
        return 0  # DT_UNKNOWN: it vanished meanwhile
