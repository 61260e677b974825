"""PassthroughFs: the shared directory served as it is on the host (virtiofsd's passthrough).

Every operation is the host's own ``*at`` system call relative to an inode's O_PATH fd, so the
errnos are those Linux gives for the same local operation.  Confinement rules: :mod:`.confine`;
nodeids and lookup counts: :mod:`.inodes`; file handles: :mod:`.handles`; the operations on an
open handle (read, write, fsync, release...): :mod:`.fileio`.

Decisions (where Linux or virtiofsd leave a choice):

* bad names (empty, containing ``/`` or NUL) are EINVAL (ours: virtiofsd answers ENOENT for an
  empty LOOKUP; no kernel sends one); unknown nodeids and nodeids the session holds no lookup count
  for are EBADF, unknown fhs EBADF (virtiofsd's choices);
* ``..`` of the share root is the root; ``..`` of any other directory must lead back to the root
  (else ENOENT: the directory was moved out of the share by someone on the host);
* new inodes get the permission bits ``mode & ~umask`` the guest asked for.  The host process's
  own umask is left alone (it is process-wide); when it removed bits, they are put back with
  ``fchmod`` on the new inode.  When the server runs as root, CREATE, MKDIR, MKNOD and SYMLINK
  run with the caller's fsuid/fsgid (virtiofsd's ``lo_change_cred``): the kernel checks the
  caller's permissions (EACCES in a directory it cannot write, EPERM for a device node) and the
  new inode gets the caller's ids, or a set-group-ID directory's group;
* xattr operations on a symlink act on the symlink itself (``lgetxattr`` semantics: Linux
  refuses ``user.`` attributes there with EPERM);
* ``trusted.*`` attributes are the host's (overlayfs keeps its metadata there): setting or
  removing one is EPERM, reading one ENODATA, and LISTXATTR leaves them out — what virtiofsd,
  which drops CAP_SYS_ADMIN, answers;
* O_DIRECT is dropped from OPEN and CREATE flags (the guest keeps its meaning; on the host it
  would make unaligned I/O EINVAL), as virtiofsd does without ``allow_direct_io``;
* OPEN of a FIFO, socket or device node: ENXIO (the guest kernel handles special files itself;
  opening a FIFO on the host could block); of a symlink: ELOOP;
* locks (GETLK / SETLK / SETLKW, POSIX and flock) are kept by :class:`~.locks.HostLocks`, shared
  by every session: they are locks *between the guests of this host*, and the host takes no
  fcntl or flock lock on the host files (see :mod:`.locks`).  FLUSH drops the POSIX locks of its
  ``lock_owner`` (unlock on close), RELEASE those of the fh's flock, ``drop_session`` all of the
  session's.  A SETLKW that has to wait needs a completion (:meth:`PassthroughFs.setlkw`, used by
  the server when the guest has a notification queue); without one, SETLKW answers EOPNOTSUPP
  where it would have to wait (what virtiofsd answers for any SETLKW);
* ``access`` checks the mode bits against ``ctx`` (root may do anything but execute a file with
  no x bit).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import stat
import threading
from collections.abc import Iterator, Sequence

from ..abi import InitFlags, OpenOutFlags
from ..filesystem import Context, DirEntry, Entry, FileSystem, SetattrChanges
from . import syscalls
from .confine import O_PATH_FLAGS, check_name, einval, is_inside, oserror, proc_path, reopen
from .daxhooks import DaxHooks
from .fileio import HandleOps
from .handles import Handle, HandleTable, snapshot
from .inodes import Inode, InodeStore
from .locks import HostLocks, LockOps

log = logging.getLogger(__name__)

CACHE_TIMEOUTS = {"none": 0.0, "auto": 1.0, "always": 86400.0}
_RENAME_FLAGS = syscalls.RENAME_NOREPLACE | syscalls.RENAME_EXCHANGE | syscalls.RENAME_WHITEOUT
_TRUSTED = b"trusted."     # the host's own namespace (CAP_SYS_ADMIN): not the guests' business


class PassthroughFs(HandleOps, LockOps, DaxHooks, FileSystem):
    """Serve ``shared_dir`` to any number of sessions; thread-safe.

    ``cache`` follows virtiofsd's ``--cache``: ``none`` (timeouts 0, FOPEN_DIRECT_IO), ``auto``
    (1 s), ``always`` (a day, FOPEN_KEEP_CACHE / CACHE_DIR); ``timeout`` overrides the seconds.
    ``writeback`` accepts WRITEBACK_CACHE when a guest offers it; ``posix_locks`` accepts
    POSIX_LOCKS (off by default, as in virtiofsd).
    """

    def __init__(
        self,
        shared_dir: str | os.PathLike,
        *,
        cache: str = "auto",
        timeout: float | None = None,
        writeback: bool = True,
        posix_locks: bool = False,
    ) -> None:
        if cache not in CACHE_TIMEOUTS:
            raise ValueError(f"cache must be one of {sorted(CACHE_TIMEOUTS)}, not {cache!r}")
        root_fd = os.open(shared_dir, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        self.shared_dir = os.fspath(shared_dir)
        self.cache = cache
        self.timeout = CACHE_TIMEOUTS[cache] if timeout is None else float(timeout)
        self.writeback = writeback
        self.posix_locks = posix_locks
        self.inodes = InodeStore(root_fd, os.fstat(root_fd))
        self.handles = HandleTable()
        self.locks = HostLocks()
        self._writeback_sessions: set[int] = set()
        self._lock = threading.Lock()
        #: held from a creating call until its new inode has its permission bits (:meth:`_adopt`)
        #: and by every chmod of :meth:`setattr`: a chmod of the new name by another session
        #: (SETATTR and CREATE may run at once on the host's thread pool) comes before the
        #: creating call or after its adopt, never in between to be taken for the umask's work
        self._mode_lock = threading.Lock()
        self._as_root = os.geteuid() == 0
        self._fopen = {"none": OpenOutFlags.DIRECT_IO, "auto": 0, "always": OpenOutFlags.KEEP_CACHE}[cache]
        self._fopen_dir = OpenOutFlags.KEEP_CACHE | OpenOutFlags.CACHE_DIR if cache == "always" else 0
        #: the host's :class:`~vfscluster.host.daxwire.DaxService` (None: SETUPMAPPING is ENOSYS)
        self.dax = None
        self._cachestat = True          # False once the kernel said ENOSYS (before Linux 6.5)

    def close(self) -> None:
        """Close every handle and inode fd (the file system is unusable afterwards)."""
        self.handles.close()
        self.inodes.close()

    def __enter__(self) -> PassthroughFs:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---------------------------------------------------------------- helpers

    def _inode(self, ctx: Context, nodeid: int) -> Inode:
        return self.inodes.get(ctx.session, nodeid)

    def _dir(self, ctx: Context, nodeid: int) -> Inode:
        inode = self.inodes.get(ctx.session, nodeid)
        if not inode.is_dir:
            raise oserror(errno.ENOTDIR)
        return inode

    def _entry(self, inode: Inode, st: os.stat_result) -> Entry:
        t = self.timeout
        return Entry._make((inode.nodeid, 0, st, t, t, 0, None))   # faster than Entry(...)

    def _lookup_in(self, ctx: Context, parent: Inode, name: bytes) -> Entry:
        check_name(name)
        if name == b"." or (name == b".." and parent is self.inodes.root):
            if not parent.is_dir:
                raise oserror(errno.ENOTDIR)
            st = os.fstat(parent.fd)
            self.inodes.acquire_known(ctx.session, parent)
            return self._entry(parent, st)
        if name != b"..":
            # Fast path: a name whose inode the store already holds needs no new fd.
            st = os.stat(name, dir_fd=parent.fd, follow_symlinks=False)
            inode = self.inodes.acquire_key(ctx.session, (st.st_dev, st.st_ino))
            if inode is not None:
                return self._entry(inode, st)
        fd = os.open(name, O_PATH_FLAGS, dir_fd=parent.fd)
        try:
            st = os.fstat(fd)
            if name == b".." and not is_inside(fd, self.inodes.root.key):
                raise oserror(errno.ENOENT)
        except BaseException:
            os.close(fd)
            raise
        return self._entry(self.inodes.acquire(ctx.session, fd, st), st)

    def _caller(self, ctx: Context):
        """Context manager: the creating calls inside run with the caller's fsuid/fsgid when the
        server is root (:func:`.syscalls.fs_creds`), so the kernel checks the caller's
        permissions and gives the new inode the caller's ids (or a set-group-ID directory's
        group), as virtiofsd does."""
        if self._as_root and (ctx.uid or ctx.gid):
            return syscalls.fs_creds(ctx.uid, ctx.gid)
        return contextlib.nullcontext()

    @staticmethod
    def _adopt(path_or_fd: str | int, st: os.stat_result, perm: int | None) -> os.stat_result:
        """Give a new inode the permission bits ``perm`` the host's own umask may have taken
        away; its new stat.  Called inside :meth:`_caller`: a chmod by a caller outside the
        file's group drops set-group-ID, as Linux's does.  The caller holds ``_mode_lock`` since
        before the inode was made: ``st`` must show the mode the creating call gave, not a
        chmod another session made since (which this would undo)."""
        if perm is not None:
            if stat.S_ISDIR(st.st_mode):
                perm |= st.st_mode & stat.S_ISGID  # inherited, keep it
            if stat.S_IMODE(st.st_mode) != perm:
                os.chmod(path_or_fd, perm)
                return os.stat(path_or_fd)
        return st

    def _new_entry(self, ctx: Context, parent: Inode, name: bytes, perm: int | None) -> Entry:
        """Look up what a creating call just made and adopt it (inside :meth:`_caller`)."""
        fd = os.open(name, O_PATH_FLAGS, dir_fd=parent.fd)
        try:
            st = self._adopt(proc_path(fd), os.fstat(fd), perm)
        except BaseException:
            os.close(fd)
            raise
        return self._entry(self.inodes.acquire(ctx.session, fd, st), st)

    def _known(self, parent: Inode, name: bytes) -> list[int]:
        """The nodeid of ``parent/name`` if the store has one (for the version table)."""
        try:
            st = os.stat(name, dir_fd=parent.fd, follow_symlinks=False)
        except OSError:
            return []
        nodeid = self.inodes.nodeid_of((st.st_dev, st.st_ino))
        return [] if nodeid is None else [nodeid]

    def _open_flags(self, session: int, flags: int) -> int:
        # O_DIRECT is the guest's business (its page cache); on the host it would make every
        # unaligned read and write EINVAL — virtiofsd drops it too (allow_direct_io is off).
        flags &= ~os.O_DIRECT
        if session in self._writeback_sessions:
            # With a writeback cache the guest reads to fill pages of write-only files and
            # computes appends itself (virtiofsd does the same).
            if flags & os.O_ACCMODE == os.O_WRONLY:
                flags = (flags & ~os.O_ACCMODE) | os.O_RDWR
            flags &= ~os.O_APPEND
        return flags

    # ---------------------------------------------------------------- session

    def init(self, ctx: Context, flags: int) -> int:
        want = (InitFlags.ATOMIC_O_TRUNC | InitFlags.AUTO_INVAL_DATA | InitFlags.DO_READDIRPLUS
                | InitFlags.READDIRPLUS_AUTO | InitFlags.PARALLEL_DIROPS)
        if self.cache != "none":
            want |= InitFlags.CACHE_SYMLINKS
        if self.posix_locks:
            want |= InitFlags.POSIX_LOCKS
        if self.dax is not None:                  # dax=inode guests: FUSE_ATTR_DAX from FS_DAX_FL
            want |= InitFlags.HAS_INODE_DAX
        with self._lock:
            if self.writeback and flags & InitFlags.WRITEBACK_CACHE:
                want |= InitFlags.WRITEBACK_CACHE
                self._writeback_sessions.add(ctx.session)
            else:
                self._writeback_sessions.discard(ctx.session)
        return want

    def destroy(self, ctx: Context) -> None:
        pass

    def shutting_down(self) -> None:
        self.locks.shut_down()

    def drop_session(self, session: int, *, tell_waiters: bool = True) -> None:
        """Also drops the session's locks; its parked lock requests are completed with -ENOTCONN
        unless ``tell_waiters`` is False (the guest is gone)."""
        self.locks.release_session(session, tell=tell_waiters)
        if self.dax is not None:                  # its DAX mappings go (unmapped if the guest is there)
            self.dax.end_session(session, alive=tell_waiters)
        held = self.inodes.held_by(session)
        handles = self.handles.drop_session(session)
        freed = self.inodes.drop_session(session)
        with self._lock:
            self._writeback_sessions.discard(session)
        if held or handles:
            log.info("session %d dropped: released %d inodes (%d freed) and %d handles; it now holds "
                     "%d inodes; the store holds %d inodes and %d handles", session, held, freed, handles,
                     self.inodes.held_by(session), len(self.inodes), self.handles.count())

    # ---------------------------------------------------------------- names and inodes

    def lookup(self, ctx: Context, parent: int, name: bytes) -> Entry:
        return self._lookup_in(ctx, self.inodes.get(ctx.session, parent), name)

    def forget(self, ctx: Context, nodeid: int, nlookup: int) -> None:
        self.inodes.forget(ctx.session, nodeid, nlookup)

    def batch_forget(self, ctx: Context, requests: Sequence[tuple[int, int]]) -> None:
        self.inodes.forget_many(ctx.session, requests)

    def getattr(self, ctx: Context, nodeid: int, fh: int | None) -> tuple[os.stat_result, float]:
        inode = self.inodes.get(ctx.session, nodeid)
        fd = inode.fd if fh is None else self.handles.get(ctx.session, fh).fd
        return os.fstat(fd), self.timeout

    def setattr(self, ctx: Context, nodeid: int, changes: SetattrChanges,
                fh: int | None) -> tuple[os.stat_result, float]:
        inode = self._inode(ctx, nodeid)
        handle = None if fh is None else self.handles.get(ctx.session, fh)
        path = proc_path(inode.fd)
        c = changes
        if c.mode is not None:
            with self._mode_lock:           # not between a create and its _adopt
                if handle is not None:
                    os.fchmod(handle.fd, stat.S_IMODE(c.mode))
                else:
                    os.chmod(path, stat.S_IMODE(c.mode))
        if c.uid is not None or c.gid is not None:
            os.chown(path, -1 if c.uid is None else c.uid, -1 if c.gid is None else c.gid)
        if c.size is not None:
            with self._shrinking(inode, c.size):
                if handle is not None:
                    os.ftruncate(handle.fd, c.size)
                elif inode.is_dir:
                    raise oserror(errno.EISDIR)
                elif inode.fmt != stat.S_IFREG:
                    raise einval()
                else:
                    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
                    try:
                        os.ftruncate(fd, c.size)
                    finally:
                        os.close(fd)
            self._grown(ctx, nodeid)
        if c.kill_suidgid and c.mode is None:
            self._kill_suidgid(path)
        if c.atime_ns is not None or c.mtime_ns is not None or c.atime_now or c.mtime_now:
            syscalls.utimensat(path, c.atime_ns, c.mtime_ns, c.atime_now, c.mtime_now)
        return os.fstat(inode.fd), self.timeout

    @staticmethod
    def _kill_suidgid(path_or_fd: str | int) -> None:
        mode = stat.S_IMODE(os.stat(path_or_fd).st_mode)
        new = mode & ~stat.S_ISUID
        if mode & stat.S_IXGRP:
            new &= ~stat.S_ISGID
        if new != mode:
            os.chmod(path_or_fd, new)

    def readlink(self, ctx: Context, nodeid: int) -> bytes:
        inode = self._inode(ctx, nodeid)
        if not inode.is_symlink:
            raise einval()  # what readlink(2) says for anything else
        return os.readlink(b"", dir_fd=inode.fd)

    def symlink(self, ctx: Context, parent: int, name: bytes, target: bytes) -> Entry:
        p = self._inode(ctx, parent)
        check_name(name)
        with self._caller(ctx):
            os.symlink(target, name, dir_fd=p.fd)
            return self._new_entry(ctx, p, name, None)

    def mknod(self, ctx: Context, parent: int, name: bytes, mode: int, rdev: int,
              umask: int) -> Entry:
        p = self._inode(ctx, parent)
        check_name(name)
        perm = mode & ~umask & 0o7777
        with self._caller(ctx), self._mode_lock:
            os.mknod(name, stat.S_IFMT(mode) | perm, rdev, dir_fd=p.fd)
            return self._new_entry(ctx, p, name, perm)

    def mkdir(self, ctx: Context, parent: int, name: bytes, mode: int, umask: int) -> Entry:
        p = self._inode(ctx, parent)
        check_name(name)
        perm = mode & ~umask & 0o7777
        with self._caller(ctx), self._mode_lock:
            os.mkdir(name, perm, dir_fd=p.fd)
            return self._new_entry(ctx, p, name, perm)

    def unlink(self, ctx: Context, parent: int, name: bytes) -> Sequence[int]:
        p = self._inode(ctx, parent)
        check_name(name)
        touched = self._known(p, name)
        os.unlink(name, dir_fd=p.fd)
        return touched

    def rmdir(self, ctx: Context, parent: int, name: bytes) -> Sequence[int]:
        p = self._inode(ctx, parent)
        check_name(name)
        touched = self._known(p, name)
        os.rmdir(name, dir_fd=p.fd)
        return touched

    def rename(self, ctx: Context, parent: int, name: bytes, newparent: int, newname: bytes,
               flags: int = 0) -> Sequence[int]:
        p = self._inode(ctx, parent)
        np = self._inode(ctx, newparent)
        check_name(name)
        check_name(newname)
        if flags & ~_RENAME_FLAGS:
            raise einval()
        touched = self._known(p, name) + self._known(np, newname)
        if flags:
            syscalls.renameat2(p.fd, name, np.fd, newname, flags)
        else:
            os.rename(name, newname, src_dir_fd=p.fd, dst_dir_fd=np.fd)
        return touched

    def link(self, ctx: Context, nodeid: int, newparent: int, newname: bytes) -> Entry:
        inode = self._inode(ctx, nodeid)
        np = self._inode(ctx, newparent)
        check_name(newname)
        # linkat(AT_FDCWD, "/proc/self/fd/N", ..., AT_SYMLINK_FOLLOW) links the inode itself.
        os.link(proc_path(inode.fd), newname, dst_dir_fd=np.fd, follow_symlinks=True)
        st = os.fstat(inode.fd)
        self.inodes.acquire_known(ctx.session, inode)
        return self._entry(inode, st)

    # ---------------------------------------------------------------- files

    def open(self, ctx: Context, nodeid: int, flags: int) -> tuple[int, int]:
        inode = self._inode(ctx, nodeid)
        with self._shrinking(inode, 0 if flags & os.O_TRUNC else None):
            fd = reopen(inode.fd, inode.fmt, self._open_flags(ctx.session, flags))
        return self.handles.add(ctx.session, Handle(fd, nodeid, inode.is_dir)), self._fopen

    def create(self, ctx: Context, parent: int, name: bytes, mode: int, flags: int,
               umask: int) -> tuple[Entry, int, int]:
        p = self._inode(ctx, parent)
        check_name(name)
        perm = mode & ~umask & 0o7777
        base = (self._open_flags(ctx.session, flags) & ~(os.O_PATH | os.O_NOCTTY | os.O_DIRECTORY)
                | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC)
        with self._caller(ctx):          # virtiofsd's lo_create: the whole open as the caller
            try:
                with self._mode_lock:
                    fd = os.open(name, base | os.O_EXCL, perm, dir_fd=p.fd)
                    try:
                        st = self._adopt(fd, os.fstat(fd), perm)
                    except BaseException:
                        os.close(fd)
                        raise
                created = True
            except FileExistsError:
                if flags & os.O_EXCL:
                    raise
                # Opened as OPEN opens (reopen of an O_PATH fd): a symlink is ELOOP, a directory
                # EISDIR, a FIFO or device ENXIO — never open(2) of a FIFO, which waits for its
                # other end (a guest could hold the host there for ever).
                opath = os.open(name, O_PATH_FLAGS, dir_fd=p.fd)
                try:
                    mode = os.fstat(opath).st_mode
                    if stat.S_ISDIR(mode):
                        raise oserror(errno.EISDIR)
                    with self._shrinking_name(p, name, flags):
                        fd = reopen(opath, mode, base & ~os.O_EXCL)
                finally:
                    os.close(opath)
                created = False
            try:
                if not created:
                    st = os.fstat(fd)
                opath = os.open(proc_path(fd), os.O_PATH | os.O_CLOEXEC)
            except BaseException:
                os.close(fd)
                raise
        inode = self.inodes.acquire(ctx.session, opath, st)
        fh = self.handles.add(ctx.session, Handle(fd, inode.nodeid))
        return self._entry(inode, st), fh, self._fopen

    # ---------------------------------------------------------------- file system

    def statfs(self, ctx: Context, nodeid: int) -> os.statvfs_result:
        return os.fstatvfs(self._inode(ctx, nodeid).fd)

    def syncfs(self, ctx: Context, nodeid: int) -> None:
        inode = self._inode(ctx, nodeid)
        fd = reopen(inode.fd, inode.fmt, os.O_RDONLY)
        try:
            syscalls.syncfs(fd)
        finally:
            os.close(fd)

    def access(self, ctx: Context, nodeid: int, mask: int) -> None:
        st = os.fstat(self._inode(ctx, nodeid).fd)
        mask &= os.R_OK | os.W_OK | os.X_OK
        if not mask:
            return
        mode = st.st_mode
        if ctx.uid == 0:
            if mask & os.X_OK and not stat.S_ISDIR(mode) and not mode & 0o111:
                raise oserror(errno.EACCES)
            return
        if ctx.uid == st.st_uid:
            bits = (mode >> 6) & 7
        elif ctx.gid == st.st_gid:
            bits = (mode >> 3) & 7
        else:
            bits = mode & 7
        if mask & ~bits:
            raise oserror(errno.EACCES)

    # ---------------------------------------------------------------- extended attributes

    def setxattr(self, ctx: Context, nodeid: int, name: bytes, value: bytes, flags: int) -> None:
        inode = self._inode(ctx, nodeid)
        if name.startswith(_TRUSTED):
            raise oserror(errno.EPERM)
        os.setxattr(proc_path(inode.fd), name, value, flags)

    def getxattr(self, ctx: Context, nodeid: int, name: bytes, size: int) -> bytes | int:
        inode = self._inode(ctx, nodeid)
        if name.startswith(_TRUSTED):
            raise oserror(errno.ENODATA)
        value = os.getxattr(proc_path(inode.fd), name)
        return _sized(value, size)

    def listxattr(self, ctx: Context, nodeid: int, size: int) -> bytes | int:
        names = [n for n in os.listxattr(proc_path(self._inode(ctx, nodeid).fd))
                 if not n.startswith("trusted.")]
        return _sized(b"".join(os.fsencode(n) + b"\0" for n in names), size)

    def removexattr(self, ctx: Context, nodeid: int, name: bytes) -> None:
        inode = self._inode(ctx, nodeid)
        if name.startswith(_TRUSTED):
            raise oserror(errno.EPERM)
        os.removexattr(proc_path(inode.fd), name)

    # ---------------------------------------------------------------- directories

    def opendir(self, ctx: Context, nodeid: int, flags: int) -> tuple[int, int]:
        inode = self._dir(ctx, nodeid)
        fd = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=inode.fd)
        return self.handles.add(ctx.session, Handle(fd, nodeid, is_dir=True)), self._fopen_dir

    def readdir(self, ctx: Context, nodeid: int, fh: int, offset: int) -> Iterator[DirEntry]:
        inode = self._inode(ctx, nodeid)
        handle = self.handles.get(ctx.session, fh)
        if not handle.is_dir:
            raise oserror(errno.ENOTDIR)
        with handle.lock:
            if offset == 0 or handle.entries is None:
                # The share's ".." is the share itself: nothing above it is looked at.
                handle.entries = snapshot(handle.fd, inode is self.inodes.root)
            entries = handle.entries
        return (DirEntry(ino, i + 1, dtype, name)
                for i, (ino, dtype, name) in enumerate(entries[offset:], offset))

    def readdirplus(self, ctx: Context, nodeid: int, fh: int,
                    offset: int) -> Iterator[tuple[DirEntry, Entry | None]]:
        parent = self._inode(ctx, nodeid)
        entries = self.readdir(ctx, nodeid, fh, offset)
        return self._plus(ctx, parent, entries)

    def _plus(self, ctx: Context, parent: Inode,
              entries: Iterator[DirEntry]) -> Iterator[tuple[DirEntry, Entry | None]]:
        for d in entries:
            if d.name == b"." or d.name == b"..":
                yield d, None
                continue
            try:
                entry = self._lookup_in(ctx, parent, d.name)
            except FileNotFoundError:
                continue  # gone since the snapshot
            st = entry.attr
            yield DirEntry(st.st_ino, d.offset, stat.S_IFMT(st.st_mode) >> 12, d.name), entry

    def releasedir(self, ctx: Context, nodeid: int, fh: int, flags: int) -> None:
        self._release_handle(ctx, fh, None)

    def fsyncdir(self, ctx: Context, nodeid: int, fh: int, datasync: bool) -> None:
        self.fsync(ctx, nodeid, fh, datasync)


def _sized(value: bytes, size: int) -> bytes | int:
    """FUSE xattr size semantics: 0 asks for the length; too small is ERANGE."""
    if size == 0:
        return len(value)
    if len(value) > size:
        raise oserror(errno.ERANGE)
    return value
