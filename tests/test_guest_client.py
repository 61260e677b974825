"""vfscluster.guest.client: FuseClient against a real Server(PassthroughFs) over the loopback
transport — INIT, requests and replies, errors, lookup counts and FORGET, I/O splitting."""

from __future__ import annotations

import dataclasses
import errno
import os
import stat

import pytest

from loopback import LoopbackTransport, make_loopback
from vfscluster.errors import LocalProtocolError, RemoteProtocolError
from vfscluster.fuse.abi import (
    ROOT_ID, EntryOut, InitFlags, InitIn, Opcode, SetattrIn, SetattrValid,
)
from vfscluster.guest.cache import CachePolicy
from vfscluster.guest.client import REQUESTED_INIT_FLAGS, FuseClient
from threads import run_threads


@pytest.fixture
def stack(share):
    """(PassthroughFs, LoopbackTransport, initialised FuseClient) over an empty share."""
    fs, _server, transport = make_loopback(share)
    client = FuseClient(transport)
    client.init()
    yield fs, transport, client
    fs.close()


def _create(client, name: bytes, data: bytes = b"") -> int:
    entry, opened = client.create(ROOT_ID, name, os.O_CREAT | os.O_RDWR, stat.S_IFREG | 0o644)
    if data:
        assert client.write(entry.nodeid, opened.fh, 0, data) == len(data)
    client.release(entry.nodeid, opened.fh, os.O_RDWR)
    client.put(entry.nodeid)
    return entry.nodeid


def _host_refs(fs) -> int:
    """Inodes the host holds besides the root."""
    return len(fs.inodes) - 1


# ------------------------------------------------------------------------------------- INIT

class _Recorder:
    """A transport that records requests and answers INIT with a canned reply."""

    max_io = 1 << 20

    def __init__(self, reply: bytes, error: int = 0) -> None:
        self.reply, self.error = reply, error
        self.sent: list[tuple[int, int, bytes]] = []

    def request(self, opcode, nodeid, args, reply_size, creds=None):
        self.sent.append((opcode, nodeid, b"".join(bytes(a) for a in args)))
        return self.error, self.reply

    def send_noreply(self, opcode, nodeid, args):
        self.sent.append((opcode, nodeid, b"".join(bytes(a) for a in args)))


def test_init_sends_a_64_byte_init_in_with_7_38_and_the_flags():
    from vfscluster.fuse.abi import InitOut, split_init_flags
    lo, hi = split_init_flags(InitFlags.INIT_EXT | InitFlags.MAX_PAGES | InitFlags.POSIX_LOCKS)
    rec = _Recorder(InitOut(7, 36, 0, lo, max_write=65536, max_pages=16, flags2=hi).pack())
    info = FuseClient(rec).init()
    opcode, nodeid, body = rec.sent[0]
    assert (opcode, nodeid, len(body)) == (Opcode.INIT, 0, 64)
    init = InitIn.unpack_from(body)
    assert (init.major, init.minor) == (7, 38)
    assert init.all_flags == REQUESTED_INIT_FLAGS
    assert not REQUESTED_INIT_FLAGS & (InitFlags.WRITEBACK_CACHE | InitFlags.POSIX_LOCKS)
    # granted = offered & answered; the minor is the lower one
    assert info.minor == 36
    assert info.flags == InitFlags.INIT_EXT | InitFlags.MAX_PAGES
    assert (info.max_write, info.max_pages) == (65536, 16)


@pytest.mark.parametrize("reply", [
    b"\x07\x00\x00\x00",                                    # shorter than major+minor
    (8).to_bytes(4, "little") + (38).to_bytes(4, "little") + bytes(56),   # major 8
    (7).to_bytes(4, "little") + (30).to_bytes(4, "little") + bytes(56),   # minor below 31
    (7).to_bytes(4, "little") + (38).to_bytes(4, "little") + bytes(16),   # 24-byte init_out at 7.38
])
def test_init_rejects_a_bad_reply(reply):
    client = FuseClient(_Recorder(reply))
    with pytest.raises(RemoteProtocolError):
        client.init()
    with pytest.raises(LocalProtocolError):
        client.lookup(ROOT_ID, b"x")


