"""vfscluster.fuse.passthrough.fs: PassthroughFs — confinement, lookup counts, operations, errnos."""

from __future__ import annotations

import errno
import fcntl
import os
import stat
import uuid

import pytest

from vfscluster.fuse.abi import ROOT_ID, FileLock, InitFlags, OpenOutFlags, WRITE_KILL_SUIDGID
from vfscluster.fuse.filesystem import Context, Entry, SetattrChanges
from vfscluster.fuse.passthrough import PassthroughFs
from vfscluster.fuse.passthrough.syscalls import RENAME_EXCHANGE, RENAME_NOREPLACE, RENAME_WHITEOUT

CTX = Context(session=0)
CTX1 = Context(session=1)
SECRET = b"top secret\n"


def _errno(call) -> int:
    with pytest.raises(OSError) as info:
        call()
    return info.value.errno


def _os_errno(call) -> int:
    try:
        call()
    except OSError as e:
        return e.errno
    raise AssertionError("the local operation succeeded")


def _open_fds(root) -> int:
    """Descriptors of this process open on something under ``root`` (the test's tree): other
    tests' background threads in the same worker may open others meanwhile."""
    root = str(root)
    n = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:                 # closed meanwhile (the listing's own fd included)
            continue
        n += target == root or target.startswith(root + "/")
    return n


@pytest.fixture
def tree(tmp_path):
    """tmp_path/{secret, outside/, share/{file, dir/{a}, ln_secret -> ../secret, ln_etc -> /etc,
    ln_abs -> <abs secret>}}; secret's atime set far in the past so any read would move it."""
    secret = tmp_path / "secret"
    secret.write_bytes(SECRET)
    os.setxattr(secret, "user.secret", b"1")
    os.utime(secret, ns=(10**9, 2 * 10**9))
    (tmp_path / "outside").mkdir()
    share = tmp_path / "share"
    share.mkdir()
    (share / "file").write_bytes(b"0123456789")
    (share / "dir").mkdir()
    (share / "dir" / "a").write_bytes(b"a")
    os.symlink("../secret", share / "ln_secret")
    os.symlink("/etc", share / "ln_etc")
    os.symlink(str(secret), share / "ln_abs")
    _BASELINE[str(tmp_path)] = os.stat(secret)
    return tmp_path


@pytest.fixture
def fs(tree):
    with PassthroughFs(tree / "share") as fs:
        yield fs


_BASELINE: dict[str, os.stat_result] = {}


def _secret_untouched(tree) -> None:
    """Nothing read, wrote, chmod-ed, chown-ed or xattr-ed the file outside the share (its atime
    is older than its mtime, so even a read would have moved it), and nothing was created."""
    st = os.stat(tree / "secret")
    before = _BASELINE[str(tree)]
    assert st.st_atime_ns == 10**9 and st.st_mtime_ns == 2 * 10**9
    assert (st.st_ctime_ns, st.st_mode, st.st_uid, st.st_gid, st.st_nlink) == (
        before.st_ctime_ns, before.st_mode, before.st_uid, before.st_gid, before.st_nlink)
    assert os.listxattr(tree / "secret") == ["user.secret"]
    fd = os.open(tree / "secret", os.O_RDONLY | os.O_NOATIME)
    try:
        assert os.read(fd, 100) == SECRET
    finally:
        os.close(fd)
    assert os.stat(tree / "secret").st_atime_ns == 10**9
    assert os.listdir(tree / "outside") == []
    assert sorted(os.listdir(tree)) == ["outside", "secret", "share"]


# ---------------------------------------------------------------------------- confinement


@pytest.mark.parametrize("name", [b"../secret", b"/etc/passwd", b"dir/a", b"", b"a\0b", b"/"])
def test_names_that_are_not_one_component_are_einval(fs, tree, name):
    assert _errno(lambda: fs.lookup(CTX, ROOT_ID, name)) == errno.EINVAL
    assert _errno(lambda: fs.mkdir(CTX, ROOT_ID, name, 0o755, 0)) == errno.EINVAL
    assert _errno(lambda: fs.create(CTX, ROOT_ID, name, 0o644, os.O_RDWR, 0)) == errno.EINVAL
    assert _errno(lambda: fs.unlink(CTX, ROOT_ID, name)) == errno.EINVAL
    assert _errno(lambda: fs.symlink(CTX, ROOT_ID, name, b"x")) == errno.EINVAL
    assert _errno(lambda: fs.rename(CTX, ROOT_ID, b"file", ROOT_ID, name)) == errno.EINVAL
    _secret_untouched(tree)


@pytest.mark.parametrize("dots", [b".", b".."])
def test_dot_names_in_creating_calls_never_leave_the_share(fs, tree, dots):
    root = ROOT_ID
    calls = [
        lambda: fs.mkdir(CTX, root, dots, 0o755, 0),
        lambda: fs.create(CTX, root, dots, 0o644, os.O_RDWR, 0),
        lambda: fs.create(CTX, root, dots, 0o644, os.O_RDWR | os.O_EXCL, 0),
        lambda: fs.mknod(CTX, root, dots, stat.S_IFREG | 0o644, 0, 0),
        lambda: fs.symlink(CTX, root, dots, b"x"),
        lambda: fs.link(CTX, fs.lookup(CTX, root, b"file").nodeid, root, dots),
        lambda: fs.unlink(CTX, root, dots),
        lambda: fs.rmdir(CTX, root, dots),
        lambda: fs.rename(CTX, root, b"file", root, dots),
        lambda: fs.rename(CTX, root, dots, root, b"x"),
        lambda: fs.rename(CTX, root, b"dir", root, dots, RENAME_EXCHANGE),
    ]
    for call in calls:
        assert _errno(call) in (errno.EEXIST, errno.EISDIR, errno.EINVAL, errno.EBUSY,
                                errno.ENOTEMPTY, errno.EPERM)
    assert sorted(os.listdir(tree / "share")) == ["dir", "file", "ln_abs", "ln_etc", "ln_secret"]
    _secret_untouched(tree)


def test_dotdot_of_the_root_is_the_root(fs, tree):
    e = fs.lookup(CTX, ROOT_ID, b"..")
    assert e.nodeid == ROOT_ID
    assert e.attr.st_ino == os.stat(tree / "share").st_ino
    assert fs.lookup(CTX, ROOT_ID, b".").nodeid == ROOT_ID
    d = fs.lookup(CTX, ROOT_ID, b"dir")
    assert fs.lookup(CTX, d.nodeid, b"..").nodeid == ROOT_ID
    assert fs.lookup(CTX, d.nodeid, b".").nodeid == d.nodeid
    _secret_untouched(tree)


