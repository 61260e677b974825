"""Path walking in front of FUSE, the way Linux ``fs/namei.c`` does it.

A path inside the mount is resolved component by component with LOOKUP, starting at the root
(nodeid 1; the share root is both ``/`` and the working directory).  :class:`PathWalk` is the
kernel's ``struct nameidata``: it keeps the chain of directories from the root to where it stands,
each pinned in the :class:`~vfscluster.guest.client.FuseClient`, so that

* ``..`` is resolved physically by popping the chain (``..`` of the root is the root);
* a walk may start in a directory other than the root (a ``dir_fd``): relative paths go from
  there, and ``..`` above it asks the host for the parent (LOOKUP ``..``: the kernel's
  ``d_parent``, which follows renames), up to the root;
* symbolic links are followed by reading them (READLINK) and walking their target, relative to the
  link's directory, or from the share root when absolute; more than 40 links in one resolution is
  ELOOP (MAXSYMLINKS);
* ancestry questions (RENAME into one's own subdirectory) are answered from the chain.

What is imitated, with the errno Linux gives:

* empty path: ENOENT; path of PATH_MAX (4096) bytes or more, component of more than NAME_MAX (255)
  bytes: ENAMETOOLONG;
* walking through something that is not a directory: ENOTDIR; through a missing name: ENOENT;
* a trailing slash makes the last component "must be a directory" and forces following a symlink
  there (``file/``: ENOTDIR);
* :meth:`PathWalk.parent` stops before the last component (``filename_parentat``) and reports its
  type: a normal name, ``.``, ``..``, or the root itself (the path ``/``).
"""

from __future__ import annotations

import errno
import os
import stat
from enum import Enum
from collections.abc import Callable
from typing import NamedTuple

from ..fuse.abi import ROOT_ID, Attr
from .client import FuseClient

__all__ = ["Node", "Last", "LastType", "PathWalk", "split_path", "MAXSYMLINKS", "NAME_MAX",
           "PATH_MAX"]

_S_IFMT = 0o170000
MAXSYMLINKS = 40
NAME_MAX = 255
PATH_MAX = 4096


def oserror(err: int) -> OSError:
    """``OSError(err)`` with the standard message (the caller adds the file names)."""
    return OSError(err, os.strerror(err))


class Node(NamedTuple):
    """An inode as a walk found it: nodeid and the attributes its LOOKUP returned (None for the
    root, whose attributes nobody asked for yet).  An immutable record (a ``NamedTuple``: one
    is made per component walked, and it costs a third of a frozen dataclass)."""

    nodeid: int
    attr: Attr | None = None

    @property
    def fmt(self) -> int:
        return stat.S_IFDIR if self.attr is None else stat.S_IFMT(self.attr.mode)

    @property
    def is_dir(self) -> bool:
        return self.attr is None or self.attr.mode & _S_IFMT == stat.S_IFDIR

    @property
    def is_symlink(self) -> bool:
        return self.attr is not None and self.attr.mode & _S_IFMT == stat.S_IFLNK

    @property
    def is_reg(self) -> bool:
        return self.fmt == stat.S_IFREG


ROOT = Node(ROOT_ID)


class LastType(Enum):
    """The kind of the last component (``LAST_NORM``, ``LAST_DOT``, ``LAST_DOTDOT``,
    ``LAST_ROOT``)."""

    NORM = 0
    DOT = 1
    DOTDOT = 2
    ROOT = 3


class Last(NamedTuple):
    """The last component of a path: ``name`` (None for the root), its type, and whether the
    path had a slash after it."""

    name: bytes | None
    type: LastType
    slash: bool


def split_path(path: bytes) -> tuple[bool, list[bytes], bool]:
    """``(absolute, components, trailing slash)``; empty components are dropped."""
    comps = [c for c in path.split(b"/") if c]
    return path.startswith(b"/"), comps, bool(comps) and path.endswith(b"/")


