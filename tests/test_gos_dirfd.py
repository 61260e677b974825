"""GuestOS's ``dir_fd`` keywords, ``scandir``/``listdir`` of a descriptor, ``dup2`` and
``readv``/``writev``/``preadv``/``pwritev``: each call made on a GuestOS (loopback transport, in
this process) and with ``os`` on a local twin tree must give the same result, the same errno and
file names, the same TypeError / ValueError / OverflowError; lookup counts return to zero."""

from __future__ import annotations

import errno
import os
import resource
import secrets
import stat

import pytest

from loopback import LoopbackTransport, make_loopback
from vfscluster.fuse.passthrough import PassthroughFs
from vfscluster.fuse.server import Server
from vfscluster.fuse.abi import Opcode
from vfscluster.guest.cache import CacheConfig, CacheMode, CachePolicy
from vfscluster.guest.client import FuseClient
from vfscluster.guest.gos import GuestOS
from vfscluster.guest.vectorcalls import RWF_NOAPPEND
from vfscluster.guest.versions import VersionView
from vfscluster.host.versions import VersionTable

pytestmark = pytest.mark.timeout(120)

CACHES = {"none": None, "always": CacheConfig(CacheMode.ALWAYS),
          "always-writeback": CacheConfig(CacheMode.ALWAYS, writeback=True),
          "versions": CacheConfig(CacheMode.ALWAYS, versions=True)}


class Pair:
    """A GuestOS over share/ and ``os`` over local/ (the process's working directory, as the
    share root is the guest's), with the same tree and the same named descriptors."""

    def __init__(self, tmp_path, monkeypatch, cache) -> None:
        self.share, self.local = tmp_path / "share", tmp_path / "local"
        for root in (self.share, self.local):
            (root / "dir" / "sub").mkdir(parents=True)
            (root / "dir" / "sub" / "deep").write_bytes(b"deep")
            (root / "dir" / "file").write_bytes(b"hello")
            (root / "top").write_bytes(b"top!")
            os.symlink("file", root / "dir" / "lfile")
            os.symlink("../top", root / "dir" / "lup")
            os.symlink("sub", root / "dir" / "ldir")
            os.symlink("missing", root / "dir" / "dangling")
        monkeypatch.chdir(self.local)
        self.table = self.view = None
        if cache is not None and cache.versions:      # (as test_conformance makes one)
            self.table = VersionTable(f"/vfsc-dirfd-{os.getpid()}-{secrets.token_hex(4)}",
                                      1 << 12, unlink_name=True)
            self.view = VersionView(self.table.fd)
            self.fs = PassthroughFs(str(self.share))
            self.transport = LoopbackTransport(Server(self.fs, versions=self.table))
        else:
            self.fs, _server, self.transport = make_loopback(self.share)
        self.client = FuseClient(self.transport, CachePolicy(cache, versions=self.view))
        self.client.init()
        self.g = GuestOS(self.client)
        self.fds = {self.g: self._open_fds(self.g), os: self._open_fds(os)}

    @staticmethod
    def _open_fds(o) -> dict:
        fds = {"dir": o.open("dir", os.O_RDONLY), "sub": o.open("dir/sub", os.O_RDONLY),
               "opath": o.open("dir", os.O_PATH), "root": o.open(".", os.O_RDONLY),
               "file": o.open("top", os.O_RDONLY), "lnk": o.open("dir/lfile", os.O_PATH | os.O_NOFOLLOW)}
        spare = o.open("top", os.O_RDONLY)
        o.close(spare)
        fds["bad"] = spare + 100        # nothing open there
        fds[None] = None
        return fds

    def side(self, o):
        """``(P, F)`` for ``o``: absolute paths translated into the tree, descriptor labels."""
        root = "" if o is self.g else str(self.local)

        def P(p):
            if isinstance(p, str) and p.startswith("/"):
                return root + p
            if isinstance(p, bytes) and p.startswith(b"/"):
                return os.fsencode(root) + p
            return p
        fds = self.fds[o]
        return P, (lambda label: fds[label] if label in fds else label)

    def outcome(self, o, fn):
        P, F = self.side(o)
        try:
            result = fn(o, P, F)
        except OSError as exc:
            return ("OSError", exc.errno, self._name(o, exc.filename), self._name(o, exc.filename2))
        except (TypeError, ValueError, OverflowError, NotImplementedError, BufferError) as exc:
            return (type(exc).__name__, str(exc))
        return ("ok", self._result(o, result))

    def _name(self, o, name):
        if isinstance(name, int):
            labels = [k for k, v in self.fds[o].items() if v == name]
            return labels[0] if labels else "fd?"
        if isinstance(name, str):
            return name.replace(str(self.local), "")
        if isinstance(name, bytes):
            return name.replace(os.fsencode(self.local), b"")
        return name

    @staticmethod
    def _result(o, result):
        if isinstance(result, os.stat_result):
            return (stat.S_IFMT(result.st_mode), stat.S_IMODE(result.st_mode),
                    0 if stat.S_ISDIR(result.st_mode) else result.st_size, result.st_nlink)
        if isinstance(result, list):
            return sorted(result)
        return result

    def both(self, fn):
        return self.outcome(self.g, fn), self.outcome(os, fn)

    def tree(self, root) -> list:
        out = []
        for dirpath, dirs, files in os.walk(root):
            rel = os.path.relpath(dirpath, root)
            for name in sorted(dirs + files):
                st = os.lstat(os.path.join(dirpath, name))
                size = 0 if stat.S_ISDIR(st.st_mode) else st.st_size
                out.append((rel, name, stat.S_IFMT(st.st_mode), size, st.st_nlink))
        return sorted(out)

    def close(self) -> None:
        for fd in self.g.open_fds():
            self.g.close(fd)
        for fd in self.fds[os].values():
            if fd is not None and fd < self.fds[os]["bad"]:
                try:
                    os.close(fd)
                except OSError as exc:          # closed by the test
                    assert exc.errno == errno.EBADF
        self.client.drop_caches()
        self.client.flush_forgets()
        counts = self.client.lookup_counts()
        self.fs.close()
        if self.table is not None:
            self.view.close()
            self.table.close()
        assert counts == {}