@pytest.mark.parametrize("alignment, refused", [(12, False), (16, False), (21, False), (22, True),
                                                (63, True)])
def test_init_refuses_a_map_alignment_coarser_than_the_dax_range(alignment, refused):
    """fs/fuse/dax.c fuse_dax_check_alignment: with DAX (MAP_ALIGNMENT asked for), a server
    alignment past 2^21 fails INIT and the connection stays in error (ECONNREFUSED); without
    MAP_ALIGNMENT asked for, the field is not looked at."""
    from vfscluster.fuse.abi import InitOut, split_init_flags
    lo, hi = split_init_flags(InitFlags.MAP_ALIGNMENT)
    reply = InitOut(7, 38, 0, lo, max_write=65536, map_alignment=alignment).pack()
    assert FuseClient(_Recorder(reply)).init().map_alignment == alignment   # not asked for
    client = FuseClient(_Recorder(reply))
    if not refused:
        assert client.init(flags=REQUESTED_INIT_FLAGS | InitFlags.MAP_ALIGNMENT).map_alignment \
            == alignment
        return
    with pytest.raises(OSError) as info:
        client.init(flags=REQUESTED_INIT_FLAGS | InitFlags.MAP_ALIGNMENT)
    assert info.value.errno == errno.ECONNREFUSED
    assert f"map_alignment {alignment}" in str(info.value)
    with pytest.raises(OSError) as info:
        client.getattr(ROOT_ID)
    assert info.value.errno == errno.ECONNREFUSED
    assert [s[0] for s in client.transport.sent] == [Opcode.INIT]


def test_init_error_reply_is_oserror():
    with pytest.raises(OSError) as info:
        FuseClient(_Recorder(b"", -errno.EPROTO)).init()
    assert info.value.errno == errno.EPROTO


def test_calls_fail_before_init_and_after_destroy(share):
    fs, _server, transport = make_loopback(share)
    client = FuseClient(transport)
    with pytest.raises(LocalProtocolError):
        client.getattr(ROOT_ID)
    client.init()
    with pytest.raises(LocalProtocolError):
        client.init()
    assert stat.S_ISDIR(client.getattr(ROOT_ID).attr.mode)
    client.destroy()
    assert transport.counts[Opcode.DESTROY] == 1
    with pytest.raises(OSError) as info:
        client.getattr(ROOT_ID)
    assert info.value.errno == errno.ENOTCONN
    fs.close()


def test_disconnected_transport_is_enotconn(stack):
    _fs, transport, client = stack
    transport.close()
    with pytest.raises(OSError) as info:
        client.lookup(ROOT_ID, b"x")
    assert info.value.errno == errno.ENOTCONN


# ------------------------------------------------------------------------------ replies and errors

def test_error_reply_raises_oserror_with_the_errno(stack):
    _fs, _t, client = stack
    with pytest.raises(FileNotFoundError) as info:
        client.lookup(ROOT_ID, b"missing")
    assert info.value.errno == errno.ENOENT
    assert info.value.strerror == os.strerror(errno.ENOENT)
    _create(client, b"f")
    with pytest.raises(OSError) as info:
        client.mkdir(ROOT_ID, b"f", 0o755)
    assert info.value.errno == errno.EEXIST


def test_short_reply_is_remote_protocol_error(stack):
    _fs, transport, client = stack
    transport.reply_hook = lambda op, err, body: (err, body[:50])
    with pytest.raises(RemoteProtocolError):
        client.getattr(ROOT_ID)
    with pytest.raises(RemoteProtocolError):
        client.statfs()


