"""The host's end of a guest's virtio-fs notification queue (``VIRTIO_FS_F_NOTIFICATION``).

Wire (virtio spec §5.11 "fs", and the unmerged "virtiofs: blocking posix locks" series by Vivek
Goyal, 2019-2021, which the spec text follows):

* device feature bit 0 = ``VIRTIO_FS_F_NOTIFICATION``; vfs-hostd offers it, QEMU (whose
  vhost-user-fs passes no device-specific feature through), Linux and the C virtiofsd never
  negotiate it;
* config space: ``tag[36]``, ``num_request_queues`` le32, then ``notify_buf_size`` le32 (44 bytes
  in all; offered with the feature, meaningful once it is negotiated);
* queue 0 = hiprio, queue 1 = the notification queue, request queues from 2 — only when the
  feature is negotiated, else request queues from 1 as Linux and QEMU number them;
* the guest keeps the notification queue stocked with device-writable-only buffers of
  ``notify_buf_size`` bytes; a notification is ``fuse_out_header{len, error = notify code,
  unique = 0}`` + its payload.  ``notify_buf_size`` counts the whole buffer, header included (the
  spec's ``struct virtio_fs_notify``): 16 + ``fuse_notify_lock_out`` (16) = 32 bytes here;
* vfs-hostd sends one kind: ``FUSE_NOTIFY_LOCK`` (7, colliding with mainline ``NOTIFY_RESEND``,
  which is why it only ever travels on this queue) + ``fuse_notify_lock_out{unique, error,
  padding}``: the parked SETLKW ``unique`` finished with ``error`` (0 or a negative errno).

When no buffer is there the notification waits here (FIFO), the queue's kicks are enabled
(``avail_event`` = next avail index), and the kick with which the guest adds a buffer makes the
server loop call :meth:`Notifier.flush`.  No timer anywhere.  A buffer that cannot take a
notification (it has a device-readable part, or is too short) is returned unused (length 0) and
logged.
"""

from __future__ import annotations

import collections
import logging
import struct
import threading

from ..errors import QueueError, RemoteProtocolError
from ..fuse import abi
from ..virtio.chain import Writer

log = logging.getLogger(__name__)

VIRTIO_FS_F_NOTIFICATION = 1 << 0
NOTIFY_QUEUE = 1
NOTIFY_BUF_SIZE = abi.OutHeader.SIZE + abi.NotifyLockOut.SIZE
#: notifications kept for a guest that gives no buffers, before new ones are dropped (logged)
MAX_PENDING = 4096
_OUT = struct.Struct("<IiQ")


class Notifier:
    """Sends notifications to one guest.  ``device`` is its
    :class:`~vfscluster.host.device.FsBackendDevice` (``notify_index``: the negotiated queue, or
    None; ``queues``: the live queues).  Thread-safe: any thread may send."""

    def __init__(self, name: str, device) -> None:
        self.name = name
        self.device = device
        self._lock = threading.Lock()
        self._pending: collections.deque[bytes] = collections.deque()
        self.closed = False
        self.sent = 0
        self.refused = 0
        self.dropped = 0

    @property
    def enabled(self) -> bool:
        """The guest negotiated the notification queue (and the session is not closed)."""
        return not self.closed and self.device.notify_index is not None

    @property
    def pending(self) -> int:
        """Notifications waiting for a buffer."""
        with self._lock:
            return len(self._pending)

    def lock_done(self, unique: int, error: int) -> None:
        """FUSE_NOTIFY_LOCK: the parked request ``unique`` finished with ``error``."""
        self.send(abi.NOTIFY_LOCK, abi.NotifyLockOut(unique, error).pack())

    def send(self, code: int, payload: bytes) -> None:
        """Queue ``fuse_out_header{unique 0, error code}`` + ``payload`` and send what fits."""
        msg = _OUT.pack(_OUT.size + len(payload), code, 0) + payload
        with self._lock:
            if self.closed:
                log.debug("%s: notification %d after close: dropped", self.name, code)
                return
            if len(self._pending) >= MAX_PENDING:
                self.dropped += 1
                log.warning("%s: %d notifications wait for buffers the guest does not give: "
                            "notification %d dropped", self.name, len(self._pending), code)
                return
            self._pending.append(msg)
            self._flush_locked()

    def flush(self) -> int:
        """Send waiting notifications into the buffers the guest has added; how many went."""
        with self._lock:
            return self._flush_locked()

    def close(self) -> None:
        """The guest is gone: drop what waits, send nothing more."""
        with self._lock:
            self.closed = True
            self._pending.clear()

    def _queue(self):
        idx = self.device.notify_index
        if idx is None:
            return None
        q = self.device.queues[idx]
        return None if q is None or q.broken is not None else q

    def _flush_locked(self) -> int:
        if not self._pending or self.closed:
            return 0
        q = self._queue()
        if q is None:                  # not live (yet, or any more): a later flush sends them
            return 0
        sent, returned = 0, False
        while self._pending:
            try:
                chain = q.pop()
            except QueueError as exc:
                log.warning("%s: notification queue is broken: %s", self.name, exc)
                q.mark_broken(str(exc))
                break
            if chain is None:
                if q.enable_kicks():   # a buffer arrived meanwhile
                    continue
                break                  # the guest kicks when it adds one
            msg = self._pending[0]
            length = 0
            if chain.readable or chain.writable_len < len(msg):
                self.refused += 1
                log.warning("%s: notification buffer refused: %d readable and %d writable bytes "
                            "(needs 0 and at least %d)", self.name, chain.readable_len,
                            chain.writable_len, len(msg))
            else:
                try:
                    Writer(chain.writable).write(msg)
                    length = len(msg)
                    self._pending.popleft()
                    sent += 1
                    self.sent += 1
                except RemoteProtocolError as exc:    # cannot happen after the length check
                    log.warning("%s: notification not written: %s", self.name, exc)
            with q.lock:
                q.add_used(chain.head, length)
            returned = True
        if returned:
            with q.lock:
                if q.needs_notification():
                    q.notify()
        return sent
