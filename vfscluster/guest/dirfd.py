"""The ``dir_fd`` keywords of :class:`~vfscluster.guest.gos.GuestOS`: where a path walk starts.

``os`` takes ``dir_fd`` (``src_dir_fd``/``dst_dir_fd`` for ``link`` and ``rename``) on Linux for
``access, chmod, chown, link, mkdir, mkfifo, mknod, open, readlink, rename, rmdir, stat, symlink,
unlink, utime``; GuestOS takes them on the same calls (and ``lstat``, ``remove``, ``replace``).
A relative path then resolves from that descriptor's directory, as fs/namei.c ``path_init``
does with a ``dfd``:

* an absolute path ignores ``dir_fd`` altogether (a bad descriptor is not even looked at);
* an empty or too long path is ENOENT / ENAMETOOLONG first (``getname``);
* then EBADF for a descriptor that is not open, ENOTDIR for one that is not a directory; an
  ``O_PATH`` directory descriptor works (``fdget_raw``);
* ``None`` — and ``AT_FDCWD`` (-100), which ``os`` cannot tell from it — is the working
  directory, which for a guest is the share root.

Arguments are converted as CPython's ``dir_fd_converter`` converts them: an integer (TypeError
otherwise, OverflowError outside a C ``int``) or None.
"""

from __future__ import annotations

import errno
import operator
from typing import Any

from .client import FuseClient
from .files import FdTable
from .namei import Node, PathWalk, check_path, oserror

__all__ = ["AT_FDCWD", "c_dir_fd", "DirFd"]

AT_FDCWD = -100


def c_dir_fd(value: Any) -> int | None:
    """A ``dir_fd`` argument as ``os`` converts it; None for the working directory."""
    if value is None:
        return None
    try:
        fd = operator.index(value)
    except TypeError:
        raise TypeError(f"argument should be integer or None, not {type(value).__name__}") from None
    if fd > 0x7FFFFFFF:
        raise OverflowError("fd is greater than maximum")
    if fd < -0x80000000:
        raise OverflowError("fd is less than minimum")
    return None if fd == AT_FDCWD else fd


class DirFd:
    """Path walks that start at a ``dir_fd``; mixed into GuestOS (``client``, ``_fds``)."""

    client: FuseClient
    _fds: FdTable

    def _walk(self, raw: bytes, dir_fd: int | None, trace: list | None = None) -> PathWalk:
        """A :class:`PathWalk` for path ``raw`` (checked: ENOENT, ENAMETOOLONG), starting at
        ``dir_fd`` (converted already) when ``raw`` is relative: EBADF, ENOTDIR."""
        check_path(raw)
        if dir_fd is None or raw[:1] == b"/":
            return PathWalk(self.client, trace)
        f = self._fds.get(dir_fd)
        try:
            if not f.is_dir:
                raise oserror(errno.ENOTDIR)
            # without the attributes the file was opened with: whoever needs them (stat of
            # ".", access's search permission) asks for the current ones, as for the root
            return PathWalk(self.client, trace, start=Node(f.nodeid))
        finally:
            f.put()

    @staticmethod
    def _no_dir_fd_with_fd(func: str, path: Any, dir_fd: int | None, both: bool = False) -> None:
        """ValueError, as ``os`` raises it, for a ``dir_fd`` given with a descriptor ``path``
        (``both``: the wording of ``chown``)."""
        if dir_fd is not None and isinstance(path, int):
            if both:
                raise ValueError(f"{func}: can't specify both dir_fd and fd")
            raise ValueError(f"{func}: can't specify dir_fd without matching path")
