"""Locks between guests, end to end: a real vfs-hostd and guest processes (``Cluster``).

fcntl record locks (F_GETLK / F_SETLK / F_SETLKW), lockf and flock through GuestOS; SETLKW parked on
the host and granted through the notification queue; release on close, on kill -9, EDEADLK across
guests, a timed-out SETLKW withdrawn with FUSE_INTERRUPT; errno parity with fcntl / os on a local
file.  A call that must be waiting is checked through the guest's own count of parked requests
(``lock_waits.wait_parked``), never by sleeping.
"""

from __future__ import annotations

import concurrent.futures as cf
import errno
import fcntl
import os
import signal
import struct
import time

import pytest

from vfscluster import Cluster, Topology
from vfscluster.cluster.launcher import _context

RD, WR, UN = fcntl.F_RDLCK, fcntl.F_WRLCK, fcntl.F_UNLCK
GETLK, SETLK, SETLKW = fcntl.F_GETLK, fcntl.F_SETLK, fcntl.F_SETLKW

# ----------------------------------------------------------------------------- in-guest helpers
# (run inside a guest with ``guest.run(fn, ...)``; a descriptor kept between calls lives on the
# GuestOS object, whose ``lock_owner`` is the guest process's)


def g_open(gos, name, flags=os.O_RDWR):
    fd = gos.open(name, flags | os.O_CREAT, 0o644)
    gos._test_fds = getattr(gos, "_test_fds", []) + [fd]
    return fd


def g_lock(gos, fd, cmd, ltype, start=0, length=0, timeout=None):
    return gos.fcntl_lock(fd, cmd, ltype, start, length, timeout=timeout)


def g_parked(gos, n, timeout=10.0):
    """Wait until this guest has ``n`` SETLKW/flock requests parked on the host."""
    return gos.client.transport.lock_waits.wait_parked(n, timeout)


def g_errno(gos, fn, *args, **kwargs):
    try:
        fn(gos, *args, **kwargs)
    except OSError as exc:
        return exc.errno
    return 0


def g_flock(gos, fd, op, timeout=None):
    gos.flock(fd, op, timeout=timeout)


def g_close(gos, fd):
    gos.close(fd)


def g_notifications(gos, at_least=0):
    """Notifications this guest received, once at least ``at_least`` were handled."""
    notify = gos.client.transport.notify
    assert notify.wait_handled(at_least, 10)
    return notify.received


@pytest.fixture
def cluster(share):
    (share / "f").write_bytes(b"0" * 64)
    with Cluster.start(Topology(share, guests=3, cache="none")) as c:
        yield c


def background(fn, *args):
    ex = cf.ThreadPoolExecutor(1)
    fut = ex.submit(fn, *args)
    ex.shutdown(wait=False)
    return fut


# ----------------------------------------------------------------------------- mutual exclusion


def _increment(gos, name, n):
    """n read-modify-write increments of the counter in ``name``, each under an exclusive lock."""
    fd = gos.open(name, os.O_RDWR)
    try:
        for _ in range(n):
            gos.fcntl_lock(fd, SETLKW, WR)
            value = int(gos.pread(fd, 16, 0) or b"0")
            gos.pwrite(fd, b"%016d" % (value + 1), 0)
            gos.fcntl_lock(fd, SETLK, UN)
    finally:
        gos.close(fd)
    return n


def test_counter_under_setlkw_over_four_guests_is_exact(share):
    """Four guests increment one counter; a fifth holds the lock until all four wait for it, so
    they really contend from the first increment on."""
    (share / "counter").write_bytes(b"%016d" % 0)
    n = 60
    with Cluster.start(Topology(share, guests=5, cache="none")) as c:
        *workers, gate = c.guests
        fd = gate.run(g_open, "counter")
        gate.run(g_lock, fd, SETLK, WR)
        with cf.ThreadPoolExecutor(4) as ex:
            done = [ex.submit(g.run, _increment, "counter", n) for g in workers]
            for g in workers:
                assert g.run(g_parked, 1)
            gate.run(g_lock, fd, SETLK, UN)
            assert [f.result(timeout=100) for f in done] == [n] * 4
        notified = [g.run(g_notifications, 1) for g in workers]
    assert int((share / "counter").read_bytes()) == 4 * n
    assert all(k >= 1 for k in notified)      # every worker waited at least once


