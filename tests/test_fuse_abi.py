"""Tests for vfscluster.fuse.abi: sizes against linux/fuse.h, layouts, round trips, helpers."""

from __future__ import annotations

import dataclasses
import os
import random
import struct

import pytest

from vfscluster.errors import LocalProtocolError, RemoteProtocolError
from vfscluster.fuse import abi
from vfscluster.fuse.abi import (
    Attr,
    AttrOut,
    EntryOut,
    EntryVerOut,
    FileLock,
    InHeader,
    InitFlags,
    InitIn,
    InitOut,
    Kstatfs,
    LkIn,
    LkOut,
    Opcode,
    OutHeader,
    StatfsOut,
)

# sizeof() of each C struct, read from include/uapi/linux/fuse.h (protocol 7.45); written out here
# independently of the module's own table.
HEADER_SIZES = {
    "InHeader": 40, "OutHeader": 16, "Attr": 88, "EntryOut": 128, "AttrOut": 104,
    "GetattrIn": 16, "SetattrIn": 88, "OpenIn": 8, "OpenOut": 16, "CreateIn": 16, "MknodIn": 16,
    "MkdirIn": 8, "RenameIn": 8, "Rename2In": 16, "LinkIn": 8, "ReadIn": 40, "WriteIn": 40,
    "WriteOut": 8, "ReleaseIn": 24, "FlushIn": 24, "FsyncIn": 16, "ForgetIn": 8, "ForgetOne": 16,
    "BatchForgetIn": 8, "InitIn": 64, "InitOut": 64, "InterruptIn": 8, "FileLock": 24,
    "LkIn": 48, "LkOut": 24, "AccessIn": 8, "GetxattrIn": 8, "GetxattrOut": 8, "SetxattrIn": 16,
    "Kstatfs": 80, "StatfsOut": 80, "Dirent": 24, "FallocateIn": 32, "LseekIn": 24,
    "LseekOut": 8, "CopyFileRangeIn": 56, "CopyFileRangeOut": 8, "SetupmappingIn": 40,
    "RemovemappingIn": 4, "RemovemappingOne": 16, "SyncfsIn": 8, "StatxIn": 24, "PollIn": 24,
    "PollOut": 8, "IoctlIn": 32, "IoctlOut": 16, "IoctlIovec": 16, "BmapIn": 16, "BmapOut": 8,
    "ExtHeader": 8, "SecctxHeader": 8, "Secctx": 8, "NotifyPollWakeupOut": 8,
    "NotifyInvalInodeOut": 24, "NotifyInvalEntryOut": 16, "NotifyDeleteOut": 24,
    "NotifyStoreOut": 24, "NotifyRetrieveOut": 32, "NotifyRetrieveIn": 40, "NotifyPruneOut": 16,
    "NotifyLockOut": 16, "EntryVerOut": 16,
}  # fmt: skip

ALL_STRUCTS = sorted(
    (
        obj
        for obj in vars(abi).values()
        if isinstance(obj, type) and issubclass(obj, abi.WireStruct) and obj is not abi.WireStruct
    ),
    key=lambda c: c.__name__,
)
PAD_NAMES = ("padding", "dummy", "unused", "spare", "reserved")


def _ids(classes):
    return [c.__name__ for c in classes]


# ------------------------------------------------------------------------------------------
# Sizes and shape
# ------------------------------------------------------------------------------------------


def test_every_struct_has_a_header_size():
    assert {c.__name__ for c in ALL_STRUCTS} == set(HEADER_SIZES)
    assert {c.__name__ for c in abi.KERNEL_SIZES} == set(HEADER_SIZES)


@pytest.mark.parametrize("name,size", sorted(HEADER_SIZES.items()))
def test_size_matches_kernel_header(name, size):
    cls = getattr(abi, name)
    assert cls.SIZE == size
    assert cls.STRUCT.size == size
    assert len(cls().pack()) == size
    assert abi.KERNEL_SIZES[cls] == size