def test_dotdot_of_a_directory_moved_out_of_the_share(fs, tree):
    d = fs.lookup(CTX, ROOT_ID, b"dir")
    sub = fs.mkdir(CTX, d.nodeid, b"sub", 0o755, 0)
    os.rename(tree / "share" / "dir", tree / "outside" / "dir")  # a host process moves it out
    assert _errno(lambda: fs.lookup(CTX, sub.nodeid, b"..")) == errno.ENOENT
    assert fs.lookup(CTX, ROOT_ID, b"..").nodeid == ROOT_ID


@pytest.mark.parametrize("link, target", [(b"ln_secret", b"../secret"), (b"ln_etc", b"/etc")])
def test_lookup_of_a_symlink_is_the_symlink_itself(fs, tree, link, target):
    e = fs.lookup(CTX, ROOT_ID, link)
    assert stat.S_ISLNK(e.attr.st_mode)
    assert e.attr.st_ino == os.lstat(tree / "share" / os.fsdecode(link)).st_ino
    assert fs.readlink(CTX, e.nodeid) == target
    assert fs.getattr(CTX, e.nodeid, None)[0].st_ino == e.attr.st_ino
    _secret_untouched(tree)


@pytest.mark.parametrize("link", [b"ln_secret", b"ln_abs", b"ln_etc"])
def test_opening_a_symlink_is_eloop(fs, tree, link):
    e = fs.lookup(CTX, ROOT_ID, link)
    for flags in (os.O_RDONLY, os.O_RDWR, os.O_WRONLY | os.O_TRUNC):
        assert _errno(lambda: fs.open(CTX, e.nodeid, flags)) == errno.ELOOP
    assert _errno(lambda: fs.opendir(CTX, e.nodeid, 0)) == errno.ENOTDIR
    _secret_untouched(tree)


@pytest.mark.parametrize("link", [b"ln_etc", b"ln_secret"])
def test_a_symlink_as_parent_creates_nothing_outside(fs, tree, link):
    e = fs.lookup(CTX, ROOT_ID, link)
    name = f"confine-probe-{uuid.uuid4().hex}".encode()
    calls = [
        lambda: fs.lookup(CTX, e.nodeid, b"passwd"),
        lambda: fs.mkdir(CTX, e.nodeid, name, 0o755, 0),
        lambda: fs.create(CTX, e.nodeid, name, 0o644, os.O_RDWR, 0),
        lambda: fs.mknod(CTX, e.nodeid, name, stat.S_IFREG | 0o644, 0, 0),
        lambda: fs.symlink(CTX, e.nodeid, name, b"x"),
        lambda: fs.unlink(CTX, e.nodeid, b"passwd"),
        lambda: fs.rmdir(CTX, e.nodeid, b"x"),
        lambda: fs.rename(CTX, ROOT_ID, b"file", e.nodeid, name),
        lambda: fs.link(CTX, fs.lookup(CTX, ROOT_ID, b"file").nodeid, e.nodeid, name),
        lambda: fs.opendir(CTX, e.nodeid, 0),
    ]
    for call in calls:
        assert _errno(call) in (errno.ENOTDIR, errno.ELOOP)
    assert not os.path.lexists(os.path.join("/etc", os.fsdecode(name)))
    assert os.path.exists(tree / "share" / "file")
    _secret_untouched(tree)


def test_create_over_a_symlink_does_not_follow_it(fs, tree):
    assert _errno(lambda: fs.create(CTX, ROOT_ID, b"ln_secret", 0o644, os.O_RDWR | os.O_TRUNC, 0)) == errno.ELOOP
    assert _errno(lambda: fs.create(CTX, ROOT_ID, b"ln_secret", 0o644,
                                    os.O_RDWR | os.O_EXCL, 0)) == errno.EEXIST
    _secret_untouched(tree)


@pytest.mark.timeout(20)
@pytest.mark.parametrize("flags", [os.O_WRONLY, os.O_RDONLY, os.O_RDWR | os.O_TRUNC])
def test_create_over_a_fifo_or_a_directory_never_waits(fs, tree, flags):
    """CREATE of a name that exists (no O_EXCL) opens it as OPEN would: a FIFO is ENXIO at once
    — open(2) of a FIFO waits for its other end, which held the host for ever — a directory
    EISDIR, as open(O_CREAT) gives."""
    os.mkfifo(tree / "share" / "fifo")
    (tree / "share" / "sub").mkdir()
    assert _errno(lambda: fs.create(CTX, ROOT_ID, b"fifo", 0o644, flags, 0)) == errno.ENXIO
    assert _errno(lambda: fs.create(CTX, ROOT_ID, b"sub", 0o644, flags, 0)) == errno.EISDIR
    entry, fh, _ = fs.create(CTX, ROOT_ID, b"file", 0o644, flags, 0)    # a file: opened
    fs.release(CTX, entry.nodeid, fh, 0, False, False, None)
    fs.forget(CTX, entry.nodeid, 1)


def test_attribute_changes_on_a_symlink_stay_on_the_symlink(fs, tree):
    e = fs.lookup(CTX, ROOT_ID, b"ln_secret")
    assert _errno(lambda: fs.setattr(CTX, e.nodeid, SetattrChanges(mode=0o600), None)) == errno.EOPNOTSUPP
    assert _errno(lambda: fs.setattr(CTX, e.nodeid, SetattrChanges(size=0), None)) == errno.EINVAL
    st, _ = fs.setattr(CTX, e.nodeid, SetattrChanges(atime_ns=5 * 10**9, mtime_ns=6 * 10**9), None)
    assert stat.S_ISLNK(st.st_mode) and st.st_mtime_ns == 6 * 10**9
    assert os.lstat(tree / "share" / "ln_secret").st_mtime_ns == 6 * 10**9
    if os.geteuid() == 0:
        st, _ = fs.setattr(CTX, e.nodeid, SetattrChanges(uid=4321, gid=4321), None)
        assert os.lstat(tree / "share" / "ln_secret").st_uid == 4321
        assert os.stat(tree / "secret").st_uid != 4321
    # xattrs of the symlink itself: the target's user.secret is not visible
    names = fs.listxattr(CTX, e.nodeid, 4096)
    assert b"user.secret" not in names
    assert _errno(lambda: fs.getxattr(CTX, e.nodeid, b"user.secret", 100)) == errno.ENODATA
    assert _errno(lambda: fs.setxattr(CTX, e.nodeid, b"user.x", b"v", 0)) == errno.EPERM
    # a hard link of the symlink is another symlink, not the target
    link = fs.link(CTX, e.nodeid, ROOT_ID, b"ln2")
    assert link.nodeid == e.nodeid
    assert os.readlink(tree / "share" / "ln2") == "../secret"
    _secret_untouched(tree)


