"""vfscluster.host.fairpool: per-key FIFOs served round-robin, a cap per key, failures logged."""

from __future__ import annotations

import threading

import pytest

from vfscluster.host.fairpool import FairPool

WAIT = 10     # seconds: the bound of every wait below (none is reached when the pool works)


def _gate(pool: FairPool, key) -> tuple[threading.Event, threading.Event]:
    """A task of ``key`` that holds its worker until ``release`` is set; ``started`` says it runs."""
    started, release = threading.Event(), threading.Event()

    def hold():
        started.set()
        assert release.wait(WAIT)
    pool.submit(key, hold)
    assert started.wait(WAIT)
    return started, release


def test_keys_are_served_round_robin_and_each_in_fifo_order():
    pool = FairPool(1)
    _, release = _gate(pool, "a")                # the only worker is busy: the rest queue up
    order: list[str] = []
    for n in range(4):
        pool.submit("a", order.append, f"a{n}")
    for n in range(2):
        pool.submit("b", order.append, f"b{n}")
    pool.submit("c", order.append, "c0")
    assert pool.queued() == 7 and pool.queued("a") == 4
    release.set()
    pool.shutdown()                              # runs everything queued, then joins
    # one task per key in turn, the keys in the order their work came; a's own in order
    assert order == ["a0", "b0", "c0", "a1", "b1", "a2", "a3"]


def test_one_key_never_holds_every_worker():
    """A guest whose blocking requests all wait (a stuck peer's acks) leaves a worker for the
    others: with 3 workers it gets 2 at once; another key's task runs meanwhile."""
    pool = FairPool(3)
    try:
        assert pool.per_key == 2
        gates = [_gate(pool, "hog") for _ in range(2)]
        ran = threading.Event()
        pool.submit("hog", ran.set)              # over the cap: it waits for one of the two
        other = threading.Event()
        pool.submit("other", other.set)
        assert other.wait(WAIT)                  # the third worker took the other key's task
        assert not ran.is_set() and pool.queued("hog") == 1
        gates[0][1].set()
        assert ran.wait(WAIT)
        gates[1][1].set()
    finally:
        pool.shutdown()


def test_a_task_that_raises_is_logged_and_the_worker_goes_on(caplog):
    pool = FairPool(1)
    try:
        def boom():
            raise ValueError("broken task")
        pool.submit("a", boom)
        after = threading.Event()
        pool.submit("a", after.set)
        assert after.wait(WAIT)
        assert "broken task" in caplog.text and "a task of 'a' failed" in caplog.text
    finally:
        pool.shutdown()


def test_shutdown_runs_what_is_queued_then_joins():
    pool = FairPool(2, per_key=1)
    _, release = _gate(pool, "a")
    ran = []
    for n in range(5):
        pool.submit("a", ran.append, n)          # capped at one worker: all wait for the gate
    release.set()
    pool.shutdown()
    assert ran == [0, 1, 2, 3, 4]
    assert not any(t.is_alive() for t in pool._threads)
    with pytest.raises(RuntimeError):
        pool.submit("a", ran.append, 5)
    pool.shutdown()                              # twice is fine


@pytest.mark.parametrize("workers, per_key", [(0, None), (2, 0)])
def test_bad_sizes_are_refused(workers, per_key):
    with pytest.raises(ValueError):
        FairPool(workers, per_key=per_key)
