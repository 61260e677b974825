"""The state model of the history checker: the semantics of the steps of a write.

How one step of a write acts on a state (``_act``), how states are joined when the checker
widens (``_join_states``), how content and mode change (``_inode_step``) and how an operation is
planned into steps (``_plan``).
"""

from __future__ import annotations

from .checker_records import (
    ANY, Operation, _join,
)

# ====================================================================== the model


_ABSENT = None      # a path's value when no file is there

# A state is (names, inodes): names = ((path, ino | ANY), ...) sorted, absent paths left out;
# inodes = ((ino, content | ANY, mode | ANY), ...) sorted.
#
# A pending write that names a file by path carries, per path it resolves, the set of inodes
# ("candidates") that path named at some instant since the write started: resolving at any of
# those instants and acting later is the same as acting on any one candidate.  That is exact
# for one path and avoids a configuration per resolving instant.  (For rename's two lookups it
# forgets that the source was looked up before the target — an over-approximation.)


def _names_set(names, path, value):
    nm = dict(names)
    if value is _ABSENT:
        nm.pop(path, None)
    else:
        nm[path] = value
    return tuple(sorted(nm.items()))


def _act(state, step, cands, forced: bool = False) -> list:
    """The states one write's act can leave, given its candidates; [] when it cannot happen
    here.  ``forced``: the host said it happened — do it anyway, with what it touched unknown."""
    names, inodes = state
    kind = step[0]
    if kind == "create":
        path, mode, ino = step[1:]
        if dict(names).get(path, _ABSENT) not in (_ABSENT, ANY) and not forced:
            return []
        return [(_names_set(names, path, ino), tuple(sorted(inodes + ((ino, b"", mode),))))]
    if kind == "unlink":
        if dict(names).get(step[1], _ABSENT) is _ABSENT and not forced:
            return []
        return [(_names_set(names, step[1], _ABSENT), inodes)]
    if kind == "rename":
        src, dst = step[1:]
        cx, cy = cands
        if not cx:
            if not forced:
                return []                       # its lookup of the source found nothing
            cx = frozenset((ANY,))
        out = []
        # as vfs_rename: nothing to do when both names were (looked up as) the same inode
        if src == dst or cx & cy or ANY in cx and cy or ANY in cy:
            out.append(state)
        if src != dst:
            cur = dict(names).get(src, _ABSENT)
            if cur is not _ABSENT or forced:    # RENAME by name: the source must be there
                moved = _names_set(_names_set(names, src, _ABSENT), dst,
                                   ANY if cur is _ABSENT else cur)
                out.append((moved, inodes))
        return out
    (cx,) = cands                               # an inode step on a candidate
    if not cx:
        if not forced:
            return []
        cx = frozenset((ANY,))
    out = []
    for target in cx:
        new = []
        for ino, content, mode in inodes:
            if target is ANY or ino == target:
                nc, nmode = _inode_step(step, content, mode)
                if target is ANY:                   # maybe this inode, maybe not
                    nc, nmode = _join(content, nc), _join(mode, nmode)
                new.append((ino, nc, nmode))
            else:
                new.append((ino, content, mode))
        out.append((names, tuple(new)))
    return out


def _join_states(states):
    """One state covering all of ``states``: where they disagree, :data:`ANY`."""
    maps = [dict(names) for names, _ in states]
    names = []
    for p in sorted({p for m in maps for p in m}):
        v = maps[0].get(p, _ABSENT)
        for m in maps[1:]:
            v = _join(v, m.get(p, _ABSENT))
        if v is not _ABSENT:
            names.append((p, v))
    inodes: dict = {}
    for _, ins in states:
        for ino, c, m in ins:
            if ino in inodes:
                oc, om = inodes[ino]
                inodes[ino] = (_join(oc, c), _join(om, m))
            else:
                inodes[ino] = (c, m)
    return tuple(names), tuple(sorted((i, c, m) for i, (c, m) in inodes.items()))


def _inode_step(step, content, mode):
    op = step[0]
    if op == "mode":
        return content, step[1]
    if op == "trunc":
        n = step[1]
        if n == 0:
            return b"", mode
        if content is ANY:
            return ANY, mode
        return (content[:n] + bytes(max(0, n - len(content)))), mode
    if content is ANY:
        return ANY, mode
    if op == "append":
        return content + step[1], mode
    off, data = step[1], step[2]                        # write
    if len(content) < off:
        content = content + bytes(off - len(content))
    return content[:off] + data + content[off + len(data):], mode


def _plan(op: Operation, index: int) -> tuple[tuple, tuple[str, ...]]:
    """A write's act and the paths whose candidates it tracks."""
    k, p, a = op.kind, op.path, op.args
    if k == "create":
        return ("create", p, int(a[0]) & 0o7777, index), ()
    if k == "unlink":
        return ("unlink", p), ()
    if k == "rename":
        return ("rename", p, a[0]), (p, a[0])
    act = {"chmod": lambda: ("mode", int(a[0]) & 0o7777),
           "truncate": lambda: ("trunc", int(a[0])),
           "write": lambda: ("write", int(a[0]), bytes(a[1])),
           "append": lambda: ("append", bytes(a[0]))}[k]()
    return act, (p,)


_NO_CANDS = frozenset()
