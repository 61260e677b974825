"""vfscluster.fuse.server: request decoding, INIT negotiation, replies, protocol errors, and
round trips against a real PassthroughFs."""

from __future__ import annotations

import errno
import logging
import os
import stat

import pytest

from vfscluster.fuse import abi
from vfscluster.fuse.abi import InitFlags, Opcode
from vfscluster.fuse.filesystem import FileSystem
from vfscluster.fuse.passthrough import PassthroughFs
from vfscluster.fuse.server import SERVER_FLAGS, Server
from vfscluster.virtio.chain import Reader, Writer

ROOT = abi.ROOT_ID
O = Opcode


def request(opcode: int, body: bytes = b"", *, nodeid: int = ROOT, unique: int = 7,
            uid: int = 0, gid: int = 0, pid: int = 99, length: int | None = None,
            extlen: int = 0) -> bytes:
    n = abi.InHeader.SIZE + len(body) if length is None else length
    return abi.InHeader(n, opcode, unique, nodeid, uid, gid, pid, extlen).pack() + body


class Reply:
    def __init__(self, n: int, data: bytes) -> None:
        self.n = n
        self.raw = data[:n]
        self.header = abi.OutHeader.unpack_from(data) if n >= 16 else None
        self.body = data[16:n]

    @property
    def error(self) -> int:
        return -self.header.error


def call(server: Server, data: bytes | list[bytes], cap: int | list[int] | None = 1 << 16) -> Reply:
    """Run one request; ``data`` and ``cap`` may be split into several buffers."""
    reader = Reader(data if isinstance(data, list) else [data])
    if cap is None:
        return Reply(server.handle(reader, None), b"")
    bufs = [bytearray(c) for c in (cap if isinstance(cap, list) else [cap])]
    n = server.handle(reader, Writer(bufs))
    return Reply(n, b"".join(bytes(b) for b in bufs))


def init_body(major=7, minor=38, flags=InitFlags.INIT_EXT | InitFlags.ASYNC_READ, flags2=None,
              short=False, readahead=131072) -> bytes:
    lo, hi = abi.split_init_flags(flags)
    if short:
        return abi.InitIn(major, minor, readahead, lo, 0).pack()[:16]
    return abi.InitIn(major, minor, readahead, lo, hi if flags2 is None else flags2).pack()


def name(s: bytes) -> bytes:
    return s + b"\0"


@pytest.fixture
def tree(tmp_path):
    share = tmp_path / "share"
    share.mkdir()
    (share / "file").write_bytes(b"0123456789" * 10)
    (share / "dir").mkdir()
    for i in range(20):
        (share / "dir" / f"entry-{i:02d}").write_bytes(b"x" * i)
    return share


@pytest.fixture
def fs(tree):
    with PassthroughFs(tree) as fs:
        yield fs


@pytest.fixture
def server(fs):
    s = Server(fs, session=3)
    r = call(s, request(O.INIT, init_body(flags=InitFlags.INIT_EXT | InitFlags.ASYNC_READ
                                          | InitFlags.DO_READDIRPLUS | InitFlags.MAX_PAGES)))
    assert r.header.error == 0
    return s


def lookup(server, parent, n) -> abi.EntryOut:
    r = call(server, request(O.LOOKUP, name(n), nodeid=parent))
    assert r.header.error == 0, errno.errorcode[r.error]
    return abi.EntryOut.unpack_from(r.body)


def open_(server, nodeid, flags=os.O_RDWR, opcode=O.OPEN) -> int:
    r = call(server, request(opcode, abi.OpenIn(flags, 0).pack(), nodeid=nodeid))
    assert r.header.error == 0, errno.errorcode[r.error]
    return abi.OpenOut.unpack_from(r.body).fh


# ---------------------------------------------------------------------------- INIT


def test_init_64_byte(fs):
    s = Server(fs)
    offered = (InitFlags.INIT_EXT | InitFlags.ASYNC_READ | InitFlags.BIG_WRITES | InitFlags.MAX_PAGES
               | InitFlags.DO_READDIRPLUS | InitFlags.SPLICE_READ | InitFlags.HAS_INODE_DAX
               | InitFlags.ENTRY_VERSION | InitFlags.MAP_ALIGNMENT)
    r = call(s, request(O.INIT, init_body(minor=38, flags=offered), unique=1))
    assert r.n == 16 + 64
    assert r.header == abi.OutHeader(80, 0, 1)
    enabled = (InitFlags.INIT_EXT | InitFlags.ASYNC_READ | InitFlags.BIG_WRITES
               | InitFlags.MAX_PAGES | InitFlags.DO_READDIRPLUS | InitFlags.MAP_ALIGNMENT)
    lo, hi = abi.split_init_flags(enabled)
    expected = abi.InitOut(major=7, minor=38, max_readahead=131072, flags=lo, max_background=0xFFFF,
                           congestion_threshold=0xFFFF * 3 // 4, max_write=1 << 20, time_gran=1,
                           max_pages=(1 << 20) // os.sysconf("SC_PAGE_SIZE"),
                           map_alignment=(os.sysconf("SC_PAGE_SIZE")).bit_length() - 1, flags2=hi)
    assert r.body == expected.pack()  # byte for byte
    assert s.initialized and s.minor == 38 and s.flags == enabled


def test_init_16_byte_old_kernel(fs):
    s = Server(fs)
    r = call(s, request(O.INIT, init_body(minor=31, flags=InitFlags.ASYNC_READ, short=True)))
    assert r.header.error == 0
    out = abi.InitOut.unpack_from(r.body)
    assert (out.major, out.minor, out.flags, out.flags2) == (7, 31, int(InitFlags.ASYNC_READ), 0)
    assert s.initialized


def test_init_16_byte_body_claiming_init_ext_is_einval(fs, caplog):
    s = Server(fs)
    body = init_body(flags=InitFlags.INIT_EXT)[:16]
    r = call(s, request(O.INIT, body))
    assert r.error == errno.EINVAL and not s.initialized


def test_init_flags2_ignored_without_init_ext(fs):
    s = Server(fs)
    body = init_body(flags=InitFlags.ASYNC_READ, flags2=0xFFFFFFFF)
    out = abi.InitOut.unpack_from(call(s, request(O.INIT, body)).body)
    assert out.flags2 == 0 and not out.flags & InitFlags.INIT_EXT


def test_init_minor_is_clamped(fs):
    s = Server(fs)
    out = abi.InitOut.unpack_from(call(s, request(O.INIT, init_body(minor=45))).body)
    assert (out.major, out.minor) == (7, 38)


def test_init_higher_major_gets_our_version_and_a_retry(fs):
    s = Server(fs)
    r = call(s, request(O.INIT, init_body(major=8, minor=0), unique=5))
    assert r.header == abi.OutHeader(80, 0, 5)
    assert r.body == abi.InitOut(major=7, minor=38).pack()
    assert not s.initialized
    assert call(s, request(O.GETATTR, bytes(16))).error == errno.EIO
    assert call(s, request(O.INIT, init_body())).header.error == 0 and s.initialized


