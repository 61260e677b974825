"""Guests with ``versions=on`` (DESIGN §4) over in-process servers sharing one file system and one
version table: cached items stay valid while their slot holds the version read before they were
read, and every change another guest makes is seen on the next access.

The race of DESIGN §4 is reproduced deterministically: a reply hook lets another guest change
the file *after* the host read the attributes of a LOOKUP and *before* the guest got the reply.
A client that read the slot on arrival would cache the old attributes as current; the entry
version sent in the reply makes the next ``stat`` see the change.  A negative control shows the
test catches the wrong order.
"""

from __future__ import annotations

import errno
import os
import secrets

import pytest

from loopback import LoopbackTransport
from vfscluster.fuse.abi import EntryOut, Opcode
from vfscluster.fuse.passthrough import PassthroughFs
from vfscluster.fuse.server import Server
from vfscluster.guest.cache import CacheConfig, CacheMode, CachePolicy
from vfscluster.guest.client import FuseClient
from vfscluster.guest.gos import GuestOS
from vfscluster.guest.versions import VersionView
from vfscluster.host.versions import VersionTable

pytestmark = pytest.mark.timeout(60)


class Host:
    """One passthrough fs and one version table; guests are sessions on it."""

    def __init__(self, share) -> None:
        self.fs = PassthroughFs(str(share), cache="auto")
        self.table = VersionTable(f"/vfsc-test-vt-{os.getpid()}-{secrets.token_hex(4)}", 1 << 10,
                                  unlink_name=True)
        self.guests: list[Guest] = []

    def guest(self, config="none") -> "Guest":
        g = Guest(self, len(self.guests) + 1, config)
        self.guests.append(g)
        return g

    def close(self) -> None:
        for g in self.guests:
            g.close()
        self.fs.close()
        self.table.close()


class Guest:
    def __init__(self, host: Host, session: int, config) -> None:
        self.server = Server(host.fs, session=session, versions=host.table)
        self.t = LoopbackTransport(self.server)
        config = CacheConfig.parse(config) if not isinstance(config, CacheConfig) else config
        self.view = VersionView(host.table.fd) if config.versions else None
        self.client = FuseClient(self.t, CachePolicy(config, versions=self.view))
        self.client.init()
        self.os = GuestOS(self.client)

    def requests(self) -> int:
        return sum(self.t.counts.values())

    def close(self) -> None:
        for fd in self.os.open_fds():
            self.os.close(fd)
        self.client.destroy()
        if self.view is not None:
            self.view.close()


VERSIONS = CacheConfig(CacheMode.ALWAYS, versions=True)


@pytest.fixture
def share(tmp_path):
    d = tmp_path / "share"
    (d / "dir").mkdir(parents=True)
    (d / "dir" / "f").write_bytes(b"hello")
    return d


@pytest.fixture
def host(share):
    h = Host(share)
    yield h
    h.close()


def test_versions_needs_entry_versions_from_the_host(share):
    """A server without a table never grants ENTRY_VERSION: the mount fails, it does not
    silently cache without coherency."""
    fs = PassthroughFs(str(share))
    table = VersionTable(f"/vfsc-test-vt-{os.getpid()}-{secrets.token_hex(4)}", 64, unlink_name=True)
    view = VersionView(table.fd)
    try:
        client = FuseClient(LoopbackTransport(Server(fs)), CachePolicy(VERSIONS, versions=view))
        with pytest.raises(OSError) as e:
            client.init()
        assert e.value.errno == errno.EOPNOTSUPP
    finally:
        view.close()
        table.close()
        fs.close()


