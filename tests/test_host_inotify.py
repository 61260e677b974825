"""vfscluster.host.inotify: changes made on the host outside the server bump the version table."""

from __future__ import annotations

import os
import secrets

import pytest

from vfscluster.fuse.abi import ROOT_ID
from vfscluster.fuse.filesystem import Context
from vfscluster.fuse.passthrough import PassthroughFs
from vfscluster.host.inotify import (EVENT, IN_ATTRIB, IN_CREATE, IN_Q_OVERFLOW, Inotify, ShareWatcher,
                                     parse_events)
from vfscluster.host.versions import VersionTable

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
    assert w.drain() == 1
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
    assert w.watched == 2                               # directories only
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
    w._apply(EVENT.pack(-1, IN_Q_OVERFLOW, 0, 0))
    assert table._words[2] == gen + 1 and table.version(12345) == 1 and w.overflows == 1


def test_close_stops_observing_the_store(rig, tree):
    fs, table, w = rig
    w.close()
    fs.lookup(CTX, ROOT_ID, b"d")
    assert w.watched == 0
