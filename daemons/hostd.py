"""vfs-hostd: the host server (a vhost-user-fs backend), with virtiofsd's option names.

    vfs-hostd --socket-path PATH --shared-dir DIR [--tag TAG] [--cache none|auto|always]
              [--thread-pool-size N] [--trace FILE] [--version-slots N]
"""

from __future__ import annotations

import os
import sys

from vfscluster.cliutil import ArgumentParser, fail
from vfscluster.host.versions import DEFAULT_SLOTS
from vfscluster.virtio.fs_config import check_tag


def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(prog="vfs-hostd", description="virtio-fs host server (vhost-user backend)")
    p.add_argument("--socket-path", required=True, help="vhost-user Unix socket to listen on")
    p.add_argument("--shared-dir", required=True, help="directory to share")
    p.add_argument("--tag", help="tag advertised in the device config space (GET_CONFIG)")
    p.add_argument("--cache", choices=("none", "auto", "always"), default="auto",
                   help="cache policy the host suggests (entry/attr timeouts)")
    p.add_argument("--thread-pool-size", type=int, default=4, help="workers for blocking requests")
    p.add_argument("--num-request-queues", type=int, default=16, help="request queues offered per guest")
    p.add_argument("--trace", metavar="FILE", help="append one line per FUSE request to FILE")
    p.add_argument("--version-slots", type=int, default=DEFAULT_SLOTS, metavar="N",
                   help="slots of the metadata-version table (a power of two; 0: no table)")
    p.add_argument("--dax-window", "--cache-size", type=int, default=1024, metavar="MIB",
                   help="DAX window advertised as shared-memory region 0, in MiB (a multiple of 2; 0: no DAX)")
    p.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    p.add_argument("-o", dest="options", action="append", default=[],
                   help="virtiofsd-style options (accepted for compatibility, e.g. -o cache=none)")
    a = p.parse_args(argv)
    if not os.path.isdir(a.shared_dir):
        fail("vfs-hostd", f"--shared-dir {a.shared_dir!r} is not a directory")
    if a.thread_pool_size < 0:
        fail("vfs-hostd", "--thread-pool-size must be >= 0")
    if a.num_request_queues < 1:
        fail("vfs-hostd", "--num-request-queues must be >= 1")
    if a.version_slots < 0 or a.version_slots & (a.version_slots - 1):
        fail("vfs-hostd", "--version-slots must be 0 or a power of two")
    if a.dax_window < 0 or a.dax_window % 2:
        fail("vfs-hostd", "--dax-window must be 0 or a multiple of 2 (MiB)")
    if a.tag is not None:
        try:
            check_tag(a.tag)
        except OSError as exc:
            fail("vfs-hostd", f"--tag: {exc.strerror}")
    if not os.path.isdir(os.path.dirname(os.path.abspath(a.socket_path))):
        fail("vfs-hostd", f"--socket-path {a.socket_path!r}: no such directory")
    if a.trace is not None:
        try:
            open(a.trace, "a").close()
        except OSError as exc:
            fail("vfs-hostd", f"--trace {a.trace!r}: {exc.strerror}")
    for opt in a.options:                     # virtiofsd style: -o cache=none,other=…
        for item in opt.split(","):
            key, _, value = item.partition("=")
            if key == "cache":
                if value not in ("none", "auto", "always"):
                    fail("vfs-hostd", f"-o cache={value}: must be none, auto or always")
                a.cache = value
    from vfscluster.host.process import run_host
    print(f"vfs-hostd: serving {a.shared_dir} on {a.socket_path}", file=sys.stderr, flush=True)
    return run_host(a.shared_dir, a.socket_path, tag=a.tag, thread_pool_size=a.thread_pool_size,
                    num_request_queues=a.num_request_queues, trace=a.trace, log_level=a.log_level,
                    cache=a.cache, version_slots=a.version_slots, window_size=a.dax_window << 20)


if __name__ == "__main__":
    sys.exit(main())
