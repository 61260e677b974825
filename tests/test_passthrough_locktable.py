"""vfscluster.fuse.passthrough.locktable: the host's POSIX / flock lock manager between guests."""

from __future__ import annotations

import errno
import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from threads import run_threads
from vfscluster.fuse.passthrough.locktable import (
    F_RDLCK as RD,
    F_UNLCK as UN,
    F_WRLCK as WR,
    FLOCK_OPS,
    GRANTED,
    LOCK_EX,
    LOCK_NB,
    LOCK_SH,
    LOCK_UN,
    OFFSET_MAX,
    QUEUED,
    FlockLock,
    LockTable,
    PosixLock,
)

A, B, C = ("s1", 1), ("s2", 1), ("s2", 2)  # owners: (session, lock_owner)
K, K2 = 10, 20  # inode keys


def ranges(table, key=K, owner=None):
    return [(lk.type, lk.start, lk.end) for lk in table.locks(key)
            if owner is None or lk.owner == owner]


def errno_of(fn, *args, **kwargs):
    with pytest.raises(OSError) as info:
        fn(*args, **kwargs)
    return info.value.errno


class Grants:
    """on_grant recorder that also checks the table's mutex is not held during the callback."""

    def __init__(self, table):
        self.table, self.tokens = table, []

    def __call__(self, token):
        assert not self.table._mutex.locked()
        self.tokens.append(token)


# ---- one owner's ranges ----------------------------------------------------------------------

def test_merge_adjacent_and_overlapping_same_type():
    t = LockTable()
    t.setlk(K, A, RD, 0, 9)
    t.setlk(K, A, RD, 20, 29)
    assert ranges(t) == [(RD, 0, 9), (RD, 20, 29)]
    t.setlk(K, A, RD, 10, 19)  # adjacent on both sides: one range
    assert ranges(t) == [(RD, 0, 29)]
    t.setlk(K, A, RD, 25, OFFSET_MAX)
    assert ranges(t) == [(RD, 0, OFFSET_MAX)]
    assert t.counts() == {"keys": 1, "posix": 1, "flock": 0, "waiters": 0}


def test_split_upgrade_downgrade():
    t = LockTable()
    t.setlk(K, A, RD, 0, 99)
    t.setlk(K, A, WR, 40, 59)  # upgrade the middle: split in three
    assert ranges(t) == [(RD, 0, 39), (WR, 40, 59), (RD, 60, 99)]
    t.setlk(K, A, RD, 40, 59)  # downgrade back: coalesces to one read range
    assert ranges(t) == [(RD, 0, 99)]
    t.setlk(K, A, UN, 10, 19)  # unlock a hole
    assert ranges(t) == [(RD, 0, 9), (RD, 20, 99)]
    t.setlk(K, A, WR, 5, 25)  # write over the hole and both edges
    assert ranges(t) == [(RD, 0, 4), (WR, 5, 25), (RD, 26, 99)]
    t.setlk(K, A, UN, 0, OFFSET_MAX)
    assert ranges(t) == []
    assert t.counts()["keys"] == 0


def test_unlock_of_nothing_and_bad_arguments():
    t = LockTable()
    t.setlk(K, A, UN, 0, 10)
    assert ranges(t) == []
    assert errno_of(t.setlk, K, A, 7, 0, 1) == errno.EINVAL
    assert errno_of(t.setlk, K, A, RD, 5, 4) == errno.EINVAL
    assert errno_of(t.setlk, K, A, RD, 0, OFFSET_MAX + 1) == errno.EINVAL
    assert errno_of(t.getlk, K, A, UN, 0, 1) == errno.EINVAL  # as F_GETLK on Linux


# ---- conflicts between owners ----------------------------------------------------------------

def test_read_read_coexist_read_write_conflict():
    t = LockTable()
    t.setlk(K, A, RD, 0, 99, pid=100)
    t.setlk(K, B, RD, 50, 149, pid=200)  # read/read: fine
    assert errno_of(t.setlk, K, C, WR, 99, 99) == errno.EAGAIN  # F_SETLK gives EAGAIN on Linux
    assert errno_of(t.setlk, K, A, WR, 0, 60) == errno.EAGAIN  # upgrade blocked by B
    assert ranges(t, owner=A) == [(RD, 0, 99)]  # a failed request changes nothing
    t.setlk(K, A, WR, 0, 49)  # no overlap with B: upgrade fine
    t.setlk(K, C, WR, 150, OFFSET_MAX)
    t.setlk(K, A, RD, 0, 0)  # same owner never conflicts with itself
    assert t.getlk(K2, A, WR, 0, OFFSET_MAX) is None  # other keys are independent


