"""vfscluster.host.daxwire: the DAX service's messages reach a guest in the order of the host's table.

A real passthrough file system and real files; the guest's end of the back-end channel is a model
(one layer: what each window range maps after the messages it received, in the order received).
"""

from __future__ import annotations

import errno
import os
import threading

import pytest

from vfscluster.fuse.abi import ROOT_ID, SetupmappingFlags
from vfscluster.fuse.filesystem import Context
from vfscluster.fuse.passthrough import PassthroughFs
from vfscluster.host.dax import NO_FH, is_zero_source
from vfscluster.host.daxwire import DaxService
from vfscluster.vhost_user import BackendReq

pytestmark = pytest.mark.timeout(30)

MiB = 1 << 20
R = 2 * MiB
RW = int(SetupmappingFlags.READ | SetupmappingFlags.WRITE)
CTX = Context(0, 0, 0, 1, 1)


class _Socket:
    def settimeout(self, _t) -> None:
        pass


class _Conn:
    socket = _Socket()


class GuestModel:
    """The guest's end of one session's back-end channel: ``window`` maps each window offset to
    ``"zero"`` or the mapped file's inode number, as the messages leave it.  ``hold(pred)``: the
    next request for which ``pred(req, msg, fds)`` is true waits in ``request`` until ``release``
    (its sender is then inside the send, ``held`` is set)."""

    conn = _Conn()

    def __init__(self) -> None:
        self.window: dict[int, object] = {}
        self.lock = threading.Lock()
        self._pred = None
        self.held = threading.Event()
        self._go = threading.Event()

    def hold(self, pred) -> None:
        self._pred = pred

    def release(self) -> None:
        self._go.set()

    def request(self, req, msg, fds, need_reply=True) -> int:
        pred, self._pred = self._pred, None
        if pred is not None and pred(req, msg, fds):
            self.held.set()
            assert self._go.wait(10), "the held request was never released"
        with self.lock:
            if req == BackendReq.SHMEM_MAP:
                what = "zero" if is_zero_source(fds[0]) else os.fstat(fds[0]).st_ino
                for off in range(msg.shm_offset, msg.shm_offset + msg.len, R):
                    self.window[off] = what
            elif req == BackendReq.SHMEM_UNMAP:
                for off in range(msg.shm_offset, msg.shm_offset + msg.len, R):
                    self.window.pop(off, None)
        return 0


@pytest.fixture
def served(tmp_path):
    for name in ("F", "G"):
        with open(tmp_path / name, "wb") as f:
            f.truncate(2 * R)
    guest = GuestModel()
    with PassthroughFs(str(tmp_path)) as fs:
        svc = DaxService(fs, 8 * R, lambda sid: guest if sid == CTX.session else None)
        fs.dax = svc
        nodes = {}
        for name in ("F", "G"):
            nodeid = fs.lookup(CTX, ROOT_ID, name.encode()).nodeid
            inode = fs.inodes.get(CTX.session, nodeid)
            nodes[name] = (nodeid, inode, os.stat(tmp_path / name).st_ino)
        yield svc, guest, nodes


def _remap_to_g(svc, nodes, errors, remove_first=True):
    """The guest's reuse of range 0 for file G: REMOVEMAPPING then SETUPMAPPING, or (not
    ``remove_first``) a SETUPMAPPING straight over it, which replaces what was there."""
    try:
        if remove_first:
            svc.removemapping(CTX, [(0, R)])
        svc.setupmapping(CTX, nodes["G"][0], NO_FH, 0, R, RW, 0)
    except BaseException as exc:        # the assertion below names it
        errors.append(exc)


def _race(svc, guest, nodes, first, remove_first=True) -> None:
    """``first()`` runs in a thread until its message for window range 0 is inside the send; then
    the guest maps G at range 0 (a second thread, given a second to get as far as it can); then
    the first send goes on."""
    errors: list[BaseException] = []
    a = threading.Thread(target=first)
    a.start()
    assert guest.held.wait(10)
    b = threading.Thread(target=_remap_to_g, args=(svc, nodes, errors, remove_first))
    b.start()
    b.join(1.0)                       # with the fix it waits for the first send; without, it is done
    guest.release()
    a.join(10)
    b.join(10)
    assert not a.is_alive() and not b.is_alive() and not errors
    table = {m.window_offset: m.file for m in svc.registry.session(CTX.session).mappings()}
    assert table[0] == nodes["G"][1].key
    assert guest.window[0] == nodes["G"][2], "the guest's range 0 does not map G, as the host's table says"