def test_shared_locks_coexist_and_an_exclusive_one_waits(cluster):
    a, b, c = cluster.guests
    fa, fb, fc = (g.run(g_open, "f") for g in (a, b, c))
    a.run(g_lock, fa, SETLK, RD, 0, 10)
    b.run(g_lock, fb, SETLK, RD, 5, 10)                       # readers overlap
    assert c.run(g_errno, g_lock, fc, SETLK, WR, 0, 1) == errno.EAGAIN
    assert c.run(g_errno, g_lock, fc, SETLK, RD, 0, 15) == 0  # another reader
    c.run(g_lock, fc, SETLK, UN, 0, 0)
    waiter = background(c.run, g_lock, fc, SETLKW, WR, 0, 0)
    assert c.run(g_parked, 1)
    a.run(g_lock, fa, SETLK, UN, 0, 0)
    assert c.run(g_parked, 1, 0) and not waiter.done()      # b still reads [5, 14]
    b.run(g_close, fb)                                        # unlock on close
    assert waiter.result(timeout=20) is None
    info = a.run(g_lock, fa, GETLK, RD, 100, 1)
    assert (info.type, info.start, info.len, info.pid) == (WR, 0, 0, c.pid)


def test_getlk_reports_the_conflicting_lock(cluster):
    a, b, _ = cluster.guests
    fa, fb = a.run(g_open, "f"), b.run(g_open, "f")
    a.run(g_lock, fa, SETLK, WR, 10, 10)
    info = b.run(g_lock, fb, GETLK, RD, 0, 0)
    assert (info.type, info.start, info.len, info.pid) == (WR, 10, 10, a.pid)
    info = b.run(g_lock, fb, GETLK, WR, 20, 5)
    assert (info.type, info.start, info.len, info.pid) == (UN, 20, 5, 0)   # as given: free
    assert a.run(g_lock, fa, GETLK, WR, 0, 0).type == UN                  # its own lock
    b.run(g_lock, fb, SETLK, RD, 30, 0)
    info = a.run(g_lock, fa, GETLK, WR, 25, 10)
    assert (info.type, info.start, info.len, info.pid) == (RD, 30, 0, b.pid)


def test_getlk_reports_the_first_owners_lock_as_linux_does(cluster):
    """Of several conflicting locks F_GETLK reports posix_test_lock's: the first in the inode's
    list, where owners come in the order they locked — not the lowest-starting one."""
    a, b, c = cluster.guests
    fa, fb, fc = (g.run(g_open, "f") for g in (a, b, c))
    b.run(g_lock, fb, SETLK, RD, 10, 10)
    c.run(g_lock, fc, SETLK, RD, 0, 10)
    info = a.run(g_lock, fa, GETLK, WR, 0, 0)
    assert (info.type, info.start, info.len, info.pid) == (RD, 10, 10, b.pid)
    b.run(g_lock, fb, SETLK, UN, 0, 0)                  # b holds nothing now: it comes last
    b.run(g_lock, fb, SETLK, RD, 30, 1)
    info = a.run(g_lock, fa, GETLK, WR, 0, 0)
    assert (info.type, info.start, info.len, info.pid) == (RD, 0, 10, c.pid)


def _setlkw_then_close(gos, name):
    """SETLKW on a fresh fd from one thread while another thread closes that fd once the
    request is parked; the SETLKW's outcome (errno or 0)."""
    import threading
    fd = gos.open(name, os.O_RDWR)
    out = []

    def take():
        try:
            gos.fcntl_lock(fd, SETLKW, WR, 0, 1)
            out.append(0)
        except OSError as exc:
            out.append(exc.errno)
    t = threading.Thread(target=take)
    t.start()
    assert g_parked(gos, 1)
    gos.close(fd)
    return t, out


