"""vfscluster.fuse.filesystem: the FileSystem base (every operation ENOSYS) and its records."""

from __future__ import annotations

import dataclasses
import errno
import inspect
import os

import pytest

from vfscluster.fuse.abi import Opcode
from vfscluster.fuse.filesystem import Context, DirEntry, Entry, FileSystem, SetattrChanges

# Opcodes that are not file-system operations: handled by the server alone.
NOT_FS_OPS = {"INTERRUPT", "NOTIFY_REPLY", "CUSE_INIT", "COPY_FILE_RANGE_64"}
# Opcodes served by a method with a flag: SETLKW is setlk(sleep=True), RENAME2 rename(flags).
SHARED = {"SETLKW": "setlk", "RENAME2": "rename"}
# Methods that are not FUSE operations: hooks for the server that hosts the file system.
HOOKS = {"drop_session", "read_is_cached", "maps_writable", "write_may_wait", "shutting_down"}


def _operations() -> list[str]:
    return [name for name, _ in inspect.getmembers(FileSystem, inspect.isfunction)
            if not name.startswith("_") and name not in HOOKS]


def test_one_method_per_opcode():
    methods = set(_operations())
    for op in Opcode:
        if op.name in NOT_FS_OPS:
            continue
        assert SHARED.get(op.name, op.name.lower()) in methods, op.name
    assert "sleep" in inspect.signature(FileSystem.setlk).parameters
    assert "flags" in inspect.signature(FileSystem.rename).parameters


@pytest.mark.parametrize("name", _operations())
def test_every_operation_raises_enosys(name):
    method = getattr(FileSystem(), name)
    params = list(inspect.signature(method).parameters)
    assert params[0] == "ctx", name
    args = [Context()] + [0] * (len(params) - 1)
    with pytest.raises(OSError) as info:
        method(*args)
    assert info.value.errno == errno.ENOSYS


@pytest.mark.parametrize("name", _operations())
def test_every_operation_documents_its_contract(name):
    doc = getattr(FileSystem, name).__doc__
    assert doc and len(doc.split()) >= 5, name


def test_drop_session_is_a_no_op():
    assert FileSystem().drop_session(3) is None


def test_maps_writable_says_no_without_dax():
    assert FileSystem().maps_writable(Context(), 5) is False


def test_read_is_cached_plays_safe():
    """Unknown means "may block": a server then hands a big READ to a thread."""
    assert FileSystem().read_is_cached(3, 1, 0, 1 << 20) is False


def test_write_may_wait_says_no_in_the_base():
    assert FileSystem().write_may_wait(3, 1) is False


def test_context_is_immutable_and_named():
    ctx = Context(uid=1, gid=2, pid=3, unique=4, session=5)
    assert (ctx.uid, ctx.gid, ctx.pid, ctx.unique, ctx.session) == (1, 2, 3, 4, 5)
    with pytest.raises(AttributeError):
        ctx.uid = 7  # type: ignore[misc]
    assert Context() == Context(0, 0, 0, 0, 0)


def test_entry_defaults_and_frozen():
    st = os.stat(".")
    e = Entry(5, 0, st)
    assert (e.entry_timeout, e.attr_timeout, e.attr_flags, e.version) == (0.0, 0.0, 0, None)
    with pytest.raises(AttributeError):
        e.nodeid = 6  # type: ignore[misc]
    assert Entry(5, 0, st, 1.0, 1.0, version=(3, 9)).version == (3, 9)


def test_direntry_and_setattr_changes():
    d = DirEntry(ino=10, offset=3, type=8, name=b"x")
    assert d.name == b"x" and d.offset == 3
    c = SetattrChanges()
    assert all(getattr(c, f.name) in (None, False) for f in dataclasses.fields(c))
    assert SetattrChanges(size=0).size == 0