@pytest.fixture(params=sorted(CACHES))
def pair(tmp_path, monkeypatch, request):
    p = Pair(tmp_path, monkeypatch, CACHES[request.param])
    yield p
    p.close()


def _check(pair, calls):
    mismatches = {}
    for name, fn in calls:
        g, loc = pair.both(fn)
        if g != loc:
            mismatches[name] = (g, loc)
    assert mismatches == {}


# ------------------------------------------------------------------------------------ dir_fd

LABELS = ["dir", "sub", "opath", "root", "file", "lnk", "bad", None]
PATHS = ["file", "sub", "sub/deep", "lfile", "lfile/", "lup", "ldir/deep", "dangling", "../top",
         "../dir/file", "..", ".", "", "missing", "file/", "sub/../file", "/top", "/dir/file",
         "/missing", "../../top", b"file", b"/top"]


def _escapes(label, path) -> bool:
    """Whether ``path`` from ``label``'s directory climbs above the tree's root (where the
    guest's root is its own parent and the local one is not)."""
    base = {"dir": "dir", "sub": "dir/sub", "opath": "dir"}.get(label, "")
    p = os.fsdecode(path)
    return not p.startswith("/") and os.path.normpath(os.path.join(base, p) or ".").startswith("..")


READ_CALLS = {
    "stat": lambda p, d: lambda o, P, F: o.stat(P(p), dir_fd=F(d)),
    "lstat": lambda p, d: lambda o, P, F: o.lstat(P(p), dir_fd=F(d)),
    "stat_nofollow": lambda p, d: lambda o, P, F: o.stat(P(p), dir_fd=F(d), follow_symlinks=False),
    "access": lambda p, d: lambda o, P, F: o.access(P(p), os.R_OK, dir_fd=F(d)),
    "access_nofollow": lambda p, d: lambda o, P, F: o.access(P(p), os.F_OK, dir_fd=F(d),
                                                           follow_symlinks=False),
    "readlink": lambda p, d: lambda o, P, F: o.readlink(P(p), dir_fd=F(d)),
    "open": lambda p, d: lambda o, P, F: _open_stat(o, P(p), os.O_RDONLY, F(d)),
    "open_path": lambda p, d: lambda o, P, F: _open_stat(o, P(p), os.O_PATH | os.O_NOFOLLOW, F(d)),
    "open_dir": lambda p, d: lambda o, P, F: _open_stat(o, P(p), os.O_DIRECTORY, F(d)),
    "utime": lambda p, d: lambda o, P, F: o.utime(P(p), ns=(5, 7), dir_fd=F(d)),
    "chown": lambda p, d: lambda o, P, F: o.chown(P(p), -1, -1, dir_fd=F(d)),
    "chmod": lambda p, d: lambda o, P, F: o.chmod(P(p), 0o644, dir_fd=F(d)),
}


def _open_stat(o, path, flags, dir_fd):
    fd = o.open(path, flags, dir_fd=dir_fd)
    try:
        return o.fstat(fd)
    finally:
        o.close(fd)


@pytest.mark.parametrize("label", LABELS)
def test_path_calls_with_dir_fd_match_os(pair, label):
    calls = [(f"{op}({path!r}, dir_fd={label})", make(path, label))
             for op, make in READ_CALLS.items() for path in PATHS if not _escapes(label, path)]
    _check(pair, calls)


def _raised(fn, *args, **kwargs):
    """The type of what ``fn`` raises (where the message is not this test's business)."""
    try:
        fn(*args, **kwargs)
    except Exception as exc:        # noqa: BLE001 - the type is the result
        return type(exc).__name__
    return None


def test_dir_fd_arguments_are_converted_and_refused_as_os_does(pair):
    _check(pair, [
        ("float", lambda o, P, F: o.stat("file", dir_fd=1.0)),
        ("str", lambda o, P, F: o.stat("file", dir_fd="3")),
        ("huge", lambda o, P, F: o.stat("file", dir_fd=1 << 40)),
        ("tiny", lambda o, P, F: o.stat("file", dir_fd=-(1 << 40))),
        ("negative", lambda o, P, F: o.stat("file", dir_fd=-1)),
        ("AT_FDCWD", lambda o, P, F: o.stat("dir/file", dir_fd=-100)),
        ("path first", lambda o, P, F: _raised(o.stat, "x\0", dir_fd="x")),
        ("empty, bad fd", lambda o, P, F: o.stat("", dir_fd=F("bad"))),
        ("empty, file fd", lambda o, P, F: o.mkdir("", dir_fd=F("file"))),
        ("too long, bad fd", lambda o, P, F: o.stat("x" * 5000, dir_fd=F("bad"))),
        ("stat fd+dir_fd", lambda o, P, F: o.stat(F("file"), dir_fd=F("dir"))),
        ("stat fd+dir_fd None", lambda o, P, F: o.stat(F("file"), dir_fd=None)),
        ("utime fd+dir_fd", lambda o, P, F: o.utime(F("file"), dir_fd=F("dir"))),
        ("chown fd+dir_fd", lambda o, P, F: o.chown(F("file"), -1, -1, dir_fd=F("dir"))),
        ("chmod fd+dir_fd", lambda o, P, F: o.chmod(F("file"), 0o644, dir_fd=F("dir"))),
        ("chmod nofollow dir_fd", lambda o, P, F: o.chmod("file", 0o644, dir_fd=F("dir"),
                                                          follow_symlinks=False)),
        ("chmod nofollow AT_FDCWD", lambda o, P, F: o.chmod("top", 0o644, dir_fd=-100,
                                                            follow_symlinks=False)),
        ("access float", lambda o, P, F: o.access("file", os.R_OK, dir_fd=1.5)),
        ("access bad", lambda o, P, F: o.access("file", os.R_OK, dir_fd=F("bad"))),
        ("mknod bad", lambda o, P, F: o.mknod("n", dir_fd=F("bad"))),
        ("mkfifo bad", lambda o, P, F: o.mkfifo("n", dir_fd=F("bad"))),
        ("utime bad", lambda o, P, F: o.utime("file", dir_fd=F("bad"))),
        ("rename float", lambda o, P, F: o.rename("file", "x", src_dir_fd=F("dir"),
                                                  dst_dir_fd=1.0)),
        ("rename bad dst, missing src", lambda o, P, F: o.rename("nope", "x", src_dir_fd=F("dir"),
                                                                 dst_dir_fd=F("bad"))),
        ("rename file dst fd", lambda o, P, F: o.rename("file", "x", src_dir_fd=F("dir"),
                                                        dst_dir_fd=F("file"))),
        ("link bad src", lambda o, P, F: o.link("file", "x", src_dir_fd=F("bad"),
                                                dst_dir_fd=F("dir"))),
        ("symlink bad", lambda o, P, F: o.symlink("t", "s", dir_fd=F("bad"))),
    ])