@pytest.mark.parametrize("cls", ALL_STRUCTS, ids=_ids(ALL_STRUCTS))
def test_struct_class_shape(cls):
    assert dataclasses.is_dataclass(cls)
    assert cls.__dataclass_params__.frozen
    assert hasattr(cls, "__slots__")
    assert cls.STRUCT.format.startswith("<")
    names = [f.name for f in dataclasses.fields(cls)]
    assert not [n for n in names if n.startswith(PAD_NAMES)]
    obj = cls()  # every field has a default
    if names:
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(obj, names[0], 1)


def test_compat_sizes():
    assert abi.ENTRY_OUT_COMPAT_SIZE == 120
    assert abi.ATTR_OUT_COMPAT_SIZE == 96
    assert abi.MKNOD_IN_COMPAT_SIZE == 8
    assert abi.WRITE_IN_COMPAT_SIZE == 24
    assert abi.SETXATTR_IN_COMPAT_SIZE == 8
    assert abi.INIT_OUT_COMPAT_SIZE == 8
    assert abi.INIT_OUT_COMPAT_22_SIZE == 24
    assert abi.STATFS_COMPAT_SIZE == 48
    assert abi.INIT_IN_COMPAT_SIZE == 16
    assert abi.entry_out_size(8) == 120 and abi.entry_out_size(38) == 128
    assert abi.attr_out_size(8) == 96 and abi.attr_out_size(38) == 104
    assert [abi.init_out_size(m) for m in (4, 5, 22, 23, 38)] == [8, 24, 24, 64, 64]
    assert abi.setxattr_in_size(False) == 8 and abi.setxattr_in_size(True) == 16


def test_constants():
    assert (abi.KERNEL_VERSION, abi.KERNEL_MINOR_VERSION, abi.MIN_MINOR_VERSION) == (7, 38, 31)
    assert abi.ROOT_ID == 1
    assert abi.MIN_READ_BUFFER == 8192
    assert abi.UNIQUE_RESEND == 1 << 63
    assert abi.INVALID_UIDGID == 0xFFFFFFFF
    assert abi.REMOVEMAPPING_MAX_ENTRY == 256
    assert abi.DAX_SHIFT == 21
    assert abi.NAME_OFFSET == 24
    assert abi.NAME_OFFSET_DIRENTPLUS == 152
    assert abi.ENTRYVER_OUT_FLAG == InitFlags.ENTRY_VERSION == 1 << 63
    assert abi.GETATTR_FH == 1
    assert (abi.RELEASE_FLUSH, abi.RELEASE_FLOCK_UNLOCK) == (1, 2)
    assert abi.LK_FLOCK == 1
    assert (abi.WRITE_CACHE, abi.WRITE_LOCKOWNER, abi.WRITE_KILL_SUIDGID) == (1, 2, 4)
    assert abi.READ_LOCKOWNER == 2
    assert abi.FSYNC_FDATASYNC == 1
    assert abi.OPEN_KILL_SUIDGID == 1
    assert abi.SETXATTR_ACL_KILL_SGID == 1


# ------------------------------------------------------------------------------------------
# Enums and flags
# ------------------------------------------------------------------------------------------

OPCODES = """LOOKUP 1 FORGET 2 GETATTR 3 SETATTR 4 READLINK 5 SYMLINK 6 MKNOD 8 MKDIR 9 UNLINK 10
RMDIR 11 RENAME 12 LINK 13 OPEN 14 READ 15 WRITE 16 STATFS 17 RELEASE 18 FSYNC 20 SETXATTR 21
GETXATTR 22 LISTXATTR 23 REMOVEXATTR 24 FLUSH 25 INIT 26 OPENDIR 27 READDIR 28 RELEASEDIR 29
FSYNCDIR 30 GETLK 31 SETLK 32 SETLKW 33 ACCESS 34 CREATE 35 INTERRUPT 36 BMAP 37 DESTROY 38
IOCTL 39 POLL 40 NOTIFY_REPLY 41 BATCH_FORGET 42 FALLOCATE 43 READDIRPLUS 44 RENAME2 45 LSEEK 46
COPY_FILE_RANGE 47 SETUPMAPPING 48 REMOVEMAPPING 49 SYNCFS 50 TMPFILE 51 STATX 52
COPY_FILE_RANGE_64 53 CUSE_INIT 4096""".split()


