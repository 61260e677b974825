"""Protocol constants, opcodes and flag sets of the FUSE wire format.

The version numbers we speak and accept, the ``Opcode`` and ``NotifyCode`` enums, ``InitFlags``
(with the helpers that split it into and join it from the two u32 words of fuse_init_*), the
other flag enums, the single-bit flag constants of the request and reply structs, and the
struct sizes older protocol minors use.
"""

from __future__ import annotations

import enum

# --------------------------------------------------------------------------------------------
# Protocol constants
# --------------------------------------------------------------------------------------------

KERNEL_VERSION = 7
KERNEL_MINOR_VERSION = 38  # the minor we speak (the header is at 7.45)
MIN_MINOR_VERSION = 31  # oldest minor we accept: SETUPMAPPING/REMOVEMAPPING and map_alignment
ROOT_ID = 1
MIN_READ_BUFFER = 8192

UNIQUE_RESEND = 1 << 63  # high bit of fuse_in_header.unique: a resent request (7.40)
INVALID_UIDGID = 0xFFFF_FFFF  # in_header uid/gid when an idmapped mount cannot map the caller

REMOVEMAPPING_MAX_ENTRY = 256  # PAGE_SIZE / sizeof(fuse_removemapping_one) with 4 KiB pages
DAX_SHIFT = 21  # fs/fuse/dax.c: DAX ranges are 2 MiB
DAX_SIZE = 1 << DAX_SHIFT

NAME_OFFSET = 24  # offsetof(struct fuse_dirent, name)
NAME_OFFSET_DIRENTPLUS = 152  # offsetof(struct fuse_direntplus, dirent.name)
DIRENT_NAME_MAX = 255  # longest name we accept in a directory record

# Reserved opcode values that reveal a peer of the other endianness.
CUSE_INIT_BSWAP_RESERVED = 4096 << 8
INIT_BSWAP_RESERVED = 26 << 24

# Extension types (fuse_ext_header.type; in_header.total_extlen counts 8-byte units).
MAX_NR_SECCTX = 31  # types 0..31 are fuse_secctx_header
EXT_GROUPS = 32  # struct fuse_supp_groups

_U32 = 0xFFFF_FFFF
_U64 = 0xFFFF_FFFF_FFFF_FFFF


class Opcode(enum.IntEnum):
    """``enum fuse_opcode`` (7 and 19 are unused)."""

    LOOKUP = 1  # name -> entry
    FORGET = 2  # drop nlookup references; no reply
    GETATTR = 3
    SETATTR = 4
    READLINK = 5
    SYMLINK = 6  # name\0target\0
    MKNOD = 8
    MKDIR = 9
    UNLINK = 10
    RMDIR = 11
    RENAME = 12
    LINK = 13
    OPEN = 14
    READ = 15
    WRITE = 16
    STATFS = 17
    RELEASE = 18
    FSYNC = 20
    SETXATTR = 21
    GETXATTR = 22
    LISTXATTR = 23
    REMOVEXATTR = 24
    FLUSH = 25
    INIT = 26  # session negotiation, first request
    OPENDIR = 27
    READDIR = 28
    RELEASEDIR = 29
    FSYNCDIR = 30
    GETLK = 31
    SETLK = 32
    SETLKW = 33  # blocking SETLK
    ACCESS = 34
    CREATE = 35  # atomic create + open
    INTERRUPT = 36  # cancel the request with the given unique
    BMAP = 37
    DESTROY = 38  # session teardown
    IOCTL = 39
    POLL = 40
    NOTIFY_REPLY = 41  # answer to NOTIFY_RETRIEVE
    BATCH_FORGET = 42  # many FORGETs; no reply
    FALLOCATE = 43
    READDIRPLUS = 44  # READDIR + LOOKUP per entry
    RENAME2 = 45  # RENAME with flags
    LSEEK = 46  # SEEK_DATA / SEEK_HOLE
    COPY_FILE_RANGE = 47
    SETUPMAPPING = 48  # DAX: map a file range into the cache window
    REMOVEMAPPING = 49  # DAX: unmap window ranges
    SYNCFS = 50
    TMPFILE = 51
    STATX = 52
    COPY_FILE_RANGE_64 = 53  # COPY_FILE_RANGE with a 64-bit result
    CUSE_INIT = 4096