def test_readdir_lists_only_the_share(fs, tree):
    d = fs.lookup(CTX, ROOT_ID, b"dir")
    fh, _ = fs.opendir(CTX, d.nodeid, 0)
    names = [e.name for e in fs.readdir(CTX, d.nodeid, fh, 0)]
    assert names[:2] == [b".", b".."] and sorted(names[2:]) == [b"a"]
    fs.releasedir(CTX, d.nodeid, fh, 0)
    _secret_untouched(tree)


# ---------------------------------------------------------------------------- lookup counts


def test_same_nodeid_in_every_session_and_counts_per_session(fs, tree):
    a = fs.lookup(CTX, ROOT_ID, b"file")
    b = fs.lookup(CTX1, ROOT_ID, b"file")
    assert a.nodeid == b.nodeid and a.generation == b.generation == 0
    fs.lookup(CTX, ROOT_ID, b"file")
    assert fs.inodes.refs(0, a.nodeid) == 2 and fs.inodes.refs(1, a.nodeid) == 1
    fs.forget(CTX, a.nodeid, 2)
    assert _errno(lambda: fs.getattr(CTX, a.nodeid, None)) == errno.EBADF  # session 0 forgot it
    assert fs.getattr(CTX1, a.nodeid, None)[0].st_size == 10  # session 1 still holds it
    before = _open_fds(tree)
    fs.forget(CTX1, a.nodeid, 1)
    assert _open_fds(tree) == before - 1  # the inode's O_PATH fd is closed
    assert _errno(lambda: fs.getattr(CTX1, a.nodeid, None)) == errno.EBADF
    c = fs.lookup(CTX, ROOT_ID, b"file")
    assert c.nodeid != a.nodeid  # nodeids are never reused


def test_unknown_nodeid_is_ebadf(fs):
    assert _errno(lambda: fs.getattr(CTX, 12345, None)) == errno.EBADF
    assert _errno(lambda: fs.lookup(CTX, 12345, b"x")) == errno.EBADF
    fs.forget(CTX, 12345, 1)  # ignored
    fs.batch_forget(CTX, [(12345, 1), (ROOT_ID, 5)])


def test_root_is_never_dropped(fs):
    fs.lookup(CTX, ROOT_ID, b".")
    fs.forget(CTX, ROOT_ID, 100)
    fs.drop_session(0)
    assert stat.S_ISDIR(fs.getattr(CTX, ROOT_ID, None)[0].st_mode)
    assert stat.S_ISDIR(fs.getattr(Context(session=9), ROOT_ID, None)[0].st_mode)


def test_batch_forget(fs):
    a = fs.lookup(CTX, ROOT_ID, b"file")
    d = fs.lookup(CTX, ROOT_ID, b"dir")
    fs.lookup(CTX, ROOT_ID, b"dir")
    fs.batch_forget(CTX, [(a.nodeid, 1), (d.nodeid, 1)])
    assert fs.inodes.refs(0, a.nodeid) == 0 and fs.inodes.refs(0, d.nodeid) == 1


def test_drop_session_frees_inodes_and_handles(fs, tree):
    base_fds = _open_fds(tree)
    base_inodes = len(fs.inodes)
    keep = fs.lookup(CTX1, ROOT_ID, b"file")
    s2 = Context(session=2)
    f = fs.lookup(s2, ROOT_ID, b"file")
    d = fs.lookup(s2, ROOT_ID, b"dir")
    a = fs.lookup(s2, d.nodeid, b"a")
    fs.open(s2, f.nodeid, os.O_RDONLY)
    fs.open(s2, a.nodeid, os.O_RDWR)
    fs.opendir(s2, d.nodeid, 0)
    fs.create(s2, ROOT_ID, b"new", 0o644, os.O_RDWR, 0)
    fs.readdirplus(s2, ROOT_ID, fs.opendir(s2, ROOT_ID, 0)[0], 0)
    list(fs.readdirplus(s2, ROOT_ID, fs.opendir(s2, ROOT_ID, 0)[0], 0))
    assert fs.handles.count(2) == 6
    fs.drop_session(2)
    assert fs.handles.count(2) == 0
    assert len(fs.inodes) == base_inodes + 1  # only session 1's inode is left
    assert _open_fds(tree) == base_fds + 1
    assert fs.getattr(CTX1, keep.nodeid, None)[0].st_size == 10
    assert _errno(lambda: fs.getattr(s2, f.nodeid, None)) == errno.EBADF
    fs.drop_session(1)
    assert _open_fds(tree) == base_fds and len(fs.inodes) == base_inodes


def test_a_session_cannot_use_another_sessions_handle(fs):
    f = fs.lookup(CTX, ROOT_ID, b"file")
    fs.lookup(CTX1, ROOT_ID, b"file")
    fh, _ = fs.open(CTX, f.nodeid, os.O_RDONLY)
    buf = bytearray(4)
    assert _errno(lambda: fs.read(CTX1, f.nodeid, fh, 0, 4, [memoryview(buf)])) == errno.EBADF
    assert fs.read(CTX, f.nodeid, fh, 0, 4, [memoryview(buf)]) == 4 and buf == b"0123"


# ---------------------------------------------------------------------------- errnos = os's


@pytest.fixture
def mirror(tmp_path):
    """A local directory with the share's layout, for the errno `os` gives."""
    m = tmp_path / "mirror"
    m.mkdir()
    (m / "file").write_bytes(b"0123456789")
    (m / "dir").mkdir()
    (m / "dir" / "a").write_bytes(b"a")
    os.symlink("../secret", m / "ln_secret")
    return m


