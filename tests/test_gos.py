"""vfscluster.guest.gos: GuestOS against a real Server(PassthroughFs) over the loopback transport.

Every call, the errnos ``os`` gives on a local Linux file system (each checked against ``os``
itself on a local twin directory), lookup counts back to zero on the host, large I/O, an unlinked
open file, threads."""

from __future__ import annotations

import errno
import os
import stat

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from loopback import LoopbackTransport, make_loopback
from vfscluster.fuse.abi import Opcode
from vfscluster.guest.client import FuseClient
from vfscluster.guest.gos import GuestOS
from threads import run_threads

# ------------------------------------------------------------------------------------- fixtures


class Twin:
    """A GuestOS over share/ and plain ``os`` on local/, with the same starting tree."""

    def __init__(self, tmp_path, **loopback) -> None:
        self.share = tmp_path / "share"
        self.local = tmp_path / "local"
        self.share.mkdir()
        self.local.mkdir()
        self.fs, self.server, self.transport = make_loopback(self.share, **loopback)
        self.client = FuseClient(self.transport)
        self.client.init()
        self.g = GuestOS(self.client)
        for root in (self.share, self.local):
            (root / "dir" / "sub").mkdir(parents=True)
            (root / "full").mkdir()
            (root / "full" / "x").write_bytes(b"")
            (root / "file").write_bytes(b"hello")
            os.symlink("missing", root / "dangling")
            os.symlink("file", root / "lfile")
            os.symlink("dir", root / "ldir")
            os.symlink("loop2", root / "loop1")
            os.symlink("loop1", root / "loop2")

    def lpath(self, p):
        """``p`` (relative to the twin root) as a local path, keeping its type and slashes."""
        if isinstance(p, bytes):
            return os.fsencode(self.local) + b"/" + p if p else p
        return f"{self.local}/{p}" if p else p

    def outcome(self, fn, *args, **kwargs):
        try:
            result = fn(*args, **kwargs)
        except OSError as exc:
            fn1 = exc.filename
            fn2 = exc.filename2
            return ("error", exc.errno, self._strip(fn1), self._strip(fn2))
        except (ValueError, TypeError) as exc:
            return ("error", type(exc).__name__)
        if isinstance(result, list):
            result = sorted(result)
        if isinstance(result, os.stat_result):
            result = (result.st_mode, result.st_size if not stat.S_ISDIR(result.st_mode) else 0,
                      result.st_nlink)
        return ("ok", result)

    def _strip(self, name):
        if isinstance(name, str):
            return name.replace(f"{self.local}/", "")
        if isinstance(name, bytes):
            return name.replace(os.fsencode(self.local) + b"/", b"")
        return name

    def both(self, op: str, *paths, extra=(), **kwargs):
        """Run ``op`` on both sides (``paths`` translated locally), return (guest, local)."""
        g = self.outcome(getattr(self.g, op), *paths, *extra, **kwargs)
        loc = self.outcome(getattr(os, op), *(self.lpath(p) for p in paths), *extra, **kwargs)
        return g, loc

    def close(self) -> None:
        for fd in self.g.open_fds():
            self.g.close(fd)
        self.client.flush_forgets()
        self.fs.close()


@pytest.fixture
def twin(tmp_path):
    t = Twin(tmp_path)
    yield t
    t.close()


@pytest.fixture
def g(twin):
    return twin.g


def _errno(call, *args, **kwargs) -> int:
    with pytest.raises(OSError) as info:
        call(*args, **kwargs)
    return info.value.errno


# ------------------------------------------------------------------------------------- errnos vs os

PATHS = ["", ".", "dir", "dir/", "dir//sub///", "file", "file/", "file/.", "file/x", "missing",
         "missing/", "missing/x", "lfile", "lfile/", "ldir", "ldir/", "ldir/sub", "dangling",
         "dangling/", "loop1", "loop1/x", "dir/..", "dir/sub/../..", "a" * 256, "a" * 256 + "/x",
         "missing/" + "a" * 256, "x/" * 2100]

OPEN_FLAGS = {
    "RDONLY": os.O_RDONLY, "WRONLY": os.O_WRONLY, "RDWR": os.O_RDWR, "ACC3": 3,
    "RDONLY|TRUNC": os.O_RDONLY | os.O_TRUNC, "CREAT": os.O_WRONLY | os.O_CREAT,
    "CREAT|EXCL": os.O_WRONLY | os.O_CREAT | os.O_EXCL, "DIRECTORY": os.O_DIRECTORY,
    "CREAT|DIRECTORY": os.O_CREAT | os.O_DIRECTORY, "NOFOLLOW": os.O_NOFOLLOW,
    "NOFOLLOW|DIRECTORY": os.O_NOFOLLOW | os.O_DIRECTORY,
    "CREAT|NOFOLLOW": os.O_CREAT | os.O_WRONLY | os.O_NOFOLLOW, "PATH": os.O_PATH,
    "PATH|NOFOLLOW": os.O_PATH | os.O_NOFOLLOW,
}


@pytest.mark.parametrize("path", PATHS)
def test_open_matches_os(twin, path):
    for name, flags in OPEN_FLAGS.items():
        res = []
        for opener, p in ((twin.g, path), (os, twin.lpath(path))):
            try:
                fd = opener.open(p, flags, 0o640)
            except OSError as exc:
                res.append(("error", exc.errno, twin._strip(exc.filename)))
                continue
            st = opener.fstat(fd)
            opener.close(fd)
            res.append(("ok", st.st_mode, st.st_size))
        assert res[0] == res[1], (path, name)
        for root in (twin.share, twin.local):     # what O_CREAT made ("dangling" -> "missing")
            if os.path.isfile(root / "missing"):
                os.unlink(root / "missing")


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("op", ["stat", "lstat", "readlink", "listdir", "access", "truncate",
                                "getxattr", "listxattr", "statvfs", "chmod", "utime",
                                "removexattr", "exists"])
