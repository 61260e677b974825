"""The guest caches (vfscluster.guest.cache, pagecache) over an in-process server: what each
mode keeps, what it asks the host, and when it lets go.

Time for ``cache=auto`` comes from a fake clock (no sleeps); requests are counted by the loopback
transport; "the host changed it" is a change made straight on the shared directory, which no
cache can see without asking.
"""

from __future__ import annotations

import errno
import os
import threading

import pytest

from loopback import make_loopback
from vfscluster.errors import ConfigError
from vfscluster.fuse.abi import Opcode
from vfscluster.guest import cache as cache_mod
from vfscluster.guest.cache import CacheConfig, CacheMode, CachePolicy
from vfscluster.guest.client import FuseClient
from vfscluster.guest.gos import GuestOS

pytestmark = pytest.mark.timeout(60)


class Clock:
    def __init__(self) -> None:
        self.ns = 1_000_000_000

    def __call__(self) -> int:
        return self.ns

    def advance(self, seconds: float) -> None:
        self.ns += int(seconds * 1e9)


@pytest.fixture
def clock(monkeypatch):
    c = Clock()
    monkeypatch.setattr(cache_mod.time, "monotonic_ns", c)
    return c


class Guest:
    def __init__(self, share, config, **policy) -> None:
        self.fs, self.server, self.t = make_loopback(share)
        self.client = FuseClient(self.t, CachePolicy(config, **policy))
        self.client.init()
        self.os = GuestOS(self.client)

    def count(self, *ops) -> int:
        return sum(self.t.counts[o] for o in ops)

    def close(self) -> None:
        for fd in self.os.open_fds():
            self.os.close(fd)
        self.client.drop_caches()
        leaked = len(self.fs.inodes) - 1
        self.client.destroy()
        self.fs.close()
        assert leaked == 0, f"{leaked} host inodes still counted"


@pytest.fixture
def share(tmp_path):
    d = tmp_path / "share"
    d.mkdir()
    (d / "dir").mkdir()
    (d / "dir" / "f").write_bytes(b"hello")
    return d


@pytest.fixture
def guest_factory(share):
    made = []

    def make(config, **policy) -> Guest:
        g = Guest(share, config, **policy)
        made.append(g)
        return g
    yield make
    for g in made:
        g.close()


META = (Opcode.LOOKUP, Opcode.GETATTR)


# ----------------------------------------------------------------------------- configuration

def test_config_parse_and_errors():
    assert CacheConfig.parse(None).mode is CacheMode.NONE
    assert CacheConfig.parse("always").mode is CacheMode.ALWAYS
    with pytest.raises(ConfigError, match="unknown cache mode"):
        CacheConfig.parse("sometimes")
    with pytest.raises(ConfigError, match="needs cache=auto"):
        CacheConfig(CacheMode.NONE, versions=True)
    with pytest.raises(ConfigError, match="timeout"):
        CacheConfig(CacheMode.AUTO, timeout=-1)
    with pytest.raises(ConfigError, match="version table"):
        CachePolicy(CacheConfig(CacheMode.ALWAYS, versions=True))
    assert str(CacheConfig(CacheMode.AUTO, timeout=0.5)) == "cache=auto,timeout=0.5"


# ----------------------------------------------------------------------------- none

def test_none_asks_every_time(guest_factory):
    g = guest_factory("none")
    g.os.stat("dir/f")
    before = g.count(*META)
    g.os.stat("dir/f")
    assert g.count(*META) - before == 2          # LOOKUP dir, LOOKUP f


# ----------------------------------------------------------------------------- always

def test_always_answers_from_the_cache_and_misses_host_changes(guest_factory, share):
    g = guest_factory("always")
    assert g.os.stat("dir/f").st_size == 5
    before = g.count(*META)
    for _ in range(3):
        assert g.os.stat("dir/f").st_size == 5
    assert g.count(*META) == before               # no request at all
    (share / "dir" / "f").write_bytes(b"changed on the host")
    assert g.os.stat("dir/f").st_size == 5        # stale, as cache=always promises


