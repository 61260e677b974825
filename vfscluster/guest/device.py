"""The guest's virtio-fs device: config, virtqueues in guest RAM, the vhost-user frontend, completion.

It implements the client's :class:`~vfscluster.guest.transport.Transport`: a request becomes a chain
of two buffers in guest RAM (device-readable ``fuse_in_header`` + args, device-writable
``fuse_out_header`` + reply space), published on a request queue and kicked (respecting EVENT_IDX).
The submitting thread spins briefly on the used ring — reaping for everyone it finds — and then
sleeps; a completion thread reaps when the host calls.  A full ring makes the submitter wait for the
next used buffer.  If the host goes away (the vhost-user socket hangs up) every pending and every later
request fails with ``ENOTCONN`` at once.

Queue indexes follow Linux and QEMU: 0 = hiprio (FORGET, BATCH_FORGET, INTERRUPT), 1..N = requests
— unless the backend offers ``VIRTIO_FS_F_NOTIFICATION`` (vfs-hostd does; QEMU-era backends and the C
virtiofsd do not) together with the CONFIG protocol feature, and the device is configured with
``notifications`` (the default): then the device negotiates it, reads ``notify_buf_size`` from the
backend's config space (GET_CONFIG, 44 bytes), and queue 1 is the notification queue, kept stocked
with buffers (:mod:`.notify`), the request queues 2..N+1.  ``queues`` is always in vring order
(``queues[i].index == i``); ``request_queues`` are the request queues.

Blocking locks (:meth:`VirtioFsDevice.request_interruptible`, :mod:`vfscluster.fuse.locking`): a
SETLKW the host parks (reply error +1) waits for its ``FUSE_NOTIFY_LOCK`` on the notification queue,
the notification being accepted before or after the reply.  A waiter that gives up (its ``timeout``,
or the caller's KeyboardInterrupt) sends ``FUSE_INTERRUPT`` on the hiprio queue — only once the reply
said "queued", so the host always knows the unique it is about — and then waits for the outcome,
which the host always sends: ``-EINTR`` if it withdrew the request, ``0`` if the grant won the race
(then the lock is held).  A device that disconnects or shuts down ends every wait with ENOTCONN.

The vhost-user set-up (QEMU's order, feature negotiation, what a lying backend gets): :mod:`.devsetup`;
VIRTIO shared-memory regions (DESIGN §1) and the back-end channel: :mod:`.regions` (mixins).
"""

from __future__ import annotations

import errno
import itertools
import logging
import os
import select
import struct
import threading
import time
from dataclasses import dataclass
from typing import Callable, Sequence

from ..errors import RemoteProtocolError
from ..fuse.locking import QUEUED
from ..virtio.driver_queue import DriverQueue, QueueClosed
from ..virtio.ring import layout
from ..virtio.spin import SpinBudget
from ..virtio.fs_config import check_tag, config_space
from .devsetup import HIPRIO, DeviceSetup
from .memcopy import PIECE, read_out, write_in
from .pending import Pending, ThreadBuffer
from .notify import NOTIFY_BUFFERS, LockWaits, NotifyQueue, ParkedRequests
from .ram import PAGE, GuestRam
from .regions import SHMEM_FEATURES, SharedRegions, ShmemHandler
from .transport import Credentials

log = logging.getLogger(__name__)

__all__ = ["DeviceConfig", "VirtioFsDevice", "PendingRequest", "ShmemHandler", "SHMEM_FEATURES"]

IN_HEADER = struct.Struct("<IIQQIIIHH")   # fuse_in_header, 40 bytes
OUT_HEADER = struct.Struct("<IiQ")        # fuse_out_header, 16 bytes
MAX_IO = 1 << 20
#: how long a submitter spins for its reply before sleeping: it must cover the host's wake-up
#: (~50 µs across vCPUs here) plus its work, or both sides settle into sleeping on every request
GUEST_SPIN_NS = 200_000