def test_opcodes():
    expected = dict(zip(OPCODES[::2], map(int, OPCODES[1::2])))
    assert {op.name: op.value for op in Opcode} == expected


def test_notify_codes():
    names = "POLL INVAL_INODE INVAL_ENTRY STORE RETRIEVE DELETE RESEND INC_EPOCH PRUNE".split()
    assert [(c.name, c.value) for c in abi.NotifyCode] == list(zip(names, range(1, 10)))
    assert abi.NOTIFY_LOCK == 7 == abi.NotifyCode.RESEND  # the documented collision


INIT_BITS = """ASYNC_READ POSIX_LOCKS FILE_OPS ATOMIC_O_TRUNC EXPORT_SUPPORT BIG_WRITES DONT_MASK
SPLICE_WRITE SPLICE_MOVE SPLICE_READ FLOCK_LOCKS HAS_IOCTL_DIR AUTO_INVAL_DATA DO_READDIRPLUS
READDIRPLUS_AUTO ASYNC_DIO WRITEBACK_CACHE NO_OPEN_SUPPORT PARALLEL_DIROPS HANDLE_KILLPRIV
POSIX_ACL ABORT_ERROR MAX_PAGES CACHE_SYMLINKS NO_OPENDIR_SUPPORT EXPLICIT_INVAL_DATA
MAP_ALIGNMENT SUBMOUNTS HANDLE_KILLPRIV_V2 SETXATTR_EXT INIT_EXT INIT_RESERVED SECURITY_CTX
HAS_INODE_DAX CREATE_SUPP_GROUP HAS_EXPIRE_ONLY DIRECT_IO_ALLOW_MMAP PASSTHROUGH
NO_EXPORT_SUPPORT HAS_RESEND ALLOW_IDMAP OVER_IO_URING REQUEST_TIMEOUT""".split()


def test_init_flag_bits():
    for bit, name in enumerate(INIT_BITS):
        assert InitFlags[name] == 1 << bit, name
    assert InitFlags.DIRECT_IO_RELAX == InitFlags.DIRECT_IO_ALLOW_MMAP
    assert InitFlags.ENTRY_VERSION == 1 << 63


def test_other_flag_sets():
    setattr_names = """MODE UID GID SIZE ATIME MTIME FH ATIME_NOW MTIME_NOW LOCKOWNER CTIME
    KILL_SUIDGID""".split()
    assert [abi.SetattrValid[n] for n in setattr_names] == [1 << i for i in range(12)]
    fopen = """DIRECT_IO KEEP_CACHE NONSEEKABLE CACHE_DIR STREAM NOFLUSH PARALLEL_DIRECT_WRITES
    PASSTHROUGH""".split()
    assert [abi.OpenOutFlags[n] for n in fopen] == [1 << i for i in range(8)]
    assert (abi.AttrFlags.SUBMOUNT, abi.AttrFlags.DAX) == (1, 2)
    assert (abi.SetupmappingFlags.WRITE, abi.SetupmappingFlags.READ) == (1, 2)


@pytest.mark.parametrize(
    "flags",
    [
        0,
        InitFlags.ASYNC_READ | InitFlags.INIT_EXT,
        InitFlags.INIT_RESERVED | InitFlags.SECURITY_CTX,
        InitFlags.HAS_INODE_DAX | InitFlags.MAP_ALIGNMENT | InitFlags.INIT_EXT,
        InitFlags.REQUEST_TIMEOUT | InitFlags.ENTRY_VERSION,
        (1 << 64) - 1,
    ],
)
def test_split_join_init_flags(flags):
    low, high = abi.split_init_flags(flags)
    assert 0 <= low < 1 << 32 and 0 <= high < 1 << 32
    assert low == int(flags) & 0xFFFFFFFF
    assert high == int(flags) >> 32
    joined = abi.join_init_flags(low, high)
    assert isinstance(joined, InitFlags)
    assert joined == flags


