"""guest.memcopy: copies in pieces below glibc's rep-movsb threshold must equal plain copies."""

import ctypes
import os

import pytest

from vfscluster.guest.memcopy import PIECE, copy, copy_in, copy_out, data_address

pytestmark = pytest.mark.timeout(30)

SIZES = [0, 1, 63, 4096, PIECE - 1, PIECE, PIECE + 1, 2 * PIECE + 17, (3 << 20) + 5]


@pytest.mark.parametrize("n", SIZES)
def test_copy_out_equals_the_source(n):
    src = bytearray(os.urandom(n + 8))
    addr = data_address(src)
    out = copy_out(addr + 3, n)
    assert type(out) is bytes and out == bytes(src[3:3 + n])


@pytest.mark.parametrize("kind", ["bytes", "bytearray", "memoryview", "readonly view", "slice"])
@pytest.mark.parametrize("n", [0, 5, PIECE + 9])
def test_copy_in_takes_any_contiguous_buffer(kind, n):
    data = os.urandom(n + 4)
    buf = {"bytes": data[:n], "bytearray": bytearray(data[:n]), "memoryview": memoryview(bytearray(data[:n])),
           "readonly view": memoryview(data[:n]), "slice": memoryview(data)[2:2 + n]}[kind]
    dst = bytearray(n + 2)
    assert copy_in(data_address(dst) + 1, buf) == n
    assert dst == b"\0" + bytes(buf) + b"\0"


def test_copy_in_refuses_a_non_contiguous_view():
    dst = bytearray(8)
    with pytest.raises(BufferError):
        copy_in(data_address(dst), memoryview(bytearray(16))[::2])


def test_copy_between_addresses():
    src = (ctypes.c_char * (PIECE * 2 + 3)).from_buffer_copy(os.urandom(PIECE * 2 + 3))
    dst = (ctypes.c_char * (PIECE * 2 + 3))()
    copy(ctypes.addressof(dst), ctypes.addressof(src), len(src))
    assert bytes(dst) == bytes(src)
