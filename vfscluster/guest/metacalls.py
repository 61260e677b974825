"""The metadata calls of :class:`~vfscluster.guest.gos.GuestOS` — ``access``, ``chmod``,
``chown``, ``utime``, ``truncate``, ``statvfs`` — by path or by descriptor (a mixin: GuestOS
provides ``client``, ``uid``/``gid``/``groups``, ``_lookup``, ``_walk``, ``_by_fd``,
``_setattr``, ``ftruncate``).  Each path may be relative to a ``dir_fd`` (:mod:`.dirfd`).

Permissions are the VFS's (virtio-fs mounts with ``default_permissions``): :meth:`access`
decides from the attributes for :attr:`uid`, including search permission on every directory the
path walks through; the other calls leave the decision to the host.
"""

from __future__ import annotations

import errno
import os
import stat
import time
from typing import Any

from ..fuse.abi import Attr, SetattrValid
from .dirfd import c_dir_fd
from .namei import Node, oserror
from .osargs import c_int, c_off, check_time, errors, fspath, named, time_to_ns

__all__ = ["MetaCalls", "MOUNT_FLAGS"]

#: statvfs f_flag of a virtio-fs mount with Linux's default options (relatime)
MOUNT_FLAGS = os.ST_RELATIME
_NO_NS = object()          # utime's ns not given (os refuses an explicit None)
_NO_ID = (1 << 32) - 1     # uid_t -1: leave unchanged


def c_uid(value: Any, what: str) -> int:
    """A uid or gid as ``os.chown`` takes it: an integer, -1 (as (uid_t)-1) or 0..2^32-1."""
    if not isinstance(value, int):
        raise TypeError(f"{what} should be integer, not {type(value).__name__}")
    if value == -1:
        return _NO_ID
    if value < 0:
        raise OverflowError(f"{what} is less than minimum")
    if value > _NO_ID:
        raise OverflowError(f"{what} is greater than maximum")
    return value