@pytest.mark.parametrize("bad_error", [5, -512, -100000])
def test_out_of_range_error_code_is_remote_protocol_error(stack, bad_error):
    _fs, transport, client = stack
    transport.reply_hook = lambda op, err, body: (bad_error, b"")
    with pytest.raises(RemoteProtocolError):
        client.getattr(ROOT_ID)


def test_invalid_attributes_are_eio_and_the_entry_is_forgotten(stack):
    fs, transport, client = stack
    _create(client, b"f")
    client.flush_forgets()

    def zero_mode(op, err, body):
        if op == Opcode.LOOKUP and not err:
            e = EntryOut.unpack_from(body)
            body = EntryOut(e.nodeid, attr=type(e.attr)(ino=e.attr.ino, mode=0)).pack()
        return err, body
    transport.reply_hook = zero_mode
    with pytest.raises(OSError) as info:
        client.lookup(ROOT_ID, b"f")
    assert info.value.errno == errno.EIO
    client.flush_forgets()
    assert client.lookup_counts() == {}
    assert _host_refs(fs) == 0


def test_negative_entry_is_enoent_without_count(stack):
    _fs, transport, client = stack
    transport.reply_hook = lambda op, err, body: \
        (0, bytes(EntryOut.SIZE)) if op == Opcode.LOOKUP else (err, body)
    with pytest.raises(FileNotFoundError):
        client.lookup(ROOT_ID, b"nothing")
    assert client.lookup_counts() == {}


# ----------------------------------------------------------------------------------- lookup counts

def test_lookup_counts_are_returned_with_one_forget(share):
    fs, _server, transport = make_loopback(share)
    client = FuseClient(transport, CachePolicy(forget_batch=1))
    client.init()
    nodeid = _create(client, b"f")
    assert transport.forgets == [(nodeid, 1)]            # CREATE counted one
    assert transport.counts[Opcode.FORGET] == 1
    assert _host_refs(fs) == 0
    e1 = client.lookup(ROOT_ID, b"f")
    e2 = client.lookup(ROOT_ID, b"f")
    assert e1.nodeid == e2.nodeid
    assert client.lookup_counts() == {e1.nodeid: (2, 2)}
    assert fs.inodes.refs(0, e1.nodeid) == 2
    client.put(e1.nodeid)
    assert client.lookup_counts() == {e1.nodeid: (2, 1)}
    client.put(e1.nodeid)
    assert client.lookup_counts() == {}
    assert transport.forgets[-1] == (e1.nodeid, 2)
    assert _host_refs(fs) == 0
    fs.close()


def test_several_pending_forgets_go_as_one_batch_forget(share):
    fs, _server, transport = make_loopback(share)
    client = FuseClient(transport, CachePolicy(forget_batch=4))
    client.init()
    ids = [_create(client, n) for n in (b"a", b"b", b"c")]
    assert client.pending_forgets == 3 and transport.counts[Opcode.BATCH_FORGET] == 0
    assert _host_refs(fs) == 3
    _create(client, b"d")                                   # the 4th fills the batch
    assert transport.counts[Opcode.BATCH_FORGET] == 1
    assert [n for n, _ in transport.forgets[:3]] == ids
    assert _host_refs(fs) == 0
    _create(client, b"e")
    client.flush_forgets()                                  # one pending: a plain FORGET
    assert transport.counts[Opcode.FORGET] == 1
    client.flush_forgets()
    assert transport.counts[Opcode.FORGET] == 1
    assert _host_refs(fs) == 0
    fs.close()


def test_every_entry_reply_counts(stack):
    fs, _t, client = stack
    d = client.mkdir(ROOT_ID, b"d", 0o755)
    f = client.mknod(d.nodeid, b"f", stat.S_IFREG | 0o644)
    s = client.symlink(d.nodeid, b"s", b"f")
    ln = client.link(f.nodeid, ROOT_ID, b"hard")
    assert ln.nodeid == f.nodeid
    assert client.lookup_counts() == {d.nodeid: (1, 1), f.nodeid: (2, 2), s.nodeid: (1, 1)}
    assert fs.inodes.refs(0, f.nodeid) == 2
    for nid in (d.nodeid, f.nodeid, f.nodeid, s.nodeid):
        client.put(nid)
    client.flush_forgets()
    assert _host_refs(fs) == 0


