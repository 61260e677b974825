"""The host side of DAX (DESIGN §5): FUSE_SETUPMAPPING / FUSE_REMOVEMAPPING of one guest session turned
into vhost-user ``SHMEM_MAP`` / ``SHMEM_UNMAP`` requests for the guest's window (shared-memory region 0),
the per-session table of what each window range maps, and truncation revocation.  Sans-IO: nothing here
sends a message; the caller sends what the methods return and opens / closes the file descriptors.

* :class:`HostDax` — one per guest session.  :meth:`~HostDax.setup` validates a SETUPMAPPING the way
  virtiofsd and the VMM do and returns the ``SHMEM_MAP`` requests to send; :meth:`~HostDax.remove` does
  the same for REMOVEMAPPING; :meth:`~HostDax.ranges_past` / :meth:`~HostDax.revoke_past` serve a
  truncation; :meth:`~HostDax.reset` ends the session.
* :class:`DaxRegistry` — one per host: the sessions, one lock per inode that orders SETUPMAPPING against
  truncation, and :meth:`~DaxRegistry.revoke` / :meth:`~DaxRegistry.restore` over every session.
* :func:`zero_source` — the host's zero-filled, write-sealed memfd.

Two choices of ours, beyond what virtiofsd does:

**Mappings never reach past the file's end.**  A guest touching a mapped file page wholly past EOF dies
of SIGBUS (the kernel's DAX has the same hazard and leaves it open).  So :meth:`HostDax.setup` maps the
file only up to its size rounded up to a page, and the rest of the requested range gets the zero source,
read-only (``clamp_to_eof``).  The guest learns from the two ``SHMEM_MAP`` requests which prefix of its
range is file-backed (:mod:`vfscluster.guest.daxclient` keeps it as ``Chunk.valid``) and maps again when
the file has grown past it.

**Truncation revocation is a SHMEM_MAP of zeros** — no new vhost-user message.  Before the host shrinks a
file (SETATTR size, OPEN / CREATE with O_TRUNC, FALLOCATE COLLAPSE_RANGE) it holds
:meth:`DaxRegistry.inode_lock`, asks :meth:`DaxRegistry.plan_shrink` which window ranges of which session
map file pages past the new size (page-rounded), sends each of them, with NEED_REPLY, a read-only
``SHMEM_MAP`` of the zero source over exactly that range, waits (bounded) for the acks, and only then
truncates.  The guest recognises the zero source by its seals (``F_SEAL_WRITE``: content that can never
change, which no file of the share can be) and replaces its file pages there — in the window and in
every ``mmap`` buffer aliasing them — with zero pages (``DaxWindow.zero``).  A stock VMM would simply map
the zeros, which is just as safe.  SETUPMAPPING holds the same inode lock from its size check until the
acks of its own ``SHMEM_MAP`` requests, so no mapping can slip in between the revocation and the
truncate.  And each session's requests leave in the order of its table's changes
(:attr:`HostDax.send_lock`, held from a change until its requests are acked): a revocation never
reaches a guest after the REMOVEMAPPING of its range and the range's next SETUPMAPPING.  What this does not cover: a process other than the host server shrinking a file of the share
(the host learns of it afterwards, by inotify at best).

**Growing back restores.**  A revoked range stays in the table as a zero piece that remembers its file
(``Mapping.was``, and whether it was writable).  When the file grows again through the host (SETATTR
size, WRITE, FALLOCATE), :meth:`DaxRegistry.plan_grow` turns the revoked pieces now inside the file back
into ``SHMEM_MAP`` requests of the file, so a guest's live ``mmap`` buffers see the file again, as a
``MAP_SHARED`` mapping in Linux does (the guest re-aliases them, ``DaxWindow.map``).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import mmap
import os
import stat
import threading
from collections.abc import Callable, Hashable, Iterator, Sequence
from dataclasses import dataclass

from ..fuse.abi import SetupmappingFlags
from ..guest.daxmap import Mapping, MappingTable
from ..vhost_user import SHMEM_MAP_F_WRITABLE, ShmemMap, ShmemUnmap

PAGE = mmap.PAGESIZE
#: VIRTIO shared-memory region of the DAX window (virtio-fs: ``VIRTIO_FS_SHMCAP_ID_CACHE``).
DAX_SHMID = 0
#: ``fuse_setupmapping_in.fh`` when the guest names no open file (Linux always sends it): map by inode.
NO_FH = (1 << 64) - 1
#: ``fuse_removemapping_one.len`` meaning "the whole window" (QEMU's DAX VMM accepts it at offset 0).
WHOLE_WINDOW = (1 << 64) - 1
_OFF_MAX = (1 << 63) - 1         # off_t
_SEALS = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SEAL
_KNOWN_FLAGS = int(SetupmappingFlags.READ | SetupmappingFlags.WRITE)

InodeKey = Hashable
"""Identity of a file shared by every session: use ``(st_dev, st_ino)`` (nodeids are per session)."""


def _err(code: int, what: str) -> OSError:
    return OSError(code, f"{os.strerror(code)}: {what}")


def _round_up(n: int, to: int = PAGE) -> int:
    return -(-n // to) * to


# ------------------------------------------------------------------------------------ zero source

_zero_lock = threading.Lock()
_zero_fds: list[tuple[int, int]] = []        # (size, fd), newest (largest) last


def zero_source(size: int) -> int:
    """An fd of a zero-filled memfd of at least ``size`` bytes, sealed against any write, shrink or
    grow (``F_SEAL_WRITE | F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL``), made once per host process and
    shared by every session (a read-only ``MAP_SHARED`` of it costs no memory until read; pages read are
    shared by all guests).  A larger ``size`` than any before makes a new one; earlier fds stay open and
    valid (another thread may be sending them).  The fd belongs to this module: do not close it."""
    if size <= 0:
        raise ValueError(f"zero source of {size} bytes")
    with _zero_lock:
        if _zero_fds and _zero_fds[-1][0] >= size:
            return _zero_fds[-1][1]
        size = _round_up(size)
        fd = os.memfd_create("vfscluster-dax-zero", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            os.ftruncate(fd, size)
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, _SEALS)
        except BaseException:
            os.close(fd)
            raise
        _zero_fds.append((size, fd))
        return fd


def is_zero_source(fd: int) -> bool:
    """True for an fd whose content can never change (a memfd sealed with ``F_SEAL_WRITE`` and
    ``F_SEAL_SHRINK``): what the guest takes as "replace with zeros" in a SHMEM_MAP."""
    try:
        seals = fcntl.fcntl(fd, fcntl.F_GET_SEALS)
    except OSError:
        return False
    need = fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SHRINK
    return seals & need == need


# ------------------------------------------------------------------------------------ requests

@dataclass(frozen=True, slots=True)
class MapRequest:
    """One ``SHMEM_MAP`` to send on the session's back-end channel: ``msg`` with ``[fd]`` attached.
    ``zero`` tells the zero source from the file (the fd is the caller's, or :func:`zero_source`'s)."""

    msg: ShmemMap
    fd: int
    zero: bool


#: ``send(sid, requests)``: what :meth:`DaxRegistry.revoke` and :meth:`DaxRegistry.restore` call to
#: send a session's requests (under its :attr:`HostDax.send_lock`).
Send = Callable[[int, list[MapRequest]], None]


def _map_msg(fd_offset: int, shm_offset: int, length: int, writable: bool) -> ShmemMap:
    return ShmemMap(DAX_SHMID, fd_offset, shm_offset, length, SHMEM_MAP_F_WRITABLE if writable else 0)


def _unmap_msg(shm_offset: int, length: int) -> ShmemUnmap:
    return ShmemUnmap(DAX_SHMID, 0, shm_offset, length, 0)


# ------------------------------------------------------------------------------------ one session

class HostDax:
    """The DAX state of one guest session: its window of ``window_size`` bytes and what each range of
    it maps, as a :class:`~vfscluster.guest.daxmap.MappingTable` of pieces whose ``file`` is an inode
    key (file-backed) or ``None`` (the zero source).

    ``alignment`` is the byte alignment the host announced in FUSE_INIT (``1 << map_alignment``; the
    server announces a page): SETUPMAPPING ``foffset`` and ``moffset`` and REMOVEMAPPING ``moffset`` must
    be multiples of it, lengths multiples of a page.  ``clamp_to_eof`` (module docstring) maps the zero
    source past the file's end instead of file pages.  Thread-safe.
    """

    def __init__(self, window_size: int, alignment: int = PAGE, *, clamp_to_eof: bool = True) -> None:
        if alignment < PAGE or alignment & (alignment - 1):
            raise ValueError(f"DAX alignment {alignment:#x} is not a power of two >= the page size")
        if window_size <= 0 or window_size % alignment:
            raise ValueError(f"DAX window of {window_size:#x} bytes is not a positive multiple of {alignment:#x}")
        self.window_size = window_size
        self.alignment = alignment
        self.clamp_to_eof = clamp_to_eof
        self._table = MappingTable()
        self._lock = threading.Lock()
        #: Held from a change of the table until the requests it returned are sent (and acked):
        #: the guest then receives them in the order of the table's changes.  Without it a
        #: revocation planned before a REMOVEMAPPING could reach the guest after the SHMEM_MAP of
        #: the range's next use, and cover it with zeros.  Order: an inode lock, then this.
        self.send_lock = threading.Lock()
        #: set when the registry dropped the session: a request still holding this object must
        #: neither record nor send anything (check it under :attr:`send_lock`)
        self.closed = False
        self.stats = {"setup": 0, "remove": 0, "revoked": 0, "restored": 0}
        #: inodes whose writable pieces left the table since :meth:`maps_writable` last answered
        #: for them: the guest may have stored through them, and those stores still count
        self._wrote: set[InodeKey] = set()

    def __repr__(self) -> str:
        return f"<HostDax {self.window_size:#x} bytes, {len(self._table)} pieces>"

    # -- validation ----------------------------------------------------------------------------

    def _check_window(self, what: str, moffset: int, length: int) -> None:
        if moffset % self.alignment or length % PAGE:
            raise _err(errno.EINVAL, f"{what} {moffset:#x}+{length:#x} is not aligned to "
                                     f"{self.alignment:#x} (length to a page)")
        if length <= 0 or moffset + length > self.window_size:
            raise _err(errno.EINVAL, f"{what} {moffset:#x}+{length:#x} is outside the window of "
                                     f"{self.window_size:#x} bytes")

    @staticmethod
    def _check_fd(fd: int, writable: bool | None, want_write: bool) -> int:
        """What mmap(2) would say of ``MAP_SHARED`` (``PROT_WRITE`` if ``want_write``) on ``fd``;
        returns the file's size."""
        fl = fcntl.fcntl(fd, fcntl.F_GETFL)               # EBADF
        if fl & os.O_PATH:
            raise _err(errno.EBADF, "an O_PATH descriptor cannot be mapped")
        acc = fl & os.O_ACCMODE
        if acc == os.O_WRONLY:
            raise _err(errno.EACCES, "mapping needs a descriptor open for reading")
        if want_write and (acc != os.O_RDWR or writable is False):
            raise _err(errno.EACCES, "a writable mapping of a file open read-only")
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise _err(errno.EACCES, "only regular files can be mapped")
        return st.st_size

    # -- SETUPMAPPING --------------------------------------------------------------------------

    def setup(self, handle_fd: int, handle_writable: bool | None, inode_key: InodeKey, foffset: int,
              length: int, flags: int, moffset: int, *, file_size: int | None = None) -> list[MapRequest]:
        """FUSE_SETUPMAPPING: map ``length`` bytes of the file open on ``handle_fd`` from ``foffset`` at
        window offset ``moffset``; ``flags`` are SetupmappingFlags (WRITE asks for a writable mapping).
        Returns the ``SHMEM_MAP`` requests to send, in order — the file prefix (up to EOF rounded up to
        a page, with ``clamp_to_eof``) then, if the range reaches past it, the zero source read-only —
        and records them: whatever the range mapped before is replaced, older mappings overlapping it
        are split (virtio spec).

        ``handle_writable`` False refuses WRITE even on an ``O_RDWR`` fd; None takes the fd's access
        mode.  ``file_size`` defaults to ``fstat``.  Errors (nothing recorded): EINVAL for unknown
        flags, misalignment, an empty range, a range past the window's end or past ``off_t``; EACCES
        for WRITE on a read-only handle or any mapping of a write-only handle or a non-regular file
        (what virtiofsd's mmap gives); EBADF for a bad or O_PATH fd.  If sending fails, undo with
        :meth:`remove` of ``(moffset, length)`` (and unmap it in the guest)."""
        if flags & ~_KNOWN_FLAGS:
            raise _err(errno.EINVAL, f"unknown SETUPMAPPING flags {flags:#x}")
        write = bool(flags & SetupmappingFlags.WRITE)
        self._check_window("SETUPMAPPING window range", moffset, length)
        if foffset < 0 or foffset % self.alignment or foffset + length - 1 > _OFF_MAX:
            raise _err(errno.EINVAL, f"SETUPMAPPING file range {foffset:#x}+{length:#x}")
        size = self._check_fd(handle_fd, handle_writable, write)
        if file_size is not None:
            size = file_size
        file_len = length
        if self.clamp_to_eof:
            file_len = max(0, min(length, _round_up(size) - foffset))
        out = []
        if file_len:
            out.append(MapRequest(_map_msg(foffset, moffset, file_len, write), handle_fd, False))
        if file_len < length:
            zfd = zero_source(self.window_size)
            out.append(MapRequest(_map_msg(0, moffset + file_len, length - file_len, False), zfd, True))
        with self._lock:
            self._carve(moffset, moffset + length)
            if file_len:
                self._table.insert(Mapping(moffset, file_len, inode_key, foffset, write))
            if file_len < length:
                self._table.insert(Mapping(moffset + file_len, length - file_len, None,
                                           foffset + file_len, False))
            self.stats["setup"] += 1
        return out

    # -- REMOVEMAPPING -------------------------------------------------------------------------

    def remove(self, entries: Sequence[tuple[int, int]]) -> list[ShmemUnmap]:
        """FUSE_REMOVEMAPPING: each ``(moffset, len)`` is returned to ``PROT_NONE``.  Returns the
        ``SHMEM_UNMAP`` requests to send (one per entry with ``len > 0``) and drops the ranges from
        the table.

        Checked first, all or nothing (EINVAL): at least one entry (virtiofsd); each inside the window
        and aligned like SETUPMAPPING.  ``len`` 0 is skipped, ``len`` ``2**64 - 1`` at ``moffset`` 0
        means the whole window (both as QEMU's DAX VMM).  A range that maps nothing is not an error:
        the kernel ignores REMOVEMAPPING failures anyway, and the VMM unmaps whatever is there."""
        if not entries:
            raise _err(errno.EINVAL, "REMOVEMAPPING of no entry")
        spans = []
        for moffset, length in entries:
            if length == 0:
                continue
            if length == WHOLE_WINDOW and moffset == 0:
                length = self.window_size
            self._check_window("REMOVEMAPPING range", moffset, length)
            spans.append((moffset, length))
        with self._lock:
            for moffset, length in spans:
                self._carve(moffset, moffset + length)
            self.stats["remove"] += len(spans)
        return [_unmap_msg(o, n) for o, n in spans]

    # -- truncation ----------------------------------------------------------------------------

    def ranges_past(self, inode_key: InodeKey, new_size: int) -> list[tuple[int, int]]:
        """Window ranges ``(window_offset, length)`` holding file pages of ``inode_key`` wholly past
        ``new_size`` (from ``new_size`` rounded up to a page: the page holding the new end stays
        valid), in window order.  Changes nothing."""
        if new_size < 0:
            raise _err(errno.EINVAL, f"file size {new_size}")
        with self._lock:
            pieces = self._table.file_pieces(inode_key, _round_up(new_size), 1 << 64)
        return [(p.window_offset, p.length) for p in pieces]

    def revoke_past(self, inode_key: InodeKey, new_size: int) -> list[MapRequest]:
        """:meth:`ranges_past`, turned into read-only ``SHMEM_MAP`` requests of the zero source (send
        each with NEED_REPLY and wait for the ack before truncating); the table records those ranges
        as zero-backed at once.  Hold :meth:`DaxRegistry.inode_lock` around this and the truncate."""
        if new_size < 0:
            raise _err(errno.EINVAL, f"file size {new_size}")
        zfd = None
        out = []
        with self._lock:
            for p in self._table.file_pieces(inode_key, _round_up(new_size), 1 << 64):
                zfd = zfd if zfd is not None else zero_source(self.window_size)
                self._carve(p.window_offset, p.end)
                self._table.insert(Mapping(p.window_offset, p.length, None, p.file_offset, p.writable,
                                           inode_key))
                out.append(MapRequest(_map_msg(0, p.window_offset, p.length, False), zfd, True))
            self.stats["revoked"] += len(out)
        return out

    def restore_upto(self, inode_key: InodeKey, size: int, fd: int, fd_writable: bool) -> list[MapRequest]:
        """The file grew to ``size``: the revoked pieces of ``inode_key`` now inside it (up to ``size``
        rounded up to a page) as ``SHMEM_MAP`` requests of ``fd`` (writable where they were and
        ``fd_writable`` allows); the table records them as file-backed at once.  Hold
        :meth:`DaxRegistry.inode_lock`."""
        out = []
        with self._lock:
            for p in self._table.file_pieces(inode_key, 0, _round_up(max(0, size)), zeroed=True):
                write = p.writable and fd_writable
                self._carve(p.window_offset, p.end)
                self._table.insert(Mapping(p.window_offset, p.length, inode_key, p.file_offset, write))
                out.append(MapRequest(_map_msg(p.file_offset, p.window_offset, p.length, write), fd, False))
            self.stats["restored"] += len(out)
        return out

    def forget_revoked(self, inode_key: InodeKey) -> None:
        """The file is gone (unlinked, and its inode left the host's store): its revoked pieces stay
        zeros for good — its ``(st_dev, st_ino)`` may soon name another file."""
        with self._lock:
            for p in self._table.file_pieces(inode_key, 0, 1 << 64, zeroed=True):
                self._carve(p.window_offset, p.end)
                self._table.insert(Mapping(p.window_offset, p.length, None, p.file_offset, False))

    def revoked(self, inode_key: InodeKey) -> bool:
        """Whether pieces of the inode revoked by a shrink are still in the window."""
        with self._lock:
            return bool(self._table.file_pieces(inode_key, 0, 1 << 64, zeroed=True))

    # -- session -------------------------------------------------------------------------------

    def reset(self) -> list[ShmemUnmap]:
        """The session ends (DESTROY, or INIT on a live session): forget every mapping.  Returns one
        ``SHMEM_UNMAP`` of the whole window if anything was mapped (what virtiofsd sends at unmount),
        to send if the guest is still there; after a disconnect just drop it."""
        with self._lock:
            had = len(self._table) > 0
            self._table.clear()
        return [_unmap_msg(0, self.window_size)] if had else []

    drop_session = reset

    # -- introspection -------------------------------------------------------------------------

    def mappings(self) -> list[Mapping]:
        """The table, in window order: ``file`` is the inode key, or None for the zero source."""
        with self._lock:
            return list(self._table)

    def ranges_of(self, inode_key: InodeKey) -> list[tuple[int, int]]:
        """Window ranges mapping any page of ``inode_key``.  (There is deliberately no "forget inode":
        a record may only go when the guest's mapping goes — by REMOVEMAPPING or the session's end —
        or a later truncation would not reach that guest.)"""
        return self.ranges_past(inode_key, 0)

    def maps_writable(self, inode_key: InodeKey) -> bool:
        """Whether a writable file-backed piece of the inode is in the window, or was since this
        was last asked about it (a REMOVEMAPPING — the guest's reclaim — may take a range back
        after stores through it: a close or fsync must still count them)."""
        with self._lock:
            was = inode_key in self._wrote
            self._wrote.discard(inode_key)
            return was or any(m.file == inode_key and m.writable for m in self._table)

    def _carve(self, start: int, end: int) -> list:
        """``MappingTable.carve`` (the lock held), noting the inodes of writable pieces removed."""
        gone = self._table.carve(start, end)
        for m in gone:
            if m.writable and m.file is not None:
                self._wrote.add(m.file)
        return gone

    def inodes(self) -> set:
        """Inode keys with at least one file-backed piece."""
        with self._lock:
            return {m.file for m in self._table if m.file is not None}

    @property
    def mapped_bytes(self) -> int:
        """Bytes of the window backed by files (the zero source not counted)."""
        with self._lock:
            return sum(m.length for m in self._table if m.file is not None)

    def __len__(self) -> int:
        with self._lock:
            return len(self._table)


