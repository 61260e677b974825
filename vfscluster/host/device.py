"""The host's view of one guest's virtio-fs device: the vhost-user backend state of one connection.

It answers the frontend's vhost-user requests (features, memory table, vring set-up, config space)
and turns plain :class:`~vfscluster.virtio.device_queue.QueueState` into live checked queues when a ring
has its memory, addresses and kick fd and is enabled.  The FUSE work itself is done by the server loop.

VIRTIO shared-memory regions (DESIGN §1), offered with the SHMEM protocol feature when the device has a
version table or a DAX window: GET_SHMEM_CONFIG answers two regions, 0 = the DAX window (``dax_window``
bytes, 0 without DAX; the guest reserves at most that, see ``host/daxwire.py``) and 1 = the
metadata-version table (its size, 0 without one).  Region 1 is delivered on the back-end channel: once SHMEM,
BACKEND_REQ and BACKEND_SEND_FD are negotiated, SET_BACKEND_REQ_FD is followed by one
``SHMEM_MAP{shmid=1, fd_offset=0, shm_offset=0, len=table size, flags=0 (read-only)}`` carrying a
read-only fd of the table.  It asks for no reply and is sent non-blocking: a guest that does not read
its channel cannot stall the server loop (it just gets no table, logged).

The notification queue (``notify.py`` has the wire): with ``notifications`` the device offers
``VIRTIO_FS_F_NOTIFICATION``, has one more queue (GET_QUEUE_NUM = 2 + request queues) and a 44-byte
config space with ``notify_buf_size``.  Only if the frontend acks the bit is queue 1 the notification
queue (:attr:`FsBackendDevice.notify_index`) and are the request queues 2..N+1; otherwise queue 1 is a
request queue, as for QEMU, and the extra queue stays unused.
"""

from __future__ import annotations

import logging
import os
import socket

from ..errors import QueueError, VhostUserError
from ..virtio.device_queue import Queue, QueueState
from ..virtio.fs_config import check_tag, config_space
from ..virtio.memory import GuestMemory, Region
from ..virtio.ring import F_EVENT_IDX, F_INDIRECT_DESC, F_VERSION_1
from ..vhost_user import (BackendChannel, BackendHandler, BackendReq, ProtocolFeatures, ShmemConfig,
                          ShmemMap, VHOST_USER_F_PROTOCOL_FEATURES)
from .notify import NOTIFY_BUF_SIZE, NOTIFY_QUEUE, VIRTIO_FS_F_NOTIFICATION
from .versions import SHMID as VERSIONS_SHMID, VersionTable

log = logging.getLogger(__name__)

DEVICE_FEATURES = F_VERSION_1 | F_EVENT_IDX | F_INDIRECT_DESC | VHOST_USER_F_PROTOCOL_FEATURES
PROTOCOL_FEATURES = (ProtocolFeatures.MQ | ProtocolFeatures.REPLY_ACK | ProtocolFeatures.CONFIG
                     | ProtocolFeatures.BACKEND_REQ | ProtocolFeatures.BACKEND_SEND_FD)
#: What delivering the version table (region 1) on the back-end channel needs negotiated.
SHMEM_DELIVERY = ProtocolFeatures.SHMEM | ProtocolFeatures.BACKEND_REQ | ProtocolFeatures.BACKEND_SEND_FD
MAX_QUEUES = 1 + 64


