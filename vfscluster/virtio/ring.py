"""Split virtqueue layout (virtio 1.x §2.7): descriptor table, available ring, used ring, event index.

Only offsets, sizes and the pure functions both sides need; the device side lives in
``device_queue``, the driver side in ``driver_queue``.
"""

from __future__ import annotations

import struct

DESC_SIZE = 16                    # struct virtq_desc: le64 addr, le32 len, le16 flags, le16 next
USED_ELEM_SIZE = 8                # struct virtq_used_elem: le32 id, le32 len
MAX_QUEUE_SIZE = 32768

DESC_F_NEXT = 1                   # the chain continues in the `next` field
DESC_F_WRITE = 2                  # device-writable buffer
DESC_F_INDIRECT = 4               # the buffer is a table of descriptors

AVAIL_F_NO_INTERRUPT = 1          # driver: do not call me (ignored with EVENT_IDX)
USED_F_NO_NOTIFY = 1              # device: do not kick me (ignored with EVENT_IDX)

DESC = struct.Struct("<QIHH")
# Ring indexes and event fields change under the peer's feet: read and write them through
# ``memoryview.cast("H")`` item access, which is ONE 2-byte load or store.  ``struct`` packs and
# unpacks little-endian fields byte by byte, so a reader can see a torn index (seen here: an
# avail.idx of 40588 read as 0).  U16 is for fields nobody changes concurrently.
U16 = struct.Struct("<H")
USED_ELEM = struct.Struct("<II")

# virtio feature bits a queue cares about
F_INDIRECT_DESC = 1 << 28
F_EVENT_IDX = 1 << 29
F_VERSION_1 = 1 << 32


def desc_table_size(qsize: int) -> int:
    return DESC_SIZE * qsize


def avail_size(qsize: int) -> int:
    """flags, idx, ring[qsize], used_event."""
    return 6 + 2 * qsize


def used_size(qsize: int) -> int:
    """flags, idx, ring[qsize] of (id, len), avail_event."""
    return 6 + USED_ELEM_SIZE * qsize


def used_event_offset(qsize: int) -> int:
    """Byte offset of ``used_event`` inside the available ring."""
    return 4 + 2 * qsize


def avail_event_offset(qsize: int) -> int:
    """Byte offset of ``avail_event`` inside the used ring."""
    return 4 + USED_ELEM_SIZE * qsize


def need_event(event_idx: int, new_idx: int, old_idx: int) -> bool:
    """vring_need_event: did the index move past ``event_idx`` going from ``old_idx`` to ``new_idx``?"""
    return ((new_idx - event_idx - 1) & 0xFFFF) < ((new_idx - old_idx) & 0xFFFF)


def valid_queue_size(qsize: int) -> bool:
    return 0 < qsize <= MAX_QUEUE_SIZE and qsize & (qsize - 1) == 0


def align(value: int, alignment: int) -> int:
    return (value + alignment - 1) & ~(alignment - 1)


def layout(qsize: int, base: int = 0) -> tuple[int, int, int, int]:
    """Place a queue at ``base``: returns (desc, avail, used, end) offsets, each suitably aligned."""
    desc = align(base, 16)
    avail = desc + desc_table_size(qsize)
    used = align(avail + avail_size(qsize), 4)
    end = used + used_size(qsize)
    return desc, avail, used, end
