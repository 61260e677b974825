"""vfscluster.guest.fifo: a FIFO opened in a guest is a guest-local pipe (fs/pipe.c fifo_open),
shared by every opener of the node in that guest and by no other guest.

Each scenario runs on GuestOS over share/ and on plain ``os`` over local/ and must give the same
results and errnos; blocking opens are rendezvous between threads whose every wait is bounded."""

from __future__ import annotations

import errno
import fcntl
import os
import signal
import stat
import threading

import pytest

from loopback import make_loopback
from vfscluster.guest.client import FuseClient
from vfscluster.guest.fifo import fifos_of
from vfscluster.guest.gos import GuestOS

pytestmark = pytest.mark.timeout(60)

WAIT = 10.0          # seconds any one wait of a test may take


class Twin:
    """A GuestOS over share/ and ``os`` over local/, each with a FIFO ``fifo`` and a directory."""

    def __init__(self, tmp_path) -> None:
        self.share = tmp_path / "share"
        self.local = tmp_path / "local"
        for root in (self.share, self.local):
            root.mkdir()
            (root / "dir").mkdir()
            (root / "file").write_bytes(b"x")
        self.fs, self.server, self.transport = make_loopback(self.share)
        self.client = FuseClient(self.transport)
        self.client.init()
        self.g = GuestOS(self.client)
        self.g.mkfifo("fifo", 0o644)
        os.mkfifo(self.local / "fifo", 0o644)

    def sides(self):
        """``(opener, path maker)`` for the guest, then for ``os``."""
        return ((self.g, lambda p: p), (os, lambda p: f"{self.local}/{p}"))

    def close(self) -> None:
        for fd in self.g.open_fds():
            self.g.close(fd)
        self.client.flush_forgets()
        assert self.client.lookup_counts() == {}
        self.fs.close()


@pytest.fixture
def twin(tmp_path):
    t = Twin(tmp_path)
    yield t
    t.close()


def outcome(fn, *args):
    """What a call gave: ``("ok", value)`` or ``("error", errno, exception type)``."""
    try:
        value = fn(*args)
    except OSError as exc:
        return ("error", exc.errno, type(exc).__name__)
    if isinstance(value, os.stat_result):
        value = (stat.S_IFMT(value.st_mode), stat.S_IMODE(value.st_mode), value.st_size)
    return ("ok", value)


def same_on_both(twin, scenario):
    """Run ``scenario(o, P)`` (returns a list of outcomes) on both sides; close what it left."""
    results = []
    for o, P in twin.sides():
        before = set(o.open_fds()) if o is twin.g else None
        results.append(scenario(o, P))
        if o is twin.g:
            assert set(o.open_fds()) == before, "the scenario left descriptors open"
    assert results[0] == results[1]
    return results[0]


def in_thread(fn, *args):
    """Start ``fn(*args)`` in a daemon thread; returns a function that joins it (at most WAIT
    seconds) and gives its outcome."""
    box = []
    t = threading.Thread(target=lambda: box.append(outcome(fn, *args)), daemon=True)
    t.start()

    def result():
        t.join(WAIT)
        assert not t.is_alive(), f"{fn} still blocked after {WAIT}s"
        return box[0]
    return result


# ----------------------------------------------------------------------------- nonblocking opens