def test_getlk_reports_the_conflicting_lock():
    t = LockTable()
    t.setlk(K, A, WR, 10, 19, pid=111)
    t.setlk(K, B, RD, 30, OFFSET_MAX, pid=222)
    got = t.getlk(K, C, RD, 0, OFFSET_MAX)
    assert got == PosixLock(A, WR, 10, 19, 111)
    got = t.getlk(K, C, WR, 25, 40)
    assert (got.type, got.start, got.end, got.pid) == (RD, 30, OFFSET_MAX, 222)
    assert t.getlk(K, C, RD, 20, 1000) is None  # read over B's read: grantable
    assert t.getlk(K, A, WR, 0, 29) is None  # A's own lock does not block A


# ---- waiting --------------------------------------------------------------------------------

@pytest.mark.timeout(30)
def test_setlkw_queue_then_grant_once_outside_the_lock():
    t = LockTable()
    grants = Grants(t)
    assert t.setlkw(K, A, WR, 0, 9, 1, "a1", grants) is GRANTED
    assert grants.tokens == []  # granted at once: no callback
    assert t.setlkw(K, B, RD, 5, 5, 2, "b1", grants) is QUEUED
    assert [(w.session, w.token) for w in t.waiters()] == [("s2", "b1")]
    assert errno_of(t.setlkw, K, B, RD, 5, 5, 2, "b1", grants) == errno.EINVAL  # token busy
    t.setlk(K, A, RD, 0, 9)  # a downgrade is enough for a reader
    assert grants.tokens == ["b1"]
    assert ranges(t, owner=B) == [(RD, 5, 5)]
    assert t.waiters() == []
    t.setlk(K, A, UN, 0, OFFSET_MAX)
    t.release_owner(K, B)
    assert grants.tokens == ["b1"]  # never a second time
    assert t.cancel("s2", "b1") is False


@pytest.mark.timeout(30)
def test_callback_may_reenter_the_table():
    t = LockTable()
    seen = []

    def on_grant(token):  # runs outside the mutex: calling in must not deadlock
        seen.append((token, t.getlk(K, A, RD, 0, 0)))
        t.setlk(K, B, UN, 0, OFFSET_MAX)

    t.setlk(K, A, WR, 0, 0)
    assert t.setlkw(K, B, WR, 0, 0, 0, 7, on_grant) is QUEUED
    t.setlk(K, A, UN, 0, 0)
    assert seen == [(7, PosixLock(B, WR, 0, 0, 0))]
    assert ranges(t) == []


def test_waiters_are_granted_fifo():
    t = LockTable()
    grants = Grants(t)
    t.setlk(K, A, WR, 0, 99)
    owners = [("s%d" % i, i) for i in range(3, 7)]
    for i, owner in enumerate(owners):
        assert t.setlkw(K, owner, WR, 0, 99, 0, i, grants) is QUEUED
    t.release_owner(K, A)
    assert grants.tokens == [0]
    for i, owner in enumerate(owners[:-1]):
        t.release_owner(K, owner)
        assert grants.tokens == list(range(i + 2))


def test_waiters_granted_together_when_compatible():
    t = LockTable()
    grants = Grants(t)
    t.setlk(K, A, WR, 0, 99)
    assert t.setlkw(K, B, RD, 0, 9, 0, "b", grants) is QUEUED
    assert t.setlkw(K, C, RD, 5, 50, 0, "c", grants) is QUEUED
    t.setlk(K, A, UN, 0, 99)
    assert grants.tokens == ["b", "c"]


