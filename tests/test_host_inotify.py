"""vfscluster.host.inotify: changes made on the host outside the server bump the version table."""

from __future__ import annotations

import errno
import json
import logging
import os
import secrets
import shutil
import stat
import subprocess
import sys
import textwrap

import pytest

from vfscluster.fuse.abi import ROOT_ID
from vfscluster.fuse.filesystem import Context
from vfscluster.fuse.passthrough import PassthroughFs
from vfscluster.fuse.passthrough.inodes import Inode
from vfscluster.host.inotify import (EVENT, IN_ATTRIB, IN_CREATE, IN_Q_OVERFLOW, Inotify, ShareWatcher,
                                     parse_events)
from vfscluster.host.versions import VersionTable

pytestmark = pytest.mark.timeout(30)

CTX = Context(0, 0, 0, 1, 1)


@pytest.fixture
def tree(share):
    (share / "f").write_bytes(b"x")
    (share / "d").mkdir()
    (share / "d" / "g").write_bytes(b"y")
    return share


@pytest.fixture
def rig(tree):
    fs = PassthroughFs(tree)
    table = VersionTable(f"/vfsc-{os.getpid()}-{secrets.token_hex(3)}-vt", slots=1024, unlink_name=True)
    w = ShareWatcher(fs.inodes, table)
    yield fs, table, w
    w.close()
    fs.close()
    table.close()


def versions(table, *nodeids):
    return [table.version(n) for n in nodeids]


def kernel_watches(w) -> int:
    """The watches the kernel holds for the watcher's inotify instances (their fdinfo lists them)."""
    n = 0
    for fd in {w.inotify.fd, w.file_inotify.fd}:
        with open(f"/proc/self/fdinfo/{fd}") as f:
            n += sum(1 for line in f if line.startswith("inotify wd:"))
    return n


def test_parse_events():
    data = (EVENT.pack(3, IN_CREATE, 0, 16) + b"name".ljust(16, b"\0")
            + EVENT.pack(3, IN_ATTRIB, 0, 0))
    assert list(parse_events(data)) == [(3, IN_CREATE, 0, b"name"), (3, IN_ATTRIB, 0, b"")]


def test_bad_watch_is_an_oserror(tmp_path):
    i = Inotify()
    try:
        with pytest.raises(FileNotFoundError):
            i.add_watch(str(tmp_path / "missing"), IN_ATTRIB)
    finally:
        i.close()


def test_root_is_watched_and_nothing_queued_costs_one_read(rig):
    fs, table, w = rig
    assert w.watched == 1 and w.drain() == 0


def test_attribute_change_of_a_known_file_bumps_the_file_only(rig, tree):
    fs, table, w = rig
    f = fs.lookup(CTX, ROOT_ID, b"f").nodeid
    os.utime(tree / "f", (1, 1))
    assert w.drain() == 2                              # the directory's event and the file's own
    assert versions(table, f, ROOT_ID) == [1, 0]      # the directory's own metadata did not change


def test_names_appearing_and_moving_bump_the_directory_and_the_inode(rig, tree):
    fs, table, w = rig
    f = fs.lookup(CTX, ROOT_ID, b"f").nodeid
    (tree / "new").write_bytes(b"")
    w.drain()
    assert versions(table, ROOT_ID, f) == [1, 0]
    os.rename(tree / "f", tree / "f2")
    w.drain()
    assert versions(table, ROOT_ID, f) == [2, 1]       # MOVED_FROM / MOVED_TO: once per drain
    os.unlink(tree / "f2")
    w.drain()
    assert table.version(ROOT_ID) == 3                 # the file is gone: only its directory


def test_subdirectories_are_watched_while_known(rig, tree):
    fs, table, w = rig
    d = fs.lookup(CTX, ROOT_ID, b"d").nodeid
    g = fs.lookup(CTX, d, b"g").nodeid
    assert w.watched == 3                               # the root, d and g (files too)
    with open(tree / "d" / "g", "ab") as fh:
        fh.write(b"more")
    w.drain()
    assert versions(table, g, d, ROOT_ID) == [1, 0, 0]
    os.chmod(tree / "d", 0o700)                         # the directory itself
    w.drain()
    assert versions(table, d, ROOT_ID) == [1, 0]       # (and ATTRIB "d" in the root: d again, once)
    fs.forget(CTX, g, 1)
    fs.forget(CTX, d, 1)
    assert w.watched == 1                               # forgotten: not watched any more
    w.drain()                                           # (the IN_IGNORED of its watch)
    os.utime(tree / "d" / "g", (2, 2))
    assert w.drain() == 0


