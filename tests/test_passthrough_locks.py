"""vfscluster.fuse.passthrough.locks: the host's lock service (HostLocks over the LockTable)."""

from __future__ import annotations

import errno
import fcntl
import os
import struct

import pytest

from vfscluster.fuse.abi import LK_FLOCK, FileLock
from vfscluster.fuse.passthrough.locks import OFFSET_MAX, HostLocks, lock_key

RD, WR, UN = fcntl.F_RDLCK, fcntl.F_WRLCK, fcntl.F_UNLCK
EOF_ = OFFSET_MAX


@pytest.fixture
def file(tmp_path):
    p = tmp_path / "f"
    p.write_bytes(b"x" * 100)
    fds = {m: os.open(p, m) for m in (os.O_RDWR, os.O_RDONLY, os.O_WRONLY)}
    yield p, fds
    for fd in fds.values():
        os.close(fd)


class Done:
    """A parked request's completion: records every call."""

    def __init__(self):
        self.calls = []

    def __call__(self, error):
        self.calls.append(error)


def _errno(fn):
    with pytest.raises(OSError) as info:
        fn()
    return info.value.errno


def test_getlk_reports_another_sessions_lock_with_its_pid(file):
    _, fds = file
    fd = fds[os.O_RDWR]
    h, key = HostLocks(), lock_key(fd)
    h.setlk(key, fd, 1, 10, 7, FileLock(10, 19, WR, 4242), 0)
    got = h.getlk(key, 2, 7, FileLock(0, EOF_, RD, 0), 0)         # same lock_owner, other session
    assert got == FileLock(10, 19, WR, 4242)
    assert h.getlk(key, 1, 7, FileLock(0, EOF_, WR, 0), 0).type == UN     # its own lock: no conflict
    assert h.getlk(key, 2, 7, FileLock(20, 30, WR, 0), 0) == FileLock(20, 30, UN, 0)
    assert _errno(lambda: h.getlk(key, 2, 7, FileLock(0, 1, UN, 0), 0)) == errno.EINVAL
    assert _errno(lambda: h.getlk(key, 2, 7, FileLock(0, 1, RD, 0), LK_FLOCK)) == errno.EINVAL
    assert _errno(lambda: h.setlk(key, fd, 2, 11, 7, FileLock(15, 15, RD, 0), 0)) == errno.EAGAIN
    assert _errno(lambda: h.setlk(key, fd, 2, 11, 7, FileLock(5, 4, RD, 0), 0)) == errno.EINVAL
    assert _errno(lambda: h.setlk(key, fd, 2, 11, 7, FileLock(0, 0, 9, 0), 0)) == errno.EINVAL


def test_open_mode_is_checked_like_check_fmode_for_setlk(file):
    _, fds = file
    h = HostLocks()
    ro, wo = fds[os.O_RDONLY], fds[os.O_WRONLY]
    key = lock_key(ro)
    assert _errno(lambda: h.setlk(key, ro, 1, 1, 1, FileLock(0, 0, WR, 0), 0)) == errno.EBADF
    assert _errno(lambda: h.setlk(key, wo, 1, 2, 1, FileLock(0, 0, RD, 0), 0)) == errno.EBADF
    h.setlk(key, ro, 1, 1, 1, FileLock(0, 0, RD, 0), 0)
    h.setlk(key, wo, 1, 2, 1, FileLock(1, 1, WR, 0), 0)
    h.setlk(key, ro, 1, 1, 1, FileLock(0, EOF_, UN, 0), 0)            # unlock needs no mode
    h.setlk(key, ro, 1, 1, 0, FileLock(0, EOF_, WR, 0), LK_FLOCK)     # flock needs no mode


def test_the_host_takes_no_lock_on_the_host_file(file):
    _, fds = file
    fd = fds[os.O_RDWR]
    h = HostLocks()
    h.setlk(lock_key(fd), fd, 1, 1, 1, FileLock(0, EOF_, WR, 0), 0)
    h.setlk(lock_key(fd), fd, 1, 1, 1, FileLock(0, EOF_, WR, 0), LK_FLOCK)
    probe = struct.pack("hhqqi4x", WR, os.SEEK_SET, 0, 0, 0)
    other = os.open(f"/proc/self/fd/{fd}", os.O_RDWR)
    try:
        got = fcntl.fcntl(other, fcntl.F_OFD_GETLK, probe)
        assert struct.unpack("hhqqi4x", got)[0] == UN          # the host kernel knows of no lock
        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)       # nor of a flock
    finally:
        os.close(other)


def test_parked_request_is_completed_once_by_the_grant(file):
    _, fds = file
    fd = fds[os.O_RDWR]
    h, key, done = HostLocks(), lock_key(fd), Done()
    h.setlk(key, fd, 1, 1, 1, FileLock(0, 9, WR, 0), 0)
    assert h.setlkw(key, fd, 2, 2, 1, FileLock(5, 5, WR, 0), 0, 100, done) is True
    assert h.parked() == 1 and h.parked(2) == 1 and h.parked(1) == 0 and done.calls == []
    assert _errno(lambda: h.setlkw(key, fd, 2, 2, 1, FileLock(5, 5, WR, 0), 0, 100, Done())) == errno.EINVAL
    h.release_owner(key, 1, 1)                                   # FLUSH of the holder
    assert done.calls == [0] and h.parked() == 0
    assert h.cancel(2, 100) is False and done.calls == [0]      # the grant won: nothing more
    assert h.getlk(key, 1, 1, FileLock(5, 5, RD, 0), 0).type == WR
    assert h.setlkw(key, fd, 2, 2, 1, FileLock(6, 6, WR, 0), 0, 101, done) is False   # granted now
    assert done.calls == [0]