def test_errnos_match_the_local_system_calls(fs, mirror):
    root = ROOT_ID
    d = fs.lookup(CTX, root, b"dir").nodeid
    f = fs.lookup(CTX, root, b"file").nodeid
    m = str(mirror)
    long = b"x" * 300
    cases = [
        (lambda: fs.lookup(CTX, root, b"missing"), lambda: os.lstat(f"{m}/missing")),
        (lambda: fs.lookup(CTX, f, b"x"), lambda: os.lstat(f"{m}/file/x")),
        (lambda: fs.lookup(CTX, root, long), lambda: os.lstat(f"{m}/{long.decode()}")),
        (lambda: fs.mkdir(CTX, root, b"dir", 0o755, 0), lambda: os.mkdir(f"{m}/dir")),
        (lambda: fs.mkdir(CTX, root, b"file", 0o755, 0), lambda: os.mkdir(f"{m}/file")),
        (lambda: fs.rmdir(CTX, root, b"dir"), lambda: os.rmdir(f"{m}/dir")),
        (lambda: fs.rmdir(CTX, root, b"file"), lambda: os.rmdir(f"{m}/file")),
        (lambda: fs.rmdir(CTX, root, b"missing"), lambda: os.rmdir(f"{m}/missing")),
        (lambda: fs.unlink(CTX, root, b"dir"), lambda: os.unlink(f"{m}/dir")),
        (lambda: fs.unlink(CTX, root, b"missing"), lambda: os.unlink(f"{m}/missing")),
        (lambda: fs.rename(CTX, root, b"dir", d, b"sub"), lambda: os.rename(f"{m}/dir", f"{m}/dir/sub")),
        (lambda: fs.rename(CTX, root, b"missing", root, b"x"), lambda: os.rename(f"{m}/missing", f"{m}/x")),
        (lambda: fs.rename(CTX, root, b"file", root, b"dir"), lambda: os.rename(f"{m}/file", f"{m}/dir")),
        (lambda: fs.rename(CTX, root, b"dir", root, b"file"), lambda: os.rename(f"{m}/dir", f"{m}/file")),
        (lambda: fs.link(CTX, d, root, b"dir2"), lambda: os.link(f"{m}/dir", f"{m}/dir2")),
        (lambda: fs.link(CTX, f, root, b"dir"), lambda: os.link(f"{m}/file", f"{m}/dir")),
        (lambda: fs.symlink(CTX, root, b"file", b"t"), lambda: os.symlink("t", f"{m}/file")),
        (lambda: fs.create(CTX, root, b"file", 0o644, os.O_RDWR | os.O_EXCL, 0),
         lambda: os.open(f"{m}/file", os.O_RDWR | os.O_CREAT | os.O_EXCL)),
        (lambda: fs.create(CTX, root, b"dir", 0o644, os.O_RDWR, 0),
         lambda: os.open(f"{m}/dir", os.O_RDWR | os.O_CREAT)),
        (lambda: fs.open(CTX, d, os.O_WRONLY), lambda: os.open(f"{m}/dir", os.O_WRONLY)),
        (lambda: fs.open(CTX, f, os.O_RDONLY | os.O_DIRECTORY),
         lambda: os.open(f"{m}/file", os.O_RDONLY | os.O_DIRECTORY)),
        (lambda: fs.opendir(CTX, f, 0), lambda: os.listdir(f"{m}/file")),
        (lambda: fs.readlink(CTX, f), lambda: os.readlink(f"{m}/file")),
        (lambda: fs.getxattr(CTX, f, b"user.none", 10), lambda: os.getxattr(f"{m}/file", "user.none")),
        (lambda: fs.removexattr(CTX, f, b"user.none"), lambda: os.removexattr(f"{m}/file", "user.none")),
        (lambda: fs.setxattr(CTX, f, b"user.none", b"v", os.XATTR_REPLACE),
         lambda: os.setxattr(f"{m}/file", "user.none", b"v", os.XATTR_REPLACE)),
        (lambda: fs.setattr(CTX, d, SetattrChanges(size=0), None), lambda: os.truncate(f"{m}/dir", 0)),
    ]
    for i, (ours, local) in enumerate(cases):
        expected = _os_errno(local)
        got = _errno(ours)
        assert got == expected, (i, errno.errorcode[got], errno.errorcode[expected])


def test_rename2_flags_give_the_errnos_of_renameat2(fs, tree):
    root = ROOT_ID
    assert _errno(lambda: fs.rename(CTX, root, b"file", root, b"dir", RENAME_NOREPLACE)) == errno.EEXIST
    assert _errno(lambda: fs.rename(CTX, root, b"file", root, b"nope", RENAME_EXCHANGE)) == errno.ENOENT
    assert _errno(lambda: fs.rename(CTX, root, b"file", root, b"x", 1 << 7)) == errno.EINVAL
    fs.rename(CTX, root, b"file", root, b"dir", RENAME_EXCHANGE)
    assert (tree / "share" / "file" / "a").exists() and (tree / "share" / "dir").is_file()
    fs.rename(CTX, root, b"dir", root, b"moved", RENAME_NOREPLACE)
    assert (tree / "share" / "moved").read_bytes() == b"0123456789"


@pytest.mark.skipif(os.geteuid() != 0, reason="a whiteout is a device node: CAP_MKNOD")
def test_rename_whiteout_leaves_a_whiteout_as_virtiofsd_does(fs, tree):
    """overlayfs with its upper layer on virtio-fs renames with RENAME_WHITEOUT."""
    fs.rename(CTX, ROOT_ID, b"file", ROOT_ID, b"moved", RENAME_WHITEOUT)
    st = os.lstat(tree / "share" / "file")
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == 0
    assert (tree / "share" / "moved").read_bytes() == b"0123456789"


def test_o_direct_stays_in_the_guest(fs, tree):
    """An unaligned write and read on a file the guest opened O_DIRECT (its page cache is
    bypassed, the host's need not be): no EINVAL, as with virtiofsd."""
    e, fh, _ = fs.create(CTX, ROOT_ID, b"d", 0o644, os.O_RDWR | os.O_DIRECT, 0)
    assert fs.write(CTX, e.nodeid, fh, 3, [memoryview(b"x" * 100)], 0) == 100
    buf = bytearray(50)
    assert fs.read(CTX, e.nodeid, fh, 1, 50, [memoryview(buf)]) == 50
    fs.release(CTX, e.nodeid, fh, 0, False, False, None)
    f = fs.lookup(CTX, ROOT_ID, b"file")
    fh, _ = fs.open(CTX, f.nodeid, os.O_RDONLY | os.O_DIRECT)
    buf = bytearray(7)
    assert fs.read(CTX, f.nodeid, fh, 1, 7, [memoryview(buf)]) == 7 and bytes(buf) == b"1234567"
    fs.release(CTX, f.nodeid, fh, 0, False, False, None)


@pytest.mark.skipif(os.geteuid() != 0, reason="trusted.* attributes need CAP_SYS_ADMIN")
def test_trusted_xattrs_are_the_hosts(fs, tree):
    """A guest can neither see nor plant trusted.* attributes (overlayfs's, the host's)."""
    os.setxattr(tree / "share" / "file", "trusted.overlay.origin", b"host")
    os.setxattr(tree / "share" / "file", "user.u", b"1")
    f = fs.lookup(CTX, ROOT_ID, b"file")
    assert _errno(lambda: fs.getxattr(CTX, f.nodeid, b"trusted.overlay.origin", 100)) == errno.ENODATA
    assert _errno(lambda: fs.setxattr(CTX, f.nodeid, b"trusted.x", b"1", 0)) == errno.EPERM
    assert _errno(lambda: fs.removexattr(CTX, f.nodeid, b"trusted.overlay.origin")) == errno.EPERM
    assert b"trusted" not in fs.listxattr(CTX, f.nodeid, 1000) and b"user.u\0" in fs.listxattr(CTX, f.nodeid, 1000)
    assert os.getxattr(tree / "share" / "file", "trusted.overlay.origin") == b"host"
    assert "trusted.x" not in os.listxattr(tree / "share" / "file")