def test_path_calls_match_os(twin, op, path):
    extra = {"access": (os.R_OK,), "truncate": (3,), "getxattr": ("user.x",), "chmod": (0o644,),
             "removexattr": ("user.x",)}.get(op, ())
    if op == "exists":
        assert twin.g.exists(path) == os.path.exists(twin.lpath(path))
        return
    if op == "statvfs":
        g, loc = twin.both(op, path)
        assert g[0] == loc[0] and g[1:] == loc[1:] if g[0] == "error" else g[0] == loc[0]
        return
    g, loc = twin.both(op, path, extra=extra)
    assert g == loc


@pytest.mark.parametrize("op,args", [
    ("mkdir", ("dir",)), ("mkdir", ("file",)), ("mkdir", ("dangling",)), ("mkdir", (".",)),
    ("mkdir", ("..",)), ("mkdir", ("dir/sub/",)), ("mkdir", ("file/x",)), ("mkdir", ("new/",)),
    ("mkdir", ("missing/x",)), ("mkdir", ("",)),
    ("rmdir", (".",)), ("rmdir", ("..",)), ("rmdir", ("dir/.",)), ("rmdir", ("dir/..",)),
    ("rmdir", ("full",)), ("rmdir", ("file",)), ("rmdir", ("ldir",)), ("rmdir", ("missing",)),
    ("rmdir", ("file/",)), ("rmdir", ("dir/sub/",)), ("rmdir", ("ldir/sub",)),
    ("unlink", ("dir",)), ("unlink", (".",)), ("unlink", ("file/",)), ("unlink", ("dir/",)),
    ("unlink", ("missing/",)), ("unlink", ("missing",)), ("unlink", ("lfile",)),
    ("unlink", ("dangling/",)), ("remove", ("ldir",)),
    ("link", ("dir", "newlink")), ("link", ("dir", "file")), ("link", ("missing", "x")),
    ("link", ("file", "file")), ("link", ("file", "new/")), ("link", ("file/", "new")),
    ("link", ("file", ".")), ("link", ("file", "dir/")), ("link", ("lfile", "hl")),
    ("link", ("dangling", "hl")), ("link", ("file", "dir/hl")),
    ("rename", ("dir", "dir/sub/x")), ("rename", ("dir", "dir/x")), ("rename", ("dir", "dir")),
    ("rename", ("dir/sub", "dir")), ("rename", ("full/x", "full")), ("rename", ("full", "dir")),
    ("rename", ("file", "dir")), ("rename", ("dir", "file")), ("rename", ("missing", "x")),
    ("rename", ("file", "missing/x")), ("rename", ("file/", "x")), ("rename", ("file", "x/")),
    ("rename", (".", "x")), ("rename", ("file", ".")), ("rename", ("file", "..")),
    ("rename", ("dir/sub/..", "x")), ("rename", ("missing", "missing/")),
    ("rename", ("file", "lfile")), ("rename", ("lfile", "file")), ("rename", ("dir", "ldir/sub/y")),
    ("rename", ("ldir/sub", "dir/s2")), ("rename", ("dir", "newdir/")),
    ("rename", ("full", "dir/sub")),
    ("rename", ("file", "full/x")), ("replace", ("dir/sub", "full")),
])
def test_namespace_calls_match_os(twin, op, args):
    g, loc = twin.both(op, *args)
    assert g == loc
    for d in ("", "dir", "full", "newdir"):
        assert twin.outcome(twin.g.listdir, d or ".") == twin.outcome(os.listdir, twin.local / d)


@pytest.mark.parametrize("target,name", [("x", "file"), ("", "newsl"), ("x", "newsl/"),
                                         ("x", "dir/"), ("x", ".."), ("x", "missing/y"),
                                         ("y" * 4096, "long"), ("file", "dir/ok")])
def test_symlink_matches_os(twin, target, name):
    g = twin.outcome(twin.g.symlink, target, name)
    loc = twin.outcome(os.symlink, target, twin.lpath(name))
    assert g == loc


# ------------------------------------------------------------------------------- the listed errnos

def test_errnos_of_the_issue(g):
    assert _errno(g.stat, "") == errno.ENOENT
    assert _errno(g.stat, "file/") == errno.ENOTDIR
    assert _errno(g.stat, "a" * 256) == errno.ENAMETOOLONG
    assert _errno(g.stat, "loop1") == errno.ELOOP
    fd = g.open("file", os.O_RDONLY)
    assert _errno(g.write, fd, b"x") == errno.EBADF
    assert _errno(g.ftruncate, fd, 0) == errno.EINVAL
    g.close(fd)
    fd = g.open("file", os.O_WRONLY)
    assert _errno(g.read, fd, 1) == errno.EBADF
    g.close(fd)
    assert _errno(g.read, fd, 1) == errno.EBADF
    assert _errno(g.close, fd) == errno.EBADF
    assert _errno(g.read, 999, 1) == errno.EBADF
    fd = g.open("dir", os.O_RDONLY)
    assert _errno(g.read, fd, 1) == errno.EISDIR
    assert _errno(g.pread, fd, 1, 0) == errno.EISDIR
    g.close(fd)
    assert _errno(g.open, "file", os.O_RDONLY | os.O_DIRECTORY) == errno.ENOTDIR
    assert _errno(g.open, "file", os.O_CREAT | os.O_EXCL | os.O_WRONLY) == errno.EEXIST
    assert _errno(g.open, "dangling", os.O_CREAT | os.O_EXCL | os.O_WRONLY) == errno.EEXIST
    assert _errno(g.open, "lfile", os.O_RDONLY | os.O_NOFOLLOW) == errno.ELOOP
    assert _errno(g.rename, "dir", "dir/sub/x") == errno.EINVAL
    assert _errno(g.rmdir, "full") == errno.ENOTEMPTY
    assert _errno(g.rmdir, ".") == errno.EINVAL
    assert _errno(g.unlink, "dir") == errno.EISDIR
    assert _errno(g.link, "dir", "d2") == errno.EPERM
    assert _errno(g.mkdir, "dir") == errno.EEXIST


def test_error_carries_the_filenames(g):
    with pytest.raises(FileNotFoundError) as info:
        g.stat("missing/x")
    assert (info.value.filename, info.value.filename2) == ("missing/x", None)
    with pytest.raises(FileNotFoundError) as info:
        g.rename("missing", "x")
    assert (info.value.filename, info.value.filename2) == ("missing", "x")
    with pytest.raises(FileNotFoundError) as info:
        g.stat(b"missing")
    assert info.value.filename == b"missing"
    with pytest.raises(FileNotFoundError) as info:
        g.utime("missing")
    assert info.value.filename is None            # as CPython's os.utime
    with pytest.raises(ValueError):
        g.stat("a\0b")
    with pytest.raises(TypeError):
        g.stat(1.5)


