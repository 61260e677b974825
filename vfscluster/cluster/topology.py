"""Topology: what a cluster is made of — the share, the host's options and the guests.

In Python::

    Topology(share="/some/dir", guests=3, cache="none")
    Topology(share=d, guests=[{"cache": "none"}, {"cache": "always", "versions": True}])

or from TOML (``Topology.load(path)``)::

    share = "/srv/share"          # relative paths are relative to the TOML file
    tag = "vfs"
    num_request_queues = 1
    guests = 3                    # or a list of tables:
    # [[guests]]
    # name = "alpha"
    # cache = "none"

Options given at the top level are the defaults of every guest; a guest's table overrides them.
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass, field, fields, replace
from typing import Any

from ..errors import ConfigError
from ..guest.cache import MAX_TIMEOUT
from ..guest.daxmap import FUSE_DAX_SZ
from ..virtio.fs_config import check_tag

CACHE_MODES = ("none", "auto", "always")
_NAME = re.compile(r"[A-Za-z0-9._-]{1,32}")
DAX_MODES = ("never", "always", "inode")


@dataclass(frozen=True, slots=True)
class GuestSpec:
    """One guest's settings."""

    name: str
    cache: str = "none"
    versions: bool = False
    writeback: bool = False
    timeout: float = 1.0
    dax: str = "never"
    num_request_queues: int = 1
    queue_size: int = 128
    ram_size: int = 64 << 20
    window_size: int = 1 << 30

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME.fullmatch(self.name):
            raise ConfigError(f"guest name {self.name!r}: 1 to 32 letters, digits, '.', '_' or '-' "
                              "(it names the guest's process, shared memory and sockets)")
        if self.cache not in CACHE_MODES:
            raise ConfigError(f"guest {self.name!r}: cache must be one of {', '.join(CACHE_MODES)}, "
                              f"not {self.cache!r}")
        if self.dax not in DAX_MODES:
            raise ConfigError(f"guest {self.name!r}: dax must be one of {', '.join(DAX_MODES)}, not {self.dax!r}")
        if self.versions and self.cache == "none":
            raise ConfigError(f"guest {self.name!r}: versions=on needs cache=auto or cache=always")
        ws = self.window_size
        if not isinstance(ws, int) or ws < FUSE_DAX_SZ or ws % FUSE_DAX_SZ:
            raise ConfigError(f"guest {self.name!r}: window_size must be a positive multiple of 2 MiB, not {ws!r}")
        if not isinstance(self.num_request_queues, int) or self.num_request_queues < 1:
            raise ConfigError(f"guest {self.name!r}: num_request_queues must be an integer >= 1")
        qs = self.queue_size
        if not isinstance(qs, int) or qs < 2 or qs > 32768 or qs & (qs - 1):
            raise ConfigError(f"guest {self.name!r}: queue_size must be a power of two in 2..32768, not {qs!r}")
        if not isinstance(self.ram_size, int) or self.ram_size < (4 << 20) or self.ram_size % 4096:
            raise ConfigError(f"guest {self.name!r}: ram_size must be a multiple of 4096 of at least 4 MiB")
        if isinstance(self.timeout, bool) or not isinstance(self.timeout, (int, float)) \
                or not 0 <= self.timeout <= MAX_TIMEOUT:    # (NaN is not; inf is not either)
            raise ConfigError(f"guest {self.name!r}: timeout must be a number of seconds in "
                              f"0..{MAX_TIMEOUT:g}")


_GUEST_KEYS = {f.name for f in fields(GuestSpec)} - {"name"}


def _spec_dict(spec: GuestSpec) -> dict:
    return {f.name: getattr(spec, f.name) for f in fields(GuestSpec)}


@dataclass(frozen=True, slots=True)
class Topology:
    """A host sharing ``share`` under ``tag`` with ``guests``."""

    share: str
    guests: tuple[GuestSpec, ...] = field(default=())
    tag: str = "vfs"
    thread_pool_size: int = 4
    host_queues: int = 16

    def __init__(self, share: str | os.PathLike, guests: int | list | tuple = 1, *, tag: str = "vfs",
                 thread_pool_size: int = 4, host_queues: int = 16, **defaults: Any) -> None:
        unknown = set(defaults) - _GUEST_KEYS
        if unknown:
            raise ConfigError(f"unknown topology option(s): {', '.join(sorted(unknown))}")
        if not share:
            raise ConfigError("topology needs a share directory")
        specs: list[GuestSpec] = []
        if isinstance(guests, bool) or not isinstance(guests, (int, list, tuple)):
            raise ConfigError(f"guests must be a number or a list of tables, not {guests!r}")
        if isinstance(guests, int):
            if guests < 1:
                raise ConfigError(f"a topology needs at least one guest, not {guests}")
            items: list[dict] = [{} for _ in range(guests)]
        else:
            items = [_spec_dict(g) if isinstance(g, GuestSpec) else g if isinstance(g, dict) else None
                     for g in guests]
            if not items or any(g is None for g in items):
                raise ConfigError("guests must be a non-empty list of tables")
        for i, g in enumerate(items):
            bad = set(g) - _GUEST_KEYS - {"name"}
            if bad:
                raise ConfigError(f"guest {i}: unknown option(s): {', '.join(sorted(bad))}")
            specs.append(GuestSpec(**{"name": g.get("name", f"g{i}"), **defaults,
                                      **{k: v for k, v in g.items() if k != "name"}}))
        names = [s.name for s in specs]
        if len(set(names)) != len(names):
            raise ConfigError(f"guest names must be unique: {names}")
        if not isinstance(thread_pool_size, int) or thread_pool_size < 0:
            raise ConfigError("thread_pool_size must be an integer >= 0")
        if isinstance(host_queues, bool) or not isinstance(host_queues, int) or host_queues < 1:
            raise ConfigError(f"host_queues must be an integer >= 1, not {host_queues!r}")
        try:
            check_tag(tag)
        except OSError as exc:
            raise ConfigError(f"tag: {exc.strerror}") from None
        need = max(s.num_request_queues for s in specs)
        object.__setattr__(self, "share", os.fspath(share))
        object.__setattr__(self, "guests", tuple(specs))
        object.__setattr__(self, "tag", tag)
        object.__setattr__(self, "thread_pool_size", thread_pool_size)
        object.__setattr__(self, "host_queues", max(host_queues, need))

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Topology":
        """Read a topology from a TOML file."""
        path = os.fspath(path)
        try:
            with open(path, "rb") as f:
                data = tomllib.load(f)
        except FileNotFoundError:
            raise ConfigError(f"topology file {path!r} does not exist") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"topology file {path!r}: {exc}") from None
        return cls.from_dict(data, base=os.path.dirname(os.path.abspath(path)))

    @classmethod
    def from_dict(cls, data: dict, *, base: str = ".") -> "Topology":
        data = dict(data)
        share = data.pop("share", None)
        if not isinstance(share, str):
            raise ConfigError("topology needs `share = \"DIR\"`")
        share = os.path.join(base, os.path.expanduser(share))
        guests = data.pop("guests", 1)
        return cls(share, guests, **data)

    def with_share(self, share: str) -> "Topology":
        return replace(self, share=share)

    def __repr__(self) -> str:
        return f"Topology(share={self.share!r}, guests={[g.name for g in self.guests]}, tag={self.tag!r})"