def test_readdirplus_counts_entries_but_not_dot_and_dotdot(stack):
    fs, transport, client = stack
    d = client.mkdir(ROOT_ID, b"d", 0o755)
    for name in (b"x", b"y"):
        client.put(client.mknod(d.nodeid, name, stat.S_IFREG | 0o600).nodeid)
    client.flush_forgets()
    opened = client.opendir(d.nodeid)
    records = client.readdirplus(d.nodeid, opened.fh, 0, pin=True)
    names = {name: entry.nodeid for entry, _d, name in records}
    assert set(names) == {b".", b"..", b"x", b"y"}
    assert names[b"."] == names[b".."] == 0
    counts = client.lookup_counts()
    assert counts[names[b"x"]] == (1, 1) and counts[names[b"y"]] == (1, 1)
    assert client.readdirplus(d.nodeid, opened.fh, records[-1][1].off) == []
    client.releasedir(d.nodeid, opened.fh)
    client.put(names[b"x"])
    client.put(names[b"y"])
    client.put(d.nodeid)
    client.flush_forgets()
    assert client.lookup_counts() == {}
    assert _host_refs(fs) == 0
    # unpinned: counted and released at once
    opened = client.opendir(ROOT_ID)
    recs = client.readdirplus(ROOT_ID, opened.fh, 0)
    client.releasedir(ROOT_ID, opened.fh)
    assert {n for _e, _d, n in recs} == {b".", b"..", b"d"}
    assert client.lookup_counts() == {}
    client.flush_forgets()
    assert _host_refs(fs) == 0


def test_put_and_hold_misuse_is_local_protocol_error(stack):
    _fs, _t, client = stack
    with pytest.raises(LocalProtocolError):
        client.put(12345)
    with pytest.raises(LocalProtocolError):
        client.hold(12345)
    client.hold(ROOT_ID)           # the root is never counted
    client.put(ROOT_ID)


def test_destroy_flushes_pending_forgets(share):
    fs, _server, transport = make_loopback(share)
    client = FuseClient(transport)
    client.init()
    _create(client, b"f")
    assert client.pending_forgets == 1 and _host_refs(fs) == 1
    client.destroy()
    assert transport.forgets and client.pending_forgets == 0
    assert _host_refs(fs) == 0
    fs.close()


def test_concurrent_lookups_and_puts_balance(stack):
    fs, _t, client = stack
    names = [b"n%d" % i for i in range(8)]
    for n in names:
        _create(client, n)
    errors = []

    def worker(k):
        try:
            for i in range(200):
                e = client.lookup(ROOT_ID, names[(i + k) % len(names)])
                client.getattr(e.nodeid)
                client.put(e.nodeid)
        except BaseException as exc:        # pragma: no cover - reported below
            errors.append(exc)
    run_threads(worker, 4, 30)
    assert not errors
    client.flush_forgets()
    assert client.lookup_counts() == {}
    assert _host_refs(fs) == 0


# ----------------------------------------------------------------------------------- files and I/O

def test_large_read_and_write_are_split(share):
    fs, server, _ = make_loopback(share, max_write=64 * 1024)
    transport = LoopbackTransport(server, max_io=16 * 1024)
    client = FuseClient(transport)
    client.init()
    assert client.write_chunk == 16 * 1024 and client.read_chunk == 16 * 1024
    data = os.urandom(100 * 1024 + 5)
    entry, opened = client.create(ROOT_ID, b"big", os.O_CREAT | os.O_RDWR, stat.S_IFREG | 0o644)
    assert client.write(entry.nodeid, opened.fh, 0, data) == len(data)
    assert transport.counts[Opcode.WRITE] == 7
    assert client.read(entry.nodeid, opened.fh, 0, len(data) + 1000) == data
    assert transport.counts[Opcode.READ] == 7                  # the 7th is short: EOF
    assert client.read(entry.nodeid, opened.fh, 3, 10) == data[3:13]
    assert client.read(entry.nodeid, opened.fh, len(data), 10) == b""
    assert (share / "big").read_bytes() == data
    client.release(entry.nodeid, opened.fh)
    client.put(entry.nodeid)
    fs.close()


