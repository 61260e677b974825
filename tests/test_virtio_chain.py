import pytest

from vfscluster.errors import QueueError, RemoteProtocolError
from vfscluster.virtio.chain import Reader, Writer, walk_chain
from vfscluster.virtio.ring import DESC_F_INDIRECT, DESC_F_NEXT, DESC_F_WRITE

from virtio_helpers import anon_memory, put_desc

GPA = 0x10000
QS = 8


@pytest.fixture
def mem():
    m, mm = anon_memory(gpa=GPA)
    yield m, m.view(GPA, 16 * QS)
    m.close()


def test_simple_chain_readable_then_writable(mem):
    m, table = mem
    put_desc(table, 0, GPA + 0x1000, 40, DESC_F_NEXT, 3)
    put_desc(table, 3, GPA + 0x2000, 10, DESC_F_NEXT, 5)
    put_desc(table, 5, GPA + 0x3000, 100, DESC_F_WRITE)
    c = walk_chain(m, table, QS, 0)
    assert [len(v) for v in c.readable] == [40, 10]
    assert [len(v) for v in c.writable] == [100]
    assert c.readable_len == 50 and c.writable_len == 100


def test_loop_is_refused(mem):
    m, table = mem
    put_desc(table, 0, GPA + 0x1000, 8, DESC_F_NEXT, 1)
    put_desc(table, 1, GPA + 0x1000, 8, DESC_F_NEXT, 0)
    with pytest.raises(QueueError, match="loop"):
        walk_chain(m, table, QS, 0)


@pytest.mark.parametrize("head,nxt", [(8, 0), (0, 9)])
def test_index_out_of_range(mem, head, nxt):
    m, table = mem
    put_desc(table, 0, GPA + 0x1000, 8, DESC_F_NEXT, nxt)
    with pytest.raises(QueueError):
        walk_chain(m, table, QS, head)


def test_address_outside_memory(mem):
    m, table = mem
    put_desc(table, 0, 0x10, 8)
    with pytest.raises(QueueError, match="outside"):
        walk_chain(m, table, QS, 0)
    put_desc(table, 0, GPA + (1 << 20) - 4, 8)
    with pytest.raises(QueueError):
        walk_chain(m, table, QS, 0)


def test_readable_after_writable_refused(mem):
    m, table = mem
    put_desc(table, 0, GPA + 0x1000, 8, DESC_F_WRITE | DESC_F_NEXT, 1)
    put_desc(table, 1, GPA + 0x2000, 8, 0)
    with pytest.raises(QueueError, match="readable"):
        walk_chain(m, table, QS, 0)


def test_indirect_table(mem):
    m, table = mem
    ind = m.view(GPA + 0x8000, 16 * 3)
    put_desc(ind, 0, GPA + 0x1000, 40, DESC_F_NEXT, 1)
    put_desc(ind, 1, GPA + 0x2000, 8, DESC_F_NEXT, 2)
    put_desc(ind, 2, GPA + 0x3000, 64, DESC_F_WRITE)
    put_desc(table, 2, GPA + 0x8000, 48, DESC_F_INDIRECT)
    c = walk_chain(m, table, QS, 2)
    assert [len(v) for v in c.readable] == [40, 8] and [len(v) for v in c.writable] == [64]
    with pytest.raises(QueueError, match="INDIRECT_DESC"):
        walk_chain(m, table, QS, 2, indirect_ok=False)


def test_indirect_refusals(mem):
    m, table = mem
    ind = m.view(GPA + 0x8000, 32)
    put_desc(ind, 0, GPA + 0x8000, 32, DESC_F_INDIRECT)        # nested
    put_desc(table, 0, GPA + 0x8000, 32, DESC_F_INDIRECT)
    with pytest.raises(QueueError, match="nested"):
        walk_chain(m, table, QS, 0)
    put_desc(table, 0, GPA + 0x8000, 20, DESC_F_INDIRECT)        # not a multiple of 16
    with pytest.raises(QueueError, match="multiple"):
        walk_chain(m, table, QS, 0)
    put_desc(table, 0, GPA + 0x8000, 32, DESC_F_INDIRECT | DESC_F_NEXT, 1)
    with pytest.raises(QueueError, match="F_NEXT"):
        walk_chain(m, table, QS, 0)
    put_desc(ind, 0, GPA + 0x1000, 8, DESC_F_NEXT, 0)            # loop inside the table
    put_desc(table, 0, GPA + 0x8000, 16, DESC_F_INDIRECT)
    with pytest.raises(QueueError):
        walk_chain(m, table, QS, 0)


def test_reader_across_buffers():
    r = Reader([b"abc", b"", b"defgh"])
    assert r.available() == 8
    assert r.read(2) == b"ab"
    assert r.read(4) == b"cdef"
    views = r.buffers(2)
    assert b"".join(bytes(v) for v in views) == b"gh"
    assert r.available() == 0
    with pytest.raises(RemoteProtocolError):
        r.read(1)


def test_writer_across_buffers_and_write_at():
    a, b = bytearray(4), bytearray(6)
    w = Writer([memoryview(a), memoryview(b)])
    w.advance(2)
    views = w.buffers(5)
    assert [len(v) for v in views] == [2, 3]
    views[0][:] = b"XY"
    views[1][:] = b"ZZZ"
    w.advance(5)
    w.write_at(0, b"hi")
    assert bytes(a) == b"hiXY" and bytes(b[:3]) == b"ZZZ"
    assert w.written == 7 and w.available() == 3
    with pytest.raises(RemoteProtocolError):
        w.write(b"1234")
    w.write(b"end")
    assert bytes(b[3:]) == b"end"
