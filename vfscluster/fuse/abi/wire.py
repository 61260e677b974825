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
    # every field value, positionally -> a new instance, without the dataclass __init__; set by
    # _wire() (see _slot_filler)
    _BUILD: ClassVar[Callable[..., Any]]

    @classmethod
    def unpack_from(cls, buf: Any, offset: int = 0) -> Any:
        """Decode ``SIZE`` bytes of ``buf`` at ``offset``."""
        try:
            return cls._BUILD(*cls.STRUCT.unpack_from(buf, offset))
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


def _slot_filler(cls: type, names: tuple[str, ...]) -> Callable[..., Any]:
    """A function of every field value, positionally, that makes an instance of the frozen slots
    dataclass ``cls`` by storing each value through its slot descriptor.

    A frozen dataclass's ``__init__`` stores each field with ``object.__setattr__(self, name,
    value)``, a lookup by name per field: decoding a ``fuse_attr`` (16 fields) took 1.2 µs, twice
    the struct unpack and the slot stores together.  Decoders need none of ``__init__``'s work (the
    values come from ``struct.unpack``, and no wire struct has defaults to fill in or a
    ``__post_init__``), so they use this.  The function is generated as ``dataclasses`` generates
    ``__init__``; a class whose fields are not all slots gets ``cls`` itself."""
    setters = {}
    for i, name in enumerate(names):
        slot = getattr(cls, name, None)
        if not hasattr(slot, "__set__"):
            return cls
        setters[f"_set{i}"] = slot.__set__
    params = ", ".join(f"v{i}" for i in range(len(names)))
    body = "".join(f"    _set{i}(obj, v{i})\n" for i in range(len(names)))
    namespace = {"_new": object.__new__, "_cls": cls, **setters}
    exec(f"def build({params}):\n    obj = _new(_cls)\n{body}    return obj\n", namespace)
    build = namespace["build"]
    build.__qualname__ = f"{cls.__qualname__}._BUILD"
    return build


def _wire(cls: type) -> type:
    """Finish a WireStruct dataclass: set SIZE, the getter that :meth:`WireStruct.pack` uses and
    the builder that the decoders use (:func:`_slot_filler`)."""
    cls.SIZE = cls.STRUCT.size
    names = tuple(f.name for f in fields(cls))
    cls._BUILD = staticmethod(_slot_filler(cls, names))
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