# ------------------------------------------------------------------------------------ all sessions

class DaxRegistry:
    """The host's DAX state: one :class:`HostDax` per session id (all with the same window size and
    alignment), and one lock per inode key ordering SETUPMAPPING against truncation (module
    docstring).  Thread-safe."""

    def __init__(self, window_size: int, alignment: int = PAGE, *, clamp_to_eof: bool = True) -> None:
        HostDax(window_size, alignment)                    # validate once
        self.window_size = window_size
        self.alignment = alignment
        self.clamp_to_eof = clamp_to_eof
        self._sessions: dict[int, HostDax] = {}
        self._ended: set[int] = set()         # session ids dropped for good
        self._lock = threading.Lock()
        self._inode_locks: dict[InodeKey, list] = {}      # key -> [lock, users]
        #: inode keys some session may still hold revoked pieces of (checked on every WRITE: a set)
        self.revoked_keys: set[InodeKey] = set()

    def session(self, sid: int) -> HostDax:
        """The session's HostDax, made on first use; ENOTCONN for a session that ended for good
        (:meth:`drop_session` with ``final``): a request still in flight from a guest that
        disconnected must not bring its session back."""
        with self._lock:
            hd = self._sessions.get(sid)
            if hd is None:
                if sid in self._ended:
                    raise _err(errno.ENOTCONN, f"DAX session {sid} has ended")
                hd = self._sessions[sid] = HostDax(self.window_size, self.alignment,
                                                   clamp_to_eof=self.clamp_to_eof)
            return hd

    def drop_session(self, sid: int, send: Callable[[list[ShmemUnmap]], None] | None = None, *,
                     final: bool = False) -> list[ShmemUnmap]:
        """Forget a session (its HostDax is marked :attr:`~HostDax.closed`); returns what
        :meth:`HostDax.reset` returns (nothing for an unknown one).  ``send(unmaps)``, if given, is
        called under the session's :attr:`HostDax.send_lock`, so that no request planned before (a
        revocation) reaches the guest after the unmap; without it nothing waits for that lock (the
        guest is gone: a disconnect must not wait for another thread's ack).  ``final``: the
        session id is never used again (the guest disconnected; a new connection gets a new id)."""
        with self._lock:
            hd = self._sessions.pop(sid, None)
            if final:
                self._ended.add(sid)
        if hd is None:
            return []
        if send is None:
            hd.closed = True
            return hd.reset()
        with hd.send_lock:
            hd.closed = True
            unmaps = hd.reset()
            if unmaps:
                send(unmaps)
        return unmaps

    def sessions(self) -> dict[int, HostDax]:
        with self._lock:
            return dict(self._sessions)

    @contextlib.contextmanager
    def inode_lock(self, inode_key: InodeKey) -> Iterator[None]:
        """Hold the inode's DAX lock: SETUPMAPPING from its size check until its SHMEM_MAP acks, a
        shrink from :meth:`plan_shrink` until the truncate returns.  Not reentrant."""
        with self._lock:
            entry = self._inode_locks.get(inode_key)
            if entry is None:
                entry = self._inode_locks[inode_key] = [threading.Lock(), 0]
            entry[1] += 1
        try:
            with entry[0]:
                yield
        finally:
            with self._lock:
                entry[1] -= 1
                if entry[1] == 0:
                    del self._inode_locks[inode_key]

    def ranges_past(self, inode_key: InodeKey, new_size: int) -> dict[int, list[tuple[int, int]]]:
        """Per session id, :meth:`HostDax.ranges_past` (sessions with none left out)."""
        out = {}
        for sid, hd in self.sessions().items():
            ranges = hd.ranges_past(inode_key, new_size)
            if ranges:
                out[sid] = ranges
        return out

    def revoke(self, inode_key: InodeKey, new_size: int, send: Send) -> int:
        """Before the file shrinks to ``new_size``: for every session, under its
        :attr:`HostDax.send_lock`, :meth:`HostDax.revoke_past` (table updated) and ``send(sid,
        requests)`` (the zero-source ``SHMEM_MAP`` requests, to send and have acked before the
        truncate).  Returns how many requests were sent.  Hold :meth:`inode_lock`."""
        n = 0
        for sid, hd in self.sessions().items():
            with hd.send_lock:
                reqs = hd.revoke_past(inode_key, new_size)
                if reqs:
                    self.revoked_keys.add(inode_key)
                    send(sid, reqs)
                    n += len(reqs)
        return n

    def restore(self, inode_key: InodeKey, size: int, fd: int, fd_writable: bool, send: Send) -> int:
        """The file grew to ``size``: for every session, under its :attr:`HostDax.send_lock`,
        :meth:`HostDax.restore_upto` (table updated) and ``send(sid, requests)`` (``SHMEM_MAP``
        requests of ``fd`` giving back the revoked pieces now inside the file).  Returns how many
        requests were sent.  Hold :meth:`inode_lock`."""
        n = 0
        left = False
        for sid, hd in self.sessions().items():
            with hd.send_lock:
                reqs = hd.restore_upto(inode_key, size, fd, fd_writable)
                if reqs:
                    send(sid, reqs)
                    n += len(reqs)
            left = left or hd.revoked(inode_key)
        if not left:
            self.revoked_keys.discard(inode_key)
        return n

    def plan_shrink(self, inode_key: InodeKey, new_size: int) -> dict[int, list[MapRequest]]:
        """:meth:`revoke`, collected per session id (sessions with none left out).  For tests and
        sans-IO use only: the requests come back after the send locks were released, so sending
        them reopens the race :attr:`HostDax.send_lock` closes."""
        out: dict[int, list[MapRequest]] = {}
        self.revoke(inode_key, new_size, out.__setitem__)
        return out

    def plan_grow(self, inode_key: InodeKey, size: int, fd: int, fd_writable: bool) -> dict[int, list[MapRequest]]:
        """:meth:`restore`, collected per session id (sessions with none left out).  For tests
        and sans-IO use only (see :meth:`plan_shrink`)."""
        out: dict[int, list[MapRequest]] = {}
        self.restore(inode_key, size, fd, fd_writable, out.__setitem__)
        return out

    def forget_revoked(self, inode_key: InodeKey) -> None:
        """:meth:`HostDax.forget_revoked` in every session."""
        if inode_key in self.revoked_keys:
            for hd in self.sessions().values():
                hd.forget_revoked(inode_key)
            self.revoked_keys.discard(inode_key)

    def holders(self, inode_key: InodeKey) -> list[int]:
        """Session ids mapping any page of the inode."""
        return [sid for sid, hd in self.sessions().items() if hd.ranges_of(inode_key)]


#: <linux/falloc.h>
FALLOC_FL_COLLAPSE_RANGE = 0x08


def shrinks(fallocate_mode: int) -> bool:
    """Whether a FALLOCATE of this mode can shrink the file (COLLAPSE_RANGE: new size = size - len)."""
    return bool(fallocate_mode & FALLOC_FL_COLLAPSE_RANGE)

__all__ = ["DAX_SHMID", "NO_FH", "WHOLE_WINDOW", "DaxRegistry", "HostDax", "InodeKey", "MapRequest", "Send",
           "FALLOC_FL_COLLAPSE_RANGE", "is_zero_source", "shrinks", "zero_source"]
