"""An in-process :class:`~vfscluster.guest.transport.Transport`: requests go straight to a
:class:`~vfscluster.fuse.server.Server` in the same process (no queues, no shared memory).

Each request is laid out as a driver would lay it out: ``fuse_in_header`` + args as the
device-readable stream (a :class:`~vfscluster.virtio.chain.Reader`), a buffer of
``16 + reply_size`` bytes as the device-writable one (a :class:`~vfscluster.virtio.chain.Writer`).
Thread-safe: any number of threads may send at once (the server must be, too).

For tests it counts requests by opcode, keeps every FORGET/BATCH_FORGET it carried, can answer
chosen opcodes with an error itself (``refuse``: opcode -> errno, the server never sees them), can
be told to rewrite replies (``reply_hook``) and can be disconnected (then every request is
ENOTCONN).
"""

from __future__ import annotations

import collections
import errno
import itertools
import os
import threading
from collections.abc import Callable, Sequence

from vfscluster.errors import RemoteProtocolError
from vfscluster.fuse.abi import InHeader, Opcode, OutHeader
from vfscluster.guest.transport import Credentials
from vfscluster.virtio.chain import Reader, Writer

__all__ = ["LoopbackTransport", "make_loopback"]

ReplyHook = Callable[[int, int, bytes], "tuple[int, bytes]"]


class LoopbackTransport:
    """Carries requests to ``server.handle`` directly.  ``max_io`` is what the client may put in
    one READ/WRITE; ``creds`` the default header credentials."""

    def __init__(self, server, *, max_io: int = 1 << 20, creds: Credentials | None = None) -> None:
        self.server = server
        self.max_io = max_io
        self.creds = creds or Credentials(os.geteuid(), os.getegid(), os.getpid())
        self.reply_hook: ReplyHook | None = None
        self.refuse: dict[int, int] = {}
        self.counts: collections.Counter[int] = collections.Counter()
        self.forgets: list[tuple[int, int]] = []      # (nodeid, nlookup), in the order sent
        self._unique = itertools.count(1)
        self._lock = threading.Lock()
        self._closed = False

    def close(self) -> None:
        """Disconnect: every later request fails with ENOTCONN."""
        self._closed = True

    def _header(self, opcode: int, nodeid: int, args: Sequence,
                creds: Credentials | None) -> tuple[int, list]:
        c = creds or self.creds
        with self._lock:
            unique = next(self._unique)
            self.counts[opcode] += 1
        length = InHeader.SIZE + sum(len(memoryview(a).cast("B")) for a in args)
        hdr = InHeader(length, int(opcode), unique, nodeid, c.uid, c.gid, c.pid, 0).pack()
        return unique, [hdr, *args]

    def request(self, opcode: int, nodeid: int, args: Sequence, reply_size: int,
                creds: Credentials | None = None) -> tuple[int, bytes]:
        if self._closed:
            raise OSError(errno.ENOTCONN, os.strerror(errno.ENOTCONN))
        unique, bufs = self._header(opcode, nodeid, args, creds)
        if opcode in self.refuse:
            return -self.refuse[opcode], b""
        out = bytearray(OutHeader.SIZE + reply_size)
        written = self.server.handle(Reader([memoryview(b).cast("B") for b in bufs]),
                                     Writer([memoryview(out)]))
        hdr = OutHeader.unpack_from(out)
        if hdr.unique != unique or not OutHeader.SIZE <= hdr.len <= len(out) or written != hdr.len:
            raise RemoteProtocolError(f"bad reply to {Opcode(opcode).name}: {hdr} "
                                      f"(unique {unique}, {written} bytes written)")
        error, body = hdr.error, bytes(out[OutHeader.SIZE:hdr.len])
        if self.reply_hook is not None:
            error, body = self.reply_hook(opcode, error, body)
        return error, body

    def send_noreply(self, opcode: int, nodeid: int, args: Sequence) -> None:
        if self._closed:
            raise OSError(errno.ENOTCONN, os.strerror(errno.ENOTCONN))
        _, bufs = self._header(opcode, nodeid, args, None)
        data = b"".join(bytes(b) for b in args)
        with self._lock:
            if opcode == Opcode.FORGET:
                self.forgets.append((nodeid, int.from_bytes(data[:8], "little")))
            elif opcode == Opcode.BATCH_FORGET:
                count = int.from_bytes(data[:4], "little")
                for i in range(count):
                    one = data[8 + 16 * i:24 + 16 * i]
                    self.forgets.append((int.from_bytes(one[:8], "little"),
                                         int.from_bytes(one[8:], "little")))
        written = self.server.handle(Reader([memoryview(b).cast("B") for b in bufs]), Writer([]))
        if written:
            raise RemoteProtocolError(f"{Opcode(opcode).name} got a reply of {written} bytes")


def make_loopback(shared_dir, *, cache: str = "none", max_io: int = 1 << 20,
                  max_write: int | None = None):
    """``(PassthroughFs, Server, LoopbackTransport)`` serving ``shared_dir``."""
    from vfscluster.fuse.passthrough import PassthroughFs
    from vfscluster.fuse.server import Server
    fs = PassthroughFs(shared_dir, cache=cache)
    server = Server(fs) if max_write is None else Server(fs, max_write=max_write)
    return fs, server, LoopbackTransport(server, max_io=max_io)
