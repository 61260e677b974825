"""GuestOS: the file API a guest workload uses, shaped like the ``os`` module.

Paths are inside the mount: ``/`` is the share root, and relative paths are relative to it too
(the working directory never moves), unless a ``dir_fd`` names the directory they start from.  ``str`` or ``bytes`` (or path-like) paths are accepted and
results come back in the caller's type, as ``os`` does.  File descriptors are guest-local ints,
lowest free first, from 3.

Errors are ``OSError`` with exactly the errno ``os`` raises for the same call on a local Linux
file system, and the same ``filename`` / ``filename2``.  That takes a kernel-like VFS in front of
FUSE, which is what this module and its helpers are (``fs/open.c``, ``fs/namei.c``,
``fs/read_write.c``, ``fs/xattr.c``, ``fs/stat.c``): the argument checks and their order
(:mod:`~vfscluster.guest.osargs`), path walking (:mod:`~vfscluster.guest.namei`) — from the root
or from a ``dir_fd`` (:mod:`~vfscluster.guest.dirfd`) —, the checks the VFS makes before it asks
the file system, the descriptor table (:mod:`~vfscluster.guest.files`), the descriptor calls
(:mod:`~vfscluster.guest.fdcalls`, vectored ones in :mod:`~vfscluster.guest.vectorcalls`) and
directory listings, by path or descriptor (:mod:`~vfscluster.guest.dircalls`).  A malformed
reply from the host is EIO, as the kernel makes it.  Opening a FIFO sends nothing to the host:
it gives a pipe local to the mount, shared by every opener in this guest and by no other guest
(:mod:`~vfscluster.guest.fifo`).

What is kept between calls (dentries, attributes, directory listings, file data) is the mount's
:class:`~vfscluster.guest.cache.CachePolicy`'s business: nothing with ``cache=none``.  Locks
(``fcntl_lock``, ``lockf``, ``flock``): :mod:`~vfscluster.guest.locks`; ``mmap`` (DAX mounts only):
:mod:`~vfscluster.guest.daxfiles`.
"""

from __future__ import annotations

import errno
import operator
import os
import stat
import threading
from contextlib import contextmanager
from typing import Any, Iterator

from ..fuse.abi import InitFlags, SetattrValid, encode_dev
from .client import FuseClient
from .daxfiles import DaxCalls
from .dircalls import DirCalls
from .dirfd import DirFd, c_dir_fd
from .fdcalls import FdCalls
from .fifo import FifoFile, fifos_of
from .files import FdTable, OpenFile
from .locks import LockCalls
from .metacalls import MetaCalls
from .namei import Last, LastType, Node, PathWalk, check_path, oserror
from .osargs import c_int, errors, fspath, process_umask
from .vectorcalls import VectorCalls
from .xattrcalls import XattrCalls

__all__ = ["GuestOS"]

_O_PATH_FLAGS = os.O_DIRECTORY | os.O_NOFOLLOW | os.O_PATH | os.O_CLOEXEC
_O_TMPFILE_ONLY = os.O_TMPFILE & ~os.O_DIRECTORY
_MKNOD_TYPES = (0, stat.S_IFREG, stat.S_IFCHR, stat.S_IFBLK, stat.S_IFIFO, stat.S_IFSOCK)


