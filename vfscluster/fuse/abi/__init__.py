"""The FUSE wire format, and nothing else (the counterpart of virtiofsd's ``fuse.rs``).

Constants, opcodes, flag sets and one frozen dataclass per ``struct fuse_*`` of Linux
``include/uapi/linux/fuse.h`` (checked against protocol 7.45; we speak 7.38 and accept 7.31 or
newer), plus vfscluster's one extension, EntryVerOut.
Every struct is little-endian with the C layout's natural padding; pad members (``padding``,
``dummy``, ``unused``, ``spare``, ``reserved``) are ``x`` bytes in the format: written as zeros,
ignored when read, and not dataclass fields.

Each struct class has ``STRUCT`` (a precompiled :class:`struct.Struct`), ``SIZE``,
``unpack_from(buf, offset=0)``, ``pack()`` and ``pack_into(buf, offset=0)``.  Reading a buffer
that is too short raises :class:`~vfscluster.errors.RemoteProtocolError`: the bytes came from the
peer.  Nested C structs (``fuse_entry_out.attr`` ...) are nested dataclasses whose bytes are
flattened into the parent's format.

No semantics live here: what an opcode does, which reply it gets, which minor version sends which
size are the business of the server and the client.  The helpers at the end only convert between
bytes and Python values (directory records, C strings, ``os.stat_result``).

This package re-exports the public names of its submodules (one concept each): ``constants``,
``wire``, ``headers``, ``attr``, ``fileio``, ``session``, ``locks``, ``xattr``, ``statfs``,
``dirent``, ``dax``, ``ioctl``, ``ext``, ``notify``, ``sizes``, ``cstr``.
"""

