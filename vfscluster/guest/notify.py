"""The guest's end of the virtio-fs notification queue, and the SETLKW requests that wait on it
(:class:`ParkedRequests`, a mixin of the device: ``request_interruptible``).

Wire: :mod:`vfscluster.host.notify` (queue 1 when VIRTIO_FS_F_NOTIFICATION is negotiated,
device-writable buffers of ``notify_buf_size`` bytes, ``fuse_out_header{unique 0, error = code}``
+ payload) and :mod:`vfscluster.fuse.locking` (a SETLKW answered with error +1 is parked until a
``FUSE_NOTIFY_LOCK{unique, error}``).

:class:`NotifyQueue` keeps ``count`` buffers posted, parses what the device returns, hands each
``FUSE_NOTIFY_LOCK`` to :class:`LockWaits` and posts the buffer again.  Anything else — a
notification with a nonzero unique, another code, a bad length, an error outside ``-4095..0``, the
unique of no waiting request — is refused with a warning and the buffer goes back to the device.

:class:`LockWaits` is where a SETLKW waits.  Its entry is made *before* the request is published,
so a notification that overtakes the +1 reply (they travel on different queues) is kept in the
entry and found by the waiter when the reply arrives (the series' "Handle reordering of reply and
notification event").
"""

from __future__ import annotations

import errno
import logging
import os
import queue
import struct
import threading
import time
from collections.abc import Sequence

from ..fuse import abi
from ..fuse.abi import InterruptIn, Opcode
from ..fuse.locking import QUEUED
from ..virtio.driver_queue import DriverQueue, QueueClosed
from .ram import PAGE, GuestRam
from .transport import Credentials

log = logging.getLogger(__name__)

_OUT = struct.Struct("<IiQ")
_LOCK = abi.NotifyLockOut.STRUCT
#: the smallest buffer that holds what the host sends (header + fuse_notify_lock_out)
MIN_BUF_SIZE = _OUT.size + _LOCK.size
MAX_BUF_SIZE = PAGE
NOTIFY_BUFFERS = 16        # the series' VQ_NOTIFY_ELEMS