class GuestOS(DirFd, DirCalls, FdCalls, VectorCalls, MetaCalls, XattrCalls, LockCalls,
              DaxCalls):
    """The ``os``-like API over one mount's :class:`~vfscluster.guest.client.FuseClient`.

    ``umask``: the guest process's file-creation mask (default: this process's).  ``uid``,
    ``gid``, ``groups``: whom :meth:`access` checks for (default: the client's credentials, else
    this process's).  Every method may be called from several threads at once.
    """

    def __init__(self, client: FuseClient, *, umask: int | None = None, uid: int | None = None,
                 gid: int | None = None, groups: tuple[int, ...] | None = None) -> None:
        self.client = client
        creds = client.creds
        self.uid = uid if uid is not None else (creds.uid if creds else os.geteuid())
        self.gid = gid if gid is not None else (creds.gid if creds else os.getegid())
        self.groups = frozenset(groups if groups is not None else
                                (os.getgroups() if uid is None and creds is None else ()))
        self._umask = process_umask() if umask is None else umask & 0o777
        self._fds = FdTable()
        self._fifos = fifos_of(client)         # the mount's FIFO pipes, shared by its GuestOSes
        self._lock = threading.Lock()
        #: st_dev of every stat result (the mount's anonymous device number)
        self.st_dev = 0
        # the kernel's lock owner: a hash of the process's files_struct
        self.lock_owner = (id(self) * 0x9E3779B97F4A7C15) & 0xFFFF_FFFF_FFFF_FFFF
        self._init_locks()

    # ================================================================== process state

    def umask(self, mask: int) -> int:
        """Set the file-creation mask; returns the previous one."""
        with self._lock:
            old, self._umask = self._umask, mask & 0o777
        return old

    def open_fds(self) -> list[int]:
        """The descriptors currently open."""
        return self._fds.fds()

    # ================================================================== open / close

    @contextmanager
    def _by_fd(self, fd: int, func: str, *, follow_symlinks: bool = True, o_path: bool = False,
               filename: bool = True) -> Iterator[OpenFile]:
        """The open file of ``fd`` given where a path may go (``os.stat(fd)``, ``os.chmod(fd)``...):
        ValueError with ``follow_symlinks=False``; EBADF for an O_PATH descriptor unless the call
        takes one (``o_path``: fstat, fstatfs); errors name the descriptor, as ``os`` names it,
        unless ``filename`` is False (``os.utime``)."""
        if not follow_symlinks:
            raise ValueError(f"{func}: cannot use fd and follow_symlinks together")
        with errors(fd if filename else None):
            f = self._fds.get(fd)
            try:
                if f.is_path and not o_path:
                    raise oserror(errno.EBADF)
                yield f
            finally:
                f.put()

    def open(self, path: Any, flags: int, mode: int = 0o777, *, dir_fd: Any = None) -> int:
        """``os.open``: a new descriptor for ``path`` (relative to ``dir_fd``: :mod:`.dirfd`).

        fs/namei.c ``path_openat``: ``O_PATH`` keeps only O_DIRECTORY|O_NOFOLLOW; O_CREAT with
        O_DIRECTORY is EINVAL; with O_CREAT a missing last component is created (also at the
        end of a dangling symlink), a trailing slash is EISDIR, O_EXCL makes any existing name
        EEXIST (symlinks are not followed); O_NOFOLLOW on a symlink is ELOOP; O_DIRECTORY or a
        trailing slash on a non-directory is ENOTDIR; a directory opened for writing (or with
        O_TRUNC) is EISDIR.  O_TRUNC truncates an existing regular file.  A FIFO opens the
        guest-local pipe (:mod:`.fifo`: a blocking O_RDONLY / O_WRONLY waits for the other end,
        O_NONBLOCK O_WRONLY without a reader is ENXIO), after the permission check the VFS makes
        (EACCES), since no OPEN goes to the host.
        """
        raw, p = fspath(path, "open")
        flags, mode, dir_fd = c_int(flags), c_int(mode), c_dir_fd(dir_fd)
        with errors(p):
            return self._open(raw, flags, mode, dir_fd)

    def _open(self, raw: bytes, flags: int, mode: int, dir_fd: int | None) -> int:
        if flags & os.O_PATH:
            flags &= _O_PATH_FLAGS
        if flags & _O_TMPFILE_ONLY:
            return self._tmpfile(raw, flags, dir_fd)
        if flags & os.O_CREAT and flags & os.O_DIRECTORY:
            raise oserror(errno.EINVAL)
        check_path(raw)                 # getname(): its ENOENT / ENAMETOOLONG come before EMFILE
        # get_unused_fd_flags: EMFILE before anything is looked up, opened or created, and the
        # number stays this open's meanwhile (no concurrent open or dup takes it)
        fd = self._fds.reserve()
        try:
            file = self._open_file(raw, flags, mode, dir_fd)
        except BaseException:
            self._fds.unreserve(fd)
            raise
        self._fds.install_reserved(fd, file)
        return fd

    def _open_file(self, raw: bytes, flags: int, mode: int, dir_fd: int | None) -> OpenFile:
        """:meth:`_open` once its descriptor is reserved: the open file (which owns its node)."""
        c = self.client
        flags &= ~os.O_CLOEXEC
        is_path = bool(flags & os.O_PATH)
        creat = bool(flags & os.O_CREAT) and not is_path
        excl = creat and bool(flags & os.O_EXCL)
        nofollow = bool(flags & os.O_NOFOLLOW) or excl
        must_dir = bool(flags & os.O_DIRECTORY)
        acc = flags & os.O_ACCMODE
        may_write = not is_path and (acc != os.O_RDONLY or bool(flags & os.O_TRUNC))
        with self._walk(raw, dir_fd) as w:
            last = w.parent(raw)
            slashed = False
            created = None
            while True:
                slashed = slashed or last.slash
                node = w.last_node(last)
                if node is not None:
                    break
                if creat:
                    if last.slash:
                        raise oserror(errno.EISDIR)
                    node = w.lookup_opt(last.name, fresh=True)
                    if node is None:
                        fmode = stat.S_IFREG | (mode & 0o7777 & ~self._umask)
                        created = c.create(w.dir.nodeid, last.name, flags, fmode, self._umask)
                        node = Node(created[0].nodeid, created[0].attr)
                        break
                else:
                    node = w.lookup(last.name, fresh=may_write or c.cache.close_to_open)
                if node.is_symlink and (not nofollow or slashed):
                    last = w.follow(node)
                    continue
                break
        # node is pinned from here on: it becomes the file's, or is put on failure
        try:
            if c.dax is not None:
                c.dax.opened(node.nodeid)
            if created is not None:
                file = OpenFile(node, created[1].fh, flags, created[1].open_flags, self._released)
            else:
                file = self._open_node(node, flags, creat, excl, must_dir or slashed, may_write)
        except BaseException:
            if created is not None:
                c.release(node.nodeid, created[1].fh, flags)
            c.put(node.nodeid)
            raise
        return file

    def _open_node(self, node: Node, flags: int, creat: bool, excl: bool, must_dir: bool,
                   may_write: bool) -> OpenFile:
        """fs/namei.c ``do_open`` and ``may_open`` for an existing node, then OPEN/OPENDIR: the
        open file, which owns ``node``; on failure nothing is left open and ``node`` is still
        the caller's to put."""
        c = self.client
        if creat:
            if excl:
                raise oserror(errno.EEXIST)
            if node.is_dir:
                raise oserror(errno.EISDIR)
        if must_dir and not node.is_dir:
            raise oserror(errno.ENOTDIR)
        if flags & os.O_PATH:
            return OpenFile(node, None, flags, 0, self._released)
        if node.is_symlink:
            raise oserror(errno.ELOOP)
        if node.fmt == stat.S_IFIFO:
            return self._open_fifo(node, flags)
        if node.is_dir and may_write:
            raise oserror(errno.EISDIR)
        if node.is_dir:
            opened = c.opendir(node.nodeid, flags)
        else:
            opened = c.open(node.nodeid, flags)
        try:
            if flags & os.O_TRUNC and node.is_reg and not c.flags & InitFlags.ATOMIC_O_TRUNC:
                # fs/open.c handle_truncate; fs/fuse/dir.c sends no FATTR_MTIME for it
                self._setattr(node.nodeid, SetattrValid.SIZE | SetattrValid.FH
                              | SetattrValid.LOCKOWNER, fh=opened.fh, size=0)
            elif flags & os.O_TRUNC and node.is_reg and c.dax is not None:
                c.dax.truncated(node.nodeid, 0)
        except BaseException:
            c.release(node.nodeid, opened.fh, flags)    # (the node stays the caller's)
            raise
        return OpenFile(node, opened.fh, flags, opened.open_flags, self._released)

    def _open_fifo(self, node: Node, flags: int) -> FifoFile:
        """fs/namei.c ``may_open`` of a FIFO (the permission is the guest's to decide: the host
        sees no OPEN; O_TRUNC asks for write permission and is then ignored), then ``fifo_open``
        (:mod:`.fifo`): an open file of the node's pipe, which pins the node as any open file."""
        acc = flags & os.O_ACCMODE
        mask = {os.O_RDONLY: os.R_OK, os.O_WRONLY: os.W_OK}.get(acc, os.R_OK | os.W_OK)
        if flags & os.O_TRUNC:
            mask |= os.W_OK
        if not self._permitted(self._attr(node), mask):
            raise oserror(errno.EACCES)
        pipe, fd = self._fifos.open(node.nodeid, flags)
        return FifoFile(node, flags, self._fifos, pipe, fd, self._released)

    def _tmpfile(self, raw: bytes, flags: int, dir_fd: int | None) -> int:
        """O_TMPFILE (fs/open.c build_open_flags, fs/namei.c do_tmpfile): EINVAL without
        O_DIRECTORY, with O_CREAT or without write access; then the directory is looked up
        (ENOENT, ENOTDIR, ELOOP...); then EOPNOTSUPP, as a virtio-fs mount whose server has no
        FUSE_TMPFILE answers (this emulation sends none)."""
        if flags & (os.O_TMPFILE | os.O_CREAT) != os.O_TMPFILE \
                or flags & os.O_ACCMODE not in (os.O_WRONLY, os.O_RDWR):
            raise oserror(errno.EINVAL)
        check_path(raw)
        with self._fds.holding():       # EMFILE before the walk, as for every open
            with self._walk(raw, dir_fd) as w:
                node = w.resolve(raw, follow=not flags & os.O_NOFOLLOW, must_dir=True)
            self.client.put(node.nodeid)
            raise oserror(errno.EOPNOTSUPP)

    # ================================================================== metadata by path

    def _lookup(self, path: Any, func: str, *, follow: bool = True, must_dir: bool = False,
                filename: Any = ..., fresh: bool = False, dir_fd: int | None = None):
        """Context manager: resolve ``path`` (from ``dir_fd``, converted) and yield its pinned
        node (put afterwards).  ``fresh``: the last name is looked up afresh, because the caller
        changes its inode (with a timed cache, the name may have moved to another inode
        meanwhile)."""
        return self._resolved(path, func, follow, must_dir, filename, fresh, dir_fd)

    @contextmanager
    def _resolved(self, path: Any, func: str, follow: bool, must_dir: bool,
                  filename: Any, fresh: bool, dir_fd: int | None) -> Iterator[Node]:
        raw, p = fspath(path, func)
        with errors(p if filename is ... else filename):
            with self._walk(raw, dir_fd) as w:
                node = w.resolve(raw, follow=follow, must_dir=must_dir, fresh=fresh)
            try:
                yield node
            finally:
                self.client.put(node.nodeid)

    def stat(self, path: Any, *, dir_fd: Any = None,
             follow_symlinks: bool = True) -> os.stat_result:
        """``os.stat`` (an int is a descriptor; with ``dir_fd`` too, ValueError).  The
        attributes are those the LOOKUP of the last component returned, or the attribute
        cache's while valid.

        With a cache, a path resolved before answers from the path fast cache (the kernel's
        RCU walk) while every dentry and attribute it used is still valid and this guest changed
        nothing since: no request, a few memory loads."""
        if dir_fd is not None:
            if not isinstance(path, int):
                fspath(path, "stat")                # (os converts the path first)
            dir_fd = c_dir_fd(dir_fd)
            self._no_dir_fd_with_fd("stat", path, dir_fd)
        if isinstance(path, int):
            with self._by_fd(path, "stat", follow_symlinks=follow_symlinks, o_path=True) as f:
                return self._stat_of(f.node, fresh=True)
        cache = self.client.cache
        fast = cache.fast
        if fast is None or dir_fd is not None:      # _lookup() written out: the hot path
            raw, p = fspath(path, "stat")
            with errors(p):
                # (resolve checks the path itself; _walk checks it before the dir_fd's errors)
                with PathWalk(self.client) if dir_fd is None else self._walk(raw, dir_fd) as w:
                    node = w.resolve(raw, follow=follow_symlinks)
                try:
                    return self._stat_of(node)
                finally:
                    self.client.put(node.nodeid)
        key = (path, follow_symlinks)
        try:
            hit = fast.get(key)
        except TypeError:                   # an unhashable path-like
            key, hit = None, None
        if hit is not None and hit[0] == cache.local_gen and cache.fresh(hit[1]):
            return hit[2]
        gen = cache.local_gen
        trace: list = []
        raw, p = fspath(path, "stat")
        with errors(p):
            with PathWalk(self.client, trace) as w:
                node = w.resolve(raw, follow=follow_symlinks)
                links = w.links
            try:
                result = self._stat_of(node)
            finally:
                self.client.put(node.nodeid)
        if key is not None and not links and trace and trace[-1][0] == node.nodeid:
            cache.store_fast(key, gen, cache.checks(trace), result)
        return result

    def lstat(self, path: Any, *, dir_fd: Any = None) -> os.stat_result:
        """``os.lstat``."""
        return self.stat(path, dir_fd=dir_fd, follow_symlinks=False)

    def exists(self, path: Any) -> bool:
        """``os.path.exists``: False on any OSError or ValueError."""
        try:
            self.stat(path)
        except (OSError, ValueError):
            return False
        return True

    def readlink(self, path: Any, *, dir_fd: Any = None) -> Any:
        """``os.readlink``: the target, as str for a str path.  EINVAL for a non-symlink.  An
        empty path names ``dir_fd`` itself (readlinkat's LOOKUP_EMPTY: an ``O_PATH|O_NOFOLLOW``
        descriptor of a symlink reads it), ENOENT unless a symlink."""
        dir_fd = c_dir_fd(dir_fd)
        if dir_fd is not None and not fspath(path, "readlink")[0]:
            with errors(path), self._file(dir_fd) as f:
                if not f.node.is_symlink:
                    raise oserror(errno.ENOENT)
                target = self.client.readlink(f.nodeid)
            return os.fsdecode(target) if isinstance(os.fspath(path), str) else target
        with self._lookup(path, "readlink", follow=False, dir_fd=dir_fd) as node:
            if not node.is_symlink:
                raise oserror(errno.EINVAL)
            target = self.client.readlink(node.nodeid)
        return os.fsdecode(target) if isinstance(os.fspath(path), str) else target

    # ================================================================== directories

    def mkdir(self, path: Any, mode: int = 0o777, *, dir_fd: Any = None) -> None:
        """``os.mkdir``: EEXIST for an existing name (also ``.``, ``..``, ``/`` and a dangling
        symlink)."""
        raw, p = fspath(path, "mkdir")
        mode, dir_fd = c_int(mode), c_dir_fd(dir_fd)
        with errors(p), self._creating(raw, dir_fd, want_dir=True) as (w, name):
            entry = self.client.mkdir(w.dir.nodeid, name, mode & 0o1777 & ~self._umask,
                                      self._umask)
            self.client.put(entry.nodeid)

    def mknod(self, path: Any, mode: int = 0o600, device: int = 0, *,
              dir_fd: Any = None) -> None:
        """``os.mknod`` (MKNOD): a regular file (type 0 too), FIFO, socket, or — for root — a
        character or block device.  fs/namei.c ``may_mknod``: EPERM for a directory type, EINVAL
        for an unknown one, both before the path is walked; EEXIST for an existing name.  As
        CPython's, its errors carry no file name."""
        raw, _ = fspath(path, "mknod")
        mode, device, dir_fd = c_int(mode), operator.index(device), c_dir_fd(dir_fd)
        fmt = stat.S_IFMT(mode)
        with errors():
            if fmt == stat.S_IFDIR:
                raise oserror(errno.EPERM)
            if fmt not in _MKNOD_TYPES:
                raise oserror(errno.EINVAL)
            with self._creating(raw, dir_fd) as (w, name):
                if fmt in (stat.S_IFCHR, stat.S_IFBLK) and self.uid != 0:
                    raise oserror(errno.EPERM)              # CAP_MKNOD
                entry = self.client.mknod(w.dir.nodeid, name,
                                          (fmt or stat.S_IFREG) | mode & 0o7777 & ~self._umask,
                                          encode_dev(device) if fmt in (stat.S_IFCHR, stat.S_IFBLK)
                                          else 0, self._umask)
                self.client.put(entry.nodeid)

    def mkfifo(self, path: Any, mode: int = 0o666, *, dir_fd: Any = None) -> None:
        """``os.mkfifo``: :meth:`mknod` of a FIFO.  Opening it gives a pipe of this guest's
        (:mod:`.fifo`), as a guest kernel does; another guest opening it gets its own."""
        self.mknod(path, stat.S_IFIFO | stat.S_IMODE(c_int(mode)), dir_fd=dir_fd)

    @contextmanager
    def _creating(self, raw: bytes, dir_fd: int | None, *, want_dir: bool = False):
        """fs/namei.c ``filename_create``: walk to the parent (from ``dir_fd``), EEXIST unless
        the last component is a new name; a trailing slash is allowed only for a directory
        (ENOENT)."""
        with self._walk(raw, dir_fd) as w:
            last = w.parent(raw)
            if last.type is not LastType.NORM:
                raise oserror(errno.EEXIST)
            node = w.lookup_opt(last.name, fresh=True)
            if node is not None:
                self.client.put(node.nodeid)
                raise oserror(errno.EEXIST)
            if last.slash and not want_dir:
                raise oserror(errno.ENOENT)
            yield w, last.name

    def rmdir(self, path: Any, *, dir_fd: Any = None) -> None:
        """``os.rmdir``: EINVAL for ``.``, ENOTEMPTY for ``..``, EBUSY for ``/``, ENOTDIR for a
        non-directory (a symlink is not followed), ENOTEMPTY from the host."""
        raw, p = fspath(path, "rmdir")
        dir_fd = c_dir_fd(dir_fd)
        with errors(p):
            with self._walk(raw, dir_fd) as w:
                last = w.parent(raw)
                if last.type is not LastType.NORM:
                    raise oserror({LastType.DOT: errno.EINVAL, LastType.DOTDOT: errno.ENOTEMPTY,
                                   LastType.ROOT: errno.EBUSY}[last.type])
                node = w.lookup(last.name, fresh=True)
                try:
                    if not node.is_dir:
                        raise oserror(errno.ENOTDIR)
                    self.client.rmdir(w.dir.nodeid, last.name)
                finally:
                    self.client.put(node.nodeid)

    def unlink(self, path: Any, *, dir_fd: Any = None) -> None:
        """``os.unlink``: EISDIR for a directory (and ``.``, ``..``, ``/``); with a trailing
        slash ENOENT / EISDIR / ENOTDIR as Linux chooses."""
        raw, p = fspath(path, "unlink")
        dir_fd = c_dir_fd(dir_fd)
        with errors(p):
            with self._walk(raw, dir_fd) as w:
                last = w.parent(raw)
                if last.type is not LastType.NORM:
                    raise oserror(errno.EISDIR)
                node = w.lookup(last.name, fresh=True)
                try:
                    if node.is_dir:
                        raise oserror(errno.EISDIR)
                    if last.slash:
                        raise oserror(errno.ENOTDIR)
                    self.client.unlink(w.dir.nodeid, last.name)
                finally:
                    self.client.put(node.nodeid)

    remove = unlink

    def rename(self, src: Any, dst: Any, *, src_dir_fd: Any = None,
               dst_dir_fd: Any = None) -> None:
        """``os.rename`` (fs/namei.c do_renameat2, vfs_rename; ``src`` relative to
        ``src_dir_fd``, ``dst`` to ``dst_dir_fd``): EBUSY for ``.``/``..``/``/`` at
        either end, ENOENT for a missing source, ENOTDIR for a trailing slash on a non-directory
        source, EINVAL for moving a directory under itself, ENOTEMPTY for a target that is an
        ancestor of the source, nothing at all when both names are the same inode, then
        ENOTDIR/EISDIR for a type mismatch with an existing target.  (Ancestors above a
        ``dir_fd`` are not on the walk's chain: then the host's rename refuses those moves, and
        decides a type mismatch too, so that its EINVAL/ENOTEMPTY come first, as in Linux.)"""
        raw_src, ps = fspath(src, "rename")
        raw_dst, pd = fspath(dst, "rename")
        src_dir_fd, dst_dir_fd = c_dir_fd(src_dir_fd), c_dir_fd(dst_dir_fd)
        with errors(ps, pd):
            # getname()'s errors and the dir_fd's come with each name's walk
            with self._walk(raw_src, src_dir_fd) as wo:
                lo = wo.parent(raw_src)
                with self._walk(raw_dst, dst_dir_fd) as wn:
                    ln = wn.parent(raw_dst)
                    self._rename(wo, lo, wn, ln)

    def _rename(self, wo: PathWalk, lo: Last, wn: PathWalk, ln: Last) -> None:
        """The lookups and checks of :meth:`rename`, once both walks stand in the parents."""
        if lo.type is not LastType.NORM or ln.type is not LastType.NORM:
            raise oserror(errno.EBUSY)
        old = wo.lookup(lo.name, fresh=True)
        new = None
        try:
            new = wn.lookup_opt(ln.name, fresh=True)
            self._check_rename(wo, wn, old, new, lo.slash or ln.slash)
            if new is not None and new.nodeid == old.nodeid:
                return
            self.client.rename(wo.dir.nodeid, lo.name, wn.dir.nodeid, ln.name)
        finally:
            self.client.put(old.nodeid)
            if new is not None:
                self.client.put(new.nodeid)

    @staticmethod
    def _check_rename(wo: PathWalk, wn: PathWalk, old: Node, new: Node | None,
                      slash: bool) -> None:
        if not old.is_dir and slash:
            raise oserror(errno.ENOTDIR)
        if old.nodeid in wn.chain_ids:          # source is the target's parent or above
            raise oserror(errno.EINVAL)
        if new is not None and new.nodeid in wo.chain_ids:
            raise oserror(errno.ENOTEMPTY)      # target is the source's parent or above
        if new is None or new.nodeid == old.nodeid or not (wo.rooted and wn.rooted):
            return                              # (unrooted: the host checks, ancestry first)
        if old.is_dir and not new.is_dir:
            raise oserror(errno.ENOTDIR)
        if not old.is_dir and new.is_dir:
            raise oserror(errno.EISDIR)

    replace = rename

    def link(self, src: Any, dst: Any, *, src_dir_fd: Any = None, dst_dir_fd: Any = None,
             follow_symlinks: bool = True) -> None:
        """``os.link`` (``src`` relative to ``src_dir_fd``, ``dst`` to ``dst_dir_fd``).  On
        Linux ``os.link`` calls link(2), which never follows a symlink source, unless a
        ``dir_fd`` is given: then linkat(2) follows it as ``follow_symlinks`` says (with
        ``follow_symlinks=False`` alone too, not following); so does this.  EPERM for a
        directory, EEXIST for an existing target.  (Into a ``dir_fd``, which may name a removed
        directory, the host decides EPERM: its ENOENT for a removed one comes first, as in
        Linux's ``vfs_link``.)"""
        raw_src, ps = fspath(src, "link")
        raw_dst, pd = fspath(dst, "link")
        src_dir_fd, dst_dir_fd = c_dir_fd(src_dir_fd), c_dir_fd(dst_dir_fd)
        follow = bool(follow_symlinks) and (src_dir_fd is not None or dst_dir_fd is not None)
        with errors(ps, pd):
            with self._walk(raw_src, src_dir_fd) as w:
                old = w.resolve(raw_src, follow=follow, fresh=True)
            try:
                with self._creating(raw_dst, dst_dir_fd) as (wn, name):
                    if old.is_dir and wn.rooted:
                        raise oserror(errno.EPERM)
                    entry = self.client.link(old.nodeid, wn.dir.nodeid, name)
                    self.client.put(entry.nodeid)
            finally:
                self.client.put(old.nodeid)

    def symlink(self, src: Any, dst: Any, target_is_directory: bool = False, *,
                dir_fd: Any = None) -> None:
        """``os.symlink``: ``dst`` (relative to ``dir_fd``) becomes a symlink to ``src``.
        ENOENT for an empty target, ENAMETOOLONG from PATH_MAX, EEXIST for an existing
        ``dst``."""
        raw_src, ps = fspath(src, "symlink")
        raw_dst, pd = fspath(dst, "symlink")
        dir_fd = c_dir_fd(dir_fd)
        with errors(ps, pd):
            check_path(raw_src)
            with self._creating(raw_dst, dir_fd) as (w, name):
                entry = self.client.symlink(w.dir.nodeid, name, raw_src)
                self.client.put(entry.nodeid)

    def __repr__(self) -> str:
        return f"GuestOS({self.client!r}, fds={self._fds.fds()})"
