"""The vfs-hostd process body (used by ``daemons/hostd.py`` and by the cluster launcher)."""

from __future__ import annotations

import logging
import signal

from ..cluster.procutil import die_with_parent, set_process_name, setup_logging
from .daxwire import DEFAULT_WINDOW
from .server import HostServer
from .versions import DEFAULT_SLOTS

log = logging.getLogger(__name__)


def run_host(shared_dir: str, socket_path: str, *, tag: str | None = None, thread_pool_size: int = 4,
             num_request_queues: int = 16, trace: str | None = None, log_level: str = "WARNING",
             ready=None, managed: bool = False, spin_ns: int | None = None, cache: str = "auto",
             version_slots: int = DEFAULT_SLOTS, window_size: int = DEFAULT_WINDOW) -> int:
    """Serve ``shared_dir`` on ``socket_path`` until SIGTERM (or SIGINT when not ``managed``).

    ``ready(info)`` is called once the socket listens.  ``version_slots``: size of the metadata-version
    table (0: none).  ``managed`` (started by a cluster): die with the
    parent and leave Ctrl-C to the parent, which stops the members in order.
    """
    set_process_name("vfs-hostd")
    setup_logging(log_level, "vfs-hostd ")
    if managed:
        die_with_parent()
    server = HostServer(shared_dir, socket_path, tag=tag, thread_pool_size=thread_pool_size,
                        num_request_queues=num_request_queues, trace=trace, spin_ns=spin_ns,
                        cache=cache, version_slots=version_slots, window_size=window_size)
    server.install_signal_handlers()
    if managed:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        server.serve_forever(ready=(lambda: ready({"socket": socket_path})) if ready else None)
    finally:
        server.close()
    return 0