def test_write_chunk_respects_max_write(share):
    fs, server, _ = make_loopback(share, max_write=8192)
    transport = LoopbackTransport(server, max_io=1 << 20)
    client = FuseClient(transport)
    client.init()
    assert client.write_chunk == 8192
    entry, opened = client.create(ROOT_ID, b"f", os.O_CREAT | os.O_RDWR, stat.S_IFREG | 0o644)
    assert client.write(entry.nodeid, opened.fh, 0, bytes(8192 * 3)) == 8192 * 3
    assert transport.counts[Opcode.WRITE] == 3
    client.release(entry.nodeid, opened.fh)
    client.put(entry.nodeid)
    fs.close()


def test_setattr_getattr_and_fh(stack):
    _fs, _t, client = stack
    entry, opened = client.create(ROOT_ID, b"f", os.O_CREAT | os.O_RDWR, stat.S_IFREG | 0o600)
    out = client.setattr(entry.nodeid, SetattrIn(valid=SetattrValid.SIZE | SetattrValid.FH,
                                                 fh=opened.fh, size=1234))
    assert out.attr.size == 1234
    assert client.getattr(entry.nodeid, opened.fh).attr.size == 1234
    out = client.setattr(entry.nodeid,
                         SetattrIn(valid=SetattrValid.MODE, mode=stat.S_IFREG | 0o640))
    assert stat.S_IMODE(out.attr.mode) == 0o640
    client.release(entry.nodeid, opened.fh)
    client.put(entry.nodeid)


def test_create_falls_back_to_mknod_and_open_without_create(stack):
    fs, transport, client = stack
    transport.refuse[Opcode.CREATE] = errno.ENOSYS
    for name in (b"f", b"g"):
        entry, opened = client.create(ROOT_ID, name, os.O_CREAT | os.O_WRONLY, stat.S_IFREG | 0o600)
        client.write(entry.nodeid, opened.fh, 0, b"xyz")
        client.release(entry.nodeid, opened.fh)
        client.put(entry.nodeid)
    assert transport.counts[Opcode.CREATE] == 1                 # remembered
    assert transport.counts[Opcode.MKNOD] == 2 and transport.counts[Opcode.OPEN] == 2
    client.flush_forgets()
    assert _host_refs(fs) == 0


def test_enosys_flush_fsync_are_remembered_as_success(stack):
    _fs, transport, client = stack
    transport.refuse.update({Opcode.FLUSH: errno.ENOSYS, Opcode.FSYNC: errno.ENOSYS})
    entry, opened = client.create(ROOT_ID, b"f", os.O_CREAT | os.O_RDWR, stat.S_IFREG | 0o600)
    for _ in range(2):
        client.flush(entry.nodeid, opened.fh)
        client.fsync(entry.nodeid, opened.fh)
    assert transport.counts[Opcode.FLUSH] == 1 and transport.counts[Opcode.FSYNC] == 1
    client.release(entry.nodeid, opened.fh)
    client.put(entry.nodeid)


def test_enosys_xattr_is_eopnotsupp(stack):
    _fs, transport, client = stack
    transport.refuse[Opcode.GETXATTR] = errno.ENOSYS
    for _ in range(2):
        with pytest.raises(OSError) as info:
            client.getxattr(ROOT_ID, b"user.x")
        assert info.value.errno == errno.EOPNOTSUPP
    assert transport.counts[Opcode.GETXATTR] == 1


