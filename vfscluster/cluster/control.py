"""The control channel between a cluster's caller and its guest processes.

Frames are length-prefixed msgpack arrays on a Unix stream socket:

* request ``[id, method, args, kwargs]``
* reply ``[id, OK, value]``, ``[id, OSERROR, [errno, strerror, filename, filename2]]`` or
  ``[id, ERROR, pickled-exception-or-text]``

Values msgpack cannot carry (``os.stat_result``, functions for ``run``, tuples, arbitrary results)
travel as ext type 2: a dill pickle (multiprocess's serializer).  ``OSError`` is rebuilt on the caller
side with the same errno, so ``FileNotFoundError`` stays ``FileNotFoundError``.
"""

from __future__ import annotations

import logging
import os
import socket
import struct
import threading
import traceback
from typing import Any, Callable

import dill
import msgpack

log = logging.getLogger(__name__)

OK, OSERROR, ERROR = 0, 1, 2
_EXT_PICKLE = 2
_EXT_TUPLE = 3
_LEN = struct.Struct("<I")
MAX_FRAME = 256 << 20


def _default(obj: Any):
    if isinstance(obj, tuple) and type(obj) is tuple:
        return msgpack.ExtType(_EXT_TUPLE, pack(list(obj)))
    return msgpack.ExtType(_EXT_PICKLE, dill.dumps(obj, recurse=True))


def _ext_hook(code: int, data: bytes):
    if code == _EXT_PICKLE:
        return dill.loads(data)
    if code == _EXT_TUPLE:
        return tuple(unpack(data))
    return msgpack.ExtType(code, data)


def pack(obj: Any) -> bytes:
    return msgpack.packb(obj, default=_default, strict_types=True, use_bin_type=True)


def unpack(data: bytes) -> Any:
    return msgpack.unpackb(data, ext_hook=_ext_hook, raw=False, strict_map_key=False)


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise EOFError("control connection closed")
        buf += chunk
    return bytes(buf)


def frame(obj: Any) -> bytes:
    """``obj`` packed, behind its length."""
    data = pack(obj)
    return _LEN.pack(len(data)) + data


def send_frame(sock: socket.socket, obj: Any) -> None:
    sock.sendall(frame(obj))


def recv_bytes(sock: socket.socket) -> bytes:
    """One frame's packed bytes (EOFError: closed, or a frame over ``MAX_FRAME``)."""
    (n,) = _LEN.unpack(_recv_exact(sock, 4))
    if n > MAX_FRAME:
        raise EOFError(f"control frame of {n} bytes refused")
    return _recv_exact(sock, n)


def recv_frame(sock: socket.socket) -> Any:
    return unpack(recv_bytes(sock))


class ControlServer:
    """Serves control requests on a listening Unix socket; one thread per connection.

    ``handler(method, args, kwargs) -> value`` does the work; exceptions become error replies.
    """

    def __init__(self, path: str, handler: Callable[[str, list, dict], Any]) -> None:
        self.path = path
        self.handler = handler
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(path)
        self.sock.listen(16)
        self._threads: list[threading.Thread] = []
        self._conns: set[socket.socket] = set()
        self.closed = threading.Event()

    def serve_forever(self) -> None:
        while not self.closed.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                break
            self._conns.add(conn)
            t = threading.Thread(target=self._serve_conn, args=(conn,), name="control", daemon=True)
            t.start()

    def _serve_conn(self, conn: socket.socket) -> None:
        try:
            while True:
                try:
                    data = recv_bytes(conn)
                except (EOFError, OSError):
                    return
                try:
                    msg = unpack(data)
                except Exception as exc:        # dill.loads runs the sender's reduce functions
                    rid = self._request_id(data)
                    if rid is None:
                        log.warning("malformed control request refused: %s", exc)
                        return
                    try:
                        conn.sendall(frame([rid, ERROR, f"the request could not be loaded here: "
                                                        f"{type(exc).__name__}: {exc}"]))
                    except OSError:
                        return
                    continue
                try:
                    rid, method, args, kwargs = msg
                except (TypeError, ValueError):
                    log.warning("malformed control request refused: %r", msg)
                    return
                try:
                    reply = [rid, OK, self.handler(method, list(args), dict(kwargs))]
                except OSError as exc:
                    reply = [rid, OSERROR, [exc.errno, exc.strerror, exc.filename, exc.filename2]]
                except BaseException as exc:   # reported to the caller, who re-raises it
                    try:
                        payload = dill.dumps(exc)
                        dill.loads(payload)
                    except Exception:
                        payload = "".join(traceback.format_exception(exc))
                    reply = [rid, ERROR, payload]
                try:
                    conn.sendall(self._reply_frame(method, reply))
                except OSError:
                    return
        finally:
            self._conns.discard(conn)
            conn.close()

    @staticmethod
    def _request_id(data: bytes) -> int | None:
        """The id of a request whose arguments do not load (read without loading them), or None
        when the frame is not a request at all."""
        try:
            msg = msgpack.unpackb(data, raw=False, strict_map_key=False)
        except Exception:               # msgpack's errors have no common base but Exception
            return None
        if isinstance(msg, list) and len(msg) == 4 and type(msg[0]) is int:
            return msg[0]
        return None

    @staticmethod
    def _reply_frame(method: Any, reply: list) -> bytes:
        """The frame of ``reply``; when its value cannot travel (dill cannot pickle it, or it packs
        to more than ``MAX_FRAME``), an ERROR reply that says so, so the connection lives on."""
        rid = reply[0]
        try:
            data = frame(reply)
        except Exception as exc:        # pickling fails in many ways: PicklingError, TypeError, ...
            return frame([rid, ERROR, f"the reply to {method!r} cannot be sent back: "
                                      f"{type(exc).__name__}: {exc}"])
        if len(data) - _LEN.size > MAX_FRAME:
            return frame([rid, ERROR, f"the reply to {method!r} is {len(data) - _LEN.size} bytes, "
                                      f"over the control channel's {MAX_FRAME}"])
        return data

    def close(self) -> None:
        self.closed.set()
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        for c in list(self._conns):
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass


def _timeval(seconds: float | None) -> bytes:
    """A ``struct timeval`` for SO_SNDTIMEO: ``seconds`` (at least a microsecond: zero would be
    no timeout), or zero for None."""
    if seconds is None:
        return struct.pack("@ll", 0, 0)
    us = min(max(1, round(seconds * 1e6)), (1 << 62))
    return struct.pack("@ll", us // 1_000_000, us % 1_000_000)


class RemoteError(Exception):
    """An exception raised inside a guest that could not be sent back as itself."""


class ControlClient:
    """The caller's end: one connection per calling thread, made on first use."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._local = threading.local()
        self._ids = iter(range(1, 1 << 62))
        self._all: list[socket.socket] = []
        self._lock = threading.Lock()

    def _sock(self, timeout: float | None = None) -> socket.socket:
        """This thread's connection, made now if it has none (within ``timeout``: a stopped
        guest whose listen backlog is full never accepts)."""
        s = getattr(self._local, "sock", None)
        if s is None:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                # a Unix socket's connect(2) waits for room in the listener's backlog only when it
                # blocks (non-blocking, as settimeout makes it, it is EAGAIN at once): a blocking
                # connect, bounded by SO_SNDTIMEO (zero: no bound)
                if timeout is not None:
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, _timeval(timeout))
                s.connect(self.path)
                if timeout is not None:
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, _timeval(None))
            except OSError as exc:
                s.close()
                raise ConnectionError(f"guest control channel {self.path}: {exc}") from None
            self._local.sock = s
            with self._lock:
                self._all.append(s)
        return s

    def _drop(self, sock: socket.socket) -> None:
        """Forget this thread's connection: the next call makes a new one."""
        self._local.sock = None
        with self._lock:
            if sock in self._all:
                self._all.remove(sock)
        sock.close()

    def call(self, method: str, *args, **kwargs) -> Any:
        """Send one request and wait for its reply.  A call interrupted on the way (Ctrl-C, an
        error) drops the connection, so that its late reply is never taken for the next call's."""
        return self._call(method, args, kwargs, None)

    def call_within(self, timeout: float, method: str, *args, **kwargs) -> Any:
        """:meth:`call`, giving up after ``timeout`` seconds (ConnectionError: the guest does not
        answer, e.g. it is stopped)."""
        return self._call(method, args, kwargs, timeout)

    def _call(self, method: str, args: tuple, kwargs: dict, timeout: float | None) -> Any:
        sock = self._sock(timeout)
        rid = next(self._ids)
        try:
            sock.settimeout(timeout)
            send_frame(sock, [rid, method, list(args), kwargs])
            got, status, value = recv_frame(sock)
            sock.settimeout(None)
        except (EOFError, OSError) as exc:
            self._drop(sock)
            raise ConnectionError(f"guest control channel {self.path}: {exc}") from None
        except BaseException:
            self._drop(sock)
            raise
        if got != rid:
            self._drop(sock)
            raise ConnectionError(f"guest control channel {self.path}: reply {got!r} to request {rid}")
        if status == OK:
            return value
        if status == OSERROR:
            err, msg, f1, f2 = value
            if f2 is not None:
                raise OSError(err, msg, f1, None, f2)
            if f1 is not None:
                raise OSError(err, msg, f1)
            raise OSError(err, msg)
        if isinstance(value, bytes):
            value = dill.loads(value)
            if isinstance(value, BaseException):
                raise value
        raise RemoteError(value)

    def close(self) -> None:
        """Close every thread's connection; calls waiting on them get ConnectionError (the guest
        closed the connection), not a descriptor error."""
        with self._lock:
            for s in self._all:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()
            self._all.clear()
