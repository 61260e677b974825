"""The driver and device halves of a split ring talking in one process (device in a thread)."""

import os
import select
import threading

import pytest

from vfscluster.errors import QueueError
from vfscluster.virtio.chain import Reader, Writer
from vfscluster.virtio.device_queue import QueueState
from vfscluster.virtio.driver_queue import DriverQueue, QueueClosed

from virtio_helpers import anon_memory
from threads import run_threads

GPA = 0x10000


def make_pair(size, event_idx):
    mem, mm = anon_memory(gpa=GPA)
    ram = memoryview(mm)
    user = mem.regions[0].user_addr
    dq = DriverQueue(ram, 0, size, gpa_base=GPA, user_base=user, event_idx=event_idx)
    st = QueueState(size=size, desc_addr=dq.desc_user, avail_addr=dq.avail_user, used_addr=dq.used_user,
                    event_idx=event_idx, indirect=True, enabled=True)
    dq.kick_fd = st.kick_fd = os.eventfd(0, os.EFD_NONBLOCK)
    dq.call_fd = st.call_fd = os.eventfd(0, os.EFD_NONBLOCK)
    return mem, ram, dq, st.build(mem)


class EchoDevice(threading.Thread):
    """Reverses every request into its reply buffer."""

    def __init__(self, q):
        super().__init__(daemon=True)
        self.q = q
        self.stop_r, self.stop_w = os.pipe()

    def run(self):
        q = self.q
        while True:
            while True:
                chain = q.pop()
                if chain is None:
                    break
                data = Reader(chain.readable).read_all()
                w = Writer(chain.writable)
                w.write(data[::-1])
                with q.lock:
                    q.add_used(chain.head, w.written)
                    if q.needs_notification():
                        q.notify()
            if q.enable_kicks():
                continue
            r, _, _ = select.select([q.state.kick_fd, self.stop_r], [], [])
            if self.stop_r in r:
                return
            try:
                os.eventfd_read(q.state.kick_fd)
            except BlockingIOError:
                pass
            q.disable_kicks()

    def close(self):
        os.write(self.stop_w, b"x")
        self.join(10)


class Reaper(threading.Thread):
    def __init__(self, dq):
        super().__init__(daemon=True)
        self.dq = dq
        self.results = {}
        self.done = threading.Condition()
        self.stop_r, self.stop_w = os.pipe()

    def complete(self, token, length):
        with self.done:
            self.results[token] = length
            self.done.notify_all()

    def run(self):
        while True:
            r, _, _ = select.select([self.dq.call_fd, self.stop_r], [], [])
            if self.stop_r in r:
                return
            try:
                os.eventfd_read(self.dq.call_fd)
            except BlockingIOError:
                pass
            with self.dq.lock:
                self.dq.reap(self.complete)     # re-arms used_event and looks again

    def close(self):
        os.write(self.stop_w, b"x")
        self.join(10)


@pytest.mark.parametrize("event_idx", [True, False])
def test_full_ring_many_threads(event_idx):
    """Queue of 8, 64 requests from 8 threads: submitters wait for room, all replies right."""
    mem, ram, dq, q = make_pair(8, event_idx)
    dev, reaper = EchoDevice(q), Reaper(dq)
    dev.start()
    reaper.start()
    with dq.lock:
        dq.enable_calls()
    errors = []

    def worker(t):
        try:
            for k in range(8):
                msg = f"t{t}-k{k}".encode()
                off = 0x40000 + (t * 8 + k) * 256
                ram[off:off + len(msg)] = msg
                token = (t, k, off, len(msg))
                if dq.add([(GPA + off, len(msg))], [(GPA + off + 128, 64)], token):
                    dq.kick()
        except Exception as exc:   # reported below
            errors.append(exc)

    run_threads(worker, 8, 30)
    with reaper.done:
        assert reaper.done.wait_for(lambda: len(reaper.results) == 64, 30)
    assert not errors
    for (t, k, off, n), length in reaper.results.items():
        assert length == n
        assert bytes(ram[off + 128:off + 128 + n]) == f"t{t}-k{k}".encode()[::-1]
    assert dq.full_waits > 0           # the ring really was full at times
    reaper.close()
    dev.close()


def test_index_wraps_past_65535():
    mem, ram, dq, q = make_pair(4, True)
    dq.avail_idx = dq._kicked_at = dq.last_used = 65534
    q.next_avail = q.next_used = q._signalled_used = 65534
    import struct
    struct.pack_into("<H", dq.avail, 2, 65534)
    struct.pack_into("<H", dq.used, 2, 65534)
    got = []
    for i in range(5):
        dq.add([(GPA + 0x1000, 4)], [(GPA + 0x2000, 4)], i)
        chain = q.pop()
        q.add_used(chain.head, 4)
        with dq.lock:
            dq.reap(lambda tok, n: got.append(tok))
    assert got == [0, 1, 2, 3, 4]
    assert dq.avail_idx == 3


def test_avail_index_jump_is_refused():
    mem, ram, dq, q = make_pair(4, True)
    import struct
    struct.pack_into("<H", dq.avail, 2, 100)
    with pytest.raises(QueueError, match="jumped"):
        q.pop()


