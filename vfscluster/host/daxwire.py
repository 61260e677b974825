"""DAX wired into the host (DESIGN §5): FUSE_SETUPMAPPING / FUSE_REMOVEMAPPING of a session turned into
``SHMEM_MAP`` / ``SHMEM_UNMAP`` requests on that session's vhost-user back-end channel, and truncation
safety (every guest mapping a range past a shrinking truncate gets zero pages there first).

:class:`DaxService` is the glue between :class:`~vfscluster.host.dax.DaxRegistry` (sans-IO: what to
send) and the world: ``channel_of(sid)`` gives a session's :class:`~vfscluster.vhost_user.BackendChannel`
(None if it has none), and the passthrough file system's inodes and handles.

Window size: the host has ONE window size (``HostServer(window_size=…)``, vfs-hostd ``--dax-window``,
QEMU's ``cache-size``), advertised as shared-memory region 0 by GET_SHMEM_CONFIG.  A guest reserves that
much or less (its topology ``window_size`` caps it) and never asks for a range past its own window; a
SHMEM_MAP past a guest's window is refused by that guest (ack != 0) and the SETUPMAPPING fails EIO.

Acks are waited for with a bound (``ack_timeout`` seconds, a socket timeout under the channel's lock): a
guest that does not answer has its back-end channel closed (logged) and the host goes on — a truncation is
never held up for long by a dead or stuck guest.  A session without a channel gets EOPNOTSUPP for
SETUPMAPPING: a guest that was only stalled reads and writes through FUSE_READ / FUSE_WRITE from then
on (its DAX falls back on EOPNOTSUPP) instead of failing every access that needs a new range.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import stat
import threading
from collections.abc import Callable, Iterator, Sequence

from ..fuse.abi import SetupmappingFlags
from ..vhost_user import BackendReq
from .dax import NO_FH, DaxRegistry

log = logging.getLogger(__name__)

#: Default DAX window a host advertises (QEMU's usual ``cache-size=1G``).
DEFAULT_WINDOW = 1 << 30
DEFAULT_ACK_TIMEOUT = 5.0


def _err(code: int, what: str) -> OSError:
    return OSError(code, f"{os.strerror(code)}: {what}")


class DaxService:
    """The host's DAX: one per host server, shared by every session (module docstring).  Thread-safe.

    ``channel_of(sid)`` returns the session's back-end channel or None.  ``fs`` is the
    :class:`~vfscluster.fuse.passthrough.PassthroughFs` (its ``inodes`` and ``handles``)."""

    def __init__(self, fs, window_size: int, channel_of: Callable[[int], object], *,
                 alignment: int = os.sysconf("SC_PAGE_SIZE"), ack_timeout: float = DEFAULT_ACK_TIMEOUT) -> None:
        self.fs = fs
        self.registry = DaxRegistry(window_size, alignment)
        self.window_size = window_size
        self.channel_of = channel_of
        self.ack_timeout = ack_timeout
        self._lock = threading.Lock()
        self.stats = dict.fromkeys(("setups", "removes", "revoked", "restored", "ack_failures"), 0)
        if fs is not None:
            fs.inodes.add_observer(self)

    # -- the inode store's observer --------------------------------------------------------------

    def added(self, inode) -> None:
        pass

    def removed(self, inode) -> None:
        """An inode leaves the host's store (its fd still open): if its file was deleted, the
        ranges a shrink revoked can never come back — its ``(st_dev, st_ino)`` may be reused."""
        if inode.key not in self.registry.revoked_keys:
            return
        try:
            gone = os.fstat(inode.fd).st_nlink == 0
        except OSError as exc:
            log.info("DAX: checking inode %s as it leaves the store: %s", inode.key, exc)
            gone = True
        if gone:
            self.registry.forget_revoked(inode.key)

    @property
    def active(self) -> bool:
        """Whether any session has mapped anything (truncations then must revoke first)."""
        return bool(self.registry.sessions())

    def maps_writable(self, sid: int, inode_key) -> bool:
        """Does session ``sid`` map any page of the inode writable?"""
        hd = self.registry.sessions().get(sid)
        return hd is not None and hd.maps_writable(inode_key)

    # -- sending -------------------------------------------------------------------------------

    def _send(self, sid: int, req: BackendReq, msg, fds: Sequence[int] = ()) -> int:
        """One request with NEED_REPLY on the session's channel; its ack (0 = done).  A missing
        channel is -1; a channel that fails or does not answer within ``ack_timeout`` is closed
        and -1."""
        ch = self.channel_of(sid)
        if ch is None:
            return -1
        sock = ch.conn.socket
        try:
            sock.settimeout(self.ack_timeout)          # bounds the wait for the ack (every sender's)
            ack = ch.request(req, msg, list(fds), need_reply=True)
        except Exception as exc:                       # timeout, EOF, EPIPE, a garbled reply
            log.warning("session %d: DAX %s not acknowledged (%s): back-end channel closed", sid, req.name, exc)
            with self._lock:
                self.stats["ack_failures"] += 1
            with contextlib.suppress(OSError):
                sock.shutdown(2)
            return -1
        return ack

    def _send_maps(self, sid: int, reqs) -> None:
        """Send a revocation's or a restore's SHMEM_MAP requests (acked, bounded; ``_send`` closes a
        channel that fails).  A guest's refusal is only logged: the host goes on either way."""
        for r in reqs:
            ack = self._send(sid, BackendReq.SHMEM_MAP, r.msg, [r.fd])
            if ack != 0:
                log.info("session %d: DAX %s of %#x+%#x: ack %d", sid, "revocation" if r.zero else "restore",
                         r.msg.shm_offset, r.msg.len, ack)

    # -- FUSE_SETUPMAPPING / FUSE_REMOVEMAPPING ------------------------------------------------

    def setupmapping(self, ctx, nodeid: int, fh: int, foffset: int, length: int, flags: int,
                     moffset: int) -> None:
        """Map the file's range into the session's window; returns once the guest acked (EIO if it
        refused: the range is then unmapped again).  ``fh`` NO_FH (what Linux sends) maps by inode:
        the host opens the file O_RDWR for a WRITE mapping, else O_RDONLY (as virtiofsd)."""
        inode = self.fs.inodes.get(ctx.session, nodeid)
        if inode.fmt != stat.S_IFREG:
            raise _err(errno.EINVAL, f"SETUPMAPPING of nodeid {nodeid}, not a regular file")
        write = bool(flags & SetupmappingFlags.WRITE)
        opened = None
        if fh == NO_FH:
            opened = os.open(f"/proc/self/fd/{inode.fd}", (os.O_RDWR if write else os.O_RDONLY) | os.O_CLOEXEC)
            fd, writable = opened, None
        else:
            fd, writable = self.fs.handles.get(ctx.session, fh).fd, None
        hd = self.registry.session(ctx.session)
        try:
            with self.registry.inode_lock(inode.key), hd.send_lock:
                if hd.closed:
                    raise _err(errno.ENOTCONN, f"DAX session {ctx.session} has ended")
                reqs = hd.setup(fd, writable, inode.key, foffset, length, flags, moffset)
                for r in reqs:
                    ack = self._send(ctx.session, BackendReq.SHMEM_MAP, r.msg, [r.fd])
                    if ack != 0:
                        for u in hd.remove([(moffset, length)]):
                            self._send(ctx.session, BackendReq.SHMEM_UNMAP, u)
                        if ack < 0:     # no channel (any more): DAX is over for this session
                            raise _err(errno.EOPNOTSUPP, f"session {ctx.session} has no back-end "
                                                         "channel for SHMEM_MAP")
                        raise _err(errno.EIO, f"the guest refused SHMEM_MAP {moffset:#x}+{length:#x} (ack {ack})")
        finally:
            if opened is not None:
                os.close(opened)
        with self._lock:
            self.stats["setups"] += 1

    def removemapping(self, ctx, items: Sequence[tuple[int, int]]) -> None:
        """Unmap the ranges (SHMEM_UNMAP each, acked), then return."""
        hd = self.registry.session(ctx.session)
        with hd.send_lock:
            if hd.closed:
                raise _err(errno.ENOTCONN, f"DAX session {ctx.session} has ended")
            for u in hd.remove(items):
                self._send(ctx.session, BackendReq.SHMEM_UNMAP, u)
        with self._lock:
            self.stats["removes"] += 1

    def end_session(self, sid: int, *, alive: bool) -> None:
        """The session ends: forget its mappings; ``alive`` (DESTROY, INIT again) also unmaps them in
        the guest, else (a disconnect) the session id ends for good and nothing waits."""
        def send(unmaps) -> None:
            for u in unmaps:
                self._send(sid, BackendReq.SHMEM_UNMAP, u)
        self.registry.drop_session(sid, send if alive else None, final=not alive)

    # -- truncation safety ---------------------------------------------------------------------

    @contextlib.contextmanager
    def shrinking(self, key, new_size: int | Callable[[], int | None]) -> Iterator[None]:
        """Hold the inode's DAX lock around a truncation; before it, every session mapping file pages
        past ``new_size`` (an int, or a callable giving it — None: no shrink) gets them replaced by
        zeros, acked (bounded).  A no-op lock when no session maps anything."""
        if not self.active:
            yield
            return
        with self.registry.inode_lock(key):
            size = new_size() if callable(new_size) else new_size
            if size is not None:
                n = self.registry.revoke(key, max(0, size), self._send_maps)
                with self._lock:
                    self.stats["revoked"] += n
            yield

    def grown(self, key, path_fd: int) -> None:
        """After a call that may have grown the file (``path_fd``: its inode's O_PATH fd): every
        session whose pages of it a shrink revoked gets those now inside the file mapped again
        (acked, bounded), so its live mmap buffers see the file again.  Cheap when nothing of the
        file is revoked (a set lookup)."""
        if key not in self.registry.revoked_keys:
            return
        with self.registry.inode_lock(key):
            try:
                fd, writable = os.open(f"/proc/self/fd/{path_fd}", os.O_RDWR | os.O_CLOEXEC), True
            except OSError:
                fd, writable = os.open(f"/proc/self/fd/{path_fd}", os.O_RDONLY | os.O_CLOEXEC), False
            try:
                n = self.registry.restore(key, os.fstat(fd).st_size, fd, writable, self._send_maps)
                with self._lock:
                    self.stats["restored"] += n
            finally:
                os.close(fd)


__all__ = ["DEFAULT_ACK_TIMEOUT", "DEFAULT_WINDOW", "DaxService"]
