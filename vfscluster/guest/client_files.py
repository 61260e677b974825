"""The FUSE client's file, directory, file-system, xattr and lock requests (fs/fuse ``file.c``,
``readdir.c``, ``xattr.c``): a mixin of :class:`~vfscluster.guest.client.FuseClient`, which
provides the plumbing (``_call``, ``_need``, ``_error``, ``_no``, ``cache``, ``flags``,
``read_chunk``, ``write_chunk``, the lookup counts) these methods use.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
import threading
from collections.abc import Sequence

from ..errors import RemoteProtocolError
from ..fuse import abi
from ..fuse.abi import (
    LK_FLOCK, ROOT_ID, AccessIn, CreateIn, Dirent, EntryOut, EntryVerOut, FallocateIn, FileLock,
    FlushIn, FsyncIn, GetxattrIn, GetxattrOut, InitFlags, Kstatfs, LkIn, LkOut, LseekIn, LseekOut,
    Opcode, OpenIn, OpenOut, ReadIn, ReleaseIn, SetxattrIn, WriteIn, WriteOut, encode_name,
)
from .replies import READDIR_SIZE, XATTR_LIST_MAX, XATTR_SIZE_MAX, check_attr, oserror

__all__ = ["FileOps"]

_OFFSET_MAX = (1 << 63) - 1
_LOCK_TYPES = (fcntl.F_RDLCK, fcntl.F_WRLCK, fcntl.F_UNLCK)
_local_init = threading.Lock()


class FileOps:
    """Open files, directories, the file system as a whole, extended attributes."""

    # ================================================================== files

    def open(self, nodeid: int, flags: int) -> OpenOut:
        """OPEN (O_CREAT, O_EXCL and O_NOCTTY are the VFS's business and are not sent; O_TRUNC
        only with ATOMIC_O_TRUNC).  A server with NO_OPEN_SUPPORT that answers ENOSYS opens
        everything from then on without a request: fh 0, no RELEASE."""
        self.cache.pages.opened(nodeid)
        return self._open(Opcode.OPEN, nodeid, flags, InitFlags.NO_OPEN_SUPPORT)

    def opendir(self, nodeid: int, flags: int = os.O_RDONLY) -> OpenOut:
        """OPENDIR, with OPEN's rules (NO_OPENDIR_SUPPORT)."""
        return self._open(Opcode.OPENDIR, nodeid, flags, InitFlags.NO_OPENDIR_SUPPORT)

    def _open(self, opcode: int, nodeid: int, flags: int, no_flag: int) -> OpenOut:
        flags &= ~(os.O_CREAT | os.O_EXCL | os.O_NOCTTY | os.O_CLOEXEC)
        if not self.flags & InitFlags.ATOMIC_O_TRUNC:
            flags &= ~os.O_TRUNC
        if opcode in self._no:
            return OpenOut()
        if flags & os.O_TRUNC:
            self.cache.pages.flush(self, nodeid)    # write-back data goes before the truncation
        try:
            body = self._call(opcode, nodeid, [OpenIn(flags).pack()], OpenOut.SIZE)
        except OSError as exc:
            if exc.errno == errno.ENOSYS and self.flags & no_flag:
                self._no.add(opcode)
                return OpenOut()
            raise
        finally:
            if flags & os.O_TRUNC:
                self.cache.changed(nodeid, data=True)
        return OpenOut.unpack_from(self._need(body, OpenOut.SIZE))

    def create(self, parent: int, name: bytes, flags: int, mode: int,
               umask: int = 0) -> tuple[EntryOut, OpenOut]:
        """CREATE and open ``parent/name`` (``mode`` includes S_IFREG): the entry (pinned) and
        the open reply.  A server without CREATE gets MKNOD + OPEN (fs/fuse/dir.c)."""
        flags &= ~(os.O_NOCTTY | os.O_CLOEXEC)
        if Opcode.CREATE not in self._no:
            cache = self.cache
            pstamp = cache.stamp(parent) if cache.enabled else 0
            since = cache.local_gen
            try:
                body = self._call(Opcode.CREATE, parent,
                                  [CreateIn(flags, mode, umask).pack(), encode_name(name)],
                                  EntryOut.SIZE + OpenOut.SIZE
                                  + (EntryVerOut.SIZE if self._entryver else 0))
            except OSError as exc:
                if exc.errno != errno.ENOSYS:
                    raise
                self._no.add(Opcode.CREATE)
            else:
                cache.changed(parent, names=((parent, name),))
                self._need(body, EntryOut.SIZE + OpenOut.SIZE)
                opened = OpenOut.unpack_from(body, EntryOut.SIZE)
                entry = EntryOut.unpack_from(body)
                if entry.nodeid in (0, ROOT_ID):
                    raise oserror(errno.EIO)
                self._counted(entry.nodeid)
                try:
                    check_attr(entry.attr)
                    if stat.S_IFMT(entry.attr.mode) != stat.S_IFREG:
                        raise oserror(errno.EIO)
                    astamp = self._entry_stamp(body, EntryOut.SIZE + OpenOut.SIZE, entry.nodeid,
                                               pstamp)
                except (OSError, RemoteProtocolError):
                    self._release(Opcode.RELEASE, entry.nodeid, opened.fh, flags, 0, 0)
                    self.put(entry.nodeid)
                    raise
                cache.pages.drop(entry.nodeid)
                self._cache_new_entry(parent, name, entry, astamp, pstamp, since)
                return entry, opened
        entry = self.mknod(parent, name, stat.S_IFREG | (mode & 0o7777), 0, umask)
        try:
            return entry, self.open(entry.nodeid, flags & ~os.O_TRUNC)
        except BaseException:
            self.put(entry.nodeid)
            raise

    def read(self, nodeid: int, fh: int, offset: int, size: int, *, flags: int = 0,
             lock_owner: int = 0) -> bytes:
        """READ ``size`` bytes at ``offset``, split into requests of :attr:`read_chunk`; stops
        at the first short reply (end of file).  ``flags`` are the file's open flags; a
        ``lock_owner`` is sent with READ_LOCKOWNER (as direct I/O does)."""
        chunk = self.read_chunk
        read_flags = abi.READ_LOCKOWNER if lock_owner else 0
        parts: list[bytes] = []
        while size > 0:
            n = min(size, chunk)
            arg = ReadIn(fh, offset, n, read_flags, lock_owner, flags)
            body = self._call(Opcode.READ, nodeid, [arg.pack()], n)
            if len(body) > n:
                raise RemoteProtocolError(f"READ of {n} bytes answered with {len(body)}")
            parts.append(body)
            if len(body) < n:
                break
            offset += n
            size -= n
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def write(self, nodeid: int, fh: int, offset: int, data, *, flags: int = 0,
              write_flags: int = 0, lock_owner: int = 0) -> int:
        """WRITE ``data`` at ``offset`` in requests of at most :attr:`write_chunk` bytes.
        Returns the bytes written: a short write stops; an error after some bytes were written
        returns their count (as fs/fuse/file.c fuse_direct_io does).  A ``lock_owner`` is sent
        with WRITE_LOCKOWNER."""
        if lock_owner:
            write_flags |= abi.WRITE_LOCKOWNER
        view = memoryview(data).cast("B")
        try:
            return self._write(nodeid, fh, offset, view, flags, write_flags, lock_owner)
        finally:
            self.cache.changed(nodeid, data=True)

    def _write(self, nodeid: int, fh: int, offset: int, view: memoryview, flags: int,
               write_flags: int, lock_owner: int) -> int:
        chunk = self.write_chunk
        done = 0
        total = len(view)
        while done < total:
            n = min(total - done, chunk)
            arg = WriteIn(fh, offset + done, n, write_flags, lock_owner, flags)
            try:
                body = self._call(Opcode.WRITE, nodeid, [arg.pack(), view[done:done + n]],
                                  WriteOut.SIZE)
                written = WriteOut.unpack_from(self._need(body, WriteOut.SIZE)).size
                if written > n:
                    raise oserror(errno.EIO)
            except OSError:
                if done:
                    return done
                raise
            done += written
            if written < n:
                break
        return done

    def flush(self, nodeid: int, fh: int, lock_owner: int = 0) -> None:
        """FLUSH (at every close of a descriptor); ENOSYS means never again and success."""
        if Opcode.FLUSH in self._no:
            return
        try:
            self._call(Opcode.FLUSH, nodeid, [FlushIn(fh, lock_owner).pack()], 0)
        except OSError as exc:
            if exc.errno != errno.ENOSYS:
                raise
            self._no.add(Opcode.FLUSH)

    def release(self, nodeid: int, fh: int, flags: int = 0, *, release_flags: int = 0,
                lock_owner: int = 0) -> None:
        """RELEASE the file handle (not sent when opened without OPEN: NO_OPEN_SUPPORT).
        Errors are ignored: nothing can be reported to anyone (the kernel sends it async)."""
        if Opcode.OPEN not in self._no:
            self._release(Opcode.RELEASE, nodeid, fh, flags, release_flags, lock_owner)

    def releasedir(self, nodeid: int, fh: int, flags: int = 0) -> None:
        """RELEASEDIR the directory handle (not sent under NO_OPENDIR_SUPPORT)."""
        if Opcode.OPENDIR not in self._no:
            self._release(Opcode.RELEASEDIR, nodeid, fh, flags, 0, 0)

    def _release(self, opcode: int, nodeid: int, fh: int, flags: int, release_flags: int,
                 lock_owner: int) -> None:
        try:
            self._call(opcode, nodeid, [ReleaseIn(fh, flags, release_flags, lock_owner).pack()], 0)
        except OSError:
            pass

    def fsync(self, nodeid: int, fh: int, datasync: bool = False) -> None:
        """FSYNC (FSYNC_FDATASYNC when ``datasync``); ENOSYS means never again and success."""
        self._fsync(Opcode.FSYNC, nodeid, fh, datasync)

    def fsyncdir(self, nodeid: int, fh: int, datasync: bool = False) -> None:
        """FSYNCDIR, with FSYNC's rules."""
        self._fsync(Opcode.FSYNCDIR, nodeid, fh, datasync)

    def _fsync(self, opcode: int, nodeid: int, fh: int, datasync: bool) -> None:
        if opcode in self._no:
            return
        arg = FsyncIn(fh, abi.FSYNC_FDATASYNC if datasync else 0)
        try:
            self._call(opcode, nodeid, [arg.pack()], 0)
        except OSError as exc:
            if exc.errno != errno.ENOSYS:
                raise
            self._no.add(opcode)

    def lseek(self, nodeid: int, fh: int, offset: int, whence: int) -> int:
        """LSEEK (SEEK_DATA / SEEK_HOLE).  ENOSYS is remembered and raised again at once, so the
        caller can fall back to the generic answer (fs/fuse/file.c fuse_lseek)."""
        if Opcode.LSEEK in self._no:
            raise oserror(errno.ENOSYS)
        try:
            body = self._call(Opcode.LSEEK, nodeid, [LseekIn(fh, offset, whence).pack()],
                              LseekOut.SIZE)
        except OSError as exc:
            if exc.errno == errno.ENOSYS:
                self._no.add(Opcode.LSEEK)
            raise
        return LseekOut.unpack_from(self._need(body, LseekOut.SIZE)).offset

    def fallocate(self, nodeid: int, fh: int, mode: int, offset: int, length: int) -> None:
        """FALLOCATE; a server without it makes it EOPNOTSUPP."""
        if Opcode.FALLOCATE in self._no:
            raise oserror(errno.EOPNOTSUPP)
        try:
            self._call(Opcode.FALLOCATE, nodeid, [FallocateIn(fh, offset, length, mode).pack()], 0)
            self.cache.changed(nodeid, data=True)
        except OSError as exc:
            if exc.errno == errno.ENOSYS:
                self._no.add(Opcode.FALLOCATE)
                raise oserror(errno.EOPNOTSUPP) from None
            raise

    # ------------------------------------------------------------------ directories

    def readdir(self, nodeid: int, fh: int, offset: int,
                size: int = READDIR_SIZE) -> list[tuple[Dirent, bytes]]:
        """READDIR from cookie ``offset``: the ``(Dirent, name)`` records (empty at the end)."""
        body = self._call(Opcode.READDIR, nodeid, [ReadIn(fh, offset, size).pack()], size)
        return list(abi.iter_dirents(body))

    def readdirplus(self, nodeid: int, fh: int, offset: int, size: int = READDIR_SIZE, *,
                    pin: bool = False) -> list[tuple[EntryOut, Dirent, bytes]]:
        """READDIRPLUS from cookie ``offset``: ``(EntryOut, Dirent, name)`` records.

        Each record with a nonzero nodeid other than ``.`` and ``..`` counts one lookup
        (fs/fuse/readdir.c fuse_direntplus_link).  With ``pin`` those nodes are returned pinned
        (the caller puts each once); otherwise they are released at once.  A record with
        impossible attributes is forgotten and returned with nodeid 0.
        """
        body = self._call(Opcode.READDIRPLUS, nodeid, [ReadIn(fh, offset, size).pack()], size)
        records = list(abi.iter_direntplus(body))
        out: list[tuple[EntryOut, Dirent, bytes]] = []
        counted: list[int] = []
        for entry, dirent, name in records:
            if entry.nodeid and name not in (b".", b".."):
                if entry.nodeid == ROOT_ID:         # invalid_nodeid(); the root is not counted
                    entry = EntryOut()
                else:
                    self._counted(entry.nodeid)
                    counted.append(entry.nodeid)
                    try:
                        check_attr(entry.attr)
                    except OSError:                 # fuse_force_forget()
                        self.put(counted.pop())
                        entry = EntryOut()
            out.append((entry, dirent, name))
        if not pin:
            for nid in counted:
                self.put(nid)
        return out

    # ------------------------------------------------------------------ file system

    def statfs(self, nodeid: int = ROOT_ID) -> abi.Kstatfs:
        """STATFS of the file system holding ``nodeid``."""
        body = self._call(Opcode.STATFS, nodeid, [], Kstatfs.SIZE)
        return Kstatfs.unpack_from(self._need(body, Kstatfs.SIZE))

    def syncfs(self) -> None:
        """SYNCFS; ENOSYS means never again and success."""
        if Opcode.SYNCFS in self._no:
            return
        try:
            self._call(Opcode.SYNCFS, ROOT_ID, [abi.SyncfsIn().pack()], 0)
        except OSError as exc:
            if exc.errno != errno.ENOSYS:
                raise
            self._no.add(Opcode.SYNCFS)

    def access(self, nodeid: int, mask: int) -> None:
        """ACCESS (R_OK|W_OK|X_OK or F_OK); ENOSYS means never again and allowed."""
        if Opcode.ACCESS in self._no:
            return
        try:
            self._call(Opcode.ACCESS, nodeid, [AccessIn(mask).pack()], 0)
        except OSError as exc:
            if exc.errno != errno.ENOSYS:
                raise
            self._no.add(Opcode.ACCESS)

    # ------------------------------------------------------------------ extended attributes

    def setxattr(self, nodeid: int, name: bytes, value, flags: int = 0) -> None:
        """SETXATTR (fuse_setxattr_in is 16 bytes with SETXATTR_EXT, else 8)."""
        size = abi.setxattr_in_size(bool(self.flags & InitFlags.SETXATTR_EXT))
        arg = SetxattrIn(len(value), flags).pack()[:size]
        try:
            self._xattr_call(Opcode.SETXATTR, nodeid, [arg, encode_name(name), value], 0)
        finally:
            self.cache.changed(nodeid)

    def getxattr(self, nodeid: int, name: bytes, size: int = XATTR_SIZE_MAX) -> "bytes | int":
        """GETXATTR: the value (``size`` > 0; ERANGE if longer), or its length (``size`` 0)."""
        body = self._xattr_call(Opcode.GETXATTR, nodeid, [GetxattrIn(size).pack(),
                                                          encode_name(name)],
                                size or GetxattrOut.SIZE)
        if not size:
            return GetxattrOut.unpack_from(self._need(body, GetxattrOut.SIZE)).size
        return bytes(body)

    def listxattr(self, nodeid: int, size: int = XATTR_LIST_MAX) -> "bytes | int":
        """LISTXATTR: the NUL-terminated names (``size`` > 0), or their length (``size`` 0)."""
        body = self._xattr_call(Opcode.LISTXATTR, nodeid, [GetxattrIn(size).pack()],
                                size or GetxattrOut.SIZE)
        if not size:
            return GetxattrOut.unpack_from(self._need(body, GetxattrOut.SIZE)).size
        if body and not body.endswith(b"\0"):
            raise RemoteProtocolError("LISTXATTR reply does not end with NUL")
        return bytes(body)

    def removexattr(self, nodeid: int, name: bytes) -> None:
        """REMOVEXATTR."""
        try:
            self._xattr_call(Opcode.REMOVEXATTR, nodeid, [encode_name(name)], 0)
        finally:
            self.cache.changed(nodeid)

    def _xattr_call(self, opcode: int, nodeid: int, args: Sequence, reply_size: int) -> bytes:
        # fs/fuse/xattr.c: a server without the operation makes it EOPNOTSUPP from then on
        if opcode in self._no:
            raise oserror(errno.EOPNOTSUPP)
        try:
            return self._call(opcode, nodeid, args, reply_size)
        except OSError as exc:
            if exc.errno == errno.ENOSYS:
                self._no.add(opcode)
                raise oserror(errno.EOPNOTSUPP) from None
            raise

    # ------------------------------------------------------------------ locks

    def getlk(self, nodeid: int, fh: int, owner: int, lock: FileLock) -> FileLock:
        """GETLK (fs/fuse/file.c fuse_getlk; the request's pid is 0): the lock of another owner
        that would block ``lock``, with its holder's pid, or a lock of type F_UNLCK."""
        body = self._call(Opcode.GETLK, nodeid, [LkIn(fh, owner, lock).pack()], LkOut.SIZE)
        got = LkOut.unpack_from(self._need(body, LkOut.SIZE)).lk
        if got.type not in _LOCK_TYPES or got.start > got.end or got.end > _OFFSET_MAX:
            raise RemoteProtocolError(f"GETLK answered with {got}")
        return got

    def setlk(self, nodeid: int, fh: int, owner: int, lock: FileLock, *, flock: bool = False,
              sleep: bool = False, timeout: float | None = None) -> None:
        """SETLK, or SETLKW when ``sleep`` (``flock``: a BSD flock, LK_FLOCK): take, change or
        release ``lock`` for ``owner``.  EAGAIN on a conflict without ``sleep``; EDEADLK;
        EINTR when a SETLKW was still waiting after ``timeout`` seconds and was withdrawn.  A
        SETLKW goes through the transport's ``request_interruptible`` when it has one (the
        host may park it: ``vfscluster.fuse.locking``), else ``request`` (``timeout`` unused)."""
        args = [LkIn(fh, owner, lock, LK_FLOCK if flock else 0).pack()]
        if not sleep:
            self._call(Opcode.SETLK, nodeid, args, 0)
            return
        self._ready()
        self.requests += 1
        call = getattr(self.transport, "request_interruptible", None)
        if call is None:
            error, _ = self.transport.request(Opcode.SETLKW, nodeid, args, 0, creds=self.creds)
        else:
            error, _ = call(Opcode.SETLKW, nodeid, args, 0, creds=self.creds, timeout=timeout)
        if error:
            raise self._error(error)

    @property
    def local_locks(self):
        """The mount's guest-local lock table (:class:`~vfscluster.guest.locks.LocalLocks`),
        used for the kind of lock the server did not take (POSIX_LOCKS / FLOCK_LOCKS not
        granted: the kernel's ``fc->no_lock`` / ``no_flock``)."""
        try:
            return self._local_locks
        except AttributeError:
            from .locks import LocalLocks
            with _local_init:
                if not hasattr(self, "_local_locks"):
                    self._local_locks = LocalLocks()
            return self._local_locks
