"""The struct machinery shared by every FUSE wire struct.

:class:`WireStruct` (the ``unpack_from`` / ``unpack_compat`` / ``pack`` / ``pack_into`` methods),
the ``_wire`` class decorator that sets ``SIZE`` and the field getter, ``_S`` (a little-endian
precompiled format) and the short-buffer error helpers.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import fields
from operator import attrgetter
from typing import Any, ClassVar

from vfscluster.errors import LocalProtocolError, RemoteProtocolError

# --------------------------------------------------------------------------------------------
# Struct machinery
# --------------------------------------------------------------------------------------------


class WireStruct:
    """Shared methods of the wire-struct dataclasses (decorated with :func:`_wire`)."""

    __slots__ = ()

    STRUCT: ClassVar[struct.Struct]
    SIZE: ClassVar[int]
    # obj -> tuple of its field values in format order; set by _wire() for flat structs.
    _GET: ClassVar[Callable[[Any], tuple]]

    @classmethod
    def unpack_from(cls, buf: Any, offset: int = 0) -> Any:
        """Decode ``SIZE`` bytes of ``buf`` at ``offset``."""
        try:
            return cls(*cls.STRUCT.unpack_from(buf, offset))
        except struct.error:
            raise _short(cls, buf, offset) from None

    @classmethod
    def unpack_compat(cls, buf: Any, offset: int = 0, size: int | None = None) -> Any:
        """Decode an old, shorter version of the struct: its first ``size`` bytes, rest zero."""
        if size is None or size == cls.SIZE:
            return cls.unpack_from(buf, offset)
        if not 0 <= size <= cls.SIZE:
            raise LocalProtocolError(f"{cls.__name__}: compat size {size} outside 0..{cls.SIZE}")
        if offset < 0 or len(buf) - offset < size:
            raise RemoteProtocolError(
                f"{cls.__name__}: need {size} bytes at offset {offset}, buffer has {len(buf)}"
            )
        return cls.unpack_from(bytes(buf[offset : offset + size]) + bytes(cls.SIZE - size))

    def _wire_values(self) -> tuple:
        """Every value of the flattened format, in order (overridden by nesting structs)."""
        return self._GET(self)

    def pack(self) -> bytes:
        """Encode to ``SIZE`` bytes."""
        return self.STRUCT.pack(*self._wire_values())

    def pack_into(self, buf: Any, offset: int = 0) -> None:
        """Encode into a writable buffer at ``offset``."""
        self.STRUCT.pack_into(buf, offset, *self._wire_values())


def _unpack_raw(cls: type, buf: Any, offset: int) -> tuple:
    """The flat tuple of ``cls.STRUCT`` at ``offset`` (for the nesting structs' unpack_from)."""
    try:
        return cls.STRUCT.unpack_from(buf, offset)
    except struct.error:
        raise _short(cls, buf, offset) from None


def _short(cls: type, buf: Any, offset: int) -> RemoteProtocolError:
    try:
        have = len(buf)
    except TypeError:
        have = "?"
    return RemoteProtocolError(
        f"{cls.__name__}: need {cls.SIZE} bytes at offset {offset}, buffer has {have}"
    )


def _wire(cls: type) -> type:
    """Finish a WireStruct dataclass: set SIZE and the getter that :meth:`WireStruct.pack` uses."""
    cls.SIZE = cls.STRUCT.size
    names = tuple(f.name for f in fields(cls))
    if len(names) > 1:
        cls._GET = attrgetter(*names)  # not a descriptor: self._GET(self) works as is
    elif names:
        one = attrgetter(names[0])
        cls._GET = staticmethod(lambda obj: (one(obj),))
    else:
        cls._GET = staticmethod(lambda obj: ())
    return cls


def _S(fmt: str) -> struct.Struct:
    return struct.Struct("<" + fmt)