@pytest.mark.parametrize("major, minor", [(6, 99), (7, 30), (7, 0)])
def test_init_too_old_is_eproto(fs, major, minor):
    s = Server(fs)
    r = call(s, request(O.INIT, init_body(major=major, minor=minor)))
    assert r.error == errno.EPROTO and r.n == 16 and not s.initialized


def test_flags_are_what_both_sides_accept(fs):
    s = Server(fs)
    offered = InitFlags.INIT_EXT | InitFlags.WRITEBACK_CACHE | InitFlags.POSIX_LOCKS | InitFlags.FLOCK_LOCKS
    out = abi.InitOut.unpack_from(call(s, request(O.INIT, init_body(flags=offered))).body)
    got = out.all_flags
    assert got & InitFlags.WRITEBACK_CACHE  # PassthroughFs accepts it
    assert not got & InitFlags.POSIX_LOCKS and not got & InitFlags.FLOCK_LOCKS
    assert not got & InitFlags.ASYNC_READ  # not offered
    assert SERVER_FLAGS & InitFlags.ASYNC_READ


def test_base_filesystem_init_enosys_means_protocol_flags_only(tmp_path):
    s = Server(FileSystem())
    out = abi.InitOut.unpack_from(call(s, request(O.INIT, init_body(
        flags=InitFlags.INIT_EXT | InitFlags.ASYNC_READ | InitFlags.DO_READDIRPLUS))).body)
    assert out.all_flags == InitFlags.INIT_EXT | InitFlags.ASYNC_READ
    assert call(s, request(O.GETATTR, bytes(16))).error == errno.ENOSYS


# ---------------------------------------------------------------------------- session rules


def test_requests_before_init_are_eio(fs):
    s = Server(fs)
    r = call(s, request(O.LOOKUP, name(b"file"), unique=11))
    assert r.raw == abi.OutHeader(16, -errno.EIO, 11).pack()
    assert call(s, request(O.FORGET, abi.ForgetIn(1).pack()), cap=None).n == 0
    assert call(s, request(O.DESTROY)).error == errno.EIO


def test_unknown_and_unserved_opcodes_are_enosys(server):
    for opcode in (99, 7, O.IOCTL, O.POLL, O.STATX, O.COPY_FILE_RANGE_64, O.CUSE_INIT):
        r = call(server, request(opcode, bytes(32), unique=opcode))
        assert r.raw == abi.OutHeader(16, -errno.ENOSYS, opcode).pack()


def test_destroy_ends_the_session(server, fs):
    e = lookup(server, ROOT, b"file")
    open_(server, e.nodeid)
    assert fs.handles.count(3) == 1
    r = call(server, request(O.DESTROY, unique=9))
    assert r.raw == abi.OutHeader(16, 0, 9).pack()
    assert not server.initialized and fs.handles.count(3) == 0 and fs.inodes.refs(3, e.nodeid) == 0
    assert call(server, request(O.GETATTR, bytes(16))).error == errno.EIO
    assert call(server, request(O.INIT, init_body())).header.error == 0


def test_a_second_init_restarts_the_session(server, fs):
    e = lookup(server, ROOT, b"file")
    assert call(server, request(O.INIT, init_body())).header.error == 0
    assert server.initialized and fs.inodes.refs(3, e.nodeid) == 0


def test_forget_and_batch_forget_have_no_reply(server, fs):
    a = lookup(server, ROOT, b"file")
    lookup(server, ROOT, b"file")
    d = lookup(server, ROOT, b"dir")
    assert call(server, request(O.FORGET, abi.ForgetIn(1).pack(), nodeid=a.nodeid), cap=None).n == 0
    assert fs.inodes.refs(3, a.nodeid) == 1
    body = abi.BatchForgetIn(2).pack() + abi.ForgetOne(a.nodeid, 1).pack() + abi.ForgetOne(d.nodeid, 1).pack()
    r = call(server, request(O.BATCH_FORGET, body), cap=64)
    assert r.n == 0 and r.raw == b""
    assert fs.inodes.refs(3, a.nodeid) == 0 and fs.inodes.refs(3, d.nodeid) == 0
    assert call(server, request(O.INTERRUPT, abi.InterruptIn(5).pack()), cap=None).n == 0


# ---------------------------------------------------------------------------- malformed requests


def test_short_header_is_logged_and_unanswered(server, caplog):
    with caplog.at_level(logging.WARNING):
        r = call(server, request(O.GETATTR, bytes(16))[:20])
    assert r.n == 0 and r.raw == b""
    assert "header" in caplog.text


@pytest.mark.parametrize("delta", [-1, 1, 1000])
def test_header_len_mismatch_is_einval(server, caplog, delta):
    data = request(O.GETATTR, bytes(16), length=40 + 16 + delta, unique=4)
    with caplog.at_level(logging.WARNING):
        r = call(server, data)
    assert r.raw == abi.OutHeader(16, -errno.EINVAL, 4).pack()
    assert "in_header.len" in caplog.text


@pytest.mark.parametrize("opcode, body", [
    (O.LOOKUP, b"file"),                                  # no NUL
    (O.LOOKUP, b"file\0junk"),                            # bytes after the name
    (O.SYMLINK, b"name\0target"),                         # second string without NUL
    (O.RENAME, abi.RenameIn(ROOT).pack() + b"a\0"),       # one name only
    (O.MKDIR, b"\x00" * 4),                               # short struct
    (O.GETATTR, bytes(8)),                                # short struct
    (O.GETATTR, bytes(24)),                               # long struct
    (O.WRITE, abi.WriteIn(1, 0, 100).pack() + b"x" * 10),  # size disagrees with the data
    (O.BATCH_FORGET, abi.BatchForgetIn(3).pack() + bytes(16)),
    (O.SETXATTR, abi.SetxattrIn(5, 0).pack()[:8] + b"user.a\0abc"),
    (O.REMOVEMAPPING, abi.RemovemappingIn(2).pack() + bytes(16)),
])
def test_malformed_bodies_are_einval_and_logged(server, caplog, opcode, body):
    with caplog.at_level(logging.WARNING, logger="vfscluster.fuse.server"):
        r = call(server, request(opcode, body, unique=12))
    assert r.raw == abi.OutHeader(16, -errno.EINVAL, 12).pack()
    assert caplog.records and caplog.records[-1].levelno == logging.WARNING