def test_a_deleted_directory_is_unwatched_when_forgotten(rig, tree):
    fs, table, w = rig
    d = fs.lookup(CTX, ROOT_ID, b"d").nodeid
    os.unlink(tree / "d" / "g")
    os.rmdir(tree / "d")               # the store's O_PATH fd keeps the inode (and the watch) alive
    w.drain()
    assert table.version(d) >= 1 and table.version(ROOT_ID) >= 1 and w.watched == 2
    fs.forget(CTX, d, 1)
    assert w.watched == 1
    w.drain()                          # its IN_IGNORED is for a watch no longer mapped: ignored
    assert w.watched == 1


def test_overflow_bumps_everything(rig):
    fs, table, w = rig
    gen = table._words[2]
    w._apply(EVENT.pack(-1, IN_Q_OVERFLOW, 0, 0), w._dirs, w._files)
    assert table._words[2] == gen + 1 and table.version(12345) == 1 and w.overflows == 1


def test_close_stops_observing_the_store(rig, tree):
    fs, table, w = rig
    w.close()
    fs.lookup(CTX, ROOT_ID, b"d")
    assert w.watched == 0


# -- every inode in the store has its own watch ------------------------------------------------

@pytest.fixture
def linked(tree):
    """``hidden/l``: a hard link to ``f`` in a directory no one looks up (so never watched)."""
    (tree / "hidden").mkdir()
    os.link(tree / "f", tree / "hidden" / "l")
    return tree


def test_a_change_through_a_hard_link_in_an_unwatched_directory_bumps_the_file(rig, linked):
    fs, table, w = rig
    f = fs.lookup(CTX, ROOT_ID, b"f").nodeid
    w.drain()
    v = versions(table, f, ROOT_ID)
    with open(linked / "hidden" / "l", "ab") as fh:      # data (IN_MODIFY)
        fh.write(b"more")
    assert w.drain() >= 1 and versions(table, f, ROOT_ID) == [v[0] + 1, v[1]]
    os.chmod(linked / "hidden" / "l", 0o600)           # attributes (IN_ATTRIB)
    w.drain()
    assert versions(table, f, ROOT_ID) == [v[0] + 2, v[1]]
    os.rename(linked / "hidden" / "l", linked / "hidden" / "l2")    # ctime (IN_MOVE_SELF)
    w.drain()
    assert versions(table, f, ROOT_ID) == [v[0] + 3, v[1]]
    os.unlink(linked / "hidden" / "l2")                # st_nlink (IN_ATTRIB)
    w.drain()
    assert versions(table, f, ROOT_ID) == [v[0] + 4, v[1]]


def test_a_file_replaced_by_a_rename_is_bumped(rig, tree):
    fs, table, w = rig
    f = fs.lookup(CTX, ROOT_ID, b"f").nodeid
    d = fs.lookup(CTX, ROOT_ID, b"d").nodeid
    g = fs.lookup(CTX, d, b"g").nodeid
    w.drain()
    v = versions(table, f, g, d, ROOT_ID)
    os.rename(tree / "d" / "g", tree / "f")             # f's st_nlink drops to 0; g moves
    w.drain()
    assert versions(table, f, g, d, ROOT_ID) == [n + 1 for n in v]


def test_a_symlink_is_watched_too(rig, tree):
    fs, table, w = rig
    os.symlink("f", tree / "s")
    (tree / "hidden").mkdir()
    os.link(tree / "s", tree / "hidden" / "s2", follow_symlinks=False)
    s = fs.lookup(CTX, ROOT_ID, b"s").nodeid
    w.drain()
    v = table.version(s)
    os.utime(tree / "hidden" / "s2", (5, 5), follow_symlinks=False)
    w.drain()
    assert table.version(s) == v + 1


def test_watches_go_when_inodes_leave_the_store(rig, linked):
    fs, table, w = rig
    f = fs.lookup(CTX, ROOT_ID, b"f").nodeid
    d = fs.lookup(CTX, ROOT_ID, b"d").nodeid
    g = fs.lookup(CTX, d, b"g").nodeid
    hidden = fs.lookup(CTX, ROOT_ID, b"hidden").nodeid
    assert fs.lookup(CTX, hidden, b"l").nodeid == f     # one inode, one entry, one watch
    assert w.watched == kernel_watches(w) == 5          # root, f, d, g, hidden
    fs.forget(CTX, f, 2)
    fs.forget(CTX, g, 1)
    assert w.watched == kernel_watches(w) == 3
    fs.forget(CTX, d, 1)
    fs.forget(CTX, hidden, 1)
    assert w.watched == kernel_watches(w) == 1 and len(fs.inodes) == 1
    w.drain()                                           # the IN_IGNORED of the watches removed
    os.chmod(linked / "f", 0o640)
    assert w.drain() == 1                               # the root's event only
    assert w._wd_of.keys() == {ROOT_ID} and not w._files and not w._names


