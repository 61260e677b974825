"""Checking one read of the history against the configurations of the checker's engine.

``_check_read`` decides whether a ``stat``, ``exists``, ``read`` or ``listdir`` is fine, not
checked, or stale (with the values that were possible and the write it missed); the listing and
content checks are its parts.
"""

from __future__ import annotations

import errno as _errno
from typing import TYPE_CHECKING, Any

from .checker_records import (
    ANY, Operation, _dirname, _basename,
)
from .checker_model import (
    _ABSENT,
)

if TYPE_CHECKING:
    from .checker import _Engine

# ====================================================================== checking reads


_UNCHECKED = "unchecked"


def _check_read(eng: _Engine, op: Operation):
    """None if the read is fine, :data:`_UNCHECKED`, or (kind, register, possible, staleness,
    missed index)."""
    k, p, rs = op.kind, op.path, op.start_ns
    failures: list[tuple[str, tuple, Any]] = []      # (register, possible now, (until, missed))

    def need(key, value, register):
        ok, best = eng.window(key, value, rs)
        if not ok:
            failures.append((register, eng.possible(key), best))

    if op.errno is not None and not (op.errno == _errno.ENOENT and k in ("stat", "read", "listdir")):
        return _UNCHECKED
    if p in eng.dirs:
        if k == "listdir" and op.errno is None:
            _check_listing(eng, op, need, failures)
        elif op.errno is not None or k == "exists" and not op.result:
            failures.append((f"existence of {p or '/'}", (True,), None))    # said to be absent
        elif k != "exists":
            return _UNCHECKED                         # a fixed directory's own attributes
    elif k == "listdir":
        return _UNCHECKED                             # listing what is not a directory
    elif k == "stat" and op.errno is not None:
        need(("stat", p), None, f"size/mode of {p}")
    elif k == "stat":
        # two steps, as stat(2) takes them (and a guest: a dentry, then GETATTR of its inode):
        # the path named an inode at some instant, that inode had these attributes at another
        _check_through_inode(eng, op, ("attrs", (int(op.result[0]), int(op.result[1]) & 0o7777)),
                             f"size/mode of {p}", failures)
    elif k == "exists":
        need(("exists", p), bool(op.result), f"existence of {p}")
    elif op.errno is not None:                        # read → ENOENT
        need(("bind", p), _ABSENT, f"content of {p}")
    else:
        _check_through_inode(eng, op, ("content", bytes(op.result)), f"content of {p}", failures)
    if not failures:
        return None
    measured = [(rs - b[0], b[1]) for _, _, b in failures if b is not None]
    never = any(b is None for _, _, b in failures)
    register = "; ".join(r for r, _, _ in failures)
    possible = tuple(v for _, poss, _ in failures for v in poss)
    staleness, missed = max(measured, key=lambda m: m[0]) if measured else (None, None)
    return ("never-current" if never else "stale", register, possible, staleness, missed)


def _check_listing(eng: _Engine, op: Operation, need, failures) -> None:
    p = op.path
    listed = set(op.result or ())
    where = p or "/"
    for d in eng.dirs:
        if d and _dirname(d) == p and _basename(d) not in listed:
            failures.append((f"listing of {where}: directory {_basename(d)} missing", (True,), None))
    for path in eng.paths:
        if _dirname(path) == p:
            name = _basename(path)
            shown = name in listed
            need(("exists", path), shown,
                 f"listing of {where}: {name} {'listed' if shown else 'missing'}")


def _check_through_inode(eng: _Engine, op: Operation, fact: tuple, register: str,
                         failures) -> None:
    """Some inode the path named during the read held exactly this value (``fact``: the kind of
    register, ``"content"`` or ``"attrs"``, and the value) during the read."""
    p, rs = op.path, op.start_ns
    kind, data = fact
    bind = ("bind", p)
    best = None                 # the latest instant a candidate inode stopped explaining the read
    seen = set()

    def inodes():
        yield from eng.now.get(bind, ())
        for t, b in reversed(eng.ended.get(bind, ())):     # the latest first
            if best is not None and t <= best[0]:
                return                                      # cannot explain it any better
            yield b

    for b in inodes():
        if b is _ABSENT or b in seen:
            continue
        seen.add(b)
        ok1, end1 = eng.window(bind, b, rs)
        ok2, end2 = (True, None) if b is ANY else eng.window((kind, b), data, rs)
        if ok1 and ok2:
            return
        if (not ok1 and end1 is None) or (not ok2 and end2 is None):
            continue                                  # this inode never explains it
        end = min((e for e in (end1, end2) if e is not None), key=lambda e: e[0])
        if best is None or end[0] > best[0]:
            best = end
    possible = []
    for b in sorted(eng.now.get(bind, ()), key=repr):
        if b is _ABSENT or b is ANY:
            possible.append(b)
        else:
            possible.extend(eng.possible((kind, b)))
    failures.append((register, tuple(possible), best))