def test_own_changes_are_seen_at_once(guest_factory):
    g = guest_factory("always")
    g.os.stat("dir/f")
    g.os.chmod("dir/f", 0o600)
    assert g.os.stat("dir/f").st_mode & 0o777 == 0o600
    fd = g.os.open("dir/f", os.O_WRONLY | os.O_APPEND)
    g.os.write(fd, b" world")
    assert g.os.fstat(fd).st_size == 11
    g.os.close(fd)
    assert g.os.stat("dir/f").st_size == 11
    g.os.rename("dir/f", "dir/g")
    with pytest.raises(FileNotFoundError):
        g.os.stat("dir/f")
    assert g.os.stat("dir/g").st_size == 11
    assert g.os.listdir("dir") == ["g"]
    g.os.unlink("dir/g")
    assert g.os.listdir("dir") == []
    with pytest.raises(FileNotFoundError):
        g.os.stat("dir/g")


def _overtake_once(g, opcode, change):
    """Arrange that the next ``opcode`` reply reaches the client only after another thread has
    run ``change(g.os)`` to its end (the reply was built before the change: it is now stale)."""
    def hook(op, err, body):
        if op != opcode:
            return err, body
        g.t.reply_hook = None
        t = threading.Thread(target=change, args=(g.os,))
        t.start()
        t.join()
        return err, body
    g.t.reply_hook = hook


@pytest.mark.parametrize("mode", ["always", "auto"])
@pytest.mark.parametrize("opcode", [Opcode.LOOKUP, Opcode.GETATTR])
def test_a_reply_overtaken_by_this_guests_change_is_not_kept(guest_factory, mode, opcode):
    """The kernel's attr_version check: attributes fetched before another thread's chmod and
    delivered after it must not be cached (with always they would stay for ever)."""
    g = guest_factory(mode)
    g.os.stat("dir")
    fd = None
    if opcode == Opcode.GETATTR:
        fd = g.os.open("dir/f", os.O_RDONLY)
        g.os.chmod("dir/f", 0o640)          # drops the attributes
    _overtake_once(g, opcode, lambda gos: gos.chmod("dir/f", 0o600))
    before = g.count(opcode)
    if fd is None:
        g.os.stat("dir/f")                  # may answer either mode: it raced the chmod
    else:
        g.os.fstat(fd)
    assert g.count(opcode) > before and g.t.reply_hook is None
    assert g.os.stat("dir/f").st_mode & 0o777 == 0o600
    if fd is not None:
        assert g.os.fstat(fd).st_mode & 0o777 == 0o600
        g.os.close(fd)


@pytest.mark.parametrize("mode", ["always", "auto"])
def test_a_new_entry_undone_by_another_thread_before_its_reply_is_not_kept(guest_factory, mode):
    """MKDIR answered, then another thread's rmdir of the name, then the MKDIR's caching: it
    must not leave a dentry of a directory that is gone (for ever with always)."""
    g = guest_factory(mode)
    g.os.stat("dir")
    _overtake_once(g, Opcode.MKDIR, lambda gos: gos.rmdir("dir/x"))
    g.os.mkdir("dir/x")
    with pytest.raises(FileNotFoundError):
        g.os.stat("dir/x")
    g.os.mkdir("dir/y")                         # alone, the new entry is cached as before
    g.os.stat("dir")                            # (auto: the parent's own dentry went with its change)
    n = g.count(Opcode.LOOKUP)
    g.os.stat("dir/y")
    assert g.count(Opcode.LOOKUP) == n


def test_a_listing_overtaken_by_this_guests_change_is_not_kept(guest_factory):
    g = guest_factory("always")
    g.os.listdir("dir")
    g.os.mkdir("dir/sub")                   # drops the listing
    _overtake_once(g, Opcode.READDIR, lambda gos: gos.mkdir("dir/new"))
    g.os.listdir("dir")
    assert sorted(g.os.listdir("dir")) == ["f", "new", "sub"]


def test_negative_dentries(guest_factory, share, clock):
    g = guest_factory(CacheConfig(CacheMode.AUTO, timeout=1.0))
    with pytest.raises(FileNotFoundError):
        g.os.stat("dir/new")
    lookups = g.count(Opcode.LOOKUP)
    (share / "dir" / "new").write_bytes(b"")
    with pytest.raises(FileNotFoundError):
        g.os.stat("dir/new")                      # the negative dentry answers
    assert g.count(Opcode.LOOKUP) == lookups
    clock.advance(1.5)
    assert g.os.stat("dir/new").st_size == 0      # expired: asked again


def test_always_keeps_data_across_opens(guest_factory, share):
    g = guest_factory("always")
    fd = g.os.open("dir/f", os.O_RDONLY)
    assert g.os.read(fd, 100) == b"hello"
    g.os.close(fd)
    reads = g.count(Opcode.READ)
    for _ in range(2):
        fd = g.os.open("dir/f", os.O_RDONLY)
        assert g.os.pread(fd, 100, 0) == b"hello"
        assert g.os.pread(fd, 3, 1) == b"ell"
        g.os.close(fd)
    assert g.count(Opcode.READ) == reads