def test_symlink_loop_limit_is_40(twin):
    """c0 -> c1 -> ... -> c41 (a directory): 40 links resolve, 41 are ELOOP."""
    for i in range(41):
        twin.g.symlink(f"c{i + 1}", f"c{i}")
        os.symlink(f"c{i + 1}", twin.local / f"c{i}")
    twin.g.mkdir("c41")
    os.mkdir(twin.local / "c41")
    for path in ("c1", "c0", "c1/", "c2/.", "c0/x", "c1/x"):
        for op in ("stat", "lstat", "listdir"):
            g, loc = twin.both(op, path)
            assert g == loc, (op, path)
    assert twin.both("stat", "c0")[0][1] == errno.ELOOP
    assert twin.both("stat", "c1")[0][0] == "ok"


BIG = 1 << 63


@pytest.mark.parametrize("call, args", [
    ("pread", (5, BIG)), ("pread", (BIG, 0)), ("pread", (5, -1)), ("pread", (5, 0.5)),
    ("pread", (5, True)), ("read", (1 << 64,)), ("read", (-1,)), ("pwrite", (b"x", BIG)),
    ("pwrite", (b"x", -BIG - 1)), ("pwrite", (b"x", -1)), ("lseek", (BIG, os.SEEK_SET)),
    ("lseek", (1.0, os.SEEK_SET)), ("lseek", (-1, os.SEEK_DATA)), ("lseek", (-1, os.SEEK_HOLE)),
    ("ftruncate", (BIG,)), ("ftruncate", (-1,)),
])
def test_offsets_and_counts_out_of_range_as_os_refuses_them(twin, call, args):
    """An offset past off_t or a count past ssize_t is an OverflowError before any request (as
    ``os`` converts its arguments); a float a TypeError; a negative one the errno ``os`` gives.
    Nothing reaches the host (it would answer EINVAL)."""
    def outcome(fn, fd):
        try:
            return ("ok", fn(fd, *args))
        except OSError as exc:
            return ("OSError", exc.errno)
        except (OverflowError, TypeError) as exc:
            return (type(exc).__name__, str(exc))
    lfd = os.open(twin.lpath("file"), os.O_RDWR)
    gfd = twin.g.open("file", os.O_RDWR)
    try:
        sent = sum(twin.transport.counts.values())
        got = outcome(getattr(twin.g, call), gfd)
        assert got == outcome(getattr(os, call), lfd)
        if got[0] != "ok":
            assert sum(twin.transport.counts.values()) == sent
    finally:
        os.close(lfd)
        twin.g.close(gfd)


M = (1 << 63) - 1                  # the largest file offset


class _FileNo:
    def __init__(self, fd):
        self.fd = fd

    def fileno(self):
        return self.fd