class MetaCalls:
    """access, chmod, chown, utime, truncate, statvfs; mixed into GuestOS."""

    def access(self, path: Any, mode: int, *, dir_fd: Any = None,
               follow_symlinks: bool = True) -> bool:
        """``os.access``, decided the way virtio-fs (``default_permissions``) decides it: by the
        VFS from the attributes (fs/namei.c generic_permission), for :attr:`uid`/:attr:`gid`.
        False for any OSError (a bad ``dir_fd`` too)."""
        raw, p = fspath(path, "access")
        mode, dir_fd = c_int(mode), c_dir_fd(dir_fd)
        if mode & ~(os.R_OK | os.W_OK | os.X_OK):
            return False
        try:
            with errors(p), self._walk(raw, dir_fd) as w:
                if self.uid != 0:           # every directory walked through must be searchable
                    w.search = self._may_search
                node = w.resolve(raw, follow=follow_symlinks)
            with errors(p):
                try:
                    attr = self._attr(node)
                finally:
                    self.client.put(node.nodeid)
        except OSError:
            return False
        return self._permitted(attr, mode)

    def _attr(self, node: Node) -> Attr:
        return node.attr if node.attr is not None else self.client.getattr(node.nodeid).attr

    def _may_search(self, directory: Node) -> None:
        if not self._permitted(self._attr(directory), os.X_OK):
            raise oserror(errno.EACCES)

    def _permitted(self, attr: Attr, mask: int) -> bool:
        is_dir = stat.S_ISDIR(attr.mode)
        if self.uid == 0:               # CAP_DAC_OVERRIDE / CAP_DAC_READ_SEARCH
            return is_dir or not mask & os.X_OK or bool(attr.mode & 0o111)
        if attr.uid == self.uid:
            bits = attr.mode >> 6
        elif attr.gid == self.gid or attr.gid in self.groups:
            bits = attr.mode >> 3
        else:
            bits = attr.mode
        return not mask & ~bits & 7

    def chmod(self, path: Any, mode: int, *, dir_fd: Any = None,
              follow_symlinks: bool = True) -> None:
        """``os.chmod`` (SETATTR of the mode; the kernel keeps the file type bits).  As on
        Linux (glibc 2.32+), ``follow_symlinks=False`` changes a file that is not a symlink and
        is NotImplementedError for a symlink, whose mode Linux cannot change (ValueError with
        a ``dir_fd``: CPython then blames the pair).  A descriptor ignores
        ``dir_fd`` (fchmod), as ``os`` does."""
        mode, dir_fd = c_int(mode), c_dir_fd(dir_fd)
        if isinstance(path, int):                 # (os takes follow_symlinks=False with an fd)
            with self._by_fd(path, "chmod") as f:
                self._chmod(f.node, mode)
            return
        with self._lookup(path, "chmod", follow=follow_symlinks, fresh=True,
                          dir_fd=dir_fd) as node:
            if node.is_symlink:     # glibc's fchmodat(AT_SYMLINK_NOFOLLOW): EOPNOTSUPP on a link
                if dir_fd is not None:
                    raise ValueError("chmod: cannot use dir_fd and follow_symlinks together")
                raise NotImplementedError("chmod: follow_symlinks unavailable on this platform")
            self._chmod(node, mode)

    def _chmod(self, node: Node, mode: int) -> None:
        fmt = node.fmt
        self._setattr(node.nodeid, SetattrValid.MODE, mode=(mode & 0o7777) | fmt)

    def chown(self, path: Any, uid: int, gid: int, *, dir_fd: Any = None,
              follow_symlinks: bool = True) -> None:
        """``os.chown`` (an int is a descriptor: ``fchown``, ValueError with a ``dir_fd``;
        ``follow_symlinks=False``: ``lchown``): SETATTR of the owner and group; -1 leaves one
        unchanged.  The host's chown drops set-user-ID (and group-executable set-group-ID)
        bits, as Linux's does."""
        uid, gid, dir_fd = c_uid(uid, "uid"), c_uid(gid, "gid"), c_dir_fd(dir_fd)
        self._no_dir_fd_with_fd("chown", path, dir_fd, both=True)
        valid = (SetattrValid.UID if uid != _NO_ID else 0) | (SetattrValid.GID if gid != _NO_ID else 0)
        if isinstance(path, int):
            with self._by_fd(path, "chown", follow_symlinks=follow_symlinks) as f:
                if valid:
                    self._setattr(f.nodeid, valid, uid=uid, gid=gid)
            return
        with self._lookup(path, "chown", follow=follow_symlinks, fresh=True,
                          dir_fd=dir_fd) as node:
            if valid:
                self._setattr(node.nodeid, valid, uid=uid, gid=gid)

    def lchown(self, path: Any, uid: int, gid: int) -> None:
        """``os.lchown``: :meth:`chown` of a symlink itself."""
        self.chown(path, uid, gid, follow_symlinks=False)

    def utime(self, path: Any, times: Any = None, *, ns: Any = _NO_NS, dir_fd: Any = None,
              follow_symlinks: bool = True) -> None:
        """``os.utime``: ``times`` (seconds, int or float) or ``ns``; neither means now.  As
        CPython's, its errors carry no file name; seconds past a ``time_t`` are OverflowError;
        a descriptor with a ``dir_fd`` is ValueError."""
        dir_fd = c_dir_fd(dir_fd)
        if times is not None and ns is not _NO_NS:
            raise ValueError("utime: you may specify either 'times' or 'ns' but not both")
        now = time.time_ns()
        if times is not None:
            if not isinstance(times, tuple) or len(times) != 2:
                raise TypeError("utime: 'times' must be either a tuple of two ints or None")
            a_ns, m_ns = (check_time(time_to_ns(t, "utime")) for t in times)
            valid = SetattrValid.ATIME | SetattrValid.MTIME
        elif ns is not _NO_NS:
            if not isinstance(ns, tuple) or len(ns) != 2 or \
                    not all(isinstance(v, int) for v in ns):
                raise TypeError("utime: 'ns' must be a tuple of two ints")
            a_ns, m_ns = (check_time(v) for v in ns)
            valid = SetattrValid.ATIME | SetattrValid.MTIME
        else:
            a_ns = m_ns = now
            valid = (SetattrValid.ATIME | SetattrValid.MTIME | SetattrValid.ATIME_NOW
                     | SetattrValid.MTIME_NOW)
        self._no_dir_fd_with_fd("utime", path, dir_fd)
        if isinstance(path, int):
            with self._by_fd(path, "utime", follow_symlinks=follow_symlinks, filename=False) as f:
                self._setattr(f.nodeid, valid, atime_ns=a_ns, mtime_ns=m_ns)
            return
        with self._lookup(path, "utime", follow=follow_symlinks, filename=None, fresh=True,
                          dir_fd=dir_fd) as node:
            self._setattr(node.nodeid, valid, atime_ns=a_ns, mtime_ns=m_ns)

    def truncate(self, path: Any, length: int) -> None:
        """``os.truncate`` (an int is a descriptor): EINVAL for a negative length before the
        path is walked, EISDIR for a directory, EINVAL for another non-regular file."""
        if isinstance(path, int):
            return self.ftruncate(path, length)
        if c_off(length) < 0:
            raise named(oserror(errno.EINVAL), os.fspath(path))
        with self._lookup(path, "truncate", fresh=True) as node:
            if node.is_dir:
                raise oserror(errno.EISDIR)
            if not node.is_reg:
                raise oserror(errno.EINVAL)
            self._setattr(node.nodeid, SetattrValid.SIZE | SetattrValid.LOCKOWNER, size=length)

    def statvfs(self, path: Any) -> os.statvfs_result:
        """``os.statvfs`` (an int is a descriptor)."""
        if isinstance(path, int):
            with self._by_fd(path, "statvfs", o_path=True) as f:
                return self.client.statfs(f.nodeid).to_statvfs_result(MOUNT_FLAGS)
        with self._lookup(path, "statvfs") as node:
            return self.client.statfs(node.nodeid).to_statvfs_result(MOUNT_FLAGS)
