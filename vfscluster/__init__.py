"""vfscluster: a Python emulation of virtio-fs — guests and a host sharing a directory over vhost-user,
with virtqueues in POSIX shared memory and FUSE on the wire.

Public names::

    from vfscluster import Cluster, Topology
"""

from .cluster.launcher import Cluster, GuestHandle, sweep
from .cluster.topology import GuestSpec, Topology
from .errors import (ConfigError, LocalProtocolError, MemberExited, ProtocolError, QueueError,
                     RemoteProtocolError, VfsClusterError, VhostUserError)

__version__ = "0.1.0"

__all__ = ["Cluster", "GuestHandle", "GuestSpec", "Topology", "sweep", "ConfigError", "LocalProtocolError",
           "MemberExited", "ProtocolError", "QueueError", "RemoteProtocolError", "VfsClusterError", "VhostUserError"]