class NotifyCode(enum.IntEnum):
    """``enum fuse_notify_code``: sent as fuse_out_header with unique 0 and error = code."""

    POLL = 1
    INVAL_INODE = 2
    INVAL_ENTRY = 3
    STORE = 4
    RETRIEVE = 5
    DELETE = 6
    RESEND = 7
    INC_EPOCH = 8
    PRUNE = 9


# Not mainline: the unmerged virtio-fs blocking-POSIX-lock series (2021, against 7.35) completes a
# waiting SETLKW with this notification.  It collides with NotifyCode.RESEND, so it is only ever
# used on the virtio-fs notification queue.  Payload: NotifyLockOut.
NOTIFY_LOCK = 7


class InitFlags(enum.IntFlag):
    """FUSE_INIT flags as one 64-bit set (``flags`` holds bits 0-31, ``flags2`` bits 32-63)."""

    ASYNC_READ = 1 << 0
    POSIX_LOCKS = 1 << 1
    FILE_OPS = 1 << 2
    ATOMIC_O_TRUNC = 1 << 3
    EXPORT_SUPPORT = 1 << 4
    BIG_WRITES = 1 << 5
    DONT_MASK = 1 << 6
    SPLICE_WRITE = 1 << 7
    SPLICE_MOVE = 1 << 8
    SPLICE_READ = 1 << 9
    FLOCK_LOCKS = 1 << 10
    HAS_IOCTL_DIR = 1 << 11
    AUTO_INVAL_DATA = 1 << 12
    DO_READDIRPLUS = 1 << 13
    READDIRPLUS_AUTO = 1 << 14
    ASYNC_DIO = 1 << 15
    WRITEBACK_CACHE = 1 << 16
    NO_OPEN_SUPPORT = 1 << 17
    PARALLEL_DIROPS = 1 << 18
    HANDLE_KILLPRIV = 1 << 19
    POSIX_ACL = 1 << 20
    ABORT_ERROR = 1 << 21
    MAX_PAGES = 1 << 22
    CACHE_SYMLINKS = 1 << 23
    NO_OPENDIR_SUPPORT = 1 << 24
    EXPLICIT_INVAL_DATA = 1 << 25
    MAP_ALIGNMENT = 1 << 26
    SUBMOUNTS = 1 << 27
    HANDLE_KILLPRIV_V2 = 1 << 28
    SETXATTR_EXT = 1 << 29
    INIT_EXT = 1 << 30  # flags2 is valid (and init_in is 64 bytes)
    INIT_RESERVED = 1 << 31
    SECURITY_CTX = 1 << 32
    HAS_INODE_DAX = 1 << 33
    CREATE_SUPP_GROUP = 1 << 34
    HAS_EXPIRE_ONLY = 1 << 35
    DIRECT_IO_ALLOW_MMAP = 1 << 36
    DIRECT_IO_RELAX = 1 << 36  # obsolete alias of DIRECT_IO_ALLOW_MMAP
    PASSTHROUGH = 1 << 37
    NO_EXPORT_SUPPORT = 1 << 38
    HAS_RESEND = 1 << 39
    ALLOW_IDMAP = 1 << 40
    OVER_IO_URING = 1 << 41
    REQUEST_TIMEOUT = 1 << 42
    # vfscluster's own extension, not in any kernel: the guest asks for an EntryVerOut after each
    # EntryOut (the 2018 prototype's fuse_entryver_out).  A stock kernel never sets it.
    ENTRY_VERSION = 1 << 63


ENTRYVER_OUT_FLAG = InitFlags.ENTRY_VERSION


def split_init_flags(flags: int) -> tuple[int, int]:
    """64-bit INIT flags -> (``flags``, ``flags2``) as they travel in fuse_init_in/out."""
    return int(flags) & _U32, (int(flags) >> 32) & _U32


def join_init_flags(flags: int, flags2: int) -> InitFlags:
    """(``flags``, ``flags2``) -> one 64-bit InitFlags (flags2 holds bits 32-63 shifted down)."""
    return InitFlags((int(flags) & _U32) | ((int(flags2) & _U32) << 32))