def test_listing_cached_with_always(guest_factory, share):
    g = guest_factory("always")
    assert g.os.listdir("dir") == ["f"]
    n = g.count(Opcode.READDIR, Opcode.OPENDIR)
    (share / "dir" / "x").write_bytes(b"")
    assert g.os.listdir("dir") == ["f"]           # stale by design
    assert g.count(Opcode.READDIR, Opcode.OPENDIR) == n
    g.os.mkdir("dir/sub")                          # our own change drops it
    assert sorted(g.os.listdir("dir")) == ["f", "sub", "x"]


# ----------------------------------------------------------------------------- auto

def test_auto_expires_after_the_timeout(guest_factory, share, clock):
    g = guest_factory(CacheConfig(CacheMode.AUTO, timeout=1.0))
    assert g.os.stat("dir/f").st_size == 5
    (share / "dir" / "f").write_bytes(b"longer now")
    clock.advance(0.5)
    assert g.os.stat("dir/f").st_size == 5        # within the timeout: cached
    clock.advance(0.6)
    assert g.os.stat("dir/f").st_size == 10       # after it: fresh


@pytest.mark.parametrize("change", ["mtime", "size"])
def test_auto_reads_of_an_open_file_drop_its_pages_when_its_attributes_moved(
        guest_factory, share, clock, change):
    """fuse_cache_read_iter with AUTO_INVAL_DATA: a read refreshes timed-out attributes, and a new
    mtime or size drops the pages (the file is not reopened: close-to-open does not help)."""
    g = guest_factory(CacheConfig(CacheMode.AUTO, timeout=1.0))
    assert g.client.cache.auto_inval
    path = share / "dir" / "f"
    fd = g.os.open("dir/f", os.O_RDONLY)
    assert g.os.pread(fd, 100, 0) == b"hello"
    st = path.stat()
    new = b"HELLO" if change == "mtime" else b"HELLO, longer"
    path.write_bytes(new)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert g.os.pread(fd, 100, 0) == b"hello"    # within the timeout: the cached pages
    reads = g.count(Opcode.READ)
    clock.advance(1.1)
    assert g.os.pread(fd, 100, 0) == new         # GETATTR saw the change: pages dropped
    assert g.count(Opcode.READ) == reads + 1
    assert g.os.pread(fd, 100, 0) == new
    assert g.count(Opcode.READ) == reads + 1     # and the new ones kept
    g.os.close(fd)


def test_auto_inval_compares_with_the_last_attributes_seen_even_after_a_chmod(
        guest_factory, share, clock):
    """A chmod drops the cached attributes, not the last size and mtime seen (the kernel's
    inode keeps them): a later change on the host is still noticed by the next read."""
    g = guest_factory(CacheConfig(CacheMode.AUTO, timeout=1.0))
    path = share / "dir" / "f"
    fd = g.os.open("dir/f", os.O_RDONLY)
    assert g.os.pread(fd, 100, 0) == b"hello"
    g.os.chmod("dir/f", 0o600)
    st = path.stat()
    path.write_bytes(b"HELLO")
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    clock.advance(1.1)
    assert g.os.pread(fd, 100, 0) == b"HELLO"
    g.os.close(fd)


def test_auto_data_is_close_to_open(guest_factory, share, clock):
    g = guest_factory(CacheConfig(CacheMode.AUTO, timeout=1.0))
    fd = g.os.open("dir/f", os.O_RDONLY)
    assert g.os.pread(fd, 100, 0) == b"hello"
    (share / "dir" / "f").write_bytes(b"HELLO")
    assert g.os.pread(fd, 100, 0) == b"hello"     # same open: the page cache answers
    g.os.close(fd)
    fd = g.os.open("dir/f", os.O_RDONLY)          # a new open drops it
    assert g.os.pread(fd, 100, 0) == b"HELLO"
    g.os.close(fd)


# ----------------------------------------------------------------------------- write-back