def test_namespace_calls_with_dir_fd_match_os(pair):
    steps = [
        ("mkdir", lambda o, P, F: o.mkdir("n1", dir_fd=F("dir"))),
        ("mkdir again", lambda o, P, F: o.mkdir("n1", dir_fd=F("opath"))),
        ("mkdir in file", lambda o, P, F: o.mkdir("n2", dir_fd=F("file"))),
        ("mkdir absolute, bad fd", lambda o, P, F: o.mkdir(P("/n3"), 0o700, dir_fd=F("bad"))),
        ("mkdir ..", lambda o, P, F: o.mkdir("..", dir_fd=F("sub"))),
        ("mknod", lambda o, P, F: o.mknod("nod", 0o640, dir_fd=F("dir"))),
        ("mknod exists", lambda o, P, F: o.mknod("nod", dir_fd=F("dir"))),
        ("mkfifo", lambda o, P, F: o.mkfifo("fifo", dir_fd=F("opath"))),
        ("symlink", lambda o, P, F: o.symlink("file", "sl", dir_fd=F("dir"))),
        ("symlink up", lambda o, P, F: o.symlink("../file", "slup", dir_fd=F("sub"))),
        ("readlink", lambda o, P, F: o.readlink("sl", dir_fd=F("dir"))),
        ("read through", lambda o, P, F: _open_stat(o, "slup", os.O_RDONLY, F("sub"))),
        ("link", lambda o, P, F: o.link("file", "hl", src_dir_fd=F("dir"), dst_dir_fd=F("sub"))),
        ("link follows with dir_fd", lambda o, P, F: o.link("lfile", "hl2", src_dir_fd=F("dir"),
                                                             dst_dir_fd=F("dir"))),
        ("link dst_dir_fd only", lambda o, P, F: o.link("dir/lfile", "hl3", dst_dir_fd=F("root"))),
        ("link AT_FDCWD", lambda o, P, F: o.link("dir/lfile", "hl4", src_dir_fd=-100)),
        ("link nofollow", lambda o, P, F: o.link("lfile", "hl5", src_dir_fd=F("dir"),
                                                 follow_symlinks=False)),
        ("link exists", lambda o, P, F: o.link("file", "hl", src_dir_fd=F("dir"),
                                               dst_dir_fd=F("sub"))),
        ("rename", lambda o, P, F: o.rename("hl", "../hl6", src_dir_fd=F("sub"),
                                            dst_dir_fd=F("sub"))),
        ("rename to root", lambda o, P, F: o.rename("n1", "n1x", src_dir_fd=F("dir"),
                                                    dst_dir_fd=F("root"))),
        ("rename into itself", lambda o, P, F: o.rename("sub", "sub/x", src_dir_fd=F("dir"),
                                                        dst_dir_fd=F("dir"))),
        ("rename ancestor into fd", lambda o, P, F: o.rename("dir", "inside",
                                                             src_dir_fd=F("root"),
                                                             dst_dir_fd=F("sub"))),
        ("rename ancestor onto a file in fd", lambda o, P, F: o.rename(
            "dir", "deep", src_dir_fd=F("root"), dst_dir_fd=F("sub"))),
        ("rename onto an ancestor dir of fd", lambda o, P, F: o.rename(
            "deep", "dir", src_dir_fd=F("sub"), dst_dir_fd=F("root"))),
        ("rename dir onto a file, both in fds", lambda o, P, F: o.rename(
            "sub", "file", src_dir_fd=F("dir"), dst_dir_fd=F("dir"))),
        ("rename file onto a dir, both in fds", lambda o, P, F: o.rename(
            "file", "sub", src_dir_fd=F("dir"), dst_dir_fd=F("opath"))),
        ("replace", lambda o, P, F: o.replace("hl6", "hl2", src_dir_fd=F("dir"),
                                              dst_dir_fd=F("opath"))),
        ("rename .", lambda o, P, F: o.rename(".", "x", src_dir_fd=F("sub"))),
        ("unlink", lambda o, P, F: o.unlink("hl2", dir_fd=F("dir"))),
        ("remove", lambda o, P, F: o.remove("hl", dir_fd=F("sub"))),
        ("unlink missing", lambda o, P, F: o.unlink("hl", dir_fd=F("sub"))),
        ("unlink dir", lambda o, P, F: o.unlink("sub", dir_fd=F("dir"))),
        ("unlink bad", lambda o, P, F: o.unlink("nod", dir_fd=F("bad"))),
        ("unlink in file", lambda o, P, F: o.unlink("nod", dir_fd=F("file"))),
        ("rmdir", lambda o, P, F: o.rmdir("n1x", dir_fd=F("root"))),
        ("rmdir ..", lambda o, P, F: o.rmdir("..", dir_fd=F("sub"))),
        ("rmdir .", lambda o, P, F: o.rmdir(".", dir_fd=F("sub"))),
        ("rmdir not empty", lambda o, P, F: o.rmdir("sub", dir_fd=F("dir"))),
        ("rmdir absolute", lambda o, P, F: o.rmdir(P("/n3"), dir_fd=F("file"))),
        ("open creat", lambda o, P, F: _open_stat(o, "new", os.O_CREAT | os.O_WRONLY, F("sub"))),
        ("open creat excl", lambda o, P, F: _open_stat(o, "new", os.O_CREAT | os.O_EXCL
                                                       | os.O_WRONLY, F("sub"))),
        ("chmod", lambda o, P, F: o.chmod("new", 0o600, dir_fd=F("sub"))),
        ("chmod dir", lambda o, P, F: o.chmod(".", 0o750, dir_fd=F("sub"))),
        ("stat after", lambda o, P, F: o.stat("sub/new", dir_fd=F("opath"))),
        ("utime nofollow", lambda o, P, F: o.utime("lfile", ns=(1, 2), dir_fd=F("dir"),
                                                   follow_symlinks=False)),
        ("chown nofollow", lambda o, P, F: o.chown("lfile", -1, -1, dir_fd=F("dir"),
                                                   follow_symlinks=False)),
        ("mtime", lambda o, P, F: o.stat("lfile", dir_fd=F("dir"), follow_symlinks=False).st_mtime_ns),
    ]
    _check(pair, steps)
    assert pair.tree(pair.share) == pair.tree(pair.local)