def test_closing_the_fd_of_a_waiting_setlkw_gives_ebadf_and_no_lock(cluster):
    """fs/locks.c fcntl_setlk: a lock granted to a descriptor closed while it waited is dropped
    and the call is EBADF — else the process would hold a lock no close can ever drop."""
    a, b, c = cluster.guests
    fa = a.run(g_open, "f")
    a.run(g_lock, fa, SETLK, WR, 0, 1)

    def scenario(gos):
        t, out = _setlkw_then_close(gos, "f")
        gos._scenario = (t, out)

    def outcome(gos):
        t, out = gos._scenario
        t.join(20)
        return out
    b.run(scenario)
    a.run(g_lock, fa, SETLK, UN, 0, 0)                  # the grant goes to b's closed fd
    assert b.run(outcome) == [errno.EBADF]
    fc = c.run(g_open, "f")
    assert c.run(g_lock, fc, GETLK, WR, 0, 0).type == UN    # b holds nothing
    assert c.run(g_errno, g_lock, fc, SETLK, WR, 0, 1) == 0


def test_flock_checks_the_operation_before_the_descriptor(cluster):
    """sys_flock: LOCK_MAND is ignored (0), an unknown operation is EINVAL even on a bad fd."""
    a = cluster.guests[0]
    fa = a.run(g_open, "f")
    assert a.run(g_errno, g_flock, 999, 0) == errno.EINVAL
    assert a.run(g_errno, g_flock, 999, 77) == errno.EINVAL
    assert a.run(g_errno, g_flock, 999, fcntl.LOCK_EX) == errno.EBADF
    assert a.run(g_errno, g_flock, fa, 32 | fcntl.LOCK_SH) == 0           # LOCK_MAND | LOCK_READ
    with open(os.devnull) as f:                                         # the same on Linux
        fcntl.flock(f, 32 | fcntl.LOCK_SH)
        for op in (0, 77):
            with pytest.raises(OSError) as ei:
                fcntl.flock(999, op)
            assert ei.value.errno == errno.EINVAL


def _two_fds_close_one(gos, name):
    fd1, fd2 = gos.open(name, os.O_RDWR), gos.open(name, os.O_RDONLY)
    gos.fcntl_lock(fd1, SETLK, WR, 0, 1)
    gos.flock(fd1, fcntl.LOCK_EX)
    gos.close(fd2)              # any close drops the process's POSIX locks on the file
    return fd1


def test_unlock_on_close(cluster):
    a, b, _ = cluster.guests
    fb = b.run(g_open, "f")
    fa = a.run(_two_fds_close_one, "f")
    assert b.run(g_errno, g_lock, fb, SETLK, WR, 0, 1) == 0             # the POSIX lock went
    b.run(g_lock, fb, SETLK, UN, 0, 0)
    assert b.run(g_errno, g_flock, fb, fcntl.LOCK_SH | fcntl.LOCK_NB) == errno.EWOULDBLOCK
    a.run(g_close, fa)                                                   # the flock goes with its file
    assert b.run(g_errno, g_flock, fb, fcntl.LOCK_SH | fcntl.LOCK_NB) == 0


def test_flock_shared_and_exclusive_across_guests(cluster):
    a, b, c = cluster.guests
    fa, fb, fc = (g.run(g_open, "f", os.O_RDONLY) for g in (a, b, c))   # flock needs no mode
    a.run(g_flock, fa, fcntl.LOCK_SH)
    b.run(g_flock, fb, fcntl.LOCK_SH | fcntl.LOCK_NB)
    assert c.run(g_errno, g_flock, fc, fcntl.LOCK_EX | fcntl.LOCK_NB) == errno.EWOULDBLOCK
    waiter = background(c.run, g_flock, fc, fcntl.LOCK_EX)
    assert c.run(g_parked, 1)
    a.run(g_flock, fa, fcntl.LOCK_UN)
    assert not waiter.done()
    b.run(g_flock, fb, fcntl.LOCK_UN)
    assert waiter.result(timeout=20) is None
    assert a.run(g_errno, g_flock, fa, fcntl.LOCK_SH | fcntl.LOCK_NB) == errno.EWOULDBLOCK
    c.run(g_flock, fc, fcntl.LOCK_SH)                # conversion: exclusive to shared
    a.run(g_flock, fa, fcntl.LOCK_SH | fcntl.LOCK_NB)


