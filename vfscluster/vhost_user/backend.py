"""vhost-user back-end: the device's request interface, the dispatcher that drives it, and the back-end
channel (back-end -> front-end requests on the SET_BACKEND_REQ_FD socket).

The dispatcher handles every request in the same steps, as rust-vmm's ``BackendReqHandler`` does:

1. **header** -- read by :meth:`Connection.recv` (version, reserved bits, size <= MAX_PAYLOAD; a bad header
   makes the stream unrecoverable: the dispatcher logs it and closes);
2. **request** -- a known, supported id without the REPLY flag, whose protocol feature (if any) is negotiated;
3. **fds** -- count checked against :data:`~.message.FRONTEND_REQUESTS`;
4. **size** and **body** -- exact size, then the payload's own rules (alignment, overflow, ...);
5. **handler** -- one :class:`BackendHandler` method;
6. **reply / ack** -- requests that always answer get their reply; other requests get a u64 ack (0 success,
   1 failure) when REPLY_ACK is negotiated and the request has NEED_REPLY.

A message refused at steps 2-5 (or whose handler raises) is logged at WARNING with the reason, its fds are
closed, and it is answered with a failure: an ack of 1 when one is due; for a request that always has a reply,
an empty reply (size 0) -- or, for GET_CONFIG, a config with size 0 as rust-vmm sends -- so the front-end
is never left waiting; the same goes for the requests we do not support whose sender always waits for a
reply (IOTLB_MSG, CHECK_DEVICE_STATE, GET_SHARED_OBJECT, ...).  The dispatcher then goes on with the next
message.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Callable, Sequence
from typing import Optional, Union

from vfscluster.errors import LocalProtocolError, VhostUserError

from .connection import Connection, close_fds, close_unchanged, fd_identities
from .message import (
    BACKEND_REQUESTS,
    FRONTEND_REQUESTS,
    MAX_PAYLOAD,
    VHOST_USER_F_PROTOCOL_FEATURES,
    BackendReq,
    DeviceConfig,
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
    vring_fd_index,
)

logger = logging.getLogger(__name__)


# Requests the dispatcher does not support but whose sender always waits for a reply: refuse them with a
# failure reply rather than leave the front-end hanging (a u64 status where the reply is one, else empty).
# SET_LOG_BASE is not here: it has a reply only with LOG_SHMFD, which a device must not offer.
_UNSUPPORTED_FAILURE_REPLIES: dict[FrontendReq, bytes] = {
    FrontendReq.IOTLB_MSG: U64(1).pack(),
    FrontendReq.POSTCOPY_END: U64(1).pack(),
    FrontendReq.CHECK_DEVICE_STATE: U64(1).pack(),
    FrontendReq.SET_DEVICE_STATE_FD: U64(0x101).pack(),  # error, and no fd (bit 8), as rust-vmm answers
    FrontendReq.CREATE_CRYPTO_SESSION: b"",
    FrontendReq.POSTCOPY_ADVISE: b"",
    FrontendReq.GET_SHARED_OBJECT: b"",
}


def _unsupported(request: FrontendReq) -> VhostUserError:
    return VhostUserError(f"{request.name} not supported")


class BackendHandler:
    """The device side of vhost-user: one method per front-end request the dispatcher supports.

    Every default raises ``VhostUserError("... not supported")``, so a device implements only what it
    offers; a request it does not implement is refused (logged, acked with failure), never a crash.

    Contracts common to all methods:

    * raise :class:`~vfscluster.errors.VhostUserError` (or ``OSError``) to refuse a request: the dispatcher
      logs the reason and answers with a failure.  Any other exception is treated as a bug in the device:
      logged with its traceback at ERROR, answered with a failure, and the dispatcher goes on;
    * fds passed to a method belong to the method **if it returns normally**.  If it raises, the
      dispatcher closes those of them that are still open on the same file: a method that raises may close
      its fds itself or leave them open, but must not keep them;
    * payloads have already been validated (sizes, alignment, overflow, fd counts, negotiated features);
      ring indices and ranges against the device's own limits are the device's to check.
    """

    def get_features(self) -> int:
        """GET_FEATURES: the virtio feature bits offered; include VHOST_USER_F_PROTOCOL_FEATURES (bit 30) to
        enable protocol features."""
        raise _unsupported(FrontendReq.GET_FEATURES)

    def set_features(self, features: int) -> None:
        """SET_FEATURES: the bits the driver acked.  Without bit 30, enable every ring now (spec); with it,
        rings stay disabled until SET_VRING_ENABLE."""
        raise _unsupported(FrontendReq.SET_FEATURES)

    def get_protocol_features(self) -> int:
        """GET_PROTOCOL_FEATURES: the ProtocolFeatures offered.  Offer REPLY_ACK to get acks: the
        dispatcher implements it.  Must work before SET_FEATURES."""
        raise _unsupported(FrontendReq.GET_PROTOCOL_FEATURES)

    def set_protocol_features(self, features: int) -> None:
        """SET_PROTOCOL_FEATURES: the protocol features in use from now on (the dispatcher records them
        when this returns)."""
        raise _unsupported(FrontendReq.SET_PROTOCOL_FEATURES)

    def set_owner(self) -> None:
        """SET_OWNER: the front-end takes the session (QEMU sends it after SET_BACKEND_REQ_FD)."""
        raise _unsupported(FrontendReq.SET_OWNER)

    def reset_owner(self) -> None:
        """RESET_OWNER (deprecated): give the session up."""
        raise _unsupported(FrontendReq.RESET_OWNER)

    def set_mem_table(self, regions: list[MemoryRegion], fds: list[int]) -> None:
        """SET_MEM_TABLE: replace guest memory with ``regions`` (1..8), each to be mmapped from the fd at
        the same position (``len(fds) == len(regions)``).  Takes ownership of the fds."""
        raise _unsupported(FrontendReq.SET_MEM_TABLE)

    def add_mem_reg(self, region: MemoryRegion, fd: int) -> None:
        """ADD_MEM_REG (CONFIGURE_MEM_SLOTS): add one region backed by ``fd`` (ownership taken)."""
        raise _unsupported(FrontendReq.ADD_MEM_REG)

    def rem_mem_reg(self, region: MemoryRegion) -> None:
        """REM_MEM_REG (CONFIGURE_MEM_SLOTS): remove the region matching guest address, user address and
        size (mmap_offset is ignored)."""
        raise _unsupported(FrontendReq.REM_MEM_REG)

    def get_max_mem_slots(self) -> int:
        """GET_MAX_MEM_SLOTS (CONFIGURE_MEM_SLOTS): how many regions ADD_MEM_REG may fill."""
        raise _unsupported(FrontendReq.GET_MAX_MEM_SLOTS)

    def set_vring_num(self, index: int, num: int) -> None:
        """SET_VRING_NUM: ring ``index`` has ``num`` descriptors (the device checks the power of two and
        its maximum)."""
        raise _unsupported(FrontendReq.SET_VRING_NUM)

    def set_vring_addr(self, addr: VringAddr) -> None:
        """SET_VRING_ADDR: ring addresses in the front-end's user address space (translate with
        MemoryRegion.userspace_addr).  Alignment is already checked."""
        raise _unsupported(FrontendReq.SET_VRING_ADDR)

    def set_vring_base(self, index: int, num: int) -> None:
        """SET_VRING_BASE: next avail index the device will process on ring ``index``."""
        raise _unsupported(FrontendReq.SET_VRING_BASE)

    def get_vring_base(self, index: int) -> int:
        """GET_VRING_BASE: **stop** ring ``index`` (finish or drop in-flight work, stop notifying) and
        return its next avail index."""
        raise _unsupported(FrontendReq.GET_VRING_BASE)

    def set_vring_kick(self, index: int, fd: Optional[int]) -> None:
        """SET_VRING_KICK: eventfd the driver kicks (ownership taken), or None: poll the ring.  The ring
        starts when the kick fd first becomes readable."""
        raise _unsupported(FrontendReq.SET_VRING_KICK)

    def set_vring_call(self, index: int, fd: Optional[int]) -> None:
        """SET_VRING_CALL: eventfd to signal used buffers (ownership taken), or None: no notifier.
        QEMU sends it once per ring at init (a masked notifier) and again at start."""
        raise _unsupported(FrontendReq.SET_VRING_CALL)

    def set_vring_err(self, index: int, fd: Optional[int]) -> None:
        """SET_VRING_ERR: eventfd to signal a ring error (ownership taken), or None.  Recent QEMU sends it
        once per ring at init."""
        raise _unsupported(FrontendReq.SET_VRING_ERR)

    def set_vring_enable(self, index: int, enable: bool) -> None:
        """SET_VRING_ENABLE: enable/disable ring ``index`` (only after VHOST_USER_F_PROTOCOL_FEATURES was
        acked; the dispatcher checks that)."""
        raise _unsupported(FrontendReq.SET_VRING_ENABLE)

    def get_queue_num(self) -> int:
        """GET_QUEUE_NUM (MQ): the most queues the device supports."""
        raise _unsupported(FrontendReq.GET_QUEUE_NUM)

    def get_config(self, offset: int, size: int, flags: int) -> bytes:
        """GET_CONFIG (CONFIG): exactly ``size`` bytes of config space from ``offset``."""
        raise _unsupported(FrontendReq.GET_CONFIG)

    def set_config(self, offset: int, flags: int, data: bytes) -> None:
        """SET_CONFIG (CONFIG): write ``data`` to config space at ``offset``."""
        raise _unsupported(FrontendReq.SET_CONFIG)

    def set_backend_req_fd(self, sock: socket.socket) -> None:
        """SET_BACKEND_REQ_FD (BACKEND_REQ): the back-end channel socket (AF_UNIX stream; ownership taken).
        Wrap it in a :class:`BackendChannel` to send SHMEM_MAP etc."""
        raise _unsupported(FrontendReq.SET_BACKEND_REQ_FD)

    def get_inflight_fd(self, inflight: Inflight) -> tuple[Inflight, Optional[int]]:
        """GET_INFLIGHT_FD (INFLIGHT_SHMFD): create (or return) the in-flight area for
        ``inflight.num_queues`` x ``inflight.queue_size``; return its description and a fd to it (None only
        with mmap_size 0).  The fd is sent and stays the device's (the dispatcher does not close it)."""
        raise _unsupported(FrontendReq.GET_INFLIGHT_FD)

    def set_inflight_fd(self, inflight: Inflight, fd: int) -> None:
        """SET_INFLIGHT_FD (INFLIGHT_SHMFD): the in-flight area from before a reconnect (ownership taken)."""
        raise _unsupported(FrontendReq.SET_INFLIGHT_FD)

    def set_status(self, status: int) -> None:
        """SET_STATUS (STATUS): the virtio device status byte (0 = reset)."""
        raise _unsupported(FrontendReq.SET_STATUS)

    def get_status(self) -> int:
        """GET_STATUS (STATUS): the virtio device status byte."""
        raise _unsupported(FrontendReq.GET_STATUS)

    def reset_device(self) -> None:
        """RESET_DEVICE (RESET_DEVICE): disable all rings, return to the initial state."""
        raise _unsupported(FrontendReq.RESET_DEVICE)

    def get_shmem_config(self) -> ShmemConfig:
        """GET_SHMEM_CONFIG (SHMEM): the size of each VIRTIO shared-memory region, by shmid.  The
        dispatcher does not check SHMEM for this request: the handler refuses it (VhostUserError) when
        SHMEM was not negotiated, so a device that never offers SHMEM answers "not supported"."""
        raise _unsupported(FrontendReq.GET_SHMEM_CONFIG)


