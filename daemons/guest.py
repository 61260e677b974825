"""vfs-guest: a guest emulator with one virtio-fs device, mounted, reachable on a control socket.

    vfs-guest --socket-path HOST_SOCK --control PATH [--tag TAG] [--name NAME]
              [--cache none|auto|always] [--versions] [--writeback] [--timeout SECONDS]
              [--dax never|always|inode] [--window-size MIB]
              [--num-request-queues N] [--queue-size N] [--ram-size MiB]
"""

from __future__ import annotations

import os
import secrets
import sys

from vfscluster.cliutil import ArgumentParser, fail


def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(prog="vfs-guest", description="virtio-fs guest emulator (vhost-user frontend)")
    p.add_argument("--socket-path", required=True, help="the host's vhost-user socket")
    p.add_argument("--control", required=True, help="Unix socket to serve control requests on")
    p.add_argument("--name", default=f"guest-{os.getpid()}")
    p.add_argument("--tag", default="vfs")
    p.add_argument("--cache", choices=("none", "auto", "always"), default="none")
    p.add_argument("--versions", action="store_true",
                   help="cache validity by the host's metadata-version table (needs --cache auto|always)")
    p.add_argument("--writeback", action="store_true", help="write-back data caching")
    p.add_argument("--timeout", type=float, default=1.0, help="cache=auto timeout in seconds")
    p.add_argument("--dax", choices=("never", "always", "inode"), default="never",
                   help="file data through the DAX window (the host's shared-memory region 0); inode: only "
                        "files the host marks with FUSE_ATTR_DAX (FS_DAX_FL, chattr +x)")
    p.add_argument("--window-size", type=int, default=1024,
                   help="DAX window in MiB (a multiple of 2; capped by what the host offers)")
    p.add_argument("--num-request-queues", type=int, default=1)
    p.add_argument("--queue-size", type=int, default=128)
    p.add_argument("--ram-size", type=int, default=64, help="guest RAM in MiB")
    p.add_argument("--log-level", default="WARNING", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    a = p.parse_args(argv)
    if a.versions and a.cache == "none":
        fail("vfs-guest", "--versions needs --cache auto or --cache always")
    if not a.timeout >= 0:
        fail("vfs-guest", "--timeout must be >= 0")
    if not a.name or "/" in a.name or "\0" in a.name or len(a.name.encode()) > 200:
        fail("vfs-guest", f"--name {a.name!r}: a name of 1 to 200 bytes without '/'")
    if a.window_size < 2 or a.window_size % 2:
        fail("vfs-guest", "--window-size must be a positive multiple of 2 (MiB)")
    if a.ram_size < 4:
        fail("vfs-guest", "--ram-size must be at least 4 (MiB)")
    from vfscluster.guest.process import run_guest
    ram_name = f"/vfsc-{os.getpid()}-{secrets.token_hex(3)}-{a.name}-ram"
    try:
        return run_guest(a.name, a.socket_path, a.control, ram_name=ram_name, tag=a.tag, cache=a.cache,
                         versions=a.versions, writeback=a.writeback, timeout=a.timeout,
                         num_request_queues=a.num_request_queues, queue_size=a.queue_size,
                         ram_size=a.ram_size << 20, log_level=a.log_level,
                         dax=a.dax, window_size=a.window_size << 20,
                         ready=lambda info: print(f"vfs-guest {a.name}: control socket {a.control}",
                                                  file=sys.stderr, flush=True))
    except OSError as exc:
        fail("vfs-guest", str(exc))


if __name__ == "__main__":
    sys.exit(main())
