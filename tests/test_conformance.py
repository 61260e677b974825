"""Differential conformance: random operation sequences applied to a GuestOS and to plain ``os`` on
a local directory must give the same results, file contents, stat fields and errnos.

The state machine only needs an object with the GuestOS methods and a directory inside it where
it may play (:class:`Subject`); how that GuestOS is made is the business of the
``guest_os_factory`` fixture, parametrised by back end ("loopback": client + server in this
process).  Another back end (a guest of a real cluster) is one more entry in ``FACTORIES``: a
callable returning a fresh :class:`Subject` for each example.

The machine works four directories deep (``WORKDIR``) so that symlinks to ``..`` behave the same
on both sides: the guest's mount root is its own parent, the local sandbox's is not.  Directory
sizes and atimes are never compared (file systems differ there), nor a directory's SEEK_END;
mtimes are compared right after ``utime`` set them.
"""

from __future__ import annotations

import errno
import functools
import itertools
import os
import secrets
import shutil
import stat
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine, initialize, invariant, precondition, rule, run_state_machine_as_test,
)

from loopback import LoopbackTransport, make_loopback
from vfscluster.fuse.passthrough import PassthroughFs
from vfscluster.fuse.server import Server
from vfscluster.guest.versions import VersionView
from vfscluster.host.versions import VersionTable
from vfscluster.guest.cache import CacheConfig, CacheMode, CachePolicy
from vfscluster.guest.client import FuseClient
from vfscluster.guest.gos import GuestOS


@dataclass
class Subject:
    """A GuestOS under test: ``os`` (anything with the GuestOS methods), ``base`` (an empty
    directory inside its mount, relative, "" for the mount root, where the machine works) and
    ``close`` (called once when the example is over)."""

    os: Any
    base: str = ""
    close: Callable[[], None] = lambda: None


def _loopback_subject(cache: "CacheConfig | None" = None) -> Subject:
    share = tempfile.mkdtemp(prefix="conformance-share-")
    table = view = None
    if cache is not None and cache.versions:
        table = VersionTable(f"/vfsc-conf-{os.getpid()}-{secrets.token_hex(4)}", 1 << 12,
                             unlink_name=True)
        view = VersionView(table.fd)
        fs = PassthroughFs(share)
        transport = LoopbackTransport(Server(fs, versions=table))
    else:
        fs, _server, transport = make_loopback(share)
    client = FuseClient(transport, CachePolicy(cache, versions=view))
    client.init()
    gos = GuestOS(client)

    def close() -> None:
        for fd in gos.open_fds():
            gos.close(fd)
        client.drop_caches()
        leaked = len(fs.inodes) - 1
        client.destroy()
        fs.close()
        if table is not None:
            view.close()
            table.close()
        shutil.rmtree(share, ignore_errors=True)
        assert leaked == 0, f"{leaked} host inodes still counted after everything was closed"
    return Subject(gos, "", close)


FACTORIES = {
    "loopback": _loopback_subject,
    # one guest alone must see exactly what a local fs shows, whatever it caches
    "loopback-auto": functools.partial(_loopback_subject, CacheConfig(CacheMode.AUTO)),
    "loopback-always": functools.partial(_loopback_subject, CacheConfig(CacheMode.ALWAYS)),
    "loopback-versions": functools.partial(
        _loopback_subject, CacheConfig(CacheMode.ALWAYS, versions=True)),
    "loopback-always-writeback": functools.partial(
        _loopback_subject, CacheConfig(CacheMode.ALWAYS, writeback=True)),
}


@pytest.fixture(params=sorted(FACTORIES))
def guest_os_factory(request) -> Callable[[], Subject]:
    """A callable returning a fresh :class:`Subject` per call."""
    return FACTORIES[request.param]


# ------------------------------------------------------------------------------------- the machine