def test_a_removed_directory_lists_nothing(fs, tree):
    d = fs.lookup(CTX, ROOT_ID, b"dir")
    fh, _ = fs.opendir(CTX, d.nodeid, os.O_RDONLY)
    os.unlink(tree / "share" / "dir" / "a")
    os.rmdir(tree / "share" / "dir")
    assert list(fs.readdir(CTX, d.nodeid, fh, 0)) == []
    fs.releasedir(CTX, d.nodeid, fh, 0)


# ---------------------------------------------------------------------------- operations


def test_create_write_read_and_attributes(fs, tree):
    e, fh, fopen = fs.create(CTX, ROOT_ID, b"new", 0o666, os.O_RDWR, 0o022)
    assert isinstance(e, Entry) and fopen == 0
    assert stat.S_IMODE(os.stat(tree / "share" / "new").st_mode) == 0o644
    data = [memoryview(b"hello "), memoryview(b"world")]
    assert fs.write(CTX, e.nodeid, fh, 0, data, 0) == 11
    out = [memoryview(bytearray(3)), memoryview(bytearray(4)), memoryview(bytearray(20))]
    assert fs.read(CTX, e.nodeid, fh, 2, 27, out) == 9
    assert b"".join(bytes(v) for v in out)[:9] == b"llo world"
    assert fs.getattr(CTX, e.nodeid, fh)[0].st_size == 11
    st, timeout = fs.setattr(CTX, e.nodeid, SetattrChanges(size=4), fh)
    assert st.st_size == 4 and timeout == 1.0
    st, _ = fs.setattr(CTX, e.nodeid, SetattrChanges(size=2), None)
    assert (tree / "share" / "new").read_bytes() == b"he"
    st, _ = fs.setattr(CTX, e.nodeid, SetattrChanges(mode=0o4750, mtime_ns=7 * 10**9), None)
    assert stat.S_IMODE(st.st_mode) == 0o4750 and st.st_mtime_ns == 7 * 10**9
    before = st.st_atime_ns
    st, _ = fs.setattr(CTX, e.nodeid, SetattrChanges(atime_now=True), None)
    assert st.st_mtime_ns == 7 * 10**9 and st.st_atime_ns != before
    st, _ = fs.setattr(CTX, e.nodeid, SetattrChanges(kill_suidgid=True), None)
    assert stat.S_IMODE(st.st_mode) == 0o0750
    fs.fsync(CTX, e.nodeid, fh, True)
    fs.fsync(CTX, e.nodeid, fh, False)
    fs.flush(CTX, e.nodeid, fh, 0)
    fs.release(CTX, e.nodeid, fh, 0, False, False, None)
    assert _errno(lambda: fs.release(CTX, e.nodeid, fh, 0, False, False, None)) == errno.EBADF


def test_write_kill_suidgid(fs, tree):
    e, fh, _ = fs.create(CTX, ROOT_ID, b"suid", 0o6755, os.O_RDWR, 0)
    assert stat.S_IMODE(os.stat(tree / "share" / "suid").st_mode) == 0o6755
    fs.write(CTX, e.nodeid, fh, 0, [memoryview(b"x")], WRITE_KILL_SUIDGID)
    assert stat.S_IMODE(os.stat(tree / "share" / "suid").st_mode) == 0o0755


def test_create_without_excl_opens_an_existing_file(fs, tree):
    e, fh, _ = fs.create(CTX, ROOT_ID, b"file", 0o600, os.O_RDWR, 0)
    assert stat.S_IMODE(os.stat(tree / "share" / "file").st_mode) == 0o644  # not re-moded
    buf = bytearray(3)
    assert fs.read(CTX, e.nodeid, fh, 0, 3, [memoryview(buf)]) == 3 and buf == b"012"
    e2, fh2, _ = fs.create(CTX, ROOT_ID, b"file", 0o600, os.O_RDWR | os.O_TRUNC, 0)
    assert e2.nodeid == e.nodeid and os.path.getsize(tree / "share" / "file") == 0


def test_umask_is_the_guests_not_the_hosts(fs, tree):
    old = os.umask(0o077)  # a host umask that would remove bits
    try:
        d = fs.mkdir(CTX, ROOT_ID, b"d", 0o777, 0o002)
        n = fs.mknod(CTX, ROOT_ID, b"n", stat.S_IFREG | 0o666, 0, 0)
        e, fh, _ = fs.create(CTX, ROOT_ID, b"c", 0o666, os.O_RDWR, 0)
    finally:
        os.umask(old)
    assert stat.S_IMODE(d.attr.st_mode) == 0o775
    assert stat.S_IMODE(os.stat(tree / "share" / "d").st_mode) == 0o775
    assert stat.S_IMODE(n.attr.st_mode) == 0o666 and stat.S_ISREG(n.attr.st_mode)
    assert stat.S_IMODE(e.attr.st_mode) == 0o666


@pytest.mark.skipif(os.geteuid() != 0, reason="giving files away needs root")
def test_new_inodes_belong_to_the_caller(fs, tree):
    """Created with the caller's fsuid/fsgid (virtiofsd's lo_change_cred)."""
    ctx = Context(uid=1234, gid=2345)
    os.chmod(tree / "share", 0o777)
    d = fs.mkdir(ctx, ROOT_ID, b"d", 0o755, 0)
    s = fs.symlink(ctx, ROOT_ID, b"s", b"target")
    e, _, _ = fs.create(ctx, ROOT_ID, b"c", 0o640, os.O_RDWR, 0)
    for name, entry in (("d", d), ("s", s), ("c", e)):
        st = os.lstat(tree / "share" / name)
        assert (st.st_uid, st.st_gid) == (1234, 2345) == (entry.attr.st_uid, entry.attr.st_gid)
    assert stat.S_IMODE(os.stat(tree / "share" / "c").st_mode) == 0o640
    os.chmod(tree / "share" / "d", 0o2777)
    sub = fs.mkdir(Context(uid=7, gid=8), d.nodeid, b"sub", 0o755, 0)
    assert (sub.attr.st_uid, sub.attr.st_gid) == (7, 2345)  # set-group-ID directory
    assert sub.attr.st_mode & stat.S_ISGID


