"""The extended-attribute calls of :class:`~vfscluster.guest.gos.GuestOS` (``fs/xattr.c``):
``getxattr``, ``setxattr``, ``listxattr``, ``removexattr``, by path or by descriptor, with the
argument checks the kernel makes before it walks the path.  A mixin: GuestOS provides
``client``, ``_file`` and ``_lookup``.
"""

from __future__ import annotations

import errno
import os
from typing import Any

from .namei import oserror
from .osargs import errors

__all__ = ["XattrCalls", "XATTR_NAME_MAX", "XATTR_SIZE_MAX", "XATTR_CREATE", "XATTR_REPLACE"]

XATTR_NAME_MAX = 255
XATTR_SIZE_MAX = 65536
XATTR_CREATE = getattr(os, "XATTR_CREATE", 1)
XATTR_REPLACE = getattr(os, "XATTR_REPLACE", 2)


class XattrCalls:
    """Extended attributes; mixed into GuestOS."""

    @staticmethod
    def _xattr_name(attribute: Any) -> bytes:
        name = os.fsencode(attribute)
        if not name or len(name) > XATTR_NAME_MAX:
            raise oserror(errno.ERANGE)
        return name

    def getxattr(self, path: Any, attribute: Any, *, follow_symlinks: bool = True) -> bytes:
        """``os.getxattr``: ERANGE for an empty or too long name (before the path), ENODATA."""
        if isinstance(path, int):
            with self._file(path) as f:
                return self.client.getxattr(f.nodeid, self._xattr_name(attribute))
        with errors(os.fspath(path)):
            name = self._xattr_name(attribute)
        with self._lookup(path, "getxattr", follow=follow_symlinks) as node:
            return self.client.getxattr(node.nodeid, name)

    def setxattr(self, path: Any, attribute: Any, value: Any, flags: int = 0, *,
                 follow_symlinks: bool = True) -> None:
        """``os.setxattr``: EINVAL for unknown flags, ERANGE for a bad name, E2BIG for a value
        over 64 KiB (all before the path); EEXIST (XATTR_CREATE), ENODATA (XATTR_REPLACE)."""
        value = bytes(value)
        with errors(None if isinstance(path, int) else os.fspath(path)):
            if flags & ~(XATTR_CREATE | XATTR_REPLACE):
                raise oserror(errno.EINVAL)
            name = self._xattr_name(attribute)
            if len(value) > XATTR_SIZE_MAX:
                raise oserror(errno.E2BIG)
        if isinstance(path, int):
            with self._file(path) as f:
                return self.client.setxattr(f.nodeid, name, value, flags)
        with self._lookup(path, "setxattr", follow=follow_symlinks, fresh=True) as node:
            self.client.setxattr(node.nodeid, name, value, flags)

    def listxattr(self, path: Any = None, *, follow_symlinks: bool = True) -> list[str]:
        """``os.listxattr``: the names, as str."""
        if path is None:
            path = "."
        if isinstance(path, int):
            with self._file(path) as f:
                names = self.client.listxattr(f.nodeid)
        else:
            with self._lookup(path, "listxattr", follow=follow_symlinks) as node:
                names = self.client.listxattr(node.nodeid)
        return [os.fsdecode(n) for n in names.split(b"\0") if n]

    def removexattr(self, path: Any, attribute: Any, *, follow_symlinks: bool = True) -> None:
        """``os.removexattr``: ERANGE for a bad name (before the path), ENODATA."""
        if isinstance(path, int):
            with self._file(path) as f:
                return self.client.removexattr(f.nodeid, self._xattr_name(attribute))
        with errors(os.fspath(path)):
            name = self._xattr_name(attribute)
        with self._lookup(path, "removexattr", follow=follow_symlinks, fresh=True) as node:
            self.client.removexattr(node.nodeid, name)
