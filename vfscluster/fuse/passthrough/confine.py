"""Confinement: every path step the host takes stays inside the shared directory.

The rules (DESIGN §3), all enforced here:

* a name from the guest is one path component: empty names, names containing ``/`` or NUL are
  refused with EINVAL (an absolute name contains ``/``, so it cannot escape either);
* a step is ``openat(parent_fd, name, O_PATH | O_NOFOLLOW)`` relative to an inode's fd, never a
  joined string path, so symlinks are never followed by the host: a symlink in the share is an
  inode of its own and stays one;
* ``.`` is the directory itself; ``..`` of the share root is the root itself, and ``..`` elsewhere
  is checked to lead to a directory inside the share (:func:`is_inside`);
* a file is opened for I/O from its O_PATH fd through ``/proc/self/fd/N`` (which names the inode
  itself, never what a symlink points to) and only when it is a regular file or a directory:
  a symlink gives ELOOP, as ``open(O_NOFOLLOW)`` would, other special files ENXIO.
"""

from __future__ import annotations

import errno
import os
import stat

O_PATH_FLAGS = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC

# Flags never passed on when re-opening an inode: creation is done by name, O_NOFOLLOW would
# refuse the /proc magic link itself, and a controlling terminal is out of the question.
_STRIP = (os.O_CREAT | os.O_EXCL | os.O_NOCTTY | os.O_NOFOLLOW | os.O_PATH
          | (getattr(os, "O_TMPFILE", 0) & ~os.O_DIRECTORY))

_MAX_DEPTH = 4096  # directory levels walked by is_inside before giving up


def einval() -> OSError:
    return OSError(errno.EINVAL, os.strerror(errno.EINVAL))


def oserror(code: int) -> OSError:
    return OSError(code, os.strerror(code))


def check_name(name: bytes) -> None:
    """EINVAL unless ``name`` is exactly one path component (non-empty, no ``/``, no NUL).
    ``.`` and ``..`` pass: what they mean is decided by the caller."""
    if not name or b"/" in name or b"\0" in name:
        raise einval()


def proc_path(fd: int) -> str:
    """The ``/proc/self/fd`` magic link of ``fd``: it resolves to the inode itself."""
    return f"/proc/self/fd/{fd}"


def open_child(dir_fd: int, name: bytes) -> int:
    """An O_PATH fd of ``dir_fd/name`` (``name`` checked), never following a symlink."""
    check_name(name)
    return os.open(name, O_PATH_FLAGS, dir_fd=dir_fd)


def reopen(fd: int, mode: int, flags: int) -> int:
    """A real fd for I/O on the inode of O_PATH ``fd`` whose ``st_mode`` is ``mode``."""
    if stat.S_ISREG(mode):
        return os.open(proc_path(fd), (flags & ~_STRIP) | os.O_CLOEXEC)
    if stat.S_ISDIR(mode):
        return os.open(".", (flags & ~_STRIP) | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=fd)
    if stat.S_ISLNK(mode):
        raise oserror(errno.ELOOP)
    raise oserror(errno.ENXIO)  # FIFOs, sockets, devices: the guest kernel handles those itself


def is_inside(fd: int, root_key: tuple[int, int]) -> bool:
    """Whether directory ``fd`` is the root or below it: walk ``..`` up to the root (inside) or
    to ``/`` (outside).  Only for ``..`` lookups, which the guest rarely sends."""
    cur = os.open(".", O_PATH_FLAGS | os.O_DIRECTORY, dir_fd=fd)
    try:
        st = os.fstat(cur)
        for _ in range(_MAX_DEPTH):
            key = (st.st_dev, st.st_ino)
            if key == root_key:
                return True
            up = os.open("..", O_PATH_FLAGS | os.O_DIRECTORY, dir_fd=cur)
            os.close(cur)
            cur = up
            st = os.fstat(cur)
            if (st.st_dev, st.st_ino) == key:  # ".." of "/" is "/": the root was not on the way
                return False
        return False
    finally:
        os.close(cur)