def test_nonblocking_opens_read_write_and_eof_match_os(twin):
    def scenario(o, P):
        out = [outcome(o.open, P("fifo"), os.O_WRONLY | os.O_NONBLOCK)]     # no reader: ENXIO
        r = o.open(P("fifo"), os.O_RDONLY | os.O_NONBLOCK)                  # never waits
        out.append(outcome(o.read, r, 10))                                  # no writer: EOF
        w = o.open(P("fifo"), os.O_WRONLY | os.O_NONBLOCK)
        out.append(outcome(o.read, r, 10))                                  # writer, no data
        out += [outcome(o.write, w, b"hello"), outcome(o.read, r, 3), outcome(o.read, r, 10)]
        out.append(outcome(o.write, w, b"bye"))
        o.close(w)
        out += [outcome(o.read, r, 10), outcome(o.read, r, 10)]             # data, then EOF
        w = o.open(P("fifo"), os.O_WRONLY | os.O_NONBLOCK)                  # a writer again
        out += [outcome(o.write, w, b"again"), outcome(o.read, r, 10)]
        o.close(r)
        out.append(outcome(o.write, w, b"x"))                               # no reader: EPIPE
        o.close(w)
        return out
    out = same_on_both(twin, scenario)
    assert out[0][1] == errno.ENXIO and out[-1][2] == "BrokenPipeError"


def test_writes_fill_the_pipe_buffer_then_eagain(twin):
    def scenario(o, P):
        r = o.open(P("fifo"), os.O_RDONLY | os.O_NONBLOCK)
        w = o.open(P("fifo"), os.O_WRONLY | os.O_NONBLOCK)
        big = b"z" * (1 << 20)
        out = [outcome(o.write, w, big), outcome(o.write, w, b"more")]
        got = 0
        while True:
            res = outcome(o.read, r, 1 << 20)
            if res[0] == "error":
                out.append(res)
                break
            got += len(res[1])
        out.append(got)
        o.close(w)
        o.close(r)
        return out
    out = same_on_both(twin, scenario)
    assert out[1][1] == errno.EAGAIN and out[0][1] == out[-1] > 0


def test_descriptor_calls_on_a_fifo_match_os(twin):
    def scenario(o, P):
        fd = o.open(P("fifo"), os.O_RDWR | os.O_NONBLOCK)        # never waits, even blocking
        out = [outcome(o.fstat, fd), outcome(o.lseek, fd, 0, os.SEEK_SET),
               outcome(o.lseek, fd, 0, 99), outcome(o.pread, fd, 5, 0),
               outcome(o.pwrite, fd, b"x", 0), outcome(o.fsync, fd), outcome(o.fdatasync, fd),
               outcome(o.ftruncate, fd, 0)]
        out.append(outcome(o.writev, fd, [b"ab", bytearray(b"cd"), memoryview(b"ef")]))
        bufs = [bytearray(1), bytearray(3)]
        out += [outcome(o.readv, fd, bufs), [bytes(b) for b in bufs]]
        out += [outcome(o.preadv, fd, [bytearray(2)], 0), outcome(o.pwritev, fd, [b"q"], 0)]
        d = o.dup(fd)
        o.close(fd)                         # the dup keeps the open file (and its pipe) alive
        out += [outcome(o.write, d, b"dup"), outcome(o.read, d, 10), outcome(o.read, d, 10)]
        e = o.dup2(d, d + 5)
        o.close(d)
        out += [outcome(o.write, e, b"2"), outcome(o.read, e, 10), outcome(o.fstat, e)]
        o.close(e)
        return out
    out = same_on_both(twin, scenario)
    assert out[0][1][0] == stat.S_IFIFO and out[1][1] == errno.ESPIPE


def test_open_flags_on_a_fifo_match_os(twin):
    flags = [3 | os.O_NONBLOCK, os.O_RDONLY | os.O_NONBLOCK | os.O_DIRECTORY,
             os.O_RDWR | os.O_CREAT | os.O_EXCL, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_NONBLOCK,
             os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW, os.O_PATH]

    def scenario(o, P):
        out = []
        for f in flags:
            res = outcome(o.open, P("fifo"), f, 0o600)
            if res[0] == "ok":
                fd = res[1]
                res = ("ok", outcome(o.fstat, fd), outcome(o.read, fd, 1))
                o.close(fd)
            out.append(res)
        return out
    same_on_both(twin, scenario)


