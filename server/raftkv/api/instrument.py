"""Connects a running member to observability: its scrape-time state and its health.

observability imports nothing of raftkv's, so this is where the member's internals are read:
`member_snapshot` turns a `MemberServer` into the `MemberSnapshot` the metrics collector
reports, and `MemberHealth` answers the questions /health and /readyz ask. Both run on the
event loop (a scrape is an HTTP request there), so they may read the member's state directly.
"""

from __future__ import annotations

from collections.abc import Callable

from google.protobuf.descriptor import ServiceDescriptor

from raftkv.api.http.pump import SplicePump
from raftkv.node.server import MemberServer
from raftkv.observability.metrics import MemberSnapshot
from raftkv.pb.etcdserverpb import rpc_pb2
from raftkv.pb.v3electionpb import v3election_pb2
from raftkv.pb.v3lockpb import v3lock_pb2


def grpc_services() -> list[ServiceDescriptor]:
    """Every etcd service whose gRPC series start at zero (as etcd's do, Auth included)."""
    return [
        *rpc_pb2.DESCRIPTOR.services_by_name.values(),
        *v3lock_pb2.DESCRIPTOR.services_by_name.values(),
        *v3election_pb2.DESCRIPTOR.services_by_name.values(),
    ]


def member_snapshot(member: MemberServer, pump: SplicePump | None = None) -> MemberSnapshot:
    node = member.node
    applier = member.applier
    me = applier.membership.members.get(member.member_id)
    synced, unsynced = member.watchable.watcher_counts
    active: list[int] = []
    for peer_id in applier.membership.members:
        if peer_id == member.member_id:
            continue
        try:
            if member.transport.peer_stats(peer_id).connected:
                active.append(peer_id)
        except KeyError:  # not yet (or no longer) a transport peer
            pass
    return MemberSnapshot(
        member_id=member.member_id,
        has_leader=node.leader != 0,
        is_leader=node.is_leader,
        is_learner=me is not None and me.is_learner,
        leader_changes_seen=node.leader_changes_seen,
        proposals_committed=node.committed_index,
        proposals_applied=node.applied_index,
        proposals_pending=node.pending_proposals,
        quota_backend_bytes=member.config.effective_quota_backend_bytes,
        db_total_size_bytes=applier.backend.size(),
        db_in_use_bytes=applier.backend.size_in_use(),
        keys_total=applier.store.key_count(),
        current_revision=applier.store.current_revision,
        compact_revision=applier.store.compact_revision,
        watchers=synced + unsynced,
        slow_watchers=unsynced,
        leases=len(applier.lessor.leases()),
        active_peers=tuple(active),
        client_grpc_received_bytes=pump.bytes_from_clients if pump else 0,
        client_grpc_sent_bytes=pump.bytes_to_clients if pump else 0,
    )


def snapshot_source(member: MemberServer, pump: SplicePump | None) -> Callable[[], MemberSnapshot]:
    return lambda: member_snapshot(member, pump)


class MemberHealth:
    """The member as /health and /readyz see it (raftkv.api.http.endpoints.HealthSource)."""

    def __init__(self, member: MemberServer) -> None:
        self._member = member

    def alarms(self) -> list[str]:
        return [rpc_pb2.AlarmType.Name(a.alarm) for a in self._member.applier.alarms.get()]

    def has_leader(self) -> bool:
        return self._member.node.leader != 0

    def caught_up(self) -> bool:
        node = self._member.node
        return node.applied_index >= node.committed_index

    async def linearizable_read(self) -> None:
        await self._member.node.read_barrier()
