"""The vhost-user set-up of a guest's virtio-fs device (a mixin of
:class:`~vfscluster.guest.device.VirtioFsDevice`): connect, negotiate features and protocol
features in QEMU's order, hand over guest memory and the rings, start the completion thread.

A backend that breaks the protocol during set-up makes the device fail with one ``OSError``
naming its socket, and the connection is never used again.
"""

from __future__ import annotations

import errno
import functools
import logging
import os
import struct
import threading

from ..errors import RemoteProtocolError, VhostUserError
from ..host.notify import VIRTIO_FS_F_NOTIFICATION
from ..vhost_user import ProtocolFeatures
from ..virtio.fs_config import CONFIG_SIZE, NOTIFY_CONFIG_SIZE
from ..virtio.ring import F_EVENT_IDX, F_VERSION_1
from ..virtio.spin import SpinBudget
from .notify import NotifyQueue
from .regions import SHMEM_FEATURES

log = logging.getLogger("vfscluster.guest.device")

__all__ = ["DeviceSetup", "HIPRIO", "REPLY_TIMEOUT"]

HIPRIO = 0
#: seconds a vhost-user reply may take: the backend answers control messages at once; one that
#: does not answer (or sends half a message) would hold the guest forever
REPLY_TIMEOUT = 20.0


class DeviceSetup:
    """``connect``: the device's side of the vhost-user set-up."""

    def connect(self, socket_path: str) -> None:
        """Connect to the vhost-user backend at ``socket_path`` and start the rings (QEMU's order).
        A backend that breaks the protocol during set-up is an OSError (EPROTO, saying how), one
        that hangs up ECONNRESET, one that does not answer within ``REPLY_TIMEOUT`` ETIMEDOUT, as
        a device QEMU cannot realize; the connection is not used again (:meth:`shutdown`)."""
        try:
            self._connect(socket_path)
        except BaseException as exc:
            self.disconnected = True           # the stream is in no known state
            if isinstance(exc, EOFError):
                raise OSError(errno.ECONNRESET, f"vhost-user backend at {socket_path} closed the "
                              "connection during set-up") from None
            if isinstance(exc, TimeoutError):
                raise OSError(errno.ETIMEDOUT, f"vhost-user backend at {socket_path} did not "
                              f"answer within {REPLY_TIMEOUT:g} s") from None
            if isinstance(exc, RemoteProtocolError):
                raise OSError(errno.EPROTO, f"vhost-user backend at {socket_path}: {exc}") from exc
            if isinstance(exc, OSError) and self.frontend is None and exc.errno:  # connect(2)
                raise OSError(exc.errno, f"{os.strerror(exc.errno)}: cannot connect to the "
                                         f"vhost-user backend at {socket_path}") from None
            raise

    def _connect(self, socket_path: str) -> None:
        from ..vhost_user import Frontend, VHOST_USER_F_PROTOCOL_FEATURES
        from ..vhost_user.message import MemoryRegion, VringAddr

        fe = Frontend.connect(socket_path, REPLY_TIMEOUT)
        self.frontend = fe
        offered = fe.get_features()
        if not offered & F_VERSION_1:
            raise OSError(errno.EPROTO, f"vhost-user backend at {socket_path} lacks VIRTIO_F_VERSION_1")
        want_proto = ProtocolFeatures.MQ | ProtocolFeatures.REPLY_ACK | ProtocolFeatures.CONFIG
        proto = 0
        channel_sock = None
        nq = None                       # how many queues the backend serves, if it says (MQ)
        if offered & VHOST_USER_F_PROTOCOL_FEATURES:
            backend_proto = fe.get_protocol_features()
            if backend_proto & SHMEM_FEATURES == SHMEM_FEATURES:
                want_proto |= SHMEM_FEATURES
            proto = backend_proto & want_proto
            fe.set_protocol_features(proto)
            self.protocol_features = proto
            nq = fe.get_queue_num() if proto & ProtocolFeatures.MQ else None
            if proto & ProtocolFeatures.SHMEM:
                channel_sock = fe.set_backend_req_fd()
        try:
            fe.set_owner()
        except BaseException:
            if channel_sock is not None:
                channel_sock.close()
            raise
        if channel_sock is not None:
            self._start_channel(channel_sock)
        want = F_VERSION_1 | F_EVENT_IDX | VHOST_USER_F_PROTOCOL_FEATURES
        notify_size = self._notify_buf_size(fe, offered, proto)
        if notify_size:
            want |= VIRTIO_FS_F_NOTIFICATION
            self.notify_buf_size = notify_size
            self.queues.insert(1, self._notify_ring)
            self._spin.insert(1, SpinBudget(max_ns=0))       # nobody spins on it
            for i, q in enumerate(self.queues):
                q.index = i
            self.first_request = 2
        if nq is not None and nq < len(self.queues):
            raise OSError(errno.EINVAL, f"backend serves {nq} queues; device needs {len(self.queues)}")
        self.features = offered & want
        fe.set_features(self.features)
        event_idx = bool(self.features & F_EVENT_IDX)
        ram = self.ram
        fe.set_mem_table([MemoryRegion(ram.gpa, ram.size, ram.user_addr, 0)], [ram.fd])
        for q in self.queues:
            q.event_idx = event_idx
            q.kick_fd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
            q.call_fd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
            fe.set_vring_num(q.index, q.size)
            fe.set_vring_base(q.index, 0)
            fe.set_vring_addr(VringAddr(q.index, 0, q.desc_user, q.used_user, q.avail_user, 0))
            q.err_fd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
            fe.set_vring_kick(q.index, q.kick_fd)
            fe.set_vring_call(q.index, q.call_fd)
            fe.set_vring_err(q.index, q.err_fd)
        if self.features & VHOST_USER_F_PROTOCOL_FEATURES:
            for q in self.queues:
                fe.set_vring_enable(q.index, True)
        if notify_size:
            self.notify = NotifyQueue(ram, self._notify_ring, notify_size, self.lock_waits,
                                      name=f"virtio-fs <{self.config.tag}>")
            self.notify.post_all()
        hiprio = self.queues[HIPRIO]
        for q in (hiprio, *self.request_queues):   # (the notification ring has its own reaper)
            q.on_used = self._complete
            q.on_broken = functools.partial(self._device_broke, q)
        if notify_size:
            self._notify_ring.on_broken = functools.partial(self._device_broke, self._notify_ring)
        with hiprio.lock:
            hiprio.suppress_calls()
        self.connected = True
        self._completer = threading.Thread(target=self._complete_loop, name="virtio-fs-completion",
                                           daemon=True)
        self._completer.start()

    def _notify_buf_size(self, fe, offered: int, proto: int) -> int:
        """``notify_buf_size`` if the notification queue is to be negotiated, else 0: it must be
        configured, offered, readable (CONFIG) and of a usable size (else logged)."""
        if self._notify_ring is None or not offered & VIRTIO_FS_F_NOTIFICATION:
            return 0
        if not proto & ProtocolFeatures.CONFIG:
            log.info("virtio-fs <%s>: notification queue offered without CONFIG: not used", self.config.tag)
            return 0
        try:
            space = fe.get_config(0, NOTIFY_CONFIG_SIZE)
            size = struct.unpack_from("<I", space, CONFIG_SIZE)[0]
            NotifyQueue.check_size(size)
        except (OSError, VhostUserError, RemoteProtocolError, struct.error) as exc:
            log.warning("virtio-fs <%s>: notification queue not used: %s", self.config.tag, exc)
            return 0
        return size
