"""vhost-user front-end (the VMM side): one method per request, and the back-end channel server.

:class:`Frontend` methods have the names of the :class:`~.backend.BackendHandler` methods.  Each sends its
request with the fds due, then reads and checks the reply: flags exactly VERSION|REPLY, the same request
code, the exact size, no unexpected fds.  Errors:

* :class:`~vfscluster.errors.VhostUserError` -- the back-end sent a malformed reply (or closed the
  connection in the middle of one); ``EOFError`` -- it closed the connection;
* ``OSError(errno.EIO)`` -- the back-end answered that the request failed: an ack with a non-zero u64
  (QEMU maps that to -EIO too), or the empty reply (size-0 config for GET_CONFIG) our dispatcher sends when
  a request that always has a reply failed;
* :class:`~vfscluster.errors.LocalProtocolError` -- we misused the API (a request whose protocol feature
  was not negotiated, an index out of range, ...); nothing was sent.

With REPLY_ACK negotiated, every request without a reply of its own is sent with NEED_REPLY and the call
returns only once the back-end acked it, so the caller knows it was applied.  SET_PROTOCOL_FEATURES is the
exception when it switches REPLY_ACK on or off (as in QEMU, it is then not acked).  Without REPLY_ACK,
SET_VRING_ENABLE is followed by a GET_FEATURES barrier, as QEMU's ``vhost_user_write_sync`` does.

Thread-safe: one request/reply exchange at a time.
"""

from __future__ import annotations

import errno
import logging
import socket
import threading
from collections.abc import Callable, Sequence
from typing import Optional

from vfscluster.errors import LocalProtocolError, VhostUserError

from .connection import Connection, close_fds, close_unchanged, fd_identities
from .message import (
    BACKEND_REQUESTS,
    MAX_CONFIG_SIZE,
    MEMORY_BASELINE_NREGIONS,
    VHOST_USER_F_PROTOCOL_FEATURES,
    VRING_IDX_MASK,
    VRING_NOFD_MASK,
    BackendReq,
    DeviceConfig,
    FdRule,
    FrontendReq,
    Header,
    HeaderFlags,
    Inflight,
    MemoryRegion,
    MemoryTable,
    ProtocolFeatures,
    RequestSpec,
    ShmemConfig,
    SingleMemoryRegion,
    U64,
    VringAddr,
    VringState,
    parse_payload,
    request_name,
)

logger = logging.getLogger(__name__)

_REPLY_FLAGS = HeaderFlags.VERSION | HeaderFlags.REPLY


def _failed(request: FrontendReq, why: str) -> OSError:
    return OSError(errno.EIO, f"vhost-user back-end failed {request.name}: {why}")