@pytest.mark.parametrize("remove_first", [True, False], ids=["remove-then-setup", "setup-over"])
def test_a_revocation_never_lands_after_the_guest_reused_its_range(served, remove_first):
    """A shrink of F revokes range 0 of the window while the guest, meanwhile, maps G there
    (after a REMOVEMAPPING, or straight over F): the zeros must not cover G (the revocation is
    sent before the guest's requests are served, or finds nothing to revoke)."""
    svc, guest, nodes = served
    svc.setupmapping(CTX, nodes["F"][0], NO_FH, 0, R, RW, 0)
    assert guest.window[0] == nodes["F"][2]
    guest.hold(lambda req, msg, fds: req == BackendReq.SHMEM_MAP and is_zero_source(fds[0]))

    def shrink():
        with svc.shrinking(nodes["F"][1].key, 0):
            os.truncate(f"/proc/self/fd/{nodes['F'][1].fd}", 0)
    _race(svc, guest, nodes, shrink, remove_first)


@pytest.mark.parametrize("remove_first", [True, False], ids=["remove-then-setup", "setup-over"])
def test_a_restore_never_lands_after_the_guest_reused_its_range(served, remove_first):
    """F shrinks under range 0 (zeros), then grows back: the restore of range 0 must not cover G,
    which the guest mapped there meanwhile."""
    svc, guest, nodes = served
    svc.setupmapping(CTX, nodes["F"][0], NO_FH, 0, R, RW, 0)
    fd_path = f"/proc/self/fd/{nodes['F'][1].fd}"
    with svc.shrinking(nodes["F"][1].key, 0):
        os.truncate(fd_path, 0)
    assert guest.window[0] == "zero"
    os.truncate(fd_path, 2 * R)
    guest.hold(lambda req, msg, fds: req == BackendReq.SHMEM_MAP and not is_zero_source(fds[0]))
    _race(svc, guest, nodes, lambda: svc.grown(nodes["F"][1].key, nodes["F"][1].fd), remove_first)


def test_without_a_race_revocation_and_restore_follow_the_file(served):
    """The baseline of the two races: shrink F under range 0 (zeros), grow it (F again)."""
    svc, guest, nodes = served
    svc.setupmapping(CTX, nodes["F"][0], NO_FH, 0, R, RW, 0)
    key, fd = nodes["F"][1].key, nodes["F"][1].fd
    with svc.shrinking(key, 0):
        os.truncate(f"/proc/self/fd/{fd}", 0)
    assert guest.window[0] == "zero" and key in svc.registry.revoked_keys
    os.truncate(f"/proc/self/fd/{fd}", R)
    svc.grown(key, fd)
    assert guest.window[0] == nodes["F"][2] and key not in svc.registry.revoked_keys
    assert svc.stats["revoked"] == 1 and svc.stats["restored"] == 1


def test_a_disconnect_does_not_wait_for_another_threads_ack(served):
    """The guest disconnects while a SETUPMAPPING of its session waits for an ack: dropping the
    session (on the host's loop) returns at once, and the session id stays ended — the late
    request gets ENOTCONN from then on and does not bring the session back."""
    svc, guest, nodes = served
    guest.hold(lambda req, msg, fds: req == BackendReq.SHMEM_MAP)
    errors: list[BaseException] = []
    a = threading.Thread(target=_remap_to_g, args=(svc, nodes, errors, False))
    a.start()
    assert guest.held.wait(10)
    dropped = threading.Thread(target=svc.end_session, args=(CTX.session,), kwargs={"alive": False})
    dropped.start()
    dropped.join(10)
    finished = not dropped.is_alive()
    guest.release()
    a.join(10)
    assert finished, "dropping the session waited for the pending ack"
    assert not svc.active
    with pytest.raises(OSError) as exc:
        svc.setupmapping(CTX, nodes["G"][0], NO_FH, 0, R, RW, 0)
    assert exc.value.errno == errno.ENOTCONN
    with pytest.raises(OSError) as exc:
        svc.removemapping(CTX, [(0, R)])
    assert exc.value.errno == errno.ENOTCONN
    assert not svc.active


def test_a_request_that_outlived_its_session_sends_nothing(served):
    """A SETUPMAPPING that took its session's table just before a DESTROY dropped it (same id, the
    guest still there) finds it closed once it holds the send lock: ENOTCONN, and nothing is
    mapped in the guest after the DESTROY's unmap of the window."""
    svc, guest, nodes = served
    svc.setupmapping(CTX, nodes["F"][0], NO_FH, 0, R, RW, 0)
    hd = svc.registry.session(CTX.session)
    real_session = svc.registry.session
    svc.registry.session = lambda sid: hd             # the request took it before the drop...
    svc.end_session(CTX.session, alive=True)          # ...which the DESTROY now does
    assert hd.closed and guest.window == {}
    with pytest.raises(OSError) as exc:
        svc.setupmapping(CTX, nodes["G"][0], NO_FH, 0, R, RW, 0)
    assert exc.value.errno == errno.ENOTCONN and guest.window == {}
    svc.registry.session = real_session
    svc.setupmapping(CTX, nodes["G"][0], NO_FH, 0, R, RW, 0)    # a new session after the INIT
    assert guest.window[0] == nodes["G"][2]