WORKDIR = "l1/l2/l3/w"
PATHS = ["a", "b", "c", "d", "d/a", "d/b", "d/d", "d/d/a", "a/x", "b/", "d/"]
LINK_TARGETS = ["a", "b", "d", "d/a", "../a", "missing", "d/", "a/", "..", "d/d/../a"]
NAMES = st.sampled_from(PATHS)
DATA = st.binary(min_size=0, max_size=64) | st.sampled_from([b"x" * 300, b"\0" * 5])
OFFSETS = st.integers(min_value=0, max_value=400)
SIZES = st.integers(min_value=0, max_value=500)
MODES = st.sampled_from([0o600, 0o644, 0o755, 0o400, 0o000, 0o4755, 0o1777])
XNAMES = st.sampled_from(["user.x", "user.y", "user.zz"])
OPEN_FLAGS = st.sampled_from([
    os.O_RDONLY, os.O_WRONLY, os.O_RDWR, os.O_RDWR | os.O_APPEND, os.O_WRONLY | os.O_TRUNC,
    os.O_RDONLY | os.O_DIRECTORY, os.O_RDONLY | os.O_NOFOLLOW, os.O_WRONLY | os.O_APPEND,
    os.O_RDWR | os.O_CREAT, os.O_WRONLY | os.O_CREAT | os.O_EXCL,
    os.O_RDWR | os.O_CREAT | os.O_TRUNC,
    os.O_WRONLY | os.O_CREAT | os.O_APPEND, os.O_RDONLY | os.O_CREAT | os.O_NOFOLLOW,
])


def _outcome(call: Callable[[], Any], post: Callable[[Any], Any] = lambda r: r) -> tuple:
    try:
        return ("ok", post(call()))
    except OSError as exc:
        return ("error", errno.errorcode.get(exc.errno, exc.errno))


def _stat_fields(st_: Any) -> tuple:
    """What must agree: type and permission bits, size (not for directories: file systems size
    them differently), link count."""
    mode = st_.st_mode
    return (stat.S_IFMT(mode), stat.S_IMODE(mode), None if stat.S_ISDIR(mode) else st_.st_size,
            st_.st_nlink)


def _logged(fn):
    """Record each step (for the failure message: a flaky divergence cannot be replayed)."""
    @functools.wraps(fn)
    def step(self, **kwargs):
        self.history.append(f"{fn.__name__}({', '.join(f'{k}={v!r}' for k, v in kwargs.items())})")
        return fn(self, **kwargs)
    return step


@dataclass
class _Fd:
    guest: int
    local: int
    is_dir: bool


