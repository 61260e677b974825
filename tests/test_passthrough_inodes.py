"""vfscluster.fuse.passthrough.inodes: nodeids, per-session lookup counts, forget."""

from __future__ import annotations

import errno
import os
import threading

import pytest

from vfscluster.fuse.abi import ROOT_ID
from vfscluster.fuse.passthrough.confine import O_PATH_FLAGS
from vfscluster.fuse.passthrough.inodes import InodeStore


@pytest.fixture
def store(tmp_path):
    for name in "abc":
        (tmp_path / name).write_bytes(b"")
    fd = os.open(tmp_path, os.O_PATH | os.O_DIRECTORY)
    s = InodeStore(fd, os.fstat(fd))
    yield s
    s.close()


def _acquire(store, session, name):
    fd = os.open(name, O_PATH_FLAGS, dir_fd=store.root.fd)
    return store.acquire(session, fd, os.fstat(fd))


def _fd_open(fd: int) -> bool:
    try:
        os.fstat(fd)
        return True
    except OSError:
        return False


def test_same_file_same_nodeid_extra_fd_closed(store):
    a = _acquire(store, 0, "a")
    assert a.nodeid > ROOT_ID and store.refs(0, a.nodeid) == 1
    fd = os.open("a", O_PATH_FLAGS, dir_fd=store.root.fd)
    again = store.acquire(1, fd, os.fstat(fd))
    assert again is a and not _fd_open(fd)
    assert (store.refs(0, a.nodeid), store.refs(1, a.nodeid)) == (1, 1)
    assert store.nodeid_of(a.key) == a.nodeid


def test_get_checks_the_session(store):
    a = _acquire(store, 0, "a")
    assert store.get(0, a.nodeid) is a
    for session, nodeid in ((1, a.nodeid), (0, 999)):
        with pytest.raises(OSError) as info:
            store.get(session, nodeid)
        assert info.value.errno == errno.EBADF
    assert store.get(5, ROOT_ID) is store.root
    assert store.get_any(a.nodeid) is a


def test_forget_closes_when_every_session_is_done(store):
    a = _acquire(store, 0, "a")
    _acquire(store, 0, "a")
    _acquire(store, 1, "a")
    store.forget(0, a.nodeid, 1)
    store.forget(1, a.nodeid, 5)  # more than held: just gone for session 1
    assert _fd_open(a.fd) and store.refs(0, a.nodeid) == 1 and store.refs(1, a.nodeid) == 0
    fd = a.fd
    store.forget(0, a.nodeid, 1)
    assert not _fd_open(fd) and len(store) == 1 and store.nodeid_of(a.key) is None
    b = _acquire(store, 0, "a")
    assert b.nodeid != a.nodeid


def test_acquire_key_and_known(store):
    a = _acquire(store, 0, "a")
    assert store.acquire_key(1, a.key) is a and store.refs(1, a.nodeid) == 1
    assert store.acquire_key(1, (0, 0)) is None
    store.acquire_known(2, a)
    assert store.refs(2, a.nodeid) == 1
    store.forget_many(0, [(a.nodeid, 1)])
    store.forget_many(1, [(a.nodeid, 1)])
    store.forget_many(2, [(a.nodeid, 1)])
    with pytest.raises(OSError):
        store.acquire_known(0, a)


def test_root_needs_no_count(store):
    store.acquire_known(0, store.root)
    store.forget(0, ROOT_ID, 10)
    assert store.drop_session(0) == 0
    assert store.get(0, ROOT_ID) is store.root and _fd_open(store.root.fd)


def test_drop_session(store):
    a = _acquire(store, 0, "a")
    b = _acquire(store, 0, "b")
    _acquire(store, 1, "b")
    assert store.drop_session(0) == 1
    assert not _fd_open(a.fd) if a.fd >= 0 else True
    assert store.refs(1, b.nodeid) == 1 and len(store) == 2


def test_concurrent_lookups_and_forgets_keep_counts_right(store):
    def work(session):
        for _ in range(200):
            inode = _acquire(store, session, "c")
            store.forget(session, inode.nodeid, 1)
        _acquire(store, session, "c")

    threads = [threading.Thread(target=work, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    nodeid = store.nodeid_of(store._by_id[max(store._by_id)].key)
    assert [store.refs(s, nodeid) for s in range(4)] == [1, 1, 1, 1]
    assert len(store) == 2


def test_observer_hears_of_inodes_entering_and_leaving(store):
    seen = []

    class Observer:
        def added(self, inode):
            seen.append(("added", inode.nodeid))

        def removed(self, inode):
            seen.append(("removed", inode.nodeid, _fd_open(inode.fd)))   # its fd still open

    obs = Observer()
    store.add_observer(obs)
    assert seen == [("added", ROOT_ID)]                  # what the store held already
    a = _acquire(store, 0, "a")
    _acquire(store, 1, "a")                              # known already: no news
    b = _acquire(store, 0, "b")
    store.forget(0, a.nodeid, 1)
    store.forget(1, a.nodeid, 1)
    store.drop_session(0)
    assert seen[1:] == [("added", a.nodeid), ("added", b.nodeid), ("removed", a.nodeid, True),
                        ("removed", b.nodeid, True)]
    store.remove_observer(obs)
    _acquire(store, 0, "c")
    assert len(seen) == 5
