"""A real vfs-hostd in its own process, for tests of the guest side below the cluster layer."""

from __future__ import annotations

import os
import secrets
import tempfile

from vfscluster.cluster.launcher import _context, _member_main


class HostProcess:
    def __init__(self, share: str, **kwargs) -> None:
        self.dir = tempfile.mkdtemp(prefix=f"vfsc-{os.getpid()}-{secrets.token_hex(3)}-")
        self.socket_path = os.path.join(self.dir, "host.sock")
        ctx = _context()
        parent, child = ctx.Pipe(duplex=False)
        kw = dict(shared_dir=str(share), socket_path=self.socket_path, log_level="WARNING", **kwargs)
        self.proc = ctx.Process(target=_member_main, args=(child, "host", kw, os.getpid()))
        self.proc.start()
        child.close()
        try:
            assert parent.poll(30), "host did not start"
            status, info = parent.recv()
            assert status == "ready", info
        except BaseException:
            self.stop()
            raise
        finally:
            parent.close()

    def stop(self) -> None:
        if self.proc.is_alive():
            self.proc.terminate()
        self.proc.join(10)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join(5)
        for n in os.listdir(self.dir):
            os.unlink(os.path.join(self.dir, n))
        os.rmdir(self.dir)


def ram_name(tag: str = "g") -> str:
    return f"/vfsc-{os.getpid()}-{secrets.token_hex(3)}-{tag}-ram"