class SetattrValid(enum.IntFlag):
    """FATTR_*: which fields of fuse_setattr_in are set."""

    MODE = 1 << 0
    UID = 1 << 1
    GID = 1 << 2
    SIZE = 1 << 3
    ATIME = 1 << 4
    MTIME = 1 << 5
    FH = 1 << 6
    ATIME_NOW = 1 << 7
    MTIME_NOW = 1 << 8
    LOCKOWNER = 1 << 9
    CTIME = 1 << 10
    KILL_SUIDGID = 1 << 11


class OpenOutFlags(enum.IntFlag):
    """FOPEN_*: fuse_open_out.open_flags."""

    DIRECT_IO = 1 << 0
    KEEP_CACHE = 1 << 1
    NONSEEKABLE = 1 << 2
    CACHE_DIR = 1 << 3
    STREAM = 1 << 4
    NOFLUSH = 1 << 5
    PARALLEL_DIRECT_WRITES = 1 << 6
    PASSTHROUGH = 1 << 7


class AttrFlags(enum.IntFlag):
    """FUSE_ATTR_*: fuse_attr.flags."""

    SUBMOUNT = 1 << 0  # the inode is the root of a submount
    DAX = 1 << 1  # use DAX for this file (per-inode DAX mode)


class SetupmappingFlags(enum.IntFlag):
    """FUSE_SETUPMAPPING_FLAG_*: fuse_setupmapping_in.flags."""

    WRITE = 1 << 0
    READ = 1 << 1


GETATTR_FH = 1 << 0  # fuse_getattr_in.getattr_flags: fh is valid
RELEASE_FLUSH = 1 << 0  # fuse_release_in.release_flags
RELEASE_FLOCK_UNLOCK = 1 << 1
LK_FLOCK = 1 << 0  # fuse_lk_in.lk_flags: BSD flock, not POSIX
WRITE_CACHE = 1 << 0  # fuse_write_in.write_flags: writeback from the page cache
WRITE_LOCKOWNER = 1 << 1
WRITE_KILL_SUIDGID = 1 << 2
WRITE_KILL_PRIV = WRITE_KILL_SUIDGID  # old name
READ_LOCKOWNER = 1 << 1  # fuse_read_in.read_flags
FSYNC_FDATASYNC = 1 << 0  # fuse_fsync_in.fsync_flags
OPEN_KILL_SUIDGID = 1 << 0  # fuse_open_in / fuse_create_in .open_flags
SETXATTR_ACL_KILL_SGID = 1 << 0  # fuse_setxattr_in.setxattr_flags
POLL_SCHEDULE_NOTIFY = 1 << 0  # fuse_poll_in.flags
EXPIRE_ONLY = 1 << 0  # fuse_notify_inval_entry_out.flags

# fuse_ioctl_in.flags / fuse_ioctl_out.flags
IOCTL_COMPAT = 1 << 0
IOCTL_UNRESTRICTED = 1 << 1
IOCTL_RETRY = 1 << 2
IOCTL_32BIT = 1 << 3
IOCTL_DIR = 1 << 4
IOCTL_COMPAT_X32 = 1 << 5
IOCTL_MAX_IOV = 256


# --------------------------------------------------------------------------------------------
# Version-dependent sizes: older minors use a prefix of the current struct.
# --------------------------------------------------------------------------------------------

ENTRY_OUT_COMPAT_SIZE = 120  # minor < 9
ATTR_OUT_COMPAT_SIZE = 96  # minor < 9
MKNOD_IN_COMPAT_SIZE = 8  # minor < 12
WRITE_IN_COMPAT_SIZE = 24  # minor < 9
SETXATTR_IN_COMPAT_SIZE = 8  # unless SETXATTR_EXT was negotiated
INIT_OUT_COMPAT_SIZE = 8  # minor < 5
INIT_OUT_COMPAT_22_SIZE = 24  # minor < 23
STATFS_COMPAT_SIZE = 48  # minor < 4
INIT_IN_COMPAT_SIZE = 16  # sent by kernels older than 7.36
