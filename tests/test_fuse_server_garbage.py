"""vfscluster.fuse.server against a peer that sends garbage: random sequences of requests — every
opcode (and unknown ones), argument structs of random bytes and of wrong sizes, names with ``/``,
``..``, no NUL or 300 bytes, handles and nodeids that exist or not, requests and reply buffers cut
at random places — served by a real PassthroughFs.

What must hold for each request (module docstring of ``server``: our bug vs the peer's garbage):
``handle`` returns, never raises and never logs an error (``log.exception`` is kept for our own
bugs); a reply carries the request's ``unique``, its real length and an errno in 0..4095.  After
the sequence nothing outside the share has changed, and the server still serves: an INIT (a
garbage INIT may have ended the session, as a restarted guest's does), then a LOOKUP.
"""

from __future__ import annotations

import logging
import os
import struct
import threading

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from vfscluster.fuse import abi
from vfscluster.fuse.abi import InitFlags, Opcode
from vfscluster.fuse.passthrough import PassthroughFs
from vfscluster.fuse.server import Server
from vfscluster.virtio.chain import Reader, Writer

O = Opcode

#: the fixed argument struct in front of each opcode's names or data
ARGS = {O.GETATTR: abi.GetattrIn, O.SETATTR: abi.SetattrIn, O.OPEN: abi.OpenIn,
        O.OPENDIR: abi.OpenIn, O.CREATE: abi.CreateIn, O.TMPFILE: abi.CreateIn, O.MKNOD: abi.MknodIn,
        O.MKDIR: abi.MkdirIn, O.RENAME: abi.RenameIn, O.RENAME2: abi.Rename2In, O.LINK: abi.LinkIn,
        O.READ: abi.ReadIn, O.READDIR: abi.ReadIn, O.READDIRPLUS: abi.ReadIn, O.WRITE: abi.WriteIn,
        O.RELEASE: abi.ReleaseIn, O.RELEASEDIR: abi.ReleaseIn, O.FLUSH: abi.FlushIn,
        O.FSYNC: abi.FsyncIn, O.FSYNCDIR: abi.FsyncIn, O.FALLOCATE: abi.FallocateIn,
        O.LSEEK: abi.LseekIn, O.COPY_FILE_RANGE: abi.CopyFileRangeIn, O.POLL: abi.PollIn,
        O.IOCTL: abi.IoctlIn, O.BMAP: abi.BmapIn, O.GETLK: abi.LkIn, O.SETLK: abi.LkIn,
        O.SETLKW: abi.LkIn, O.FORGET: abi.ForgetIn, O.BATCH_FORGET: abi.BatchForgetIn,
        O.INIT: abi.InitIn, O.INTERRUPT: abi.InterruptIn, O.ACCESS: abi.AccessIn,
        O.GETXATTR: abi.GetxattrIn, O.LISTXATTR: abi.GetxattrIn, O.SETXATTR: abi.SetxattrIn,
        O.STATX: abi.StatxIn, O.SETUPMAPPING: abi.SetupmappingIn,
        O.REMOVEMAPPING: abi.RemovemappingIn, O.SYNCFS: abi.SyncfsIn}
OPCODES = [o for o in O if o != O.DESTROY] + [0, 7, 999, 4097, 0xFFFF_FFFF]
#: a sequence mostly sends the opcodes of one group, so that it goes deep into them
GROUPS = {
    "entries": [O.LOOKUP, O.MKNOD, O.MKDIR, O.SYMLINK, O.LINK, O.UNLINK, O.RMDIR, O.RENAME,
                O.RENAME2, O.FORGET, O.BATCH_FORGET, O.GETATTR, O.SETATTR, O.READLINK, O.ACCESS,
                O.STATX],
    "files": [O.LOOKUP, O.OPEN, O.CREATE, O.TMPFILE, O.READ, O.WRITE, O.FLUSH, O.FSYNC,
              O.RELEASE, O.FALLOCATE, O.LSEEK, O.COPY_FILE_RANGE, O.SETATTR, O.IOCTL, O.POLL,
              O.BMAP],
    "dirs": [O.LOOKUP, O.MKDIR, O.OPENDIR, O.READDIR, O.READDIRPLUS, O.RELEASEDIR, O.FSYNCDIR],
    "xattrs+locks": [O.LOOKUP, O.OPEN, O.GETXATTR, O.SETXATTR, O.LISTXATTR, O.REMOVEXATTR,
                     O.GETLK, O.SETLK, O.SETLKW, O.INTERRUPT, O.RELEASE],
    "session+unknown": [O.INIT, O.STATFS, O.SYNCFS, O.SETUPMAPPING, O.REMOVEMAPPING,
                        O.NOTIFY_REPLY, O.CUSE_INIT, 0, 7, 999, 0xFFFF_FFFF],
}
NAMES = [b"file", b"dir", b"new", b"link", b".", b"..", b"", b"a/b", b"/etc", b"x" * 300,
         b"\xff\xfe"]
