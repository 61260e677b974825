"""The lock requests of a FUSE session (GETLK, SETLK, SETLKW, INTERRUPT): a mixin of
:class:`~vfscluster.fuse.server.Server`.

Blocking locks follow the unmerged virtio-fs series "virtiofs: blocking posix locks" (Vivek
Goyal; RFC 2019, v2 with Ioannis Angelakopoulos 2021-06, resent 2021-09-30).  When the session
has a :attr:`Server.notifier` that is ``enabled`` (the guest negotiated the virtio-fs
notification queue: ``vfscluster.host.notify``) and the file system can park a lock request (it
has ``setlkw(ctx, nodeid, fh, owner, lock, flags, done) -> bool`` and ``interrupt(session,
unique) -> bool``, as :class:`~vfscluster.fuse.passthrough.PassthroughFs` does):

* INIT grants POSIX_LOCKS and FLOCK_LOCKS when the guest offers them;
* a SETLKW that has to wait is answered at once with a bare ``fuse_out_header`` whose ``error``
  is **+1** (:data:`QUEUED`).  This is how the series signals "wait for the notification":
  patch "virtiofs: Support blocking posix locks (fcntl(F_SETLKW))" says "I have overloaded the
  fuse_out_header->error field. If value is ->error is 1, that's a signal to caller to wait for
  lock notification", and its ``virtio_fs_request_complete`` moves such a request to
  ``wait_reqs`` instead of ending it;
* when the wait ends, the notifier sends ``FUSE_NOTIFY_LOCK{unique, error}`` on the notification
  queue; the guest ends the request with that ``error`` (0: the lock is held).  The notification
  may overtake the +1 reply (they travel on different queues): the guest must accept both orders
  (the series' last patch, "virtiofs: Handle reordering of reply and notification event");
* FUSE_INTERRUPT (hiprio queue, ``fuse_interrupt_in{unique}``, no reply) of a parked SETLKW
  withdraws it, which completes it with ``NOTIFY_LOCK`` error ``-EINTR``.  If the grant won the
  race, the interrupt finds nothing parked: the grant's ``NOTIFY_LOCK`` error 0 stands (the lock
  is held, as a Linux F_SETLKW granted before the signal was noticed), and the INTERRUPT is
  logged and ignored, like an INTERRUPT of any unknown unique.

Without an enabled notifier nothing changes: no lock flags at INIT, and SETLKW is
``fs.setlk(sleep=True)`` (PassthroughFs: granted now, or EOPNOTSUPP where it would wait).
"""

from __future__ import annotations

import logging

from ..errors import RemoteProtocolError
from . import abi
from .abi import InitFlags

log = logging.getLogger(__name__)

#: fuse_out_header.error of a SETLKW parked until its FUSE_NOTIFY_LOCK
QUEUED = 1
LOCK_FLAGS = InitFlags.POSIX_LOCKS | InitFlags.FLOCK_LOCKS
_OUT = abi.OutHeader.STRUCT
_OUT_SIZE = abi.OutHeader.SIZE


class LockRequests:
    """GETLK / SETLK / SETLKW / INTERRUPT of a :class:`~vfscluster.fuse.server.Server` (which
    provides ``fs``, ``session``, ``notifier``, ``_exact``, ``_reply``)."""

    def interrupt(self, unique: int) -> None:
        """INTERRUPT of request ``unique``: a SETLKW the file system parked is withdrawn (and
        completed with -EINTR by its notification); otherwise (already answered, unknown) the
        INTERRUPT is logged and ignored: the request finishes as it would have."""
        cancel = getattr(self.fs, "interrupt", None)
        if cancel is not None and cancel(self.session, unique):
            log.debug("session %d: parked request %d interrupted", self.session, unique)
            return
        log.info("session %d: INTERRUPT of unique %d: no parked request (answered already, or "
                 "unknown): ignored", self.session, unique)

    def parks_locks(self) -> bool:
        """Can a SETLKW of this session wait (module docstring)?"""
        n = self.notifier
        return n is not None and n.enabled and hasattr(self.fs, "setlkw")

    def _lk(self, body):
        fh, owner, start, end, ltype, pid, lk_flags = self._exact(abi.LkIn, body)
        return fh, owner, abi.FileLock(start, end, ltype, pid), lk_flags

    def _getlk(self, ctx, nodeid, body, writer) -> int:
        fh, owner, lock, flags = self._lk(body)
        got = self.fs.getlk(ctx, nodeid, fh, owner, lock, flags)
        return self._reply(writer, ctx.unique, abi.LkOut(got).pack())

    def _setlk(self, ctx, nodeid, body, writer, sleep: bool = False) -> int:
        fh, owner, lock, flags = self._lk(body)
        self.fs.setlk(ctx, nodeid, fh, owner, lock, flags, sleep)
        return self._reply(writer, ctx.unique)

    def _setlkw(self, ctx, nodeid, body, writer) -> int:
        if not self.parks_locks():
            return self._setlk(ctx, nodeid, body, writer, sleep=True)
        fh, owner, lock, flags = self._lk(body)
        if writer is None or writer.available() < _OUT_SIZE:
            raise RemoteProtocolError("SETLKW without room for its reply")
        notifier, unique = self.notifier, ctx.unique
        parked = self.fs.setlkw(ctx, nodeid, fh, owner, lock, flags,
                                lambda error: notifier.lock_done(unique, error))
        if not parked:
            return self._reply(writer, unique)
        writer.write(_OUT.pack(_OUT_SIZE, QUEUED, unique))
        return _OUT_SIZE