def test_dir_fd_of_a_removed_directory(pair):
    """A descriptor of a directory that was removed: creating in it is ENOENT before anything
    else (vfs_link's may_create comes before its EPERM for a directory source)."""
    fds = {}

    def opened(o, P, F):
        o.mkdir("gone")
        fds[o] = o.open("gone", os.O_RDONLY)
        o.rmdir("gone")
        return True

    def closed(o, P, F):
        o.close(fds.pop(o))
        return True

    _check(pair, [
        ("open, rmdir", opened),
        ("link a dir into it", lambda o, P, F: o.link("dir", "x", dst_dir_fd=fds[o])),
        ("link a file into it", lambda o, P, F: o.link("top", "x", dst_dir_fd=fds[o])),
        ("link a dir into a live fd", lambda o, P, F: o.link("dir", "x", dst_dir_fd=F("sub"))),
        ("mkdir in it", lambda o, P, F: o.mkdir("x", dir_fd=fds[o])),
        ("open creat in it", lambda o, P, F: o.open("x", os.O_CREAT | os.O_WRONLY, dir_fd=fds[o])),
        ("rename into it", lambda o, P, F: o.rename("top", "x", dst_dir_fd=fds[o])),
        ("close", closed),
    ])


def test_dir_fd_of_a_moved_directory_walks_from_its_new_place(pair):
    """``..`` above the descriptor's directory is its parent now (the kernel's d_parent), not
    where it was opened."""
    _check(pair, [
        ("move", lambda o, P, F: o.rename("dir", "moved")),
        ("mkdir", lambda o, P, F: o.mkdir("other")),
        ("move again", lambda o, P, F: o.rename("moved", "other/m")),
        ("stat ..", lambda o, P, F: o.stat("../..", dir_fd=F("sub")).st_ino == o.stat("other").st_ino),
        ("stat up", lambda o, P, F: o.stat("../../m/file", dir_fd=F("sub"))),
        ("lup now dangles", lambda o, P, F: o.stat("lup", dir_fd=F("dir"))),
        ("readlink", lambda o, P, F: o.readlink("../lup", dir_fd=F("sub"))),
    ])


def test_dir_fd_keeps_lookup_counts_balanced_on_errors(tmp_path):
    share = tmp_path / "share"
    (share / "d" / "e").mkdir(parents=True)
    fs, _server, transport = make_loopback(share)
    client = FuseClient(transport)
    client.init()
    g = GuestOS(client)
    d = g.open("d/e", os.O_RDONLY)
    before = client.lookup_counts()
    seen = set()
    for path in ("../../x/y", "..", "../e/..", "nope/x", "../e/../../d"):
        for call in (g.stat, g.rmdir, g.unlink, g.mkdir, g.readlink):
            try:
                call(path, dir_fd=d)
                seen.add("ok")
            except OSError as exc:
                seen.add(exc.errno)
    assert {"ok", errno.ENOENT, errno.EEXIST, errno.ENOTEMPTY} <= seen
    client.flush_forgets()
    # the open directory's node only, pinned once (it owes the host each LOOKUP made of it)
    assert {k: pins for k, (_n, pins) in client.lookup_counts().items()} == \
        {k: pins for k, (_n, pins) in before.items()}
    g.close(d)
    client.flush_forgets()
    assert client.lookup_counts() == {}
    fs.close()


# ------------------------------------------------------------------- scandir / listdir of an fd

