"""The passthrough file system: the host's shared directory served over FUSE, confined to it.

* :mod:`.confine` — path-step rules (names, ``..``, symlinks, re-opening through /proc);
* :mod:`.inodes` — nodeid <-> (st_dev, st_ino), lookup counts per session, FORGET;
* :mod:`.handles` — open file / directory handles per session, directory snapshots;
* :mod:`.locks` — GETLK/SETLK as open-file-description locks;
* :mod:`.syscalls` — ``renameat2``, ``fallocate``, ``syncfs``, ``utimensat`` via ctypes;
* :mod:`.fs` — :class:`PassthroughFs`, the operations.
"""

from .fs import PassthroughFs

__all__ = ["PassthroughFs"]