from .constants import (
    KERNEL_VERSION, KERNEL_MINOR_VERSION, MIN_MINOR_VERSION, ROOT_ID, MIN_READ_BUFFER,
    UNIQUE_RESEND, INVALID_UIDGID, REMOVEMAPPING_MAX_ENTRY, DAX_SHIFT, DAX_SIZE, NAME_OFFSET,
    NAME_OFFSET_DIRENTPLUS, DIRENT_NAME_MAX, CUSE_INIT_BSWAP_RESERVED, INIT_BSWAP_RESERVED,
    MAX_NR_SECCTX, EXT_GROUPS, Opcode, NotifyCode, NOTIFY_LOCK, InitFlags, ENTRYVER_OUT_FLAG,
    split_init_flags, join_init_flags, SetattrValid, OpenOutFlags, AttrFlags, SetupmappingFlags,
    GETATTR_FH, RELEASE_FLUSH, RELEASE_FLOCK_UNLOCK, LK_FLOCK, WRITE_CACHE, WRITE_LOCKOWNER,
    WRITE_KILL_SUIDGID, WRITE_KILL_PRIV, READ_LOCKOWNER, FSYNC_FDATASYNC, OPEN_KILL_SUIDGID,
    SETXATTR_ACL_KILL_SGID, POLL_SCHEDULE_NOTIFY, EXPIRE_ONLY, IOCTL_COMPAT, IOCTL_UNRESTRICTED,
    IOCTL_RETRY, IOCTL_32BIT, IOCTL_DIR, IOCTL_COMPAT_X32, IOCTL_MAX_IOV, ENTRY_OUT_COMPAT_SIZE,
    ATTR_OUT_COMPAT_SIZE, MKNOD_IN_COMPAT_SIZE, WRITE_IN_COMPAT_SIZE, SETXATTR_IN_COMPAT_SIZE,
    INIT_OUT_COMPAT_SIZE, INIT_OUT_COMPAT_22_SIZE, STATFS_COMPAT_SIZE, INIT_IN_COMPAT_SIZE,
)
from .wire import (
    WireStruct,
)
from .headers import (
    InHeader, OutHeader,
)
from .attr import (
    Attr, encode_dev, decode_dev, EntryOut, EntryVerOut, AttrOut, GetattrIn, SetattrIn, StatxIn,
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
    Dirent, dirent_size, direntplus_size, dirent_type, pack_dirent, pack_direntplus, iter_dirents,
    iter_direntplus,
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
from .sizes import (
    entry_out_size, attr_out_size, init_out_size, setxattr_in_size, KERNEL_SIZES,
)
from .cstr import (
    encode_name, decode_cstr,
)

__all__ = [
    "KERNEL_VERSION", "KERNEL_MINOR_VERSION", "MIN_MINOR_VERSION", "ROOT_ID", "MIN_READ_BUFFER",
    "UNIQUE_RESEND", "INVALID_UIDGID", "REMOVEMAPPING_MAX_ENTRY", "DAX_SHIFT", "DAX_SIZE",
    "NAME_OFFSET", "NAME_OFFSET_DIRENTPLUS", "DIRENT_NAME_MAX", "CUSE_INIT_BSWAP_RESERVED",
    "INIT_BSWAP_RESERVED", "MAX_NR_SECCTX", "EXT_GROUPS", "Opcode", "NotifyCode", "NOTIFY_LOCK",
    "InitFlags", "ENTRYVER_OUT_FLAG", "split_init_flags", "join_init_flags", "SetattrValid",
    "OpenOutFlags", "AttrFlags", "SetupmappingFlags", "GETATTR_FH", "RELEASE_FLUSH",
    "RELEASE_FLOCK_UNLOCK", "LK_FLOCK", "WRITE_CACHE", "WRITE_LOCKOWNER", "WRITE_KILL_SUIDGID",
    "WRITE_KILL_PRIV", "READ_LOCKOWNER", "FSYNC_FDATASYNC", "OPEN_KILL_SUIDGID",
    "SETXATTR_ACL_KILL_SGID", "POLL_SCHEDULE_NOTIFY", "EXPIRE_ONLY", "IOCTL_COMPAT",
    "IOCTL_UNRESTRICTED", "IOCTL_RETRY", "IOCTL_32BIT", "IOCTL_DIR", "IOCTL_COMPAT_X32",
    "IOCTL_MAX_IOV", "ENTRY_OUT_COMPAT_SIZE", "ATTR_OUT_COMPAT_SIZE", "MKNOD_IN_COMPAT_SIZE",
    "WRITE_IN_COMPAT_SIZE", "SETXATTR_IN_COMPAT_SIZE", "INIT_OUT_COMPAT_SIZE",
    "INIT_OUT_COMPAT_22_SIZE", "STATFS_COMPAT_SIZE", "INIT_IN_COMPAT_SIZE", "WireStruct",
    "InHeader", "OutHeader", "Attr", "encode_dev", "decode_dev", "EntryOut", "EntryVerOut",
    "AttrOut", "GetattrIn", "SetattrIn", "StatxIn", "OpenIn", "OpenOut", "CreateIn", "MknodIn",
    "MkdirIn", "RenameIn", "Rename2In", "LinkIn", "ReadIn", "WriteIn", "WriteOut", "ReleaseIn",
    "FlushIn", "FsyncIn", "FallocateIn", "LseekIn", "LseekOut", "CopyFileRangeIn",
    "CopyFileRangeOut", "ForgetIn", "ForgetOne", "BatchForgetIn", "InitIn", "InitOut",
    "InterruptIn", "FileLock", "LkIn", "LkOut", "AccessIn", "GetxattrIn", "GetxattrOut",
    "SetxattrIn", "Kstatfs", "StatfsOut", "Dirent", "dirent_size", "direntplus_size", "dirent_type",
    "pack_dirent", "pack_direntplus", "iter_dirents", "iter_direntplus", "SetupmappingIn",
    "RemovemappingIn", "RemovemappingOne", "SyncfsIn", "PollIn", "PollOut", "IoctlIn", "IoctlOut",
    "IoctlIovec", "BmapIn", "BmapOut", "ExtHeader", "SecctxHeader", "Secctx", "NotifyPollWakeupOut",
    "NotifyInvalInodeOut", "NotifyInvalEntryOut", "NotifyDeleteOut", "NotifyStoreOut",
    "NotifyRetrieveOut", "NotifyRetrieveIn", "NotifyPruneOut", "NotifyLockOut", "entry_out_size",
    "attr_out_size", "init_out_size", "setxattr_in_size", "KERNEL_SIZES", "encode_name",
    "decode_cstr",
]