def _scan(o, fd):
    with o.scandir(fd) as it:
        entries = list(it)
    return sorted((e.name, e.path, os.fspath(e), e.is_dir(), e.is_file(), e.is_symlink(),
                   e.is_dir(follow_symlinks=False), e.inode() == o.stat(e.name, dir_fd=fd,
                                                                        follow_symlinks=False).st_ino,
                   Pair._result(o, e.stat(follow_symlinks=False)),
                   _or_errno(lambda: Pair._result(o, e.stat())))
                  for e in entries)


def _or_errno(fn):
    try:
        return fn()
    except OSError as exc:
        return ("OSError", exc.errno, exc.filename)


def test_scandir_and_listdir_of_a_descriptor_match_os(pair):
    _check(pair, [
        ("listdir dir", lambda o, P, F: o.listdir(F("dir"))),
        ("listdir root", lambda o, P, F: o.listdir(F("root"))),
        ("listdir -1 is the working directory", lambda o, P, F: o.listdir(-1)),
        ("listdir -2", lambda o, P, F: o.listdir(-2)),
        ("listdir bad", lambda o, P, F: o.listdir(F("bad"))),
        ("listdir file", lambda o, P, F: o.listdir(F("file"))),
        ("listdir opath", lambda o, P, F: o.listdir(F("opath"))),
        ("scandir dir", lambda o, P, F: _scan(o, F("dir"))),
        ("scandir sub", lambda o, P, F: _scan(o, F("sub"))),
        ("scandir -1", lambda o, P, F: sorted(e.path for e in o.scandir(-1))),
        ("scandir -100", lambda o, P, F: list(o.scandir(-100))),
        ("scandir bad", lambda o, P, F: o.scandir(F("bad"))),
        ("scandir file", lambda o, P, F: o.scandir(F("file"))),
        ("scandir opath is refused at the first entry", lambda o, P, F: o.scandir(F("opath"))
         is not None),
        ("scandir opath next", lambda o, P, F: next(o.scandir(F("opath")))),
        ("scandir float", lambda o, P, F: o.scandir(1.0)),
        ("scandir huge", lambda o, P, F: o.scandir(1 << 40)),
        ("scandir then the position", lambda o, P, F: (o.lseek(F("dir"), 0, os.SEEK_SET),
                                                       len(list(o.scandir(F("dir")))),
                                                       o.lseek(F("dir"), 0, os.SEEK_CUR))),
        ("listdir then the position", lambda o, P, F: (len(o.listdir(F("sub"))),
                                                       o.lseek(F("sub"), 0, os.SEEK_CUR))),
    ])


def test_scandir_entries_of_a_descriptor_stat_through_it(pair):
    """DirEntry.stat() uses the descriptor scandir was given: closed, it is EBADF."""
    def run(o, P, F):
        fd = o.open("dir", os.O_RDONLY)
        entries = {e.name: e for e in o.scandir(fd)}
        kept = entries["file"].stat().st_size
        o.close(fd)
        return kept, _or_errno(lambda: entries["sub"].stat()), entries["sub"].is_dir(), \
            _or_errno(lambda: entries["lup"].stat()), entries["lup"].is_symlink()
    _check(pair, [("run", run)])


# ------------------------------------------------------------------------------------- dup2

def test_dup2_matches_os(pair):
    def fresh(o):
        fd = o.open("top", os.O_RDONLY)
        o.close(fd)
        return fd

    def onto_open(o, P, F):
        a = o.open("dir/file", os.O_RDWR)
        b = o.open("top", os.O_RDONLY)
        r = o.dup2(a, b)
        o.read(a, 2)
        pos = o.lseek(b, 0, os.SEEK_CUR)
        o.write(b, b"XY")
        o.close(a)
        data = o.read(b, 10)
        o.close(b)
        return r == b, pos, data

    def onto_free(o, P, F):
        a = o.open("top", os.O_RDONLY)
        free = fresh(o) + 7
        r = o.dup2(a, free, inheritable=False)
        o.close(a)
        data = o.read(free, 10)
        o.close(free)
        return r == free, data, _or_errno(lambda: o.close(free))

    _check(pair, [
        ("same fd", lambda o, P, F: o.dup2(F("file"), F("file")) == F("file")),
        ("same bad fd", lambda o, P, F: o.dup2(F("bad"), F("bad"))),
        ("same fd, not inheritable", lambda o, P, F: o.dup2(F("file"), F("file"), inheritable=False)),
        ("same bad fd, not inheritable", lambda o, P, F: o.dup2(F("bad"), F("bad"), False)),
        ("bad onto open", lambda o, P, F: o.dup2(F("bad"), F("file"))),
        ("onto -1", lambda o, P, F: o.dup2(F("file"), -1)),
        ("from -1", lambda o, P, F: o.dup2(-1, F("file"))),
        ("onto huge", lambda o, P, F: o.dup2(F("file"), 1 << 31)),
        ("onto the RLIMIT_NOFILE limit", lambda o, P, F: o.dup2(F("file"), _nofile())),
        ("bad onto the limit", lambda o, P, F: o.dup2(F("bad"), _nofile())),
        ("float", lambda o, P, F: o.dup2(F("file"), 1.0)),
        ("str", lambda o, P, F: o.dup2("3", F("file"))),
        ("onto an open fd", onto_open),
        ("onto a free fd", onto_free),
        ("opath", lambda o, P, F: (lambda n: (o.fstat(n).st_size, o.close(n)))(
            o.dup2(F("lnk"), fresh(o) + 3))),
    ])