def _fd_calls(o, P, fds):
    """Calls that take descriptors or C ints, for ``o`` (``os`` or a GuestOS) with paths ``P``;
    ``fds``: rw (a regular file, read-write), opath (O_PATH of it), dir (a directory)."""
    rw, opath, d = fds["rw"], fds["opath"], fds["dir"]
    return {
        # rw_verify_area: a transfer ending past the largest offset; lseek past it
        "pwrite at M": lambda: o.pwrite(rw, b"x", M), "pwrite 0 at M": lambda: o.pwrite(rw, b"", M),
        "pread at M": lambda: o.pread(rw, 1, M), "pread across M": lambda: o.pread(rw, 10, M - 5),
        "read at M": lambda: (o.lseek(rw, M, os.SEEK_SET), o.read(rw, 1)),
        "write at M": lambda: (o.lseek(rw, M, os.SEEK_SET), o.write(rw, b"x")),
        "lseek END past M": lambda: o.lseek(rw, M, os.SEEK_END),
        "lseek CUR past M": lambda: (o.lseek(rw, 10, os.SEEK_SET), o.lseek(rw, M - 5, os.SEEK_CUR)),
        "lseek whence float": lambda: o.lseek(rw, 0, 0.0), "lseek whence big": lambda: o.lseek(rw, 0, 1 << 40),
        # descriptors as os converts them
        "read float fd": lambda: o.read(float(rw), 1), "read str fd": lambda: o.read(str(rw), 1),
        "read None fd": lambda: o.read(None, 1), "fstat fd 2**31": lambda: o.fstat(1 << 31),
        "close fd -2**31-1": lambda: o.close(-(1 << 31) - 1), "fsync -1": lambda: o.fsync(-1),
        "fsync str": lambda: o.fsync("3"), "fsync fileno()": lambda: o.fsync(_FileNo(rw)),
        # O_PATH descriptors change nothing
        "chmod O_PATH": lambda: o.chmod(opath, 0o600), "utime O_PATH": lambda: o.utime(opath, (1, 2)),
        "setxattr O_PATH": lambda: o.setxattr(opath, "user.a", b"1"),
        "getxattr O_PATH": lambda: o.getxattr(opath, "user.a"),
        "listxattr O_PATH": lambda: o.listxattr(opath),
        "removexattr O_PATH": lambda: o.removexattr(opath, "user.a"),
        "stat O_PATH": lambda: o.stat(opath).st_size, "statvfs O_PATH": lambda: o.statvfs(opath).f_namemax,
        "listdir O_PATH file": lambda: o.listdir(opath), "listdir regular fd": lambda: o.listdir(rw),
        # the descriptor named in errors, as os names it (or not: fstat, utime, listdir's dup)
        "stat 999": lambda: o.stat(999), "fstat 999": lambda: o.fstat(999),
        "statvfs 999": lambda: o.statvfs(999), "chmod 999": lambda: o.chmod(999, 0o600),
        "listdir 999": lambda: o.listdir(999), "utime 999": lambda: o.utime(999),
        "getxattr 999": lambda: o.getxattr(999, "user.a"), "listxattr 999": lambda: o.listxattr(999),
        "setxattr 999 bad flags": lambda: o.setxattr(999, "user.a", b"1", 8),
        "getxattr 999 empty name": lambda: o.getxattr(999, ""),
        # an fd with follow_symlinks=False
        "stat fd nofollow": lambda: o.stat(rw, follow_symlinks=False),
        "utime fd nofollow": lambda: o.utime(rw, follow_symlinks=False),
        "getxattr fd nofollow": lambda: o.getxattr(rw, "user.a", follow_symlinks=False),
        "chmod fd nofollow": lambda: o.chmod(rw, 0o644, follow_symlinks=False),
        "chmod nofollow file": lambda: o.chmod(P("file"), 0o644, follow_symlinks=False),
        "chmod nofollow dir": lambda: o.chmod(P("dir"), 0o755, follow_symlinks=False),
        "chmod nofollow missing": lambda: o.chmod(P("missing"), 0o644, follow_symlinks=False),
        "chmod nofollow symlink": lambda: o.chmod(P("lfile"), 0o644, follow_symlinks=False),
        # arguments os converts before any system call
        "setxattr int value": lambda: o.setxattr(P("file"), "user.v", 5),
        "getxattr NUL name": lambda: o.getxattr(P("file"), "user.a\0b"),
        "setxattr flags 2**31": lambda: o.setxattr(P("file"), "user.v", b"1", 1 << 31),
        "utime ns past time_t": lambda: o.utime(P("file"), ns=(10 ** 30, 0)),
        "utime s past time_t": lambda: o.utime(P("file"), (1 << 63, 0)),
        "utime 1e20": lambda: o.utime(P("file"), (1e20, 0)),
        "utime ns=None": lambda: o.utime(P("file"), None, ns=None),
        "access mode 2**40": lambda: o.access(P("file"), 1 << 40),
        "chmod mode 2**32": lambda: o.chmod(P("file"), 1 << 32),
        "mkdir mode 2**32": lambda: o.mkdir(P("newdir"), 1 << 32),
        "open flags 2**40": lambda: o.open(P("file"), 1 << 40),
        "open flags 2**31": lambda: o.open(P("file"), 1 << 31),
        # chown, lchown, fchown; mknod, mkfifo
        "chown": lambda: (o.chown(P("file"), 65534, 65534), o.stat(P("file"))[4:6]),
        "chown -1 -1": lambda: (o.chown(P("file"), -1, -1), o.stat(P("file")).st_uid),
        "chown uid -2": lambda: o.chown(P("file"), -2, -1),
        "chown uid 2**32": lambda: o.chown(P("file"), 1 << 32, -1),
        "chown float uid": lambda: o.chown(P("file"), 1.0, -1),
        "chown missing": lambda: o.chown(P("missing"), 0, 0),
        "chown drops set-user-ID": lambda: (o.chmod(P("full/x"), 0o4755),
                                            o.chown(P("full/x"), 65534, -1),
                                            oct(o.stat(P("full/x")).st_mode)),
        "lchown": lambda: (o.lchown(P("lfile"), 65534, -1), o.lstat(P("lfile")).st_uid,
                           o.stat(P("lfile")).st_uid),
        "chown nofollow dangling": lambda: o.chown(P("dangling"), 65534, -1, follow_symlinks=False),
        "chown fd": lambda: (o.chown(rw, -1, 65534), o.fstat(rw).st_gid),
        "chown O_PATH": lambda: o.chown(opath, 0, 0),
        "chown 999": lambda: o.chown(999, 0, 0),
        "mknod FIFO": lambda: (o.mknod(P("fifo"), 0o640 | stat.S_IFIFO), oct(o.lstat(P("fifo")).st_mode)),
        "mknod type 0": lambda: (o.mknod(P("reg0"), 0o640), oct(o.lstat(P("reg0")).st_mode)),
        "mknod socket": lambda: (o.mknod(P("sock"), 0o600 | stat.S_IFSOCK), oct(o.lstat(P("sock")).st_mode)),
        "mknod char device": lambda: (o.mknod(P("null"), 0o600 | stat.S_IFCHR, os.makedev(1, 3)),
                                      o.lstat(P("null")).st_rdev),
        "mknod dir type": lambda: o.mknod(P("missing/d"), 0o700 | stat.S_IFDIR),
        "mknod bad type": lambda: o.mknod(P("missing/b"), 0o170000),
        "mknod existing": lambda: o.mknod(P("file"), 0o600 | stat.S_IFIFO),
        "mknod in a file": lambda: o.mknod(P("file/x"), 0o600 | stat.S_IFIFO),
        "mkfifo": lambda: (o.mkfifo(P("fifo2"), 0o604), oct(o.lstat(P("fifo2")).st_mode)),
        # O_TMPFILE: flag checks, then the directory lookup
        "rename from under a file to ''": lambda: o.rename(P("full/x/y"), ""),
        "rename from nowhere to ''": lambda: o.rename(P("missing/y"), ""),
        "O_TMPFILE read-only": lambda: o.open(P("dir"), os.O_TMPFILE | os.O_RDONLY),
        "O_TMPFILE missing": lambda: o.open(P("missing"), os.O_TMPFILE | os.O_RDWR),
        "O_TMPFILE on a file": lambda: o.open(P("file"), os.O_TMPFILE | os.O_RDWR),
        "O_TMPFILE loop": lambda: o.open(P("loop1"), os.O_TMPFILE | os.O_RDWR),
        "O_TMPFILE with O_CREAT": lambda: o.open(P("dir"), os.O_TMPFILE | os.O_CREAT | os.O_RDWR),
    }