def test_values_out_of_range_for_the_host_are_einval_not_a_bug(server, caplog):
    """Numbers no kernel sends (open flags past a C int, an offset past loff_t) are the peer's
    garbage: EINVAL and a warning, not EIO and the traceback kept for our own bugs."""
    e = lookup(server, ROOT, b"file")
    fh = open_(server, e.nodeid, os.O_RDONLY)
    with caplog.at_level(logging.WARNING, logger="vfscluster.fuse.server"):
        for opcode, body, nodeid in (
                (O.OPEN, abi.OpenIn(0x8000_0000, 0).pack(), e.nodeid),
                (O.SETXATTR, abi.SetxattrIn(3, 0xFFFF_FFFF).pack()[:8] + b"user.a\0abc", e.nodeid),
                (O.CREATE, abi.CreateIn(0xFFFF_FFFD, 0o644, 0, 0).pack() + name(b"new"), ROOT),
                (O.READ, abi.ReadIn(fh, 1 << 63, 10).pack(), e.nodeid)):
            r = call(server, request(opcode, body, nodeid=nodeid, unique=21))
            assert r.raw == abi.OutHeader(16, -errno.EINVAL, 21).pack(), opcode
    assert [r.levelno for r in caplog.records] == [logging.WARNING] * 4
    assert "out of range" in caplog.text
    assert not os.path.exists(os.path.join(server.fs.shared_dir, "new"))


def test_extlen_past_the_request_is_einval(server):
    r = call(server, request(O.GETATTR, bytes(16), extlen=3))
    assert r.error == errno.EINVAL


def test_reply_too_small_is_an_error_reply_or_nothing(server, caplog):
    with caplog.at_level(logging.WARNING):
        r = call(server, request(O.GETATTR, bytes(16), unique=3), cap=50)  # attr_out needs 120
        assert r.raw == abi.OutHeader(16, -errno.EINVAL, 3).pack()
        r = call(server, request(O.GETATTR, bytes(16), unique=3), cap=10)  # not even a header
        assert r.n == 0
        r = call(server, request(O.GETATTR, bytes(16), unique=3), cap=None)  # no writable part
        assert r.n == 0
    assert "does not fit" in caplog.text and "no error reply" in caplog.text


def test_an_unsent_lookup_gives_its_count_back(server, fs):
    r = call(server, request(O.LOOKUP, name(b"file")), cap=100)  # entry_out needs 144
    assert r.error == errno.EINVAL
    nodeid = fs.inodes.nodeid_of((os.stat(fs.shared_dir).st_dev, os.stat(os.path.join(fs.shared_dir, "file")).st_ino))
    assert nodeid is None  # dropped again: nobody holds it


def test_read_that_does_not_fit_is_refused(server):
    e = lookup(server, ROOT, b"file")
    fh = open_(server, e.nodeid)
    r = call(server, request(O.READ, abi.ReadIn(fh, 0, 4096).pack(), nodeid=e.nodeid, unique=2), cap=100)
    assert r.raw == abi.OutHeader(16, -errno.EINVAL, 2).pack()


def test_filesystem_errors_become_negative_errno(server):
    r = call(server, request(O.LOOKUP, name(b"missing"), unique=8))
    assert r.raw == abi.OutHeader(16, -errno.ENOENT, 8).pack()
    assert call(server, request(O.GETATTR, bytes(16), nodeid=4242)).error == errno.EBADF
    assert call(server, request(O.SETUPMAPPING, abi.SetupmappingIn().pack())).error == errno.ENOSYS
    assert call(server, request(O.BMAP, abi.BmapIn().pack())).error == errno.ENOSYS


def test_a_filesystem_bug_is_eio_not_a_crash(fs, caplog):
    class Broken(FileSystem):
        def init(self, ctx, flags):
            return 0

        def getattr(self, ctx, nodeid, fh):
            raise KeyError("bug")

    s = Server(Broken())
    call(s, request(O.INIT, init_body()))
    with caplog.at_level(logging.ERROR):
        r = call(s, request(O.GETATTR, bytes(16)))
    assert r.error == errno.EIO and "KeyError" in caplog.text


# ---------------------------------------------------------------------------- round trips


def test_lookup_and_getattr(server, tree):
    e = lookup(server, ROOT, b"file")
    st = os.stat(tree / "file")
    assert e.nodeid > ROOT and e.entry_valid == 1 and e.attr_valid == 1
    assert e.attr == abi.Attr.from_stat(st)
    r = call(server, request(O.GETATTR, abi.GetattrIn(0, 0).pack(), nodeid=e.nodeid))
    out = abi.AttrOut.unpack_from(r.body)
    assert r.n == 16 + 104 and out.attr == abi.Attr.from_stat(os.stat(tree / "file"))
    fh = open_(server, e.nodeid)
    r = call(server, request(O.GETATTR, abi.GetattrIn(abi.GETATTR_FH, fh).pack(), nodeid=e.nodeid))
    assert abi.AttrOut.unpack_from(r.body).attr.size == 100


def test_read_into_many_small_buffers(server, tree):
    e = lookup(server, ROOT, b"file")
    fh = open_(server, e.nodeid, os.O_RDONLY)
    caps = [5, 7, 3, 1, 11, 9, 64]  # the header itself is split across buffers
    r = call(server, request(O.READ, abi.ReadIn(fh, 3, 40).pack(), nodeid=e.nodeid, unique=6), cap=caps)
    assert r.n == 56 and r.header == abi.OutHeader(56, 0, 6)
    assert r.body == (b"0123456789" * 10)[3:43]
    # at end of file the reply is short
    r = call(server, request(O.READ, abi.ReadIn(fh, 95, 40).pack(), nodeid=e.nodeid), cap=[16, 40])
    assert r.n == 21 and r.body == b"56789"
    assert call(server, request(O.READ, abi.ReadIn(999, 0, 4).pack(), nodeid=e.nodeid)).error == errno.EBADF


def test_write_from_many_buffers(server, tree):
    e = lookup(server, ROOT, b"file")
    fh = open_(server, e.nodeid)
    data = request(O.WRITE, abi.WriteIn(fh, 10, 12).pack() + b"hello, world", nodeid=e.nodeid, unique=5)
    parts = [data[:30], data[30:50], data[50:83], data[83:]]
    r = call(server, parts)
    assert r.raw == abi.OutHeader(24, 0, 5).pack() + abi.WriteOut(12).pack()
    assert (tree / "file").read_bytes()[:24] == b"0123456789hello, world23"