def test_kill_9_of_the_holder_releases_and_the_waiter_proceeds(cluster):
    a, b, c = cluster.guests
    fa, fb = a.run(g_open, "f"), b.run(g_open, "f")
    a.run(g_lock, fa, SETLK, WR, 0, 0)
    a.run(g_flock, fa, fcntl.LOCK_EX)
    posix = background(b.run, g_lock, fb, SETLKW, WR, 0, 0)
    assert b.run(g_parked, 1)
    fc = c.run(g_open, "f")
    flock = background(c.run, g_flock, fc, fcntl.LOCK_EX)
    assert c.run(g_parked, 1)
    a.kill(signal.SIGKILL)
    a.process.join(10)
    assert posix.result(timeout=20) is None and flock.result(timeout=20) is None
    assert c.run(g_lock, fc, GETLK, WR, 0, 0).pid == b.pid


def test_a_host_stopping_fails_the_waiters_instead_of_granting_them(cluster):
    """SIGTERM to the host: it drops every session, the holder's first — which released its
    lock and granted the waiter, which then held a lock on a host that was gone.  The waiter
    gets ENOTCONN, as for a host killed outright."""
    a, b, _ = cluster.guests
    fa, fb = a.run(g_open, "f"), b.run(g_open, "f")
    a.run(g_lock, fa, SETLK, WR, 0, 0)
    waiter = background(b.run, g_errno, g_lock, fb, SETLKW, WR, 0, 0)
    assert b.run(g_parked, 1)
    cluster.host.kill(signal.SIGTERM)
    assert waiter.result(timeout=20) == errno.ENOTCONN


def test_deadlock_between_two_guests_is_edeadlk(cluster):
    a, b, _ = cluster.guests
    fa, fb = a.run(g_open, "f"), b.run(g_open, "f")
    a.run(g_lock, fa, SETLK, WR, 0, 1)
    b.run(g_lock, fb, SETLK, WR, 1, 1)
    waiter = background(a.run, g_lock, fa, SETLKW, WR, 1, 1)      # a waits for b
    assert a.run(g_parked, 1)
    assert b.run(g_errno, g_lock, fb, SETLKW, WR, 0, 1) == errno.EDEADLK
    b.run(g_lock, fb, SETLK, UN, 1, 1)
    assert waiter.result(timeout=20) is None


def test_timed_out_setlkw_is_eintr_and_leaves_no_waiter(cluster):
    a, b, c = cluster.guests
    fa, fb, fc = (g.run(g_open, "f") for g in (a, b, c))
    a.run(g_lock, fa, SETLK, WR, 0, 0)
    before = b.run(g_notifications)
    t0 = time.monotonic()
    assert b.run(g_errno, g_lock, fb, SETLKW, WR, 0, 0, 0.3) == errno.EINTR
    assert time.monotonic() - t0 >= 0.3
    assert b.run(g_notifications, before + 1) == before + 1    # its -EINTR came as NOTIFY_LOCK
    assert b.run(g_parked, 0, 0)
    a.run(g_lock, fa, SETLK, UN, 0, 0)
    assert c.run(g_errno, g_lock, fc, SETLK, WR, 0, 0) == 0      # nobody took it meanwhile
    assert b.run(g_notifications) == before + 1          # and b was told nothing more
    assert b.run(g_errno, g_lock, fb, SETLKW, RD, 0, 0, 0) == errno.EINTR   # timeout 0: at once


