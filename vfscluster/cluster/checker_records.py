"""The records of the history checker: operations, the initial tree, findings and results.

``Operation`` (one guest's call with its result and timestamps), ``Tree`` (the initial files and
directories), ``Finding`` (one stale read or unexplained write), ``GuestTally`` and
``CheckResult``; with the write and read kinds, :data:`ANY` (the unknown value) and the small
path and value helpers the records and the model share.
"""

from __future__ import annotations

import errno as _errno
import re
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

WRITE_KINDS = ("create", "unlink", "rename", "chmod", "truncate", "write", "append")
READ_KINDS = ("stat", "exists", "read", "listdir")


class _Any:
    """The unknown value (a field the model lost track of): matches everything."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "ANY"

    def __reduce__(self):
        return "ANY"


#: The unknown value.
ANY: Any = _Any()


# ====================================================================== records


@dataclass(frozen=True, kw_only=True)
class Operation:
    """One operation of a history.

    ``path`` is relative to the tree's root, ``/``-separated, without a leading slash (``"a"``,
    ``"d/b"``; ``""`` is the root directory).  ``args`` and ``result`` per ``kind``: see the module
    docstring.  ``errno`` is set (and ``result`` ignored) when the operation failed.
    """

    guest: str
    kind: str
    path: str
    args: tuple = ()
    result: Any = None
    errno: int | None = None
    start_ns: int
    end_ns: int

    def __post_init__(self) -> None:
        if self.kind not in WRITE_KINDS and self.kind not in READ_KINDS:
            raise ValueError(f"unknown operation kind {self.kind!r}")
        if self.end_ns < self.start_ns:
            raise ValueError(f"{self.kind} {self.path!r}: ends ({self.end_ns}) before it starts "
                             f"({self.start_ns})")
        if not isinstance(self.args, tuple):
            object.__setattr__(self, "args", tuple(self.args))
        want = {"create": 1, "unlink": 0, "rename": 1, "chmod": 1, "truncate": 1, "write": 2,
                "append": 1}.get(self.kind)
        if want is not None and len(self.args) != want:
            raise ValueError(f"{self.kind} takes {want} argument(s), not {self.args!r}")
        if self.kind == "listdir" and self.errno is None and self.result is not None:
            object.__setattr__(self, "result", tuple(sorted(self.result)))

    @property
    def is_write(self) -> bool:
        return self.kind in WRITE_KINDS

    @property
    def ok(self) -> bool:
        return self.errno is None

    def describe(self) -> str:
        args = ", ".join(repr(a) for a in self.args)
        out = (f"errno {_errno.errorcode.get(self.errno, self.errno)}" if self.errno is not None
               else repr(self.result))
        return f"{self.guest}: {self.kind}({self.path!r}{', ' + args if args else ''}) → {out}"


@dataclass(frozen=True)
class Tree:
    """The tree before the history: fixed directories (``""`` is the root, always present) and
    files ``{path: (content, mode)}``."""

    dirs: tuple[str, ...] = ("",)
    files: tuple[tuple[str, bytes, int], ...] = ()

    def __init__(self, dirs: Iterable[str] = ("",),
                 files: Mapping[str, tuple[bytes, int]] | Iterable = ()) -> None:
        ds = set(dirs) | {""}
        for d in list(ds):
            while d:                            # parents of a fixed directory are fixed too
                d = d.rpartition("/")[0]
                ds.add(d)
        items = files.items() if isinstance(files, Mapping) else ((p, (c, m)) for p, c, m in files)
        fs = tuple(sorted((p, bytes(c), int(m) & 0o7777) for p, (c, m) in items))
        for p, _, _ in fs:
            if p in ds or _dirname(p) not in ds:
                raise ValueError(f"initial file {p!r}: not a file in a fixed directory")
        object.__setattr__(self, "dirs", tuple(sorted(ds)))
        object.__setattr__(self, "files", fs)


@dataclass(frozen=True, kw_only=True)
class Finding:
    """A read that did not reflect the writes, or a write that cannot have happened.

    ``kind``: ``"stale"`` (the value had been current; ``staleness_ns`` says how long before the
    read started it stopped being so, and ``missed`` is the write whose end made it so),
    ``"never-current"`` (no write ever made it possible before the read ended) or
    ``"unexplained-write"``.  ``register`` names what was read ("content of a", "size/mode of
    a", "existence of d/b", "listing of d: x"); ``possible`` lists the values the register could
    hold when the read ended.
    """

    op: Operation
    kind: str
    register: str
    observed: Any = None
    possible: tuple = ()
    staleness_ns: int | None = None
    missed: Operation | None = None

    @property
    def staleness_ms(self) -> float | None:
        return None if self.staleness_ns is None else self.staleness_ns / 1e6

    def describe(self) -> str:
        s = f"{self.kind}: {self.op.describe()} [{self.register}]"
        if self.staleness_ns is not None:
            s += f", {self.staleness_ns / 1e6:.3f} ms stale"
        if self.missed is not None:
            s += f", missed {self.missed.describe()}"
        if self.possible:
            s += f"; possible: {', '.join(_show(v) for v in self.possible[:4])}"
        return s


@dataclass(frozen=True)
class GuestTally:
    """Counts for one guest (or ``"total"``)."""

    guest: str
    operations: int = 0
    reads: int = 0
    stale_reads: int = 0
    never_current: int = 0
    unexplained_writes: int = 0
    unchecked: int = 0
    worst_staleness_ns: int = 0

    @property
    def worst_staleness_ms(self) -> float:
        return self.worst_staleness_ns / 1e6


@dataclass(frozen=True)
class CheckResult:
    findings: tuple[Finding, ...]
    per_guest: tuple[GuestTally, ...]
    total: GuestTally
    widenings: int = 0
    max_configs: int = 0

    @property
    def stale_reads(self) -> int:
        return self.total.stale_reads

    @property
    def clean(self) -> bool:
        """No finding at all."""
        return not self.findings


# ====================================================================== helpers


def _dirname(path: str) -> str:
    return path.rpartition("/")[0]


def _basename(path: str) -> str:
    return path.rpartition("/")[2]


def _show(v: Any) -> str:
    if v is None:
        return "absent"
    if isinstance(v, tuple) and len(v) == 2 and all(isinstance(x, int) or x is ANY for x in v):
        size, mode = v
        return f"size {size} mode {mode if mode is ANY else oct(mode)}"
    text = repr(v)
    return text if len(text) <= 60 else text[:57] + "…"


def _patterns(value: Any) -> tuple:
    """The facts that match ``value``: itself, and it with parts unknown."""
    if isinstance(value, tuple) and len(value) == 2:
        a, b = value
        return value, (ANY, b), (a, ANY), (ANY, ANY), ANY
    return value, ANY


def _join(a: Any, b: Any) -> Any:
    return a if a == b and type(a) is type(b) else ANY


def _natural(name: str):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]