def test_create_mkdir_symlink_link_unlink_rename(server, tree):
    r = call(server, request(O.CREATE, abi.CreateIn(os.O_RDWR | os.O_CREAT, 0o666, 0o022).pack() + name(b"new")))
    assert r.header.error == 0 and len(r.body) == 128 + 16
    entry = abi.EntryOut.unpack_from(r.body)
    opened = abi.OpenOut.unpack_from(r.body, 128)
    assert stat.S_IMODE(entry.attr.mode) == 0o644 and opened.fh > 0
    r = call(server, request(O.MKDIR, abi.MkdirIn(0o755, 0).pack() + name(b"d")))
    d = abi.EntryOut.unpack_from(r.body)
    assert stat.S_ISDIR(d.attr.mode) and (tree / "d").is_dir()
    r = call(server, request(O.SYMLINK, name(b"s") + name(b"../target")))
    assert stat.S_ISLNK(abi.EntryOut.unpack_from(r.body).attr.mode)
    r = call(server, request(O.READLINK, nodeid=abi.EntryOut.unpack_from(r.body).nodeid))
    assert r.body == b"../target"
    r = call(server, request(O.MKNOD, abi.MknodIn(stat.S_IFIFO | 0o600, 0, 0).pack() + name(b"p")))
    assert stat.S_ISFIFO(abi.EntryOut.unpack_from(r.body).attr.mode)
    r = call(server, request(O.LINK, abi.LinkIn(entry.nodeid).pack() + name(b"hard"), nodeid=d.nodeid))
    assert abi.EntryOut.unpack_from(r.body).attr.nlink == 2
    assert call(server, request(O.UNLINK, name(b"hard"), nodeid=d.nodeid)).n == 16
    r = call(server, request(O.RENAME, abi.RenameIn(d.nodeid).pack() + name(b"new") + name(b"moved")))
    assert r.header.error == 0 and (tree / "d" / "moved").exists()
    r = call(server, request(O.RENAME2, abi.Rename2In(ROOT, 1).pack() + name(b"d") + name(b"file")))
    assert r.error == errno.EEXIST
    assert call(server, request(O.RMDIR, name(b"d"))).error == errno.ENOTEMPTY


def test_setattr_and_statfs_and_xattrs(server, tree):
    e = lookup(server, ROOT, b"file")
    valid = abi.SetattrValid.SIZE | abi.SetattrValid.MODE | abi.SetattrValid.MTIME
    body = abi.SetattrIn(valid=valid, size=3, mode=stat.S_IFREG | 0o600, mtime=12345, mtimensec=6).pack()
    out = abi.AttrOut.unpack_from(call(server, request(O.SETATTR, body, nodeid=e.nodeid)).body)
    assert (out.attr.size, stat.S_IMODE(out.attr.mode), out.attr.mtime, out.attr.mtimensec) == (3, 0o600, 12345, 6)
    r = call(server, request(O.STATFS))
    assert r.n == 16 + 80
    assert abi.Kstatfs.unpack_from(r.body).bsize == os.statvfs(tree).f_bsize
    r = call(server, request(O.SETXATTR, abi.SetxattrIn(3, 0).pack()[:8] + name(b"user.k") + b"abc", nodeid=e.nodeid))
    assert r.header.error == 0 and os.getxattr(tree / "file", "user.k") == b"abc"
    r = call(server, request(O.GETXATTR, abi.GetxattrIn(0).pack() + name(b"user.k"), nodeid=e.nodeid))
    assert r.body == abi.GetxattrOut(3).pack()
    r = call(server, request(O.GETXATTR, abi.GetxattrIn(100).pack() + name(b"user.k"), nodeid=e.nodeid))
    assert r.body == b"abc"
    r = call(server, request(O.GETXATTR, abi.GetxattrIn(2).pack() + name(b"user.k"), nodeid=e.nodeid))
    assert r.error == errno.ERANGE
    r = call(server, request(O.LISTXATTR, abi.GetxattrIn(100).pack(), nodeid=e.nodeid))
    assert b"user.k\0" in r.body
    assert call(server, request(O.REMOVEXATTR, name(b"user.k"), nodeid=e.nodeid)).header.error == 0
    assert call(server, request(O.ACCESS, abi.AccessIn(os.R_OK).pack(), nodeid=e.nodeid)).header.error == 0


def test_file_handle_operations(server, tree):
    e = lookup(server, ROOT, b"file")
    fh = open_(server, e.nodeid)
    ok = lambda op, body: -call(server, request(op, body, nodeid=e.nodeid)).header.error  # noqa: E731
    assert ok(O.FLUSH, abi.FlushIn(fh, 0).pack()) == 0
    assert ok(O.FSYNC, abi.FsyncIn(fh, abi.FSYNC_FDATASYNC).pack()) == 0
    assert ok(O.FALLOCATE, abi.FallocateIn(fh, 0, 8192, 0).pack()) == 0
    assert os.path.getsize(tree / "file") == 8192
    r = call(server, request(O.LSEEK, abi.LseekIn(fh, 0, os.SEEK_END).pack(), nodeid=e.nodeid))
    assert abi.LseekOut.unpack_from(r.body).offset == 8192
    f2 = lookup(server, ROOT, b"dir")
    e2 = lookup(server, f2.nodeid, b"entry-05")
    fh2 = open_(server, e2.nodeid)
    body = abi.CopyFileRangeIn(fh, 0, e2.nodeid, fh2, 0, 4, 0).pack()
    r = call(server, request(O.COPY_FILE_RANGE, body, nodeid=e.nodeid))
    assert r.body == abi.WriteOut(4).pack() and (tree / "dir" / "entry-05").read_bytes() == b"0123x"
    lk = abi.LkIn(fh, 1, abi.FileLock(0, 10, 1, 0), 0).pack()
    assert ok(O.SETLK, lk) == 0
    r = call(server, request(O.GETLK, abi.LkIn(fh2, 2, abi.FileLock(0, 10, 1, 0), 0).pack(), nodeid=e2.nodeid))
    assert abi.LkOut.unpack_from(r.body).lk.type == 2  # other file: unlocked
    assert ok(O.SETLKW, lk) == 0                     # its own lock again: granted at once
    other = open_(server, e.nodeid)
    clash = abi.LkIn(other, 2, abi.FileLock(5, 5, 1, 0), 0).pack()
    assert ok(O.SETLK, clash) == errno.EAGAIN
    assert ok(O.SETLKW, clash) == errno.EOPNOTSUPP    # it would wait, and there is no notifier
    assert ok(O.SYNCFS, abi.SyncfsIn().pack()) == 0
    assert ok(O.RELEASE, abi.ReleaseIn(fh, 0, abi.RELEASE_FLUSH, 1).pack()) == 0
    assert ok(O.RELEASE, abi.ReleaseIn(fh, 0, 0, 0).pack()) == errno.EBADF


def _list(server, nodeid, fh, opcode, size):
    """All records of a directory, READDIR(PLUS) after READDIR(PLUS) of ``size`` bytes."""
    records, offset = [], 0
    for _ in range(100):
        r = call(server, request(opcode, abi.ReadIn(fh, offset, size).pack(), nodeid=nodeid))
        assert r.header.error == 0, errno.errorcode[r.error]
        assert len(r.body) <= size
        if not r.body:
            return records
        it = abi.iter_dirents(r.body) if opcode == O.READDIR else abi.iter_direntplus(r.body)
        got = list(it)
        records += got
        offset = got[-1][-2].off
    raise AssertionError("the listing never ended")


