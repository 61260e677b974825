"""Guest-side caches: what the FUSE client may remember between requests, and for how long.

The Linux FUSE client keeps an inode cache (with lookup counts), a dentry cache, an attribute
cache and a page cache.  virtio-fs mounts choose among the v6 patch's modes (DESIGN §5):

* ``cache=none``: nothing is cached; every name is looked up, every attribute and byte comes
  from the host;
* ``cache=auto``: dentries (positive and negative) and attributes for ``timeout`` seconds
  (default 1); data close-to-open (the page cache is dropped at every open, as the kernel does
  when the server does not answer FOPEN_KEEP_CACHE), and while a file stays open its pages go
  when a read finds the attributes timed out and the new ones show another size or mtime
  (AUTO_INVAL_DATA, which virtiofsd grants: ``fuse_cache_read_iter``);
* ``cache=always``: dentries, attributes and data never expire (FOPEN_KEEP_CACHE, infinite
  timeouts);
* ``versions=on`` (with ``auto`` or ``always``): validity is decided by the host's
  metadata-version table (DESIGN §4) instead of by time;
* ``writeback``: writes stay in the guest until close, fsync or memory pressure
  (:mod:`~vfscluster.guest.pagecache`).

Every cached item carries a **stamp** taken *before* the request that fetched it:

* ``versions``: the value of the node's slot in the version table (for entries the host reads
  it and sends it with the reply, ``EntryVerOut``); the item is valid while the slot still holds
  that value;
* ``auto``: the deadline, ``monotonic_ns()`` before the request plus the timeout;
* ``always``: 0, valid until this guest invalidates it.

A dentry ``(parent, name)`` is stamped with the *parent's* slot (the host bumps a directory's
slot whenever a name in it changes); attributes and data with the node's own slot.  Changes this
guest makes invalidate what they touch at once (:meth:`CachePolicy.changed`), and move
:attr:`CachePolicy.local_gen`, which guards the path fast cache of ``GuestOS.stat``.

A reply can also be overtaken by this guest's own change: a GETATTR sent before another thread's
chmod, answered before the chmod reached the host, arrives after the chmod dropped the cached
attributes.  Storing it would keep the old mode (for ever with ``always``).  So a fetch notes
``local_gen`` before it sends (``since``), every change records the generation at which it
touched each node, and a store is skipped when a node it depends on was touched after ``since``
(the kernel's ``fi->attr_version`` check in ``fuse_change_attributes``).  With versions the host's
slot already tells (the change moved it), so the check is only for ``auto`` and ``always``.
"""

from __future__ import annotations

import enum
import stat
import threading
import time
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError
from ..fuse.abi import Attr
from .pagecache import PageCache

__all__ = ["CacheMode", "CacheConfig", "CachePolicy", "NEGATIVE"]

#: the nodeid of a negative dentry (the name does not exist)
NEGATIVE = 0
_FAST_MAX = 1 << 16
_TOUCHED_MAX = 1 << 12      # nodes whose last local change is remembered one by one
_NS = 1_000_000_000
#: the longest cache=auto timeout (a century: monotonic_ns() + it stays an int; inf would not)
MAX_TIMEOUT = 100 * 365 * 86400


class CacheMode(str, enum.Enum):
    """The ``cache=`` mount option of virtio-fs (the v6 patch's names)."""

    NONE = "none"
    AUTO = "auto"
    ALWAYS = "always"


@dataclass(frozen=True, slots=True)
class CacheConfig:
    """A mount's cache options.

    ``mode``: :class:`CacheMode`; ``versions``: validity by the metadata-version table instead of
    by timeouts (needs ``auto`` or ``always``); ``writeback``: write-back data caching;
    ``timeout``: seconds dentries and attributes stay valid with ``auto``.
    """

    mode: CacheMode = CacheMode.NONE
    versions: bool = False
    writeback: bool = False
    timeout: float = 1.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "mode", self._mode(self.mode))
        if self.versions and self.mode is CacheMode.NONE:
            raise ConfigError("versions=on needs cache=auto or cache=always (cache=none keeps nothing)")
        if not isinstance(self.timeout, (int, float)) or not 0 <= self.timeout <= MAX_TIMEOUT:
            raise ConfigError(f"cache timeout must be a number of seconds in 0..{MAX_TIMEOUT:g}, "
                              f"not {self.timeout!r}")

    @staticmethod
    def _mode(value: Any) -> CacheMode:
        try:
            return CacheMode(value)
        except ValueError:
            raise ConfigError(f"unknown cache mode {value!r} (none, auto, always)") from None

    @classmethod
    def parse(cls, value: "str | CacheMode | CacheConfig | None") -> CacheConfig:
        """A config from a mount-option value: ``None`` (cache=none), a mode name or a config."""
        if value is None:
            return cls()
        if isinstance(value, CacheConfig):
            return value
        return cls(cls._mode(value))

    def __str__(self) -> str:
        return (f"cache={self.mode.value}" + (",versions=on" if self.versions else "")
                + (",writeback" if self.writeback else "")
                + (f",timeout={self.timeout:g}" if self.mode is CacheMode.AUTO else ""))