class Frontend:
    """Drives a vhost-user back-end over ``conn`` (see the module docstring)."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self._lock = threading.Lock()
        #: Virtio features from the last GET_FEATURES (None before).
        self.backend_features: Optional[int] = None
        #: Protocol features from the last GET_PROTOCOL_FEATURES (None before).
        self.backend_protocol_features: Optional[int] = None
        #: Virtio features sent with the last SET_FEATURES.
        self.acked_features = 0
        #: Protocol features sent with the last SET_PROTOCOL_FEATURES.
        self.acked_protocol_features = 0

    @classmethod
    def connect(cls, path: str, timeout: float | None = None) -> Frontend:
        """Connect to the back-end's vhost-user socket at ``path`` (``timeout``: see
        :meth:`Connection.connect`)."""
        return cls(Connection.connect(path, timeout))

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> Frontend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def reply_ack(self) -> bool:
        """REPLY_ACK negotiated: setters wait for the back-end's ack."""
        return bool(self.acked_protocol_features & ProtocolFeatures.REPLY_ACK)

    # ------------------------------------------------------------------------------------- plumbing

    def _need(self, request: FrontendReq, feature: ProtocolFeatures) -> None:
        if not self.acked_protocol_features & feature:
            raise LocalProtocolError(f"{request.name} needs protocol feature {feature.name}, not negotiated")

    def _call(
        self,
        request: FrontendReq,
        payload: bytes = b"",
        fds: Sequence[int] = (),
        reply: Optional[type] = None,
        ack: Optional[bool] = None,
    ) -> tuple[object, list[int]]:
        """Send one request; read its reply (``reply`` class) or its ack.  Returns (reply object, fds)."""
        want_ack = reply is None and (self.reply_ack if ack is None else ack)
        flags = HeaderFlags.VERSION | (HeaderFlags.NEED_REPLY if want_ack else 0)
        with self._lock:
            self.conn.send(request, payload, fds, flags)
            if reply is None and not want_ack:
                return None, []
            header, data, rfds = self.conn.recv()
        try:
            self._check_reply_header(request, header)
            if reply is None:
                if rfds:
                    raise VhostUserError(f"ack of {request.name} carries {len(rfds)} fds")
                value = U64.unpack(data).value
                if value != 0:
                    raise _failed(request, f"ack 0x{value:x}")
                return None, []
            if not data:
                raise _failed(request, "empty reply")
            obj = reply.unpack(data)
            return obj, rfds
        except BaseException:
            close_fds(rfds)
            raise

    @staticmethod
    def _check_reply_header(request: FrontendReq, header: Header) -> None:
        if header.flags != _REPLY_FLAGS:
            raise VhostUserError(f"reply to {request.name} has flags 0x{header.flags:x}, expected 0x5")
        if header.request != request:
            raise VhostUserError(f"reply to {request.name} is for {request_name(header.request)}")

    def _get_u64(self, request: FrontendReq) -> int:
        obj, fds = self._call(request, reply=U64)
        if fds:
            close_fds(fds)
            raise VhostUserError(f"reply to {request.name} carries {len(fds)} fds")
        return obj.value  # type: ignore[attr-defined]

    @staticmethod
    def _index(index: int, limit: int = 0xFFFFFFFF) -> int:
        if not 0 <= index <= limit:
            raise LocalProtocolError(f"vring index {index} out of range 0..{limit}")
        return index

    # ------------------------------------------------------------------------------------- requests

    def get_features(self) -> int:
        """GET_FEATURES: the back-end's virtio feature bits."""
        self.backend_features = self._get_u64(FrontendReq.GET_FEATURES)
        return self.backend_features

    def set_features(self, features: int) -> None:
        """SET_FEATURES: ack ``features`` (add VHOST_USER_F_PROTOCOL_FEATURES if it was offered)."""
        self._call(FrontendReq.SET_FEATURES, U64(features).pack())
        self.acked_features = features

    def get_protocol_features(self) -> int:
        """GET_PROTOCOL_FEATURES (the back-end must offer VHOST_USER_F_PROTOCOL_FEATURES)."""
        if self.backend_features is not None and not self.backend_features & VHOST_USER_F_PROTOCOL_FEATURES:
            raise LocalProtocolError("GET_PROTOCOL_FEATURES: the back-end does not offer protocol features")
        self.backend_protocol_features = self._get_u64(FrontendReq.GET_PROTOCOL_FEATURES)
        return self.backend_protocol_features

    def set_protocol_features(self, features: int) -> None:
        """SET_PROTOCOL_FEATURES: use ``features`` from now on (REPLY_ACK included: acks start with the
        next request)."""
        # Ask for an ack only if REPLY_ACK is on both before and after: a back-end decides with the new set
        # (rust-vmm, our dispatcher) or the old one, and must agree either way.
        ack = self.reply_ack and bool(features & ProtocolFeatures.REPLY_ACK)
        self._call(FrontendReq.SET_PROTOCOL_FEATURES, U64(features).pack(), ack=ack)
        self.acked_protocol_features = features

    def set_owner(self) -> None:
        """SET_OWNER."""
        self._call(FrontendReq.SET_OWNER)

    def reset_owner(self) -> None:
        """RESET_OWNER (deprecated)."""
        self._call(FrontendReq.RESET_OWNER)

    def set_mem_table(self, regions: Sequence[MemoryRegion], fds: Sequence[int]) -> None:
        """SET_MEM_TABLE: ``regions`` (1..8) with one fd each, in order.  The fds stay the caller's."""
        if len(regions) != len(fds) or not 1 <= len(regions) <= MEMORY_BASELINE_NREGIONS:
            raise LocalProtocolError(
                f"SET_MEM_TABLE needs 1..{MEMORY_BASELINE_NREGIONS} regions with one fd each, "
                f"got {len(regions)} regions and {len(fds)} fds"
            )
        self._call(FrontendReq.SET_MEM_TABLE, MemoryTable(tuple(regions)).pack(), fds)

    def add_mem_reg(self, region: MemoryRegion, fd: int) -> None:
        """ADD_MEM_REG (CONFIGURE_MEM_SLOTS).  The fd stays the caller's."""
        self._need(FrontendReq.ADD_MEM_REG, ProtocolFeatures.CONFIGURE_MEM_SLOTS)
        self._call(FrontendReq.ADD_MEM_REG, SingleMemoryRegion(region).pack(), [fd])

    def rem_mem_reg(self, region: MemoryRegion) -> None:
        """REM_MEM_REG (CONFIGURE_MEM_SLOTS)."""
        self._need(FrontendReq.REM_MEM_REG, ProtocolFeatures.CONFIGURE_MEM_SLOTS)
        self._call(FrontendReq.REM_MEM_REG, SingleMemoryRegion(region).pack())

    def get_max_mem_slots(self) -> int:
        """GET_MAX_MEM_SLOTS (CONFIGURE_MEM_SLOTS)."""
        self._need(FrontendReq.GET_MAX_MEM_SLOTS, ProtocolFeatures.CONFIGURE_MEM_SLOTS)
        return self._get_u64(FrontendReq.GET_MAX_MEM_SLOTS)

    def set_vring_num(self, index: int, num: int) -> None:
        """SET_VRING_NUM."""
        self._call(FrontendReq.SET_VRING_NUM, VringState(self._index(index), num).pack())

    def set_vring_addr(self, addr: VringAddr) -> None:
        """SET_VRING_ADDR (addresses in this process's user address space, as mapped for the regions)."""
        self._call(FrontendReq.SET_VRING_ADDR, addr.pack())

    def set_vring_base(self, index: int, num: int) -> None:
        """SET_VRING_BASE."""
        self._call(FrontendReq.SET_VRING_BASE, VringState(self._index(index), num).pack())

    def get_vring_base(self, index: int) -> int:
        """GET_VRING_BASE: stop ring ``index``; return its next avail index."""
        obj, fds = self._call(FrontendReq.GET_VRING_BASE, VringState(self._index(index), 0).pack(),
                              reply=VringState)
        if fds:
            close_fds(fds)
            raise VhostUserError(f"reply to GET_VRING_BASE carries {len(fds)} fds")
        if obj.index != index:  # type: ignore[attr-defined]
            raise VhostUserError(f"GET_VRING_BASE reply for ring {obj.index}, asked {index}")  # type: ignore
        return obj.num  # type: ignore[attr-defined]

    def _set_vring_fd(self, request: FrontendReq, index: int, fd: Optional[int]) -> None:
        value = self._index(index, VRING_IDX_MASK) | (VRING_NOFD_MASK if fd is None else 0)
        self._call(request, U64(value).pack(), [] if fd is None else [fd])

    def set_vring_kick(self, index: int, fd: Optional[int]) -> None:
        """SET_VRING_KICK: eventfd (stays the caller's), or None: the back-end polls."""
        self._set_vring_fd(FrontendReq.SET_VRING_KICK, index, fd)

    def set_vring_call(self, index: int, fd: Optional[int]) -> None:
        """SET_VRING_CALL: eventfd (stays the caller's), or None."""
        self._set_vring_fd(FrontendReq.SET_VRING_CALL, index, fd)

    def set_vring_err(self, index: int, fd: Optional[int]) -> None:
        """SET_VRING_ERR: eventfd (stays the caller's), or None."""
        self._set_vring_fd(FrontendReq.SET_VRING_ERR, index, fd)

    def set_vring_enable(self, index: int, enable: bool) -> None:
        """SET_VRING_ENABLE (only once VHOST_USER_F_PROTOCOL_FEATURES was acked; QEMU waits for this one
        even without REPLY_ACK, so do we -- with a GET_FEATURES barrier)."""
        if not self.acked_features & VHOST_USER_F_PROTOCOL_FEATURES:
            raise LocalProtocolError("SET_VRING_ENABLE needs VHOST_USER_F_PROTOCOL_FEATURES acked")
        self._call(FrontendReq.SET_VRING_ENABLE, VringState(self._index(index), int(bool(enable))).pack())
        if not self.reply_ack:
            self._get_u64(FrontendReq.GET_FEATURES)  # barrier: the back-end has processed the enable

    def get_queue_num(self) -> int:
        """GET_QUEUE_NUM (MQ)."""
        self._need(FrontendReq.GET_QUEUE_NUM, ProtocolFeatures.MQ)
        return self._get_u64(FrontendReq.GET_QUEUE_NUM)

    def get_config(self, offset: int, size: int, flags: int = 0) -> bytes:
        """GET_CONFIG (CONFIG): ``size`` bytes of config space at ``offset``."""
        self._need(FrontendReq.GET_CONFIG, ProtocolFeatures.CONFIG)
        if not 0 < size <= MAX_CONFIG_SIZE:
            raise LocalProtocolError(f"GET_CONFIG size {size} not in 1..{MAX_CONFIG_SIZE}")
        request = DeviceConfig(offset, size, flags, bytes(size)).pack()
        obj, fds = self._call(FrontendReq.GET_CONFIG, request, reply=DeviceConfig)
        if fds:
            close_fds(fds)
            raise VhostUserError(f"reply to GET_CONFIG carries {len(fds)} fds")
        if obj.size == 0:  # type: ignore[attr-defined]
            raise _failed(FrontendReq.GET_CONFIG, "config of size 0")
        if obj.size != size:  # type: ignore[attr-defined]
            raise VhostUserError(f"GET_CONFIG reply of {obj.size} bytes, asked {size}")  # type: ignore
        return obj.data  # type: ignore[attr-defined]

    def set_config(self, offset: int, flags: int, data: bytes) -> None:
        """SET_CONFIG (CONFIG)."""
        self._need(FrontendReq.SET_CONFIG, ProtocolFeatures.CONFIG)
        if not 0 < len(data) <= MAX_CONFIG_SIZE:
            raise LocalProtocolError(f"SET_CONFIG of {len(data)} bytes not in 1..{MAX_CONFIG_SIZE}")
        self._call(FrontendReq.SET_CONFIG, DeviceConfig(offset, len(data), flags, bytes(data)).pack())

    def set_backend_req_fd(self) -> socket.socket:
        """SET_BACKEND_REQ_FD (BACKEND_REQ): make a socketpair, send one end, return the other.

        Serve the returned socket with :class:`FrontendBackendChannel` (in a thread of your own).
        """
        self._need(FrontendReq.SET_BACKEND_REQ_FD, ProtocolFeatures.BACKEND_REQ)
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self._call(FrontendReq.SET_BACKEND_REQ_FD, b"", [theirs.fileno()])
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        return ours

    def get_inflight_fd(self, inflight: Inflight) -> tuple[Inflight, Optional[int]]:
        """GET_INFLIGHT_FD (INFLIGHT_SHMFD): the back-end's in-flight area and a fd to it (the caller's
        to close); None when mmap_size is 0."""
        self._need(FrontendReq.GET_INFLIGHT_FD, ProtocolFeatures.INFLIGHT_SHMFD)
        obj, fds = self._call(FrontendReq.GET_INFLIGHT_FD, inflight.pack(), reply=Inflight)
        expected = 0 if obj.mmap_size == 0 else 1  # type: ignore[attr-defined]
        if len(fds) != expected:
            close_fds(fds)
            raise VhostUserError(f"GET_INFLIGHT_FD reply carries {len(fds)} fds, expected {expected}")
        return obj, (fds[0] if fds else None)  # type: ignore[return-value]

    def set_inflight_fd(self, inflight: Inflight, fd: int) -> None:
        """SET_INFLIGHT_FD (INFLIGHT_SHMFD).  The fd stays the caller's."""
        self._need(FrontendReq.SET_INFLIGHT_FD, ProtocolFeatures.INFLIGHT_SHMFD)
        self._call(FrontendReq.SET_INFLIGHT_FD, inflight.pack(), [fd])

    def set_status(self, status: int) -> None:
        """SET_STATUS (STATUS): the virtio status byte."""
        self._need(FrontendReq.SET_STATUS, ProtocolFeatures.STATUS)
        if not 0 <= status <= 0xFF:
            raise LocalProtocolError(f"status 0x{status:x} is not a byte")
        self._call(FrontendReq.SET_STATUS, U64(status).pack())

    def get_status(self) -> int:
        """GET_STATUS (STATUS)."""
        self._need(FrontendReq.GET_STATUS, ProtocolFeatures.STATUS)
        return self._get_u64(FrontendReq.GET_STATUS)

    def reset_device(self) -> None:
        """RESET_DEVICE (RESET_DEVICE)."""
        self._need(FrontendReq.RESET_DEVICE, ProtocolFeatures.RESET_DEVICE)
        self._call(FrontendReq.RESET_DEVICE)

    def get_shmem_config(self) -> ShmemConfig:
        """GET_SHMEM_CONFIG (SHMEM): the sizes of the device's VIRTIO shared-memory regions, by shmid."""
        self._need(FrontendReq.GET_SHMEM_CONFIG, ProtocolFeatures.SHMEM)
        obj, fds = self._call(FrontendReq.GET_SHMEM_CONFIG, reply=ShmemConfig)
        if fds:
            close_fds(fds)
            raise VhostUserError(f"reply to GET_SHMEM_CONFIG carries {len(fds)} fds")
        return obj  # type: ignore[return-value]


