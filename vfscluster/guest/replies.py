"""What every FUSE client module needs to read replies: the errors and the attribute check."""

from __future__ import annotations

import errno
import os
import stat

from ..fuse import abi

__all__ = ["oserror", "check_attr", "PAGE_SIZE", "READDIR_SIZE", "XATTR_SIZE_MAX", "XATTR_LIST_MAX"]

PAGE_SIZE = 4096
#: include/uapi/linux/limits.h: XATTR_SIZE_MAX, XATTR_LIST_MAX
XATTR_SIZE_MAX = 65536
XATTR_LIST_MAX = 65536
#: fs/fuse/readdir.c reads directories a page at a time
READDIR_SIZE = PAGE_SIZE

_VALID_TYPES = frozenset((stat.S_IFREG, stat.S_IFDIR, stat.S_IFLNK, stat.S_IFCHR, stat.S_IFBLK,
                          stat.S_IFIFO, stat.S_IFSOCK))
_MAX_SIZE = (1 << 63) - 1


def oserror(err: int) -> OSError:
    """``OSError(err)`` with the standard message."""
    return OSError(err, os.strerror(err))


def check_attr(attr: abi.Attr) -> None:
    """fs/fuse/fuse_i.h fuse_invalid_attr(): an impossible file type or size is EIO."""
    if stat.S_IFMT(attr.mode) not in _VALID_TYPES or attr.size > _MAX_SIZE:
        raise oserror(errno.EIO)