class CachePolicy:
    """The caches of one mount.  With ``cache=none`` every lookup misses and nothing is stored.

    ``versions`` is the mount's :class:`~vfscluster.guest.versions.VersionView` (required when
    the config says ``versions``).  ``max_unused``: how many inodes nobody uses any more stay
    known (with their dentries) before the oldest are forgotten.  All methods are thread-safe.
    """

    #: pending FORGETs held back before they are sent (as one BATCH_FORGET)
    DEFAULT_FORGET_BATCH = 64
    DEFAULT_MAX_UNUSED = 8192

    def __init__(self, config: "CacheConfig | str | CacheMode | None" = None, *,
                 forget_batch: int = DEFAULT_FORGET_BATCH, versions=None,
                 max_unused: int = DEFAULT_MAX_UNUSED) -> None:
        self.config = CacheConfig.parse(config)
        if forget_batch < 1:
            raise ConfigError(f"forget_batch must be at least 1, not {forget_batch}")
        if self.config.versions and versions is None:
            raise ConfigError("versions=on needs the host's metadata-version table")
        self.forget_batch = forget_batch
        self.max_unused = max(1, max_unused)
        self.enabled = self.config.mode is not CacheMode.NONE
        self.view = versions if self.config.versions else None
        self.uses_versions = self.view is not None
        self.keep_data = self.enabled
        # directory listings: with always (FOPEN_CACHE_DIR, as virtiofsd sets it) or versions
        self.keep_listings = self.enabled and (self.config.mode is CacheMode.ALWAYS
                                               or self.config.versions)
        self.writeback = self.config.writeback
        #: the host granted AUTO_INVAL_DATA: an mtime change seen in new attributes drops pages
        self.auto_inval = False
        # cache=auto by time: a path's answer comes from one LOOKUP at most ``timeout`` old (the
        # dentry keeps the attributes that came with it), and every open asks the host
        # (close-to-open), so no read returns what the path held more than ``timeout`` ago
        self.coupled = self.config.mode is CacheMode.AUTO and not self.config.versions
        self.close_to_open = self.coupled
        self._timeout_ns = int(self.config.timeout * _NS)
        self._lock = threading.Lock()
        self._dentries: dict[tuple[int, bytes], tuple[int, int, Attr | None]] = {}
        self._by_node: dict[int, set[tuple[int, bytes]]] = {}
        self._attrs: dict[int, tuple[Attr, int]] = {}
        #: the last size and mtime seen of each node, kept when its cached attributes go (the
        #: kernel's inode keeps i_size and i_mtime): what new attributes are compared with
        self._known: dict[int, tuple[int, int, int]] = {}
        self._listings: dict[int, tuple[Any, int]] = {}
        #: moves at every change this guest makes (guards the path fast cache and the stores)
        self.local_gen = 0
        self._touched: dict[int, int] = {}      # nodeid -> local_gen of its last local change
        self._touched_floor = 0                 # ...or of any change, for nodes no longer listed
        #: ``GuestOS.stat`` fast cache: ``(path, follow) -> (local_gen, checks, stat_result)``
        self.fast: dict[Any, tuple] | None = {} if self.enabled else None
        self.pages = PageCache(self)
        self.hits = 0
        self.misses = 0
        if self.uses_versions:
            self.stamp = self.view.version
            self.valid = self._valid_version
            self.fresh = self._fresh_versions
            self._words = self.view._words
            self._mask = self.view.slots - 1
            from .versions import HEADER_WORDS
            self._base = HEADER_WORDS
        elif self.config.mode is CacheMode.AUTO:
            self.stamp = self._deadline
            self.valid = self._valid_deadline
            self.fresh = self._fresh_deadline
        else:
            self.stamp = self._zero
            self.valid = self._valid_always
            self.fresh = self._fresh_always

    @property
    def mode(self) -> CacheMode:
        return self.config.mode

    # ------------------------------------------------------------------ stamps

    # ``stamp(nodeid)``: what to store with an item of ``nodeid`` fetched by a request sent
    # after this call; ``valid(nodeid, stamp)``: whether such an item may still be used.

    def _deadline(self, nodeid: int) -> int:
        return time.monotonic_ns() + self._timeout_ns

    @staticmethod
    def _zero(nodeid: int) -> int:
        return 0

    def _valid_version(self, nodeid: int, stamp: int) -> bool:
        return self.view.version(nodeid) == stamp

    @staticmethod
    def _valid_deadline(nodeid: int, stamp: int) -> bool:
        return time.monotonic_ns() < stamp

    @staticmethod
    def _valid_always(nodeid: int, stamp: int) -> bool:
        return True

    # The fast cache keeps, per path, the checks that all must still hold: ``(slot word, value)``
    # pairs with versions, the earliest deadline with auto, nothing with always.

    def checks(self, stamps: list[tuple[int, int]]) -> Any:
        """The fast-cache checks of ``(nodeid, stamp)`` pairs."""
        if self.uses_versions:
            base, mask = self._base, self._mask
            return tuple((base + (n & mask), s) for n, s in stamps)
        if self.config.mode is CacheMode.AUTO:
            return min((s for _, s in stamps), default=0)
        return None

    def _fresh_versions(self, checks) -> bool:
        words = self._words
        for i, v in checks:
            if words[i] != v:
                return False
        return True

    @staticmethod
    def _fresh_deadline(checks) -> bool:
        return time.monotonic_ns() < checks

    @staticmethod
    def _fresh_always(checks) -> bool:
        return True

    def store_fast(self, key: Any, gen: int, checks: Any, result: Any) -> None:
        """Remember ``result`` for ``key`` while ``local_gen == gen`` and ``checks`` hold."""
        fast = self.fast
        if fast is None or gen != self.local_gen:
            return
        if len(fast) >= _FAST_MAX:
            fast.clear()
        fast[key] = (gen, checks, result)

    # ------------------------------------------------------------------ inodes

    def keep_inode(self, nodeid: int) -> bool:
        """Whether the unused inode ``nodeid`` stays known: with a cache, yes (up to
        ``max_unused`` of them, oldest forgotten first by the client)."""
        return self.enabled

    def forget_node(self, nodeid: int) -> None:
        """The client forgets ``nodeid``: drop every dentry naming it and its attributes,
        listing and pages (they would refer to a nodeid the host may reuse)."""
        with self._lock:
            for key in self._by_node.pop(nodeid, ()):
                self._dentries.pop(key, None)
            self._attrs.pop(nodeid, None)
            self._known.pop(nodeid, None)
            self._listings.pop(nodeid, None)
            self.local_gen += 1
            self._touch((nodeid,))
        self.pages.drop(nodeid)

    # ------------------------------------------------------------------ overtaken replies

    def _touch(self, nodeids) -> None:
        """Record that ``nodeids`` changed at the current ``local_gen`` (caller holds the lock)."""
        touched, gen = self._touched, self.local_gen
        if len(touched) >= _TOUCHED_MAX:
            touched.clear()
            self._touched_floor = gen
        for n in nodeids:
            touched[n] = gen

    def _overtaken(self, nodeid: int, since: "int | None") -> bool:
        """Did this guest change ``nodeid`` after ``since`` (``local_gen`` before the fetch was
        sent; None: the reply is of this guest's own change, nothing overtook it)?"""
        if since is None or self.uses_versions:
            return False
        return self._touched.get(nodeid, self._touched_floor) > since

    # ------------------------------------------------------------------ dentries

    def lookup_dentry(self, parent: int, name: bytes) -> "tuple[int, int, Attr | None] | None":
        """``(nodeid, stamp, attributes)`` of ``parent/name`` while valid (nodeid
        :data:`NEGATIVE`: the name does not exist; the attributes are those its LOOKUP
        returned, or None), else None (send LOOKUP)."""
        if not self.enabled:
            return None
        hit = self._dentries.get((parent, name))
        if hit is None or not self.valid(parent, hit[1]):
            self.misses += 1
            return None
        self.hits += 1
        return hit

    def store_dentry(self, parent: int, name: bytes, nodeid: int, stamp: int,
                     attr: Attr | None = None, since: int | None = None) -> None:
        """Remember ``parent/name -> nodeid`` (NEGATIVE for a missing name), stamped with the
        parent's stamp taken before the LOOKUP was sent, with the attributes it returned; not if
        this guest changed the parent or the node after ``since`` (see the module docstring)."""
        if not self.enabled:
            return
        key = (parent, name)
        with self._lock:
            if self._overtaken(parent, since) or (nodeid != NEGATIVE
                                                  and self._overtaken(nodeid, since)):
                return
            old = self._dentries.get(key)
            if old is not None and old[0] != nodeid:
                self._unlink_key(old[0], key)
            self._dentries[key] = (nodeid, stamp, attr)
            if nodeid != NEGATIVE:
                self._by_node.setdefault(nodeid, set()).add(key)

    def _unlink_key(self, nodeid: int, key: tuple[int, bytes]) -> None:
        keys = self._by_node.get(nodeid)
        if keys is not None:
            keys.discard(key)
            if not keys:
                del self._by_node[nodeid]

    # ------------------------------------------------------------------ attributes

    def get_attr(self, nodeid: int) -> "tuple[Attr, int] | None":
        """``(attributes, stamp)`` of ``nodeid`` while valid, else None (send GETATTR)."""
        if not self.enabled:
            return None
        hit = self._attrs.get(nodeid)
        if hit is None or not self.valid(nodeid, hit[1]):
            return None
        return hit

    def store_attr(self, nodeid: int, attr: Attr, stamp: int, since: int | None = None) -> None:
        """Remember ``attr`` of ``nodeid`` with the stamp taken before it was read; not if this
        guest changed ``nodeid`` after ``since``.

        New attributes of a regular file whose size differs from the ones known before (or, when
        the host granted AUTO_INVAL_DATA, whose mtime differs) drop its clean pages, as
        ``fuse_change_attributes`` does (not with write-back, where this guest's size and mtime
        are the ones that count, nor with versions, whose slot already tells)."""
        if not self.enabled:
            return
        with self._lock:
            if self._overtaken(nodeid, since):
                return
            self._attrs[nodeid] = (attr, stamp)
        self.saw_attr(nodeid, attr)

    def saw_attr(self, nodeid: int, attr: Attr, *, own: bool = False) -> None:
        """Attributes of ``nodeid`` arrived: if the size — or, when the host granted
        AUTO_INVAL_DATA, the mtime — of a regular file differs from the last one seen, its clean
        pages go (see :meth:`store_attr`).  ``own``: the reply to this guest's own SETATTR, which
        only records them (``fuse_do_setattr`` invalidates nothing)."""
        if not self.enabled or self.uses_versions or not stat.S_ISREG(attr.mode):
            return
        new = (attr.size, attr.mtime, attr.mtimensec)
        with self._lock:
            old = self._known.get(nodeid)
            self._known[nodeid] = new
        if old is not None and not own and not self.writeback and (
                old[0] != new[0] or (self.auto_inval and old[1:] != new[1:])):
            self.pages.drop(nodeid)

    # ------------------------------------------------------------------ directory listings

    def get_listing(self, nodeid: int) -> Any:
        """The cached listing of directory ``nodeid`` while valid, else None."""
        if not self.keep_listings:
            return None
        hit = self._listings.get(nodeid)
        if hit is None or not self.valid(nodeid, hit[1]):
            return None
        return hit[0]

    def store_listing(self, nodeid: int, listing: Any, stamp: int, since: int | None = None) -> None:
        """Remember the listing of directory ``nodeid``; not if this guest changed it after
        ``since``."""
        if self.keep_listings:
            with self._lock:
                if not self._overtaken(nodeid, since):
                    self._listings[nodeid] = (listing, stamp)

    # ------------------------------------------------------------------ local changes

    def changed(self, *nodeids: int, names: tuple = (), data: bool = False) -> None:
        """This guest changed ``nodeids`` (their attributes; and directory contents of those
        that are directories) and the names ``(parent, name)`` in ``names``; ``data``: file
        contents changed too (drop their pages)."""
        if not self.enabled:
            return
        with self._lock:
            touched = list(nodeids)
            for key in names:
                old = self._dentries.pop(key, None)
                if old is not None:
                    self._unlink_key(old[0], key)
                    touched.append(old[0])              # its nlink or ctime changes too
            for n in touched:
                self._attrs.pop(n, None)
                self._listings.pop(n, None)
                if self.coupled:                        # their attributes are in dentries too
                    for key in self._by_node.pop(n, ()):
                        self._dentries.pop(key, None)
            self.local_gen += 1
            self._touch(touched)
            self._touch(parent for parent, _ in names)
        if data:
            for n in nodeids:
                self.pages.drop(n)

    def clear(self) -> None:
        """Drop every cached item (clean pages too; dirty data stays)."""
        with self._lock:
            self._dentries.clear()
            self._by_node.clear()
            self._attrs.clear()
            self._known.clear()
            self._listings.clear()
            if self.fast is not None:
                self.fast.clear()
            self.local_gen += 1
            self._touched.clear()
            self._touched_floor = self.local_gen       # what was in flight is stale too
        self.pages.clear()

    def stats(self) -> dict:
        return {"mode": str(self.config), "dentries": len(self._dentries), "attrs": len(self._attrs),
                "listings": len(self._listings), "fast": len(self.fast or ()), "hits": self.hits,
                "misses": self.misses, **self.pages.stats()}

    def __repr__(self) -> str:
        return f"CachePolicy({self.config}, forget_batch={self.forget_batch})"