_Reply = Optional[tuple[bytes, list[int]]]


class BackendDispatcher:
    """Reads front-end requests from ``conn`` and drives ``handler`` (see the module docstring).

    Single-threaded: call :meth:`handle_one` (or :meth:`serve_forever`) from one thread.
    """

    def __init__(self, conn: Connection, handler: BackendHandler) -> None:
        self.conn = conn
        self.handler = handler
        #: Virtio features from the last successful SET_FEATURES.
        self.acked_features = 0
        #: Protocol features from the last successful SET_PROTOCOL_FEATURES.
        self.acked_protocol_features = 0
        self._calls: dict[FrontendReq, Callable[[Header, object, list[int]], _Reply]] = {
            FrontendReq.GET_FEATURES: self._get_features,
            FrontendReq.SET_FEATURES: self._set_features,
            FrontendReq.SET_OWNER: lambda h, b, f: self.handler.set_owner(),
            FrontendReq.RESET_OWNER: lambda h, b, f: self.handler.reset_owner(),
            FrontendReq.SET_MEM_TABLE: self._set_mem_table,
            FrontendReq.SET_VRING_NUM: lambda h, b, f: self.handler.set_vring_num(b.index, b.num),
            FrontendReq.SET_VRING_ADDR: lambda h, b, f: self.handler.set_vring_addr(b),
            FrontendReq.SET_VRING_BASE: lambda h, b, f: self.handler.set_vring_base(b.index, b.num),
            FrontendReq.GET_VRING_BASE: self._get_vring_base,
            FrontendReq.SET_VRING_KICK: self._set_vring_fd,
            FrontendReq.SET_VRING_CALL: self._set_vring_fd,
            FrontendReq.SET_VRING_ERR: self._set_vring_fd,
            FrontendReq.GET_PROTOCOL_FEATURES: self._get_protocol_features,
            FrontendReq.SET_PROTOCOL_FEATURES: self._set_protocol_features,
            FrontendReq.GET_QUEUE_NUM: lambda h, b, f: self._u64(self.handler.get_queue_num()),
            FrontendReq.SET_VRING_ENABLE: self._set_vring_enable,
            FrontendReq.SET_BACKEND_REQ_FD: self._set_backend_req_fd,
            FrontendReq.GET_CONFIG: self._get_config,
            FrontendReq.SET_CONFIG: self._set_config,
            FrontendReq.GET_INFLIGHT_FD: self._get_inflight_fd,
            FrontendReq.SET_INFLIGHT_FD: lambda h, b, f: self.handler.set_inflight_fd(b, f[0]),
            FrontendReq.RESET_DEVICE: lambda h, b, f: self.handler.reset_device(),
            FrontendReq.GET_MAX_MEM_SLOTS: lambda h, b, f: self._u64(self.handler.get_max_mem_slots()),
            FrontendReq.ADD_MEM_REG: lambda h, b, f: self.handler.add_mem_reg(b.region, f[0]),
            FrontendReq.REM_MEM_REG: self._rem_mem_reg,
            FrontendReq.SET_STATUS: self._set_status,
            FrontendReq.GET_STATUS: lambda h, b, f: self._u64(self.handler.get_status()),
            FrontendReq.GET_SHMEM_CONFIG: self._get_shmem_config,
        }
        assert self._calls.keys() == FRONTEND_REQUESTS.keys()

    @property
    def reply_ack(self) -> bool:
        """REPLY_ACK negotiated: requests with NEED_REPLY get a u64 ack."""
        return bool(self.acked_protocol_features & ProtocolFeatures.REPLY_ACK)

    # ----------------------------------------------------------------------------------------- loop

    def handle_one(self) -> bool:
        """Read and process one message.  Returns False -- after closing the connection -- on EOF, on a
        malformed header (the stream cannot be resynchronised) or a socket error; True otherwise."""
        try:
            header, payload, fds = self.conn.recv()
        except EOFError:
            logger.debug("vhost-user front-end closed the connection")
            self.conn.close()
            return False
        except VhostUserError as exc:
            logger.warning("vhost-user: malformed message, closing the connection: %s", exc)
            self.conn.close()
            return False
        except OSError as exc:
            logger.warning("vhost-user: receive failed, closing the connection: %s", exc)
            self.conn.close()
            return False
        try:
            self._process(header, payload, fds)
        except OSError as exc:  # the reply could not be sent
            logger.warning("vhost-user: send failed, closing the connection: %s", exc)
            self.conn.close()
            return False
        return True

    def serve_forever(self) -> None:
        """Process messages until the connection ends (the connection is closed on return)."""
        while self.handle_one():
            pass

    def close(self) -> None:
        self.conn.close()

    # ---------------------------------------------------------------------------------------- steps

    def _process(self, header: Header, payload: bytes, fds: list[int]) -> None:
        name = request_name(header.request)
        spec: Optional[RequestSpec] = None
        handed = None  # fd identities, once the fds have been handed to the handler
        try:
            if header.is_reply:
                raise VhostUserError("a request must not carry the REPLY flag")
            try:
                request = FrontendReq(header.request)
            except ValueError:
                raise VhostUserError("unknown request id") from None
            spec = FRONTEND_REQUESTS.get(request)
            if spec is None:
                raise VhostUserError(f"{request.name} not supported")
            if spec.feature is not None and not self.acked_protocol_features & spec.feature:
                raise VhostUserError(f"protocol feature {spec.feature.name} not negotiated")
            if not spec.fds.allows(len(fds)):
                raise VhostUserError(f"{len(fds)} fds attached, expected {spec.fds.value}")
            body = parse_payload(spec, payload, name)
            handed = fd_identities(fds)
            reply = self._calls[request](header, body, fds)
        except (VhostUserError, OSError) as exc:
            logger.warning("vhost-user: refused %s: %s", name, exc)
            self._drop_fds(fds, handed)
            self._answer_failure(header, spec)
            return
        except Exception:
            logger.exception("vhost-user: handler failed on %s", name)
            self._drop_fds(fds, handed)
            self._answer_failure(header, spec)
            return
        # Success: fds handed to the handler are its own now.
        if spec.reply is not None:
            assert reply is not None, name
            self.conn.reply(header, *reply)
        elif header.need_reply and self.reply_ack:
            self.conn.reply(header, U64(0).pack())

    @staticmethod
    def _drop_fds(fds: list[int], handed: Optional[list]) -> None:
        if handed is None:
            close_fds(fds)  # refused before the handler saw them
        else:
            close_unchanged(fds, handed)  # the handler may have closed some itself

    def _answer_failure(self, header: Header, spec: Optional[RequestSpec]) -> None:
        if header.is_reply:
            return
        if spec is not None and spec.reply is DeviceConfig:
            self.conn.reply(header, DeviceConfig(0, 0, 0, b"").pack())
        elif spec is not None and spec.reply is not None:
            self.conn.reply(header)  # empty: the front-end sees a failed request, not a hang
        elif spec is None and header.request in _UNSUPPORTED_FAILURE_REPLIES:
            self.conn.reply(header, _UNSUPPORTED_FAILURE_REPLIES[FrontendReq(header.request)])
        elif header.need_reply and self.reply_ack:
            self.conn.reply(header, U64(1).pack())

    # ------------------------------------------------------------------------------ request bodies

    @staticmethod
    def _u64(value: int) -> _Reply:
        return U64(value).pack(), []

    def _get_features(self, header: Header, body: None, fds: list[int]) -> _Reply:
        return self._u64(self.handler.get_features())

    def _set_features(self, header: Header, body: U64, fds: list[int]) -> _Reply:
        self.handler.set_features(body.value)
        self.acked_features = body.value
        return None

    def _get_protocol_features(self, header: Header, body: None, fds: list[int]) -> _Reply:
        return self._u64(self.handler.get_protocol_features())

    def _set_protocol_features(self, header: Header, body: U64, fds: list[int]) -> _Reply:
        self.handler.set_protocol_features(body.value)
        self.acked_protocol_features = body.value  # before the ack, as rust-vmm does
        return None

    def _set_mem_table(self, header: Header, body: MemoryTable, fds: list[int]) -> _Reply:
        if len(fds) != len(body.regions):
            raise VhostUserError(f"{len(fds)} fds for {len(body.regions)} memory regions")
        self.handler.set_mem_table(list(body.regions), list(fds))
        return None

    def _get_vring_base(self, header: Header, body: VringState, fds: list[int]) -> _Reply:
        num = self.handler.get_vring_base(body.index)
        return VringState(body.index, num).pack(), []

    def _set_vring_fd(self, header: Header, body: U64, fds: list[int]) -> _Reply:
        index, has_fd = vring_fd_index(body.value, len(fds))
        fd = fds[0] if has_fd else None
        request = FrontendReq(header.request)
        if request is FrontendReq.SET_VRING_KICK:
            self.handler.set_vring_kick(index, fd)
        elif request is FrontendReq.SET_VRING_CALL:
            self.handler.set_vring_call(index, fd)
        else:
            self.handler.set_vring_err(index, fd)
        return None

    def _set_vring_enable(self, header: Header, body: VringState, fds: list[int]) -> _Reply:
        if not self.acked_features & VHOST_USER_F_PROTOCOL_FEATURES:
            raise VhostUserError("SET_VRING_ENABLE before VHOST_USER_F_PROTOCOL_FEATURES was acked")
        if body.num not in (0, 1):
            raise VhostUserError(f"SET_VRING_ENABLE num {body.num}, expected 0 or 1")
        self.handler.set_vring_enable(body.index, bool(body.num))
        return None

    def _set_backend_req_fd(self, header: Header, body: None, fds: list[int]) -> _Reply:
        try:
            sock = socket.socket(fileno=fds[0])
        except OSError:
            raise VhostUserError("SET_BACKEND_REQ_FD: the fd is not a socket") from None
        try:
            if sock.family != socket.AF_UNIX or sock.type != socket.SOCK_STREAM:
                raise VhostUserError("SET_BACKEND_REQ_FD: the fd is not an AF_UNIX stream socket")
            self.handler.set_backend_req_fd(sock)
        except BaseException:
            sock.close()
            raise
        return None

    def _get_config(self, header: Header, body: DeviceConfig, fds: list[int]) -> _Reply:
        if body.size == 0:
            raise VhostUserError("GET_CONFIG of 0 bytes")
        data = bytes(self.handler.get_config(body.offset, body.size, body.flags))
        if len(data) != body.size:
            raise LocalProtocolError(f"get_config returned {len(data)} bytes, {body.size} were asked")
        return DeviceConfig(body.offset, body.size, body.flags, data).pack(), []

    def _set_config(self, header: Header, body: DeviceConfig, fds: list[int]) -> _Reply:
        if body.size == 0:
            raise VhostUserError("SET_CONFIG of 0 bytes")
        self.handler.set_config(body.offset, body.flags, body.data)
        return None

    def _get_inflight_fd(self, header: Header, body: Inflight, fds: list[int]) -> _Reply:
        inflight, fd = self.handler.get_inflight_fd(body)
        if fd is None and inflight.mmap_size != 0:
            raise LocalProtocolError("get_inflight_fd returned no fd for a non-empty area")
        return inflight.pack(), ([] if fd is None else [fd])

    def _rem_mem_reg(self, header: Header, body: SingleMemoryRegion, fds: list[int]) -> _Reply:
        close_fds(fds)  # tolerated for old front-ends; closed unused (vhost-user.rst)
        self.handler.rem_mem_reg(body.region)
        return None

    def _get_shmem_config(self, header: Header, body: None, fds: list[int]) -> _Reply:
        config = self.handler.get_shmem_config()
        if not isinstance(config, ShmemConfig):
            raise LocalProtocolError(f"get_shmem_config returned {config!r}, not a ShmemConfig")
        return config.pack(), []

    def _set_status(self, header: Header, body: U64, fds: list[int]) -> _Reply:
        if body.value > 0xFF:
            raise VhostUserError(f"SET_STATUS 0x{body.value:x} does not fit the status byte")
        self.handler.set_status(body.value)
        return None