def test_split_high_bits_land_in_flags2():
    low, high = abi.split_init_flags(InitFlags.HAS_INODE_DAX | InitFlags.ENTRY_VERSION)
    assert low == 0
    assert high == (1 << 1) | (1 << 31)
    assert abi.join_init_flags(0, 1 << 1) == InitFlags.HAS_INODE_DAX


# ------------------------------------------------------------------------------------------
# Round trips
# ------------------------------------------------------------------------------------------


def _pad_mask(cls) -> bytes:
    """0xff at every data byte of cls's layout, 0x00 at every pad byte."""
    return cls.unpack_from(b"\xff" * cls.SIZE).pack()


@pytest.mark.parametrize("cls", ALL_STRUCTS, ids=_ids(ALL_STRUCTS))
def test_round_trip_random_bytes(cls):
    rng = random.Random(cls.__name__)
    mask = _pad_mask(cls)
    for _ in range(20):
        raw = rng.randbytes(cls.SIZE)
        obj = cls.unpack_from(raw)
        packed = obj.pack()
        # data bytes survive, pad bytes come out as zero
        assert packed == bytes(a & m for a, m in zip(raw, mask))
        assert cls.unpack_from(packed) == obj
        # at an offset, in a bigger buffer
        buf = bytearray(b"\xee" * (cls.SIZE + 13))
        obj.pack_into(buf, 5)
        assert bytes(buf[5 : 5 + cls.SIZE]) == packed
        assert buf[:5] == b"\xee" * 5 and buf[5 + cls.SIZE :] == b"\xee" * 8
        assert cls.unpack_from(buf, 5) == obj
        assert cls.unpack_from(memoryview(bytes(buf)), 5) == obj


@pytest.mark.parametrize("cls", ALL_STRUCTS, ids=_ids(ALL_STRUCTS))
def test_round_trip_from_fields(cls):
    """Build from keyword fields (nested ones too), pack, unpack: equal."""
    template = cls.unpack_from(random.Random(cls.__name__ + "x").randbytes(cls.SIZE))
    kwargs = {f.name: getattr(template, f.name) for f in dataclasses.fields(cls)}
    obj = cls(**kwargs)
    assert obj == template
    assert cls.unpack_from(obj.pack()) == obj


@pytest.mark.parametrize("cls", ALL_STRUCTS, ids=_ids(ALL_STRUCTS))
def test_decoded_struct_is_a_whole_instance(cls):
    """Decoders fill the slots directly (no dataclass __init__): the result is the same frozen,
    hashable value that the constructor makes."""
    assert cls._BUILD is not cls
    obj = cls.unpack_from(random.Random(cls.__name__ + "b").randbytes(cls.SIZE))
    assert type(obj) is cls
    twin = cls(**{f.name: getattr(obj, f.name) for f in dataclasses.fields(cls)})
    assert obj == twin and hash(obj) == hash(twin) and repr(obj) == repr(twin)
    names = [f.name for f in dataclasses.fields(cls)]
    if names:
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(obj, names[0], 1)


@pytest.mark.parametrize("cls", ALL_STRUCTS, ids=_ids(ALL_STRUCTS))
def test_short_buffer_raises(cls):
    with pytest.raises(RemoteProtocolError):
        cls.unpack_from(bytes(cls.SIZE - 1))
    with pytest.raises(RemoteProtocolError):
        cls.unpack_from(bytes(cls.SIZE), 1)
    with pytest.raises(RemoteProtocolError):
        cls.unpack_from(b"")


def test_pad_bytes_written_as_zero_and_ignored():
    raw = bytearray(b"\xab" * 40)
    hdr = InHeader.unpack_from(raw)
    assert hdr.total_extlen == 0xABAB
    assert hdr.pack()[38:] == b"\0\0"
    assert [f.name for f in dataclasses.fields(InHeader)] == [
        "len", "opcode", "unique", "nodeid", "uid", "gid", "pid", "total_extlen",
    ]  # fmt: skip


# ------------------------------------------------------------------------------------------
# Layouts (field offsets from the C header)
# ------------------------------------------------------------------------------------------


