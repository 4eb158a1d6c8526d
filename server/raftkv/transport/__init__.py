"""Peer messages and snapshot streaming between raftkv members.

`PeerTransport` is the gRPC implementation used in production; `InMemoryNetwork` and
`InMemoryTransport` give node-level tests the same `Transport` surface without sockets.
"""

from raftkv.transport.memory import InMemoryNetwork, InMemoryTransport
from raftkv.transport.peer_transport import PeerTransport
from raftkv.transport.protocols import NoopPeerMetrics, PeerMetrics, PeerStats, Transport

__all__ = [
    "InMemoryNetwork",
    "InMemoryTransport",
    "NoopPeerMetrics",
    "PeerMetrics",
    "PeerStats",
    "PeerTransport",
    "Transport",
]