def test_descriptor_and_c_int_arguments_as_os_takes_them(twin):
    """Each call refused as ``os`` refuses it (the errno, the exception type, the file name —
    a descriptor where os names one), with a descriptor of each kind on both sides."""
    def open_fds(o, P):
        return {"rw": o.open(P("file"), os.O_RDWR), "opath": o.open(P("file"), os.O_PATH),
                "dir": o.open(P("dir"), os.O_RDONLY)}

    def outcome(fn, fds):
        try:
            result = fn()
            return ("ok", result if not isinstance(result, tuple) else result[-1])
        except OSError as exc:
            name = exc.filename
            named_fd = next((k for k, v in fds.items() if v == name), None) if isinstance(name, int) \
                else None
            return ("OSError", exc.errno, named_fd or (name if not isinstance(name, str)
                                                        else os.path.basename(name)))
        except (OverflowError, TypeError, ValueError, NotImplementedError) as exc:
            return (type(exc).__name__,)
    gfds = open_fds(twin.g, lambda p: p)
    lfds = open_fds(os, twin.lpath)
    try:
        guest = _fd_calls(twin.g, lambda p: p, gfds)
        local = _fd_calls(os, twin.lpath, lfds)
        mismatches = {}
        for name in guest:
            g, lo = outcome(guest[name], gfds), outcome(local[name], lfds)
            if g != lo:
                mismatches[name] = (g, lo)
        assert mismatches == {}
    finally:
        for fd in gfds.values():
            twin.g.close(fd)
        for fd in lfds.values():
            os.close(fd)


def test_access_needs_search_permission_on_every_directory_walked(twin):
    """fs/namei.c may_lookup: for another user, a file in a directory without x for them is not
    accessible, whatever its own mode; x alone on the directory is enough."""
    g = twin.g
    for d, mode in (("p700", 0o700), ("p711", 0o711)):
        g.mkdir(d)
        fd = g.open(f"{d}/f", os.O_CREAT | os.O_WRONLY, 0o666)
        g.close(fd)
        g.chmod(f"{d}/f", 0o666)
        g.chmod(d, mode)
    nobody = GuestOS(twin.client, uid=65534, gid=65534, groups=())
    assert os.getuid() != 65534
    assert nobody.access("p700", os.F_OK) and nobody.access("p711", os.X_OK)
    assert not nobody.access("p700/f", os.F_OK) and not nobody.access("p700/f", os.R_OK)
    assert not nobody.access("p700/../p700/f", os.R_OK)
    assert nobody.access("p711/f", os.R_OK | os.W_OK)
    assert not nobody.access("p711/../p700/f", os.R_OK)
    assert GuestOS(twin.client, uid=0, gid=0, groups=()).access("p700/f", os.R_OK)


def test_dup_shares_the_open_file(twin):
    """The position is shared; FLUSH at each close, RELEASE at the last one only."""
    g = twin.g
    fd = g.open("file", os.O_RDWR)
    fd2 = g.dup(fd)
    assert fd2 == fd + 1
    assert g.read(fd, 2) == b"he" and g.read(fd2, 2) == b"ll"
    released = twin.transport.counts[Opcode.RELEASE]
    g.close(fd)
    assert twin.transport.counts[Opcode.RELEASE] == released
    assert g.read(fd2, 10) == b"o" and g.lseek(fd2, 0, os.SEEK_CUR) == 5
    g.close(fd2)
    assert twin.transport.counts[Opcode.RELEASE] == released + 1
    for bad in (fd2, 999):
        with pytest.raises(OSError) as ei:
            g.dup(bad)
        assert ei.value.errno == errno.EBADF and ei.value.filename is None
    with pytest.raises(TypeError):
        g.dup(1.0)


def test_statvfs_reports_the_mount_flags_of_a_default_mount(g):
    assert g.statvfs("dir").f_flag == os.ST_RELATIME


def test_o_tmpfile_in_a_directory_is_eopnotsupp(g):
    """What a virtio-fs mount answers when its server has no FUSE_TMPFILE."""
    with pytest.raises(OSError) as ei:
        g.open("dir", os.O_TMPFILE | os.O_RDWR)
    assert ei.value.errno == errno.EOPNOTSUPP


def test_writeback_cache_refuses_writes_past_the_largest_offset(twin):
    """The page cache path makes the VFS's check itself (rw_verify_area): EINVAL, nothing
    cached past 2^63 - 1, the position unchanged."""
    from vfscluster.guest.cache import CacheConfig, CacheMode, CachePolicy
    client = FuseClient(twin.transport, CachePolicy(CacheConfig(CacheMode.ALWAYS, writeback=True)))
    client.init()
    w = GuestOS(client)
    fd = w.open("file", os.O_RDWR)
    try:
        with pytest.raises(OSError) as ei:
            w.pwrite(fd, b"x", M)
        assert ei.value.errno == errno.EINVAL
        w.lseek(fd, M - 1, os.SEEK_SET)
        with pytest.raises(OSError) as ei:
            w.write(fd, b"xy")
        assert ei.value.errno == errno.EINVAL
        assert w.lseek(fd, 0, os.SEEK_CUR) == M - 1 and w.fstat(fd).st_size == 5
    finally:
        w.close(fd)
        client.flush_forgets()


def test_direct_io_on_a_write_back_mount_sees_and_keeps_the_newest_data(twin):
    """O_DIRECT next to cached writes (mm/filemap.c): the guest's dirty data is written back
    before a direct read or write, and cached pages are dropped after a direct write — the older
    buffered data used to land last and win."""
    from vfscluster.guest.cache import CacheConfig, CacheMode, CachePolicy
    client = FuseClient(twin.transport, CachePolicy(CacheConfig(CacheMode.ALWAYS, writeback=True)))
    client.init()
    w = GuestOS(client)
    fd = w.open("file", os.O_RDWR)
    d = w.open("file", os.O_RDWR | os.O_DIRECT)
    try:
        assert w.pread(fd, 5, 0) == b"hello"                  # cached
        w.pwrite(fd, b"OLD", 0)                               # dirty in the guest
        assert w.pread(d, 5, 0) == b"OLDlo"                   # the direct read sees it
        assert w.pwrite(d, b"NEW", 0) == 3
        assert w.pread(fd, 5, 0) == b"NEWlo"                  # no stale cached page
    finally:
        w.close(d)
        w.close(fd)
        client.flush_forgets()
    assert (twin.share / "file").read_bytes() == b"NEWlo"


def test_truncate_past_off_t_is_an_overflow_error(twin):
    with pytest.raises(OverflowError):
        twin.g.truncate("file", BIG)
    with pytest.raises(OverflowError):
        os.truncate(twin.lpath("file"), BIG)


# -------------------------------------------------------------------------------- every call works