@pytest.mark.parametrize("size", [4096, 80, 33])
def test_readdir_packs_whole_records(server, tree, size):
    d = lookup(server, ROOT, b"dir")
    fh = open_(server, d.nodeid, os.O_RDONLY, O.OPENDIR)
    records = _list(server, d.nodeid, fh, O.READDIR, size)
    names = [n for _, n in records]
    assert names[:2] == [b".", b".."] and sorted(names[2:]) == sorted(os.listdir(tree / "dir")[i].encode()
                                                                     for i in range(20))
    assert [dirent.off for dirent, _ in records] == list(range(1, 23))
    assert call(server, request(O.RELEASEDIR, abi.ReleaseIn(fh).pack(), nodeid=d.nodeid)).header.error == 0


def test_readdir_buffer_smaller_than_one_record_is_empty(server):
    d = lookup(server, ROOT, b"dir")
    fh = open_(server, d.nodeid, os.O_RDONLY, O.OPENDIR)
    r = call(server, request(O.READDIR, abi.ReadIn(fh, 0, 16).pack(), nodeid=d.nodeid))
    assert r.n == 16 and r.body == b""


@pytest.mark.parametrize("size", [8192, 200, 400])
def test_readdirplus_counts_only_what_was_sent(server, fs, tree, size):
    d = lookup(server, ROOT, b"dir")
    fh = open_(server, d.nodeid, os.O_RDONLY, O.OPENDIR)
    records = _list(server, d.nodeid, fh, O.READDIRPLUS, size)
    assert len(records) == 22
    for entry, dirent, n in records:
        if n in (b".", b".."):
            assert entry.nodeid == 0 and stat.S_ISDIR(entry.attr.mode)
            continue
        assert entry.nodeid and fs.inodes.refs(3, entry.nodeid) == 1, n
        assert entry.attr.size == int(n[-2:]) and dirent.ino == entry.attr.ino


def test_after_change_hook(tree):
    seen = []
    with PassthroughFs(tree) as fs:
        s = Server(fs, after_change=seen.append)
        call(s, request(O.INIT, init_body()))
        f = lookup(s, ROOT, b"file")
        d = lookup(s, ROOT, b"dir")
        assert seen == []  # lookups change nothing
        fh = open_(s, f.nodeid)
        call(s, request(O.WRITE, abi.WriteIn(fh, 0, 1).pack() + b"x", nodeid=f.nodeid))
        assert seen.pop() == (f.nodeid,)
        r = call(s, request(O.MKDIR, abi.MkdirIn(0o755, 0).pack() + name(b"m"), nodeid=d.nodeid))
        m = abi.EntryOut.unpack_from(r.body)
        assert seen.pop() == (d.nodeid, m.nodeid)
        call(s, request(O.RENAME, abi.RenameIn(d.nodeid).pack() + name(b"file") + name(b"f2")))
        assert seen.pop() == (ROOT, d.nodeid, f.nodeid)
        call(s, request(O.SETATTR, abi.SetattrIn(valid=abi.SetattrValid.MODE, mode=0o600).pack(), nodeid=f.nodeid))
        assert seen.pop() == (f.nodeid,)
        call(s, request(O.UNLINK, name(b"f2"), nodeid=d.nodeid))
        assert seen.pop() == (d.nodeid, f.nodeid)
        assert call(s, request(O.UNLINK, name(b"f2"), nodeid=d.nodeid)).error == errno.ENOENT
        call(s, request(O.GETATTR, bytes(16), nodeid=d.nodeid))
        assert seen == []  # failures and reads report nothing


def test_sessions_share_nodeids(fs):
    a, b = Server(fs, session=1), Server(fs, session=2)
    for s in (a, b):
        call(s, request(O.INIT, init_body()))
    ea, eb = lookup(a, ROOT, b"file"), lookup(b, ROOT, b"file")
    assert ea.nodeid == eb.nodeid
    call(a, request(O.FORGET, abi.ForgetIn(1).pack(), nodeid=ea.nodeid), cap=None)
    assert call(a, request(O.GETATTR, bytes(16), nodeid=ea.nodeid)).error == errno.EBADF
    assert call(b, request(O.GETATTR, bytes(16), nodeid=eb.nodeid)).header.error == 0
    b.end_session()
    assert len(fs.inodes) == 1


# ---------------------------------------------------------------------------- version table


EV = InitFlags.ENTRY_VERSION
ENTRY = abi.EntryOut.SIZE
VER = abi.EntryVerOut.SIZE


@pytest.fixture
def table():
    from vfscluster.host.versions import VersionTable
    t = VersionTable(f"/vfsc-{os.getpid()}-{os.urandom(3).hex()}-vt", slots=64, unlink_name=True)
    yield t
    t.close()


def versioned(fs, table, offered=InitFlags.INIT_EXT | EV) -> Server:
    s = Server(fs, session=3, versions=table)
    r = call(s, request(O.INIT, init_body(flags=offered)))
    assert r.header.error == 0
    return s


@pytest.mark.parametrize("has_table, offered, granted", [
    (True, InitFlags.INIT_EXT | EV, True),
    (True, InitFlags.INIT_EXT, False),          # not offered (a stock kernel never sets bit 63)
    (False, InitFlags.INIT_EXT | EV, False),    # offered, but no table
    (True, InitFlags.ASYNC_READ, False),        # flags2 is read only with INIT_EXT
])
def test_entry_version_granted_only_with_a_table_and_when_offered(fs, table, has_table, offered, granted):
    s = Server(fs, versions=table if has_table else None)
    lo, hi = abi.split_init_flags(offered)
    body = abi.InitIn(7, 38, 0, lo, hi if offered & InitFlags.INIT_EXT else abi.split_init_flags(EV)[1]).pack()
    out = abi.InitOut.unpack_from(call(s, request(O.INIT, body)).body)
    assert bool(out.all_flags & EV) is granted and s.entry_version is granted
    r = call(s, request(O.LOOKUP, name(b"file")))
    assert r.header.error == 0 and len(r.body) == ENTRY + (VER if granted else 0)


def _entry_ver(body: bytes, nodeid: int, table, extra: int = 0):
    """The EntryVerOut at the very end of an entry reply, checked against the table now."""
    assert len(body) == ENTRY + extra + VER
    ev = abi.EntryVerOut.unpack_from(body, ENTRY + extra)
    assert ev.version_index == table.slot(nodeid) and ev.version == table.version(nodeid)
    return ev