def test_no_open_support(stack):
    """With NO_OPEN_SUPPORT granted, OPEN answered ENOSYS opens with fh 0 and no RELEASE."""
    _fs, transport, client = stack
    client.info = dataclasses.replace(client.info,
                                      flags=client.info.flags | InitFlags.NO_OPEN_SUPPORT)
    _create(client, b"f")
    transport.refuse[Opcode.OPEN] = errno.ENOSYS
    e = client.lookup(ROOT_ID, b"f")
    assert client.open(e.nodeid, os.O_RDONLY).fh == 0
    assert client.open(e.nodeid, os.O_RDONLY).fh == 0
    client.release(e.nodeid, 0)
    assert transport.counts[Opcode.OPEN] == 1 and transport.counts[Opcode.RELEASE] == 1  # _create's
    client.put(e.nodeid)


def test_xattrs_statfs_readlink_rename(stack):
    _fs, _t, client = stack
    nid = _create(client, b"f", b"data")
    e = client.lookup(ROOT_ID, b"f")
    client.setxattr(e.nodeid, b"user.k", b"v1")
    assert client.getxattr(e.nodeid, b"user.k") == b"v1"
    assert client.getxattr(e.nodeid, b"user.k", 0) == 2
    assert client.listxattr(e.nodeid) == b"user.k\0"
    assert client.listxattr(e.nodeid, 0) == 7
    client.removexattr(e.nodeid, b"user.k")
    with pytest.raises(OSError) as info:
        client.getxattr(e.nodeid, b"user.k")
    assert info.value.errno == errno.ENODATA
    st = client.statfs()
    assert st.namelen == 255 and st.bsize > 0
    s = client.symlink(ROOT_ID, b"s", b"f")
    assert client.readlink(s.nodeid) == b"f"
    client.rename(ROOT_ID, b"f", ROOT_ID, b"g")
    assert client.lookup(ROOT_ID, b"g").nodeid == nid == e.nodeid
    client.put(nid, 2)
    client.put(s.nodeid)
    client.unlink(ROOT_ID, b"g")
    client.unlink(ROOT_ID, b"s")
    with pytest.raises(FileNotFoundError):
        client.lookup(ROOT_ID, b"g")


# ------------------------------------------------------------------------------------- locks


class _Interruptible(LoopbackTransport):
    """A loopback transport that also has ``request_interruptible`` (recording its calls)."""

    def __init__(self, server, answer=None):
        super().__init__(server)
        self.interruptible = []
        self.answer = answer

    def request_interruptible(self, opcode, nodeid, args, reply_size, creds=None, *, timeout=None):
        self.interruptible.append((Opcode(opcode), timeout))
        if self.answer is not None:
            return self.answer, b""
        return self.request(opcode, nodeid, args, reply_size, creds)


def test_setlkw_goes_through_request_interruptible(share):
    import fcntl

    from vfscluster.fuse.abi import FileLock
    fs, server, _ = make_loopback(share)
    try:
        t = _Interruptible(server)
        client = FuseClient(t)
        client.init()
        entry, opened = client.create(ROOT_ID, b"f", os.O_CREAT | os.O_RDWR, stat.S_IFREG | 0o644)
        lock = FileLock(0, 9, fcntl.F_WRLCK, os.getpid())
        client.setlk(entry.nodeid, opened.fh, 1, lock, sleep=True, timeout=2.5)
        client.setlk(entry.nodeid, opened.fh, 1, lock)                      # SETLK: plain request
        assert t.interruptible == [(Opcode.SETLKW, 2.5)]
        assert t.counts[Opcode.SETLKW] == 1 and t.counts[Opcode.SETLK] == 1
        got = client.getlk(entry.nodeid, opened.fh, 2, FileLock(0, 0, fcntl.F_RDLCK, 0))
        assert (got.start, got.end, got.type, got.pid) == (0, 9, fcntl.F_WRLCK, os.getpid())
        t.answer = -errno.EINTR
        with pytest.raises(OSError) as ei:
            client.setlk(entry.nodeid, opened.fh, 1, lock, flock=True, sleep=True, timeout=0)
        assert ei.value.errno == errno.EINTR
        t.reply_hook = lambda op, err, body: (err, FileLock(5, 4, 1, 0).pack())   # start > end
        with pytest.raises(RemoteProtocolError):
            client.getlk(entry.nodeid, opened.fh, 2, FileLock(0, 0, fcntl.F_RDLCK, 0))
    finally:
        fs.close()