def test_file_io_calls(g):
    fd = g.open("f", os.O_CREAT | os.O_RDWR, 0o600)
    assert fd == 3
    assert g.write(fd, b"hello world") == 11
    assert g.lseek(fd, 0, os.SEEK_CUR) == 11
    assert g.pread(fd, 5, 6) == b"world"
    assert g.pwrite(fd, b"W", 6) == 1
    assert g.lseek(fd, 0, os.SEEK_SET) == 0
    assert g.read(fd, 100) == b"hello World"
    assert g.read(fd, 100) == b""
    assert g.lseek(fd, -5, os.SEEK_END) == 6
    assert g.lseek(fd, 2, os.SEEK_CUR) == 8
    assert g.lseek(fd, 0, os.SEEK_DATA) == 0
    assert g.lseek(fd, 0, os.SEEK_HOLE) == 11
    assert _errno(g.lseek, fd, 11, os.SEEK_DATA) == errno.ENXIO
    assert _errno(g.lseek, fd, -20, os.SEEK_END) == errno.EINVAL
    g.ftruncate(fd, 5)
    assert g.fstat(fd).st_size == 5
    g.fsync(fd)
    g.fdatasync(fd)
    fd2 = g.open("f", os.O_RDONLY)
    assert fd2 == 4
    g.close(fd)
    fd3 = g.open("f", os.O_RDONLY)
    assert fd3 == 3                                 # lowest free descriptor
    assert g.read(fd3, 10) == b"hello"
    g.close(fd2)
    g.close(fd3)
    st = g.stat("f")
    assert stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600 & ~g.umask(g.umask(0))
    assert g.open_fds() == []


def test_o_trunc_o_append_and_o_excl(g):
    fd = g.open("f", os.O_CREAT | os.O_WRONLY | os.O_EXCL)
    g.write(fd, b"12345")
    g.close(fd)
    fd = g.open("f", os.O_WRONLY | os.O_APPEND)
    g.lseek(fd, 0, os.SEEK_SET)
    assert g.write(fd, b"ab") == 2
    assert g.lseek(fd, 0, os.SEEK_CUR) == 7          # the new end
    assert g.pwrite(fd, b"Z", 0) == 1                # appends too, position unchanged
    assert g.lseek(fd, 0, os.SEEK_CUR) == 7
    g.close(fd)
    fd = g.open("f", os.O_RDWR | os.O_TRUNC)
    assert g.fstat(fd).st_size == 0
    g.close(fd)


def test_o_trunc_without_atomic_o_trunc_sends_setattr(twin):
    """A server without ATOMIC_O_TRUNC gets OPEN without O_TRUNC, then SETATTR(size 0, fh)."""
    import dataclasses
    from vfscluster.fuse.abi import InitFlags
    c, t = twin.client, twin.transport
    c.info = dataclasses.replace(c.info, flags=c.info.flags & ~InitFlags.ATOMIC_O_TRUNC)
    fd = twin.g.open("file", os.O_WRONLY | os.O_TRUNC)
    assert t.counts[Opcode.SETATTR] == 1
    assert twin.g.fstat(fd).st_size == 0
    twin.g.close(fd)
    fd = twin.g.open("new", os.O_WRONLY | os.O_TRUNC | os.O_CREAT)   # created: not truncated
    twin.g.close(fd)
    assert t.counts[Opcode.SETATTR] == 1


def test_o_creat_through_a_dangling_symlink_creates_the_target(g, twin):
    g.symlink("dir/target", "dl")
    fd = g.open("dl", os.O_CREAT | os.O_WRONLY, 0o644)
    g.write(fd, b"x")
    g.close(fd)
    assert (twin.share / "dir" / "target").read_bytes() == b"x"
    assert g.readlink("dl") == "dir/target"
    assert _errno(g.open, "dl", os.O_CREAT | os.O_EXCL | os.O_WRONLY) == errno.EEXIST


def test_namespace_calls(g, twin):
    g.mkdir("d", 0o750)
    assert stat.S_ISDIR(g.stat("d").st_mode)
    g.mkdir("d/e")
    fd = g.open("d/e/f", os.O_CREAT | os.O_WRONLY)
    g.close(fd)
    g.rename("d/e/f", "d/f")
    g.replace("d/f", "d/e/g")
    g.link("d/e/g", "d/h")
    assert g.stat("d/h").st_nlink == 2
    g.symlink("e/g", "d/s")
    assert g.readlink("d/s") == "e/g"
    assert g.readlink(b"d/s") == b"e/g"
    assert g.stat("d/s").st_ino == g.stat("d/h").st_ino
    assert stat.S_ISLNK(g.lstat("d/s").st_mode)
    assert sorted(g.listdir("d")) == ["e", "h", "s"]
    assert sorted(g.listdir(b"d")) == [b"e", b"h", b"s"]
    assert sorted(g.listdir()) == sorted(os.listdir(twin.share))
    g.remove("d/h")
    g.unlink("d/s")
    g.unlink("d/e/g")
    g.rmdir("d/e")
    g.rmdir("d/")
    assert not g.exists("d")
    assert g.exists("dir") and g.exists("ldir/sub") and not g.exists("dangling")


def test_scandir(g):
    entries = {e.name: e for e in g.scandir()}
    assert set(entries) == set(g.listdir())
    assert entries["dir"].is_dir() and not entries["dir"].is_file()
    assert entries["file"].is_file() and entries["file"].path == "./file"
    assert entries["ldir"].is_symlink() and entries["ldir"].is_dir()
    assert not entries["ldir"].is_dir(follow_symlinks=False)
    assert not entries["dangling"].is_dir() and not entries["dangling"].is_file()
    assert entries["file"].stat().st_size == 5
    assert entries["file"].inode() == g.stat("file").st_ino
    assert stat.S_ISLNK(entries["lfile"].stat(follow_symlinks=False).st_mode)
    assert stat.S_ISREG(entries["lfile"].stat().st_mode)
    assert os.fspath(entries["file"]) == "./file"
    with g.scandir(b"dir") as it:
        assert [(e.name, e.path) for e in it] == [(b"sub", b"dir/sub")]
    assert [e.path for e in g.scandir("dir/")] == ["dir/sub"]


