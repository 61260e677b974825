"""The DAX hooks of :class:`~vfscluster.fuse.passthrough.PassthroughFs` (a mixin): SETUPMAPPING /
REMOVEMAPPING handed to the host's :class:`~vfscluster.host.daxwire.DaxService` (``self.dax``; None:
ENOSYS, as virtiofsd without DAX), and the guards every shrinking truncation runs under (SETATTR size,
OPEN / CREATE with O_TRUNC, FALLOCATE COLLAPSE_RANGE): before the file shrinks, every guest mapping
pages past the new end has them replaced by zeros (DESIGN §5).  Without ``dax`` they cost nothing.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import stat
import struct
from collections.abc import Sequence

from ..filesystem import Context
from .confine import oserror, proc_path
from .inodes import Inode

log = logging.getLogger(__name__)

FS_IOC_GETFLAGS = 0x80086601      # _IOR('f', 1, long)
FS_DAX_FL = 0x02000000            # include/uapi/linux/fs.h: the inode uses DAX (chattr +x)

DAX_XATTR = b"user.vfscluster.dax"
_NO_FLAGS = (errno.ENOTTY, errno.EOPNOTSUPP, errno.EINVAL, errno.EACCES, errno.EPERM, errno.ENOSYS)


def has_dax_flag(fd: int) -> bool:
    """Does the regular file of O_PATH ``fd`` carry FS_DAX_FL (or, failing that, the fallback
    xattr ``user.vfscluster.dax``)?"""
    path = proc_path(fd)
    try:
        rfd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as e:
        if e.errno not in _NO_FLAGS:
            raise
    else:
        try:
            buf = fcntl.ioctl(rfd, FS_IOC_GETFLAGS, bytes(8))
            if struct.unpack("=i", buf[:4])[0] & FS_DAX_FL:
                return True
        except OSError as e:
            if e.errno not in _NO_FLAGS:
                raise
        finally:
            os.close(rfd)
    try:
        os.getxattr(path, DAX_XATTR)
        return True
    except OSError as e:
        if e.errno in (errno.ENODATA, errno.ENOTSUP, errno.EACCES, errno.EPERM):
            return False
        raise


class DaxHooks:
    """Mixed into PassthroughFs, which sets ``self.dax``."""

    dax = None

    def _shrinking(self, inode: Inode, new_size: int | None):
        """The DAX revocation guard around a truncation of ``inode`` to ``new_size`` (None: none)."""
        if self.dax is None or new_size is None or inode.fmt != stat.S_IFREG:
            return contextlib.nullcontext()

        def shrink() -> int | None:
            size = os.fstat(inode.fd).st_size
            return new_size if new_size < size else None
        return self.dax.shrinking(inode.key, shrink)

    def _grown(self, ctx: Context, nodeid: int) -> None:
        """After a call that may have grown ``nodeid``: pages a shrink revoked in guests come back
        (``DaxService.grown``); nothing to do (one set lookup) when no shrink revoked any."""
        if self.dax is not None and self.dax.registry.revoked_keys:
            inode = self._inode(ctx, nodeid)
            if inode.fmt == stat.S_IFREG:
                try:
                    self.dax.grown(inode.key, inode.fd)
                except OSError as exc:    # the call itself succeeded: its caller must hear that
                    log.warning("nodeid %d grew, but its revoked DAX ranges were not mapped again: "
                                "%s", nodeid, exc)

    def write_may_wait(self, session: int, fh: int) -> bool:
        """A WRITE to a file a shrink revoked in some guest may grow it back, and then waits for
        those guests' acks (:meth:`_grown`)."""
        revoked = self.dax.registry.revoked_keys if self.dax is not None else None
        if not revoked:
            return False
        try:
            return self.inodes.get(session, self.handles.get(session, fh).nodeid).key in revoked
        except OSError:
            return False

    def _shrinking_name(self, parent: Inode, name: bytes, flags: int):
        """The guard of CREATE with O_TRUNC of an existing regular file."""
        if self.dax is None or not flags & os.O_TRUNC:
            return contextlib.nullcontext()
        try:
            st = os.stat(name, dir_fd=parent.fd, follow_symlinks=False)
        except OSError:
            return contextlib.nullcontext()
        if not stat.S_ISREG(st.st_mode):
            return contextlib.nullcontext()
        return self.dax.shrinking((st.st_dev, st.st_ino), 0)    # (revoking nothing is cheap)

    def inode_dax(self, ctx: Context, nodeid: int) -> bool:
        """FUSE_ATTR_DAX for ``nodeid`` (asked only in sessions that negotiated HAS_INODE_DAX)."""
        inode = self._inode(ctx, nodeid)
        return inode.fmt == stat.S_IFREG and has_dax_flag(inode.fd)

    def maps_writable(self, ctx: Context, nodeid: int) -> bool:
        if self.dax is None or not self.dax.active:
            return False
        return self.dax.maps_writable(ctx.session, self._inode(ctx, nodeid).key)

    def setupmapping(self, ctx: Context, nodeid: int, fh: int, foffset: int, length: int,
                     flags: int, moffset: int) -> None:
        if self.dax is None:
            raise oserror(errno.ENOSYS)
        self.dax.setupmapping(ctx, nodeid, fh, foffset, length, flags, moffset)

    def removemapping(self, ctx: Context, mappings: Sequence[tuple[int, int]]) -> None:
        if self.dax is None:
            raise oserror(errno.ENOSYS)
        self.dax.removemapping(ctx, mappings)


__all__ = ["DaxHooks"]
