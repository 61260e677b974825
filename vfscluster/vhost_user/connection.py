"""vhost-user framing over a connected AF_UNIX SOCK_STREAM socket, with SCM_RIGHTS fd passing.

A message is a 12-byte header and ``size`` payload bytes, sent with one ``sendmsg`` that carries the fds.
:meth:`Connection.recv` reads exactly one message and returns its header, payload and fds; the fds are
received close-on-exec and belong to the caller.

Errors from :meth:`Connection.recv`:

* ``EOFError`` -- the peer closed the connection cleanly, at a message boundary;
* :class:`~vfscluster.errors.VhostUserError` -- the stream is garbage: bad version or reserved flag bits,
  size > MAX_PAYLOAD, more than MAX_FDS fds, or EOF in the middle of a message.  The stream cannot be
  resynchronised after any of these: close the connection;
* ``OSError`` -- from the socket (reset, timeout).

Whatever the error, every fd received for the failed message has been closed: nothing leaks.
"""

from __future__ import annotations

import array
import logging
import os
import socket
import threading
from collections.abc import Sequence
from typing import Optional

from vfscluster.errors import LocalProtocolError, VhostUserError

from .message import HEADER_SIZE, MAX_FDS, MAX_PAYLOAD, Header, HeaderFlags

logger = logging.getLogger(__name__)

_ANC_BUFSIZE = socket.CMSG_SPACE(MAX_FDS * array.array("i").itemsize)


def close_fds(fds: Sequence[int]) -> None:
    """Close every fd in ``fds``, ignoring ones that are already closed."""
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


def fd_identities(fds: Sequence[int]) -> list[Optional[tuple[int, int]]]:
    """(st_dev, st_ino) of each fd, taken before handing the fds to code that may close them itself."""
    ids: list[Optional[tuple[int, int]]] = []
    for fd in fds:
        try:
            st = os.fstat(fd)
        except OSError:
            ids.append(None)
        else:
            ids.append((st.st_dev, st.st_ino))
    return ids


def close_unchanged(fds: Sequence[int], ids: Sequence[Optional[tuple[int, int]]]) -> None:
    """Close each fd that is still open on the file it had when ``ids`` was taken.

    After a handler that was given ``fds`` has raised: the fds it closed itself (possibly reused since by
    another file) are left alone, the ones it left open are closed -- no leak and no double close.
    """
    for fd, ident in zip(fds, ids):
        if ident is None:
            continue
        try:
            st = os.fstat(fd)
        except OSError:
            continue
        if (st.st_dev, st.st_ino) == ident:
            try:
                os.close(fd)
            except OSError:
                pass


class Connection:
    """One end of a vhost-user conversation.

    ``send`` and ``recv`` are each serialised by their own lock, so one thread may send while another
    receives; request/reply pairing is the caller's business (see ``Frontend``).
    """

    def __init__(self, sock: socket.socket) -> None:
        if sock.family != socket.AF_UNIX or sock.type != socket.SOCK_STREAM:
            raise LocalProtocolError(f"vhost-user needs an AF_UNIX SOCK_STREAM socket, got {sock!r}")
        self._sock = sock
        self._send_lock = threading.Lock()
        self._recv_lock = threading.Lock()

    @classmethod
    def connect(cls, path: str, timeout: float | None = None) -> Connection:
        """Connect to the vhost-user socket at ``path``; ``timeout``: seconds any one send or
        receive may take (then ``TimeoutError``, and the stream is not to be used again)."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(timeout)
            sock.connect(path)
        except BaseException:
            sock.close()
            raise
        return cls(sock)

    @property
    def socket(self) -> socket.socket:
        return self._sock

    def fileno(self) -> int:
        return self._sock.fileno()

    def close(self) -> None:
        self._sock.close()

    @property
    def closed(self) -> bool:
        return self._sock.fileno() < 0

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Connection fd={self._sock.fileno()}>"

    # ------------------------------------------------------------------------------------------- send

    def send(
        self,
        request: int,
        payload: bytes = b"",
        fds: Sequence[int] = (),
        flags: int = HeaderFlags.VERSION,
    ) -> None:
        """Send one message: header + payload in one ``sendmsg``, with ``fds`` as SCM_RIGHTS.

        The fds stay open and owned by the caller.  ``flags`` is sent as given (no protocol check, so tests
        can send garbage); the payload and fd counts are limited to MAX_PAYLOAD and MAX_FDS.
        """
        payload = bytes(payload)
        if len(payload) > MAX_PAYLOAD:
            raise LocalProtocolError(f"payload of {len(payload)} bytes exceeds {MAX_PAYLOAD}")
        if len(fds) > MAX_FDS:
            raise LocalProtocolError(f"{len(fds)} fds exceed {MAX_FDS}")
        data = Header(int(request), int(flags), len(payload)).pack() + payload
        ancillary = []
        if fds:
            ancillary.append((socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes()))
        with self._send_lock:
            sent = self._sock.sendmsg([data], ancillary)
            if sent < len(data):  # a signal interrupted a large send; the fds went with the first part
                self._sock.sendall(memoryview(data)[sent:])

    def reply(self, header: Header, payload: bytes = b"", fds: Sequence[int] = ()) -> None:
        """Answer the request ``header``: same request code, flags VERSION|REPLY."""
        self.send(header.request, payload, fds, HeaderFlags.VERSION | HeaderFlags.REPLY)

    # ------------------------------------------------------------------------------------------- recv

    def recv(self) -> tuple[Header, bytes, list[int]]:
        """Read exactly one message: (header, payload, fds).  See the module docstring for errors."""
        fds: list[int] = []
        with self._recv_lock:
            try:
                raw = self._recv_exact(HEADER_SIZE, fds, at_boundary=True)
                header = Header.unpack(raw)
                header.check()
                payload = self._recv_exact(header.size, fds, at_boundary=False) if header.size else b""
            except BaseException:
                close_fds(fds)
                raise
        return header, payload, fds

    def _recv_exact(self, size: int, fds: list[int], at_boundary: bool) -> bytes:
        buf = bytearray(size)
        view = memoryview(buf)
        got = 0
        while got < size:
            nbytes, ancdata, msg_flags, _ = self._sock.recvmsg_into(
                [view[got:]], _ANC_BUFSIZE, socket.MSG_CMSG_CLOEXEC
            )
            for level, kind, data in ancdata:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    received = array.array("i")
                    received.frombytes(data[: len(data) - len(data) % received.itemsize])
                    fds.extend(received)
            if msg_flags & socket.MSG_CTRUNC:
                raise VhostUserError(f"more than {MAX_FDS} fds attached to one message")
            if nbytes == 0:
                if at_boundary and got == 0:
                    raise EOFError("vhost-user peer closed the connection")
                what = "header" if at_boundary else "payload"
                raise VhostUserError(f"connection closed after {got} of {size} {what} bytes")
            got += nbytes
        return bytes(buf)


__all__ = ["Connection", "close_fds", "close_unchanged", "fd_identities"]
