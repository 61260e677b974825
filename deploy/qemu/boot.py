#!/usr/bin/env python3
"""Boot a real Linux guest under QEMU on a vhost-user-fs back end (vfs-hostd or the C virtiofsd),
mount the share with ``mount -t virtiofs TAG``, run a shell script inside (cwd = the mount) and
hand back what it printed and its exit status.

Command line (one of ``--socket-path`` with a running back end, ``--shared-dir`` or
``--topology``, which start a vfs-hostd for the boot)::

    deploy/qemu/boot.py --topology deploy/topologies/three-guests.toml -c 'ls -l; df -h .'
    deploy/qemu/boot.py --shared-dir /srv/share script.sh
    deploy/qemu/boot.py --socket-path /run/vfs-hostd.sock --tag vfs script.sh

From Python (the tests)::

    with HostDaemon(share, trace=path) as host:
        r = run_guest(host.socket_path, "vfs", "cat hello.txt")
        r.status, r.output, r.console

What the guest is:

* the host's newest Debian kernel (``/boot/vmlinuz-*``; ``VFS_QEMU_KERNEL`` picks another), booted
  through its PVH entry from the unpacked ELF (halves a TCG boot: no in-guest xz decompression), and
  a tiny initramfs made here, without cpio or gzip: static busybox, the modules virtio_pci and
  virtiofs need (resolved from ``modules.dep``) and the ``/init`` below.  Both are cached in
  ``$XDG_CACHE_HOME/vfscluster/qemu/<kernel version>/`` (``VFS_QEMU_CACHE`` overrides), keyed by
  the recipe's hash, rebuilt under a lock when the recipe or the kernel changes;
* guest RAM is ``memory-backend-memfd,share=on`` bound with ``-numa node,memdev=``: vhost-user needs
  RAM it can map (QEMU refuses otherwise; virtiofsd panics on the vring addresses);
* KVM only when ``/dev/kvm`` opens read-write *and* it is hardware KVM (kvm_intel / kvm_amd loaded):
  a ``/dev/kvm`` backed by kvm_pvm (software nested virtualisation, as on our CI machines) runs a
  stock kernel emulated for minutes and then dies; TCG boots in ~3 s there;
* serial 0 is the console (kernel, ``/init``'s ``VFSBOOT:`` lines), serial 1 carries only the
  script's stdout+stderr, so output needs no filtering of kernel messages.

Always powers off, never hangs: the script runs under a guest watchdog (``poweroff -n -f`` after
``timeout - 10`` s), the final ``sync; umount`` of ``/init`` runs in the background for at most 5 s
(a dead back end blocks them forever, and busybox's plain ``poweroff -f`` would sync again), and the
host kills QEMU at ``timeout``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import fcntl
import glob
import gzip
import hashlib
import io
import lzma
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
QEMU = "qemu-system-x86_64"
VIRTIOFSD = "/usr/lib/qemu/virtiofsd"
BUSYBOX_CANDIDATES = ("/bin/busybox", "/usr/bin/busybox")
MODULES = ("virtio_pci", "virtiofs")
RECIPE_VERSION = "3"                   # bump when the initramfs layout changes

# PID 1 of the guest.  Kernel command line knobs (dotted names are kept out of init's env):
#   vfs.tag=TAG  vfs.opts=a,b (mount -o)  vfs.mnt=/mnt  vfs.watchdog=SECONDS
INIT = r"""#!/bin/sh
/bin/busybox --install -s /bin
export PATH=/bin HOME=/ TERM=dumb
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
exec </dev/null >/dev/console 2>&1
mount -t tmpfs tmp /tmp
say() { echo "VFSBOOT: $*"; }
TAG=vfs; OPTS=; MNT=/mnt; WD=0
for a in $(cat /proc/cmdline); do case "$a" in
  vfs.tag=*) TAG=${a#*=};; vfs.opts=*) OPTS=${a#*=};; vfs.mnt=*) MNT=${a#*=};;
  vfs.watchdog=*) WD=${a#*=};; esac; done
if [ "$WD" -gt 0 ]; then  # poweroff -n -f is reboot(2) itself: works with the mount hung
  (sleep "$WD"; say "WATCHDOG after ${WD}s"; poweroff -n -f) & fi
say "BOOTED $(uname -r) uptime $(cut -d' ' -f1 /proc/uptime)"
for m in $(cat /modules.order); do insmod "/lib/modules/$m" || say "insmod $m FAILED"; done
mkdir -p "$MNT"
i=0; until mount -t virtiofs ${OPTS:+-o "$OPTS"} "$TAG" "$MNT" 2>/tmp/mount.err; do
  i=$((i+1)); if [ $i -ge 50 ]; then say "MOUNT FAILED: $(cat /tmp/mount.err)"; break; fi
  sleep 0.1; done   # the device may still be probing
if grep -q " $MNT virtiofs " /proc/mounts; then say "MOUNTED $(grep " $MNT " /proc/mounts)"; MOK=1; else MOK=0; fi
say "BEGIN uptime $(cut -d' ' -f1 /proc/uptime)"
rc=99
if [ $MOK = 1 ]; then
  (cd "$MNT" && exec sh /vfs-script) </dev/null >/dev/ttyS1 2>&1; rc=$?
fi
cd /
say "END rc=$rc uptime $(cut -d' ' -f1 /proc/uptime)"
if grep -q " $MNT virtiofs " /proc/mounts; then
  (sync; umount "$MNT"; echo "VFSBOOT: UMOUNT rc=$?") & p=$!
  i=0; while kill -0 $p 2>/dev/null && [ $i -lt 50 ]; do sleep 0.1; i=$((i+1)); done
  kill -0 $p 2>/dev/null && say "UMOUNT HUNG (back end gone?)"
fi
say "POWEROFF"
poweroff -n -f
"""


class BootError(RuntimeError):
    """The guest could not be built or booted (missing packages, QEMU refused to start)."""


# ------------------------------------------------------------------------------------------ kernel

def _version_key(s: str) -> list:
    return [int(x) if x.isdigit() else x for x in re.split(r"(\d+)", s)]


def find_kernel(kernel: str | None = None) -> tuple[str, str]:
    """(path of the bzImage, kernel version): ``kernel``, ``$VFS_QEMU_KERNEL`` or the newest
    ``/boot/vmlinuz-*``."""
    path = kernel or os.environ.get("VFS_QEMU_KERNEL")
    if not path:
        found = sorted(glob.glob("/boot/vmlinuz-*"), key=_version_key)
        if not found:
            raise BootError("no kernel in /boot (apt-get install linux-image-amd64)")
        path = found[-1]
    if not os.path.isfile(path):
        raise BootError(f"kernel {path!r} does not exist")
    kver = os.path.basename(path).removeprefix("vmlinuz-")
    return path, kver


def missing_requirements() -> list[str]:
    """What this machine lacks to boot a guest (empty when everything is there)."""
    out = []
    if shutil.which(QEMU) is None:
        out.append(f"{QEMU} (apt-get install qemu-system-x86)")
    try:
        _, kver = find_kernel()
        if not os.path.isfile(f"/lib/modules/{kver}/modules.dep"):
            out.append(f"/lib/modules/{kver}/modules.dep (apt-get install linux-image-amd64)")
    except BootError as exc:
        out.append(str(exc))
    if _busybox() is None:
        out.append("a static busybox (apt-get install busybox-static)")
    return out


def _busybox() -> str | None:
    for p in BUSYBOX_CANDIDATES:
        if os.path.isfile(p):
            with open(p, "rb") as f:
                elf = f.read(4) == b"\x7fELF"
            if elf and not _is_dynamic(p):
                return p
    return None


def _is_dynamic(path: str) -> bool:
    """True if the ELF at ``path`` has a PT_INTERP program header (needs a dynamic loader)."""
    import struct
    with open(path, "rb") as f:
        ident = f.read(64)
        if len(ident) < 64 or ident[4] != 2:          # 64-bit ELF only
            return True
        phoff, = struct.unpack_from("<Q", ident, 32)
        phentsize, phnum = struct.unpack_from("<HH", ident, 54)
        f.seek(phoff)
        table = f.read(phentsize * phnum)
    return any(struct.unpack_from("<I", table, i * phentsize)[0] == 3 for i in range(phnum))


def _module_order(kver: str, wanted=MODULES) -> list[str]:
    """Paths of ``wanted`` and their dependencies, each after what it needs (modules.dep)."""
    base = f"/lib/modules/{kver}"
    deps: dict[str, list[str]] = {}
    by_name: dict[str, str] = {}
    with open(os.path.join(base, "modules.dep")) as f:
        for line in f:
            if ":" not in line:
                continue
            mod, rest = line.split(":", 1)
            deps[mod] = rest.split()
            name = re.sub(r"\.ko(\.\w+)?$", "", os.path.basename(mod)).replace("-", "_")
            by_name[name] = mod
    order: list[str] = []

    def visit(mod: str) -> None:
        if mod in order:
            return
        for d in deps.get(mod, ()):
            visit(d)
        order.append(mod)
    for name in wanted:
        mod = by_name.get(name.replace("-", "_"))
        if mod is None:
            builtin = os.path.join(base, "modules.builtin")
            if os.path.exists(builtin) and any(
                    re.sub(r"\.ko$", "", os.path.basename(l.strip())).replace("-", "_") == name
                    for l in open(builtin)):
                continue
            raise BootError(f"kernel {kver} has no module {name}")
        visit(mod)
    return [os.path.join(base, m) for m in order]


def _module_bytes(path: str) -> bytes:
    with open(path, "rb") as f:
        data = f.read()
    if path.endswith(".xz"):
        return lzma.decompress(data)
    if path.endswith(".gz"):
        return gzip.decompress(data)
    if path.endswith(".zst"):
        raise BootError(f"{path}: zstd-compressed modules are not supported")
    return data


class _Cpio:
    """A newc cpio archive (what the kernel unpacks as an initramfs)."""

    def __init__(self) -> None:
        self.buf = io.BytesIO()
        self.ino = 1

    def add(self, name: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0)) -> None:
        namez = name.encode() + b"\0"
        fields = (self.ino, mode, 0, 0, 2 if stat.S_ISDIR(mode) else 1, 0, len(data), 0, 0,
                  rdev[0], rdev[1], len(namez), 0)
        self.ino += 1
        self.buf.write(b"070701" + "".join(f"{v:08X}" for v in fields).encode() + namez)
        self._pad()
        self.buf.write(data)
        self._pad()

    def _pad(self) -> None:
        self.buf.write(b"\0" * (-self.buf.tell() % 4))

    def finish(self) -> bytes:
        self.add("TRAILER!!!", 0)
        return self.buf.getvalue()


def script_archive(script: str | bytes, extra: dict[str, bytes] | None = None) -> bytes:
    """A small cpio holding ``/vfs-script`` (and ``extra`` files): appended to the cached
    initramfs, the kernel unpacks it over the first archive."""
    c = _Cpio()
    c.add("vfs-script", stat.S_IFREG | 0o755, script.encode() if isinstance(script, str) else script)
    for name, data in (extra or {}).items():
        c.add(name.lstrip("/"), stat.S_IFREG | 0o644, data)
    return c.finish()


def _build_initramfs(kver: str, busybox: str, modules: list[str]) -> bytes:
    c = _Cpio()
    for d in ("bin", "dev", "proc", "sys", "tmp", "mnt", "lib", "lib/modules"):
        c.add(d, stat.S_IFDIR | 0o755)
    c.add("dev/console", stat.S_IFCHR | 0o600, rdev=(5, 1))
    with open(busybox, "rb") as f:
        c.add("bin/busybox", stat.S_IFREG | 0o755, f.read())
    c.add("bin/sh", stat.S_IFLNK | 0o777, b"busybox")
    names = []
    for m in modules:
        name = re.sub(r"\.(xz|gz)$", "", os.path.basename(m))
        c.add(f"lib/modules/{name}", stat.S_IFREG | 0o644, _module_bytes(m))
        names.append(name)
    c.add("modules.order", stat.S_IFREG | 0o644, ("\n".join(names) + "\n").encode())
    c.add("init", stat.S_IFREG | 0o755, INIT.encode())
    return c.finish()


def _extract_vmlinux(bzimage: str) -> bytes | None:
    """The kernel ELF inside an xz bzImage (QEMU boots it through the PVH note), or None."""
    with open(bzimage, "rb") as f:
        data = f.read()
    off = data.find(b"\xfd7zXZ\x00")
    if off < 0:
        return None
    try:
        elf = lzma.LZMADecompressor().decompress(data[off:])   # stops at the end of the stream
    except lzma.LZMAError:
        return None
    return elf if elf[:4] == b"\x7fELF" else None


def cache_dir(kver: str) -> str:
    root = os.environ.get("VFS_QEMU_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "vfscluster", "qemu")
    return os.path.join(root, kver)


@dataclasses.dataclass(frozen=True)
class GuestImage:
    kernel: str          # what QEMU's -kernel gets (the unpacked vmlinux, else the bzImage)
    initrd: str
    kver: str
    pvh: bool


def prepare_image(kernel: str | None = None) -> GuestImage:
    """The cached kernel + initramfs for this machine's kernel, built if missing or stale."""
    bzimage, kver = find_kernel(kernel)
    busybox = _busybox()
    if busybox is None:
        raise BootError("no static busybox (apt-get install busybox-static)")
    modules = _module_order(kver)
    h = hashlib.sha256()
    for part in (RECIPE_VERSION, INIT, kver, busybox, *modules):
        h.update(part.encode() + b"\0")
    for p in (bzimage, busybox, *modules):
        st = os.stat(p)
        h.update(f"{st.st_size}:{st.st_mtime_ns}".encode())
    key = h.hexdigest()[:16]
    d = cache_dir(kver)
    try:
        os.makedirs(d, exist_ok=True)
        if not os.access(d, os.W_OK):
            raise PermissionError(d)
    except OSError:                      # no writable home (some CI users): a per-user temp cache
        d = os.path.join(tempfile.gettempdir(), f"vfscluster-qemu-cache-{os.getuid()}", kver)
        os.makedirs(d, exist_ok=True)
    initrd = os.path.join(d, f"initramfs-{key}.cpio")
    vmlinux = os.path.join(d, f"vmlinux-{key}")
    nopvh = os.path.join(d, f"vmlinux-{key}.none")
    with open(os.path.join(d, ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)      # parallel test workers: one builds, the others wait
        if not os.path.exists(initrd):
            _atomic_write(initrd, _build_initramfs(kver, busybox, modules))
        if not os.path.exists(vmlinux) and not os.path.exists(nopvh):
            elf = _extract_vmlinux(bzimage)
            _atomic_write(vmlinux if elf else nopvh, elf or b"")
        for stale in os.listdir(d):
            if stale.startswith(("initramfs-", "vmlinux-")) and key not in stale:
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(d, stale))
    if os.path.exists(vmlinux):
        return GuestImage(vmlinux, initrd, kver, True)
    return GuestImage(bzimage, initrd, kver, False)


def _atomic_write(path: str, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


# ------------------------------------------------------------------------------------------ accel

def kvm_usable() -> bool:
    """Hardware KVM: /dev/kvm opens read-write and kvm_intel or kvm_amd is loaded (a kvm_pvm
    /dev/kvm cannot run a stock kernel: see the module docstring)."""
    if not (os.path.isdir("/sys/module/kvm_intel") or os.path.isdir("/sys/module/kvm_amd")):
        return False
    try:
        os.close(os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC))
    except OSError:
        return False
    return True


def choose_accel(accel: str | None = None) -> str:
    accel = accel or os.environ.get("VFS_QEMU_ACCEL") or "auto"
    if accel == "auto":
        return "kvm" if kvm_usable() else "tcg"
    if accel not in ("kvm", "tcg"):
        raise BootError(f"accel must be kvm, tcg or auto, not {accel!r}")
    return accel


# ------------------------------------------------------------------------------------------ booting

@dataclasses.dataclass
class GuestResult:
    """What one boot gave: the script's ``status`` (None if it never finished: timeout, watchdog,
    mount failure is 99), its ``output`` (stdout+stderr, serial 1), the ``console`` (kernel and
    /init), wall ``seconds`` from QEMU start to exit, and QEMU's own exit code and stderr."""

    status: int | None
    output: str
    console: str
    seconds: float
    timed_out: bool
    qemu_rc: int | None
    qemu_stderr: str
    accel: str

    @property
    def mounted(self) -> bool:
        return "VFSBOOT: MOUNTED" in self.console

    @property
    def umount_rc(self) -> int | None:
        m = re.search(r"VFSBOOT: UMOUNT rc=(\d+)", self.console)
        return int(m.group(1)) if m else None

    def describe(self) -> str:
        return (f"guest status={self.status} timed_out={self.timed_out} qemu_rc={self.qemu_rc} "
                f"accel={self.accel} {self.seconds:.1f}s\n--- console:\n{self.console}\n"
                f"--- script output:\n{self.output}\n--- qemu stderr:\n{self.qemu_stderr}")


def default_timeout(accel: str) -> float:
    return 60.0 if accel == "kvm" else 180.0


def qemu_argv(socket_path: str, tag: str, image: GuestImage, initrd: str, workdir: str, *,
              accel: str, mem_mb: int = 512, smp: int = 1, queue_size: int | None = None,
              mount_opts: str | None = None, watchdog: int = 0, echo: bool = False,
              extra_args=()) -> list[str]:
    cmdline = ["console=ttyS0", "panic=-1", "quiet", "loglevel=4", "mitigations=off",
               f"vfs.tag={tag}", f"vfs.watchdog={watchdog}"]
    if mount_opts:
        cmdline.append(f"vfs.opts={mount_opts}")
    dev = f"vhost-user-fs-pci,chardev=vfs0,tag={tag}"
    if queue_size:
        dev += f",queue-size={queue_size}"
    console = (f"stdio,id=con,signal=off" if echo else "null,id=con") + \
        f",logfile={os.path.join(workdir, 'console.log')}"
    cpu = ["-accel", "kvm", "-cpu", "host"] if accel == "kvm" else ["-accel", "tcg", "-cpu", "max"]
    return [
        QEMU, "-machine", "q35", *cpu, "-smp", str(smp), "-m", f"{mem_mb}M",
        "-object", f"memory-backend-memfd,id=mem,size={mem_mb}M,share=on", "-numa", "node,memdev=mem",
        "-chardev", f"socket,id=vfs0,path={socket_path}", "-device", dev,
        "-kernel", image.kernel, "-initrd", initrd, "-append", " ".join(cmdline),
        "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
        "-chardev", console, "-serial", "chardev:con",
        "-chardev", f"file,id=out,path={os.path.join(workdir, 'script.out')}", "-serial", "chardev:out",
        *extra_args,
    ]


def run_guest(socket_path: str, tag: str, script: str | bytes, *, timeout: float | None = None,
              accel: str | None = None, mem_mb: int = 512, smp: int = 1, queue_size: int | None = None,
              mount_opts: str | None = None, kernel: str | None = None, echo: bool = False,
              files: dict[str, bytes] | None = None, watchdog: int | None = None,
              extra_args=()) -> GuestResult:
    """Boot a guest on the vhost-user-fs back end listening on ``socket_path`` (it must already
    listen), mount ``tag``, run ``script`` (sh, cwd = the mount) and power off.  ``files`` are
    put into the guest's root file system (name -> bytes).  ``watchdog``: seconds after /init
    starts at which the guest powers itself off whatever it is doing (default ``timeout - 10``).
    Never raises for what the guest did;
    :class:`BootError` if the guest cannot be built or QEMU cannot start."""
    if shutil.which(QEMU) is None:
        raise BootError(f"{QEMU} is not installed (apt-get install qemu-system-x86)")
    accel = choose_accel(accel)
    timeout = default_timeout(accel) if timeout is None else timeout
    image = prepare_image(kernel)
    with tempfile.TemporaryDirectory(prefix="vfs-qemu-") as work:
        initrd = os.path.join(work, "initrd")
        with open(image.initrd, "rb") as src, open(initrd, "wb") as dst:
            shutil.copyfileobj(src, dst)
            dst.write(script_archive(script, files))
        argv = qemu_argv(socket_path, tag, image, initrd, work, accel=accel, mem_mb=mem_mb, smp=smp,
                         queue_size=queue_size, mount_opts=mount_opts,
                         watchdog=watchdog or max(int(timeout) - 10, 5), echo=echo, extra_args=extra_args)
        t0 = time.monotonic()
        errf = open(os.path.join(work, "qemu.err"), "w+b")
        try:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL,
                                    stdout=None if echo else subprocess.DEVNULL, stderr=errf,
                                    start_new_session=True)
        except OSError as exc:
            errf.close()
            raise BootError(f"cannot start {QEMU}: {exc}") from exc
        timed_out = False
        try:
            rc = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            _kill_group(proc)
            rc = proc.wait()
        except BaseException:            # KeyboardInterrupt, a test timeout: never leave QEMU behind
            _kill_group(proc)
            proc.wait()
            raise
        seconds = time.monotonic() - t0
        errf.seek(0)
        qerr = errf.read().decode(errors="replace")
        errf.close()
        console = _read(os.path.join(work, "console.log"))
        output = _read(os.path.join(work, "script.out"))
    m = re.findall(r"VFSBOOT: END rc=(\d+)", console)
    status = int(m[-1]) if m else None
    return GuestResult(status, output, console, seconds, timed_out, rc, qerr, accel)