@pytest.mark.skipif(os.geteuid() != 0, reason="acting as another user needs root")
def test_the_kernel_checks_the_callers_permission_to_create(fs, tree):
    """A root server creates as the caller: no creating in a directory the caller cannot write,
    no device nodes (CAP_MKNOD), no set-group-ID file in a group the caller is not in."""
    nobody = Context(uid=1234, gid=2345)
    root_dir = fs.lookup(CTX, ROOT_ID, b"dir")                 # root's, 0755
    for make in (lambda: fs.create(nobody, root_dir.nodeid, b"x", 0o644, os.O_RDWR, 0),
                 lambda: fs.mkdir(nobody, root_dir.nodeid, b"x", 0o755, 0),
                 lambda: fs.mknod(nobody, root_dir.nodeid, b"x", stat.S_IFIFO | 0o644, 0, 0),
                 lambda: fs.symlink(nobody, root_dir.nodeid, b"x", b"t")):
        assert _errno(make) == errno.EACCES
    assert not os.path.lexists(tree / "share" / "dir" / "x")
    os.chmod(tree / "share", 0o2777)                          # root's group, set-group-ID
    assert _errno(lambda: fs.mknod(nobody, ROOT_ID, b"null", stat.S_IFCHR | 0o600,
                                   os.makedev(1, 3), 0)) == errno.EPERM
    e, fh, _ = fs.create(nobody, ROOT_ID, b"g", 0o2755, os.O_RDWR, 0)
    st = os.stat(tree / "share" / "g")
    assert (st.st_uid, st.st_gid) == (1234, os.stat(tree / "share").st_gid)
    assert stat.S_IMODE(st.st_mode) == 0o755 == stat.S_IMODE(e.attr.st_mode)   # no S_ISGID
    fs.release(nobody, e.nodeid, fh, 0, False, False, None)


def test_symlink_mknod_link_unlink_rmdir(fs, tree):
    s = fs.symlink(CTX, ROOT_ID, b"s", b"../anything")
    assert os.readlink(tree / "share" / "s") == "../anything" and fs.readlink(CTX, s.nodeid) == b"../anything"
    fifo = fs.mknod(CTX, ROOT_ID, b"fifo", stat.S_IFIFO | 0o600, 0, 0)
    assert stat.S_ISFIFO(fifo.attr.st_mode)
    assert _errno(lambda: fs.open(CTX, fifo.nodeid, os.O_RDONLY)) == errno.ENXIO  # never blocks
    f = fs.lookup(CTX, ROOT_ID, b"file")
    ln = fs.link(CTX, f.nodeid, ROOT_ID, b"hard")
    assert ln.nodeid == f.nodeid and ln.attr.st_nlink == 2
    assert fs.inodes.refs(0, f.nodeid) == 2
    assert fs.unlink(CTX, ROOT_ID, b"hard") == [f.nodeid]
    d = fs.lookup(CTX, ROOT_ID, b"dir")
    fs.unlink(CTX, d.nodeid, b"a")
    assert list(fs.rmdir(CTX, ROOT_ID, b"dir")) == [d.nodeid]
    assert fs.rename(CTX, ROOT_ID, b"file", ROOT_ID, b"s") == [f.nodeid, s.nodeid]
    assert not os.path.lexists(tree / "share" / "file")


def test_read_is_cached_asks_the_page_cache(fs, tree):
    """The hint the host uses to serve a big READ inline: every page of the range cached."""
    page = os.sysconf("SC_PAGE_SIZE")
    e, fh, _ = fs.create(CTX, ROOT_ID, b"big", 0o644, os.O_RDWR, 0o022)
    assert fs.write(CTX, e.nodeid, fh, 0, [memoryview(os.urandom(64 * page))], 0) == 64 * page
    if not fs.read_is_cached(CTX.session, fh, 0, 64 * page):
        pytest.skip("no cachestat(2) here (Linux 6.5+)")
    assert fs.read_is_cached(CTX.session, fh, 10, 3 * page)                  # unaligned: 4 pages
    assert not fs.read_is_cached(CTX.session, fh, 60 * page, 8 * page)       # past the end
    assert not fs.read_is_cached(CTX.session, fh + 1000, 0, page)            # unknown handle
    assert not fs.read_is_cached(CTX.session, fh, 0, 0)
    fs.fsync(CTX, e.nodeid, fh, False)
    fd = os.open(tree / "share" / "big", os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)                   # evict the clean pages
    finally:
        os.close(fd)
    assert not fs.read_is_cached(CTX.session, fh, 0, 64 * page)
    fs.release(CTX, e.nodeid, fh, 0, False, False, None)


def test_readdir_offsets_are_stable_snapshot_indexes(fs, tree):
    for i in range(5):
        (tree / "share" / f"f{i}").write_bytes(b"")
    fh, _ = fs.opendir(CTX, ROOT_ID, 0)
    first = list(fs.readdir(CTX, ROOT_ID, fh, 0))
    assert [d.offset for d in first] == list(range(1, len(first) + 1))
    assert [d.name for d in first[:2]] == [b".", b".."]
    head = first[:4]
    (tree / "share" / "late").write_bytes(b"")
    os.unlink(tree / "share" / "f0")
    rest = list(fs.readdir(CTX, ROOT_ID, fh, head[-1].offset))
    assert head + rest == first  # the listing does not change under a reader
    assert list(fs.readdir(CTX, ROOT_ID, fh, len(first) + 10)) == []
    again = [d.name for d in fs.readdir(CTX, ROOT_ID, fh, 0)]  # rewinddir: a new snapshot
    assert b"late" in again and b"f0" not in again
    by_name = {d.name: d for d in first}
    assert by_name[b"dir"].type == stat.S_IFDIR >> 12 and by_name[b"file"].type == stat.S_IFREG >> 12
    assert by_name[b"ln_etc"].type == stat.S_IFLNK >> 12
    assert by_name[b"."].ino == os.stat(tree / "share").st_ino == by_name[b".."].ino


def test_readdirplus_looks_up_all_but_dot_and_dotdot(fs, tree):
    d = fs.lookup(CTX, ROOT_ID, b"dir")
    (tree / "share" / "dir" / "b").write_bytes(b"bb")
    fh, _ = fs.opendir(CTX, d.nodeid, 0)
    got = list(fs.readdirplus(CTX, d.nodeid, fh, 0))
    assert [(x.name, e is None) for x, e in got[:2]] == [(b".", True), (b"..", True)]
    assert got[1][0].ino == os.stat(tree / "share").st_ino
    plus = {x.name: e for x, e in got[2:]}
    assert set(plus) == {b"a", b"b"}
    assert plus[b"b"].attr.st_size == 2 and fs.inodes.refs(0, plus[b"b"].nodeid) == 1
    # lazy: taking one entry does one lookup
    it = iter(fs.readdirplus(CTX, d.nodeid, fh, 2))
    x, e = next(it)
    assert fs.inodes.refs(0, e.nodeid) == 2
    # entries that vanished since the snapshot are skipped
    os.unlink(tree / "share" / "dir" / "a")
    names = [x.name for x, _ in fs.readdirplus(CTX, d.nodeid, fh, 2)]
    assert b"a" not in names and b"b" in names