# ------------------------------------------------------------------------------------ backend channel


def _payload_bytes(payload: Union[bytes, bytearray, memoryview, object]) -> bytes:
    if isinstance(payload, (bytes, bytearray, memoryview)):
        return bytes(payload)
    pack = getattr(payload, "pack", None)
    if pack is None:
        raise LocalProtocolError(f"payload {payload!r} is neither bytes nor a payload struct")
    return pack()


class BackendChannel:
    """The back-end's side of the SET_BACKEND_REQ_FD socket: send requests to the front-end.

    Thread-safe: one request (and its reply) at a time.
    """

    def __init__(self, sock: socket.socket) -> None:
        self.conn = Connection(sock)
        self._lock = threading.Lock()

    def request(
        self,
        req: BackendReq,
        payload: Union[bytes, object] = b"",
        fds: Sequence[int] = (),
        need_reply: bool = True,
    ) -> int:
        """Send ``req`` with ``payload`` (bytes, or a payload struct such as ShmemMap) and ``fds`` (which
        stay the caller's).  With ``need_reply``, wait for the front-end's u64 and return it (0 = success);
        without, return 0 at once.  Raises VhostUserError on a malformed reply, EOFError if the front-end
        closed the channel, LocalProtocolError if the request itself does not match its layout.

        Ask for a reply only when REPLY_ACK was negotiated: QEMU answers every NEED_REPLY, but rust-vmm
        front-ends answer only with REPLY_ACK (set a timeout on the socket if the peer is not trusted).
        """
        req = BackendReq(req)
        data = _payload_bytes(payload)
        spec = BACKEND_REQUESTS.get(req)
        if spec is not None:
            if spec.size is not None and len(data) != spec.size:
                raise LocalProtocolError(f"{req.name}: payload is {len(data)} bytes, expected {spec.size}")
            if not spec.fds.allows(len(fds)):
                raise LocalProtocolError(f"{req.name}: {len(fds)} fds, expected {spec.fds.value}")
        if len(data) > MAX_PAYLOAD:
            raise LocalProtocolError(f"{req.name}: payload of {len(data)} bytes exceeds {MAX_PAYLOAD}")
        flags = HeaderFlags.VERSION | (HeaderFlags.NEED_REPLY if need_reply else 0)
        with self._lock:
            self.conn.send(req, data, fds, flags)
            if not need_reply:
                return 0
            header, reply, reply_fds = self.conn.recv()
            close_fds(reply_fds)
            name = request_name(req, BackendReq)
            if header.flags != HeaderFlags.VERSION | HeaderFlags.REPLY:
                raise VhostUserError(f"reply to {name} has flags 0x{header.flags:x}, expected 0x5")
            if header.request != req:
                raise VhostUserError(f"reply to {name} is for {request_name(header.request, BackendReq)}")
            if reply_fds:
                raise VhostUserError(f"reply to {name} carries {len(reply_fds)} fds")
            return U64.unpack(reply).value

    def fileno(self) -> int:
        return self.conn.fileno()

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> BackendChannel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ = ["BackendHandler", "BackendDispatcher", "BackendChannel"]
