"""Guest-side cache policy: what the FUSE client may remember between requests.

The Linux FUSE client keeps three caches, each with a validity the server grants per reply:

* **inodes** (and with them their lookup counts): an inode whose last user went away may stay in
  the inode cache; the kernel sends FORGET only when the inode is evicted;
* **dentries** (``entry_valid`` of an entry reply): a name may be resolved without LOOKUP;
* **attributes** (``attr_valid``) and **data** (the page cache, close-to-open with
  ``cache=auto``).

virtio-fs mounts choose among the v6 patch's modes (DESIGN §5): ``cache=none`` (nothing is
cached: every name is looked up, every attribute and byte comes from the host), ``cache=auto``
(attributes and dentries for the server's timeout, 1 s; data close-to-open), ``cache=always``
(never expire), each optionally with ``versions=on`` (validity decided by the metadata-version
table, DESIGN §4, instead of by time) and ``writeback``.

Only ``cache=none`` exists yet.  :class:`CachePolicy` is the single place the client and
``GuestOS`` ask; the later modes fill in its methods (a dentry table keyed by
``(parent nodeid, name)``, an attribute table keyed by nodeid, each item stored with the version
slot read *before* its data was read) without changing the callers.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from ..errors import ConfigError
from ..fuse.abi import Attr

__all__ = ["CacheMode", "CacheConfig", "CachePolicy"]


class CacheMode(str, enum.Enum):
    """The ``cache=`` mount option of virtio-fs (the v6 patch's names)."""

    NONE = "none"
    AUTO = "auto"
    ALWAYS = "always"


@dataclass(frozen=True, slots=True)
class CacheConfig:
    """A mount's cache options.

    ``mode``: :class:`CacheMode`; ``versions``: validity by the metadata-version table instead of
    by timeouts; ``writeback``: write-back data caching (FUSE_WRITEBACK_CACHE).
    """

    mode: CacheMode = CacheMode.NONE
    versions: bool = False
    writeback: bool = False

    @classmethod
    def parse(cls, value: "str | CacheMode | CacheConfig | None") -> CacheConfig:
        """A config from a mount-option value: ``None`` (cache=none), a mode name or a config."""
        if value is None:
            return cls()
        if isinstance(value, CacheConfig):
            return value
        try:
            return cls(CacheMode(value))
        except ValueError:
            raise ConfigError(f"unknown cache mode {value!r} (none, auto, always)") from None


class CachePolicy:
    """Decides what the client keeps.  With ``cache=none`` it keeps nothing.

    Methods the client calls:

    * :meth:`keep_inode` — whether an inode nobody uses any more stays known (with its lookup
      count) instead of being forgotten at once;
    * :meth:`lookup_dentry` / :meth:`store_dentry` / :meth:`invalidate_dentry` — the dentry cache;
    * :meth:`get_attr` / :meth:`store_attr` / :meth:`invalidate_attr` — the attribute cache;
    * :meth:`forget_batch` — how many FORGETs the client may hold back to send as one
      BATCH_FORGET.
    """

    #: pending FORGETs held back before they are sent (as one BATCH_FORGET)
    DEFAULT_FORGET_BATCH = 64

    def __init__(self, config: "CacheConfig | str | CacheMode | None" = None, *,
                 forget_batch: int = DEFAULT_FORGET_BATCH) -> None:
        self.config = CacheConfig.parse(config)
        if self.config.mode is not CacheMode.NONE or self.config.versions or self.config.writeback:
            raise ConfigError(f"cache mode {self.config} is not implemented yet (only cache=none)")
        if forget_batch < 1:
            raise ConfigError(f"forget_batch must be at least 1, not {forget_batch}")
        self.forget_batch = forget_batch

    @property
    def mode(self) -> CacheMode:
        return self.config.mode

    # ------------------------------------------------------------------ inodes

    def keep_inode(self, nodeid: int) -> bool:
        """Whether the unused inode ``nodeid`` stays known.  cache=none: never (FORGET soon)."""
        return False

    # ------------------------------------------------------------------ dentries

    def lookup_dentry(self, parent: int, name: bytes) -> "int | None":
        """The cached nodeid of ``parent/name``, or None to send LOOKUP.  cache=none: None."""
        return None

    def store_dentry(self, parent: int, name: bytes, nodeid: int, entry_valid_ns: int) -> None:
        """Remember ``parent/name`` -> ``nodeid`` for ``entry_valid_ns``.  cache=none: no-op."""

    def invalidate_dentry(self, parent: int, name: bytes) -> None:
        """Forget the dentry ``parent/name`` (after UNLINK, RMDIR, RENAME)."""

    # ------------------------------------------------------------------ attributes

    def get_attr(self, nodeid: int) -> "Attr | None":
        """Cached attributes of ``nodeid`` still valid, or None to send GETATTR.  cache=none:
        None."""
        return None

    def store_attr(self, nodeid: int, attr: Attr, attr_valid_ns: int) -> None:
        """Remember ``attr`` of ``nodeid`` for ``attr_valid_ns``.  cache=none: no-op."""

    def invalidate_attr(self, nodeid: int) -> None:
        """Drop the cached attributes of ``nodeid`` (after a change made through this guest)."""

    def __repr__(self) -> str:
        return f"CachePolicy({self.config.mode.value}, forget_batch={self.forget_batch})"