def _kill_group(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)


def _read(path: str) -> str:
    try:
        with open(path, "rb") as f:
            return f.read().decode(errors="replace").replace("\r\n", "\n")
    except FileNotFoundError:
        return ""


# ------------------------------------------------------------------------------------------ back ends

def unix_listening(path: str) -> bool:
    """Is a Unix stream socket bound to ``path`` listening (``/proc/net/unix``, __SO_ACCEPTCON)?"""
    try:
        with open("/proc/net/unix") as f:
            next(f)
            for line in f:
                parts = line.split()
                if len(parts) >= 8 and parts[7] == path and int(parts[3], 16) & 0x10000:
                    return True
    except OSError:
        pass
    return False


class Daemon:
    """A back-end process listening on a vhost-user socket; a context manager that stops it
    (SIGTERM, then SIGKILL) and removes its socket."""

    def __init__(self, argv: list[str], socket_path: str, log_path: str, *, env=None,
                 ready_timeout: float = 30.0) -> None:
        self.socket_path = os.path.abspath(socket_path)
        self.log_path = log_path
        self.argv = argv
        self._log = open(log_path, "ab")
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=self._log,
                                     stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            self._wait_listening(ready_timeout)
        except BaseException:
            self.stop()
            raise

    def _wait_listening(self, timeout: float) -> None:
        # Polls /proc/net/unix: the socket is usable only once listen() ran, and bind() creates the
        # path before that; the daemons have no readiness notification of their own.
        deadline = time.monotonic() + timeout
        while not unix_listening(self.socket_path):
            if self.proc.poll() is not None:
                raise BootError(f"{self.argv[0]} exited with {self.proc.returncode} before listening: "
                                f"{self.log()[-2000:]}")
            if time.monotonic() > deadline:
                raise BootError(f"{self.argv[0]} did not listen on {self.socket_path} "
                                f"within {timeout}s: {self.log()[-2000:]}")
            time.sleep(0.01)

    def log(self) -> str:
        """What the daemon wrote so far (stdout and stderr)."""
        if not self._log.closed:
            self._log.flush()
        return _read(self.log_path)

    def wait(self, timeout: float) -> int | None:
        """Wait for the daemon to exit by itself (virtiofsd does when its guest leaves)."""
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, timeout: float = 10.0) -> int:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        else:
            with contextlib.suppress(ProcessLookupError):   # virtiofsd's sandbox children
                os.killpg(self.proc.pid, signal.SIGKILL)
        self._log.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.socket_path)
        return self.proc.returncode

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