def test_xattrs_with_fuse_size_semantics(fs, tree):
    f = fs.lookup(CTX, ROOT_ID, b"file").nodeid
    fs.setxattr(CTX, f, b"user.k", b"value", 0)
    assert fs.getxattr(CTX, f, b"user.k", 0) == 5
    assert fs.getxattr(CTX, f, b"user.k", 5) == b"value"
    assert _errno(lambda: fs.getxattr(CTX, f, b"user.k", 4)) == errno.ERANGE
    assert _errno(lambda: fs.setxattr(CTX, f, b"user.k", b"v", os.XATTR_CREATE)) == errno.EEXIST
    names = fs.listxattr(CTX, f, 1000)
    assert b"user.k\0" in names and names.endswith(b"\0")
    assert fs.listxattr(CTX, f, 0) == len(names)
    assert _errno(lambda: fs.listxattr(CTX, f, 1)) == errno.ERANGE
    fs.removexattr(CTX, f, b"user.k")
    assert _errno(lambda: fs.getxattr(CTX, f, b"user.k", 0)) == errno.ENODATA
    d = fs.lookup(CTX, ROOT_ID, b"dir").nodeid
    fs.setxattr(CTX, d, b"user.dir", b"1", 0)
    assert os.getxattr(tree / "share" / "dir", "user.dir") == b"1"


def test_statfs_syncfs_access(fs, tree):
    st = fs.statfs(CTX, ROOT_ID)
    assert st.f_bsize == os.statvfs(tree / "share").f_bsize
    fs.syncfs(CTX, ROOT_ID)
    f = fs.lookup(CTX, ROOT_ID, b"file").nodeid
    fs.access(CTX, f, os.R_OK | os.W_OK)
    assert _errno(lambda: fs.access(CTX, f, os.X_OK)) == errno.EACCES
    fs.access(CTX, ROOT_ID, os.X_OK)
    other = Context(uid=4242, gid=4242)
    fs.access(other, f, os.R_OK)
    assert _errno(lambda: fs.access(other, f, os.W_OK)) == errno.EACCES
    os.chown(tree / "share" / "file", 4242, 0) if os.geteuid() == 0 else None
    if os.geteuid() == 0:
        fs.access(other, f, os.W_OK)


def test_fallocate_lseek_copy_file_range(fs, tree):
    e, fh, _ = fs.create(CTX, ROOT_ID, b"sparse", 0o644, os.O_RDWR, 0)
    fs.fallocate(CTX, e.nodeid, fh, 0, 0, 8192)
    assert os.path.getsize(tree / "share" / "sparse") == 8192
    fs.fallocate(CTX, e.nodeid, fh, 1, 8192, 4096)  # FALLOC_FL_KEEP_SIZE
    assert os.path.getsize(tree / "share" / "sparse") == 8192
    assert _errno(lambda: fs.fallocate(CTX, e.nodeid, fh, 0, -1 & (2**64 - 1), 1)) == errno.EINVAL
    fs.write(CTX, e.nodeid, fh, 4096, [memoryview(b"data")], 0)
    assert fs.lseek(CTX, e.nodeid, fh, 0, os.SEEK_DATA) in (0, 4096)
    assert fs.lseek(CTX, e.nodeid, fh, 0, os.SEEK_END) == 8192
    assert _errno(lambda: fs.lseek(CTX, e.nodeid, fh, 9000, os.SEEK_DATA)) == errno.ENXIO
    assert _errno(lambda: fs.lseek(CTX, e.nodeid, fh, 0, os.SEEK_CUR)) == errno.EINVAL
    src = fs.lookup(CTX, ROOT_ID, b"file")
    sfh, _ = fs.open(CTX, src.nodeid, os.O_RDONLY)
    assert fs.copy_file_range(CTX, src.nodeid, sfh, 2, e.nodeid, fh, 100, 5, 0) == 5
    with open(tree / "share" / "sparse", "rb") as f:
        f.seek(100)
        assert f.read(5) == b"23456"
    assert _errno(lambda: fs.copy_file_range(CTX, src.nodeid, sfh, 0, e.nodeid, fh, 0, 1, 1)) == errno.EINVAL
    assert _errno(lambda: fs.copy_file_range(CTX, src.nodeid, sfh, 0, e.nodeid, 999, 0, 1, 0)) == errno.EBADF


def test_locks_between_sessions(fs, tree):
    f = fs.lookup(CTX, ROOT_ID, b"file")
    g = fs.lookup(CTX1, ROOT_ID, b"file")
    fh1, _ = fs.open(CTX, f.nodeid, os.O_RDWR)
    fh2, _ = fs.open(CTX1, g.nodeid, os.O_RDWR)
    whole = FileLock(0, (1 << 63) - 1, fcntl.F_WRLCK, 0)
    fs.setlk(CTX, f.nodeid, fh1, 1, FileLock(0, 9, fcntl.F_WRLCK, 100), 0, False)
    got = fs.getlk(CTX1, g.nodeid, fh2, 2, whole, 0)
    assert (got.start, got.end, got.type, got.pid) == (0, 9, fcntl.F_WRLCK, 100)
    assert _errno(lambda: fs.setlk(CTX1, g.nodeid, fh2, 2, FileLock(5, 5, fcntl.F_RDLCK, 0), 0, False)) == errno.EAGAIN
    fs.setlk(CTX1, g.nodeid, fh2, 2, FileLock(10, 20, fcntl.F_RDLCK, 0), 0, False)
    # SETLKW without a completion: granted now, or EOPNOTSUPP where it would wait
    assert _errno(lambda: fs.setlk(CTX1, g.nodeid, fh2, 2, whole, 0, True)) == errno.EOPNOTSUPP
    fs.setlk(CTX1, g.nodeid, fh2, 2, FileLock(30, 30, fcntl.F_WRLCK, 0), 0, True)
    fs.setlk(CTX, f.nodeid, fh1, 1, FileLock(0, 9, fcntl.F_UNLCK, 0), 0, False)
    assert fs.getlk(CTX1, g.nodeid, fh2, 2, FileLock(0, 9, fcntl.F_WRLCK, 0), 0).type == fcntl.F_UNLCK
    assert _errno(lambda: fs.setlk(CTX, f.nodeid, fh1, 1, FileLock(5, 4, fcntl.F_RDLCK, 0), 0, False)) == errno.EINVAL
    assert _errno(lambda: fs.getlk(CTX, f.nodeid, 999, 1, whole, 0)) == errno.EBADF
    # BSD flock
    fs.setlk(CTX, f.nodeid, fh1, 1, whole, 1, False)
    assert _errno(lambda: fs.setlk(CTX1, g.nodeid, fh2, 2, whole, 1, False)) in (errno.EAGAIN, errno.EWOULDBLOCK)
    # FLUSH drops the owner's POSIX locks, RELEASE the handle's flock, drop_session the rest
    fs.flush(CTX1, g.nodeid, fh2, 2)
    assert fs.getlk(CTX, f.nodeid, fh1, 1, whole, 0).type == fcntl.F_UNLCK
    fs.release(CTX, f.nodeid, fh1, 0, False, False, None)
    fs.setlk(CTX1, g.nodeid, fh2, 2, whole, 1, False)
    fs.drop_session(CTX1.session)
    assert fs.locks.table.counts()["flock"] == 0