def _nofile() -> int:
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def test_descriptors_run_out_with_emfile_as_on_linux(pair):
    """Past the descriptor limit (RLIMIT_NOFILE, here lowered on the guest's table): open and
    dup are EMFILE before anything is sent — no OPEN, and O_CREAT creates nothing; dup2 onto the
    limit is EBADF; a closed descriptor is free again.  Lookup counts return to zero (the pair's
    check at the end)."""
    g, counts = pair.g, pair.transport.counts
    g._fds.limit = max(g.open_fds()) + 3           # two numbers free
    a = g.open("top", os.O_RDONLY)
    b = g.open("dir/file", os.O_RDONLY)
    opens, lookups = counts[Opcode.OPEN], counts[Opcode.LOOKUP]
    for what, call in (("open", lambda: g.open("dir/sub/deep", os.O_RDONLY)),
                       ("create", lambda: g.open("new", os.O_CREAT | os.O_WRONLY, 0o644)),
                       ("opath", lambda: g.open("dir", os.O_PATH)),
                       ("dup", lambda: g.dup(a))):
        with pytest.raises(OSError) as e:
            call()
        assert e.value.errno == errno.EMFILE, what
    assert counts[Opcode.OPEN] == opens and counts[Opcode.LOOKUP] == lookups
    assert not (pair.share / "new").exists()
    with pytest.raises(OSError) as e:
        g.dup2(a, g._fds.limit)
    assert e.value.errno == errno.EBADF
    assert g.dup2(a, b) == b                       # below the limit: fine
    assert g.read(b, 4) == b"top!"
    g.close(b)
    c = g.dup(a)
    assert c == b and g.read(c, 10) == b""         # the same file and position
    g.close(a)
    g.close(c)


def test_listing_a_directory_takes_a_descriptor_too(pair):
    """opendir(3) opens the directory (os.listdir/scandir of a path), fdopendir(3) of a dup
    (of a descriptor): with every number taken, EMFILE — after getname's errors and a bad
    descriptor's EBADF, before the walk's and ENOTDIR (found by a campaign: they succeeded)."""
    g = pair.g
    g._fds.limit = max(g.open_fds()) + 1           # none free
    fds = pair.fds[g]
    for what, call, want in (("listdir", lambda: g.listdir("dir"), errno.EMFILE),
                             ("listdir bytes", lambda: g.listdir(b"dir"), errno.EMFILE),
                             ("listdir missing", lambda: g.listdir("missing"), errno.EMFILE),
                             ("listdir empty", lambda: g.listdir(""), errno.ENOENT),
                             ("scandir", lambda: g.scandir("dir"), errno.EMFILE),
                             ("listdir fd", lambda: g.listdir(fds["dir"]), errno.EMFILE),
                             ("scandir fd", lambda: g.scandir(fds["dir"]), errno.EMFILE),
                             ("listdir file fd", lambda: g.listdir(fds["file"]), errno.EMFILE),
                             ("listdir bad fd", lambda: g.listdir(fds["bad"]), errno.EBADF)):
        with pytest.raises(OSError) as e:
            call()
        assert e.value.errno == want, what
    g._fds.limit = None                             # the process's limit again
    assert sorted(g.listdir("dir")) == sorted(os.listdir(pair.local / "dir"))
    assert len(list(g.scandir(fds["sub"]))) == 1


def test_emfile_comes_after_getnames_errors_and_o_tmpfile_s_flag_check(pair):
    """Linux's order (do_sys_openat2): build_open_flags (EINVAL), getname (ENOENT for an empty
    path, ENAMETOOLONG), then get_unused_fd_flags (EMFILE), then the walk — so an O_TMPFILE open
    with every descriptor taken is EMFILE, not the walk's answer or EOPNOTSUPP."""
    g = pair.g
    g._fds.limit = max(g.open_fds()) + 1           # none free
    for path, flags, want in (("", os.O_RDONLY, errno.ENOENT),
                              ("a" * 5000, os.O_RDONLY, errno.ENAMETOOLONG),
                              ("x", os.O_CREAT | os.O_DIRECTORY, errno.EINVAL),
                              ("dir", os.O_TMPFILE | os.O_RDONLY, errno.EINVAL),
                              ("dir", os.O_TMPFILE | os.O_RDWR, errno.EMFILE),
                              ("missing", os.O_TMPFILE | os.O_RDWR, errno.EMFILE),
                              ("missing", os.O_RDONLY, errno.EMFILE)):
        with pytest.raises(OSError) as e:
            g.open(path, flags, 0o644)
        assert e.value.errno == want, (path, flags)


def test_open_holds_its_descriptor_while_it_opens(pair, monkeypatch):
    """open takes its descriptor first (get_unused_fd_flags) and holds it while it looks up,
    creates and opens: an open or dup meanwhile (another thread) finds it taken (EMFILE), dup2
    onto it is EBUSY, and the O_CREAT never ends in EMFILE after creating its file."""
    g, client = pair.g, pair.client
    a = g.open("top", os.O_RDONLY)
    g._fds.limit = max(g.open_fds()) + 2           # one number free: the creating open's
    create, meanwhile = client.create, {}

    def create_racing(*args, **kwargs):
        for what, call in (("open", lambda: g.open("dir/file", os.O_RDONLY)),
                           ("dup", lambda: g.dup(a)),
                           ("dup2", lambda: g.dup2(a, g._fds.limit - 1))):
            try:
                meanwhile[what] = ("ok", call())
            except OSError as exc:
                meanwhile[what] = ("OSError", errno.errorcode[exc.errno])
        return create(*args, **kwargs)
    monkeypatch.setattr(client, "create", create_racing)
    try:
        fd = g.open("new", os.O_CREAT | os.O_WRONLY, 0o644)
    finally:
        for v in {v for kind, v in meanwhile.values() if kind == "ok"}:
            g.close(v)
    assert meanwhile == {"open": ("OSError", "EMFILE"), "dup": ("OSError", "EMFILE"),
                         "dup2": ("OSError", "EBUSY")}
    assert fd == g._fds.limit - 1 and g.write(fd, b"new") == 3
    g.close(fd)
    g.close(a)