def test_two_entries_of_one_inode_share_its_watch(rig, tree):
    """inotify gives the same watch for the same inode: the store keeps one entry per (st_dev,
    st_ino), but should two entries ever share an inode, the watch stays until both are gone."""
    fs, table, w = rig
    inode = fs.inodes.get_any(fs.lookup(CTX, ROOT_ID, b"f").nodeid)
    twin = Inode(10**6, os.dup(inode.fd), inode.key, inode.fmt)
    try:
        w.added(twin)
        assert w.watched == kernel_watches(w) == 2
        os.utime(tree / "f", (3, 3))
        w.drain()
        assert versions(table, inode.nodeid, twin.nodeid) == [1, 1]
        w.removed(twin)
        assert kernel_watches(w) == 2                   # f still has it
        os.utime(tree / "f", (4, 4))
        w.drain()
        assert versions(table, inode.nodeid, twin.nodeid) == [2, 1]
        fs.forget(CTX, inode.nodeid, 1)
        assert w.watched == kernel_watches(w) == 1
    finally:
        os.close(twin.fd)


def test_a_stream_of_changes_to_one_file_coalesces(rig, tree):
    """The kernel merges an event with the one queued last only: files' watches have a queue of
    their own, so the directory's event about ``f`` and ``f``'s own do not alternate."""
    fs, table, w = rig
    f = fs.lookup(CTX, ROOT_ID, b"f").nodeid
    w.drain()
    v = table.version(f)
    fd = os.open(tree / "f", os.O_WRONLY)
    try:
        for i in range(16):
            os.utime(fd, ns=(i, i))
        for i in range(16):
            os.pwrite(fd, b"x", 0)
    finally:
        os.close(fd)
    assert w.drain() == 3 and table.version(f) == v + 1     # ATTRIB f in the root; ATTRIB, MODIFY


def test_one_inotify_instance_will_do(tree, linked, monkeypatch):
    """Without a second instance (max_user_instances) files share the directories' one."""
    from vfscluster.host import inotify
    made = []

    class OneOnly(Inotify):
        def __init__(self):
            if made:
                raise OSError(errno.EMFILE, "inotify_init1: Too many open files")
            super().__init__()
            made.append(self)
    monkeypatch.setattr(inotify, "Inotify", OneOnly)
    fs = PassthroughFs(tree)
    table = VersionTable(f"/vfsc-{os.getpid()}-{secrets.token_hex(3)}-vt", slots=1024, unlink_name=True)
    w = ShareWatcher(fs.inodes, table)
    try:
        assert w.file_inotify is w.inotify and w.fd == w.inotify.fd
        f = fs.lookup(CTX, ROOT_ID, b"f").nodeid
        d = fs.lookup(CTX, ROOT_ID, b"d").nodeid
        w.drain()
        v = versions(table, f, d)
        os.chmod(linked / "hidden" / "l", 0o600)
        os.chmod(linked / "d", 0o700)
        w.drain()
        assert versions(table, f, d) == [v[0] + 1, v[1] + 1]
        fs.forget(CTX, f, 1)
        assert w.watched == kernel_watches(w) == 2
    finally:
        w.close()
        fs.close()
        table.close()


def test_named_events_of_entries_with_their_own_watch_cost_no_stat(rig, tree, monkeypatch):
    fs, table, w = rig
    d = fs.lookup(CTX, ROOT_ID, b"d").nodeid
    g = fs.lookup(CTX, d, b"g").nodeid
    w.drain()
    stats = []
    real = w._child
    monkeypatch.setattr(w, "_child", lambda *a: stats.append(a) or real(*a))
    with open(tree / "d" / "g", "ab") as fh:
        fh.write(b"more")
    os.chmod(tree / "d", 0o700)
    assert w.drain() == 3                               # g itself, d in the root, d itself
    assert versions(table, g, d, ROOT_ID) == [1, 1, 0] and stats == []


def _fail_file_watches(w, monkeypatch, calls):
    """add_watch of a non-directory fails with ENOSPC, as at the inotify watch limit."""
    for queue in {w.inotify, w.file_inotify}:
        def add_watch(path, mask, real=queue.add_watch):
            calls.append(path)
            if not stat.S_ISDIR(os.stat(path).st_mode):
                raise OSError(errno.ENOSPC, "inotify_add_watch: No space left on device")
            return real(path, mask)
        monkeypatch.setattr(queue, "add_watch", add_watch)


