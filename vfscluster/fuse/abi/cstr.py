"""C strings: encoding names with their NUL and decoding NUL-terminated strings."""

from __future__ import annotations

from typing import Any

from vfscluster.errors import LocalProtocolError, RemoteProtocolError

# --------------------------------------------------------------------------------------------
# C strings
# --------------------------------------------------------------------------------------------


def encode_name(name: bytes) -> bytes:
    """``name`` + NUL, as request bodies carry names."""
    name = bytes(name)
    if b"\0" in name:
        raise LocalProtocolError(f"name {name!r} contains NUL")
    return name + b"\0"


def decode_cstr(buf: Any, offset: int = 0) -> tuple[bytes, int]:
    """The bytes from ``offset`` up to the next NUL, and the offset just past that NUL."""
    data = buf if isinstance(buf, (bytes, bytearray)) else bytes(buf)
    nul = data.find(b"\0", offset) if offset >= 0 else -1
    if nul < 0:
        raise RemoteProtocolError(f"no NUL-terminated string at offset {offset}")
    return bytes(data[offset:nul]), nul + 1