def test_parked_setlkw_through_the_file_system(fs, tree):
    f = fs.lookup(CTX, ROOT_ID, b"file")
    g = fs.lookup(CTX1, ROOT_ID, b"file")
    fh1, _ = fs.open(CTX, f.nodeid, os.O_RDWR)
    fh2, _ = fs.open(CTX1, g.nodeid, os.O_RDWR)
    lock = FileLock(0, 0, fcntl.F_WRLCK, 0)
    fs.setlk(CTX, f.nodeid, fh1, 1, lock, 0, False)
    done = []
    ctx = CTX1._replace(unique=40)
    assert fs.setlkw(ctx, g.nodeid, fh2, 2, lock, 0, done.append) is True
    assert fs.interrupt(CTX1.session, 41) is False                 # not parked: ignored
    fs.release(CTX, f.nodeid, fh1, 0, True, False, 1)              # RELEASE_FLUSH: unlock on close
    assert done == [0] and fs.interrupt(CTX1.session, 40) is False
    assert fs.setlkw(ctx._replace(unique=42), g.nodeid, fh2, 2, lock, 0, done.append) is False


def test_init_accepts_writeback_per_session(fs, tree):
    offered = InitFlags.WRITEBACK_CACHE | InitFlags.DO_READDIRPLUS | InitFlags.POSIX_LOCKS
    accepted = fs.init(CTX, offered)
    assert accepted & InitFlags.WRITEBACK_CACHE and accepted & InitFlags.DO_READDIRPLUS
    assert not accepted & InitFlags.POSIX_LOCKS
    assert not fs.init(CTX1, InitFlags.DO_READDIRPLUS) & InitFlags.WRITEBACK_CACHE
    f = fs.lookup(CTX, ROOT_ID, b"file")
    fh, _ = fs.open(CTX, f.nodeid, os.O_WRONLY | os.O_APPEND)  # writeback: read-write, no append
    buf = bytearray(2)
    assert fs.read(CTX, f.nodeid, fh, 0, 2, [memoryview(buf)]) == 2
    fs.write(CTX, f.nodeid, fh, 0, [memoryview(b"AB")], 0)
    assert (tree / "share" / "file").read_bytes() == b"AB23456789"
    g = fs.lookup(CTX1, ROOT_ID, b"file")
    fh1, _ = fs.open(CTX1, g.nodeid, os.O_WRONLY | os.O_APPEND)  # no writeback: as asked
    assert _errno(lambda: fs.read(CTX1, g.nodeid, fh1, 0, 2, [memoryview(buf)])) == errno.EBADF
    fs.write(CTX1, g.nodeid, fh1, 0, [memoryview(b"Z")], 0)
    assert (tree / "share" / "file").read_bytes() == b"AB23456789Z"


@pytest.mark.parametrize("cache, timeout, fopen", [("none", 0.0, OpenOutFlags.DIRECT_IO),
                                                   ("auto", 1.0, 0),
                                                   ("always", 86400.0, OpenOutFlags.KEEP_CACHE)])
def test_cache_modes(tree, cache, timeout, fopen):
    with PassthroughFs(tree / "share", cache=cache) as fs:
        e = fs.lookup(CTX, ROOT_ID, b"file")
        assert e.entry_timeout == e.attr_timeout == timeout
        assert fs.open(CTX, e.nodeid, os.O_RDONLY)[1] == fopen
    with pytest.raises(ValueError):
        PassthroughFs(tree / "share", cache="sometimes")


def test_sessions_in_threads(fs, tree):
    import threading

    base = _open_fds(tree)
    errors = []

    def work(session):
        ctx = Context(session=session)
        try:
            for _ in range(50):
                e = fs.lookup(ctx, ROOT_ID, b"file")
                fh, _ = fs.open(ctx, e.nodeid, os.O_RDONLY)
                buf = bytearray(10)
                assert fs.read(ctx, e.nodeid, fh, 0, 10, [memoryview(buf)]) == 10
                fs.release(ctx, e.nodeid, fh, 0, False, False, None)
                d = fs.lookup(ctx, ROOT_ID, b"dir")
                dfh, _ = fs.opendir(ctx, d.nodeid, 0)
                entries = list(fs.readdirplus(ctx, d.nodeid, dfh, 0))
                fs.releasedir(ctx, d.nodeid, dfh, 0)
                fs.batch_forget(ctx, [(x.nodeid, 1) for _, x in entries if x is not None])
                fs.forget(ctx, d.nodeid, 1)
                fs.forget(ctx, e.nodeid, 1)
        except Exception as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors
    assert len(fs.inodes) == 1 and fs.handles.count() == 0 and _open_fds(tree) == base


def test_a_chmod_of_a_new_file_is_not_undone_by_its_create(fs, tree, monkeypatch):
    """CREATE makes the file (open O_CREAT|O_EXCL), then gives it the guest's permission bits
    if the host umask took some away (_adopt: fstat, chmod).  Another session can find the new
    name in between and chmod it (the host serves CREATE and SETATTR on its thread pool while DAX
    is active); that chmod completed, so it must win — _adopt must not take it for the umask's
    doing and "restore" the create's mode (the stale stats of `vfscluster stress --dax always
    --cache always --versions`: a lost chmod, the host's file keeps the create's mode)."""
    import threading

    real_open = os.open
    done = threading.Event()
    state = {}

    def chmod_from_another_session():
        e = fs.lookup(CTX1, ROOT_ID, b"new")
        fs.setattr(CTX1, e.nodeid, SetattrChanges(mode=0o600), None)
        state["nodeid"] = e.nodeid
        done.set()

    def racing_open(path, flags, mode=0o777, *, dir_fd=None):
        fd = real_open(path, flags, mode, dir_fd=dir_fd)
        if path == b"new" and flags & os.O_CREAT and flags & os.O_EXCL and not state:
            state["started"] = True
            t = threading.Thread(target=chmod_from_another_session)
            t.start()
            state["thread"] = t
            done.wait(0.3)        # the chmod lands here unless the create keeps it out
        return fd

    monkeypatch.setattr(os, "open", racing_open)
    e, fh, _ = fs.create(CTX, ROOT_ID, b"new", 0o644, os.O_RDWR | os.O_EXCL, 0)
    monkeypatch.setattr(os, "open", real_open)
    state["thread"].join(5)
    assert done.is_set() and state["nodeid"] == e.nodeid
    # the chmod returned after the file existed: it is the last change of the mode
    assert stat.S_IMODE(os.stat(tree / "share" / "new").st_mode) == 0o600
    assert stat.S_IMODE(fs.getattr(CTX, e.nodeid, None)[0].st_mode) == 0o600
    fs.release(CTX, e.nodeid, fh, 0, False, False, None)
