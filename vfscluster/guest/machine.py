"""A guest machine: its RAM, its virtio-fs devices (by tag) and its mounts.

This is the "VMM + guest kernel" half of a guest emulator process: ``add_device`` is QEMU's
``-device vhost-user-fs-pci,chardev=…,tag=…``; ``mount`` is ``mount -t virtiofs TAG /mnt``.
"""

from __future__ import annotations

import errno
import logging
import threading

from .device import DeviceConfig, VirtioFsDevice
from .ram import GuestRam

log = logging.getLogger(__name__)


class Mount:
    """A mounted virtio-fs: the device, its FUSE client and the os-like API."""

    def __init__(self, tag: str, device: VirtioFsDevice, *, cache: str = "none",
                 versions: bool = False, writeback: bool = False, timeout: float = 1.0,
                 dax: str = "never", window_size: int = 1 << 30) -> None:
        from ..fuse.abi import InitFlags
        from .cache import CacheConfig, CacheMode, CachePolicy
        from .client import REQUESTED_INIT_FLAGS, FuseClient
        from .gos import GuestOS
        self.tag = tag
        self.device = device
        config = CacheConfig(CacheMode(cache) if cache in ("none", "auto", "always") else cache,
                             versions=versions, writeback=writeback, timeout=timeout)
        view = device.version_view() if versions else None    # EOPNOTSUPP: the host has none
        self.client = FuseClient(device, cache=CachePolicy(config, versions=view))
        flags = REQUESTED_INIT_FLAGS
        if device.notify is not None:       # blocking locks can be waited for: locks between guests
            flags |= InitFlags.POSIX_LOCKS | InitFlags.FLOCK_LOCKS
        if dax != "never":
            flags |= InitFlags.MAP_ALIGNMENT
        if dax == "inode":                  # fs/fuse/inode.c: per-inode DAX is offered in flags2
            flags |= InitFlags.HAS_INODE_DAX | InitFlags.INIT_EXT
        self.client.init(flags=flags)
        if dax != "never":
            from .daxfiles import DaxFiles
            self.client.dax = DaxFiles(self.client, device, window_size,   # EOPNOTSUPP: no window
                                       mode=dax)
        self.os = GuestOS(self.client)

    def unmount(self) -> None:
        """Drain in-flight requests, send DESTROY, stop the rings."""
        dev = self.device
        dev.drain()
        try:
            if not dev.disconnected:
                self.client.destroy()
        except OSError as exc:
            log.info("unmount %s: %s", self.tag, exc)
        dev.drain()
        if self.client.dax is not None:
            self.client.dax.close()


class GuestMachine:
    """One guest: RAM in POSIX shared memory and virtio-fs devices keyed by tag."""

    def __init__(self, name: str, *, ram_name: str, ram_size: int = 64 << 20) -> None:
        self.name = name
        self.ram = GuestRam(ram_name, ram_size)
        self.devices: dict[str, VirtioFsDevice] = {}
        self.mounts: dict[str, Mount] = {}
        self._lock = threading.Lock()

    def add_device(self, socket_path: str, tag: str, *, num_request_queues: int = 1,
                   queue_size: int = 128, spin_ns: int | None = None,
                   notifications: bool = True) -> VirtioFsDevice:
        """Plug a vhost-user-fs device connected to ``socket_path``; EEXIST if ``tag`` is taken.
        ``notifications``: negotiate the notification queue if the host offers it (then the mount
        asks for POSIX_LOCKS and FLOCK_LOCKS: locks are shared with the host's other guests)."""
        config = DeviceConfig(tag, num_request_queues, queue_size, notifications)   # EINVAL if bad
        with self._lock:
            if tag in self.devices:
                raise OSError(errno.EEXIST, f"virtio-fs: a device with tag <{tag}> already exists in {self.name}")
            dev = VirtioFsDevice(self.ram, config, spin_ns=spin_ns)
            self.devices[tag] = dev
        try:
            dev.connect(socket_path)
        except BaseException:
            with self._lock:
                del self.devices[tag]
            dev.shutdown()
            raise
        return dev

    def mount(self, tag: str, *, cache: str = "none", versions: bool = False,
              writeback: bool = False, timeout: float = 1.0, dax: str = "never",
              window_size: int = 1 << 30) -> Mount:
        """Mount the device with ``tag`` (``mount -t virtiofs -o cache=…``); EINVAL naming the
        tag if there is none (as Linux says); EOPNOTSUPP for ``versions`` when the host has no
        metadata-version table."""
        dev = self.devices.get(tag)
        if dev is None:
            raise OSError(errno.EINVAL, f"virtio-fs: tag <{tag}> not found")
        if tag in self.mounts:
            raise OSError(errno.EBUSY, f"virtio-fs: tag <{tag}> is already mounted")
        if dax not in ("never", "always", "inode"):
            raise OSError(errno.EINVAL, f"virtio-fs: dax={dax} is not supported (never, always, inode)")
        m = Mount(tag, dev, cache=cache, versions=versions, writeback=writeback, timeout=timeout,
                  dax=dax, window_size=window_size)
        self.mounts[tag] = m
        return m

    def umount(self, tag: str) -> None:
        m = self.mounts.pop(tag, None)
        if m is None:
            raise OSError(errno.EINVAL, f"virtio-fs: tag <{tag}> is not mounted")
        m.unmount()

    def close(self) -> None:
        for tag in list(self.mounts):
            self.umount(tag)
        for dev in self.devices.values():
            dev.shutdown()
        self.devices.clear()
        self.ram.close()
