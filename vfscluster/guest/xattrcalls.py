"""The extended-attribute calls of :class:`~vfscluster.guest.gos.GuestOS` (``fs/xattr.c``):
``getxattr``, ``setxattr``, ``listxattr``, ``removexattr``, by path or by descriptor, with the
argument checks the kernel makes before it walks the path.  A mixin: GuestOS provides
``client``, ``_by_fd`` and ``_lookup`` (both yield an object with ``nodeid``).
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from typing import Any

from .namei import oserror
from .osargs import bytes_like, c_int, errors

__all__ = ["XattrCalls", "XATTR_NAME_MAX", "XATTR_SIZE_MAX", "XATTR_CREATE", "XATTR_REPLACE"]

XATTR_NAME_MAX = 255
XATTR_SIZE_MAX = 65536
XATTR_CREATE = getattr(os, "XATTR_CREATE", 1)
XATTR_REPLACE = getattr(os, "XATTR_REPLACE", 2)


class XattrCalls:
    """Extended attributes; mixed into GuestOS."""

    @staticmethod
    def _xattr_name(attribute: Any) -> bytes:
        """The name as bytes: ValueError for a NUL in it (argument conversion, as ``os``)."""
        name = os.fsencode(attribute)
        if b"\0" in name:
            raise ValueError("embedded null byte")
        return name

    @staticmethod
    def _check_name(name: bytes) -> bytes:
        """fs/xattr.c import_xattr_name: ERANGE for an empty or too long name (before the
        descriptor or the path is looked at)."""
        if not name or len(name) > XATTR_NAME_MAX:
            raise oserror(errno.ERANGE)
        return name

    def _xattr_target(self, path: Any, func: str, follow_symlinks: bool, checks: Callable[[], None],
                      *, fresh: bool = False):
        """The context manager giving the node a call works on (by descriptor or by path), after
        ``checks()`` (the kernel's argument checks, which come first), errors named as ``os``
        names them."""
        if isinstance(path, int):
            if not follow_symlinks:
                raise ValueError(f"{func}: cannot use fd and follow_symlinks together")
            with errors(path):
                checks()
            return self._by_fd(path, func)
        with errors(os.fspath(path)):
            checks()
        return self._lookup(path, func, follow=follow_symlinks, fresh=fresh)

    def getxattr(self, path: Any, attribute: Any, *, follow_symlinks: bool = True) -> bytes:
        """``os.getxattr``: ERANGE for an empty or too long name (before the path), ENODATA."""
        name = self._xattr_name(attribute)
        with self._xattr_target(path, "getxattr", follow_symlinks,
                                lambda: self._check_name(name)) as target:
            return self.client.getxattr(target.nodeid, name)

    def setxattr(self, path: Any, attribute: Any, value: Any, flags: int = 0, *,
                 follow_symlinks: bool = True) -> None:
        """``os.setxattr``: EINVAL for unknown flags, ERANGE for a bad name, E2BIG for a value
        over 64 KiB (all before the path); EEXIST (XATTR_CREATE), ENODATA (XATTR_REPLACE)."""
        value = bytes_like(value)
        name = self._xattr_name(attribute)
        flags = c_int(flags)

        def checks() -> None:
            if flags & ~(XATTR_CREATE | XATTR_REPLACE):
                raise oserror(errno.EINVAL)
            self._check_name(name)
            if len(value) > XATTR_SIZE_MAX:
                raise oserror(errno.E2BIG)
        with self._xattr_target(path, "setxattr", follow_symlinks, checks, fresh=True) as target:
            self.client.setxattr(target.nodeid, name, value, flags)

    def listxattr(self, path: Any = None, *, follow_symlinks: bool = True) -> list[str]:
        """``os.listxattr``: the names, as str."""
        if path is None:
            path = "."
        with self._xattr_target(path, "listxattr", follow_symlinks, lambda: None) as target:
            names = self.client.listxattr(target.nodeid)
        return [os.fsdecode(n) for n in names.split(b"\0") if n]

    def removexattr(self, path: Any, attribute: Any, *, follow_symlinks: bool = True) -> None:
        """``os.removexattr``: ERANGE for a bad name (before the path), ENODATA."""
        name = self._xattr_name(attribute)
        with self._xattr_target(path, "removexattr", follow_symlinks,
                                lambda: self._check_name(name), fresh=True) as target:
            self.client.removexattr(target.nodeid, name)