def test_unchanged_file_costs_no_request(host):
    a = host.guest(VERSIONS)
    a.os.stat("dir/f")
    meta = a.t.counts[Opcode.LOOKUP] + a.t.counts[Opcode.GETATTR]
    for _ in range(5):
        assert a.os.stat("dir/f").st_size == 5
    fd = a.os.open("dir/f", os.O_RDONLY)
    assert a.os.pread(fd, 10, 0) == b"hello"
    a.os.close(fd)
    fd = a.os.open("dir/f", os.O_RDONLY)
    assert a.os.pread(fd, 10, 0) == b"hello"          # data kept across opens
    a.os.close(fd)
    assert a.os.listdir("dir") == ["f"]
    assert a.os.listdir("dir") == ["f"]
    assert a.t.counts[Opcode.LOOKUP] + a.t.counts[Opcode.GETATTR] == meta
    assert a.t.counts[Opcode.READ] == 1
    assert a.t.counts[Opcode.READDIR] == 2            # one listing (a page, then the empty end)


@pytest.mark.parametrize("change", ["chmod", "write", "truncate", "rename", "unlink", "create",
                                    "utime", "setxattr", "link"])
def test_every_change_by_another_guest_is_seen_next(host, change):
    a = host.guest(VERSIONS)
    b = host.guest("none")
    a.os.stat("dir/f")
    a.os.listdir("dir")
    fd = a.os.open("dir/f", os.O_RDONLY)
    assert a.os.pread(fd, 100, 0) == b"hello"
    if change == "chmod":
        b.os.chmod("dir/f", 0o600)
        assert a.os.stat("dir/f").st_mode & 0o777 == 0o600
    elif change == "write":
        w = b.os.open("dir/f", os.O_WRONLY)
        b.os.pwrite(w, b"J", 0)
        b.os.close(w)
        assert a.os.pread(fd, 100, 0) == b"Jello"
    elif change == "truncate":
        b.os.truncate("dir/f", 2)
        assert a.os.stat("dir/f").st_size == 2
        assert a.os.pread(fd, 100, 0) == b"he"
    elif change == "rename":
        b.os.rename("dir/f", "dir/g")
        with pytest.raises(FileNotFoundError):
            a.os.stat("dir/f")
        assert a.os.listdir("dir") == ["g"]
    elif change == "unlink":
        b.os.unlink("dir/f")
        with pytest.raises(FileNotFoundError):
            a.os.stat("dir/f")
        assert a.os.listdir("dir") == []
    elif change == "create":
        with pytest.raises(FileNotFoundError):
            a.os.stat("dir/new")                      # a negative dentry now
        b.os.close(b.os.open("dir/new", os.O_CREAT | os.O_WRONLY, 0o644))
        assert a.os.stat("dir/new").st_size == 0
        assert sorted(a.os.listdir("dir")) == ["f", "new"]
    elif change == "utime":
        b.os.utime("dir/f", ns=(5, 7))
        assert a.os.stat("dir/f").st_mtime_ns == 7
    elif change == "setxattr":
        before = a.os.stat("dir/f").st_ctime_ns
        try:
            b.os.setxattr("dir/f", "user.k", b"v")
        except OSError as exc:
            pytest.skip(f"no user xattrs here: {exc}")
        assert a.os.getxattr("dir/f", "user.k") == b"v"
        assert a.os.stat("dir/f").st_ctime_ns >= before
    elif change == "link":
        b.os.link("dir/f", "dir/h")
        assert a.os.stat("dir/f").st_nlink == 2
    a.os.close(fd)


def test_the_entry_version_race(host):
    """Another guest's chmod lands between the host's reading of a LOOKUP's attributes and the
    guest's receiving them: the entry version (read by the host before the attributes) makes
    the next stat see it."""
    a = host.guest(VERSIONS)
    b = host.guest("none")
    _lookup_racing_a_chmod(a, b)
    assert a.os.stat("dir/f").st_mode & 0o777 == 0o600


