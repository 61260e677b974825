"""The virtio-fs device configuration space (virtio spec §5.11.4, ``struct virtio_fs_config``), the
same bytes for the guest that reads it and the host that serves it (GET_CONFIG)::

    u8  tag[36];                 /* UTF-8, NUL-padded; not NUL-terminated at 36 bytes */
    le32 num_request_queues;
    le32 notify_buf_size;        /* with VIRTIO_FS_F_NOTIFICATION */

Linux (``virtio_fs_read_tag``) refuses an empty tag and one containing a newline; a NUL would end
it early.
"""

from __future__ import annotations

import errno
import struct

__all__ = ["CONFIG_SIZE", "NOTIFY_CONFIG_SIZE", "TAG_MAX", "check_tag", "config_space"]

TAG_MAX = 36
CONFIG_SIZE = TAG_MAX + 4                 # tag, num_request_queues
NOTIFY_CONFIG_SIZE = CONFIG_SIZE + 4      # + notify_buf_size (with VIRTIO_FS_F_NOTIFICATION)


def check_tag(tag: object) -> bytes:
    """The tag's bytes; EINVAL unless it is a str of 1 to 36 bytes of UTF-8 without a newline
    or NUL."""
    raw = tag.encode("utf-8", "surrogateescape") if isinstance(tag, str) else b""
    if not isinstance(tag, str) or not 1 <= len(raw) <= TAG_MAX:
        raise OSError(errno.EINVAL, f"virtio-fs tag must be 1 to {TAG_MAX} bytes of UTF-8, "
                                    f"got {len(raw)} bytes: {tag!r}")
    if "\n" in tag or "\0" in tag:
        raise OSError(errno.EINVAL, f"virtio-fs tag {tag!r} contains a newline or NUL")
    try:
        tag.encode("utf-8")
    except UnicodeEncodeError:
        raise OSError(errno.EINVAL, f"virtio-fs tag {tag!r} is not valid UTF-8") from None
    return raw


def config_space(tag: bytes, num_request_queues: int, notify_buf_size: int | None = None) -> bytes:
    """``struct virtio_fs_config`` (without ``notify_buf_size`` when it is None)."""
    space = tag.ljust(TAG_MAX, b"\0") + struct.pack("<I", num_request_queues)
    if notify_buf_size is not None:
        space += struct.pack("<I", notify_buf_size)
    return space
