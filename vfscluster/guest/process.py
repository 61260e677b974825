"""The vfs-guest process body: a guest machine with one virtio-fs device, mounted, served over a
control socket (used by ``daemons/guest.py`` and by the cluster launcher)."""

from __future__ import annotations

import logging
import os
import signal
import threading

from ..cluster.control import ControlServer
from ..cluster.procutil import die_with_parent, set_process_name, setup_logging
from .machine import GuestMachine

log = logging.getLogger(__name__)


class GuestService:
    """Answers control requests with the guest's mount: ``os.NAME`` calls, ``run``, ``stats``."""

    def __init__(self, name: str, machine: GuestMachine, mount) -> None:
        self.name = name
        self.machine = machine
        self.mount = mount
        self.stop = threading.Event()

    def handle(self, method: str, args: list, kwargs: dict):
        if method.startswith("os."):
            attr = method[3:]
            if attr.startswith("_") or not hasattr(self.mount.os, attr):
                raise AttributeError(f"GuestOS has no operation {attr!r}")
            return getattr(self.mount.os, attr)(*args, **kwargs)
        if method == "run":
            fn, *rest = args
            return fn(self.mount.os, *rest, **kwargs)
        if method == "ping":
            return {"name": self.name, "pid": os.getpid()}
        if method == "stats":
            return self.stats()
        if method == "shutdown":
            self.stop.set()
            return True
        raise AttributeError(f"unknown control request {method!r}")

    def stats(self) -> dict:
        """Counters of this guest, cheap to gather (``vfscluster top`` asks every second): its
        ``pid``; ``requests`` sent to the host and ``in_flight`` on the request queues; the
        ``cache`` figures (mode, entries, lookup hits/misses, page reads); ``dax``: None without a
        DAX window, else the window's counters plus ``mapped`` and ``ranges`` (ranges in use / in
        the window); ``queues``: per virtqueue in vring order its ``index``, ``role`` (hiprio,
        notify or request), ``kicks``, ``full_waits``, ``in_flight`` and the spin budget's
        ``spin_ns``, ``spin_hits`` and ``blocks``.  The counters (requests, hits, misses, kicks, waits,
        DAX setups...) only grow while the guest lives; sizes and in-flight figures move both ways."""
        dev = self.mount.device
        dax = self.mount.client.dax
        if dax is not None:
            ranges = dax.gdax.ranges
            dax_stats = {**dax.gdax.stats, "mapped": ranges.nranges - ranges.nfree,
                         "ranges": ranges.nranges}
        else:
            dax_stats = None
        first = dev.first_request
        return {"pid": os.getpid(), "in_flight": dev.in_flight(),
                "cache": self.mount.client.cache.stats(), "requests": self.mount.client.requests,
                "dax": dax_stats,
                "queues": [{"index": q.index, "role": "hiprio" if i == 0 else
                            "notify" if i < first else "request",
                            "kicks": q.kicks, "full_waits": q.full_waits, "in_flight": q.in_flight(),
                            "spin_ns": b.ns, "spin_hits": b.hits, "blocks": b.blocks}
                           for i, (q, b) in enumerate(zip(dev.queues, dev._spin))]}


#: after SIGTERM (a launcher's death included: die_with_parent), how long the unmount may take
#: before the guest exits anyway — a stopped or stuck host never answers its DESTROY, and no one
#: is left to kill the guest
SIGNAL_STOP_GRACE = 10.0


def _stop_by_signal(service: GuestService) -> None:
    if service.stop.is_set():
        return
    service.stop.set()
    threading.Thread(target=_exit_after_grace, name="stop-grace", daemon=True).start()


def _exit_after_grace() -> None:
    threading.Event().wait(SIGNAL_STOP_GRACE)
    log.warning("unmount did not end within %.0f s of SIGTERM (the host does not answer): exiting",
                SIGNAL_STOP_GRACE)
    logging.shutdown()
    os._exit(1)                 # (the RAM's shared-memory name is unlinked already)


def run_guest(name: str, socket_path: str, control_path: str, *, ram_name: str, tag: str = "vfs",
              cache: str = "none", versions: bool = False, writeback: bool = False,
              timeout: float = 1.0, num_request_queues: int = 1, queue_size: int = 128,
              ram_size: int = 64 << 20, log_level: str = "WARNING", ready=None, managed: bool = False,
              dax: str = "never", window_size: int = 1 << 30, **_future_options) -> int:
    """Boot a guest, mount ``tag`` and serve control requests until shutdown or SIGTERM."""
    set_process_name("vfs-guest")
    setup_logging(log_level, f"vfs-guest[{name}] ")
    if managed:
        die_with_parent()
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    machine = GuestMachine(name, ram_name=ram_name, ram_size=ram_size)
    try:
        machine.add_device(socket_path, tag, num_request_queues=num_request_queues, queue_size=queue_size)
        mount = machine.mount(tag, cache=cache, versions=versions, writeback=writeback,
                              timeout=timeout, dax=dax, window_size=window_size)
        service = GuestService(name, machine, mount)
        ctl = ControlServer(control_path, service.handle)
        stopper = threading.Thread(target=lambda: (service.stop.wait(), ctl.close()), daemon=True)
        stopper.start()
        for sig in (signal.SIGTERM,) + (() if managed else (signal.SIGINT,)):
            signal.signal(sig, lambda *_: _stop_by_signal(service))
        if ready is not None:
            ready({"control": control_path, "pid": os.getpid()})
        try:
            ctl.serve_forever()
        finally:
            ctl.close()
    finally:
        machine.close()
    return 0