class HostDaemon(Daemon):
    """``vfs-hostd`` (``python -m daemons.hostd``) serving ``share`` on ``socket_path``."""

    def __init__(self, share: str, socket_path: str, *, tag: str | None = None, trace: str | None = None,
                 log_path: str | None = None, log_level: str = "INFO", extra_args=()) -> None:
        argv = [sys.executable, "-m", "daemons.hostd", "--socket-path", os.path.abspath(socket_path),
                "--shared-dir", os.fspath(share), "--log-level", log_level]
        if tag:
            argv += ["--tag", tag]
        if trace:
            argv += ["--trace", trace]
        argv += list(extra_args)
        env = dict(os.environ)
        env["PYTHONPATH"] = REPO + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        super().__init__(argv, socket_path, log_path or os.path.abspath(socket_path) + ".log", env=env)


class VirtiofsdDaemon(Daemon):
    """The C virtiofsd of QEMU 7.2 (Debian qemu-system-common): one connection, exits when its
    front-end leaves."""

    def __init__(self, share: str, socket_path: str, *, cache: str = "none", sandbox: str | None = None,
                 log_path: str | None = None, extra_args=()) -> None:
        argv = [VIRTIOFSD, f"--socket-path={os.path.abspath(socket_path)}", "-o", f"source={share}",
                "-o", f"cache={cache}"]
        if sandbox or os.environ.get("VFS_VIRTIOFSD_SANDBOX"):
            argv += ["-o", f"sandbox={sandbox or os.environ['VFS_VIRTIOFSD_SANDBOX']}"]
        argv += list(extra_args)
        super().__init__(argv, socket_path, log_path or os.path.abspath(socket_path) + ".log")


