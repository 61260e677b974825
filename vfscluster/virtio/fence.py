"""A full memory barrier for Python code that shares rings with another process.

Python has no fence.  "Publish an index, then read the peer's suppression field" can be reordered
by the CPU's store buffer (store→load reordering exists even on x86-64) and lose a wake-up.  A locked
instruction is a full barrier.  We get one from libc's ``pthread_spin_trylock``: on x86-64 glibc it is
``lock cmpxchg`` on the lock word, executed whether or not the lock is free, so one call on a private
lock word is a fence (about 0.3 µs from Python).  Elsewhere we also release the lock so that the next
call performs its atomic exchange again.

Plain aligned 2-, 4- and 8-byte loads and stores through a memoryview are single instructions and
therefore atomic on x86-64 and arm64; store→store and load→load order holds on x86-64 (TSO), which is
what the ring code relies on between a ring entry and its index.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import platform

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_trylock = _libc.pthread_spin_trylock
_unlock = _libc.pthread_spin_unlock
_trylock.argtypes = _unlock.argtypes = [ctypes.c_void_p]
_LOCK = ctypes.c_int(1)          # glibc x86-64: 1 = unlocked
_ADDR = ctypes.addressof(_LOCK)

if platform.machine() in ("x86_64", "AMD64"):
    def barrier() -> None:
        """Full memory fence (one locked instruction)."""
        _trylock(_ADDR)
else:  # pragma: no cover - other architectures
    def barrier() -> None:
        """Full memory fence (an atomic exchange, then release)."""
        _trylock(_ADDR)
        _unlock(_ADDR)
