"""Reproducers found by a bug-hunting campaign against the day's changes.  Each test is an
expected failure (strict) until the bug it shows is fixed."""

from __future__ import annotations

import mmap
import os

import pytest

from vfscluster import Cluster, Topology

pytestmark = pytest.mark.timeout(60)


def g_read8(gos, name):
    fd = gos.open(name, os.O_RDONLY)
    try:
        return gos.pread(fd, 8, 0)
    finally:
        gos.close(fd)


def g_close_kept(gos):
    gos.close(gos._test_fd)


def g_fsync_kept(gos):
    gos.fsync(gos._test_fd)


@pytest.mark.xfail(strict=True, reason="FileOps._dax_stores asks maps_writable, i.e. whether the "
                   "session maps the file writable *now*: once the writer's window range was "
                   "reclaimed (REMOVEMAPPING) its DAX stores are no longer counted at its close or "
                   "fsync, and a cache=always,versions=on guest keeps the old data for ever")
@pytest.mark.parametrize("publish", ["close", "fsync"])
def test_dax_stores_are_published_at_close_even_after_their_range_was_reclaimed(tmp_path, publish):
    """README: a guest with cache=always,versions=on sees data another guest stored through DAX
    once the writer closes or fsyncs the file.  Here the writer's range of the file goes back to
    the host (reclaim: it reads three other files through a two-range window) between its store
    and its close/fsync; the reader then opens the file afresh and still reads the old bytes."""
    share = tmp_path / "share"
    share.mkdir()
    for n in ("g1", "g2", "g3"):
        (share / n).write_bytes(b"g" * (2 << 20))
    (share / "f").write_bytes(b"old!" * 1024)
    topo = Topology(share, [{"name": "a", "dax": "always", "cache": "none", "window_size": WINDOW},
                            {"name": "d", "cache": "always", "versions": True}])
    with Cluster.start(topo) as c:
        a, d = c.guests
        assert d.run(g_read8, "f") == b"old!old!"          # cached, with its version
        a.run(g_keep_open)
        assert a.run(g_pwrite, b"NEW!NEW!") == 8            # a store through the window
        for n in ("g1", "g2", "g3"):                        # its range of f is reclaimed
            a.run(g_read8, n)
        assert a.stats()["dax"]["reclaimed"] >= 1
        a.run(g_fsync_kept if publish == "fsync" else g_close_kept)
        assert (share / "f").read_bytes()[:8] == b"NEW!NEW!"
        assert d.run(g_read8, "f") == b"NEW!NEW!"
        if publish == "fsync":
            a.run(g_close_kept)
