"""A real vfs-hostd against a guest that puts garbage on its request queue: chains of random
buffers — inside guest RAM, across its end, far outside — with random flags, lengths and ``next``
links (loops, indirect tables that are not), carrying FUSE headers that lie or random bytes.

For every chain the host either returns it used (having written no more than its writable
buffers hold) or reports the queue broken; it never dies or hangs, touches nothing outside the
share, and goes on serving another guest.
"""

from __future__ import annotations

import os
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vfscluster.fuse import abi
from vfscluster.guest.machine import GuestMachine
from vfscluster.guest.pending import Pending
from vfscluster.virtio.driver_queue import QueueClosed
from vfscluster.virtio.ring import DESC_F_INDIRECT, DESC_F_NEXT, DESC_F_WRITE

from hostproc import ram_name
from virtio_helpers import publish_chain

RAM = 16 << 20


@pytest.fixture
def outside(tmp_path):
    secret = tmp_path / "secret"
    secret.write_bytes(b"do not touch")
    return secret


@pytest.fixture
def bystander(hostd):
    m = GuestMachine("bystander", ram_name=ram_name(), ram_size=RAM)
    try:
        m.add_device(hostd.socket_path, "vfs")
        yield m.mount("vfs").os
    finally:
        m.close()


_BUFFER = st.tuples(st.sampled_from(["ram", "ram", "ram", "edge", "outside", "zero"]),
                    st.integers(0, 9000), st.booleans())          # where, length, writable


@st.composite
def _chain(draw) -> tuple[list, bytes, list]:
    """(buffers, what the first readable one holds, corruptions) of one chain."""
    bufs = draw(st.lists(_BUFFER, min_size=1, max_size=4))
    opcode = draw(st.sampled_from([abi.Opcode.LOOKUP, abi.Opcode.GETATTR, abi.Opcode.READ,
                                   abi.Opcode.WRITE, abi.Opcode.MKDIR, abi.Opcode.READDIR, 0, 9999]))
    length = draw(st.one_of(st.integers(0, 200), st.just(0xFFFF_FFFF)))
    head = struct.pack("<IIQQIIIHH", length, opcode, 5, draw(st.sampled_from([1, 2, 1 << 63])),
                       0, 0, 1, draw(st.sampled_from([0, 1, 0xFFFF])), 0)
    body = draw(st.binary(max_size=120))
    corrupt = draw(st.lists(st.tuples(st.integers(0, 3), st.sampled_from(
        [DESC_F_NEXT, DESC_F_WRITE, DESC_F_INDIRECT, DESC_F_INDIRECT | DESC_F_NEXT, 0]),
        st.integers(0, 140), st.integers(0, 0x10000)), max_size=2))
    return bufs, head + body, corrupt


@settings(max_examples=200, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(chains=st.lists(_chain(), min_size=1, max_size=4))
def test_garbage_chains_are_used_or_break_the_queue_never_the_host(hostd, bystander, share,
                                                                    outside, chains):
    rogue = GuestMachine("rogue", ram_name=ram_name(), ram_size=RAM)
    try:
        dev = rogue.add_device(hostd.socket_path, "vfs")
        rogue.mount("vfs")
        q = dev.request_queues[0]
        page = dev.ram.pages.alloc(16)
        base = page * 4096
        tokens = []
        for bufs, content, corrupt in chains:
            descs, pos, writable = [], base, 0
            for where, length, w in bufs:
                addr = {"ram": pos, "edge": RAM - 8, "outside": 1 << 40, "zero": 0}[where]
                if where == "ram":
                    length = min(length, base + 16 * 4096 - pos)
                    pos += length
                descs.append((dev.ram.gpa + addr, length, DESC_F_NEXT | (DESC_F_WRITE if w else 0), None))
                writable += length if w else 0
            descs[-1] = descs[-1][:2] + (descs[-1][2] & ~DESC_F_NEXT, 0)
            first = descs[0]
            if first[0] - dev.ram.gpa == base:
                dev.ram.view[base:base + min(len(content), first[1])] = content[:first[1]]
            for i, flags, nxt, length in corrupt:          # a driver bug or a hostile one
                if i < len(descs):
                    descs[i] = (descs[i][0], length, flags, nxt)
                    writable = None                       # no longer known
            p = Pending(0, 0, None, 0, 1, 0)        # completed, or failed (queue broken), by the device
            try:
                publish_chain(q, descs, p)
            except QueueClosed:                       # an earlier chain broke it already
                break
            tokens.append((p, writable))
        for p, writable in tokens:
            dev._wait(q, p)         # as the device waits for its own requests (spin, then sleep)
            assert p.done
            if not p.error and writable is not None:
                assert p.length <= writable
        dev.ram.pages.free(page, 16)
    finally:
        rogue.close()
    assert hostd.proc.is_alive()
    (share / "seen").write_bytes(b"1")
    assert "seen" in bystander.listdir("/")
    os.unlink(share / "seen")
    assert outside.read_bytes() == b"do not touch"