INTERESTING = [0, 1, 7, 0o644, 0x7FFF_FFFF, 0x8000_0000, 0xFFFF_FFFF]
#: how many names follow the argument struct (the other opcodes take none)
NAMED = {O.LOOKUP: 1, O.UNLINK: 1, O.RMDIR: 1, O.MKDIR: 1, O.MKNOD: 1, O.CREATE: 1, O.TMPFILE: 1,
         O.SYMLINK: 2, O.RENAME: 2, O.RENAME2: 2, O.LINK: 1, O.GETXATTR: 1, O.SETXATTR: 1,
         O.REMOVEXATTR: 1}
#: the opcodes whose argument struct starts with a file handle
WITH_FH = {O.READ, O.WRITE, O.READDIR, O.READDIRPLUS, O.RELEASE, O.RELEASEDIR, O.FLUSH, O.FSYNC,
           O.FSYNCDIR, O.FALLOCATE, O.LSEEK, O.COPY_FILE_RANGE, O.GETLK, O.SETLK, O.SETLKW,
           O.IOCTL, O.POLL, O.SETUPMAPPING}


class _Errors(logging.Handler):
    """Collects the ERROR records this thread logs: what the server logs for its own bugs (not
    what a thread an earlier test left behind in this worker may still log)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []
        self.thread = threading.get_ident()

    def emit(self, record: logging.LogRecord) -> None:
        if record.thread == self.thread:
            self.records.append(record)


@st.composite
def _args(draw, opcode: int) -> bytes:
    """The opcode's argument struct as 4-byte words of interesting or random values, sometimes a
    few bytes short or long; FALLOCATE kept small (it would really take the disk space)."""
    cls = ARGS.get(opcode)
    size = cls.SIZE if cls is not None else draw(st.integers(0, 16))
    if draw(st.integers(0, 9)) == 0:
        size = max(0, size + draw(st.integers(-6, 6)))
    words = draw(st.lists(st.one_of(st.sampled_from(INTERESTING), st.integers(0, 0xFFFF_FFFF)),
                          min_size=(size + 3) // 4, max_size=(size + 3) // 4))
    raw = bytearray(b"".join(struct.pack("<I", w) for w in words)[:size])
    if opcode == O.FALLOCATE and size == abi.FallocateIn.SIZE:
        fh, offset, length, mode = struct.unpack_from("<QQQI", raw)
        struct.pack_into("<QQQI", raw, 0, fh, offset % (1 << 22), length % (1 << 20), mode)
    if opcode == O.WRITE and size >= 16:
        struct.pack_into("<I", raw, 12, struct.unpack_from("<I", raw, 12)[0] % 5000)
    return bytes(raw)


@st.composite
def _request(draw, group: list[int], nodeids: list[int], fhs: list[int]) -> tuple[int, int, bytes]:
    """(opcode, nodeid, body): mostly an opcode of ``group``, now and then any."""
    opcode = draw(st.sampled_from(group if draw(st.integers(0, 6)) else OPCODES))
    body = draw(_args(opcode))
    if opcode in WITH_FH and fhs and len(body) >= 8 and draw(st.booleans()):   # an open handle
        body = struct.pack("<Q", draw(st.sampled_from(fhs))) + body[8:]
    names = NAMED.get(opcode, 0)
    if not draw(st.integers(0, 9)):                       # one name too few or too many
        names = max(0, names + draw(st.sampled_from([-1, 1])))
    for _ in range(names):
        body += draw(st.sampled_from(NAMES)) + (b"\0" if draw(st.integers(0, 9)) else b"")
    if opcode == O.WRITE and len(body) >= 16:
        n = struct.unpack_from("<I", body, 12)[0]
        body += bytes(n if draw(st.integers(0, 4)) else draw(st.integers(0, 100)))
    if draw(st.integers(0, 19)) == 0:
        body += draw(st.binary(min_size=1, max_size=20))
    return opcode, draw(st.sampled_from(nodeids)), body


def _cut(draw, data: bytes, most: int) -> list[bytes]:
    """``data`` in up to ``most`` + 1 pieces, at random places."""
    if len(data) < 2:
        return [data]
    cuts = sorted(set(draw(st.lists(st.integers(1, len(data) - 1), max_size=most))))
    return [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)])]


def _snapshot(top: str, share: str) -> dict[str, bytes | None]:
    """Every path under ``top`` outside ``share`` with its contents (None: a directory)."""
    out: dict[str, bytes | None] = {}
    for dirpath, dirnames, filenames in os.walk(top):
        if dirpath.startswith(share):
            continue
        for d in dirnames:
            out[os.path.join(dirpath, d)] = None
        for f in filenames:
            p = os.path.join(dirpath, f)
            with open(p, "rb") as fh:
                out[p] = fh.read()
    return out


def _reply_ok(out: bytearray, written: int, unique: int) -> None:
    length, error, got = struct.unpack_from("<IiQ", out)
    assert (length, got) == (written, unique)
    assert -4095 <= error <= 0


def _init(server: Server, unique: int) -> None:
    flags = InitFlags.INIT_EXT | InitFlags.POSIX_LOCKS | InitFlags.DO_READDIRPLUS
    init = abi.InitIn(7, 38, 131072, *abi.split_init_flags(flags)).pack()
    out = bytearray(256)
    head = abi.InHeader(40 + len(init), O.INIT, unique, 0, 0, 0, 1, 0).pack()
    _reply_ok(out, server.handle(Reader([head + init]), Writer([out])), unique)
    assert struct.unpack_from("<i", out, 4)[0] == 0


@pytest.fixture
def errors():
    handler = _Errors()
    logger = logging.getLogger("vfscluster")
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)


@pytest.mark.parametrize("group", GROUPS)
@settings(max_examples=60, deadline=None, database=None,
          phases=[Phase.explicit, Phase.generate, Phase.shrink],   # (explaining is slow tracing)
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
def test_garbage_requests_are_answered_or_refused_never_crash_or_escape(tmp_path_factory, errors,
                                                                        group, data):
    errors.records.clear()                    # one handler for every example of the test
    top = str(tmp_path_factory.mktemp("garbage"))
    share = os.path.join(top, "share")
    os.mkdir(share)
    with open(os.path.join(top, "outside"), "wb") as f:
        f.write(b"secret")
    with open(os.path.join(share, "file"), "wb") as f:
        f.write(b"0123456789" * 100)
    os.mkdir(os.path.join(share, "dir"))
    os.symlink("../outside", os.path.join(share, "link"))
    before = _snapshot(top, share)
    with PassthroughFs(share, posix_locks=True) as fs:
        server = Server(fs, session=3)
        _init(server, 1)
        nodeids, fhs = [abi.ROOT_ID, 0, 2, 1 << 63], []
        for unique in range(2, 2 + data.draw(st.integers(10, 60), label="requests")):
            opcode, nodeid, body = data.draw(_request(GROUPS[group], nodeids, fhs))
            uid = data.draw(st.sampled_from([0, os.getuid(), 1000]))
            head = abi.InHeader(40 + len(body), opcode, unique, nodeid, uid, 0, 1, 0).pack()
            cap = data.draw(st.sampled_from([0, 16, 100, 4096, 70000]))
            pieces = [bytearray(len(p)) for p in _cut(data.draw, bytes(cap), 1)] if cap else []
            written = server.handle(Reader(_cut(data.draw, head + body, 2)),
                                    Writer(pieces) if pieces else None)
            assert not errors.records, [r.getMessage() for r in errors.records]
            if not written:
                continue
            reply = bytearray(b"".join(pieces))
            _reply_ok(reply, written, unique)
            error = struct.unpack_from("<i", reply, 4)[0]
            if error == 0 and written >= 24:                   # learn nodeids and handles
                first = struct.unpack_from("<Q", reply, 16)[0]
                if opcode in (O.LOOKUP, O.MKDIR, O.MKNOD, O.SYMLINK, O.LINK, O.CREATE) and first:
                    nodeids.append(first)
                if opcode in (O.OPEN, O.OPENDIR):
                    fhs.append(first)
                if opcode == O.CREATE and written >= 16 + abi.EntryOut.SIZE + 8:
                    fhs.append(struct.unpack_from("<Q", reply, 16 + abi.EntryOut.SIZE)[0])
        _init(server, 1 << 40)           # (a garbage INIT may have ended the session: start anew)
        with open(os.path.join(share, "alive"), "wb"):   # (not a name the sequence uses: it may
            pass                                          # have removed any of those)
        body = b"alive\0"
        out = bytearray(16 + abi.EntryOut.SIZE)
        n = server.handle(Reader([abi.InHeader(40 + len(body), O.LOOKUP, 1 << 41, abi.ROOT_ID, 0, 0,
                                               1, 0).pack() + body]), Writer([out]))
        _reply_ok(out, n, 1 << 41)
        assert n == len(out)                     # still serving: the new file is found
    assert _snapshot(top, share) == before