def test_writeback_writes_move_mtime_at_once_and_the_host_gets_it_at_close(guest_factory, share):
    """file_update_time, then fuse_flush_times: the writer sees the time of its write before the
    write-back, and the host file keeps that time after it (not the time of write-back)."""
    import time
    g = guest_factory(CacheConfig(CacheMode.ALWAYS, writeback=True))
    path = share / "dir" / "f"
    os.utime(path, ns=(10**9, 10**9))
    fd = g.os.open("dir/f", os.O_WRONLY)
    t0 = time.time_ns()
    g.os.pwrite(fd, b"HELLO", 0)
    st = g.os.fstat(fd)
    assert st.st_mtime_ns >= t0 and st.st_ctime_ns == st.st_mtime_ns
    assert g.os.stat("dir/f").st_mtime_ns == st.st_mtime_ns
    assert path.stat().st_mtime_ns == 10**9          # nothing reached the host yet
    g.os.close(fd)
    assert path.read_bytes() == b"HELLO"
    assert path.stat().st_mtime_ns == st.st_mtime_ns
    assert g.os.stat("dir/f").st_mtime_ns == st.st_mtime_ns


def test_writeback_data_stays_visible_while_its_write_back_is_under_way(guest_factory, share):
    """A read racing fsync (or close) sees the written data, never the older host data: the
    kernel keeps pages under writeback in the page cache."""
    g = guest_factory(CacheConfig(CacheMode.ALWAYS, writeback=True))
    fd = g.os.open("dir/f", os.O_RDWR)
    g.os.pwrite(fd, b"NEW", 0)
    g.os.pwrite(fd, b"!", 5)
    seen = []
    request = g.client.transport.request

    def racing(opcode, *args, **kw):
        if opcode == Opcode.WRITE and not seen:     # the write-back's first WRITE, not sent yet
            t = threading.Thread(target=lambda: seen.append((g.os.pread(fd, 10, 0),
                                                              g.os.fstat(fd).st_size)))
            t.start()
            t.join()
        return request(opcode, *args, **kw)
    g.client.transport.request = racing
    g.os.fsync(fd)
    assert seen == [(b"NEWlo!", 6)]
    assert (share / "dir" / "f").read_bytes() == b"NEWlo!"
    g.os.close(fd)


def _during_write_back(g, action):
    """Run ``action()`` in another thread while the write-back's first WRITE is on its way (not
    yet at the host); returns that thread, and an Event set if it waited for the write-back."""
    request = g.client.transport.request
    pages = g.client.cache.pages
    waited = threading.Event()
    landed = pages._landed

    class Watched(threading.Condition):
        def wait_for(self, predicate, timeout=None):
            waited.set()
            return super().wait_for(predicate, timeout)
    pages._landed = Watched(pages._lock)
    threads = []

    def racing(opcode, *args, **kw):
        if opcode == Opcode.WRITE and not threads:
            t = threading.Thread(target=action)
            threads.append(t)
            t.start()
            while t.is_alive() and not waited.wait(0.01):    # it ended, or it waits for us
                pass
        return request(opcode, *args, **kw)
    g.client.transport.request = racing
    return threads, waited, lambda: setattr(pages, "_landed", landed)


def test_a_truncate_waits_for_a_write_back_under_way_in_another_thread(guest_factory, share):
    """Linux waits on pages under writeback: a truncate racing another thread's fsync must not
    land before the older WRITEs (they brought the data back after it)."""
    g = guest_factory(CacheConfig(CacheMode.ALWAYS, writeback=True))
    fd = g.os.open("dir/f", os.O_RDWR)
    g.os.pwrite(fd, b"0123456789", 0)
    threads, waited, _ = _during_write_back(g, lambda: g.os.ftruncate(fd, 0))
    g.os.fsync(fd)
    threads[0].join(10)
    assert waited.is_set()
    assert (share / "dir" / "f").read_bytes() == b""
    g.os.close(fd)


def test_a_utime_made_during_a_write_back_is_the_mtime_it_leaves(guest_factory, share):
    """fuse_flush_times sends the inode's mtime as it is when the write-back ends."""
    g = guest_factory(CacheConfig(CacheMode.ALWAYS, writeback=True))
    fd = g.os.open("dir/f", os.O_RDWR)
    g.os.pwrite(fd, b"NEW", 0)
    threads, _, _ = _during_write_back(g, lambda: g.os.utime(fd, ns=(5 * 10**9, 7 * 10**9)))
    g.os.fsync(fd)
    threads[0].join(10)
    assert (share / "dir" / "f").stat().st_mtime_ns == 7 * 10**9
    assert g.os.fstat(fd).st_mtime_ns == 7 * 10**9
    g.os.close(fd)


