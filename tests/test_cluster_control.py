"""The control channel (cluster/control.py) over a real Unix socket, server and client in one
process: replies, errors, and replies that cannot travel."""

import ctypes
import errno
import os
import threading

import pytest

from vfscluster.cluster.control import MAX_FRAME, ControlClient, ControlServer, RemoteError

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def channel(tmp_path):
    def handler(method, args, kwargs):
        if method == "echo":
            return args[0]
        if method == "ctypes_type":
            return ctypes.c_ubyte * 4            # dill cannot pickle it (PyCArrayType)
        if method == "huge":
            return b"x" * (MAX_FRAME + 1)
        if method == "enoent":
            raise FileNotFoundError(errno.ENOENT, "No such file or directory", "f")
        raise ValueError(method)

    server = ControlServer(str(tmp_path / "ctl"), handler)
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    client = ControlClient(server.path)
    yield client
    client.close()
    server.close()
    t.join(5)


def test_values_and_errors_come_back(channel):
    assert channel.call("echo", (1, "a", b"b")) == (1, "a", b"b")
    assert channel.call("echo", os.stat_result(range(10))).st_mode == 0
    with pytest.raises(FileNotFoundError) as e:
        channel.call("enoent")
    assert e.value.errno == errno.ENOENT and e.value.filename == "f"
    with pytest.raises(ValueError, match="nope"):
        channel.call("nope")


def test_a_reply_that_cannot_be_pickled_is_an_error_and_the_connection_lives_on(channel):
    with pytest.raises(RemoteError, match="cannot be sent back"):
        channel.call("ctypes_type")
    assert channel.call("echo", 5) == 5          # the same connection, still served


def test_a_reply_over_the_frame_limit_is_an_error_not_a_dead_connection(channel):
    with pytest.raises(RemoteError, match="over the control channel"):
        channel.call("huge")
    assert channel.call("echo", 6) == 6


def _full_backlog(path: str):
    """A listener at ``path`` that never accepts, its backlog filled: ``(listener, queued)``."""
    import socket
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(0)
    queued = []
    for _ in range(4):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.setblocking(False)
        try:
            s.connect(path)
        except BlockingIOError:
            s.close()
            break
        queued.append(s)
    return listener, queued


def test_a_guest_that_never_accepts_is_a_connection_error_within_the_timeout(tmp_path):
    """A stopped guest's listen backlog fills up and connect(2) then blocks: call_within bounds
    the connect too (it hung for good)."""
    path = str(tmp_path / "stuck")
    listener, queued = _full_backlog(path)
    try:
        client = ControlClient(path)
        with pytest.raises(ConnectionError):
            client.call_within(0.5, "ping")
        client.close()
    finally:
        for s in queued:
            s.close()
        listener.close()


def test_call_within_connects_once_the_guest_accepts(tmp_path):
    """A guest that drains its backlog while the caller waits in connect is answered."""
    path = str(tmp_path / "late")
    listener, queued = _full_backlog(path)
    server = ControlServer.__new__(ControlServer)          # serve the listener already bound
    server.path, server.handler, server.sock = path, (lambda m, a, k: ("pong", m)), listener
    server._threads, server._conns, server.closed = [], set(), threading.Event()
    drain = threading.Timer(0.3, lambda: threading.Thread(target=server.serve_forever,
                                                         daemon=True).start())
    drain.start()
    try:
        client = ControlClient(path)
        assert client.call_within(20, "ping") == ("pong", "ping")
        client.close()
    finally:
        drain.cancel()
        for s in queued:
            s.close()
        server.close()


def _refuse_to_load():
    raise ValueError("this argument cannot be loaded here")


class _Unloadable:
    """Pickles fine; loading it raises (as a class whose module a guest cannot import would)."""

    def __reduce__(self):
        return (_refuse_to_load, ())


def test_a_request_that_cannot_be_loaded_is_an_error_reply_not_a_dead_connection(channel):
    """The mirror image of the day's fix for replies that cannot travel: an argument that fails
    to load on the guest's side (in a cluster: ``guest.run(fn, obj)``) should come back as an
    error and leave the connection served."""
    with pytest.raises(RemoteError, match="could not be loaded here.*cannot be loaded here"):
        channel.call("echo", _Unloadable())
    assert channel.call("echo", 5) == 5