def test_the_race_catches_a_client_that_reads_the_slot_on_arrival(host, monkeypatch):
    """Negative control: the same interleaving with the slot read after the reply leaves the
    old mode cached as current (what DESIGN §4 warns of)."""
    a = host.guest(VERSIONS)
    b = host.guest("none")
    monkeypatch.setattr(a.client, "_entry_stamp",
                        lambda body, offset, nodeid, pre: a.view.version(nodeid))
    _lookup_racing_a_chmod(a, b)
    assert a.os.stat("dir/f").st_mode & 0o777 == 0o644     # stale: the wrong order is caught


def _lookup_racing_a_chmod(a: Guest, b: Guest) -> None:
    b.os.chmod("dir/f", 0o644)
    ino = b.os.stat("dir/f").st_ino
    fired = []

    def hook(opcode, error, body):
        if opcode == Opcode.LOOKUP and not fired and not error and \
                EntryOut.unpack_from(body).attr.ino == ino:
            fired.append(True)
            b.os.chmod("dir/f", 0o600)                 # after the host's stat, before a sees it
        return error, body
    a.t.reply_hook = hook
    a.os.lstat("dir")
    st = a.os.stat("dir/f")
    a.t.reply_hook = None
    assert fired and st.st_mode & 0o777 == 0o644       # this reply was read before the chmod


def test_directory_slot_guards_dentries(host):
    a = host.guest(VERSIONS)
    b = host.guest("none")
    assert a.os.stat("dir/f").st_size == 5
    b.os.rename("dir/f", "dir/g")
    b.os.close(b.os.open("dir/f", os.O_CREAT | os.O_WRONLY, 0o644))    # a new inode, same name
    assert a.os.stat("dir/f").st_size == 0
    assert a.os.stat("dir/g").st_size == 5


# ----------------------------------------------------------------------------- a real cluster

def _stat_twice_counting(gos, path):
    before = gos.client.requests
    first = gos.stat(path)
    mid = gos.client.requests
    second = gos.stat(path)
    return (first.st_mode, first.st_mtime_ns, second.st_mode, mid - before,
            gos.client.requests - mid)


@pytest.mark.timeout(120)
def test_cluster_guests_see_each_other_and_the_host(tmp_path):
    """vfs-hostd and two guest processes: a versions=on guest answers from its cache, sees a
    chmod by the other guest on its next stat, and a change made on the host outside vfs-hostd
    once any request of it has been served after the change (the host reads its inotify
    events before it serves a request)."""
    from vfscluster import Cluster, Topology
    share = tmp_path / "share"
    (share / "d").mkdir(parents=True)
    (share / "d" / "f").write_bytes(b"x")
    topo = Topology(share, [{"name": "cached", "cache": "always", "versions": True},
                            {"name": "plain", "cache": "none"}])
    with Cluster.start(topo) as c:
        cached, plain = c.guests
        mode, _, again, _, n = cached.run(_stat_twice_counting, "d/f")
        assert mode == again and n == 0                          # the second stat is free
        plain.os.chmod("d/f", 0o600)
        # vfs-hostd's own chmod also reaches its inotify watch, which bumps the slot once more
        # when drained; a request is the barrier after which that has happened (else the
        # second stat below could see that late bump and ask again)
        cached.os.statvfs("/")
        mode, _, _, asked, n = cached.run(_stat_twice_counting, "d/f")
        assert mode & 0o777 == 0o600 and asked >= 1 and n == 0
        os.utime(share / "d" / "f", ns=(10**9, 7 * 10**9))        # behind vfs-hostd's back
        cached.os.statvfs("/")                                   # any request: the barrier
        _, mtime, _, _, _ = cached.run(_stat_twice_counting, "d/f")
        assert mtime == 7 * 10**9
        os.rename(share / "d" / "f", share / "d" / "g")
        cached.os.statvfs("/")
        with pytest.raises(FileNotFoundError):
            cached.os.stat("d/f")
        assert cached.os.stat("d/g").st_mtime_ns == 7 * 10**9