def test_grant_that_downgrades_frees_an_earlier_waiter():
    t = LockTable()
    grants = Grants(t)
    t.setlk(K, A, WR, 0, 9)
    t.setlk(K, C, WR, 15, 20)
    assert t.setlkw(K, B, RD, 0, 9, 0, "b", grants) is QUEUED  # waits for A's write
    assert t.setlkw(K, A, RD, 0, 20, 0, "a", grants) is QUEUED  # A waits for C
    t.setlk(K, C, UN, 0, OFFSET_MAX)  # A gets read 0..20, which lets B in
    assert grants.tokens == ["a", "b"]
    assert ranges(t, owner=A) == [(RD, 0, 20)] and ranges(t, owner=B) == [(RD, 0, 9)]


def test_edeadlk_two_owner_cycle():
    t = LockTable()
    grants = Grants(t)
    t.setlk(K, A, WR, 0, 0)
    t.setlk(K2, B, WR, 0, 0)
    assert t.setlkw(K2, A, WR, 0, 0, 0, "a", grants) is QUEUED  # plain wait: no false positive
    assert errno_of(t.setlkw, K, B, RD, 0, 0, 0, "b", grants) == errno.EDEADLK
    assert [w.token for w in t.waiters()] == ["a"]  # the refused request left nothing behind
    t.release_owner(K2, B)
    assert grants.tokens == ["a"]


def test_edeadlk_three_owner_cycle_and_within_one_key():
    t = LockTable()
    grants = Grants(t)
    t.setlk(K, A, WR, 0, 9)
    t.setlk(K, B, WR, 10, 19)
    t.setlk(K, C, WR, 20, 29)
    assert t.setlkw(K, A, WR, 10, 10, 0, "a", grants) is QUEUED  # A -> B
    assert t.setlkw(K, B, WR, 25, 25, 0, "b", grants) is QUEUED  # B -> C
    assert errno_of(t.setlkw, K, C, WR, 5, 5, 0, "c", grants) == errno.EDEADLK  # C -> A: cycle
    assert t.setlkw(K, C, WR, 100, 100, 0, "c", grants) is GRANTED  # unrelated range: fine
    t.setlk(K, ("s9", 9), RD, 200, 200)
    assert t.setlkw(K, ("s9", 9), WR, 0, 0, 0, "d", grants) is QUEUED  # D -> A -> B -> C: no cycle
    assert t.cancel("s2", "b") is True
    assert t.setlkw(K, C, WR, 5, 5, 0, "c2", grants) is QUEUED  # cycle broken: C may wait for A


# ---- cancel ---------------------------------------------------------------------------------

def test_cancel_before_grant():
    t = LockTable()
    grants = Grants(t)
    t.setlk(K, A, WR, 0, 0)
    assert t.setlkw(K, B, WR, 0, 0, 0, 42, grants) is QUEUED
    assert t.cancel("s2", 42) is True  # the caller replies EINTR
    assert t.cancel("s2", 42) is False
    assert t.waiters() == []
    t.setlk(K, A, UN, 0, 0)
    assert grants.tokens == [] and ranges(t) == []


def test_cancel_after_grant_and_unknown():
    t = LockTable()
    grants = Grants(t)
    t.setlk(K, A, WR, 0, 0)
    assert t.setlkw(K, B, WR, 0, 0, 0, 42, grants) is QUEUED
    t.setlk(K, A, UN, 0, 0)
    assert grants.tokens == [42]
    assert t.cancel("s2", 42) is False  # the grant won the race: no double completion
    assert t.cancel("s1", 42) is False  # tokens are per session


# ---- sessions and owners going away ----------------------------------------------------------

def test_release_session_wakes_others_and_drops_its_waiters_silently():
    t = LockTable()
    grants = Grants(t)
    t.setlk(K, A, WR, 0, 99)
    t.setlk(K2, A, RD, 0, 0)
    t.flock(K, "s1", 5, LOCK_EX, nonblock=True)
    assert t.setlkw(K, B, WR, 50, 50, 0, "b", grants) is QUEUED
    assert t.flock(K, "s2", 6, LOCK_SH, token="bf", on_grant=grants) is QUEUED
    t.setlk(K2, C, WR, 5, 5)
    assert t.setlkw(K2, A, WR, 5, 5, 0, "a", grants) is QUEUED  # session s1 waits too
    t.release_session("s1")
    assert grants.tokens == ["b", "bf"]  # s1's waiter "a" got no callback
    assert t.waiters() == []
    assert ranges(t) == [(WR, 50, 50)] and ranges(t, K2) == [(WR, 5, 5)]
    assert t.flocks(K) == [FlockLock("s2", 6, RD)]
    t.release_session("s2")
    assert t.counts() == {"keys": 0, "posix": 0, "flock": 0, "waiters": 0}