# ----------------------------------------------------------------------------- errno parity

_FLOCK_STRUCT = "hhqqi4x"


def local_lock(fd, cmd, ltype, start=0, length=0, whence=os.SEEK_SET):
    """fcntl(fd, cmd, struct flock) on a local file, returning what fcntl_lock returns."""
    res = fcntl.fcntl(fd, cmd, struct.pack(_FLOCK_STRUCT, ltype, whence, start, length, 0))
    if cmd != GETLK:
        return None
    t, _w, s, n, pid = struct.unpack(_FLOCK_STRUCT, res)
    return (t, s, n, pid)


def _err(fn, *args):
    try:
        r = fn(*args)
    except OSError as exc:
        return exc.errno
    return r if r is None else tuple(r)


def cases_alone(lock, lockf, flock, open_, close):
    """The single-process errno cases, written once for GuestOS and for the local os / fcntl
    (``lock`` has fcntl_lock's signature, ``open_(name, flags)``): ``[(case, errno or result)]``."""
    err = _err
    out = []
    rw, ro, wo = open_("p", os.O_RDWR), open_("p", os.O_RDONLY), open_("p", os.O_WRONLY)
    pa = open_(".", os.O_PATH)
    out.append(("write lock on O_RDONLY", err(lock, ro, SETLK, WR, 0, 1)))
    out.append(("read lock on O_WRONLY", err(lock, wo, SETLKW, RD, 0, 1)))
    out.append(("unlock on O_RDONLY", err(lock, ro, SETLK, UN, 0, 1)))
    out.append(("read lock on O_RDONLY", err(lock, ro, SETLK, RD, 50, 1)))
    out.append(("write lock on O_WRONLY", err(lock, wo, SETLK, WR, 60, 1)))
    out.append(("bad type", err(lock, rw, SETLK, 99, 0, 1)))
    out.append(("bad type on O_RDONLY", err(lock, ro, SETLKW, 99, 0, 1)))
    out.append(("GETLK of F_UNLCK", err(lock, rw, GETLK, UN, 0, 1)))
    out.append(("bad whence", err(lock, rw, SETLK, WR, 0, 1, 7)))
    out.append(("start before 0", err(lock, rw, SETLK, WR, -1, 1)))
    out.append(("length before 0", err(lock, rw, SETLK, WR, 2, -3)))
    out.append(("length before, fine", err(lock, rw, SETLK, WR, 5, -3)))
    out.append(("to the largest offset", err(lock, rw, SETLK, WR, 1, (1 << 63) - 1)))
    out.append(("past the largest offset", err(lock, rw, SETLK, WR, 2, (1 << 63) - 1)))
    out.append(("bad fd", err(lock, 999, SETLK, WR, 0, 1)))
    out.append(("O_PATH fd", err(lock, pa, SETLK, RD, 0, 1)))
    out.append(("bad cmd", err(lock, rw, 12345, WR, 0, 1)))
    out.append(("GETLK free", err(lock, rw, GETLK, WR, 0, 5)))
    out.append(("SEEK_END", err(lock, rw, SETLK, WR, -1, 1, os.SEEK_END)))
    out.append(("lockf bad cmd", err(lockf, rw, 77, 0)))
    out.append(("lockf bad cmd, bad fd", err(lockf, 999, 77, 0)))
    out.append(("lockf F_LOCK on O_RDONLY", err(lockf, ro, os.F_LOCK, 0)))
    out.append(("lockf F_TEST alone", err(lockf, rw, os.F_TEST, 0)))
    out.append(("flock bad op", err(flock, rw, 0)))
    out.append(("flock bad fd", err(flock, 999, fcntl.LOCK_SH)))
    out.append(("flock O_PATH", err(flock, pa, fcntl.LOCK_SH)))
    out.append(("flock on O_RDONLY", err(flock, ro, fcntl.LOCK_EX | fcntl.LOCK_NB)))
    out.append(("flock on the other file", err(flock, rw, fcntl.LOCK_EX | fcntl.LOCK_NB)))
    for fd in (rw, ro, wo, pa):
        close(fd)
    return out