def test_large_directories_are_read_page_by_page(twin):
    names = {f"entry-{i:04d}-{'x' * 40}" for i in range(300)}
    twin.g.mkdir("big")
    for n in names:
        twin.g.close(twin.g.open(f"big/{n}", os.O_CREAT | os.O_WRONLY))
    t = twin.transport
    assert set(twin.g.listdir("big")) == names
    assert t.counts[Opcode.READDIR] > 3                 # several pages, then an empty one
    assert {e.name for e in twin.g.scandir("big")} == names
    assert t.counts[Opcode.READDIRPLUS] > 3
    twin.client.flush_forgets()
    assert twin.client.lookup_counts() == {} and len(twin.fs.inodes) == 1


def test_metadata_calls(g):
    g.chmod("file", 0o640)
    assert stat.S_IMODE(g.stat("file").st_mode) == 0o640
    g.chmod("lfile", 0o600)                          # follows the symlink
    assert stat.S_IMODE(g.stat("file").st_mode) == 0o600
    with pytest.raises(NotImplementedError):
        g.chmod("lfile", 0o600, follow_symlinks=False)
    g.utime("file", ns=(1_000_000_001, 2_000_000_002))
    st = g.stat("file")
    assert (st.st_atime_ns, st.st_mtime_ns) == (1_000_000_001, 2_000_000_002)
    g.utime("file", (1.5, 2.0000001))
    assert g.stat("file").st_mtime_ns == 2_000_000_099          # CPython's rounding
    g.utime("file")
    assert g.stat("file").st_mtime_ns > 2_000_000_099
    with pytest.raises(ValueError):
        g.utime("file", (1, 2), ns=(1, 2))
    with pytest.raises(TypeError):
        g.utime("file", (1,))
    g.truncate("file", 2)
    assert g.stat("file").st_size == 2
    assert g.access("file", os.R_OK | os.W_OK) and g.access("dir", os.X_OK)
    assert not g.access("file", os.X_OK) and not g.access("missing", os.F_OK)
    assert g.statvfs("file").f_namemax == 255
    fd = g.open("file", os.O_RDONLY)
    assert g.statvfs(fd).f_bsize == g.statvfs("/").f_bsize
    assert g.stat(fd).st_size == 2
    g.close(fd)
    root = g.stat("/")
    assert stat.S_ISDIR(root.st_mode)
    assert root.st_ino == os.stat(g.client.transport.server.fs.shared_dir).st_ino


def test_xattr_calls(g):
    g.setxattr("file", "user.a", b"1")
    g.setxattr("file", b"user.b", b"22", os.XATTR_CREATE)
    assert _errno(g.setxattr, "file", "user.b", b"2", os.XATTR_CREATE) == errno.EEXIST
    assert _errno(g.setxattr, "file", "user.c", b"2", os.XATTR_REPLACE) == errno.ENODATA
    assert g.getxattr("file", "user.b") == b"22"
    assert g.getxattr("lfile", "user.a") == b"1"
    assert sorted(g.listxattr("file")) == ["user.a", "user.b"]
    g.removexattr("file", "user.a")
    assert g.listxattr("file") == ["user.b"]
    assert _errno(g.getxattr, "file", "user.a") == errno.ENODATA
    assert _errno(g.getxattr, "missing", "") == errno.ERANGE
    assert _errno(g.setxattr, "missing", "user.x", b"v" * 70000) == errno.E2BIG
    assert _errno(g.setxattr, "missing", "user.x", b"v", 4) == errno.EINVAL
    big = os.urandom(3000)
    g.setxattr("dir", "user.big", big)
    assert g.getxattr("dir", "user.big") == big


# ----------------------------------------------------------------------------------- lookup counts

def test_lookup_counts_return_to_zero_on_the_host(twin):
    g, fs, client = twin.g, twin.fs, twin.client
    fds = [g.open("file", os.O_RDONLY), g.open("dir", os.O_RDONLY), g.open("ldir/sub", os.O_RDONLY),
           g.open("new", os.O_CREAT | os.O_RDWR), g.open("lfile", os.O_PATH | os.O_NOFOLLOW)]
    g.stat("ldir/sub/../../lfile")
    g.listdir("dir")
    list(g.scandir("."))
    g.rename("new", "dir/new2")
    g.link("dir/new2", "hl")
    g.unlink("dir/new2")
    for op in (lambda: g.stat("loop1"), lambda: g.rmdir("full"),
               lambda: g.open("dir", os.O_WRONLY)):
        with pytest.raises(OSError):
            op()
    client.flush_forgets()
    pinned = {nid for nid, (_n, pins) in client.lookup_counts().items()}
    assert len(pinned) == 5 and len(fs.inodes) == 1 + 5    # only the open files' inodes
    for fd in fds:
        g.close(fd)
    client.flush_forgets()
    assert client.lookup_counts() == {}
    assert len(fs.inodes) == 1                              # the root only
    assert fs.inodes.refs(0, 1) == 0


# --------------------------------------------------------------- I/O size, unlinked files, threads

def test_large_io_is_split(tmp_path):
    twin = Twin(tmp_path, max_io=256 * 1024)
    try:
        g, t = twin.g, twin.transport
        data = os.urandom(3 * 1024 * 1024 + 17)
        fd = g.open("big", os.O_CREAT | os.O_RDWR)
        assert g.write(fd, data) == len(data)
        assert t.counts[Opcode.WRITE] == 13
        assert g.pread(fd, len(data), 0) == data
        assert t.counts[Opcode.READ] == 13
        g.close(fd)
        assert (twin.share / "big").read_bytes() == data
    finally:
        twin.close()


def test_unlinked_open_file_is_still_readable_and_writable(twin):
    g = twin.g
    fd = g.open("file", os.O_RDWR)
    g.unlink("file")
    assert not g.exists("file")
    assert g.pread(fd, 10, 0) == b"hello"
    assert g.pwrite(fd, b"HELLO!", 0) == 6
    assert g.pread(fd, 10, 0) == b"HELLO!"
    st = g.fstat(fd)
    assert (st.st_nlink, st.st_size) == (0, 6)
    g.ftruncate(fd, 2)
    assert g.read(fd, 10) == b"HE"
    g.close(fd)
    twin.client.flush_forgets()
    assert len(twin.fs.inodes) == 1