def test_in_header_layout():
    hdr = InHeader(len=40, opcode=Opcode.GETATTR, unique=2, nodeid=1, uid=3, gid=4, pid=5,
                   total_extlen=6)  # fmt: skip
    assert hdr.pack() == struct.pack("<IIQQIIIHH", 40, 3, 2, 1, 3, 4, 5, 6, 0)
    back = InHeader.unpack_from(hdr.pack())
    assert back == hdr and back.opcode == Opcode.GETATTR


def test_out_header_negative_errno():
    hdr = OutHeader(len=16, error=-2, unique=7)
    assert hdr.pack() == struct.pack("<IiQ", 16, -2, 7)
    assert OutHeader.unpack_from(hdr.pack()).error == -2


def test_signed_fields():
    assert abi.OpenOut(backing_id=-1).pack()[12:] == b"\xff" * 4
    assert abi.OpenOut.unpack_from(abi.OpenOut(backing_id=-5).pack()).backing_id == -5
    assert abi.NotifyLockOut.unpack_from(abi.NotifyLockOut(9, -11).pack()).error == -11
    assert abi.IoctlOut.unpack_from(abi.IoctlOut(result=-1).pack()).result == -1
    inval = abi.NotifyInvalInodeOut(ino=1, off=-1, len=-1)
    assert abi.NotifyInvalInodeOut.unpack_from(inval.pack()) == inval
    with pytest.raises(struct.error):
        OutHeader(error=1 << 31).pack()


def test_nested_layouts():
    attr = Attr(ino=11, mode=0o100644, flags=abi.AttrFlags.DAX)
    entry = EntryOut(nodeid=5, generation=6, entry_valid=1, attr_valid=2, attr=attr)
    raw = entry.pack()
    assert raw[40:] == attr.pack()
    assert struct.unpack_from("<QQ", raw) == (5, 6)
    assert EntryOut.unpack_from(raw).attr == attr
    assert EntryOut().attr == Attr()

    out = AttrOut(attr_valid=3, attr_valid_nsec=4, attr=attr)
    assert out.pack()[16:] == attr.pack()
    assert out.pack()[12:16] == bytes(4)

    lk = FileLock(start=1, end=2, type=1, pid=99)
    lkin = LkIn(fh=7, owner=8, lk=lk, lk_flags=abi.LK_FLOCK)
    raw = lkin.pack()
    assert raw[16:40] == lk.pack()
    assert struct.unpack_from("<I", raw, 40) == (1,)
    assert LkIn.unpack_from(raw) == lkin
    assert LkOut(lk).pack() == lk.pack()
    assert LkOut.unpack_from(lk.pack()).lk == lk

    st = Kstatfs(blocks=1, bfree=2, bavail=3, files=4, ffree=5, bsize=6, namelen=7, frsize=8)
    assert StatfsOut(st).pack() == st.pack()
    assert struct.unpack_from("<5Q3I", st.pack()) == (1, 2, 3, 4, 5, 6, 7, 8)
    assert StatfsOut.unpack_from(st.pack()).st == st


def test_init_out_layout():
    out = InitOut(major=7, minor=38, max_readahead=1, flags=2, max_background=3,
                  congestion_threshold=4, max_write=5, time_gran=6, max_pages=7,
                  map_alignment=8, flags2=9, max_stack_depth=10, request_timeout=11)  # fmt: skip
    raw = out.pack()
    assert struct.unpack_from("<4IHHIIHHIIH", raw) == (7, 38, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11)
    assert raw[42:] == bytes(22)
    assert raw[: abi.init_out_size(22)] == raw[:24]


def test_setattr_and_misc_layouts():
    s = abi.SetattrIn(valid=1, fh=2, size=3, lock_owner=4, atime=5, mtime=6, ctime=7,
                      atimensec=8, mtimensec=9, ctimensec=10, mode=11, uid=12, gid=13)  # fmt: skip
    assert s.pack() == struct.pack("<II6Q4III II", 1, 0, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 0,
                                   12, 13, 0)  # fmt: skip
    assert abi.FlushIn(fh=1, lock_owner=2).pack() == struct.pack("<QIIQ", 1, 0, 0, 2)
    assert abi.RemovemappingIn(count=3).pack() == struct.pack("<I", 3)
    assert abi.SyncfsIn().pack() == bytes(8)
    assert abi.NotifyLockOut(unique=5, error=-4).pack() == struct.pack("<Qii", 5, -4, 0)
    assert EntryVerOut(version_index=3, version=4).pack() == struct.pack("<QQ", 3, 4)
    assert abi.CopyFileRangeOut(bytes_copied=1 << 40).pack() == struct.pack("<Q", 1 << 40)
    w = abi.WriteIn(fh=1, offset=2, size=3, write_flags=4, lock_owner=5, flags=6)
    assert w.pack() == struct.pack("<QQIIQII", 1, 2, 3, 4, 5, 6, 0)


