"""vfs-hostd: one host server for many guests.

One listening vhost-user socket; every accepted connection is a guest (its own vhost-user session,
device state and FUSE session) over ONE shared passthrough file system, so that a file has the same
nodeid in every guest.  One event loop serves the control sockets and every queue of every guest:

* process: pop every available chain of every live queue (at most ``BATCH`` per queue per round, so a
  busy queue cannot starve the others), handle it, return it, call the guest if it asked;
* poll: when a round finds no work, spin on the avail indexes for a short adaptive budget (kicks
  suppressed), then re-enable kicks, check once more, and sleep in epoll;
* blocking work (fsync, large reads and writes, copy_file_range, fallocate) goes to a thread pool so
  that one guest never stalls the others; the worker returns its chain itself.  The pool
  (``fairpool.py``) serves the guests round-robin and never gives one guest every worker, so a
  guest's burst of blocking requests does not queue in front of another guest's.  A large read whose
  range the page cache holds whole (``cachestat(2)``) is served inline: it waits for no disk, and a
  worker's wake-up costs more than its copy.  SETLKW is not blocking
  work: a lock that must wait is parked in the lock table and answered "queued" at once (see
  ``fuse/locking.py``); its grant is sent later on the guest's notification queue;
* notification queues (``notify.py``): a guest that negotiated one has a :class:`~.notify.Notifier`
  (its FUSE server sends FUSE_NOTIFY_LOCK through it, from whichever thread grants the lock).  The loop
  never pops that queue as requests: its kick fd only wakes the loop to flush notifications that were
  waiting for a buffer.

The metadata-version table (DESIGN §4): the server owns ONE :class:`~.versions.VersionTable` (its
shared-memory name is unlinked at once, so a kill -9 leaves nothing behind), shared by every session's
FUSE server (which bumps it and grants ENTRY_VERSION) and offered to every guest as shared-memory region 1
(see ``device.py``).  Changes made on the host outside the server reach it through inotify
(``inotify.py``).  The barrier rule: a round pops its chains first, then drains the inotify queue, then
handles them, so a request published after an outside change returned is answered only after that change
bumped its slots.  Only requests of guests that read slots (ENTRY_VERSION negotiated) need that: a round
with none of theirs skips the drain (a poll system call, ~0.7 µs of every cache=none round trip).  The
inotify fd is in the epoll set too, so an idle server bumps within a wake-up.

DAX (DESIGN §5, ``daxwire.py``): one :class:`~.daxwire.DaxService` per server, shared by every session,
sends SHMEM_MAP / SHMEM_UNMAP on the sessions' back-end channels and waits for their acks.  So
SETUPMAPPING and REMOVEMAPPING are blocking work (the pool), and so are SETATTR, OPEN and CREATE while
any guest has something mapped (a shrinking truncate first waits for every mapping guest's ack).
"""

from __future__ import annotations

import logging
import os
import secrets
import select
import signal
import socket
import struct
import threading
import time

from ..errors import ProtocolError, QueueError
from ..fuse.passthrough import PassthroughFs
from ..fuse.server import Server
from ..virtio.chain import Reader, Writer
from ..virtio.fs_config import check_tag
from ..virtio.spin import SpinBudget
from ..vhost_user import BackendDispatcher, Connection
from .daxwire import DEFAULT_WINDOW, DaxService
from .device import FsBackendDevice
from .fairpool import FairPool
from .inotify import ShareWatcher
from .notify import Notifier
from .trace import Tracer
from .versions import DEFAULT_SLOTS, VersionTable

log = logging.getLogger(__name__)

BATCH = 64
_OPCODE = struct.Struct("<I")
_BLOCKING = {20, 30, 43, 47, 50,    # FSYNC, FSYNCDIR, FALLOCATE, COPY_FILE_RANGE, SYNCFS,
             48, 49}                 # SETUPMAPPING, REMOVEMAPPING (they wait for the guest's acks)
_SHRINKERS = {4, 14, 35}             # SETATTR, OPEN, CREATE: may wait for other guests' DAX acks
_READ, _WRITE = 15, 16
_BIG_IO = 128 * 1024
_IO_IN = struct.Struct("<QQI")       # fh, offset, size: how fuse_read_in and fuse_write_in begin
_MAYBE_POOLED = frozenset(_BLOCKING | _SHRINKERS | {_READ, _WRITE})   # the rest is served inline