# ------------------------------------------------------------------------------------------ CLI

def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="boot.py", description="Boot a Linux guest under QEMU on vfs-hostd (or any vhost-user-fs "
        "back end), mount the share, run a script in it (cwd = the mount), power off.")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--socket-path", help="a back end already listening on this socket")
    src.add_argument("--shared-dir", help="start a vfs-hostd serving this directory for the boot")
    src.add_argument("--topology", help="start a vfs-hostd for the share and tag of this topology TOML")
    p.add_argument("--tag", help="virtio-fs tag (default: the topology's, else vfs)")
    p.add_argument("script", nargs="?", help="shell script to run in the guest (default: ls -la)")
    p.add_argument("-c", dest="command", help="script text instead of a file")
    p.add_argument("--timeout", type=float, help="seconds before QEMU is killed (default 60 kvm / 180 tcg)")
    p.add_argument("--accel", choices=("auto", "kvm", "tcg"), default=None)
    p.add_argument("--mem", type=int, default=512, help="guest RAM in MiB")
    p.add_argument("--smp", type=int, default=1)
    p.add_argument("--mount-opts", help="mount -o options in the guest")
    p.add_argument("--trace", help="vfs-hostd --trace FILE (with --shared-dir/--topology)")
    p.add_argument("--quiet", action="store_true", help="do not echo the guest console")
    a = p.parse_args(argv)
    script = a.command
    if script is None:
        script = open(a.script).read() if a.script else "ls -la\n"
    tag = a.tag
    with contextlib.ExitStack() as stack:
        if a.socket_path:
            sock = a.socket_path
            tag = tag or "vfs"
        else:
            if a.topology:
                sys.path.insert(0, REPO)
                from vfscluster.cluster.topology import Topology
                topo = Topology.load(a.topology)
                share, tag = topo.share, tag or topo.tag
                os.makedirs(share, exist_ok=True)
            else:
                share, tag = a.shared_dir, tag or "vfs"
            work = stack.enter_context(tempfile.TemporaryDirectory(prefix="vfs-boot-"))
            sock = os.path.join(work, "hostd.sock")
            host = stack.enter_context(HostDaemon(share, sock, tag=tag, trace=a.trace,
                                                  log_path=os.path.join(work, "hostd.log")))
            print(f"boot.py: vfs-hostd pid {host.proc.pid} serving {share} as <{tag}>", file=sys.stderr)
        r = run_guest(sock, tag, script, timeout=a.timeout, accel=a.accel, mem_mb=a.mem, smp=a.smp,
                      mount_opts=a.mount_opts, echo=not a.quiet)
        sys.stdout.write(r.output)
        sys.stdout.flush()
        print(f"boot.py: accel={r.accel} {r.seconds:.1f}s status={r.status}"
              f"{' TIMEOUT' if r.timed_out else ''}", file=sys.stderr)
        if r.status is None:
            sys.stderr.write(r.qemu_stderr)
            return 124 if r.timed_out else 1
        return r.status


if __name__ == "__main__":
    sys.exit(main())
