"""The DAX hooks of :class:`~vfscluster.fuse.passthrough.PassthroughFs` (a mixin): SETUPMAPPING /
REMOVEMAPPING handed to the host's :class:`~vfscluster.host.daxwire.DaxService` (``self.dax``; None:
ENOSYS, as virtiofsd without DAX), and the guards every shrinking truncation runs under (SETATTR size,
OPEN / CREATE with O_TRUNC, FALLOCATE COLLAPSE_RANGE): before the file shrinks, every guest mapping
pages past the new end has them replaced by zeros (DESIGN §5).  Without ``dax`` they cost nothing.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Sequence

from ..filesystem import Context
from .confine import oserror
from .inodes import Inode


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
