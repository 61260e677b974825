"""VIRTIO shared-memory regions of the guest's virtio-fs device and the vhost-user back-end channel
that delivers them: a mixin of :class:`~vfscluster.guest.device.VirtioFsDevice`.

When the backend offers SHMEM together with BACKEND_REQ and BACKEND_SEND_FD (vfs-hostd does; the C
virtiofsd and anything QEMU-era does not), the device takes them, creates the back-end channel
(SET_BACKEND_REQ_FD, QEMU's place: before SET_OWNER), asks GET_SHMEM_CONFIG after SET_OWNER, and serves
the channel in a thread of its own.  Region 1 is the host's metadata-version table: a ``SHMEM_MAP`` for
shmid 1 must be read-only, at offsets 0, within the region's advertised size, of a regular file at least
that long holding a version table; then :meth:`SharedRegions.version_view` returns it.  Anything else is
refused on the channel with the reason logged (the device goes on).  Other regions go to handlers
registered with :meth:`SharedRegions.set_shmem_handler` (the DAX window, region 0).
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import stat
import threading
from collections.abc import Callable

from ..errors import RemoteProtocolError, VhostUserError
from ..host.versions import HEADER as VT_HEADER, SHMID as VERSIONS_SHMID
from ..vhost_user import (SHMEM_MAP_F_WRITABLE, BackendReq, FrontendBackendChannel, ProtocolFeatures,
                          ShmemConfig, ShmemMap)
from .versions import VersionView

log = logging.getLogger("vfscluster.guest.device")

#: Protocol features that deliver the shared-memory regions (all three, or none of them is taken).
SHMEM_FEATURES = ProtocolFeatures.SHMEM | ProtocolFeatures.BACKEND_REQ | ProtocolFeatures.BACKEND_SEND_FD
#: ``handler(request, ShmemMap payload, fds) -> int`` for SHMEM_MAP / SHMEM_UNMAP of one region.
ShmemHandler = Callable[[BackendReq, ShmemMap, list], int]


class SharedRegions:
    """Shared-memory regions and the back-end channel (the device provides ``frontend``,
    ``protocol_features`` and ``config``)."""

    def _init_regions(self) -> None:
        self.backend_channel: FrontendBackendChannel | None = None
        self._channel_thread: threading.Thread | None = None
        self.shmem_config = ShmemConfig(())
        self._shmem_handlers: dict[int, ShmemHandler] = {}
        self._view: VersionView | None = None
        self._view_why = "the host sent no SHMEM_MAP of region 1"
        self._view_ready = threading.Event()

    def _start_channel(self, sock: socket.socket) -> None:
        """GET_SHMEM_CONFIG, then serve the back-end channel (what the host sent meanwhile waits in
        the socket, so every SHMEM_MAP is checked against the region sizes)."""
        try:
            self.shmem_config = self.frontend.get_shmem_config()
        except (OSError, VhostUserError) as exc:
            log.warning("GET_SHMEM_CONFIG failed (%s): no shared-memory region will be accepted", exc)
        self.backend_channel = FrontendBackendChannel(sock, self._backend_request)
        self._channel_thread = threading.Thread(target=self._serve_channel, name="virtio-fs-backend-channel",
                                                daemon=True)
        self._channel_thread.start()

    def _serve_channel(self) -> None:
        try:
            self.backend_channel.serve_forever()
        finally:
            if self._view is None:
                self._view_why = "the back-end channel closed before region 1 was mapped"
            self._view_ready.set()      # nothing more can arrive: no waiter waits in vain

    def set_shmem_handler(self, shmid: int, handler: ShmemHandler | None) -> None:
        """Route SHMEM_MAP / SHMEM_UNMAP of region ``shmid`` (not 1: the version table is the
        device's own) to ``handler``, called on the channel thread; None removes it.  A handler
        refuses with VhostUserError or OSError (logged, answered 1); the fds are valid during the
        call only."""
        if shmid == VERSIONS_SHMID:
            raise ValueError(f"region {VERSIONS_SHMID} is the version table, handled by the device")
        if handler is None:
            self._shmem_handlers.pop(shmid, None)
        else:
            self._shmem_handlers[shmid] = handler

    def _backend_request(self, request: BackendReq, body, fds: list) -> int:
        """A request from the host on the back-end channel (FrontendBackendChannel has validated
        its layout); raise VhostUserError to refuse it."""
        if request in (BackendReq.SHMEM_MAP, BackendReq.SHMEM_UNMAP):
            if body.shmid == VERSIONS_SHMID:
                if request is BackendReq.SHMEM_UNMAP:
                    raise VhostUserError(f"region {VERSIONS_SHMID} (the version table) is never unmapped")
                return self._map_versions(body, fds[0])
            handler = self._shmem_handlers.get(body.shmid)
            if handler is None:
                raise VhostUserError(f"shared-memory region {body.shmid} is not served by this device")
            return handler(request, body, fds)
        raise VhostUserError(f"{request.name} is not served by the virtio-fs device")

    def _map_versions(self, m: ShmemMap, fd: int) -> int:
        try:
            view = self._check_versions_map(m, fd)
        except VhostUserError as exc:
            if self._view is None:
                self._view_why = f"the host's SHMEM_MAP of region {VERSIONS_SHMID} was refused: {exc}"
            raise
        self._view = view
        self._view_ready.set()
        log.info("version table mapped from region %d: %d slots, read-only", VERSIONS_SHMID, view.slots)
        return 0

    def _check_versions_map(self, m: ShmemMap, fd: int) -> VersionView:
        """The region-1 mapping rules (module docstring); VhostUserError with the reason."""
        if self._view is not None:
            raise VhostUserError(f"region {VERSIONS_SHMID} is mapped already")
        if m.flags & SHMEM_MAP_F_WRITABLE:
            raise VhostUserError(f"region {VERSIONS_SHMID} (the version table) must be mapped read-only")
        if m.fd_offset or m.shm_offset:
            raise VhostUserError(f"region {VERSIONS_SHMID} must be mapped whole from offset 0 "
                                 f"(fd_offset {m.fd_offset:#x}, shm_offset {m.shm_offset:#x})")
        size = self.shmem_config.size(VERSIONS_SHMID)
        if m.len > size:
            raise VhostUserError(f"SHMEM_MAP of {m.len} bytes past region {VERSIONS_SHMID} of {size} bytes")
        if m.len < VT_HEADER.size + 8:
            raise VhostUserError(f"SHMEM_MAP of {m.len} bytes is shorter than a version table")
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size < m.len:
            raise VhostUserError(f"the fd is not a shared-memory file of {m.len} bytes "
                                 f"(mode {st.st_mode:o}, {st.st_size} bytes)")
        try:
            return VersionView(fd, m.len)
        except (RemoteProtocolError, ValueError, OSError) as exc:
            raise VhostUserError(f"region {VERSIONS_SHMID}: {exc}") from None

    def version_view(self, timeout: float = 2.0) -> VersionView:
        """The host's metadata-version table (region 1), read-only, once the host has mapped it
        (waiting up to ``timeout`` seconds).  ``OSError(EOPNOTSUPP)`` if the backend did not
        negotiate SHMEM (e.g. the C virtiofsd), or mapped nothing acceptable in time."""
        prefix = f"virtio-fs <{self.config.tag}>"
        if not self.protocol_features & ProtocolFeatures.SHMEM:
            raise OSError(errno.EOPNOTSUPP, f"{prefix}: the host offers no metadata-version table "
                                            f"(no SHMEM protocol feature)")
        if self._view_ready.wait(timeout) and self._view is not None:
            return self._view
        raise OSError(errno.EOPNOTSUPP, f"{prefix}: the host offers no metadata-version table "
                                        f"({self._view_why})")

    def _stop_channel(self) -> None:
        ch = self.backend_channel
        if ch is None:
            return
        try:
            ch.conn.socket.shutdown(socket.SHUT_RDWR)     # wakes the channel thread: EOF
        except OSError:
            pass                                           # it closed the socket itself already
        t = self._channel_thread
        if t is not None and t is not threading.current_thread():
            t.join(5)
        ch.close()
        self.backend_channel = None
        if self._view is not None:
            self._view.close()
            self._view = None
            self._view_why = "the device was shut down"