def test_dup2_onto_an_open_fd_releases_its_file(pair):
    g, counts = pair.g, pair.transport.counts
    a = g.open("top", os.O_RDONLY)
    b = g.open("dir/file", os.O_RDONLY)
    released, flushed = counts[Opcode.RELEASE], counts[Opcode.FLUSH]
    assert g.dup2(a, b) == b
    assert counts[Opcode.RELEASE] == released + 1 and counts[Opcode.FLUSH] == flushed + 1
    assert g.read(b, 10) == b"top!"
    g.close(a)
    g.close(b)
    assert counts[Opcode.RELEASE] == released + 2


# ------------------------------------------------------------------ readv / writev / preadv / pwritev

def _vec_calls():
    def filled(n_list, o, fd, reader, *args):
        bufs = [bytearray(n) for n in n_list]
        n = reader(fd, bufs, *args)
        return n, [bytes(b) for b in bufs], o.lseek(fd, 0, os.SEEK_CUR)

    def opened(flags, path="dir/file"):
        def wrap(fn):
            def call(o, P, F):
                fd = o.open(path, flags)
                try:
                    return fn(o, fd, F)
                finally:
                    o.close(fd)
            return call
        return wrap

    rw, ro, wo = os.O_RDWR, os.O_RDONLY, os.O_WRONLY
    app = os.O_WRONLY | os.O_APPEND
    many = 1025
    return [
        ("readv", opened(rw)(lambda o, fd, F: filled([2, 0, 10], o, fd, o.readv))),
        ("readv twice", opened(ro)(lambda o, fd, F: (filled([3], o, fd, o.readv),
                                                     filled([3, 3], o, fd, o.readv)))),
        ("readv empty", opened(rw)(lambda o, fd, F: o.readv(fd, []))),
        ("readv tuple", opened(rw)(lambda o, fd, F: filled([1], o, fd, lambda f, b: o.readv(f, tuple(b))))),
        ("readv memoryview", opened(rw)(lambda o, fd, F: o.readv(fd, [memoryview(bytearray(3))]))),
        ("readv not a sequence", opened(rw)(lambda o, fd, F: o.readv(fd, 5))),
        ("readv iterator", opened(rw)(lambda o, fd, F: o.readv(fd, iter([bytearray(2)])))),
        ("readv bytes", opened(rw)(lambda o, fd, F: o.readv(fd, [b"ab"]))),
        ("readv str", opened(rw)(lambda o, fd, F: o.readv(fd, "ab"))),
        ("readv write-only", opened(wo)(lambda o, fd, F: o.readv(fd, [bytearray(2)]))),
        ("readv write-only empty", opened(wo)(lambda o, fd, F: o.readv(fd, []))),
        ("readv bad", lambda o, P, F: o.readv(F("bad"), [bytearray(2)])),
        ("readv bad empty", lambda o, P, F: o.readv(F("bad"), [])),
        ("readv dir", lambda o, P, F: o.readv(F("dir"), [bytearray(2)])),
        ("readv dir empty", lambda o, P, F: o.readv(F("dir"), [])),
        ("readv opath", lambda o, P, F: o.readv(F("lnk"), [])),
        ("readv too many", opened(rw)(lambda o, fd, F: o.readv(fd, [bytearray(1)] * many))),
        ("readv 1024", opened(rw)(lambda o, fd, F: o.readv(fd, [bytearray(1)] * 1024))),
        ("readv float fd", lambda o, P, F: o.readv(1.0, [])),
        ("writev", opened(rw)(lambda o, fd, F: (o.writev(fd, [b"ab", bytearray(b"cd"),
                                                             memoryview(b"ef"), b""]),
                                                o.lseek(fd, 0, os.SEEK_CUR)))),
        ("writev after", lambda o, P, F: o.stat("dir/file").st_size),
        ("writev empty", opened(rw)(lambda o, fd, F: o.writev(fd, []))),
        ("writev append", opened(app)(lambda o, fd, F: (o.writev(fd, [b"++", b"!"]),
                                                        o.lseek(fd, 0, os.SEEK_CUR)))),
        ("writev not a sequence", opened(rw)(lambda o, fd, F: o.writev(fd, 5))),
        ("writev iterator", opened(rw)(lambda o, fd, F: o.writev(fd, iter([b"a"])))),
        ("writev int", opened(rw)(lambda o, fd, F: o.writev(fd, [1]))),
        ("writev str", opened(rw)(lambda o, fd, F: o.writev(fd, "ab"))),
        ("writev read-only", opened(ro)(lambda o, fd, F: o.writev(fd, [b"x"]))),
        ("writev read-only empty", opened(ro)(lambda o, fd, F: o.writev(fd, []))),
        ("writev bad empty", lambda o, P, F: o.writev(F("bad"), [])),
        ("writev dir", lambda o, P, F: o.writev(F("dir"), [b"x"])),
        ("writev opath", lambda o, P, F: o.writev(F("lnk"), [])),
        ("writev too many", opened(rw)(lambda o, fd, F: o.writev(fd, [b"x"] * many))),
        ("preadv", opened(rw)(lambda o, fd, F: filled([2, 3], o, fd, o.preadv, 1))),
        ("preadv -1 is the position", opened(rw)(lambda o, fd, F: (o.lseek(fd, 2, 0), filled(
            [2], o, fd, o.preadv, -1)))),
        ("preadv -2", opened(rw)(lambda o, fd, F: o.preadv(fd, [bytearray(2)], -2))),
        ("preadv -2 bad", lambda o, P, F: o.preadv(F("bad"), [bytearray(2)], -2)),
        ("preadv past the end", opened(rw)(lambda o, fd, F: filled([4], o, fd, o.preadv, 100))),
        ("preadv largest", opened(rw)(lambda o, fd, F: o.preadv(fd, [bytearray(2)], (1 << 63) - 1))),
        ("preadv overflow", opened(rw)(lambda o, fd, F: o.preadv(fd, [bytearray(2)], 1 << 63))),
        ("preadv float", opened(rw)(lambda o, fd, F: o.preadv(fd, [bytearray(2)], 1.0))),
        ("preadv not a sequence", opened(rw)(lambda o, fd, F: o.preadv(fd, 5, 0))),
        ("preadv flags", opened(rw)(lambda o, fd, F: [filled([2], o, fd, o.preadv, 0, fl)
                                                      for fl in (os.RWF_HIPRI, os.RWF_DSYNC,
                                                                 os.RWF_SYNC)])),
        ("preadv unknown flag", opened(rw)(lambda o, fd, F: o.preadv(fd, [bytearray(2)], 0,
                                                                     1 << 20))),
        ("preadv unknown flag, bad fd", lambda o, P, F: o.preadv(F("bad"), [bytearray(2)], 0,
                                                                 1 << 20)),
        ("preadv empty", opened(rw)(lambda o, fd, F: o.preadv(fd, [], 3))),
        ("pwritev", opened(rw)(lambda o, fd, F: (o.pwritev(fd, [b"AB", b"C"], 1),
                                                 o.lseek(fd, 0, os.SEEK_CUR)))),
        ("pwritev -1", opened(rw)(lambda o, fd, F: (o.lseek(fd, 3, 0), o.pwritev(fd, [b"Z"], -1),
                                                    o.lseek(fd, 0, os.SEEK_CUR)))),
        ("pwritev -3", opened(rw)(lambda o, fd, F: o.pwritev(fd, [b"Z"], -3))),
        ("pwritev O_APPEND", opened(app)(lambda o, fd, F: (o.pwritev(fd, [b"$"], 0),
                                                           o.lseek(fd, 0, os.SEEK_CUR)))),
        ("pwritev RWF_APPEND", opened(rw)(lambda o, fd, F: (o.pwritev(fd, [b"&"], 0, os.RWF_APPEND),
                                                            o.lseek(fd, 0, os.SEEK_CUR)))),
        ("pwritev sync flags", opened(rw)(lambda o, fd, F: [o.pwritev(fd, [b"s"], 2, fl)
                                                            for fl in (os.RWF_DSYNC, os.RWF_SYNC,
                                                                       os.RWF_HIPRI)])),
        ("pwritev unknown flag", opened(rw)(lambda o, fd, F: o.pwritev(fd, [b"x"], 0, 1 << 20))),
        ("pwritev largest", opened(rw)(lambda o, fd, F: o.pwritev(fd, [b"x"], (1 << 63) - 1))),
        ("pwritev read-only", opened(ro)(lambda o, fd, F: o.pwritev(fd, [b"x"], 0))),
        ("pwritev empty", opened(rw)(lambda o, fd, F: o.pwritev(fd, [], 0))),
        ("content", lambda o, P, F: _open_read(o, "dir/file")),
    ]


