"""Protocol trace (``vfs-hostd --trace FILE``): one line per request.

Columns, tab-separated: monotonic ns, guest, queue, opcode name, nodeid, result (0 or -errno, or
``noreply``), µs spent in the handler.
"""

from __future__ import annotations

import struct
import threading
import time

from ..fuse.abi import Opcode

_IN = struct.Struct("<IIQQ")     # len, opcode, unique, nodeid
_OUT = struct.Struct("<Ii")      # len, error


class Tracer:
    def __init__(self, path: str) -> None:
        self._f = open(path, "a", buffering=1, encoding="utf-8")
        self._lock = threading.Lock()

    def record(self, guest: str, queue: int, chain, written: int, ns: int) -> None:
        opcode, nodeid = 0, 0
        if chain.readable and len(chain.readable[0]) >= _IN.size:
            _, opcode, _, nodeid = _IN.unpack_from(chain.readable[0])
        try:
            name = Opcode(opcode).name
        except ValueError:
            name = str(opcode)
        result = "noreply"
        if written and chain.writable and len(chain.writable[0]) >= _OUT.size:
            result = str(_OUT.unpack_from(chain.writable[0])[1])
        with self._lock:
            self._f.write(f"{time.monotonic_ns()}\t{guest}\t{queue}\t{name}\t{nodeid}\t{result}\t{ns / 1000:.1f}\n")

    def close(self) -> None:
        self._f.close()
