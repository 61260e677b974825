"""The interface between the FUSE client and whatever carries its requests.

The guest's virtio-fs device (``guest.device``) implements it over virtqueues; unit tests of the
client layer implement it in-process against ``fuse.server.Server``.  The client never sees
descriptors or queues, only requests and replies.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence


@dataclass(frozen=True, slots=True)
class Credentials:
    """Who makes a request: goes into ``fuse_in_header`` (uid, gid, pid)."""

    uid: int
    gid: int
    pid: int


class Transport(Protocol):
    """Carries FUSE requests to a FUSE server and brings back its replies."""

    #: the largest READ/WRITE payload one request may carry (bytes); the client splits larger I/O
    max_io: int

    def request(self, opcode: int, nodeid: int, args: Sequence[bytes | memoryview], reply_size: int,
                creds: Credentials | None = None) -> tuple[int, bytes]:
        """Send one request and wait for its reply.

        ``args`` are the request's argument bytes after ``fuse_in_header`` (the transport builds the
        header: len, opcode, unique, nodeid, uid/gid/pid, total_extlen 0).  ``reply_size`` is the
        largest reply body expected after ``fuse_out_header``.  Returns ``(error, body)`` where
        ``error`` is ``fuse_out_header.error`` (0 or a negative errno) and ``body`` the bytes after the
        out header (``out_header.len - 16`` of them).  Raises ``OSError(ENOTCONN)`` when the device or
        host is gone (at once, never a hang), ``OSError(EINTR)`` if interrupted.
        """
        ...

    def send_noreply(self, opcode: int, nodeid: int, args: Sequence[bytes | memoryview]) -> None:
        """Send a request that has no reply (FORGET, BATCH_FORGET, INTERRUPT) on the hiprio queue."""
        ...


class InterruptibleTransport(Transport, Protocol):
    """A transport that can carry a request the server may *park* (SETLKW over a virtio-fs
    notification queue: ``vfscluster.fuse.locking``).  Optional: the client uses it when the
    transport has the method, else :meth:`Transport.request`."""

    def request_interruptible(self, opcode: int, nodeid: int, args: Sequence[bytes | memoryview],
                              reply_size: int, creds: Credentials | None = None, *,
                              timeout: float | None = None) -> tuple[int, bytes]:
        """Like :meth:`Transport.request`, but a reply that parks the request (error +1) is not
        returned: the transport waits for the request's notification and returns its error.  If
        it is still parked after ``timeout`` seconds (None: no limit), or the caller's
        KeyboardInterrupt comes, the transport sends FUSE_INTERRUPT and waits for the outcome:
        ``-EINTR`` if the server withdrew the request, else what the server sent (0: it was
        granted meanwhile; the caller then holds the lock).  After a KeyboardInterrupt,
        KeyboardInterrupt is raised once the outcome is known.  ENOTCONN (raised, or as the
        error) when the device goes away meanwhile."""
        ...