def test_every_entry_reply_carries_the_slot_version(fs, tree, table):
    s = versioned(fs, table)
    r = call(s, request(O.LOOKUP, name(b"file")))
    f = abi.EntryOut.unpack_from(r.body)
    _entry_ver(r.body, f.nodeid, table)
    assert f.attr.size == 100 and f.attr.ino == os.stat(tree / "file").st_ino
    ops = {
        "m": (O.MKDIR, abi.MkdirIn(0o755, 0).pack() + name(b"m"), 0),
        "p": (O.MKNOD, abi.MknodIn(stat.S_IFIFO | 0o644, 0, 0).pack() + name(b"p"), 0),
        "s": (O.SYMLINK, name(b"s") + name(b"file"), 0),
        "hard": (O.LINK, abi.LinkIn(f.nodeid).pack() + name(b"hard"), 0),
        "c": (O.CREATE, abi.CreateIn(os.O_RDWR, 0o644, 0).pack() + name(b"c"), abi.OpenOut.SIZE),
    }
    for what, (op, body, extra) in ops.items():
        before = table.version(ROOT)
        r = call(s, request(op, body))
        assert r.header.error == 0, what
        e = abi.EntryOut.unpack_from(r.body)
        ev = _entry_ver(r.body, e.nodeid, table, extra)
        assert ev.version >= 1, what                         # bumped before the version was read
        assert table.version(ROOT) > before, what           # the parent too
        st = os.lstat(tree / what)
        assert (e.attr.ino, e.attr.nlink, e.attr.ctime) == (st.st_ino, st.st_nlink, int(st.st_ctime)), what
        if op == O.CREATE:
            assert abi.OpenOut.unpack_from(r.body, ENTRY).fh
    # A LINK bumps the linked inode, whose nlink went up: the entry carries the new count.
    assert abi.EntryOut.unpack_from(call(s, request(O.LOOKUP, name(b"file"))).body).attr.nlink == 2


def test_negative_lookup_and_readdirplus_are_unchanged(fs, table):
    s = versioned(fs, table)
    r = call(s, request(O.LOOKUP, name(b"nope")))
    assert r.error == errno.ENOENT and r.n == 16
    d = lookup(s, ROOT, b"dir")
    fh = open_(s, d.nodeid, os.O_RDONLY, O.OPENDIR)
    records = _list(s, d.nodeid, fh, O.READDIRPLUS, 8192)
    assert len(records) == 22 and all(n for _, _, n in records)


class _Racy(PassthroughFs):
    """A file system whose lookups return stale attributes, and whose getattr sees a change that
    lands after the server read the slot (a concurrent bump)."""

    table = None

    def lookup(self, ctx, parent, n):
        e = super().lookup(ctx, parent, n)
        stale = os.stat_result((0o100644, e.attr.st_ino, e.attr.st_dev, 1, 0, 0, 12345, 0, 0, 0))
        return e._replace(attr=stale)

    def getattr(self, ctx, nodeid, fh):
        self.table.bump([nodeid])
        return super().getattr(ctx, nodeid, fh)


def test_version_is_read_before_the_attributes(tree, table):
    with _Racy(tree) as fs:
        fs.table = table
        s = versioned(fs, table)
        r = call(s, request(O.LOOKUP, name(b"file")))
        e = abi.EntryOut.unpack_from(r.body)
        ev = abi.EntryVerOut.unpack_from(r.body, ENTRY)
        assert e.attr.size == 100                      # fresh, from getattr, not the stale 12345
        assert ev.version == table.version(e.nodeid) - 1   # read before the change getattr saw


class _SnapWriter(Writer):
    """Remembers the table's versions of ``watch`` when the reply is written."""

    def __init__(self, bufs, table, watch):
        super().__init__(bufs)
        self.table, self.watch, self.seen = table, watch, None

    def write(self, data):
        self.seen = {n: self.table.version(n) for n in self.watch()}
        super().write(data)


def test_changing_ops_bump_parents_and_child_before_the_reply(fs, table):
    s = versioned(fs, table)
    f = lookup(s, ROOT, b"file").nodeid
    d = lookup(s, ROOT, b"dir").nodeid
    fh = open_(s, f)

    def run(op, body, nodeid, watch):
        start = {n: table.version(n) for n in watch}
        w = _SnapWriter([bytearray(4096)], table, lambda: watch)
        assert s.handle(Reader([request(op, body, nodeid=nodeid)]), w) > 0
        assert abi.OutHeader.unpack_from(bytes(w._bufs[0])).error == 0
        return {n: w.seen[n] - start[n] for n in watch}

    slots = {table.slot(n) for n in (ROOT, f, d)}
    assert len(slots) == 3                      # no collision hides a missing bump below
    assert run(O.WRITE, abi.WriteIn(fh, 0, 1).pack() + b"x", f, [f, ROOT]) == {f: 1, ROOT: 0}
    sa = abi.SetattrIn(valid=abi.SetattrValid.MODE, mode=0o600).pack()
    assert run(O.SETATTR, sa, f, [f, ROOT]) == {f: 1, ROOT: 0}
    assert run(O.RENAME, abi.RenameIn(d).pack() + name(b"file") + name(b"moved"), ROOT,
               [ROOT, d, f]) == {ROOT: 1, d: 1, f: 1}
    assert run(O.UNLINK, name(b"moved"), d, [d, f]) == {d: 1, f: 1}
    assert run(O.GETATTR, bytes(16), d, [d]) == {d: 0}
    g = lookup(s, d, b"entry-05").nodeid
    assert run(O.OPEN, abi.OpenIn(os.O_RDWR | os.O_TRUNC, 0).pack(), g, [g]) == {g: 1}
    assert run(O.OPEN, abi.OpenIn(os.O_RDWR, 0).pack(), g, [g]) == {g: 0}


def test_no_room_for_the_entry_version_is_a_protocol_error(fs, table, caplog):
    s = versioned(fs, table)
    r = call(s, request(O.LOOKUP, name(b"file")), cap=16 + ENTRY)
    assert r.error == errno.EINVAL and "does not fit" in caplog.text
    f = abi.EntryOut.unpack_from(call(s, request(O.LOOKUP, name(b"file"))).body)
    assert fs.inodes.refs(3, f.nodeid) == 1          # the unsent entry's count was given back


# ---------------------------------------------------------------------------- blocking locks (fuse/locking.py)


class FakeNotifier:
    """What the host's Notifier offers the server: ``enabled`` and ``lock_done``."""

    def __init__(self, enabled=True):
        self.enabled = enabled
        self.sent = []

    def lock_done(self, unique, error):
        self.sent.append((unique, error))


LOCKS = InitFlags.POSIX_LOCKS | InitFlags.FLOCK_LOCKS


def locking_session(fs, session, notifier):
    s = Server(fs, session=session)
    s.notifier = notifier
    r = call(s, request(O.INIT, init_body(flags=InitFlags.INIT_EXT | LOCKS)))
    return s, abi.InitOut.unpack_from(r.body).all_flags