def test_release_owner_is_unlock_on_close():
    t = LockTable()
    grants = Grants(t)
    t.setlk(K, A, RD, 0, 9)
    t.setlk(K, A, WR, 20, 29)
    t.setlk(K2, A, WR, 0, 0)
    t.setlk(K, ("s1", 2), RD, 0, 0)  # another process of the same guest
    assert t.setlkw(K, B, WR, 25, 25, 0, "b", grants) is QUEUED
    assert t.release_owner(K, A) == 2
    assert grants.tokens == ["b"]
    assert ranges(t, K, A) == [] and ranges(t, K2) == [(WR, 0, 0)]
    assert ranges(t, K, ("s1", 2)) == [(RD, 0, 0)]
    assert t.release_owner(K, A) == 0


# ---- flock -----------------------------------------------------------------------------------

def test_flock_shared_exclusive_and_independent_of_posix():
    t = LockTable()
    assert t.flock(K, "s1", 1, LOCK_SH | LOCK_NB) is GRANTED
    assert t.flock(K, "s2", 1, LOCK_SH, nonblock=True) is GRANTED  # fh numbers are per session
    assert errno_of(t.flock, K, "s2", 2, LOCK_EX, True) == errno.EWOULDBLOCK == errno.EAGAIN
    t.setlk(K, B, WR, 0, OFFSET_MAX)  # POSIX and flock never conflict
    assert t.flock(K, "s1", 1, LOCK_SH, nonblock=True) is GRANTED  # same type again: no-op
    assert sorted(t.flocks(K), key=str) == [FlockLock("s1", 1, RD), FlockLock("s2", 1, RD)]
    assert errno_of(t.flock, K, "s1", 1, LOCK_SH | LOCK_EX) == errno.EINVAL
    assert FLOCK_OPS == {RD: LOCK_SH, WR: LOCK_EX, UN: LOCK_UN}


def test_flock_conversion_is_not_atomic():
    t = LockTable()
    t.flock(K, "s1", 1, LOCK_SH, nonblock=True)
    t.flock(K, "s2", 2, LOCK_SH, nonblock=True)
    # upgrading while the other file holds a shared lock: the old lock is dropped first,
    # so a failed LOCK_NB conversion leaves this file with no lock at all (flock(2), Linux).
    assert errno_of(t.flock, K, "s1", 1, LOCK_EX | LOCK_NB) == errno.EWOULDBLOCK
    assert t.flocks(K) == [FlockLock("s2", 2, RD)]
    assert t.flock(K, "s2", 2, LOCK_EX, nonblock=True) is GRANTED  # sole holder: converts
    assert t.flock(K, "s2", 2, LOCK_SH, nonblock=True) is GRANTED  # downgrade
    assert t.flocks(K) == [FlockLock("s2", 2, RD)]


def test_flock_blocking_conversion_queues_and_frees_others():
    t = LockTable()
    grants = Grants(t)
    t.flock(K, "s1", 1, LOCK_SH, nonblock=True)
    t.flock(K, "s2", 2, LOCK_SH, nonblock=True)
    assert t.flock(K, "s3", 3, LOCK_EX, token="x3", on_grant=grants) is QUEUED
    # s1 converts to exclusive: its shared lock goes, it queues behind s3
    assert t.flock(K, "s1", 1, LOCK_EX, token="x1", on_grant=grants) is QUEUED
    assert [w.token for w in t.waiters(K)] == ["x3", "x1"]
    assert t.flock(K, "s2", 2, LOCK_UN) is GRANTED
    assert grants.tokens == ["x3"]  # FIFO: the earlier waiter first
    assert t.flocks(K) == [FlockLock("s3", 3, WR)]
    assert t.release_file("s3", 3) == []
    assert grants.tokens == ["x3", "x1"]
    assert t.flocks(K) == [FlockLock("s1", 1, WR)]