class ConformanceMachine(RuleBasedStateMachine):
    """Applies every rule to ``self.g`` (the GuestOS) and to ``os`` under ``self.root``."""

    factory: Callable[[], Subject] = staticmethod(_loopback_subject)

    def __init__(self) -> None:
        super().__init__()
        self.subject = self.factory()
        self.g = self.subject.os
        # The machine works in <base>/l1/l2/l3/w on both sides, so that symlinks to ".." (which
        # with the paths of PATHS climb a few levels above w) do not reach the guest's mount root
        # (whose ".." is itself).  Locally the sandbox sits under four padding directories of
        # our own: should a walk ever climb further, it diverges (a failure), it never touches
        # anything outside our temporary directory.
        self.outer = tempfile.mkdtemp(prefix="conformance-local-")
        self.sandbox = os.path.join(self.outer, "p1", "p2", "p3", "p4")
        prefix = self.subject.base
        for d in WORKDIR.split("/"):
            prefix = f"{prefix}/{d}" if prefix else d
            self.g.mkdir(prefix)
        self.root = os.path.join(self.sandbox, WORKDIR)
        os.makedirs(self.root)
        self.fds: list[_Fd] = []
        self.history: list[str] = []

    # -------------------------------------------------------------- plumbing

    def gp(self, p: str) -> str:
        return f"{self.subject.base}/{WORKDIR}/{p}" if self.subject.base else f"{WORKDIR}/{p}"

    def lp(self, p: str) -> str:
        return os.path.join(self.root, p)

    def both(self, guest_call, local_call, post=lambda r: r) -> tuple:
        g = _outcome(guest_call, post)
        loc = _outcome(local_call, post)
        assert g == loc, f"guest {g} != local {loc} after:\n" + "\n".join(self.history)
        return g

    def path_op(self, name: str, *paths: str, extra=(), post=lambda r: r, **kw) -> tuple:
        gpaths = [self.gp(p) for p in paths]
        lpaths = [self.lp(p) for p in paths]
        return self.both(lambda: getattr(self.g, name)(*gpaths, *extra, **kw),
                         lambda: getattr(os, name)(*lpaths, *extra, **kw), post)

    def teardown(self) -> None:
        try:
            self.compare_trees()
        finally:
            for f in self.fds:
                for closer, fd in ((self.g.close, f.guest), (os.close, f.local)):
                    try:
                        closer(fd)
                    except OSError:
                        pass
            self.fds.clear()
            shutil.rmtree(self.outer, ignore_errors=True)
            self.subject.close()

    # -------------------------------------------------------------- whole-tree comparison

    def _tree(self, lister, stater, reader) -> dict:
        out = {}
        todo = [""]
        while todo:
            d = todo.pop()
            for name in sorted(lister(d)):
                p = f"{d}/{name}" if d else name
                st_ = stater(p)
                rec = _stat_fields(st_)
                if stat.S_ISDIR(st_.st_mode):
                    todo.append(p)
                elif stat.S_ISREG(st_.st_mode) and st_.st_mode & 0o444:
                    rec += (reader(p),)
                out[p] = rec
        return out

    def compare_trees(self) -> None:
        """The whole tree from the sandbox top (l1) down: types, modes, sizes, links, data;
        and nothing in the padding above the sandbox."""
        pad = self.outer
        for name in ("p1", "p2", "p3", "p4"):
            assert os.listdir(pad) == [name], f"something climbed out of the sandbox into {pad}"
            pad = os.path.join(pad, name)
        top = self.subject.base

        def gpath(p: str) -> str:
            return f"{top}/{p}" if top else p

        def gread(p: str) -> bytes:
            fd = self.g.open(gpath(p), os.O_RDONLY)
            try:
                return self.g.pread(fd, 1 << 20, 0)
            finally:
                self.g.close(fd)

        def lread(p: str) -> bytes:
            fd = os.open(os.path.join(self.sandbox, p), os.O_RDONLY)
            try:
                return os.pread(fd, 1 << 20, 0)
            finally:
                os.close(fd)
        g = self._tree(lambda d: self.g.listdir(gpath(d) if d else (top or ".")),
                       lambda p: self.g.lstat(gpath(p)), gread)
        loc = self._tree(lambda d: os.listdir(os.path.join(self.sandbox, d)),
                         lambda p: os.lstat(os.path.join(self.sandbox, p)), lread)
        assert g == loc

    # -------------------------------------------------------------- namespace

    @initialize(tree=st.sampled_from(["empty", "flat", "nested"]))
    @_logged
    def do_init(self, tree):
        """A starting tree, so that the random steps find things to collide with."""
        if tree == "empty":
            return
        made = [("file", "a", b"alpha"), ("dir", "d", None), ("file", "d/a", b"in d")]
        if tree == "nested":
            made += [("dir", "d/d", None), ("file", "d/d/a", b"deep"), ("link", "b", "d/a")]
        for kind, path, arg in made:
            if kind == "dir":
                self.both(lambda: self.g.mkdir(self.gp(path)), lambda: os.mkdir(self.lp(path)))
            elif kind == "link":
                self.both(lambda: self.g.symlink(arg, self.gp(path)),
                          lambda: os.symlink(arg, self.lp(path)))
            else:
                for opener in ((self.g, self.gp), (os, self.lp)):
                    mod, tr = opener
                    fd = mod.open(tr(path), os.O_CREAT | os.O_WRONLY, 0o644)
                    mod.write(fd, arg)
                    mod.close(fd)

    @rule(path=NAMES, data=DATA,
          flags=st.sampled_from([os.O_RDWR | os.O_CREAT, os.O_WRONLY | os.O_CREAT | os.O_EXCL,
                                 os.O_RDWR | os.O_CREAT | os.O_TRUNC]))
    @_logged
    def do_create(self, path, flags, data):
        """Create (or open) ``path``, write ``data``, keep it open."""
        self.do_open.__wrapped__(self, path=path, flags=flags, mode=0o644)
        if self.fds and data:
            self.fd_op(self.fds[-1], "write", data)

    @rule(path=NAMES, flags=OPEN_FLAGS, mode=MODES)
    @_logged
    def do_open(self, path, flags, mode):
        g = _outcome(lambda: self.g.open(self.gp(path), flags, mode))
        loc = _outcome(lambda: os.open(self.lp(path), flags, mode))
        if g[0] == loc[0] == "ok":
            self.fds.append(_Fd(g[1], loc[1], stat.S_ISDIR(os.fstat(loc[1]).st_mode)))
            return
        for side, closer in ((g, self.g.close), (loc, os.close)):
            if side[0] == "ok":                             # keep nothing half-open
                closer(side[1])
        assert g == loc, (f"open({path!r}, {flags:#o}): guest {g} != local {loc} after:\n"
                          + "\n".join(self.history))

    @rule(path=NAMES, mode=MODES)
    @_logged
    def do_mkdir(self, path, mode):
        self.path_op("mkdir", path, extra=(mode,))

    @rule(path=NAMES)
    @_logged
    def do_rmdir(self, path):
        self.path_op("rmdir", path)

    @rule(path=NAMES)
    @_logged
    def do_unlink(self, path):
        self.path_op("unlink", path)

    @rule(src=NAMES, dst=NAMES)
    @_logged
    def do_rename(self, src, dst):
        self.path_op("rename", src, dst)

    @rule(src=NAMES, dst=NAMES)
    @_logged
    def do_link(self, src, dst):
        self.path_op("link", src, dst)

    @rule(link_to=st.sampled_from(LINK_TARGETS), path=NAMES)
    @_logged
    def do_symlink(self, link_to, path):
        self.both(lambda: self.g.symlink(link_to, self.gp(path)),
                  lambda: os.symlink(link_to, self.lp(path)))

    @rule(path=NAMES)
    @_logged
    def do_readlink(self, path):
        self.path_op("readlink", path)

    @rule(path=NAMES)
    @_logged
    def do_listdir(self, path):
        self.path_op("listdir", path, post=sorted)

    @rule(path=NAMES)
    @_logged
    def do_scandir(self, path):
        def entries(it):
            return sorted((e.name, e.is_dir(), e.is_file(), e.is_symlink(),
                           e.is_dir(follow_symlinks=False)) for e in it)
        self.path_op("scandir", path, post=entries)

    # -------------------------------------------------------------- metadata

    @rule(path=NAMES, follow=st.booleans())
    @_logged
    def do_stat(self, path, follow):
        self.path_op("stat", path, post=_stat_fields, follow_symlinks=follow)

    @rule(path=NAMES, mode=MODES)
    @_logged
    def do_chmod(self, path, mode):
        self.path_op("chmod", path, extra=(mode,))
        self.path_op("stat", path, post=_stat_fields)

    @rule(path=NAMES, atime=st.integers(0, 2**33), mtime=st.integers(0, 2**33),
          follow=st.booleans())
    def do_utime(self, path, atime, mtime, follow):
        ns = (atime * 1000 + 7, mtime * 1000 + 9)
        self.path_op("utime", path, ns=ns, follow_symlinks=follow)
        self.path_op("stat", path, follow_symlinks=follow,
                     post=lambda s: (s.st_mtime_ns, s.st_atime_ns) if s.st_mtime_ns == ns[1]
                     else "unset")

    @rule(path=NAMES, length=SIZES)
    @_logged
    def do_truncate(self, path, length):
        self.path_op("truncate", path, extra=(length,))

    @rule(path=NAMES, mode=st.sampled_from([os.F_OK, os.R_OK, os.W_OK, os.X_OK, os.R_OK | os.X_OK]))
    @_logged
    def do_access(self, path, mode):
        self.path_op("access", path, extra=(mode,))

    @rule(path=NAMES, name=XNAMES, value=st.binary(max_size=40),
          flags=st.sampled_from([0, os.XATTR_CREATE, os.XATTR_REPLACE]))
    def do_setxattr(self, path, name, value, flags):
        self.path_op("setxattr", path, extra=(name, value, flags))

    @rule(path=NAMES, name=XNAMES)
    @_logged
    def do_getxattr(self, path, name):
        self.path_op("getxattr", path, extra=(name,))

    @rule(path=NAMES)
    @_logged
    def do_listxattr(self, path):
        self.path_op("listxattr", path, post=sorted)

    @rule(path=NAMES, name=XNAMES)
    @_logged
    def do_removexattr(self, path, name):
        self.path_op("removexattr", path, extra=(name,))

    # -------------------------------------------------------------- descriptors

    def _fd(self, i: int) -> _Fd:
        return self.fds[i % len(self.fds)]

    def _has_fd(self) -> bool:
        return bool(self.fds)

    def fd_op(self, f: _Fd, name: str, *args, post=lambda r: r) -> tuple:
        result = self.both(lambda: getattr(self.g, name)(f.guest, *args),
                           lambda: getattr(os, name)(f.local, *args), post)
        if name != "close":             # the file positions must agree after every operation
            self.both(lambda: self.g.lseek(f.guest, 0, os.SEEK_CUR),
                      lambda: os.lseek(f.local, 0, os.SEEK_CUR))
        return result

    @precondition(_has_fd)
    @rule(i=st.integers(0, 7))
    @_logged
    def do_close(self, i):
        f = self._fd(i)
        self.fds.remove(f)
        self.fd_op(f, "close")

    @precondition(_has_fd)
    @rule(i=st.integers(0, 7), n=SIZES)
    @_logged
    def do_read(self, i, n):
        self.fd_op(self._fd(i), "read", n)

    @precondition(_has_fd)
    @rule(i=st.integers(0, 7), n=SIZES, offset=OFFSETS)
    @_logged
    def do_pread(self, i, n, offset):
        self.fd_op(self._fd(i), "pread", n, offset)

    @precondition(_has_fd)
    @rule(i=st.integers(0, 7), data=DATA)
    @_logged
    def do_write(self, i, data):
        self.fd_op(self._fd(i), "write", data)

    @precondition(_has_fd)
    @rule(i=st.integers(0, 7), data=DATA, offset=OFFSETS)
    @_logged
    def do_pwrite(self, i, data, offset):
        self.fd_op(self._fd(i), "pwrite", data, offset)

    @precondition(_has_fd)
    @rule(i=st.integers(0, 7), pos=st.integers(-10, 300),
          how=st.sampled_from([os.SEEK_SET, os.SEEK_CUR, os.SEEK_END]))
    def do_lseek(self, i, pos, how):
        f = self._fd(i)
        if f.is_dir and how == os.SEEK_END:
            how = os.SEEK_SET           # ext4 reports a hash cookie for a directory's end
        self.fd_op(f, "lseek", pos, how)

    @precondition(_has_fd)
    @rule(i=st.integers(0, 7), length=SIZES)
    @_logged
    def do_ftruncate(self, i, length):
        self.fd_op(self._fd(i), "ftruncate", length)

    @precondition(_has_fd)
    @rule(i=st.integers(0, 7))
    @_logged
    def do_fstat(self, i):
        self.fd_op(self._fd(i), "fstat", post=_stat_fields)

    @precondition(_has_fd)
    @rule(i=st.integers(0, 7))
    @_logged
    def do_fsync(self, i):
        self.fd_op(self._fd(i), "fsync")

    @precondition(_has_fd)
    @rule(i=st.integers(0, 7), sizes=st.lists(st.integers(0, 40), max_size=4),
          offset=st.sampled_from([None, -1, 0, 3, 200]))
    @_logged
    def do_readv(self, i, sizes, offset):
        """readv (offset None) or preadv: the count and what each buffer got."""
        f = self._fd(i)

        def call(mod, fd):
            bufs = [bytearray(n) for n in sizes]
            n = mod.readv(fd, bufs) if offset is None else mod.preadv(fd, bufs, offset)
            return n, [bytes(b) for b in bufs]
        self.both(lambda: call(self.g, f.guest), lambda: call(os, f.local))
        self.both(lambda: self.g.lseek(f.guest, 0, os.SEEK_CUR),
                  lambda: os.lseek(f.local, 0, os.SEEK_CUR))

    @precondition(_has_fd)
    @rule(i=st.integers(0, 7), datas=st.lists(DATA, max_size=3),
          offset=st.sampled_from([None, -1, 0, 5, 300]))
    @_logged
    def do_writev(self, i, datas, offset):
        """writev (offset None) or pwritev."""
        if offset is None:
            self.fd_op(self._fd(i), "writev", datas)
        else:
            self.fd_op(self._fd(i), "pwritev", datas, offset)

    @precondition(_has_fd)
    @rule(i=st.integers(0, 7))
    @_logged
    def do_listdir_fd(self, i):
        """listdir and scandir of a descriptor (ENOTDIR, EBADF for O_PATH...), and the position
        after (rewound)."""
        f = self._fd(i)
        self.fd_op(f, "listdir", post=sorted)
        self.both(lambda: sorted((e.name, e.path, e.is_dir(), e.is_symlink(),
                                  _stat_fields(e.stat(follow_symlinks=False)))
                                 for e in self.g.scandir(f.guest)),
                  lambda: sorted((e.name, e.path, e.is_dir(), e.is_symlink(),
                                  _stat_fields(e.stat(follow_symlinks=False)))
                                 for e in os.scandir(f.local)))
        self.both(lambda: self.g.lseek(f.guest, 0, os.SEEK_CUR),
                  lambda: os.lseek(f.local, 0, os.SEEK_CUR))

    @precondition(_has_fd)
    @rule(i=st.integers(0, 7), path=NAMES, other=NAMES,
          op=st.sampled_from(["stat", "lstat", "readlink", "access", "mkdir", "rmdir", "unlink",
                              "open", "chmod", "symlink", "rename", "link"]))
    @_logged
    def do_at(self, i, op, path, other):
        """A path call relative to an open descriptor (``dir_fd``; ENOTDIR for a file's)."""
        f = self._fd(i)

        def call(mod, fd):
            if op in ("stat", "lstat"):
                return _stat_fields(getattr(mod, op)(path, dir_fd=fd))
            if op == "access":
                return mod.access(path, os.R_OK, dir_fd=fd)
            if op == "open":
                new = mod.open(path, os.O_RDONLY, dir_fd=fd)
                try:
                    return _stat_fields(mod.fstat(new))
                finally:
                    mod.close(new)
            if op == "chmod":
                return mod.chmod(path, 0o751, dir_fd=fd)
            if op == "symlink":
                return mod.symlink(other, path, dir_fd=fd)
            if op in ("rename", "link"):
                return getattr(mod, op)(path, other, src_dir_fd=fd, dst_dir_fd=fd)
            return getattr(mod, op)(path, dir_fd=fd)
        self.both(lambda: call(self.g, f.guest), lambda: call(os, f.local))

    @rule()
    @_logged
    def check_tree(self):
        self.compare_trees()

    @invariant()
    def same_root_listing(self):
        g = sorted(self.g.listdir(self.gp(".")))
        assert g == sorted(os.listdir(self.root))