def test_lock_flags_only_with_an_enabled_notifier(fs):
    assert not locking_session(fs, 1, None)[1] & LOCKS
    assert not locking_session(fs, 2, FakeNotifier(enabled=False))[1] & LOCKS
    assert locking_session(fs, 3, FakeNotifier())[1] & LOCKS == LOCKS
    s, flags = locking_session(FileSystem(), 4, FakeNotifier())     # cannot park: no setlkw
    assert not flags & LOCKS


def test_parked_setlkw_is_answered_queued_then_notified(fs):
    na, nb = FakeNotifier(), FakeNotifier()
    a, _ = locking_session(fs, 1, na)
    b, _ = locking_session(fs, 2, nb)
    fa, fb = open_(a, lookup(a, ROOT, b"file").nodeid), open_(b, lookup(b, ROOT, b"file").nodeid)
    nodeid = lookup(a, ROOT, b"file").nodeid
    wr = abi.FileLock(0, 9, 1, 100)
    r = call(a, request(O.SETLKW, abi.LkIn(fa, 11, wr).pack(), nodeid=nodeid, unique=20))
    assert r.raw == abi.OutHeader(16, 0, 20).pack()                # granted at once
    r = call(b, request(O.SETLKW, abi.LkIn(fb, 22, wr).pack(), nodeid=nodeid, unique=30))
    assert r.raw == abi.OutHeader(16, 1, 30).pack()                # queued: error +1, no body
    assert nb.sent == [] and fs.locks.parked(2) == 1
    r = call(b, request(O.GETLK, abi.LkIn(fb, 22, abi.FileLock(0, 0, 0, 0)).pack(), nodeid=nodeid))
    assert abi.LkOut.unpack_from(r.body).lk == wr                  # the holder, with its pid
    assert call(a, request(O.FLUSH, abi.FlushIn(fa, 11).pack(), nodeid=nodeid)).error == 0
    assert nb.sent == [(30, 0)] and na.sent == []                  # the grant, to b only
    r = call(a, request(O.SETLKW, abi.LkIn(fa, 11, wr).pack(), nodeid=nodeid, unique=40))
    assert r.header.error == 1
    assert call(a, request(O.INTERRUPT, abi.InterruptIn(40).pack(), unique=41), cap=None).n == 0
    assert na.sent == [(40, -errno.EINTR)] and fs.locks.parked() == 0
    r = call(a, request(O.SETLKW, abi.LkIn(fa, 11, wr).pack(), nodeid=nodeid, unique=50))
    assert r.header.error == 1
    assert call(a, request(O.DESTROY, unique=51)).error == 0      # its waiter is told
    assert na.sent[-1] == (50, -errno.ENOTCONN) and fs.locks.parked() == 0


def test_deadlock_and_bad_locks_through_the_server(fs):
    na, nb = FakeNotifier(), FakeNotifier()
    a, _ = locking_session(fs, 1, na)
    b, _ = locking_session(fs, 2, nb)
    nodeid = lookup(a, ROOT, b"file").nodeid
    lookup(b, ROOT, b"file")
    fa, fb = open_(a, nodeid), open_(b, nodeid)
    lk = lambda fh, owner, start, t=1: abi.LkIn(fh, owner, abi.FileLock(start, start, t, 0)).pack()  # noqa: E731
    assert call(a, request(O.SETLK, lk(fa, 1, 0), nodeid=nodeid)).error == 0
    assert call(b, request(O.SETLK, lk(fb, 2, 1), nodeid=nodeid)).error == 0
    assert call(a, request(O.SETLKW, lk(fa, 1, 1), nodeid=nodeid, unique=60)).header.error == 1
    assert call(b, request(O.SETLKW, lk(fb, 2, 0), nodeid=nodeid, unique=70)).error == errno.EDEADLK
    assert call(b, request(O.SETLKW, lk(fb, 2, 5, t=9), nodeid=nodeid)).error == errno.EINVAL
    assert call(b, request(O.SETLKW, lk(999, 2, 5), nodeid=nodeid)).error == errno.EBADF
    assert call(b, request(O.SETLKW, lk(fb, 2, 5)[:40], nodeid=nodeid)).error == errno.EINVAL  # short
    assert call(b, request(O.RELEASE, abi.ReleaseIn(fb, 0, abi.RELEASE_FLUSH, 2).pack(),
                           nodeid=nodeid)).error == 0
    assert na.sent == [(60, 0)]


def test_interrupt_of_an_unknown_unique_is_logged(fs, caplog):
    s, _ = locking_session(fs, 1, FakeNotifier())
    with caplog.at_level(logging.INFO, logger="vfscluster.fuse.locking"):
        assert call(s, request(O.INTERRUPT, abi.InterruptIn(12345).pack()), cap=None).n == 0
    assert "INTERRUPT of unique 12345: no parked request" in caplog.text
    assert call(s, request(O.INTERRUPT, b"\0" * 3), cap=None).n == 0          # short: refused


# ---------------------------------------------------------------------------- per-inode DAX


def _mark_dax(path) -> str:
    """Give ``path`` the persistent DAX flag (chattr +x), or the fallback xattr; returns which."""
    import fcntl
    import struct

    from vfscluster.fuse.passthrough.daxhooks import DAX_XATTR, FS_DAX_FL, FS_IOC_GETFLAGS
    fd = os.open(path, os.O_RDONLY)
    try:
        flags = struct.unpack("=i", fcntl.ioctl(fd, FS_IOC_GETFLAGS, bytes(8))[:4])[0]
        fcntl.ioctl(fd, 0x40086602, struct.pack("=i", flags | FS_DAX_FL) + bytes(4))  # FS_IOC_SETFLAGS
        return "chattr"
    except OSError:
        os.setxattr(path, DAX_XATTR, b"1")
        return "xattr"
    finally:
        os.close(fd)


@pytest.fixture
def dax_fs(tree):
    from vfscluster.host.daxwire import DaxService
    _mark_dax(tree / "file")
    with PassthroughFs(tree) as fs:
        fs.dax = DaxService(fs, 2 << 20, lambda sid: None)
        yield fs


def _dax_session(fs, offer_inode_dax: bool) -> Server:
    s = Server(fs, session=5 if offer_inode_dax else 6)
    flags = InitFlags.INIT_EXT | InitFlags.DO_READDIRPLUS | InitFlags.MAP_ALIGNMENT
    if offer_inode_dax:
        flags |= InitFlags.HAS_INODE_DAX
    r = call(s, request(O.INIT, init_body(flags=flags)))
    assert r.header.error == 0
    assert bool(abi.InitOut.unpack_from(r.body).all_flags & InitFlags.HAS_INODE_DAX) == offer_inode_dax
    return s