def test_unpack_compat_zero_fills():
    full = abi.SetxattrIn(size=10, flags=2, setxattr_flags=1)
    old = abi.SetxattrIn.unpack_compat(full.pack(), 0, abi.SETXATTR_IN_COMPAT_SIZE)
    assert old == abi.SetxattrIn(size=10, flags=2, setxattr_flags=0)
    w = abi.WriteIn(fh=1, offset=2, size=3, write_flags=4, lock_owner=5, flags=6)
    assert abi.WriteIn.unpack_compat(w.pack(), 0, 24) == abi.WriteIn(1, 2, 3, 4)
    assert abi.MknodIn.unpack_compat(b"\0" * 4 + abi.MknodIn(1, 2, 3).pack(), 4, 8) == (
        abi.MknodIn(1, 2, 0)
    )
    assert abi.WriteIn.unpack_compat(w.pack()) == w
    with pytest.raises(RemoteProtocolError):
        abi.WriteIn.unpack_compat(bytes(20), 0, 24)
    with pytest.raises(LocalProtocolError):
        abi.WriteIn.unpack_compat(bytes(80), 0, 48)


# ------------------------------------------------------------------------------------------
# FUSE_INIT
# ------------------------------------------------------------------------------------------


def test_init_in_parse_16_bytes():
    body = struct.pack("<4I", 7, 31, 131072, InitFlags.ASYNC_READ | InitFlags.MAP_ALIGNMENT)
    init = InitIn.parse(body)
    assert (init.major, init.minor, init.max_readahead) == (7, 31, 131072)
    assert init.flags == InitFlags.ASYNC_READ | InitFlags.MAP_ALIGNMENT
    assert init.flags2 == 0
    assert init.all_flags == InitFlags.ASYNC_READ | InitFlags.MAP_ALIGNMENT


def test_init_in_parse_64_bytes():
    flags = InitFlags.INIT_EXT | InitFlags.POSIX_LOCKS | InitFlags.HAS_INODE_DAX
    low, high = abi.split_init_flags(flags)
    body = InitIn(major=7, minor=45, max_readahead=4096, flags=low, flags2=high).pack()
    assert len(body) == 64
    init = InitIn.parse(body)
    assert (init.minor, init.flags2) == (45, 2)
    assert init.all_flags == flags
    assert InitIn.parse(body + b"\x99" * 16) == init  # extra ignored
    # flags2 without INIT_EXT does not count
    no_ext = InitIn(major=7, minor=36, flags=0, flags2=high)
    assert no_ext.all_flags == 0


def test_init_in_parse_errors():
    with pytest.raises(RemoteProtocolError):
        InitIn.parse(bytes(15))
    with pytest.raises(RemoteProtocolError):
        InitIn.parse(struct.pack("<5I", 7, 38, 0, InitFlags.INIT_EXT, 1))  # 20 bytes, EXT set
    assert InitIn.parse(struct.pack("<5I", 7, 30, 0, 0, 1)).flags2 == 0  # 20 bytes, no EXT


def test_init_out_flags():
    low, high = abi.split_init_flags(InitFlags.INIT_EXT | InitFlags.ENTRY_VERSION)
    out = InitOut.unpack_from(InitOut(major=7, minor=38, flags=low, flags2=high).pack())
    assert abi.ENTRYVER_OUT_FLAG in out.all_flags


# ------------------------------------------------------------------------------------------
# Directory records
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n,size,plus", [(1, 32, 160), (8, 32, 160), (9, 40, 168), (255, 280, 408)])
def test_dirent_sizes(n, size, plus):
    assert abi.dirent_size(n) == size
    assert abi.direntplus_size(n) == plus