class GuestSession:
    """One accepted vhost-user connection: a guest's device and its FUSE session."""

    def __init__(self, sid: int, sock: socket.socket, fs, *, num_request_queues: int, tag: str | None,
                 versions: VersionTable | None = None, notifications: bool = True,
                 dax_window: int = 0) -> None:
        self.sid = sid
        self.name = f"guest{sid}"
        self.fd = sock.fileno()                # the epoll key, still valid after the conn closes
        self.conn = Connection(sock)
        self.device = FsBackendDevice(self.name, num_request_queues=num_request_queues, tag=tag,
                                      versions=versions, notifications=notifications,
                                      dax_window=dax_window)
        self.dispatcher = BackendDispatcher(self.conn, self.device)
        self.server = Server(fs, session=sid, versions=versions)
        self.notifier = Notifier(self.name, self.device)
        self.server.notifier = self.notifier
        self.fs = fs
        self.kick_fds: dict[int, int] = {}     # kick fd -> queue index (as registered with epoll)
        self.generation = -1

    def close(self) -> None:
        self.notifier.close()
        try:
            self.fs.drop_session(self.sid, tell_waiters=False)    # nobody is left to tell
        finally:
            self.device.close()
            self.conn.close()


class HostServer:
    """The vfs-hostd process's server.  ``version_slots`` sizes the version table (a power of two;
    0: no table, no ENTRY_VERSION, no region 1, no inotify).  ``notifications``: offer the virtio-fs
    notification queue (and with it blocking locks between guests).  ``window_size``: the DAX window
    offered to every guest as shared-memory region 0 (a multiple of 2 MiB; 0: no DAX, SETUPMAPPING is
    ENOSYS); see ``daxwire.py``."""

    def __init__(self, shared_dir: str, socket_path: str, *, tag: str | None = None,
                 thread_pool_size: int = 4, num_request_queues: int = 16, trace: str | None = None,
                 spin_ns: int | None = None, cache: str = "auto",
                 version_slots: int = DEFAULT_SLOTS, notifications: bool = True,
                 window_size: int = DEFAULT_WINDOW) -> None:
        if not os.path.isdir(shared_dir):
            raise FileNotFoundError(f"shared directory {shared_dir!r} does not exist")
        if tag is not None:
            check_tag(tag)
        self.shared_dir = shared_dir
        self.socket_path = socket_path
        self.tag = tag
        self.num_request_queues = num_request_queues
        self.notifications = notifications
        self.fs = PassthroughFs(shared_dir, cache=cache)
        if window_size < 0 or window_size % (2 << 20):
            raise ValueError(f"DAX window of {window_size} bytes is not a multiple of 2 MiB")
        self.window_size = window_size
        self._by_sid: dict[int, GuestSession] = {}
        self.dax: DaxService | None = None
        if window_size:
            self.dax = self.fs.dax = DaxService(self.fs, window_size, self._channel_of)
        self.versions: VersionTable | None = None
        self.watcher: ShareWatcher | None = None
        if version_slots:
            self.versions = VersionTable(f"/vfsc-{os.getpid()}-{secrets.token_hex(4)}-vt", version_slots,
                                         unlink_name=True)
            self.watcher = ShareWatcher(self.fs.inodes, self.versions)
        self.pool = FairPool(thread_pool_size) if thread_pool_size > 0 else None
        self.tracer = Tracer(trace) if trace else None
        self.sessions: dict[int, GuestSession] = {}     # by control socket fd
        self._live_list: list | None = None              # _live()'s answer, None: to be made
        self._kick_owner: dict[int, tuple[GuestSession, int]] = {}
        self._next_sid = 1
        self._epoll = select.epoll()
        self._stop_r, self._stop_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self._epoll.register(self._stop_r, select.EPOLLIN)
        self.spin = SpinBudget() if spin_ns is None else SpinBudget(max_ns=spin_ns)
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        if os.path.exists(socket_path):
            os.unlink(socket_path)
        self.listener.bind(socket_path)
        self.listener.listen(64)
        self._epoll.register(self.listener.fileno(), select.EPOLLIN)
        if self.watcher is not None:
            self._epoll.register(self.watcher.fd, select.EPOLLIN)
        self.requests = 0
        #: requests handed to the thread pool (statistics)
        self.pooled = 0
        self._pool_busy = 0
        self._pool_lock = threading.Lock()
        self.stopping = False

    # -- control -------------------------------------------------------------------------------
    def stop(self) -> None:
        """Ask the loop to return (safe from a signal handler or another thread)."""
        self.stopping = True
        try:
            os.write(self._stop_w, b"x")
        except OSError:
            pass

    def install_signal_handlers(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, lambda *_: self.stop())

    def close(self) -> None:
        self.fs.shutting_down()          # parked lock requests fail, not granted by the drops below
        for s in list(self.sessions.values()):
            self._drop(s)
        self.listener.close()
        try:
            os.unlink(self.socket_path)
        except FileNotFoundError:
            pass
        if self.pool is not None:
            self.pool.shutdown()
        self._epoll.close()
        os.close(self._stop_r)
        os.close(self._stop_w)
        if self.watcher is not None:
            self.watcher.close()
        self.fs.close()
        if self.versions is not None:
            self.versions.close()
        if self.tracer is not None:
            self.tracer.close()

    # -- sessions ------------------------------------------------------------------------------
    def _accept(self) -> None:
        sock, _ = self.listener.accept()
        sid = self._next_sid
        self._next_sid += 1
        s = GuestSession(sid, sock, self.fs, num_request_queues=self.num_request_queues, tag=self.tag,
                         versions=self.versions, notifications=self.notifications,
                         dax_window=self.window_size)
        self.sessions[sock.fileno()] = s
        self._by_sid[sid] = s
        self._changed()
        self._epoll.register(sock.fileno(), select.EPOLLIN)
        log.info("%s connected", s.name)

    def _drop(self, s: GuestSession) -> None:
        for fd in list(s.kick_fds):
            self._unregister_kick(fd)
        self.sessions.pop(s.fd, None)
        self._by_sid.pop(s.sid, None)
        self._changed()
        try:
            self._epoll.unregister(s.fd)
        except (OSError, ValueError):
            pass
        s.close()
        log.info("%s disconnected", s.name)

    def _channel_of(self, sid: int):
        """The back-end channel of session ``sid`` (DAX requests), or None."""
        s = self._by_sid.get(sid)
        return None if s is None else s.device.backend_channel

    def _unregister_kick(self, fd: int) -> None:
        owner = self._kick_owner.pop(fd, None)
        if owner is not None:
            owner[0].kick_fds.pop(fd, None)
        try:
            self._epoll.unregister(fd)
        except (OSError, ValueError):
            pass

    def _sync_kicks(self, s: GuestSession) -> None:
        if s.generation == s.device.generation:
            return
        s.generation = s.device.generation
        want = {}
        for i, q in s.device.live_queues():
            if q.state.kick_fd is not None:
                want[q.state.kick_fd] = i
        for fd in list(s.kick_fds):
            if want.get(fd) != s.kick_fds[fd]:
                self._unregister_kick(fd)
        for fd, i in want.items():
            if fd not in s.kick_fds:
                self._epoll.register(fd, select.EPOLLIN)
                s.kick_fds[fd] = i
                self._kick_owner[fd] = (s, i)
        s.notifier.flush()          # the notification queue may have come (back) to life

    # -- the loop ------------------------------------------------------------------------------
    def serve_forever(self, ready=None) -> None:
        """Run until :meth:`stop`; ``ready()`` is called once the socket is listening."""
        if ready is not None:
            ready()
        while not self.stopping:
            if self._process_round():
                continue
            if self._spin_for_work():
                continue
            if self._enable_kicks():
                continue
            if self.watcher is not None:
                self.watcher.drain()      # the events of our own last changes: no wake-up for them
            self._wait_events()
        log.info("vfs-hostd stopping: %d requests (%d pooled); spin budget %d ns, %d hits, %d blocks",
                 self.requests, self.pooled, self.spin.ns, self.spin.hits, self.spin.blocks)

    def _live(self) -> list:
        """Every live queue that carries requests (not the notification queues), as (session,
        index, queue); kept until a session comes or goes, a control message is handled or a
        queue breaks (:meth:`_changed`)."""
        work = self._live_list
        if work is None:
            work = self._live_list = [(s, i, q) for s in self.sessions.values()
                                 for i, q in s.device.live_queues() if i != s.device.notify_index]
        return work

    def _changed(self) -> None:
        """The set of live queues may have changed."""
        self._live_list = None

    def _process_round(self) -> bool:
        """Pop up to BATCH chains of every live queue, drain inotify, then serve them (module
        docstring: the barrier rule).  Returns whether there was any work."""
        popped = []
        drain = False
        for s, i, q in self._live():
            if not q.has_work():
                continue
            chains = []
            while len(chains) < BATCH:
                try:
                    chain = q.pop()
                except QueueError as exc:
                    log.warning("%s queue %d is broken: %s", s.name, i, exc)
                    q.mark_broken(str(exc))
                    self._changed()
                    break
                if chain is None:
                    break
                chains.append(chain)
            if chains:
                popped.append((s, i, q, chains))
                drain = drain or s.server.entry_version
        if not popped:
            return False
        if drain and self.watcher is not None:
            self.watcher.drain()
        for s, i, q, chains in popped:
            notify = False
            for chain in chains:
                if self._dispatch(s, i, q, chain):
                    notify = True
            q.disable_kicks()
            if notify:
                with q.lock:
                    if q.needs_notification():
                        q.notify()
        return True

    def _dispatch(self, s: GuestSession, i: int, q, chain) -> bool:
        """Handle one chain inline (returns True: used entry added) or hand it to the pool."""
        readable = chain.readable
        if self.pool is not None and readable and len(readable[0]) >= 8 \
                and (opcode := _OPCODE.unpack_from(readable[0], 4)[0]) in _MAYBE_POOLED \
                and self._would_stall(s, opcode, chain):
            with self._pool_lock:
                self._pool_busy += 1
            self.pooled += 1
            self.pool.submit(s.sid, self._work, s, i, q, chain)
            return False
        written = self._handle(s, i, chain)
        with q.lock:
            q.add_used(chain.head, written)
        return True

    def _would_stall(self, s: GuestSession, opcode: int, chain) -> bool:
        """Would serving this chain inline hold the loop up: a call that may block, big I/O — but
        not a READ whose range the page cache holds whole (``FileSystem.read_is_cached``: a pool
        thread's wake-up costs more than the copy) — or a shrink, or a WRITE that may grow a file
        back, that waits for DAX acks."""
        if opcode in _BLOCKING:
            return True
        if opcode == _READ or opcode == _WRITE:
            head = chain.readable[0]
            if len(head) < 40 + _IO_IN.size:
                return chain.writable_len + chain.readable_len > _BIG_IO
            fh, offset, size = _IO_IN.unpack_from(head, 40)
            if opcode == _WRITE and self.fs.write_may_wait(s.sid, fh):
                return True
            if size <= _BIG_IO:
                return False
            return opcode == _WRITE or not self.fs.read_is_cached(s.sid, fh, offset, size)
        return self.dax is not None and self.dax.active          # the shrinkers

    def _work(self, s: GuestSession, i: int, q, chain) -> None:
        try:
            written = self._handle(s, i, chain)
            q.add_used_and_notify(chain.head, written)
        finally:
            with self._pool_lock:
                self._pool_busy -= 1

    def _handle(self, s: GuestSession, i: int, chain) -> int:
        self.requests += 1
        reader = Reader(chain.readable)
        writer = Writer(chain.writable) if chain.writable else None
        tracer = self.tracer
        t0 = time.perf_counter_ns() if tracer is not None else 0
        try:
            written = s.server.handle(reader, writer)
        except ProtocolError as exc:      # the server reports garbage itself; this is a last guard
            log.warning("%s: request refused: %s", s.name, exc)
            written = 0
        if tracer is not None:
            tracer.record(s.name, i, chain, written, time.perf_counter_ns() - t0)
        return written

    def _spin_for_work(self) -> bool:
        budget = self.spin.ns
        if not budget or self._pool_busy:      # spinning would keep the GIL from the workers
            return False
        queues = [q for _, _, q in self._live()]
        if not queues:
            return False
        deadline = time.perf_counter_ns() + budget
        clock = time.perf_counter_ns
        while clock() < deadline:
            for _ in range(8):              # look 8 times per clock read
                for q in queues:
                    if q.has_work():
                        self.spin.hit()
                        return True
            if self.stopping:
                return True
        return False

    def _enable_kicks(self) -> bool:
        work = False
        for _, _, q in self._live():
            if q.enable_kicks():
                work = True
        return work

    def _wait_events(self) -> None:
        t0 = time.perf_counter_ns()
        events = self._epoll.poll()
        self.spin.blocked(time.perf_counter_ns() - t0)
        for fd, ev in events:
            if fd == self._stop_r:
                continue
            if fd == self.listener.fileno():
                self._accept()
                continue
            if self.watcher is not None and fd == self.watcher.fd:
                self.watcher.drain()
                continue
            s = self.sessions.get(fd)
            if s is not None:
                self._control(s)
                continue
            owner = self._kick_owner.get(fd)
            if owner is not None:
                try:
                    os.eventfd_read(fd)
                except (BlockingIOError, OSError):
                    pass
                s, i = owner
                if i == s.device.notify_index:
                    s.notifier.flush()          # the guest added notification buffers

    def _control(self, s: GuestSession) -> None:
        self._changed()
        try:
            alive = s.dispatcher.handle_one()
        except (OSError, EOFError) as exc:
            log.info("%s: control connection: %s", s.name, exc)
            alive = False
        if not alive:
            self._drop(s)
            return
        self._sync_kicks(s)
