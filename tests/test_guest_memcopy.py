"""guest.memcopy: copies in pieces below glibc's rep-movsb threshold must equal plain copies."""

import ctypes
import os

import pytest

from vfscluster.guest.memcopy import PIECE, data_address, memory_at, read_out, write_in

pytestmark = pytest.mark.timeout(30)

SIZES = [0, 1, 63, 4096, PIECE - 1, PIECE, PIECE + 1, 2 * PIECE + 17, (3 << 20) + 5]


@pytest.mark.parametrize("n", SIZES)
def test_read_out_equals_the_source(n):
    src = bytearray(os.urandom(n + 8))
    out = read_out(memoryview(src), 3, n)
    assert type(out) is bytes and out == bytes(src[3:3 + n])


@pytest.mark.parametrize("kind", ["bytes", "bytearray", "memoryview", "readonly view", "slice", "words"])
@pytest.mark.parametrize("n", [0, 5, PIECE + 9, 2 * PIECE + 8])
def test_write_in_takes_any_contiguous_buffer(kind, n):
    data = os.urandom(n + 8)
    buf = {"bytes": data[:n], "bytearray": bytearray(data[:n]), "memoryview": memoryview(bytearray(data[:n])),
           "readonly view": memoryview(data[:n]), "slice": memoryview(data)[2:2 + n],
           "words": memoryview(data[:n - n % 4]).cast("I")}[kind]
    size = memoryview(buf).nbytes
    dst = bytearray(size + 2)
    assert write_in(memoryview(dst), 1, buf) == size
    assert dst == b"\0" + memoryview(buf).tobytes() + b"\0"


def test_write_in_stores_a_strided_byte_view_and_refuses_other_non_contiguous_ones():
    dst = bytearray(8)
    assert write_in(memoryview(dst), 0, memoryview(bytes(range(16)))[::2]) == 8
    assert dst == bytes(range(0, 16, 2))
    with pytest.raises(TypeError):
        write_in(memoryview(dst), 0, memoryview(bytearray(16)).cast("I")[::2])


def test_memory_at_views_raw_memory_both_ways():
    raw = (ctypes.c_char * (PIECE * 2 + 3)).from_buffer_copy(os.urandom(PIECE * 2 + 3))
    view = memory_at(ctypes.addressof(raw), len(raw))
    assert read_out(view, 0, len(raw)) == bytes(raw)
    payload = os.urandom(PIECE + 100)
    write_in(view, 1, payload)
    assert bytes(raw)[1:1 + len(payload)] == payload


def test_data_address_is_where_the_bytes_are():
    buf = bytearray(b"abcdef")
    assert ctypes.string_at(data_address(buf) + 2, 3) == b"cde"
    assert ctypes.string_at(data_address(b"read-only"), 4) == b"read"