def test_pack_dirent_padding():
    rec = abi.pack_dirent(5, 1, abi.dirent_type(0o040755), b"abc")
    assert len(rec) == abi.dirent_size(3) == 32
    assert rec[:24] == struct.pack("<QQII", 5, 1, 3, 4)
    assert rec[24:27] == b"abc" and rec[27:] == bytes(5)
    assert len(abi.pack_dirent(1, 1, 8, b"12345678")) == 32  # exact fit, no extra padding
    with pytest.raises(LocalProtocolError):
        abi.pack_dirent(1, 1, 8, b"")
    with pytest.raises(LocalProtocolError):
        abi.pack_dirent(1, 1, 8, b"a/b")
    with pytest.raises(LocalProtocolError):
        abi.pack_dirent(1, 1, 8, b"x" * 256)


NAMES = [b"a", b"..", b"file.txt", b"exactly8", b"x" * 255, "ünï".encode()]


def test_iter_dirents():
    buf = b"".join(abi.pack_dirent(100 + i, i + 1, 8, n) for i, n in enumerate(NAMES))
    got = list(abi.iter_dirents(buf))
    assert [name for _, name in got] == NAMES
    assert [d.ino for d, _ in got] == [100 + i for i in range(len(NAMES))]
    assert [d.off for d, _ in got] == list(range(1, len(NAMES) + 1))
    assert all(d.namelen == len(n) and d.type == 8 for (d, _), n in zip(got, NAMES))
    assert list(abi.iter_dirents(memoryview(buf))) == got
    assert list(abi.iter_dirents(b"")) == []


def test_iter_dirents_errors():
    buf = abi.pack_dirent(1, 1, 8, b"one") + abi.pack_dirent(2, 2, 8, b"second")
    for cut in (len(buf) - 1, len(buf) - 8, 32 + 23, 32 + 5):
        with pytest.raises(RemoteProtocolError):
            list(abi.iter_dirents(buf[:cut]))
    with pytest.raises(RemoteProtocolError):  # namelen 0
        list(abi.iter_dirents(struct.pack("<QQII", 1, 1, 0, 8) + bytes(8)))
    with pytest.raises(RemoteProtocolError):  # namelen > 255
        list(abi.iter_dirents(struct.pack("<QQII", 1, 1, 256, 8) + bytes(256)))
    with pytest.raises(RemoteProtocolError):  # namelen beyond the buffer
        list(abi.iter_dirents(struct.pack("<QQII", 1, 1, 200, 8) + bytes(8)))
    with pytest.raises(RemoteProtocolError):  # '/' in a name
        list(abi.iter_dirents(struct.pack("<QQII", 1, 1, 3, 8) + b"a/b" + bytes(5)))


def test_iter_direntplus():
    entries = [EntryOut(nodeid=10 + i, attr=Attr(ino=20 + i, mode=0o100600)) for i in range(3)]
    names = [b"a", b"bbbbbbbbb", b"c" * 100]
    buf = b"".join(
        abi.pack_direntplus(e, e.attr.ino, i + 1, 8, n)
        for i, (e, n) in enumerate(zip(entries, names))
    )
    assert len(buf) == sum(abi.direntplus_size(len(n)) for n in names)
    got = list(abi.iter_direntplus(buf))
    assert [e for e, _, _ in got] == entries
    assert [n for _, _, n in got] == names
    assert [d.ino for _, d, _ in got] == [20, 21, 22]
    for cut in (len(buf) - 1, 151, 160 + 100):
        with pytest.raises(RemoteProtocolError):
            list(abi.iter_direntplus(buf[:cut]))


# ------------------------------------------------------------------------------------------
# stat / statvfs conversion
# ------------------------------------------------------------------------------------------