class LockWait:
    """One SETLKW in flight.  ``parked``: the reply said "queued"; ``notified``: its
    notification came, with ``error`` (0 or a negative errno), and ``done`` was released."""

    __slots__ = ("unique", "done", "error", "notified", "parked")

    def __init__(self, unique: int) -> None:
        self.unique = unique
        self.done = threading.Lock()       # held until the notification: acquire() waits for it
        self.done.acquire()
        self.error = 0
        self.notified = False
        self.parked = False

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for the notification; False after ``timeout`` seconds (None: no limit).  Once
        True, ``notified`` stays True (``error`` is set before ``done`` is released)."""
        if self.notified:
            return True
        return self.done.acquire(timeout=-1 if timeout is None else max(0.0, timeout))


class LockWaits:
    """The SETLKW requests of one device, by unique.  Thread-safe, and safe for a waiter that a
    KeyboardInterrupt hits anywhere: only C-level primitives (a lock used as a context manager,
    a SimpleQueue) are used on the waiter's side, so an asynchronous exception cannot leave one
    half-updated (``threading.Condition`` / ``Event`` are Python code and could be)."""

    def __init__(self) -> None:
        self._mutex = threading.Lock()
        self._bell: queue.SimpleQueue = queue.SimpleQueue()    # rung when a request is parked
        self._waits: dict[int, LockWait] = {}
        self._failed = 0

    def register(self, unique: int) -> LockWait:
        """An entry for ``unique`` (before its request is published).  The device's error if
        it failed already (ENOTCONN)."""
        w = LockWait(unique)
        with self._mutex:
            if self._failed:
                raise OSError(self._failed, os.strerror(self._failed))
            self._waits[unique] = w
        return w

    def unregister(self, unique: int) -> None:
        with self._mutex:
            self._waits.pop(unique, None)

    def mark_parked(self, w: LockWait) -> None:
        """The reply said "queued"."""
        w.parked = True
        self._bell.put(w.unique)

    def deliver(self, unique: int, error: int) -> bool:
        """A FUSE_NOTIFY_LOCK: False if no request ``unique`` waits for one (it was never sent,
        or it is answered already)."""
        with self._mutex:
            w = self._waits.get(unique)
            if w is None or w.notified:
                return False
            w.error, w.notified = error, True
        w.done.release()
        return True

    def fail_all(self, err: int) -> None:
        """The device is gone: every waiting request ends with ``-err``, later ones fail."""
        with self._mutex:
            self._failed = err
            waits = [w for w in self._waits.values() if not w.notified]
            for w in waits:
                w.error, w.notified = -err, True
        for w in waits:
            w.done.release()
        self._bell.put(None)

    def parked(self) -> int:
        """How many requests the host parked and has not answered yet."""
        with self._mutex:
            return sum(1 for w in self._waits.values() if w.parked and not w.notified)

    def wait_parked(self, n: int, timeout: float | None = None) -> bool:
        """Wait until at least ``n`` requests are parked (monitoring and tests); False on
        timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.parked() < n:
            try:
                self._bell.get(timeout=None if deadline is None
                               else max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                return self.parked() >= n
        return True


class NotifyQueue:
    """The driver side of the notification queue: ``count`` buffers of ``buf_size`` bytes in guest
    RAM, always posted; used ones are parsed (:meth:`reap`, from the completion thread) and
    posted again."""

    def __init__(self, ram: GuestRam, queue: DriverQueue, buf_size: int, waits: LockWaits, *,
                 count: int = NOTIFY_BUFFERS, name: str = "virtio-fs") -> None:
        self.check_size(buf_size)
        self.ram = ram
        self.queue = queue
        self.buf_size = buf_size
        self.waits = waits
        self.name = name
        self.count = min(count, queue.size)
        self.npages = (self.count * buf_size + PAGE - 1) // PAGE
        self.page = ram.pages.alloc(self.npages)
        self.base = self.page * PAGE
        self.received = 0
        self.refused = 0
        self._handled = threading.Condition()
        self._closed = False

    @staticmethod
    def check_size(buf_size: int) -> None:
        """EINVAL unless ``buf_size`` (the device's notify_buf_size) is usable."""
        if not MIN_BUF_SIZE <= buf_size <= MAX_BUF_SIZE:
            raise OSError(errno.EINVAL, f"notify_buf_size {buf_size} not in {MIN_BUF_SIZE}..{MAX_BUF_SIZE}")

    def post_all(self) -> None:
        """Give every buffer to the device (at start)."""
        self._post(range(self.count))

    def _post(self, slots) -> None:
        q = self.queue
        kick = False
        for slot in slots:
            off = self.base + slot * self.buf_size
            self.ram.view[off:off + _OUT.size] = bytes(_OUT.size)
            try:
                kick |= q.add([], [(self.ram.gpa + off, self.buf_size)], slot, wait=False)
            except QueueClosed:
                return
        if kick:
            q.kick()

    def reap(self) -> int:
        """Take what the device returned, deliver it, post the buffers again; how many."""
        got: list[tuple[int, int]] = []
        q = self.queue
        with q.lock:
            q.reap(lambda slot, length: got.append((slot, length)))
        for slot, length in got:
            self._handle(slot, length)
        if got and not self._closed:
            self._post(slot for slot, _ in got)
        return len(got)

    def _handle(self, slot: int, length: int) -> None:
        off = self.base + slot * self.buf_size
        buf = self.ram.view[off:off + self.buf_size]
        why = None
        if length < _OUT.size or length > self.buf_size:
            why = f"used length {length}"
        else:
            n, code, unique = _OUT.unpack_from(buf)
            if unique != 0:
                why = f"unique {unique} (a notification has unique 0)"
            elif code != abi.NOTIFY_LOCK:
                why = f"code {code} (only NOTIFY_LOCK = {abi.NOTIFY_LOCK} is known)"
            elif n != MIN_BUF_SIZE or n > length:
                why = f"NOTIFY_LOCK of {n} bytes (used length {length})"
            else:
                req, error = _LOCK.unpack_from(buf, _OUT.size)
                if not -4095 <= error <= 0:
                    why = f"NOTIFY_LOCK for unique {req} with error {error}"
                elif not self.waits.deliver(req, error):
                    why = f"NOTIFY_LOCK for unique {req}, which waits for none"
        if why is not None:
            log.warning("%s: notification refused: %s", self.name, why)
        with self._handled:
            if why is None:
                self.received += 1
            else:
                self.refused += 1
            self._handled.notify_all()

    def wait_handled(self, n: int, timeout: float | None = None) -> bool:
        """Wait until ``n`` notifications (received + refused) have been handled; False on
        timeout (monitoring and tests)."""
        with self._handled:
            return self._handled.wait_for(lambda: self.received + self.refused >= n, timeout)

    def close(self) -> None:
        """Give the buffers' pages back (the queue is stopped)."""
        if not self._closed:
            self._closed = True
            self.ram.pages.free(self.page, self.npages)


class ParkedRequests:
    """Requests the host may park (SETLKW), waited for through the notification queue: a mixin of
    :class:`~vfscluster.guest.device.VirtioFsDevice` (which provides ``notify``, ``lock_waits``,
    ``config``, ``queues``, ``_unique``, ``_pick_queue``, ``_submit``, ``_wait``, ``_finish``,
    ``request``)."""

    def request_interruptible(self, opcode: int, nodeid: int, args: Sequence, reply_size: int,
                              creds: Credentials | None = None, *,
                              timeout: float | None = None) -> tuple[int, bytes]:
        """:meth:`Transport.request_interruptible`: a SETLKW the host may park, waited for as the
        module docstring says.  Returns ``(0 | -errno, body)``: ``-EINTR`` when ``timeout``
        seconds passed and the host withdrew the request, 0 when it was granted (also if the
        grant won the race with the interrupt).  On the caller's KeyboardInterrupt the request is
        withdrawn the same way and KeyboardInterrupt is raised once the outcome is known (the
        lock is then held if the grant won).  Any other request, or no notification queue: a
        plain :meth:`request` (the host answers SETLKW at once then)."""
        if self.notify is None or opcode != Opcode.SETLKW:
            return self.request(opcode, nodeid, args, reply_size, creds)
        deadline = None if timeout is None else time.monotonic() + max(0.0, timeout)
        unique = next(self._unique)
        w = self.lock_waits.register(unique)       # before the request: the notification may come first
        try:
            q = self._pick_queue()
            p = self._submit(q, opcode, nodeid, args, reply_size, creds, sync=True, unique=unique)
            stopped = self._wait_through(q, p)
            error, body = self._finish(p, queued_ok=True)
            if error == QUEUED:
                try:
                    self.lock_waits.mark_parked(w)
                    if not stopped:
                        w.wait(None if deadline is None else deadline - time.monotonic())
                except KeyboardInterrupt:
                    stopped = True
                if not w.notified:
                    self._interrupt(unique)
                    stopped |= _wait_through(w)
                error, body = w.error, b""
            elif w.notified:
                log.warning("virtio-fs <%s>: NOTIFY_LOCK for unique %d, whose reply was %d (not "
                            "queued): ignored", self.config.tag, unique, error)
            if stopped:
                raise KeyboardInterrupt
            return error, body
        finally:
            self.lock_waits.unregister(unique)

    def _interrupt(self, unique: int) -> None:
        """FUSE_INTERRUPT of ``unique`` on hiprio (its own unique is ``unique | 1``, as Linux's
        FUSE_INT_REQ_BIT makes it; the request's are even)."""
        try:
            self._submit(self.queues[0], Opcode.INTERRUPT, 0, [InterruptIn(unique).pack()], -1,
                         None, unique=unique | 1)
        except OSError as exc:     # the device is gone: fail_all ends the wait
            log.info("virtio-fs <%s>: INTERRUPT of %d not sent: %s", self.config.tag, unique, exc)

    def _wait_through(self, q: DriverQueue, p) -> bool:
        """Wait for ``p`` even through KeyboardInterrupt (the host answers a SETLKW at once);
        True if one came meanwhile."""
        stopped = False
        while True:
            try:
                if not p.done:
                    self._wait(q, p)
                return stopped
            except KeyboardInterrupt:
                stopped = True


def _wait_through(w: LockWait) -> bool:
    """``w.wait()`` that goes on through KeyboardInterrupt; True if one came."""
    stopped = False
    while not w.notified:
        try:
            w.wait()
        except KeyboardInterrupt:
            stopped = True
    return stopped