# --------------------------------------------------------------------------- back-end channel server

#: ``handler(request, payload, fds) -> int``: payload is the parsed struct (ShmemMap, VringArea, ...) or
#: None; fds are valid during the call only: afterwards the channel closes those still open on the same
#: file, as QEMU does (``os.dup`` one to keep it; closing one yourself is fine).
BackendRequestHandler = Callable[[BackendReq, object, list[int]], int]


class FrontendBackendChannel:
    """Serves back-end -> front-end requests on the socket returned by :meth:`Frontend.set_backend_req_fd`.

    Each request is validated against :data:`~.message.BACKEND_REQUESTS` (flags, size, payload rules, fd
    count), then ``handler`` is called; when the request has NEED_REPLY the handler's int is sent back as
    the u64 reply (0 = success).  A refused request (unknown or unsupported id, bad size or fds, handler
    raising) is logged at WARNING with the reason and answered with 1 when a reply is asked for.  Run
    :meth:`serve_forever` in a thread; it returns when the back-end closes the channel, or after a malformed
    header (which cannot be skipped), closing the socket.
    """

    def __init__(self, sock: socket.socket, handler: BackendRequestHandler) -> None:
        self.conn = Connection(sock)
        self.handler = handler

    def handle_one(self) -> bool:
        """Process one request.  False (connection closed) on EOF or an unrecoverable stream."""
        try:
            header, payload, fds = self.conn.recv()
        except EOFError:
            self.conn.close()
            return False
        except (VhostUserError, OSError) as exc:
            logger.warning("vhost-user back-end channel: closing: %s", exc)
            self.conn.close()
            return False
        handed = fd_identities(fds)
        try:
            result = self._process(header, payload, fds)
        finally:
            close_unchanged(fds, handed)  # a handler that closed an fd itself is fine too
        if result is None or not header.need_reply or header.is_reply:
            return True
        try:
            self.conn.reply(header, U64(result & 0xFFFF_FFFF_FFFF_FFFF).pack())
        except OSError as exc:
            logger.warning("vhost-user back-end channel: reply failed, closing: %s", exc)
            self.conn.close()
            return False
        return True

    def serve_forever(self) -> None:
        """Serve requests until the back-end closes the channel."""
        while self.handle_one():
            pass

    def close(self) -> None:
        self.conn.close()

    def _process(self, header: Header, payload: bytes, fds: list[int]) -> Optional[int]:
        """Validate and handle one request; return the reply value (1 on refusal), None for a reply."""
        name = request_name(header.request, BackendReq)
        try:
            if header.is_reply:
                raise VhostUserError("unexpected reply on the back-end channel")
            try:
                request = BackendReq(header.request)
            except ValueError:
                raise VhostUserError("unknown request id") from None
            spec: Optional[RequestSpec] = BACKEND_REQUESTS.get(request)
            if spec is None:
                raise VhostUserError(f"{request.name} not supported")
            if not spec.fds.allows(len(fds)):
                raise VhostUserError(f"{len(fds)} fds attached, expected {spec.fds.value}")
            body = parse_payload(spec, payload, name)
            if spec.fds is FdRule.NOFD_BIT and body.nofd == bool(fds):  # type: ignore[union-attr]
                raise VhostUserError("fd presence does not match VRING_NOFD_MASK")
            result = self.handler(request, body, list(fds))
            if not isinstance(result, int):
                raise LocalProtocolError(f"back-end channel handler returned {result!r}, not an int")
            return result
        except (VhostUserError, OSError) as exc:
            if header.is_reply:
                logger.warning("vhost-user back-end channel: ignored %s: %s", name, exc)
                return None
            logger.warning("vhost-user back-end channel: refused %s: %s", name, exc)
            return 1
        except Exception:
            logger.exception("vhost-user back-end channel: handler failed on %s", name)
            return 1


__all__ = ["Frontend", "FrontendBackendChannel", "BackendRequestHandler"]