def _open_read(o, path):
    fd = o.open(path, os.O_RDONLY)
    try:
        return o.read(fd, 100)
    finally:
        o.close(fd)


def test_vectored_io_matches_os(pair):
    _check(pair, _vec_calls())


def test_writev_of_many_buffers_is_one_write(pair):
    g, counts = pair.g, pair.transport.counts
    fd = g.open("top", os.O_RDWR)
    writes = counts[Opcode.WRITE]
    assert g.writev(fd, [b"a", b"b", b"c" * 1000]) == 1002
    g.fsync(fd)                             # (a write-back cache sends it now)
    assert counts[Opcode.WRITE] == writes + 1
    g.lseek(fd, 0, os.SEEK_SET)
    bufs = [bytearray(1), bytearray(1), bytearray(2000)]
    assert g.readv(fd, bufs) == 1002
    assert bufs[0] == b"a" and bufs[1] == b"b" and bytes(bufs[2][:1000]) == b"c" * 1000
    g.close(fd)


def test_dot_of_a_dir_fd_has_the_directorys_current_attributes(pair):
    _check(pair, [
        ("chmod", lambda o, P, F: o.chmod("dir", 0o700)),
        ("stat .", lambda o, P, F: o.stat(".", dir_fd=F("dir"))),
        ("chmod through the fd", lambda o, P, F: o.chmod(".", 0o751, dir_fd=F("opath"))),
        ("stat . again", lambda o, P, F: stat.S_IMODE(o.stat(".", dir_fd=F("dir")).st_mode)),
        ("access as root", lambda o, P, F: o.access("sub", os.X_OK, dir_fd=F("dir"))),
    ])


def test_pwritev_noappend_on_an_o_append_file_is_refused_not_appended(pair):
    """Linux writes at the offset; the host's handle is open O_APPEND too, so its write would
    land at the end: GuestOS refuses the flag there (EOPNOTSUPP) and the file stays as it was.
    Without O_APPEND the flag changes nothing, as on Linux."""
    g = pair.g
    fd = g.open("top", os.O_WRONLY | os.O_APPEND)
    before = g.stat("top").st_size
    with pytest.raises(OSError) as exc:
        g.pwritev(fd, [b"AB"], 0, RWF_NOAPPEND)
    assert exc.value.errno == errno.EOPNOTSUPP
    assert g.fstat(fd).st_size == before
    g.close(fd)
    _check(pair, [("noappend without O_APPEND", lambda o, P, F: (lambda fd: (
        o.pwritev(fd, [b"AB"], 1, RWF_NOAPPEND), o.close(fd)))(o.open("top", os.O_WRONLY)))])