@pytest.fixture
def local_locks(share):
    """Two GuestOS (two guest processes) on one mount whose server grants no POSIX_LOCKS /
    FLOCK_LOCKS: their locks are guest-local (the kernel's fc->no_lock), shared by the mount."""
    from vfscluster.guest.gos import GuestOS
    fs, _server, transport = make_loopback(share)
    client = FuseClient(transport)
    client.init()
    assert not client.flags & (InitFlags.POSIX_LOCKS | InitFlags.FLOCK_LOCKS)
    yield GuestOS(client), GuestOS(client)
    fs.close()


def test_guest_local_locks_have_fcntls_errnos(local_locks, share, tmp_path):
    """The errno cases of test_locks (a real cluster) on the guest-local lock table."""
    import fcntl

    from test_locks import cases_alone, cases_contended, guest_hold, guest_ops, local_cases
    g, other = local_locks
    local_dir = tmp_path / "local"
    local_dir.mkdir()
    alone, contended = local_cases(local_dir)
    assert cases_alone(*guest_ops(g)) == alone
    guest_hold(other, "p")
    # F_TEST is left out: both GuestOS of this process report this process's pid
    assert cases_contended(*guest_ops(g), f_test=False) == [
        c for c in contended if c[0] != "lockf F_TEST conflict"]
    assert g.client.local_locks.table.counts()["posix"] == 1 and fs_has_no_locks(g)
    for fd in other.open_fds():
        other.close(fd)
    assert g.client.local_locks.table.counts() == {"keys": 0, "posix": 0, "flock": 0, "waiters": 0}
    assert fcntl.F_UNLCK == g.fcntl_lock(g.open("p", os.O_RDONLY), fcntl.F_GETLK, fcntl.F_RDLCK).type


def fs_has_no_locks(gos):
    return gos.client.transport.server.fs.locks.table.counts()["posix"] == 0


def test_guest_local_setlkw_waits_and_times_out(local_locks):
    import concurrent.futures as cf
    import fcntl
    a, b = local_locks
    fa = a.open("f", os.O_CREAT | os.O_RDWR, 0o644)
    fb = b.open("f", os.O_RDWR)
    a.fcntl_lock(fa, fcntl.F_SETLK, fcntl.F_WRLCK, 0, 1)
    with pytest.raises(OSError) as ei:
        b.fcntl_lock(fb, fcntl.F_SETLKW, fcntl.F_RDLCK, 0, 1, timeout=0.05)
    assert ei.value.errno == errno.EINTR
    table = a.client.local_locks.table
    assert table.waiters() == []
    with cf.ThreadPoolExecutor(1) as ex:
        waiter = ex.submit(b.lockf, fb, os.F_LOCK, 1)             # a write lock from position 0
        b.flock(fb, fcntl.LOCK_SH)                                # meanwhile: flock is separate
        a.close(fa)                                               # unlock on close
        assert waiter.result(timeout=10) is None
    fa = a.open("f", os.O_RDWR)
    with pytest.raises(BlockingIOError):                          # b holds [0, 0] now
        a.fcntl_lock(fa, fcntl.F_SETLK, fcntl.F_RDLCK, 0, 1)
    with pytest.raises(BlockingIOError):
        a.flock(fa, fcntl.LOCK_EX | fcntl.LOCK_NB)
    b.close(fb)                                                   # last close: flock released
    a.flock(fa, fcntl.LOCK_EX | fcntl.LOCK_NB)
    a.close(fa)
    assert table.counts() == {"keys": 0, "posix": 0, "flock": 0, "waiters": 0}
