"""The seams of the transport: what the node calls, and what the transport reports to metrics.

The node depends on `Transport`, not on a concrete class, so that node-level tests can run a
cluster over `InMemoryNetwork` and production runs over gRPC with the same driver code. Metrics go
through the small `PeerMetrics` protocol because the Prometheus side lives in observability,
which the transport must not need in order to run; `NoopPeerMetrics` is the default.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from raftkv.pb.raftpb.peer_pb2 import MembersResponse
from raftkv.pb.raftpb.raft_pb2 import Message

OnMessages = Callable[[list[Message]], None]
"""Receives messages from one peer, in the order that peer sent them. Runs on the event loop."""

OnSnapshot = Callable[[Message, Path], Awaitable[None]]
"""Receives a MsgSnap and the verified, fsynced payload file; the node then owns the file."""

SnapshotProvider = Callable[[Message], Path]
"""Returns the payload file to stream with an outgoing MsgSnap (the MVCC backend file)."""

OnUnreachable = Callable[[int], None]
"""Told the member ID of a peer whose messages were dropped (queue full, or peer down)."""

OnSnapshotStatus = Callable[[int, bool], None]
"""Told `(member_id, failed)` once an outgoing snapshot has been delivered or has failed."""

IsRemoved = Callable[[int], bool]
"""True when a member ID has been removed from the cluster; its messages are refused."""

MemberList = Callable[[], MembersResponse]
"""The cluster ID and the applied member list, served to a member that is joining."""

OnRemoved = Callable[[], None]
"""Told when a peer refuses this member because it has been removed from the cluster."""


class Transport(Protocol):
    """How the node exchanges Raft messages with the other members.

    Duties of the caller: call `send` only after the Ready's entries and hard state are
    persisted (Raft's persist-before-send rule), and only from the event loop the transport was
    started on. `send` never blocks and never raises for an unreachable peer: it drops the
    messages and reports the peer through the `on_unreachable` callback, and Raft retransmits.
    Messages to one peer arrive in the order they were sent or not at all.
    """

    async def start(self, listen_urls: Sequence[str]) -> None: ...

    async def stop(self) -> None: ...

    def add_peer(self, member_id: int, urls: Sequence[str]) -> None: ...

    def update_peer(self, member_id: int, urls: Sequence[str]) -> None: ...

    def remove_peer(self, member_id: int) -> None: ...

    def set_cluster_id(self, cluster_id: int) -> None: ...

    def send(self, messages: Sequence[Message]) -> None: ...


class PeerMetrics(Protocol):
    """Per-peer counters the transport reports; observability provides a Prometheus version."""

    def bytes_sent(self, member_id: int, n: int) -> None: ...

    def bytes_received(self, member_id: int, n: int) -> None: ...

    def send_failed(self, member_id: int, messages: int) -> None: ...

    def observe_rtt(self, member_id: int, seconds: float) -> None: ...


class NoopPeerMetrics:
    """Discards every observation."""

    def bytes_sent(self, member_id: int, n: int) -> None:
        pass

    def bytes_received(self, member_id: int, n: int) -> None:
        pass

    def send_failed(self, member_id: int, messages: int) -> None:
        pass

    def observe_rtt(self, member_id: int, seconds: float) -> None:
        pass


@dataclass
class PeerStats:
    """Counters of the message stream to one peer, since the peer was added."""

    connected: bool = False
    messages_sent: int = 0
    batches_sent: int = 0  # stream writes; fewer than messages_sent when batching works
    messages_dropped: int = 0
    bytes_sent: int = 0