@dataclass(frozen=True, slots=True)
class DeviceConfig:
    """virtio-fs device configuration (virtio spec §5.11.4): ``tag`` and ``num_request_queues``;
    ``notifications``: negotiate the notification queue when the backend offers it."""

    tag: str
    num_request_queues: int = 1
    queue_size: int = 128
    notifications: bool = True

    def __post_init__(self) -> None:
        check_tag(self.tag)
        if not isinstance(self.num_request_queues, int) or self.num_request_queues < 1:
            raise OSError(errno.EINVAL, f"virtio-fs num_request_queues must be >= 1, "
                                        f"got {self.num_request_queues!r}")
        qs = self.queue_size
        if not isinstance(qs, int) or qs < 2 or qs > 32768 or qs & (qs - 1):
            raise OSError(errno.EINVAL, f"queue size must be a power of two in 2..32768, got {qs!r}")

    def config_space(self) -> bytes:
        """The 40-byte ``struct virtio_fs_config``."""
        return config_space(self.tag.encode(), self.num_request_queues)


def _ids() -> tuple[int, int, int]:
    return os.getuid(), os.getgid(), os.getpid()


_IDS = [_ids()]                 # this process's (uid, gid, pid) for request headers


def _refresh_ids() -> None:
    _IDS[0] = _ids()


os.register_at_fork(after_in_child=_refresh_ids)