def test_attr_from_stat_round_trip(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"hello world")
    os.utime(path, ns=(1_600_000_000_123_456_789, 1_700_000_000_987_654_321))
    st = os.stat(path)
    attr = Attr.from_stat(st, flags=abi.AttrFlags.SUBMOUNT)
    assert (attr.ino, attr.size, attr.mode, attr.nlink) == (st.st_ino, 11, st.st_mode, 1)
    assert (attr.uid, attr.gid, attr.blocks, attr.blksize) == (
        st.st_uid, st.st_gid, st.st_blocks, st.st_blksize,
    )  # fmt: skip
    assert (attr.atime, attr.atimensec) == (1_600_000_000, 123_456_789)
    assert (attr.mtime, attr.mtimensec) == (1_700_000_000, 987_654_321)
    assert attr.flags == abi.AttrFlags.SUBMOUNT

    back = Attr.unpack_from(attr.pack()).to_stat_result(dev=st.st_dev)
    assert isinstance(back, os.stat_result)
    for name in (
        "st_mode", "st_ino", "st_dev", "st_nlink", "st_uid", "st_gid", "st_size", "st_atime",
        "st_mtime", "st_ctime", "st_atime_ns", "st_mtime_ns", "st_ctime_ns", "st_blksize",
        "st_blocks", "st_rdev",
    ):  # fmt: skip
        assert getattr(back, name) == getattr(st, name), name
    assert back[7] == st[7] and isinstance(back.st_mtime, float)
    assert Attr.from_stat(back) == Attr.from_stat(st)


def test_attr_negative_time_and_rdev():
    fields = [0] * os.stat_result.n_fields
    fields[0] = 0o020600  # character device
    fields[13] = -1_500_000_000  # st_atime_ns: before 1970
    fields[18] = os.makedev(136, 300)  # st_rdev with minor > 255
    st = os.stat_result(fields)
    attr = Attr.from_stat(st)
    assert attr.atime == (1 << 64) - 2 and attr.atimensec == 500_000_000
    assert attr.rdev == (300 & 0xFF) | (136 << 8) | ((300 & ~0xFF) << 12)
    back = Attr.unpack_from(attr.pack()).to_stat_result()
    assert back.st_atime_ns == -1_500_000_000
    assert back.st_rdev == os.makedev(136, 300)
    assert abi.decode_dev(abi.encode_dev(os.makedev(8, 1))) == os.makedev(8, 1)


def test_kstatfs_from_statvfs(tmp_path):
    sv = os.statvfs(tmp_path)
    ks = Kstatfs.from_statvfs(sv)
    assert (ks.blocks, ks.bfree, ks.bavail, ks.files, ks.ffree) == (
        sv.f_blocks, sv.f_bfree, sv.f_bavail, sv.f_files, sv.f_ffree,
    )  # fmt: skip
    assert (ks.bsize, ks.namelen, ks.frsize) == (sv.f_bsize, sv.f_namemax, sv.f_frsize)
    back = Kstatfs.unpack_from(ks.pack()).to_statvfs_result()
    assert isinstance(back, os.statvfs_result)
    for name in ("f_bsize", "f_frsize", "f_blocks", "f_bfree", "f_bavail", "f_files",
                 "f_ffree", "f_namemax"):  # fmt: skip
        assert getattr(back, name) == getattr(sv, name), name
    assert back.f_favail == sv.f_ffree
    assert Kstatfs.from_statvfs(back) == ks


# ------------------------------------------------------------------------------------------
# C strings
# ------------------------------------------------------------------------------------------


def test_encode_name():
    assert abi.encode_name(b"foo") == b"foo\0"
    assert abi.encode_name(bytearray(b"")) == b"\0"
    with pytest.raises(LocalProtocolError):
        abi.encode_name(b"a\0b")


def test_decode_cstr():
    body = abi.RenameIn(newdir=3).pack() + abi.encode_name(b"old") + abi.encode_name(b"new")
    old, pos = abi.decode_cstr(body, 8)
    new, end = abi.decode_cstr(memoryview(body), pos)
    assert (old, new, end) == (b"old", b"new", len(body))
    assert abi.decode_cstr(b"\0") == (b"", 1)
    with pytest.raises(RemoteProtocolError):
        abi.decode_cstr(b"no terminator")
    with pytest.raises(RemoteProtocolError):
        abi.decode_cstr(b"abc\0", 4)