def cases_contended(lock, lockf, flock, open_, close, *, f_test=True):
    """Cases while another process holds a write lock on bytes 0..9 of "p" and an exclusive
    flock of it."""
    err = _err
    out = []
    rw, ro = open_("p", os.O_RDWR), open_("p", os.O_RDONLY)
    out.append(("SETLK conflict", err(lock, rw, SETLK, RD, 5, 1)))
    out.append(("SETLK beside it", err(lock, rw, SETLK, WR, 10, 1)))
    got = lock(rw, GETLK, RD, 0, 0)
    out.append(("GETLK conflict", (got[0], got[1], got[2])))
    out.append(("GETLK past it", err(lock, rw, GETLK, WR, 20, 0)))
    out.append(("lockf F_TLOCK conflict", err(lockf, rw, os.F_TLOCK, 1)))
    if f_test:
        out.append(("lockf F_TEST conflict", err(lockf, rw, os.F_TEST, 0)))
    out.append(("flock conflict", err(flock, ro, fcntl.LOCK_SH | fcntl.LOCK_NB)))
    for fd in (rw, ro):
        close(fd)
    return out


def guest_ops(gos):
    def lock(fd, cmd, ltype, start, length, whence=os.SEEK_SET):
        return gos.fcntl_lock(fd, cmd, ltype, start, length, whence)

    def open_(name, flags):
        return gos.open(name, flags | (0 if flags == os.O_PATH else os.O_CREAT), 0o644)
    return lock, gos.lockf, gos.flock, open_, gos.close


def guest_hold(gos, name):
    """Hold a write lock on bytes 0..9 and an exclusive flock of ``name`` (the fd stays open)."""
    fd = gos.open(name, os.O_RDWR)
    gos.fcntl_lock(fd, SETLK, WR, 0, 10)
    gos.flock(fd, fcntl.LOCK_EX)
    return fd


def _guest_alone(gos):
    return cases_alone(*guest_ops(gos))


def _guest_contended(gos):
    return cases_contended(*guest_ops(gos))


def _local_holder(conn, path):
    fd = os.open(path, os.O_RDWR)
    local_lock(fd, SETLK, WR, 0, 10)
    fcntl.flock(fd, fcntl.LOCK_EX)
    conn.send("held")
    conn.recv()
    os.close(fd)


def local_cases(tmp_path):
    """Both case lists on a local file, another local process holding the locks."""
    def open_(name, flags):
        return os.open(tmp_path / name, flags | (0 if flags == os.O_PATH else os.O_CREAT), 0o644)
    ops = (local_lock, os.lockf, fcntl.flock, open_, os.close)
    alone = cases_alone(*ops)
    ctx = _context()
    a, b = ctx.Pipe()
    p = ctx.Process(target=_local_holder, args=(b, str(tmp_path / "p")), daemon=True)
    p.start()
    try:
        assert a.recv() == "held"
        return alone, cases_contended(*ops)
    finally:
        a.send("done")
        p.join(10)


def test_errno_parity_with_fcntl_on_a_local_file(share, tmp_path):
    local_dir = tmp_path / "local"
    local_dir.mkdir()
    alone, contended = local_cases(local_dir)
    with Cluster.start(Topology(share, guests=2, cache="none")) as c:
        g, other = c.guests
        assert g.run(_guest_alone) == alone
        other.run(guest_hold, "p")
        assert g.run(_guest_contended) == contended
    by_case = dict(alone + contended)
    assert by_case["write lock on O_RDONLY"] == errno.EBADF and by_case["bad type"] == errno.EINVAL
    assert by_case["SETLK conflict"] == errno.EAGAIN and by_case["GETLK conflict"] == (WR, 0, 10)
    assert by_case["lockf F_TEST conflict"] == errno.EACCES