class VirtioFsDevice(DeviceSetup, SharedRegions, ParkedRequests):
    """A virtio-fs device of one guest, driven over vhost-user by this (frontend) process."""

    def __init__(self, ram: GuestRam, config: DeviceConfig, *, spin_ns: int | None = None) -> None:
        self.ram = ram
        self.config = config
        self.max_io = MAX_IO
        self.queues: list[DriverQueue] = [self._new_queue(config.queue_size, i)
                                          for i in range(1 + config.num_request_queues)]
        # the notification queue's ring, used only if the feature is negotiated
        self._notify_ring = self._new_queue(NOTIFY_BUFFERS, 1) if config.notifications else None
        self.notify: NotifyQueue | None = None
        self.notify_buf_size = 0
        self.lock_waits = LockWaits()
        #: called with the errno when the device fails for good (the host went away, the rings broke)
        self.on_failure: list[Callable[[int], None]] = []
        self.first_request = 1
        spin = GUEST_SPIN_NS if spin_ns is None else spin_ns
        self._spin = [SpinBudget(max_ns=spin, window_ns=4 * spin) for _ in self.queues]
        self._unique = itertools.count(2, 2)
        self._affinity = threading.local()
        self._tls = threading.local()
        self._broken: dict[int, int] = {}       # queue index -> errno its requests fail with
        self._next_queue = itertools.count()
        self._stop_r, self._stop_w = os.pipe()
        self.frontend = None
        self.disconnected = False
        self.connected = False
        self._completer: threading.Thread | None = None
        self.features = 0
        self.protocol_features = 0
        self._init_regions()

    def _new_queue(self, size: int, index: int) -> DriverQueue:
        ram = self.ram
        base = ram.alloc_static(layout(size)[3], 4096)
        return DriverQueue(ram.view, base, size, gpa_base=ram.gpa, user_base=ram.user_addr,
                           event_idx=True, index=index)

    @property
    def request_queues(self) -> list[DriverQueue]:
        """The request queues (after hiprio, and after the notification queue if there is one)."""
        return self.queues[self.first_request:]

    # -- Transport -----------------------------------------------------------------------------
    def _pick_queue(self) -> DriverQueue:
        try:
            return self.queues[self._affinity.q]
        except AttributeError:
            n = len(self.queues) - self.first_request
            self._affinity.q = self.first_request + next(self._next_queue) % n
            return self.queues[self._affinity.q]

    def _submit(self, q: DriverQueue, opcode: int, nodeid: int, args: Sequence, reply_size: int,
                creds: Credentials | None, sync: bool = False, unique: int | None = None,
                spinning: bool = False) -> Pending:
        if self.disconnected or not self.connected:
            raise OSError(errno.ENOTCONN, os.strerror(errno.ENOTCONN))
        if q.index in self._broken:
            err = self._broken[q.index]
            raise OSError(err, os.strerror(err))
        in_len = 40
        for a in args:
            in_len += len(a)
        out_size = 16 + reply_size if reply_size >= 0 else 0
        if unique is None:
            unique = next(self._unique)
        owner = None
        if sync and in_len <= PAGE and out_size <= PAGE:
            try:
                owner = self._tls.buf
            except AttributeError:
                owner = self._tls.buf = ThreadBuffer(self.ram.pages)
            if owner.busy:
                owner = None
        if owner is not None:
            owner.busy = True
            p = owner.pending
            p.out_size, p.unique, p.done, p.error = out_size, unique, False, 0
            base = p.page * PAGE
            out_off = p.out_off
        else:
            in_pages = (in_len + PAGE - 1) // PAGE
            npages = in_pages + (out_size + PAGE - 1) // PAGE
            page = self.ram.pages.alloc(npages)
            base = page * PAGE
            out_off = base + in_pages * PAGE
            p = Pending(page, npages, None, out_off, out_size, unique)
        view = self.ram.view
        uid, gid, pid = _IDS[0] if creds is None else (creds.uid, creds.gid, creds.pid)
        IN_HEADER.pack_into(view, base, in_len, opcode, unique, nodeid, uid, gid, pid, 0, 0)
        off = base + 40
        for a in args:
            n = len(a)
            if n > PIECE:            # a large payload (WRITE): in pieces, see memcopy
                write_in(view, off, a)
            else:
                view[off:off + n] = a
            off += n
        gpa = self.ram.gpa
        try:
            kick = q.add_pair(gpa + base, in_len, gpa + out_off, out_size, p, spinning)
        except QueueClosed:
            self._release(p)
            err = self._broken.get(q.index, errno.ENOTCONN)
            raise OSError(err, os.strerror(err)) from None
        if kick:
            q.kick()
        return p

    def request(self, opcode: int, nodeid: int, args: Sequence, reply_size: int,
                creds: Credentials | None = None) -> tuple[int, bytes]:
        q = self._pick_queue()
        spinning = self._spin_enter(q)
        try:
            p = self._submit(q, opcode, nodeid, args, reply_size, creds, sync=True, spinning=spinning)
        except BaseException:
            if spinning:
                self._spin_exit(q)
            raise
        self._wait(q, p, spinning)
        return self._finish(p)

    def submit(self, opcode: int, nodeid: int, args: Sequence, reply_size: int,
               creds: Credentials | None = None) -> "PendingRequest":
        """Publish a request without waiting (several may be in flight per thread)."""
        q = self._pick_queue()
        return PendingRequest(self, q, self._submit(q, opcode, nodeid, args, reply_size, creds))

    def send_noreply(self, opcode: int, nodeid: int, args: Sequence) -> None:
        """Requests without a reply go on hiprio, whose completions nobody waits for: the host is
        asked not to call for them (a call would wake the completion thread, whose GIL hand-off
        stalls a spinning submitter), and each sender reaps what the host has used so far."""
        q = self.queues[HIPRIO]
        with q.lock:
            q.reap(self._complete)
            q.suppress_calls()
        self._submit(q, opcode, nodeid, args, -1, None)

    def _finish(self, p: Pending, queued_ok: bool = False) -> tuple[int, bytes]:
        """The reply of ``p``: (error, body); ``queued_ok``: error +1 (QUEUED) is accepted."""
        try:
            if p.error:
                raise OSError(p.error, os.strerror(p.error))
            length, error, unique = OUT_HEADER.unpack_from(self.ram.view, p.out_off)
            bad_error = not -4095 <= error <= 0 and not (queued_ok and error == QUEUED)
            if unique != p.unique or length < 16 or length > p.out_size or bad_error:
                raise RemoteProtocolError(f"bad fuse_out_header: len={length} error={error} "
                                          f"unique={unique} (expected {p.unique}, room {p.out_size})")
            body = read_out(self.ram.view, p.out_off + 16, length - 16)   # in pieces: memcopy
            return error, body
        finally:
            self._release(p)

    def _release(self, p: Pending) -> None:
        if p.owner is not None:
            # the thread's lock must be held again for its next request, also if the waiter saw
            # ``done`` and took no lock (request_interruptible); completion released it before
            p.lock.acquire(False)
            p.owner.busy = False
        else:
            self.ram.pages.free(p.page, p.npages)

    # -- waiting -------------------------------------------------------------------------------
    def _complete(self, p: Pending, length: int) -> None:
        p.length = length
        if p.out_size == 0:            # a hiprio request with no reply: just give back its buffer
            p.done = True
            self._release(p)
        else:
            p.lock.release()           # before done: whoever sees done may take the lock back
            p.done = True

    def _spin_enter(self, q: DriverQueue) -> bool:
        """Register a spinner on ``q`` (the first one suppresses calls); False if spinning is off."""
        if not self._spin[q.index].ns:
            return False
        with q.lock:
            q.spinners += 1
            if q.spinners == 1:
                q.suppress_calls()
        return True

    def _spin_exit(self, q: DriverQueue) -> None:
        """The last spinner to leave re-enables calls if a waiter sleeps — for its completion or
        for room in the ring — (and reaps what came meanwhile).  With nobody asleep calls stay
        suppressed: the next submitter spins anyway, and a waiter that goes to sleep later asks
        for calls itself (:meth:`_sleep`, ``DriverQueue.wait_for_space``)."""
        with q.lock:
            q.spinners -= 1
            if q.spinners == 0 and (q.sleepers or q.space_waiters) and q.enable_calls():
                q.reap(self._complete)

    def _sleep(self, q: DriverQueue, p: Pending) -> None:
        """Block until ``p`` completes.  With nobody polling the ring, calls are asked for first
        (and what came before is reaped): the completion thread then reaps for us."""
        with q.lock:
            q.sleepers += 1
            if not q.spinners and q.enable_calls():
                q.reap(self._complete)
        try:
            p.lock.acquire()
        finally:
            with q.lock:
                q.sleepers -= 1

    def _wait(self, q: DriverQueue, p: Pending, spinning: bool | None = None) -> None:
        """Wait for ``p``: spin on the used ring (reaping for everyone), then sleep on its lock.

        Calls are suppressed from before the request is published (``_spin_enter`` in
        :meth:`request`), and stay so until some waiter sleeps, so a quick reply costs the host no
        eventfd write and wakes no completion thread, whose GIL hand-off would stall the spinner.
        """
        if spinning is None:
            spinning = self._spin_enter(q)
        budget = self._spin[q.index]
        if spinning:
            try:
                used = q.used_view()
                deadline = time.perf_counter_ns() + budget.ns
                while not p.done:
                    for _ in range(16):          # look at the used index 16 times per clock read
                        if used[1] != q.last_used:
                            break
                    else:
                        if self.disconnected or time.perf_counter_ns() > deadline:
                            break
                        continue
                    with q.lock:           # blocking: a holder without the GIL gets it back
                        q.reap(self._complete)
            finally:
                self._spin_exit(q)
            if p.done:
                budget.hit()
                p.lock.acquire()
                return
        elif p.done:
            p.lock.acquire()
            return
        t0 = time.perf_counter_ns()
        self._sleep(q, p)
        budget.blocked(time.perf_counter_ns() - t0)

    def _complete_loop(self) -> None:
        poller = select.poll()
        by_fd = {}
        errs = {}
        for q in self.queues:
            poller.register(q.call_fd, select.POLLIN)
            by_fd[q.call_fd] = q
            poller.register(q.err_fd, select.POLLIN)
            errs[q.err_fd] = q
        poller.register(self._stop_r, select.POLLIN)
        sock_fd = self.frontend.conn.fileno()
        poller.register(sock_fd, 0)          # only hang-up / error are reported
        while True:
            for fd, ev in poller.poll():
                if fd == self._stop_r:
                    return
                if fd == sock_fd:
                    if ev & (select.POLLHUP | select.POLLERR | select.POLLNVAL):
                        log.warning("vhost-user backend hung up: failing every request with ENOTCONN")
                        self._fail_all(errno.ENOTCONN)
                        return
                    continue
                if fd in errs:
                    q = errs[fd]
                    log.warning("the host reports queue %d broken: failing its requests with EIO", q.index)
                    poller.unregister(fd)
                    self._fail_queue(q, errno.EIO)
                    if q is self._notify_ring:
                        self.lock_waits.fail_all(errno.EIO)     # no grant can reach them now
                    continue
                q = by_fd[fd]
                try:
                    os.eventfd_read(fd)
                except BlockingIOError:
                    pass
                if q is self._notify_ring and self.notify is not None:
                    self.notify.reap()
                    continue
                with q.lock:
                    q.reap(self._complete)

    def _fail_all(self, err: int) -> None:
        self.disconnected = True
        for q in self.queues:
            self._fail_queue(q, err)
        self.lock_waits.fail_all(err)
        self._tell_failure(err)

    def _tell_failure(self, err: int) -> None:
        for hook in list(self.on_failure):
            try:
                hook(err)
            except Exception:
                log.exception("device failure hook %r", hook)

    def _fail_queue(self, q: DriverQueue, err: int) -> None:
        """Complete every request pending on ``q`` with ``err``; later submitters get it at once."""
        self._broken[q.index] = err        # before close: a submitter woken by it reads this
        q.close()
        with q.lock:
            self._fail_pending(q, err)

    def _device_broke(self, q: DriverQueue, reason: str) -> None:
        """``q.on_broken``: the host broke the ring protocol (lock held; the queue is closed)."""
        log.warning("virtio-fs <%s>: queue %d: %s: failing its requests with EIO", self.config.tag,
                    q.index, reason)
        self._broken[q.index] = errno.EIO   # (a submitter the close woke waits for our lock)
        self._fail_pending(q, errno.EIO)
        if q is self._notify_ring:
            self.lock_waits.fail_all(errno.EIO)     # no grant can reach them now

    def _fail_pending(self, q: DriverQueue, err: int) -> None:
        """Fail what is in flight on closed ``q`` (lock held): its used entries are never reaped.
        A request without a reply (FORGET) has nobody waiting for it: its pages are freed here."""
        for p in q.pending_tokens():
            if isinstance(p, Pending) and not p.done:
                p.error = err
                if p.out_size:
                    p.lock.release()
                    p.done = True
                else:
                    p.done = True
                    self._release(p)

    # -- life cycle ----------------------------------------------------------------------------
    def in_flight(self) -> int:
        """Requests on the request queues (a parked SETLKW is not on a ring: see
        ``lock_waits.parked()``)."""
        return sum(q.in_flight() for q in self.request_queues)

    def drain(self) -> None:
        """Wait until no request is in flight on any request queue (unmount).  Woken by reaping, or
        by a disconnect, which completes everything with ENOTCONN."""
        for q in self.request_queues:
            with q.lock:
                while q.in_flight() and not q.closed:
                    q.wait_for_space()

    def shutdown(self) -> None:
        """Stop the rings (GET_VRING_BASE), close the connection and the completion thread."""
        fe = self.frontend
        if fe is not None and not self.disconnected:
            try:
                for q in self.queues:
                    fe.get_vring_base(q.index)
            except (OSError, RemoteProtocolError, EOFError) as exc:
                log.info("stopping rings: %s", exc)
        self.disconnected = True
        for q in self.queues:
            q.close()
        self.lock_waits.fail_all(errno.ENOTCONN)
        self._tell_failure(errno.ENOTCONN)
        os.write(self._stop_w, b"x")
        if self._completer is not None and self._completer is not threading.current_thread():
            self._completer.join(5)
        self._stop_channel()
        if fe is not None:
            fe.close()
        for q in self.queues:
            for fd in (q.kick_fd, q.call_fd, q.err_fd):
                if fd is not None:
                    os.close(fd)
            q.kick_fd = q.call_fd = q.err_fd = None
        if self.notify is not None:
            self.notify.close()
        os.close(self._stop_r)
        os.close(self._stop_w)


class PendingRequest:
    """A request in flight (from :meth:`VirtioFsDevice.submit`)."""

    def __init__(self, dev: VirtioFsDevice, q: DriverQueue, p: Pending) -> None:
        self._dev, self._q, self._p = dev, q, p

    def wait(self) -> tuple[int, bytes]:
        self._dev._wait(self._q, self._p)
        return self._dev._finish(self._p)