def test_no_room_for_file_watches_falls_back_to_directory_watches(rig, tree, monkeypatch, caplog):
    fs, table, w = rig
    calls = []
    _fail_file_watches(w, monkeypatch, calls)
    (tree / "k").write_bytes(b"")
    with caplog.at_level(logging.WARNING, logger="vfscluster.host.inotify"):
        f = fs.lookup(CTX, ROOT_ID, b"f").nodeid
        k = fs.lookup(CTX, ROOT_ID, b"k").nodeid         # no second try while f is unwatched
        d = fs.lookup(CTX, ROOT_ID, b"d").nodeid         # directories still are watched
    assert [p for p in calls if not os.path.isdir(p)] == [calls[0]]    # f only
    assert w.watched == kernel_watches(w) == 2
    assert len([r for r in caplog.records if "watch" in r.getMessage()]) == 1
    w.drain()
    v = versions(table, f, k, d, ROOT_ID)
    os.utime(tree / "f", (1, 1))                        # through a watched directory: resolved
    w.drain()
    assert versions(table, f, k, d, ROOT_ID) == [v[0] + 1] + v[1:]
    with open(tree / "k", "ab") as fh:                  # IN_MODIFY: the root reports it again
        fh.write(b"k")
    w.drain()
    assert versions(table, f, k, d, ROOT_ID) == [v[0] + 1, v[1] + 1] + v[2:]
    fs.forget(CTX, f, 1)
    fs.forget(CTX, k, 1)                                # every unwatched inode gone: files again
    monkeypatch.undo()
    fs.lookup(CTX, ROOT_ID, b"f")
    assert w.watched == kernel_watches(w) == 3


_AT_THE_LIMIT = """
import json, logging, os, secrets, sys
from vfscluster.fuse.abi import ROOT_ID
from vfscluster.fuse.filesystem import Context
from vfscluster.fuse.passthrough import PassthroughFs
from vfscluster.host.inotify import ShareWatcher
from vfscluster.host.versions import VersionTable

with open("/proc/sys/user/max_inotify_watches", "w") as f:   # this user namespace's own limit
    f.write("3")
warnings = []
logging.getLogger("vfscluster.host.inotify").addHandler(
    type("H", (logging.Handler,), {"emit": lambda self, r: warnings.append(r.getMessage())})())
CTX = Context(0, 0, 0, 1, 1)
share = sys.argv[1]
fs = PassthroughFs(share)
table = VersionTable(f"/vfsc-{os.getpid()}-{secrets.token_hex(3)}-vt", slots=1024, unlink_name=True)
w = ShareWatcher(fs.inodes, table)
out = {}
f = fs.lookup(CTX, ROOT_ID, b"f").nodeid                # root, f: 2 watches
d = fs.lookup(CTX, ROOT_ID, b"d").nodeid                # 3: the limit
g = fs.lookup(CTX, d, b"g").nodeid                      # ENOSPC: g goes unwatched
out["watched"] = w.watched
w.drain()
with open(os.path.join(share, "d", "g"), "ab") as fh:   # seen through d's watch
    fh.write(b"more")
with open(os.path.join(share, "hidden", "l"), "ab") as fh:   # seen through f's own watch
    fh.write(b"more")
w.drain()
out["versions"] = [table.version(n) for n in (f, d, g, ROOT_ID)]
fs.forget(CTX, f, 1)
fs.forget(CTX, g, 1)                                    # no unwatched inode left: files again
out["again"] = fs.lookup(CTX, d, b"g").nodeid in w._wd_of
out["warnings"] = len(warnings)
w.close(); fs.close(); table.close()
print(json.dumps(out))
"""


def test_the_real_watch_limit(linked, tmp_path):
    """ENOSPC from the kernel, in a private user namespace whose watch limit is 3."""
    unshare = shutil.which("unshare")
    if unshare is None:
        pytest.skip("no unshare(1)")
    probe = subprocess.run([unshare, "-Ur", "true"], capture_output=True, timeout=10)
    if probe.returncode != 0:
        pytest.skip(f"no user namespaces here: {probe.stderr.decode().strip()}")
    script = tmp_path / "at_the_limit.py"
    script.write_text(textwrap.dedent(_AT_THE_LIMIT))
    r = subprocess.run([unshare, "-Ur", sys.executable, str(script), str(linked)],
                       capture_output=True, timeout=20, text=True)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out == {"watched": 3, "versions": [1, 0, 1, 0], "again": True, "warnings": 1}
