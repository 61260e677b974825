"""Reply-building helpers shared by the FUSE server's modules: names in request bodies, the
fuse_attr fields of a stat result, fuse_entry_out."""

from __future__ import annotations

from ..errors import RemoteProtocolError
from . import abi
from .filesystem import Entry

__all__ = ["attr_values", "entry_out", "entry_values"]

_ENTRY_OUT = abi.EntryOut.STRUCT
_NS = 1_000_000_000
_U32 = 0xFFFF_FFFF
_U64 = 0xFFFF_FFFF_FFFF_FFFF


def _cstr_exact(buf: bytes, offset: int) -> bytes:
    """The NUL-terminated string at ``offset`` that must end the buffer."""
    name, end = abi.decode_cstr(buf, offset)
    if end != len(buf):
        raise RemoteProtocolError(f"{len(buf) - end} stray bytes after the name {name!r}")
    return name


def _two_cstrs(buf: bytes, offset: int) -> tuple[bytes, bytes]:
    first, end = abi.decode_cstr(buf, offset)
    return first, _cstr_exact(buf, end)


def _s64(v: int) -> int:
    return v - (1 << 64) if v >= 1 << 63 else v


_TIMEOUTS: dict[float, tuple[int, int]] = {}


def _split(t: float) -> tuple[int, int]:
    """Seconds as (whole seconds, nanoseconds) for the *_valid fields."""
    try:
        return _TIMEOUTS[t]
    except KeyError:
        s = int(max(t, 0.0))
        ns = min(int(round((max(t, 0.0) - s) * _NS)), _NS - 1)
        if len(_TIMEOUTS) < 64:
            _TIMEOUTS[t] = (s, ns)
        return s, ns


def attr_values(st, flags: int = 0) -> tuple:
    """The fuse_attr fields of an ``os.stat_result`` in wire order (what ``Attr.from_stat``
    gives, without building the dataclass: this is on the GETATTR/LOOKUP path)."""
    a_s, a_ns = divmod(st.st_atime_ns, _NS)
    m_s, m_ns = divmod(st.st_mtime_ns, _NS)
    c_s, c_ns = divmod(st.st_ctime_ns, _NS)
    rdev = st.st_rdev
    return (st.st_ino, st.st_size, st.st_blocks, a_s & _U64, m_s & _U64, c_s & _U64,
            a_ns, m_ns, c_ns, st.st_mode, min(st.st_nlink, _U32), st.st_uid, st.st_gid,
            abi.encode_dev(rdev) if rdev else 0, st.st_blksize, flags)


def entry_values(e: Entry, st=None, flags: int = 0) -> tuple:
    """The fuse_entry_out fields of an :class:`Entry` in wire order (with the attributes ``st``
    instead of ``e.attr``; ``flags`` added to ``e.attr_flags``)."""
    es, ens = _split(e.entry_timeout)
    as_, ans = _split(e.attr_timeout)
    return (e.nodeid, e.generation, es, as_, ens, ans,
            *attr_values(e.attr if st is None else st, e.attr_flags | flags))


def entry_out(e: Entry, st=None, flags: int = 0) -> bytes:
    """fuse_entry_out of an :class:`Entry` (see :func:`entry_values`)."""
    return _ENTRY_OUT.pack(*entry_values(e, st, flags))