def test_threads_share_one_guest_os(twin):
    g = twin.g
    errors = []
    shared = g.open("shared", os.O_CREAT | os.O_RDWR)

    def worker(k):
        try:
            for i in range(20):
                name = f"t{k}_{i % 3}"
                fd = g.open(name, os.O_CREAT | os.O_WRONLY | os.O_TRUNC)
                g.write(fd, name.encode())
                g.close(fd)
                assert g.stat(name).st_size == len(name)
                g.pwrite(shared, bytes([65 + k]) * 10, k * 10)
                g.rename(name, f"r{k}")
                g.listdir()
        except BaseException as exc:       # pragma: no cover - reported below
            errors.append(exc)
    run_threads(worker, 4, 60)
    assert not errors
    assert g.pread(shared, 40, 0) == b"A" * 10 + b"B" * 10 + b"C" * 10 + b"D" * 10
    g.close(shared)
    twin.client.flush_forgets()
    assert len(twin.fs.inodes) == 1


def test_close_while_another_thread_uses_the_fd(twin):
    """close() removes the descriptor at once; the RELEASE waits for the operation in progress."""
    g, t = twin.g, twin.transport
    fd = g.open("file", os.O_RDONLY)
    file = g._fds.get(fd)                 # an operation in progress holds a reference
    g.close(fd)
    assert _errno(g.read, fd, 1) == errno.EBADF
    assert t.counts[Opcode.RELEASE] == 0 and t.counts[Opcode.FLUSH] == 1
    file.put()
    assert t.counts[Opcode.RELEASE] == 1


def test_protocol_error_becomes_eio(twin):
    g, t = twin.g, twin.transport
    t.reply_hook = lambda op, err, body: (err, body[:10]) if op == Opcode.LOOKUP else (err, body)
    with pytest.raises(OSError) as info:
        g.stat("file")
    assert info.value.errno == errno.EIO and info.value.filename == "file"
    t.reply_hook = None
    assert g.stat("file").st_size == 5


def test_umask(g):
    old = g.umask(0o077)
    fd = g.open("m", os.O_CREAT | os.O_WRONLY, 0o777)
    g.close(fd)
    g.mkdir("md", 0o777)
    assert stat.S_IMODE(g.stat("m").st_mode) == 0o700
    assert stat.S_IMODE(g.stat("md").st_mode) == 0o700
    assert g.umask(old) == 0o077


def test_loopback_transport_is_thread_safe(tmp_path):
    share = tmp_path / "s"
    share.mkdir()
    fs, server, _ = make_loopback(share)
    transport = LoopbackTransport(server)
    client = FuseClient(transport)
    client.init()
    g = GuestOS(client)
    g.mkdir("d")
    results = []

    def worker():
        results.append(all(g.stat("d").st_nlink == 2 for _ in range(100)))
    run_threads(lambda _: worker(), 4, 30)
    assert results == [True] * 4
    client.flush_forgets()
    assert len(fs.inodes) == 1
    fs.close()


# ------------------------------------------------------------------------------ a host of garbage

def _mangled(data, error: int, body: bytes) -> tuple[int, bytes]:
    """A reply as a broken host might send it: bytes flipped, cut short, lengthened, a field
    set to 0, 1 or all ones, an errno out of range, or left alone."""
    how = data.draw(st.sampled_from(["keep", "flip", "cut", "grow", "field", "errno", "random"]))
    b = bytearray(body)
    if how == "flip" and b:
        for i in data.draw(st.lists(st.integers(0, len(b) - 1), min_size=1, max_size=3)):
            b[i] ^= data.draw(st.integers(1, 255))
    elif how == "cut":
        del b[data.draw(st.integers(0, len(b))):]
    elif how == "grow":
        b += data.draw(st.binary(min_size=1, max_size=40))
    elif how == "field" and len(b) >= 8:
        at = data.draw(st.integers(0, len(b) // 8 - 1)) * 8
        b[at:at + 8] = data.draw(st.sampled_from([bytes(8), b"\1" + bytes(7), b"\xff" * 8]))
    elif how == "errno":
        error = data.draw(st.sampled_from([-1, -2, -5, -22, -38, -4095, -4096, -(1 << 31), 1, 7]))
    elif how == "random":
        b = bytearray(data.draw(st.binary(min_size=len(b), max_size=len(b))))
    return error, bytes(b)


def _garbage_ops(g):
    def read(n):
        fd = g.open("file", os.O_RDONLY)
        try:
            return g.read(fd, n)
        finally:
            g.close(fd)

    def write(n):
        fd = g.open("w", os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            return g.write(fd, b"x" * n)
        finally:
            g.close(fd)

    def scandir(p):
        return [e.stat(follow_symlinks=False) for e in g.scandir(p)]
    return [lambda: g.stat("file"), lambda: g.stat("dir/sub"), lambda: g.lstat("lfile"),
            lambda: g.listdir("/"), lambda: scandir("dir"), lambda: read(100), lambda: read(5000),
            lambda: write(10), lambda: g.readlink("lfile"), lambda: g.listxattr("file"),
            lambda: g.statvfs("/"), lambda: g.mkdir("m"), lambda: g.rmdir("m"),
            lambda: g.rename("w", "w2"), lambda: g.utime("file", (1, 2)),
            lambda: g.symlink("t", "s"), lambda: g.link("file", "hard"), lambda: g.unlink("hard"),
            lambda: g.access("file", os.R_OK), lambda: g.chmod("file", 0o600)]


@settings(max_examples=60, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_a_host_that_sends_garbage_replies_gets_oserrors_never_a_crash(tmp_path_factory, data):
    """Every reply possibly mangled (lengths, fields, errnos, random bytes): each call returns
    or raises OSError — never a struct.error, IndexError, UnicodeDecodeError... — and the guest
    keeps working once the host behaves again."""
    t = Twin(tmp_path_factory.mktemp("garbage"))
    try:
        t.transport.reply_hook = lambda opcode, error, body: _mangled(data, error, body)
        ops = _garbage_ops(t.g)
        for i in data.draw(st.lists(st.integers(0, len(ops) - 1), min_size=5, max_size=30)):
            try:
                ops[i]()
            except OSError:
                pass
        t.transport.reply_hook = None
        assert t.g.read(t.g.open("file", os.O_RDONLY), 5) == b"hello"
    finally:
        t.close()
