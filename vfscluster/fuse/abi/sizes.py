"""Struct sizes: the version-dependent (compat) sizes and the table of kernel sizeof() values.

The sizes older protocol minors use (a prefix of the current struct) with the helpers that pick
one for a session, and ``KERNEL_SIZES``, every struct class of the ABI -> sizeof() of its C
struct, asserted at import time.
"""

from __future__ import annotations

from .constants import (
    REMOVEMAPPING_MAX_ENTRY, NAME_OFFSET, NAME_OFFSET_DIRENTPLUS, ENTRY_OUT_COMPAT_SIZE,
    ATTR_OUT_COMPAT_SIZE, SETXATTR_IN_COMPAT_SIZE, INIT_OUT_COMPAT_SIZE, INIT_OUT_COMPAT_22_SIZE,
)
from .headers import (
    InHeader, OutHeader,
)
from .attr import (
    Attr, EntryOut, EntryVerOut, AttrOut, GetattrIn, SetattrIn, StatxIn,
)
from .fileio import (
    OpenIn, OpenOut, CreateIn, MknodIn, MkdirIn, RenameIn, Rename2In, LinkIn, ReadIn, WriteIn,
    WriteOut, ReleaseIn, FlushIn, FsyncIn, FallocateIn, LseekIn, LseekOut, CopyFileRangeIn,
    CopyFileRangeOut,
)
from .session import (
    ForgetIn, ForgetOne, BatchForgetIn, InitIn, InitOut, InterruptIn,
)
from .locks import (
    FileLock, LkIn, LkOut,
)
from .xattr import (
    AccessIn, GetxattrIn, GetxattrOut, SetxattrIn,
)
from .statfs import (
    Kstatfs, StatfsOut,
)
from .dirent import (
    Dirent,
)
from .dax import (
    SetupmappingIn, RemovemappingIn, RemovemappingOne, SyncfsIn,
)
from .ioctl import (
    PollIn, PollOut, IoctlIn, IoctlOut, IoctlIovec, BmapIn, BmapOut,
)
from .ext import (
    ExtHeader, SecctxHeader, Secctx,
)
from .notify import (
    NotifyPollWakeupOut, NotifyInvalInodeOut, NotifyInvalEntryOut, NotifyDeleteOut, NotifyStoreOut,
    NotifyRetrieveOut, NotifyRetrieveIn, NotifyPruneOut, NotifyLockOut,
)

# --------------------------------------------------------------------------------------------
# Version-dependent sizes: which prefix of a struct a session at an older minor uses.
# --------------------------------------------------------------------------------------------


def entry_out_size(minor: int) -> int:
    """Bytes of fuse_entry_out for a session at protocol 7.``minor``."""
    return ENTRY_OUT_COMPAT_SIZE if minor < 9 else EntryOut.SIZE


def attr_out_size(minor: int) -> int:
    """Bytes of fuse_attr_out for a session at protocol 7.``minor``."""
    return ATTR_OUT_COMPAT_SIZE if minor < 9 else AttrOut.SIZE


def init_out_size(minor: int) -> int:
    """Bytes of the fuse_init_out reply for a kernel at protocol 7.``minor``."""
    if minor < 5:
        return INIT_OUT_COMPAT_SIZE
    if minor < 23:
        return INIT_OUT_COMPAT_22_SIZE
    return InitOut.SIZE


def setxattr_in_size(setxattr_ext: bool) -> int:
    """Bytes of fuse_setxattr_in: 16 only when FUSE_SETXATTR_EXT was negotiated."""
    return SetxattrIn.SIZE if setxattr_ext else SETXATTR_IN_COMPAT_SIZE


# --------------------------------------------------------------------------------------------
# Sizes, asserted against the kernel header's sizeof()
# --------------------------------------------------------------------------------------------

KERNEL_SIZES: dict[type, int] = {
    InHeader: 40, OutHeader: 16, Attr: 88, EntryOut: 128, AttrOut: 104, GetattrIn: 16,
    SetattrIn: 88, OpenIn: 8, OpenOut: 16, CreateIn: 16, MknodIn: 16, MkdirIn: 8, RenameIn: 8,
    Rename2In: 16, LinkIn: 8, ReadIn: 40, WriteIn: 40, WriteOut: 8, ReleaseIn: 24, FlushIn: 24,
    FsyncIn: 16, ForgetIn: 8, ForgetOne: 16, BatchForgetIn: 8, InitIn: 64, InitOut: 64,
    InterruptIn: 8, FileLock: 24, LkIn: 48, LkOut: 24, AccessIn: 8, GetxattrIn: 8,
    GetxattrOut: 8, SetxattrIn: 16, Kstatfs: 80, StatfsOut: 80, Dirent: 24, FallocateIn: 32,
    LseekIn: 24, LseekOut: 8, CopyFileRangeIn: 56, CopyFileRangeOut: 8, SetupmappingIn: 40,
    RemovemappingIn: 4, RemovemappingOne: 16, SyncfsIn: 8, StatxIn: 24, PollIn: 24, PollOut: 8,
    IoctlIn: 32, IoctlOut: 16, IoctlIovec: 16, BmapIn: 16, BmapOut: 8, ExtHeader: 8,
    SecctxHeader: 8, Secctx: 8, NotifyPollWakeupOut: 8, NotifyInvalInodeOut: 24,
    NotifyInvalEntryOut: 16, NotifyDeleteOut: 24, NotifyStoreOut: 24, NotifyRetrieveOut: 32,
    NotifyRetrieveIn: 40, NotifyPruneOut: 16, NotifyLockOut: 16, EntryVerOut: 16,
}  # fmt: skip
"""Every struct class of this module -> sizeof() of its C struct."""

for _cls, _size in KERNEL_SIZES.items():
    assert _cls.SIZE == _size, (_cls.__name__, _cls.SIZE, _size)
    assert _cls.unpack_from(bytes(_size)).pack() == bytes(_size), _cls.__name__
del _cls, _size
assert NAME_OFFSET == Dirent.SIZE
assert NAME_OFFSET_DIRENTPLUS == EntryOut.SIZE + Dirent.SIZE
assert REMOVEMAPPING_MAX_ENTRY == 4096 // RemovemappingOne.SIZE
