"""Descriptor chains, walked with limits, and byte-stream readers/writers over them.

A chain published by the driver is untrusted: :func:`walk_chain` checks every index, address and
length, refuses loops (more descriptors than the queue size), nested or misplaced indirect tables
and readable buffers after writable ones, and yields local views of guest memory.
:class:`Reader` and :class:`Writer` then treat the readable and the writable buffers each as one
byte stream (devices must not rely on how the driver split them).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from ..errors import QueueError, RemoteProtocolError
from .memory import GuestMemory
from .ring import DESC, DESC_F_INDIRECT, DESC_F_NEXT, DESC_F_WRITE, DESC_SIZE

MAX_CHAIN_BYTES = 1 << 32   # a chain carrying more than 4 GiB is garbage


@dataclass(slots=True)
class DescriptorChain:
    """A checked chain: its head index and the readable and writable views of guest memory."""

    head: int
    readable: list[memoryview]
    writable: list[memoryview]

    @property
    def readable_len(self) -> int:
        return sum(len(v) for v in self.readable)

    @property
    def writable_len(self) -> int:
        return sum(len(v) for v in self.writable)


def walk_chain(mem: GuestMemory, table: memoryview, qsize: int, head: int, *,
               indirect_ok: bool = True) -> DescriptorChain:
    """Walk the chain starting at descriptor ``head`` of ``table`` (a queue of ``qsize`` entries)."""
    if head >= qsize:
        raise QueueError(f"chain head {head} out of range (queue size {qsize})")
    readable: list[memoryview] = []
    writable: list[memoryview] = []
    total = 0
    idx = head
    count = 0
    limit = qsize
    in_indirect = False
    while True:
        count += 1
        if count > limit:
            raise QueueError(f"descriptor chain from {head} is longer than {limit} (a loop?)")
        addr, length, flags, nxt = DESC.unpack_from(table, idx * DESC_SIZE)
        if flags & DESC_F_INDIRECT:
            if in_indirect:
                raise QueueError("nested indirect descriptor table")
            if not indirect_ok:
                raise QueueError("indirect descriptor without VIRTIO_RING_F_INDIRECT_DESC")
            if flags & DESC_F_NEXT:
                raise QueueError("indirect descriptor with F_NEXT set")
            if length == 0 or length % DESC_SIZE:
                raise QueueError(f"indirect table length {length} is not a multiple of {DESC_SIZE}")
            n = length // DESC_SIZE
            if n > 0xFFFF + 1:
                raise QueueError(f"indirect table of {n} descriptors")
            table = mem.view(addr, length)
            in_indirect = True
            limit = count + n   # the indirect table may hold up to n descriptors of its own
            qsize = n
            idx = 0
            continue
        if length:
            if total + length > MAX_CHAIN_BYTES:
                raise QueueError("descriptor chain carries more than 4 GiB")
            total += length
            view = mem.view(addr, length)
            if flags & DESC_F_WRITE:
                writable.append(view)
            else:
                if writable:
                    raise QueueError("device-readable descriptor after a device-writable one")
                readable.append(view)
        if not flags & DESC_F_NEXT:
            return DescriptorChain(head, readable, writable)
        if nxt >= qsize:
            raise QueueError(f"descriptor next index {nxt} out of range ({qsize})")
        idx = nxt


def _views(bufs) -> list[memoryview]:
    """``bufs`` as a list of memoryviews (walk_chain's views as they are)."""
    return [b if type(b) is memoryview else memoryview(b) for b in bufs]


class Reader:
    """Reads the device-readable buffers of a chain as one byte stream."""

    __slots__ = ("_bufs", "_i", "_off", "_left")

    def __init__(self, bufs: Sequence[memoryview | bytes]) -> None:
        self._bufs = bufs = _views(bufs)
        self._i = 0
        self._off = 0
        self._left = len(bufs[0]) if len(bufs) == 1 else sum(len(b) for b in bufs)

    def available(self) -> int:
        """Bytes not read yet."""
        return self._left

    def read(self, n: int) -> bytes:
        """Exactly ``n`` bytes; :class:`RemoteProtocolError` if the stream is shorter."""
        if n > self._left:
            raise RemoteProtocolError(f"request too short: wanted {n} more bytes, {self._left} left")
        off = self._off
        end = off + n
        if self._i < len(self._bufs):
            buf = self._bufs[self._i]
            if end < len(buf):                # fast path: inside the current buffer
                self._off = end
                self._left -= n
                return bytes(buf[off:end])
            if end == len(buf):
                out = bytes(buf[off:end])
                self._advance(n)
                return out
        return b"".join(bytes(v) for v in self.buffers(n))

    def unpack(self, st) -> tuple:
        """Read one ``struct.Struct`` and unpack it (in place when it lies in one buffer)."""
        n = st.size
        if n <= self._left and self._i < len(self._bufs):
            buf = self._bufs[self._i]
            off = self._off
            if off + n < len(buf):
                self._off = off + n
                self._left -= n
                return st.unpack_from(buf, off)
        return st.unpack(self.read(n))

    def read_all(self) -> bytes:
        return self.read(self._left)

    def read_struct(self, cls):
        """Read one wire struct (a class with ``SIZE`` and ``unpack_from``)."""
        return cls.unpack_from(self.read(cls.SIZE))

    def buffers(self, n: int) -> list[memoryview]:
        """Views of the next ``n`` bytes, in place (for ``pwritev``); advances past them."""
        if n > self._left:
            raise RemoteProtocolError(f"request too short: wanted {n} more bytes, {self._left} left")
        out = []
        while n:
            buf = self._bufs[self._i]
            take = min(n, len(buf) - self._off)
            if take:
                out.append(buf[self._off:self._off + take])
            self._advance(take)
            n -= take
        return out

    def _advance(self, n: int) -> None:
        self._left -= n
        self._off += n
        while self._i < len(self._bufs) and self._off >= len(self._bufs[self._i]):
            self._off -= len(self._bufs[self._i])
            self._i += 1


class Writer:
    """Writes into the device-writable buffers of a chain as one byte stream."""

    __slots__ = ("_bufs", "_i", "_off", "_cap", "written")

    def __init__(self, bufs: Sequence[memoryview]) -> None:
        self._bufs = bufs = _views(bufs)
        self._i = 0
        self._off = 0
        self._cap = len(bufs[0]) if len(bufs) == 1 else sum(len(b) for b in bufs)
        self.written = 0

    def available(self) -> int:
        """Bytes that can still be written after the current position."""
        return self._cap - self.written

    def write(self, data) -> None:
        """Append ``data``; :class:`RemoteProtocolError` if the driver's buffers are too small."""
        n = len(data)
        if n > self._cap - self.written:
            raise RemoteProtocolError(f"reply of {n} bytes does not fit the {self.available()} writable bytes")
        off = self._off
        if self._i < len(self._bufs):
            buf = self._bufs[self._i]
            end = off + n
            if end < len(buf):                # fast path: inside the current buffer
                buf[off:end] = data
                self._off = end
                self.written += n
                return
            if end == len(buf):
                buf[off:end] = data
                self.advance(n)
                return
        src = memoryview(data).cast("B")
        pos = 0
        for view in self.buffers(n):
            view[:] = src[pos:pos + len(view)]
            pos += len(view)
        self.advance(n)

    def write_packed(self, st, *values) -> None:
        """Append ``st.pack(*values)`` (``st`` a ``struct.Struct``), packed in place when it fits
        the current buffer."""
        n = st.size
        if self._i < len(self._bufs) and n <= self._cap - self.written:
            buf = self._bufs[self._i]
            end = self._off + n
            if end < len(buf):
                st.pack_into(buf, self._off, *values)
                self._off = end
                self.written += n
                return
        self.write(st.pack(*values))

    def buffers(self, n: int) -> list[memoryview]:
        """Views of the next ``n`` writable bytes (for ``preadv``); does not advance."""
        n = min(n, self.available())
        out = []
        i, off = self._i, self._off
        while n:
            buf = self._bufs[i]
            take = min(n, len(buf) - off)
            if take:
                out.append(buf[off:off + take])
            n -= take
            i += 1
            off = 0
        return out

    def advance(self, n: int) -> None:
        """Move the position ``n`` bytes on (after filling them through :meth:`buffers`)."""
        if n > self.available():
            raise RemoteProtocolError("advance past the end of the writable buffers")
        self.written += n
        self._off += n
        while self._i < len(self._bufs) and self._off >= len(self._bufs[self._i]):
            self._off -= len(self._bufs[self._i])
            self._i += 1

    def write_at(self, pos: int, data) -> None:
        """Write ``data`` at absolute position ``pos`` (e.g. a header once the body length is known)."""
        n = len(data)
        if pos < 0 or pos + n > self._cap:
            raise RemoteProtocolError("write_at outside the writable buffers")
        src = memoryview(data).cast("B")
        done = 0
        for buf in self._bufs:
            if pos >= len(buf):
                pos -= len(buf)
                continue
            take = min(n - done, len(buf) - pos)
            buf[pos:pos + take] = src[done:done + take]
            done += take
            pos = 0
            if done == n:
                return