def test_guest_os_conforms_to_os(guest_os_factory):
    """CONFORMANCE_EXAMPLES / CONFORMANCE_STEPS enlarge the search (e.g. 4000 / 120 with
    ``--timeout=0`` for a campaign)."""
    machine = type("Machine", (ConformanceMachine,), {"factory": staticmethod(guest_os_factory)})
    default = 400 if guest_os_factory is FACTORIES["loopback"] else 120   # cached modes: fewer
    run_state_machine_as_test(machine, settings=settings(
        max_examples=int(os.environ.get("CONFORMANCE_EXAMPLES", default)),
        stateful_step_count=int(os.environ.get("CONFORMANCE_STEPS", 40)),
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much]))


# ------------------------------------------------------------------- the same machine, real guest

def _rmtree_in(gos, path: str) -> None:
    for name in gos.listdir(path):
        p = f"{path}/{name}"
        st = gos.lstat(p)
        if stat.S_ISDIR(st.st_mode):
            gos.chmod(p, 0o755)
            _rmtree_in(gos, p)
            gos.rmdir(p)
        else:
            gos.unlink(p)


def _run_machine_in_guest(gos, examples: int, steps: int) -> int:
    """Runs inside a cluster guest process: the machine against its GuestOS (ring, host process)."""
    counter = itertools.count()

    def make() -> Subject:
        base = f"example{next(counter)}"
        gos.mkdir(base)

        def close() -> None:
            for fd in gos.open_fds():
                gos.close(fd)
            gos.chmod(base, 0o755)
            _rmtree_in(gos, base)
            gos.rmdir(base)
        return Subject(gos, base, close)

    machine = type("GuestMachine", (ConformanceMachine,), {"factory": staticmethod(make)})
    run_state_machine_as_test(machine, settings=settings(
        max_examples=examples, stateful_step_count=steps, deadline=None, database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much]))
    return next(counter)


def test_cluster_guest_conforms_to_os(tmp_path):
    """The same random sequences, run inside a guest of a real cluster (vfs-hostd process, rings in
    shared memory); the local side is plain ``os`` in that guest process."""
    from vfscluster import Cluster, Topology
    share = tmp_path / "share"
    share.mkdir()
    with Cluster.start(Topology(share, guests=1)) as c:
        ran = c.guests[0].run(_run_machine_in_guest, int(os.environ.get("CONFORMANCE_EXAMPLES", 100)),
                              int(os.environ.get("CONFORMANCE_STEPS", 30)))
        assert ran > 0
        assert os.listdir(share) == []