@pytest.mark.timeout(120)
def test_cluster_guest_sees_a_host_change_through_a_hard_link_elsewhere(tmp_path):
    """A host program changes a file through a hard link in a directory no guest looked up (so
    no directory watch of vfs-hostd sees it): the file's own watch does, and a versions=on guest
    with cache=always, which asks nothing while the slot holds, sees the change on its own."""
    from vfscluster import Cluster, Topology
    share = tmp_path / "share"
    (share / "d").mkdir(parents=True)
    (share / "hidden").mkdir()
    (share / "d" / "f").write_bytes(b"x")
    os.link(share / "d" / "f", share / "hidden" / "l")
    topo = Topology(share, [{"name": "cached", "cache": "always", "versions": True}])
    with Cluster.start(topo) as c:
        (cached,) = c.guests
        mode, _, again, _, n = cached.run(_stat_twice_counting, "d/f")
        assert mode == again and n == 0                          # cached: the slot holds
        os.utime(share / "hidden" / "l", ns=(10**9, 7 * 10**9))   # behind vfs-hostd's back
        cached.os.statvfs("/")                                   # any request: the barrier
        _, mtime, _, asked, _ = cached.run(_stat_twice_counting, "d/f")
        assert mtime == 7 * 10**9 and asked >= 1


def _make_and_change(gos, n: int, deadline_ns: int):
    """Runs in the writer guest: create h/n<i> (0o600), then chmod it 0o640; returns when each
    create and each chmod had completed."""
    import os as _os
    import time as _time
    gos.umask(0)
    done = []
    for i in range(n):
        if _time.monotonic_ns() > deadline_ns:
            break
        gos.close(gos.open(f"h/n{i}", _os.O_CREAT | _os.O_WRONLY, 0o600))
        created = _time.monotonic_ns()
        gos.chmod(f"h/n{i}", 0o640)
        done.append((created, _time.monotonic_ns()))
    return done


def _look_up_fresh_names(gos, n: int, deadline_ns: int):
    """Runs in the versions=on reader: stat each fresh name h/n<i> until it shows 0o640;
    every observation is logged with the instant it started."""
    import time as _time
    seen = []
    for i in range(n):
        while True:
            start = _time.monotonic_ns()
            if start > deadline_ns:
                return seen
            try:
                mode = gos.stat(f"h/n{i}").st_mode & 0o777
            except FileNotFoundError:
                mode = None
            seen.append((i, start, mode))
            if mode == 0o640:
                break
    return seen


@pytest.mark.timeout(120)
def test_fresh_names_hammered_while_another_guest_changes_them(tmp_path):
    """DESIGN §4's race, hammered in a real cluster: a versions=on guest looks names up while
    another guest creates and changes them.  Every observation that started after a change had
    completed must show it: 0 stale attributes, 0 stale negative dentries."""
    import concurrent.futures as cf
    import time
    from vfscluster import Cluster, Topology
    share = tmp_path / "share"
    (share / "h").mkdir(parents=True)
    n = 2000
    topo = Topology(share, [{"name": "reader1", "cache": "always", "versions": True},
                            {"name": "reader2", "cache": "always", "versions": True},
                            {"name": "writer", "cache": "none"}])
    with Cluster.start(topo) as c:
        *readers, writer = c.guests
        deadline = time.monotonic_ns() + 2_500_000_000
        with cf.ThreadPoolExecutor(3) as ex:
            rs = [ex.submit(g.run, _look_up_fresh_names, n, deadline) for g in readers]
            w = ex.submit(writer.run, _make_and_change, n, deadline)
            seen, done = [o for r in rs for o in r.result()], w.result()
    assert len(done) >= 20 and len(seen) >= len(done)
    stale = [(i, start, mode) for i, start, mode in seen if i < len(done) and (
        (start > done[i][1] and mode != 0o640) or (start > done[i][0] and mode is None))]
    assert stale == [], f"{len(stale)} stale of {len(seen)} observations: {stale[:5]}"
    assert sum(1 for i, _, m in seen if m == 0o600) + sum(1 for i, _, m in seen if m is None) > 0