def _attr_flags_everywhere(s: Server) -> dict:
    """fuse_attr.flags of "file" (marked) and "dir/entry-03" (not) in LOOKUP, GETATTR, SETATTR,
    READDIRPLUS replies, plus the directory's own."""
    out = {}
    f = lookup(s, ROOT, b"file")
    out["lookup file"] = f.attr.flags
    d = lookup(s, ROOT, b"dir")
    out["lookup dir"] = d.attr.flags
    out["lookup plain"] = lookup(s, d.nodeid, b"entry-03").attr.flags
    r = call(s, request(O.GETATTR, abi.GetattrIn(0, 0).pack(), nodeid=f.nodeid))
    assert r.header.error == 0
    out["getattr file"] = abi.AttrOut.unpack_from(r.body).attr.flags
    r = call(s, request(O.SETATTR, abi.SetattrIn(valid=abi.SetattrValid.MODE, mode=0o644).pack(),
                        nodeid=f.nodeid))
    assert r.header.error == 0
    out["setattr file"] = abi.AttrOut.unpack_from(r.body).attr.flags
    fh = open_(s, ROOT, os.O_RDONLY, O.OPENDIR)
    r = call(s, request(O.READDIRPLUS, abi.ReadIn(fh, 0, 1 << 16).pack(), nodeid=ROOT))
    assert r.header.error == 0
    for e, _d, n in abi.iter_direntplus(r.body):
        out[f"readdirplus {n.decode()}"] = e.attr.flags
    return out


def test_writes_to_a_file_whose_dax_pages_were_revoked_may_wait(dax_fs):
    """Such a WRITE may grow the file back and then waits for guests' acks: the host must not
    serve it inline (``write_may_wait``); writes to other files may be."""
    s = _dax_session(dax_fs, False)
    f = lookup(s, ROOT, b"file")
    d = lookup(s, ROOT, b"dir")
    other = lookup(s, d.nodeid, b"entry-03")
    fh, fh_other = open_(s, f.nodeid), open_(s, other.nodeid)
    assert not dax_fs.write_may_wait(s.session, fh)
    dax_fs.dax.registry.revoked_keys.add(dax_fs.inodes.get(s.session, f.nodeid).key)
    assert dax_fs.write_may_wait(s.session, fh)
    assert not dax_fs.write_may_wait(s.session, fh_other)
    assert not dax_fs.write_may_wait(s.session, 999)             # an unknown handle
    r = call(s, request(O.WRITE, abi.WriteIn(fh, 0, 2).pack() + b"ok", nodeid=f.nodeid))
    assert r.header.error == 0                                   # nothing revoked in fact
    assert dax_fs.dax.registry.revoked_keys == set()             # ... so the key goes


def test_a_deleted_file_leaving_the_store_takes_its_revoked_ranges_with_it(dax_fs, tree):
    """Its (st_dev, st_ino) may name another file next: nothing may ever be mapped back for it.
    A file that still exists keeps them (a later lookup finds the same file)."""
    s = _dax_session(dax_fs, False)
    kept, gone = (tree / "kept"), (tree / "gone")
    kept.write_bytes(b"k")
    gone.write_bytes(b"g")
    keys = {}
    for name in (b"kept", b"gone"):
        e = lookup(s, ROOT, name)
        keys[name] = dax_fs.inodes.get(s.session, e.nodeid).key
        dax_fs.dax.registry.revoked_keys.add(keys[name])
        if name == b"gone":
            assert call(s, request(O.UNLINK, b"gone\0")).header.error == 0
        call(s, request(O.FORGET, abi.ForgetIn(1).pack(), nodeid=e.nodeid), cap=None)
    assert dax_fs.dax.registry.revoked_keys == {keys[b"kept"]}


def test_growing_calls_map_revoked_ranges_again_and_their_failure_is_not_the_callers(
        dax_fs, monkeypatch):
    """WRITE, SETATTR size, FALLOCATE and COPY_FILE_RANGE may grow a file some guest had
    revoked DAX ranges of: each asks for them to be mapped again.  If that fails, the call
    (which succeeded) still succeeds."""
    s = _dax_session(dax_fs, False)
    f = lookup(s, ROOT, b"file")
    key = dax_fs.inodes.get(s.session, f.nodeid).key
    fh = open_(s, f.nodeid)
    grown = []

    def failing(k, fd):
        grown.append(k)
        raise OSError(errno.EACCES, "no")
    monkeypatch.setattr(dax_fs.dax, "grown", failing)
    dax_fs.dax.registry.revoked_keys.add(key)
    calls = {
        "write": request(O.WRITE, abi.WriteIn(fh, 0, 2).pack() + b"ok", nodeid=f.nodeid),
        "setattr": request(O.SETATTR, abi.SetattrIn(valid=abi.SetattrValid.SIZE, size=10).pack(),
                           nodeid=f.nodeid),
        "fallocate": request(O.FALLOCATE, abi.FallocateIn(fh, 0, 20, 0).pack(), nodeid=f.nodeid),
        "copy": request(O.COPY_FILE_RANGE, abi.CopyFileRangeIn(fh, 0, f.nodeid, fh, 30, 2, 0).pack(),
                        nodeid=f.nodeid),
    }
    for what, req in calls.items():
        before = len(grown)
        r = call(s, req)
        assert r.header.error == 0, what
        assert grown[before:] == [key], what


def test_inode_dax_sets_fuse_attr_dax_on_marked_files_only(dax_fs):
    got = _attr_flags_everywhere(_dax_session(dax_fs, True))
    dax = abi.AttrFlags.DAX
    assert got["lookup file"] & dax and got["getattr file"] & dax and got["setattr file"] & dax
    assert got["readdirplus file"] & dax
    assert not got["lookup dir"] & dax and not got["readdirplus dir"] & dax
    assert not got["lookup plain"] & dax


def test_inode_dax_flag_is_never_set_without_has_inode_dax(dax_fs):
    got = _attr_flags_everywhere(_dax_session(dax_fs, False))
    assert not any(v & abi.AttrFlags.DAX for v in got.values()), got


def test_inode_dax_is_not_granted_by_a_host_without_dax(fs):
    s = Server(fs)
    r = call(s, request(O.INIT, init_body(flags=InitFlags.INIT_EXT | InitFlags.HAS_INODE_DAX)))
    assert not abi.InitOut.unpack_from(r.body).all_flags & InitFlags.HAS_INODE_DAX
    assert not s.inode_dax


def test_inode_dax_fallback_xattr_marks_a_file(dax_fs, tree):
    os.setxattr(tree / "dir" / "entry-05", b"user.vfscluster.dax", b"1")
    s = _dax_session(dax_fs, True)
    d = lookup(s, ROOT, b"dir")
    assert lookup(s, d.nodeid, b"entry-05").attr.flags & abi.AttrFlags.DAX
    assert not lookup(s, d.nodeid, b"entry-06").attr.flags & abi.AttrFlags.DAX