class FsBackendDevice(BackendHandler):
    """vhost-user backend state of one guest connection (one virtio-fs device); ``versions``, when
    given, is the version table offered to the guest as shared-memory region 1 (not owned)."""

    def __init__(self, name: str, *, num_request_queues: int = 64, tag: str | None = None,
                 versions: VersionTable | None = None, notifications: bool = True,
                 dax_window: int = 0) -> None:
        self.name = name
        self.dax_window = dax_window                # size of shared-memory region 0 (0: no DAX)
        self.versions = versions
        self.notifications = notifications          # VIRTIO_FS_F_NOTIFICATION offered
        self.num_request_queues = num_request_queues
        self.num_queues = 1 + num_request_queues + (1 if notifications else 0)
        self.notify_index: int | None = None        # NOTIFY_QUEUE once the frontend acked the bit
        if tag is not None:
            check_tag(tag)                          # EINVAL: as the guest would refuse it
        self.tag = tag
        self.acked_features = 0
        self.protocol_features = 0
        self.owner = False
        self.mem: GuestMemory | None = None
        self.states = [QueueState() for _ in range(self.num_queues)]
        self.queues: list[Queue | None] = [None] * self.num_queues
        self.backend_channel = None
        self.status = 0
        self.generation = 0         # bumped whenever the set of live queues changes

    # -- helpers -------------------------------------------------------------------------------
    def _state(self, index: int) -> QueueState:
        if not 0 <= index < self.num_queues:
            raise VhostUserError(f"vring index {index} out of range (device has {self.num_queues} queues)")
        return self.states[index]

    def _refresh(self, index: int) -> None:
        """(Re)build or drop the live queue ``index`` from its state."""
        st = self.states[index]
        old = self.queues[index]
        live = None
        if st.enabled and st.kick_fd is not None and self.mem is not None and st.size:
            if old is not None:
                old.sync_state()
            try:
                live = st.build(self.mem)
            except QueueError as exc:
                log.warning("%s: queue %d refused: %s", self.name, index, exc)
                live = None
        elif old is not None:
            old.sync_state()
        self.queues[index] = live
        self.generation += 1

    def live_queues(self) -> list[tuple[int, Queue]]:
        return [(i, q) for i, q in enumerate(self.queues) if q is not None and q.broken is None]

    # -- BackendHandler --------------------------------------------------------------------------
    def get_features(self) -> int:
        return DEVICE_FEATURES | (VIRTIO_FS_F_NOTIFICATION if self.notifications else 0)

    def set_features(self, features: int) -> None:
        if features & ~self.get_features():
            raise VhostUserError(f"SET_FEATURES {features:#x} has bits we did not offer")
        self.acked_features = features
        self.notify_index = NOTIFY_QUEUE if features & VIRTIO_FS_F_NOTIFICATION else None
        for st in self.states:
            st.event_idx = bool(features & F_EVENT_IDX)
            st.indirect = bool(features & F_INDIRECT_DESC)
            if not features & VHOST_USER_F_PROTOCOL_FEATURES:
                st.enabled = True       # without PROTOCOL_FEATURES rings are enabled at once
        for i in range(self.num_queues):
            self._refresh(i)

    def get_protocol_features(self) -> int:
        offered = PROTOCOL_FEATURES
        if self.versions is not None or self.dax_window:
            offered |= ProtocolFeatures.SHMEM
        return int(offered)

    def set_protocol_features(self, features: int) -> None:
        if features & ~self.get_protocol_features():
            raise VhostUserError(f"SET_PROTOCOL_FEATURES {features:#x} has bits we did not offer")
        self.protocol_features = features

    def get_shmem_config(self) -> ShmemConfig:
        if not self.protocol_features & ProtocolFeatures.SHMEM:
            raise VhostUserError("GET_SHMEM_CONFIG not supported: protocol feature SHMEM not negotiated")
        return ShmemConfig((self.dax_window, self.versions.size if self.versions is not None else 0))

    def set_owner(self) -> None:
        self.owner = True

    def reset_owner(self) -> None:
        self.owner = False

    def get_queue_num(self) -> int:
        return self.num_queues

    def set_mem_table(self, regions, fds) -> None:
        mapped = []
        try:
            for region, fd in zip(regions, fds):
                mapped.append(Region.map_fd(fd, region.guest_phys_addr, region.memory_size,
                                            region.userspace_addr, region.mmap_offset))
            mem = GuestMemory(mapped)
        except QueueError as exc:
            for r in mapped:
                r.close()
            raise VhostUserError(f"SET_MEM_TABLE refused: {exc}") from exc
        old, self.mem = self.mem, mem
        log.info("%s: memory table of %d region(s): %s", self.name, len(mapped),
                 ", ".join(f"[{r.gpa:#x}, +{r.size:#x})" for r in mapped))
        for i in range(self.num_queues):
            self._refresh(i)
        if old is not None:
            old.close()

    def set_vring_num(self, index: int, num: int) -> None:
        st = self._state(index)
        if not 0 < num <= 32768 or num & (num - 1):
            raise VhostUserError(f"SET_VRING_NUM {num} is not a power of two in 1..32768")
        st.size = num

    def set_vring_addr(self, addr) -> None:
        st = self._state(addr.index)
        st.desc_addr, st.used_addr, st.avail_addr = addr.desc_user_addr, addr.used_user_addr, addr.avail_user_addr
        self._refresh(addr.index)

    def set_vring_base(self, index: int, num: int) -> None:
        st = self._state(index)
        st.next_avail = st.next_used = num & 0xFFFF

    def get_vring_base(self, index: int) -> int:
        st = self._state(index)
        q = self.queues[index]
        if q is not None:
            q.sync_state()
        if st.kick_fd is not None:
            os.close(st.kick_fd)
            st.kick_fd = None
        self._refresh(index)     # stopped: no kick fd
        return st.next_avail

    def set_vring_kick(self, index: int, fd: int | None) -> None:
        st = self._state(index)
        if st.kick_fd is not None:
            os.close(st.kick_fd)
        st.kick_fd = fd
        self._refresh(index)

    def set_vring_call(self, index: int, fd: int | None) -> None:
        st = self._state(index)
        if st.call_fd is not None:
            os.close(st.call_fd)
        st.call_fd = fd

    def set_vring_err(self, index: int, fd: int | None) -> None:
        st = self._state(index)
        if st.err_fd is not None:
            os.close(st.err_fd)
        st.err_fd = fd

    def set_vring_enable(self, index: int, enable: bool) -> None:
        self._state(index).enabled = bool(enable)
        self._refresh(index)

    def get_config(self, offset: int, size: int, flags: int) -> bytes:
        space = self.config_space()
        if offset + size > len(space):
            raise VhostUserError(f"GET_CONFIG [{offset}, +{size}) past the {len(space)}-byte config space")
        return space[offset:offset + size]

    def config_space(self) -> bytes:
        """``struct virtio_fs_config``: tag, num_request_queues (+ notify_buf_size when the
        notification feature is offered)."""
        return config_space(self.tag.encode() if self.tag is not None else b"", self.num_request_queues,
                            NOTIFY_BUF_SIZE if self.notifications else None)

    def set_backend_req_fd(self, sock: socket.socket) -> None:
        if self.backend_channel is not None:
            self.backend_channel.close()
        self.backend_channel = BackendChannel(sock)
        if self.versions is not None and self.protocol_features & SHMEM_DELIVERY == SHMEM_DELIVERY:
            self._map_versions(sock)

    def _map_versions(self, sock: socket.socket) -> None:
        """SHMEM_MAP of the version table (region 1), read-only, no reply asked, never blocking."""
        table = self.versions
        msg = ShmemMap(VERSIONS_SHMID, 0, 0, table.size, 0)
        sock.setblocking(False)
        try:
            self.backend_channel.request(BackendReq.SHMEM_MAP, msg, [table.ro_fd], need_reply=False)
        except OSError as exc:     # full (the guest does not read its channel) or gone
            log.warning("%s: version table not delivered (SHMEM_MAP on the back-end channel: %s)",
                        self.name, exc)
        else:
            log.info("%s: version table mapped as shared-memory region %d (%d bytes, read-only)",
                     self.name, VERSIONS_SHMID, table.size)
        finally:
            sock.setblocking(True)

    def set_status(self, status: int) -> None:
        self.status = status

    def get_status(self) -> int:
        return self.status

    def reset_device(self) -> None:
        for i, st in enumerate(self.states):
            self.queues[i] = None
            for fd in (st.kick_fd, st.call_fd, st.err_fd):
                if fd is not None:
                    os.close(fd)
            self.states[i] = QueueState()
        self.generation += 1

    # -- teardown --------------------------------------------------------------------------------
    def close(self) -> None:
        self.reset_device()
        if self.mem is not None:
            self.mem.close()
            self.mem = None
        if self.backend_channel is not None:
            self.backend_channel.close()
            self.backend_channel = None