def test_every_opener_shares_the_pipe_until_the_last_close(twin):
    def scenario(o, P):
        o.link(P("fifo"), P("dir/hard"))
        o.symlink("../fifo", P("dir/soft"))
        dfd = o.open(P("dir"), os.O_RDONLY)
        out = [outcome(lambda: o.open("soft", os.O_WRONLY | os.O_NONBLOCK, dir_fd=dfd))]
        rw = o.open(P("fifo"), os.O_RDWR)
        w = o.open("soft", os.O_WRONLY | os.O_NONBLOCK, dir_fd=dfd)
        r = o.open(P("dir/hard"), os.O_RDONLY | os.O_NONBLOCK)
        out += [outcome(o.write, w, b"one"), outcome(o.read, rw, 2), outcome(o.read, r, 10)]
        out.append(outcome(o.write, rw, b"unread"))
        for fd in (w, r, rw):
            o.close(fd)
        rw = o.open(P("fifo"), os.O_RDWR | os.O_NONBLOCK)     # a new pipe: the data is gone
        out.append(outcome(o.read, rw, 10))
        o.close(rw)
        o.close(dfd)
        o.unlink(P("dir/hard"))
        o.unlink(P("dir/soft"))
        return out
    out = same_on_both(twin, scenario)
    assert out[0] == ("error", errno.ENXIO, "OSError")


# ------------------------------------------------------------------------------ blocking opens


@pytest.mark.parametrize("first", ["reader", "writer"])
def test_a_blocking_open_waits_for_the_other_end(twin, first):
    """A blocking O_RDONLY and a blocking O_WRONLY open release each other, whichever comes
    first; each runs in its own thread, joined with a bound."""
    def scenario(o, P):
        modes = [os.O_RDONLY, os.O_WRONLY] if first == "reader" else [os.O_WRONLY, os.O_RDONLY]
        results = [in_thread(o.open, P("fifo"), m) for m in modes]
        (_, a), (_, b) = (res() for res in results)
        r, w = (a, b) if first == "reader" else (b, a)
        out = [outcome(o.write, w, b"met"), outcome(o.read, r, 10)]
        o.close(w)
        out.append(outcome(o.read, r, 10))
        o.close(r)
        return out
    assert same_on_both(twin, scenario)[1] == ("ok", b"met")


def test_rdwr_never_blocks_and_releases_a_blocked_reader(twin):
    def scenario(o, P):
        _, rw = in_thread(o.open, P("fifo"), os.O_RDWR)()
        waiting = in_thread(o.open, P("fifo"), os.O_RDONLY)     # a writer exists: no wait
        _, r = waiting()
        out = [outcome(o.write, rw, b"rw"), outcome(o.read, r, 10)]
        o.close(r)
        o.close(rw)
        return out
    same_on_both(twin, scenario)


def test_nonblocking_writer_joins_a_blocked_reader(twin):
    """A reader blocked in open counts as a reader (fifo_open counts it before it waits): a
    non-blocking writer then succeeds, and releases it.  The guest's registry shows when the
    reader waits; locally, the writer retries its ENXIO until the reader is counted."""
    g, client = twin.g, twin.client
    reader = in_thread(g.open, "fifo", os.O_RDONLY)
    fifos = fifos_of(client)
    assert fifos.wait_for(lambda: fifos.counts() == [(1, 0)], WAIT)
    w = g.open("fifo", os.O_WRONLY | os.O_NONBLOCK)
    _, r = reader()
    assert g.write(w, b"hi") == 2 and g.read(r, 5) == b"hi"
    g.close(w)
    g.close(r)
    assert fifos.counts() == []