def check_path(path: bytes) -> None:
    """getname(): ENOENT for an empty path, ENAMETOOLONG from PATH_MAX bytes on."""
    if not path:
        raise oserror(errno.ENOENT)
    if len(path) >= PATH_MAX:
        raise oserror(errno.ENAMETOOLONG)


class PathWalk:
    """One path resolution in progress.  Use as a context manager: leaving it releases every
    node the walk still pins (the chain).  Nodes handed out by :meth:`lookup` and
    :meth:`resolve` are pinned for the caller, who puts them.

    ``start``: the directory relative paths start from (fs/namei.c ``path_init`` with a
    ``dfd``), pinned by the caller while the walk is made (an open file's node); the walk pins
    it once more for itself.  Default: the root."""

    def __init__(self, client: FuseClient, trace: list | None = None,
                 start: Node | None = None) -> None:
        self.client = client
        if start is None or start.nodeid == ROOT_ID:
            self.stack: list[Node] = [ROOT]
        else:
            client.hold(start.nodeid)
            self.stack = [start]
        self.links = 0
        #: with a cache: the ``(nodeid, stamp)`` pairs the walk's answers depend on
        self.trace = trace
        #: called with each directory before a name is looked up in it (fs/namei.c
        #: ``may_lookup``: search permission); raises to refuse.  None: no check.
        self.search: Callable[[Node], None] | None = None

    def __enter__(self) -> PathWalk:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Release the chain (the root is never counted: putting it does nothing)."""
        stack = self.stack
        if len(stack) > 1 or stack[0] is not ROOT:
            self.stack = [ROOT]
            for node in reversed(stack):
                self.client.put(node.nodeid)

    # ------------------------------------------------------------------ the chain

    @property
    def dir(self) -> Node:
        """Where the walk stands: the directory the next component is looked up in."""
        return self.stack[-1]

    @property
    def chain_ids(self) -> list[int]:
        """Nodeids from the root (or from the directory the walk started in, when it has not
        climbed to the root) to :attr:`dir`: ancestors of :attr:`dir`, not necessarily all."""
        return [n.nodeid for n in self.stack]

    @property
    def rooted(self) -> bool:
        """Whether :attr:`chain_ids` goes up to the root: every ancestor of :attr:`dir` is on it
        (not so for a walk that started in a ``dir_fd`` and has not climbed out of it)."""
        return self.stack[0] is ROOT

    def _to_root(self) -> None:
        stack = self.stack
        while len(stack) > 1:
            self.client.put(stack.pop().nodeid)
        if stack[0] is not ROOT:
            bottom, stack[0] = stack[0], ROOT
            self.client.put(bottom.nodeid)

    def _up(self) -> None:
        """``..``: physically one level up; the root is its own parent.  Above the directory
        the walk started in, the host names the parent."""
        stack = self.stack
        if len(stack) > 1:
            self.client.put(stack.pop().nodeid)
            return
        bottom = stack[0]
        if bottom is ROOT:
            return
        entry = self.client.lookup_parent(bottom.nodeid)
        stack[0] = ROOT if entry.nodeid == ROOT_ID else Node(entry.nodeid, entry.attr)
        self.client.put(bottom.nodeid)

    # ------------------------------------------------------------------ steps

    def lookup(self, name: bytes, fresh: bool = False) -> Node:
        """LOOKUP ``name`` in :attr:`dir`: a pinned node.  ENAMETOOLONG, ENOENT.  ``fresh``:
        not from a timed dentry (the name is about to be changed or written through)."""
        if self.search is not None:
            self.search(self.dir)
        if len(name) > NAME_MAX:
            raise oserror(errno.ENAMETOOLONG)
        entry = self.client.lookup(self.dir.nodeid, name, self.trace, fresh=fresh)
        return Node(entry.nodeid, entry.attr)

    def lookup_opt(self, name: bytes, fresh: bool = False) -> Node | None:
        """:meth:`lookup`, with None for a name that does not exist."""
        try:
            return self.lookup(name, fresh)
        except OSError as exc:
            if exc.errno == errno.ENOENT:
                return None
            raise

    def read_link(self, link: Node) -> bytes:
        """The target of symlink ``link`` (pinned; consumed), counted against MAXSYMLINKS
        (ELOOP); ENOENT for an empty target."""
        try:
            self.links += 1
            if self.links > MAXSYMLINKS:
                raise oserror(errno.ELOOP)
            body = self.client.readlink(link.nodeid)
        finally:
            self.client.put(link.nodeid)
        if not body:
            raise oserror(errno.ENOENT)
        return body

    def follow(self, link: Node) -> Last:
        """Follow symlink ``link`` (pinned; consumed) found in :attr:`dir`: walk its target up to
        the target's last component, which is returned (see :meth:`parent`)."""
        return self.parent(self.read_link(link))

    def walk_dirs(self, comps: list[bytes]) -> None:
        """Walk ``comps`` as components that more components follow: each must end up a
        directory (ENOTDIR), symlinks among them are followed all the way."""
        work = comps[::-1]
        while work:
            name = work.pop()
            if not self.dir.is_dir:
                raise oserror(errno.ENOTDIR)
            if name == b"." or name == b"..":
                if self.search is not None:
                    self.search(self.dir)
            if name == b".":
                continue
            if name == b"..":
                self._up()
                continue
            node = self.lookup(name)
            if node.is_symlink:
                absolute, body_comps, _ = split_path(self.read_link(node))
                if absolute:
                    self._to_root()
                work.extend(reversed(body_comps))
                continue
            self.stack.append(node)
        if not self.dir.is_dir:
            raise oserror(errno.ENOTDIR)

    def parent(self, path: bytes) -> Last:
        """Walk ``path`` (relative to :attr:`dir`, or from the root when absolute) up to its
        last component, which is returned, not looked up (fs/namei.c ``filename_parentat``)."""
        if path and b"/" not in path:       # one component: nothing to walk
            kind = (LastType.NORM if path != b"." and path != b".." else
                    LastType.DOT if path == b"." else LastType.DOTDOT)
            return Last(path, kind, False)
        absolute, comps, slash = split_path(path)
        if absolute:
            self._to_root()
        if not comps:
            return Last(None, LastType.ROOT, False)
        self.walk_dirs(comps[:-1])
        name = comps[-1]
        kind = LastType.DOT if name == b"." else LastType.DOTDOT if name == b".." else LastType.NORM
        return Last(name, kind, slash)

    def last_node(self, last: Last) -> Node | None:
        """The node a non-NORM last component names (``.``, ``..``, the root), pinned; for
        ``..`` the walk moves up.  None for a normal name."""
        if last.type is LastType.NORM:
            return None
        if last.type is LastType.DOTDOT:
            self._up()
        elif last.type is LastType.ROOT:
            self._to_root()
        node = self.dir
        self.client.hold(node.nodeid)
        return node

    def resolve(self, path: bytes, *, follow: bool = True, must_dir: bool = False,
                fresh: bool = False) -> Node:
        """The node ``path`` names, pinned; :attr:`dir` is then its parent's chain (or, for
        ``.``/``..``/``/``, the node itself).  ``follow``: follow a symlink in last position
        (a trailing slash forces it: LOOKUP_FOLLOW | LOOKUP_DIRECTORY); ``must_dir``: ENOTDIR
        unless a directory (LOOKUP_DIRECTORY alone, as O_DIRECTORY sets it); ``fresh``: the
        last component is looked up afresh (see :meth:`lookup`)."""
        check_path(path)
        last = self.parent(path)
        slashed = False
        while True:
            slashed = slashed or last.slash
            node = self.last_node(last)
            if node is None:
                node = self.lookup(last.name, fresh)
                if node.is_symlink and (follow or slashed):
                    last = self.follow(node)
                    continue
            if (must_dir or slashed) and not node.is_dir:
                self.client.put(node.nodeid)
                raise oserror(errno.ENOTDIR)
            return node