def test_writeback_keeps_a_utime_made_after_the_writes(guest_factory, share):
    g = guest_factory(CacheConfig(CacheMode.ALWAYS, writeback=True))
    fd = g.os.open("dir/f", os.O_WRONLY)
    g.os.pwrite(fd, b"HELLO", 0)
    g.os.utime(fd, ns=(5 * 10**9, 7 * 10**9))
    assert g.os.fstat(fd).st_mtime_ns == 7 * 10**9
    g.os.close(fd)
    assert (share / "dir" / "f").stat().st_mtime_ns == 7 * 10**9


def test_writeback_holds_writes_until_close(guest_factory, share):
    g = guest_factory(CacheConfig(CacheMode.ALWAYS, writeback=True))
    fd = g.os.open("dir/f", os.O_WRONLY)
    writes = g.count(Opcode.WRITE)
    assert g.os.pwrite(fd, b"HELLO, WORLD", 0) == 12
    assert g.os.pwrite(fd, b"!", 20) == 1
    assert g.count(Opcode.WRITE) == writes        # nothing sent yet
    assert (share / "dir" / "f").read_bytes() == b"hello"
    assert g.os.fstat(fd).st_size == 21           # this guest sees its own size
    r = g.os.open("dir/f", os.O_RDONLY)
    assert g.os.pread(r, 100, 0) == b"HELLO, WORLD" + bytes(8) + b"!"
    g.os.close(r)
    g.os.close(fd)
    assert g.count(Opcode.WRITE) - writes == 2
    assert (share / "dir" / "f").read_bytes() == b"HELLO, WORLD" + bytes(8) + b"!"


def test_writeback_fsync_and_truncate_write_back_first(guest_factory, share):
    g = guest_factory(CacheConfig(CacheMode.AUTO, writeback=True))
    fd = g.os.open("dir/f", os.O_RDWR)
    g.os.pwrite(fd, b"abcdefgh", 0)
    g.os.fsync(fd)
    assert (share / "dir" / "f").read_bytes() == b"abcdefgh"
    g.os.pwrite(fd, b"XY", 6)
    g.os.ftruncate(fd, 7)
    assert (share / "dir" / "f").read_bytes() == b"abcdefX"
    g.os.close(fd)


# ----------------------------------------------------------------------------- inodes

def test_unused_inodes_are_kept_then_the_oldest_forgotten(guest_factory, share):
    for i in range(5):
        (share / f"n{i}").write_bytes(b"")
    g = guest_factory("always", max_unused=3)
    for i in range(5):
        g.os.stat(f"n{i}")
    g.client.flush_forgets()
    forgotten = {nodeid for nodeid, _ in g.t.forgets}
    assert len(forgotten) == 2                    # n0 and n1 went, the last three stay
    assert len(g.client.lookup_counts()) == 3
    before = g.count(Opcode.LOOKUP)
    g.os.stat("n4")
    assert g.count(Opcode.LOOKUP) == before       # still cached
    g.os.stat("n0")
    assert g.count(Opcode.LOOKUP) == before + 1   # forgotten, so looked up again


def test_drop_caches_forgets_everything(guest_factory, share):
    g = guest_factory("always")
    g.os.stat("dir/f")
    assert len(g.fs.inodes) > 1
    g.client.drop_caches()
    assert len(g.fs.inodes) == 1
    assert g.os.stat("dir/f").st_size == 5


def test_fast_path_sees_own_changes_and_errors_keep_their_names(guest_factory):
    g = guest_factory("always")
    a = g.os.stat("dir/f")
    assert g.os.stat("dir/f") is a                # the fast cache returns the same result
    g.os.utime("dir/f", ns=(1, 2))
    assert g.os.stat("dir/f").st_mtime_ns == 2
    with pytest.raises(OSError) as e:
        g.os.stat("dir/missing")
    assert e.value.errno == errno.ENOENT and e.value.filename == "dir/missing"


@pytest.mark.parametrize("t", [float("inf"), 1e300, float("nan"), -1])
def test_a_timeout_the_guest_cannot_use_is_a_config_error(tmp_path, t):
    """``vfscluster stress --cache auto --timeout inf`` crashed every guest at start
    (OverflowError in CachePolicy: int(inf * 1e9)) instead of failing as a bad option."""
    from vfscluster.cluster.topology import Topology
    with pytest.raises(ConfigError):
        Topology(tmp_path, 1, cache="auto", timeout=t)
    with pytest.raises(ConfigError):
        CacheConfig(CacheMode.AUTO, timeout=t)