def test_keyboard_interrupt_in_a_blocking_open_leaves_nothing_behind(twin):
    if threading.current_thread() is not threading.main_thread():
        pytest.fail("signals reach only the main thread; this test must run there")
    g, client = twin.g, twin.client
    fifos = fifos_of(client)
    armed = [True]

    def handler(signum, frame):
        if armed[0]:
            armed[0] = False
            raise KeyboardInterrupt
    main = threading.main_thread().ident
    stop = threading.Event()

    def interrupter():
        if not fifos.wait_for(lambda: fifos.counts() == [(1, 0)], WAIT):
            return
        for _ in range(int(WAIT / 0.05)):   # a signal just before the wait blocks is not seen
            if stop.is_set() or not armed[0]:
                return
            signal.pthread_kill(main, signal.SIGUSR1)
            stop.wait(0.05)
    old = signal.signal(signal.SIGUSR1, handler)
    t = threading.Thread(target=interrupter, daemon=True)
    try:
        t.start()
        with pytest.raises(KeyboardInterrupt):
            g.open("fifo", os.O_RDONLY)
    finally:
        stop.set()
        t.join(WAIT)
        signal.signal(signal.SIGUSR1, old)
    assert g.open_fds() == [] and fifos.counts() == []
    assert outcome(g.open, "fifo", os.O_WRONLY | os.O_NONBLOCK)[1] == errno.ENXIO
    client.flush_forgets()
    assert client.lookup_counts() == {}


# ----------------------------------------------------------------------------- scope and counts


def test_every_guestos_of_a_mount_shares_its_pipes_and_pins_the_node(twin):
    g, client = twin.g, twin.client
    other = GuestOS(client)                   # another process of the same guest
    r = g.open("fifo", os.O_RDONLY | os.O_NONBLOCK)
    w = other.open("fifo", os.O_WRONLY | os.O_NONBLOCK)
    assert other.write(w, b"across") == 6 and g.read(r, 10) == b"across"
    client.flush_forgets()
    assert len(client.lookup_counts()) == 1                 # the FIFO's node, pinned
    assert stat.S_ISFIFO(other.fstat(w).st_mode)
    g.close(r)
    with pytest.raises(BrokenPipeError):
        other.write(w, b"x")
    other.close(w)
    client.flush_forgets()
    assert client.lookup_counts() == {}


def test_opening_needs_permission_as_the_vfs_decides(twin):
    g, client = twin.g, twin.client
    g.chmod("fifo", 0o600)
    stranger = GuestOS(client, uid=12345, gid=12345, groups=())
    for flags in (os.O_RDONLY | os.O_NONBLOCK, os.O_RDWR):
        with pytest.raises(PermissionError) as info:
            stranger.open("fifo", flags)
        assert info.value.errno == errno.EACCES and info.value.filename == "fifo"
    g.chmod("fifo", 0o604)
    fd = stranger.open("fifo", os.O_RDONLY | os.O_NONBLOCK)
    stranger.close(fd)


@pytest.mark.timeout(120)
def test_two_guests_each_get_their_own_pipe(share):
    from vfscluster import Cluster, Topology
    with Cluster.start(Topology(share, guests=2, cache="none")) as c:
        a, b = c.guests
        a.os.mkfifo("fifo")
        fa = a.os.open("fifo", os.O_RDWR | os.O_NONBLOCK)
        fb = b.os.open("fifo", os.O_RDWR | os.O_NONBLOCK)
        assert a.os.write(fa, b"from A") == 6
        with pytest.raises(BlockingIOError):            # B's pipe is empty
            b.os.read(fb, 10)
        assert b.os.write(fb, b"from B") == 6
        assert a.os.read(fa, 100) == b"from A"
        assert b.os.read(fb, 100) == b"from B"
        for g, fd in ((a, fa), (b, fb)):        # locks on a FIFO are the guest kernel's own
            g.os.fcntl_lock(fd, fcntl.F_SETLK, fcntl.F_WRLCK)
            g.os.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        b.os.close(fb)
        with pytest.raises(OSError) as info:                # A's reader is not B's
            b.os.open("fifo", os.O_WRONLY | os.O_NONBLOCK)
        assert info.value.errno == errno.ENXIO
        wa = a.os.open("fifo", os.O_WRONLY | os.O_NONBLOCK)
        a.os.close(wa)
        assert stat.S_ISFIFO(a.os.fstat(fa).st_mode)