def test_flock_cancel_and_release_file_drops_its_waiters():
    t = LockTable()
    grants = Grants(t)
    t.flock(K, "s1", 1, LOCK_EX, nonblock=True)
    t.flock(K2, "s1", 1, LOCK_SH, nonblock=True)
    assert t.flock(K, "s2", 2, LOCK_SH, token=5, on_grant=grants) is QUEUED
    assert t.flock(K, "s2", 3, LOCK_EX, token=6, on_grant=grants) is QUEUED
    assert t.cancel("s2", 5) is True
    assert t.release_file("s2", 3) == [6]  # a closed file's waiter is dropped, caller replies
    assert t.release_file("s1", 1) == []
    assert grants.tokens == [] and t.counts()["keys"] == 0
    with pytest.raises(TypeError):
        t.flock(K, "s2", 2, LOCK_SH)  # blocking without a callback


# ---- property: the table against a byte-level model ------------------------------------------

OWNERS = [("s1", 1), ("s2", 1), ("s2", 2)]
TOP = 64  # model byte 64 stands for [64, OFFSET_MAX]


def _runs(cells: dict[int, int], owner) -> list[tuple]:
    """Maximal runs of equal type in the model: what the table must hold, coalesced."""
    out: list[list] = []
    for b in sorted(cells):
        if out and out[-1][2] == b - 1 and out[-1][0] == cells[b]:
            out[-1][2] = b
        else:
            out.append([cells[b], b, b])
    return [(owner, ty, s, OFFSET_MAX if e == TOP else e) for ty, s, e in out]


ops = st.lists(st.tuples(st.integers(0, 2), st.sampled_from([RD, WR, UN]),
                         st.integers(0, TOP - 1), st.integers(0, TOP)), max_size=40)


@settings(max_examples=300, deadline=None)
@given(ops, st.tuples(st.integers(0, 2), st.sampled_from([RD, WR]), st.integers(0, TOP - 1),
                      st.integers(0, TOP)))
def test_posix_locks_match_byte_model(sequence, query):
    t = LockTable()
    model: dict = {o: {} for o in OWNERS}  # owner -> byte -> type

    def model_conflict(owner, ty, s, e):
        return any(b in model[o] and (ty == WR or model[o][b] == WR)
                   for o in OWNERS if o != owner for b in range(s, e + 1))

    for who, ty, a, b in sequence:
        owner, s, e = OWNERS[who], min(a, b), max(a, b)
        end = OFFSET_MAX if e == TOP else e
        if ty != UN and model_conflict(owner, ty, s, e):
            assert errno_of(t.setlk, K, owner, ty, s, end) == errno.EAGAIN
            continue
        t.setlk(K, owner, ty, s, end, pid=who)
        for byte in range(s, e + 1):
            if ty == UN:
                model[owner].pop(byte, None)
            else:
                model[owner][byte] = ty
        for o in OWNERS:
            held = [(lk.owner, lk.type, lk.start, lk.end) for lk in t.locks(K) if lk.owner == o]
            assert held == _runs(model[o], o)
    who, ty, a, b = query
    owner, s, e = OWNERS[who], min(a, b), max(a, b)
    got = t.getlk(K, owner, ty, s, OFFSET_MAX if e == TOP else e)
    assert (got is not None) == model_conflict(owner, ty, s, e)
    if got is not None:
        assert got.owner != owner and got in t.locks(K)


# ---- threads ---------------------------------------------------------------------------------

@pytest.mark.timeout(60)
def test_threads_increment_a_counter_under_setlkw():
    t = LockTable()
    counter = [0]
    inside = [0]
    errors: list[str] = []

    def worker(n: int) -> None:
        owner = ("s%d" % n, n)
        for i in range(200):
            granted = threading.Event()
            if t.setlkw(K, owner, WR, 0, OFFSET_MAX, n, i, lambda _tok, ev=granted: ev.set()) is QUEUED:
                if not granted.wait(timeout=30):
                    errors.append("never granted")
                    return
            inside[0] += 1
            if inside[0] != 1:
                errors.append("two holders at once")
            value = counter[0]
            counter[0] = value + 1
            inside[0] -= 1
            t.setlk(K, owner, UN, 0, OFFSET_MAX)

    threads = run_threads(worker, 4, 50)
    assert not any(th.is_alive() for th in threads)
    assert errors == []
    assert counter[0] == 800
    assert t.counts() == {"keys": 0, "posix": 0, "flock": 0, "waiters": 0}