def test_interrupt_withdraws_with_eintr_and_leaves_nothing(file):
    _, fds = file
    fd = fds[os.O_RDWR]
    h, key, done = HostLocks(), lock_key(fd), Done()
    h.setlk(key, fd, 1, 1, 1, FileLock(0, 0, WR, 0), 0)
    assert h.setlkw(key, fd, 2, 2, 1, FileLock(0, 0, RD, 0), 0, 7, done)
    assert h.cancel(2, 7) is True and done.calls == [-errno.EINTR]
    assert h.cancel(2, 7) is False and h.parked() == 0 and h.table.waiters() == []
    h.release_owner(key, 1, 1)
    assert done.calls == [-errno.EINTR]                           # no late grant
    assert h.table.locks(key) == []


def test_deadlock_between_sessions_is_edeadlk(file):
    _, fds = file
    fd = fds[os.O_RDWR]
    h, key = HostLocks(), lock_key(fd)
    h.setlk(key, fd, 1, 1, 1, FileLock(0, 0, WR, 0), 0)
    h.setlk(key, fd, 2, 2, 1, FileLock(1, 1, WR, 0), 0)
    assert h.setlkw(key, fd, 1, 1, 1, FileLock(1, 1, WR, 0), 0, 10, Done())
    assert _errno(lambda: h.setlkw(key, fd, 2, 2, 1, FileLock(0, 0, WR, 0), 0, 20, Done())) == errno.EDEADLK
    assert h.parked() == 1                                        # the refused one is not kept


def test_released_file_and_ended_session_complete_their_waiters(file):
    _, fds = file
    fd = fds[os.O_RDWR]
    h, key = HostLocks(), lock_key(fd)
    flock_wait, posix_wait, quiet = Done(), Done(), Done()
    h.setlk(key, fd, 1, 1, 0, FileLock(0, EOF_, WR, 0), LK_FLOCK)
    h.setlk(key, fd, 1, 1, 5, FileLock(0, 0, WR, 0), 0)
    assert h.setlkw(key, fd, 2, 2, 0, FileLock(0, EOF_, RD, 0), LK_FLOCK, 1, flock_wait)
    h.release_file(2, 2)                      # its own file went while it waited
    assert flock_wait.calls == [-errno.EBADF]
    assert h.setlkw(key, fd, 2, 3, 5, FileLock(0, 0, RD, 0), 0, 2, posix_wait)
    h.release_session(2)                      # DESTROY: the guest is told
    assert posix_wait.calls == [-errno.ENOTCONN]
    assert h.setlkw(key, fd, 3, 4, 5, FileLock(0, 0, RD, 0), 0, 3, quiet)
    h.release_session(3, tell=False)          # gone: nobody to tell
    assert quiet.calls == [] and h.parked() == 0
    h.release_session(1)
    assert h.table.counts() == {"keys": 0, "posix": 0, "flock": 0, "waiters": 0}


def test_shutting_down_fails_the_parked_requests_before_any_release_grants_them(file):
    _, fds = file
    fd = fds[os.O_RDWR]
    h, key = HostLocks(), lock_key(fd)
    posix_wait, flock_wait = Done(), Done()
    h.setlk(key, fd, 1, 1, 5, FileLock(0, 0, WR, 0), 0)
    h.setlk(key, fd, 1, 1, 0, FileLock(0, EOF_, WR, 0), LK_FLOCK)
    assert h.setlkw(key, fd, 2, 2, 5, FileLock(0, 0, WR, 0), 0, 1, posix_wait)
    assert h.setlkw(key, fd, 2, 2, 0, FileLock(0, EOF_, RD, 0), LK_FLOCK, 2, flock_wait)
    h.shut_down()
    assert posix_wait.calls == flock_wait.calls == [-errno.ENOTCONN] and h.parked() == 0
    h.release_session(1)                      # the holder's session ends: nobody is granted
    assert posix_wait.calls == flock_wait.calls == [-errno.ENOTCONN]
    assert h.table.counts()["waiters"] == 0


def test_a_failing_completion_is_logged_not_raised(file, caplog):
    _, fds = file
    fd = fds[os.O_RDWR]
    h, key = HostLocks(), lock_key(fd)

    def broken(error):
        raise RuntimeError("notification path is down")
    h.setlk(key, fd, 1, 1, 1, FileLock(0, 0, WR, 0), 0)
    assert h.setlkw(key, fd, 2, 2, 1, FileLock(0, 0, WR, 0), 0, 9, broken)
    h.setlk(key, fd, 1, 1, 1, FileLock(0, 0, UN, 0), 0)         # the grant: its callback fails
    assert "completing lock request" in caplog.text
    assert h.table.locks(key)[0].owner == (2, 1) and h.parked() == 0
