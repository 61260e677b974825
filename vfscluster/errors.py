"""One exception tree for vfscluster.

::

    VfsClusterError
    ├── ConfigError (also ValueError)      a user's mistake: topology, CLI option, device config
    ├── MemberExited (also RuntimeError)   a cluster member could not start, or exited under it
    └── ProtocolError                      a protocol was broken
        ├── LocalProtocolError             ...by us: a bug on this side, or a request we refuse to build
        └── RemoteProtocolError            ...by the peer: garbage we received and refused
            ├── QueueError                 a malformed virtqueue: bad descriptor chain, index, address
            └── VhostUserError             a malformed vhost-user message: size, flags, fds, payload

Errors that a guest workload sees are never from this tree: they are ``OSError`` with the errno
that ``os`` would raise on a local file system.
"""

from __future__ import annotations


class VfsClusterError(Exception):
    """Base of every vfscluster-specific exception."""


class ConfigError(VfsClusterError, ValueError):
    """A configuration mistake (topology, command-line option, device config)."""


class MemberExited(VfsClusterError, RuntimeError):
    """A member (host or guest process) of a cluster could not start, or exited under the running
    cluster: killed, or crashed."""


class ProtocolError(VfsClusterError):
    """A protocol (FUSE, virtio, vhost-user) was broken."""


class LocalProtocolError(ProtocolError):
    """This side broke the protocol: a bug here, or a request we refuse to build."""


class RemoteProtocolError(ProtocolError):
    """The peer sent something malformed; it was refused."""


class QueueError(RemoteProtocolError):
    """A virtqueue is malformed: descriptor chain, ring index or guest address out of bounds."""


class VhostUserError(RemoteProtocolError):
    """A vhost-user message was malformed: wrong size, flags, fd count or payload."""


__all__ = [
    "VfsClusterError",
    "ConfigError",
    "MemberExited",
    "ProtocolError",
    "LocalProtocolError",
    "RemoteProtocolError",
    "QueueError",
    "VhostUserError",
]
