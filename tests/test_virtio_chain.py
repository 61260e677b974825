import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vfscluster.errors import QueueError, RemoteProtocolError
from vfscluster.virtio.chain import Reader, Writer, walk_chain
from vfscluster.virtio.memory import buffer_address
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


# ---------------------------------------------------------------------------- random chains

def _model_walk(descs: dict, tables: dict, qsize: int, head: int, mem_size: int):
    """What walk_chain must give for a table the test wrote: ``(readable, writable)`` as
    ``(gpa, len)`` lists, or None for a chain it must refuse.  ``descs`` maps an index to
    ``(addr, len, flags, next)``; ``tables`` maps an indirect table's gpa to its descriptors."""
    readable, writable = [], []
    table, size, limit, count, nested, idx = descs, qsize, qsize, 0, False, head
    if head >= qsize:
        return None
    while True:
        count += 1
        if count > limit:
            return None
        addr, length, flags, nxt = table.get(idx, (0, 0, 0, 0))
        if flags & DESC_F_INDIRECT:
            if nested or flags & DESC_F_NEXT or not length or length % 16 or addr not in tables:
                return None
            size = length // 16                   # what the table holds past the test's: zeros
            table, nested, idx = dict(enumerate(tables[addr][:size])), True, 0
            limit = count + size
            continue
        if length:
            if not (GPA <= addr and addr + length <= GPA + mem_size):
                return None
            if flags & DESC_F_WRITE:
                writable.append((addr, length))
            elif writable:
                return None
            else:
                readable.append((addr, length))
        if not flags & DESC_F_NEXT:
            return readable, writable
        if nxt >= size:
            return None
        idx = nxt


_FLAGS = st.sampled_from([0, DESC_F_NEXT, DESC_F_WRITE, DESC_F_NEXT | DESC_F_WRITE])
_IND_FLAGS = st.one_of(_FLAGS, st.just(DESC_F_INDIRECT))     # in a table: nested, refused
_ADDR = st.one_of(st.integers(GPA + 0x1000, GPA + 0x7000), st.sampled_from([0, GPA - 16, GPA + (1 << 20) - 8]))


def _desc(idx_limit: int, flags=_FLAGS):
    return st.tuples(_ADDR, st.integers(0, 0x900), flags, st.integers(0, idx_limit))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(descs=st.dictionaries(st.integers(0, QS - 1), _desc(QS), max_size=QS),
       indirect=st.lists(_desc(5, _IND_FLAGS), min_size=1, max_size=4),
       at=st.integers(0, QS - 1),
       ind_flags=st.sampled_from([0, DESC_F_INDIRECT, DESC_F_INDIRECT | DESC_F_NEXT]),
       ind_len=st.sampled_from([0, 8, 16, 32, 48, 64]), head=st.integers(0, QS))
def test_random_chains_walk_as_the_rules_say(mem, descs, indirect, at, ind_flags, ind_len, head):
    """Random tables (loops, bad indexes, addresses outside memory, readable after writable, an
    indirect table of any length with nested tables): walk_chain gives exactly the buffers the
    rules allow, or refuses with QueueError — nothing else."""
    m, table = mem
    table[:] = bytes(len(table))
    ind = m.view(GPA + 0x8000, 64)
    ind[:] = bytes(64)
    tables = {}
    if ind_flags:
        tables[GPA + 0x8000] = indirect
        for i, d in enumerate(indirect):
            put_desc(ind, i, *d)
        descs = {**descs, at: (GPA + 0x8000, ind_len, ind_flags, 1)}
    for i, d in descs.items():
        put_desc(table, i, *d)
    expected = _model_walk(descs, tables, QS, head, 1 << 20)
    if expected is None:
        with pytest.raises(QueueError):
            walk_chain(m, table, QS, head)
        return
    c = walk_chain(m, table, QS, head)
    got = [[(GPA + buffer_address(v) - buffer_address(m.view(GPA, 1)), len(v)) for v in vs]
           for vs in (c.readable, c.writable)]
    assert (got[0], got[1]) == expected


@given(data=st.binary(max_size=64), cuts=st.lists(st.integers(0, 64), max_size=4),
       reads=st.lists(st.integers(0, 20), max_size=8))
def test_reader_is_one_stream_however_the_buffers_are_cut(data, cuts, reads):
    bounds = sorted(c for c in cuts if c <= len(data))
    bufs = [data[a:b] for a, b in zip([0, *bounds], [*bounds, len(data)])]
    r, pos = Reader(bufs), 0
    for n in reads:
        if n > len(data) - pos:
            with pytest.raises(RemoteProtocolError):
                r.read(n)
            continue
        assert r.read(n) == data[pos:pos + n]
        pos += n
        assert r.available() == len(data) - pos


@given(cap=st.lists(st.integers(0, 20), min_size=1, max_size=4),
       ops=st.lists(st.tuples(st.booleans(), st.integers(0, 70), st.binary(max_size=20)), max_size=8))
def test_writer_is_one_stream_however_the_buffers_are_cut(cap, ops):
    bufs = [bytearray(c) for c in cap]
    model, w = bytearray(sum(cap)), Writer([memoryview(b) for b in bufs])
    written = 0
    for at_pos, pos, data in ops:
        if at_pos:
            if pos + len(data) > len(model):
                with pytest.raises(RemoteProtocolError):
                    w.write_at(pos, data)
                continue
            w.write_at(pos, data)
            model[pos:pos + len(data)] = data
        else:
            if len(data) > len(model) - written:
                with pytest.raises(RemoteProtocolError):
                    w.write(data)
                continue
            w.write(data)
            model[written:written + len(data)] = data
            written += len(data)
        assert b"".join(bufs) == model and w.written == written