def test_event_idx_suppresses_kicks_while_device_polls():
    mem, ram, dq, q = make_pair(8, True)
    assert q.enable_kicks() is False
    assert dq.add([(GPA + 0x1000, 4)], [], 1) is True          # device asked for a kick
    q.disable_kicks()
    assert dq.add([(GPA + 0x1000, 4)], [], 2) is False         # device is polling: no kick
    q.pop(), q.pop()
    assert q.enable_kicks() is False
    assert dq.add([(GPA + 0x1000, 4)], [], 3) is True


def test_close_wakes_waiting_submitter():
    mem, ram, dq, q = make_pair(2, True)
    dq.add([(GPA + 0x1000, 4)], [], 1)
    dq.add([(GPA + 0x1000, 4)], [], 2)
    out = []

    def blocked():
        try:
            dq.add([(GPA + 0x1000, 4)], [], 3)
        except QueueClosed:
            out.append("closed")
    t = threading.Thread(target=blocked)
    t.start()
    dq.close()          # whether the submitter already waits or not, it must get QueueClosed
    t.join(10)
    assert out == ["closed"]


def _garbage_used(dq, head=None, idx=None):
    """Play a device that breaks the used ring: an entry for ``head``, or an index of ``idx``."""
    import struct
    if head is not None:
        struct.pack_into("<II", dq.used, 4 + 8 * (dq.last_used % dq.size), head, 0)
        idx = (dq.last_used + 1) & 0xFFFF
    struct.pack_into("<H", dq.used, 2, idx)


@pytest.mark.parametrize("garbage", ["unknown head", "head twice", "head past the ring", "index jump"])
def test_a_device_that_breaks_the_used_ring_breaks_the_queue(garbage):
    mem, ram, dq, q = make_pair(4, True)
    broken, done = [], []
    dq.on_broken = broken.append
    dq.add([(GPA + 0x1000, 4)], [], "a")
    dq.add([(GPA + 0x1000, 4)], [], "b")
    if garbage == "head twice":
        _serve(q, 1)
        with dq.lock:
            assert dq.reap(lambda tok, n: done.append(tok)) == 1
        _garbage_used(dq, head=q.pop().head - 1)     # "a" again (heads are taken from the top)
    else:
        _garbage_used(dq, **{"unknown head": dict(head=2), "head past the ring": dict(head=70000),
                             "index jump": dict(idx=dq.last_used + 5)}[garbage])
    with dq.lock:
        assert dq.reap(lambda tok, n: done.append(tok)) == 0
    assert dq.closed and len(broken) == 1 and done == (["a"] if garbage == "head twice" else [])
    assert sorted(dq.pending_tokens()) == (["b"] if garbage == "head twice" else ["a", "b"])
    with dq.lock:                                # a closed queue reaps nothing more
        assert dq.reap(lambda tok, n: done.append(tok)) == 0
    with pytest.raises(QueueClosed):
        dq.add([(GPA + 0x1000, 4)], [], "c")



def _fill(dq, ram, count, base=0x40000):
    for k in range(count):
        off = base + k * 256
        ram[off:off + 4] = b"%04d" % k
        dq.add([(GPA + off, 4)], [(GPA + off + 128, 16)], k)


def _serve(q, n):
    """Play the device: return ``n`` chains as used (4 bytes written each)."""
    for _ in range(n):
        chain = q.pop()
        with q.lock:
            q.add_used(chain.head, 4)


@pytest.mark.parametrize("event_idx", [True, False])
def test_full_ring_with_calls_suppressed_reaps_what_is_there(event_idx):
    """Calls suppressed and nobody polling (the guest's hiprio queue, an idle request queue): a
    submitter that finds the ring full reaps with ``on_used`` what the device has returned,
    instead of waiting for a call nobody will make."""
    mem, ram, dq, q = make_pair(8, event_idx)          # room for 4 chains of 2 descriptors
    done = []
    dq.on_used = lambda token, length: done.append((token, length))
    _fill(dq, ram, 4)
    _serve(q, 4)
    with dq.lock:
        dq.suppress_calls()
    assert not q.needs_notification()          # suppressed: the device does not call
    _fill(dq, ram, 1, base=0x50000)            # the ring is full: this one reaps, then goes in
    assert sorted(done) == [(k, 4) for k in range(4)]
    assert dq.full_waits == 1 and dq.in_flight() == 1


@pytest.mark.parametrize("event_idx", [True, False])
def test_full_ring_with_calls_suppressed_asks_for_a_call(event_idx):
    """... and if nothing is there yet, it asks for a call before it sleeps."""
    mem, ram, dq, q = make_pair(8, event_idx)
    done = []
    dq.on_used = lambda token, length: done.append(token)
    _fill(dq, ram, 4)
    with dq.lock:
        dq.suppress_calls()
    t = threading.Thread(target=_fill, args=(dq, ram, 1, 0x50000), daemon=True)
    t.start()
    with dq.lock:                               # wait until the submitter sleeps for room
        assert dq.space.wait_for(lambda: dq.space_waiters == 1, 10)
    _serve(q, 1)
    assert q.needs_notification()               # it asked for a call
    with dq.lock:                               # what the completion thread does on the call
        dq.reap(dq.on_used)
    t.join(10)
    assert not t.is_alive() and done == [0] and dq.in_flight() == 4
