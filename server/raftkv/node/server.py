"""One raftkv member: its data dir, Raft node, state machine and peer transport, put together.

Data dir layout (etcd's, with raftkv's file formats):

    <data-dir>/member/wal/        WAL segments (metadata: member ID and cluster ID)
    <data-dir>/member/snap/*.snap Raft snapshots (metadata + cluster info)
    <data-dir>/member/snap/db     the backend database (MVCC, leases, members, ...)

A brand-new member of a new cluster computes every member's ID from `--initial-cluster` exactly
as etcd does, so all founding members agree without talking; Raft then starts from the same
configuration-change entries on each of them. A member with a WAL restarts from it and ignores
the `--initial-cluster*` flags, as etcd does.

A member joining an existing cluster (`--initial-cluster-state=existing`, empty data dir) asks
the other members for the member list to learn its ID and the cluster's (`node.join`), then
starts with an empty log and no configuration: the leader sends it the log or a snapshot, and
the member list comes from applying those. Until its own addition is applied, its peers are the
members the cluster named.

A member that learns it was removed (it applies its own removal, or a peer refuses it for that)
records the removal durably, lets its last messages go out, and stops; its data dir is refused
from then on.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from raftkv.apply.alarms import CORRUPT, NOSPACE
from raftkv.apply.applier import Applier
from raftkv.auth import ROOT, AuthGate, identity
from raftkv.lease import LeaseKeeper, Lessor, min_lease_ttl
from raftkv.membership import Member, compute_cluster_id, compute_member_id
from raftkv.node import compactor, join
from raftkv.node.config import ServerConfig
from raftkv.node.corruption import CorruptionChecker, fetch_hash_kv
from raftkv.node.errors import (
    DataDirError,
    JoinError,
    RequestTimeoutError,
    RequestTooLargeError,
    ServerStoppedError,
)
from raftkv.node.quota import BackendQuota
from raftkv.node.raft_node import LeaderChange, RaftNode
from raftkv.node.raft_tracing import RaftTracer
from raftkv.node.tls import MemberTLS
from raftkv.observability.metrics import ServerMetrics
from raftkv.observability.network import HeartbeatMonitor, probe_peers_forever
from raftkv.observability.tracing import Tracing
from raftkv.pb.etcdserverpb import rpc_pb2
from raftkv.pb.raftpb import raft_pb2 as raftpb
from raftkv.pb.raftpb.peer_pb2 import MembersResponse
from raftkv.pb.serverpb import internal_pb2 as serverpb
from raftkv.raft import Config, MemoryStorage, RawNode
from raftkv.storage.snapshotter import Snapshotter
from raftkv.storage.wal import WAL, GroupCommitWAL
from raftkv.transport import PeerTransport
from raftkv.watch import WatchableStore

log = logging.getLogger(__name__)

# How long a joining member keeps asking the other members for the member list.
JOIN_TIMEOUT = 10.0
# A removed member keeps running this long so its last messages (a leader's hand-over) go out,
# and the others keep their stream to it as long, so it hears that its removal committed.
REMOVED_STOP_DELAY = 1.0


def _varint_size(value: int) -> int:
    size = 1
    while value >= 0x80:
        value >>= 7
        size += 1
    return size


def etcd_request_size(request: serverpb.InternalRequest, member_id: int) -> int:
    """The size etcd compares with --max-request-bytes: its InternalRaftRequest holding the
    request (auth requests have two-byte field tags there) and a header with the request ID (16
    bits of member ID on top, as `RequestIDs` makes it), the user name and the auth revision."""
    kind = request.WhichOneof("request")
    body = getattr(request, kind).ByteSize() if kind else 0
    tag = 2 if kind is not None and kind.startswith("auth") else 1
    header = request.header
    request_id = ((member_id & 0xFFFF) << 48) | ((1 << 48) - 1)
    header_size = 1 + _varint_size(request_id)
    if header.username:
        username = len(header.username.encode())
        header_size += 1 + _varint_size(username) + username
    if header.auth_revision:
        header_size += 1 + _varint_size(header.auth_revision)
    # etcd's header is field 100: a two-byte tag.
    return 2 + _varint_size(header_size) + header_size + tag + _varint_size(body) + body


class MemberServer:
    """What the API layer talks to: proposals, reads, and the identity for response headers."""

    def __init__(
        self,
        config: ServerConfig,
        metrics: ServerMetrics | None = None,
        tracing: Tracing | None = None,
    ) -> None:
        self.config = config
        self.metrics = metrics
        self.tracing = tracing
        self._heartbeats: HeartbeatMonitor | None = None
        self._prober: asyncio.Task[None] | None = None
        member_dir = Path(config.data_dir) / "member"
        self.wal_dir = member_dir / "wal"
        self.snap_dir = member_dir / "snap"
        self.member_id = 0
        self.cluster_id = 0
        self.node: RaftNode
        self.applier: Applier
        self.lease_keeper: LeaseKeeper
        self.watchable: WatchableStore
        self.transport: PeerTransport
        self._known_peers: dict[int, tuple[str, ...]] = {}
        # A joining member's peers, as the cluster listed them, until it applies its own addition.
        self._join_peers: dict[int, tuple[str, ...]] = {}
        self._removal_task: asyncio.Task[None] | None = None
        self._publish_task: asyncio.Task[None] | None = None
        self._compaction_task: asyncio.Task[None] | None = None
        self._auto_compactor: asyncio.Task[None] | None = None
        self._corruption_check: asyncio.Task[None] | None = None
        self.quota: BackendQuota
        self.auth: AuthGate
        self.tls: MemberTLS

    # ---- start and stop ----------------------------------------------------------------------

    async def start(self) -> None:
        metrics = self.metrics
        self.tls = MemberTLS(self.config)
        self.snap_dir.mkdir(parents=True, exist_ok=True)
        lessor = Lessor(
            min_ttl=min_lease_ttl(self.config.election_ticks, self.config.heartbeat_interval_ms)
        )
        self.applier = Applier(
            self.snap_dir / "db",
            max_txn_ops=self.config.max_txn_ops,
            lessor=lessor,
            tokens=self.config.token_provider(),
        )
        # Watchers follow the store's writes and resync when a snapshot replaces the store.
        self.watchable = WatchableStore(self.applier.store, tracing=self.tracing)
        self.applier.add_restore_listener(lambda: self.watchable.restore(self.applier.store))
        if WAL.exists(self.wal_dir):
            rawnode, storage, wal, snapshot_index = self._restart()
            if self.config.initial_cluster_state == "existing":
                await self._check_same_cluster()
        elif self.config.initial_cluster_state == "existing":
            rawnode, storage, wal, snapshot_index = await self._join_existing()
        else:
            rawnode, storage, wal, snapshot_index = self._bootstrap_new()
        snapshotter = Snapshotter(self.snap_dir)
        self.node = RaftNode(
            member_id=self.member_id,
            rawnode=rawnode,
            storage=storage,
            wal=GroupCommitWAL(wal, on_flush=metrics.wal_flushed if metrics else None),
            snapshotter=snapshotter,
            applier=self.applier,
            send=self._send,
            tick_seconds=self.config.heartbeat_interval_ms / 1000,
            election_ticks=self.config.election_ticks,
            snapshot_count=self.config.snapshot_count,
            snapshot_index=snapshot_index,
            request_timeout=self.request_timeout,
            metrics=metrics,
            tracer=RaftTracer(self.tracing, self.member_id) if self.tracing else None,
        )
        self.auth = AuthGate(
            lambda: self.applier.auth.store,
            self.node.wait_applied,
            self.applier.lessor.keys,
            index_wait=self.request_timeout,
            client_cert_auth=self.config.client_tls.cert_auth,
        )
        self.quota = BackendQuota(
            self.config.effective_quota_backend_bytes,
            member_id=self.member_id,
            backend_size=lambda: self.applier.backend.size(),
            nospace_raised=lambda: self.applier.alarms.is_raised(NOSPACE, self.member_id),
            propose=self.node.propose,
        )
        self.transport = PeerTransport(
            member_id=self.member_id,
            cluster_id=self.cluster_id,
            on_messages=self.node.step,
            on_snapshot=self.node.receive_snapshot,
            snapshot_dir=self.snap_dir / "incoming",
            snapshot_provider=self._snapshot_payload,
            on_unreachable=self.node.report_unreachable,
            on_snapshot_status=self.node.report_snapshot,
            # Through `self.applier`: a snapshot restore replaces the membership object.
            is_removed=lambda member_id: member_id in self.applier.membership.removed,
            member_list=self._members_response,
            on_removed=lambda: self._leave("a peer refused it as removed"),
            metrics=metrics.peers if metrics else None,
            channel_tls=self.tls.peer_channels,
            server_credentials=self.tls.peer.grpc_credentials() if self.tls.peer else None,
        )
        self._sync_peers()
        self.node.add_apply_listener(self._sync_peers)
        self.node.add_apply_listener(self._check_removed)
        self.applier.add_restore_listener(self._sync_peers)
        self.applier.add_restore_listener(self._check_removed)
        self.node.add_apply_listener(self._schedule_compaction)
        await self.transport.start([str(url) for url in self.config.listen_peer_urls])
        # The leader alone expires leases; a new leader first extends them by an election timeout.
        self.lease_keeper = LeaseKeeper(
            lessor, self._propose_for_keeper, extend=self.config.election_timeout_ms / 1000
        )
        self.node.add_leader_listener(
            lambda change: self.lease_keeper.on_leadership(change.is_leader)
        )
        self.node.start()
        self.lease_keeper.start()
        self.watchable.start()
        self._publish_task = asyncio.create_task(self._publish_attributes())
        self._auto_compactor = self._start_auto_compactor()
        self._corruption_check = self._start_corruption_check()
        if metrics is not None:
            self._observe_peers(metrics)

    async def stop(self) -> None:
        for task in (
            self._prober,
            self._publish_task,
            self._compaction_task,
            self._auto_compactor,
            self._corruption_check,
            self._removal_task,
        ):
            if task is not None:
                task.cancel()
        await self.lease_keeper.stop()
        await self.watchable.stop()
        await self.node.stop()
        await self.transport.stop()
        await self.node.wal.close()
        self.applier.close()

    @property
    def request_timeout(self) -> float:
        """etcd's: 5 s plus two election timeouts."""
        return 5.0 + 2 * self.config.election_timeout_ms / 1000

    def _raft_config(self, storage: MemoryStorage, applied: int) -> Config:
        return Config(
            id=self.member_id,
            storage=storage,
            rng=random.Random(),
            election_tick=self.config.election_ticks,
            heartbeat_tick=1,
            applied=applied,
            max_size_per_msg=1 << 20,
            max_inflight_msgs=256,
            check_quorum=True,
            pre_vote=True,
        )

    def _bootstrap_new(self) -> tuple[RawNode, MemoryStorage, WAL, int]:
        token = self.config.initial_cluster_token
        founders = [
            Member(
                id=compute_member_id([str(u) for u in urls], token),
                name=name,
                peer_urls=tuple(sorted(str(u) for u in urls)),
            )
            for name, urls in self.config.initial_cluster.items()
        ]
        me = next(m for m in founders if m.name == self.config.name)
        self.member_id = me.id
        self.cluster_id = compute_cluster_id(m.id for m in founders)
        self.applier.membership.set_cluster_id(self.cluster_id)
        self.applier.commit()
        metadata = serverpb.WALMetadata(member_id=self.member_id, cluster_id=self.cluster_id)
        wal = WAL.create(self.wal_dir, metadata.SerializeToString())
        storage = MemoryStorage()
        rawnode = RawNode(self._raft_config(storage, applied=0))
        rawnode.bootstrap([(m.id, m.to_json()) for m in sorted(founders, key=lambda m: m.id)])
        log.info(
            "starting new member %x of cluster %x with %d founding members",
            self.member_id,
            self.cluster_id,
            len(founders),
        )
        return rawnode, storage, wal, 0

    def _restart(self) -> tuple[RawNode, MemoryStorage, WAL, int]:
        wal, contents = WAL.open(self.wal_dir)
        metadata = serverpb.WALMetadata.FromString(contents.metadata)
        self.member_id = metadata.member_id
        self.cluster_id = metadata.cluster_id
        stored_cluster = self.applier.membership.cluster_id
        if stored_cluster and stored_cluster != self.cluster_id:
            raise DataDirError(
                f"data dir {self.config.data_dir} is inconsistent: WAL belongs to cluster "
                f"{self.cluster_id:x} but the database to cluster {stored_cluster:x}"
            )
        if self.member_id in self.applier.membership.removed:
            raise DataDirError(
                f"member {self.member_id:x} has already been removed from the cluster; "
                "start it with a new data dir to add it again"
            )
        storage = MemoryStorage()
        snapshot = Snapshotter(self.snap_dir).load_newest()
        snapshot_index = 0
        if snapshot is not None and snapshot.metadata.index >= contents.snapshot_index:
            storage.apply_snapshot(snapshot)
            snapshot_index = snapshot.metadata.index
        storage.set_hard_state(contents.hard_state)
        storage.append([e for e in contents.entries if e.index > snapshot_index])
        rawnode = RawNode(self._raft_config(storage, applied=snapshot_index))
        log.info(
            "restarting member %x of cluster %x at commit %d (backend applied %d)",
            self.member_id,
            self.cluster_id,
            contents.hard_state.commit,
            self.applier.consistent_index,
        )
        return rawnode, storage, wal, snapshot_index

    # ---- peers -------------------------------------------------------------------------------

    def _send(self, messages: list[raftpb.Message]) -> None:
        if self._heartbeats is not None:
            for message in messages:
                if message.type == raftpb.MSG_HEARTBEAT:
                    self._heartbeats.sent(message.to)
        self.transport.send(messages)

    def _observe_peers(self, metrics: ServerMetrics) -> None:
        """Round trips to peers, and the leader's late heartbeats (etcd's two peer probes)."""
        heartbeats = HeartbeatMonitor(
            self.config.heartbeat_interval_ms / 1000, metrics.heartbeat_late, time.monotonic
        )

        def on_leader_change(change: LeaderChange) -> None:
            heartbeats.reset()

        self.node.add_leader_listener(on_leader_change)
        self._heartbeats = heartbeats
        self._prober = asyncio.create_task(
            probe_peers_forever(self.transport.probe, lambda: list(self._known_peers))
        )

    async def _propose_for_keeper(self, request: serverpb.InternalRequest) -> Any:
        """The lease keeper's proposals; a revoke it proposes is an expiry, made with root's
        rights as etcd makes it (the lease's keys may belong to anyone)."""
        with identity.bound(ROOT):
            return await self._propose_expiry(request)

    async def _propose_expiry(self, request: serverpb.InternalRequest) -> Any:
        if self.tracing is not None and request.HasField("lease_revoke"):
            # An expiry starts a trace of its own: its proposal, replication and apply.
            attributes = {"raftkv.lease_id": request.lease_revoke.ID}
            with self.tracing.span("lease.expire", attributes):
                response = await self.propose(request)
        else:
            response = await self.propose(request)
        if self.metrics is not None and request.HasField("lease_revoke"):
            self.metrics.lease_expired()
        return response

    def _sync_peers(self) -> None:
        """Keep the transport's peers equal to the applied member list."""
        members = {m.id: m.peer_urls for m in self.applier.membership.members.values()}
        if self._join_peers:
            if self.member_id in members:
                self._join_peers = {}
            else:
                members = {**self._join_peers, **members}
        members.pop(self.member_id, None)
        if members == self._known_peers:
            return
        for member_id in self._known_peers.keys() - members.keys():
            # Not at once: the messages queued for it carry the commit of its own removal.
            asyncio.get_running_loop().call_later(
                REMOVED_STOP_DELAY, self.transport.remove_peer, member_id
            )
        for member_id, urls in members.items():
            if member_id not in self._known_peers:
                self.transport.add_peer(member_id, list(urls))
            elif self._known_peers[member_id] != urls:
                self.transport.update_peer(member_id, list(urls))
        self._known_peers = members

    @property
    def is_learner(self) -> bool:
        me = self.applier.membership.get(self.member_id)
        return me is not None and me.is_learner

    def peer_connected(self, member_id: int) -> bool:
        """Whether the message stream to a peer is up (the strict reconfiguration checks)."""
        try:
            return self.transport.peer_stats(member_id).connected
        except KeyError:
            return False

    def _members_response(self) -> MembersResponse:
        membership = self.applier.membership
        return join.members_response(membership.cluster_id, membership.sorted_members())

    # ---- joining and leaving -----------------------------------------------------------------

    def _other_peer_urls(self) -> list[str]:
        return [
            str(url)
            for name, urls in self.config.initial_cluster.items()
            if name != self.config.name
            for url in urls
        ]

    async def _join_existing(self) -> tuple[RawNode, MemoryStorage, WAL, int]:
        asked = self._other_peer_urls()
        remote = await join.fetch_cluster(asked, JOIN_TIMEOUT, self.tls.peer_channels)
        if remote is None:
            raise JoinError(
                "cannot fetch the member list from the other --initial-cluster members "
                f"({', '.join(asked) or 'none listed'}); is the cluster running?"
            )
        urls = {n: [str(u) for u in us] for n, us in self.config.initial_cluster.items()}
        me = join.find_self(remote, urls, self.config.name)
        self.member_id, self.cluster_id = me.id, remote.cluster_id
        self._join_peers = {m.id: m.peer_urls for m in remote.members if m.id != me.id}
        self.applier.membership.set_cluster_id(self.cluster_id)
        self.applier.commit()
        metadata = serverpb.WALMetadata(member_id=self.member_id, cluster_id=self.cluster_id)
        wal = WAL.create(self.wal_dir, metadata.SerializeToString())
        storage = MemoryStorage()
        rawnode = RawNode(self._raft_config(storage, applied=0))
        log.info(
            "joining cluster %x as %s %x; the leader will send the log or a snapshot",
            self.cluster_id,
            "learner" if me.is_learner else "voting member",
            self.member_id,
        )
        return rawnode, storage, wal, 0

    async def _check_same_cluster(self) -> None:
        """Refuse a data dir of another cluster than the one the peers form (when they answer)."""
        remote = await join.fetch_cluster(self._other_peer_urls(), 0, self.tls.peer_channels)
        if remote is not None and remote.cluster_id != self.cluster_id:
            raise DataDirError(
                f"data dir {self.config.data_dir} belongs to cluster {self.cluster_id:x} "
                f"(member {self.member_id:x}), but --initial-cluster names "
                f"{remote.describe()}; refusing to start. To join that cluster, add this member "
                "with `etcdctl member add` and start it with an empty data dir"
            )

    def _check_removed(self) -> None:
        if self.member_id in self.applier.membership.removed:
            self._leave("it applied its own removal")

    def _leave(self, how: str) -> None:
        """This member was removed: make that durable, then stop after a short delay."""
        if self._removal_task is not None:
            return
        log.error(
            "member %x has been removed from cluster %x (%s); stopping. Its data dir cannot be "
            "used again: to rejoin, `etcdctl member add` it and start with an empty data dir",
            self.member_id,
            self.cluster_id,
            how,
        )
        self.applier.membership.mark_removed(self.member_id)
        self.applier.commit_durable()
        self._removal_task = asyncio.create_task(self._stop_after_removal())

    async def _stop_after_removal(self) -> None:
        await asyncio.sleep(REMOVED_STOP_DELAY)
        self.node.halt()

    def _snapshot_payload(self, message: raftpb.Message) -> Path:
        """A consistent copy of the backend to stream beside an outgoing snapshot."""
        index = message.snapshot.metadata.index
        path = self.snap_dir / f"outgoing-{index:016x}.db"
        if not path.exists():
            for old in self.snap_dir.glob("outgoing-*.db"):
                old.unlink(missing_ok=True)
            self.applier.commit()
            self.applier.backend.snapshot_to(path)
        return path

    def _start_auto_compactor(self) -> asyncio.Task[None] | None:
        policy: compactor.Policy
        if self.config.revision_compaction_retain > 0:
            policy = compactor.RevisionCompactionPolicy(self.config.revision_compaction_retain)
        elif self.config.periodic_compaction_seconds > 0:
            policy = compactor.PeriodicCompactionPolicy(self.config.periodic_compaction_seconds)
        else:
            return None

        async def compact(revision: int) -> None:
            request = rpc_pb2.CompactionRequest(revision=revision)
            await self.propose(serverpb.InternalRequest(compaction=request))

        return asyncio.create_task(
            compactor.run_compactor(
                policy,
                clock=time.monotonic,
                current_revision=lambda: self.applier.store.current_revision,
                is_leader=lambda: self.node.is_leader,
                compact=compact,
            )
        )

    def _start_corruption_check(self) -> asyncio.Task[None] | None:
        if self.config.corrupt_check_time_ms <= 0:
            return None

        async def raise_corrupt(member_id: int) -> None:
            alarm = rpc_pb2.AlarmRequest(
                action=rpc_pb2.AlarmRequest.ACTIVATE, memberID=member_id, alarm=CORRUPT
            )
            await self.propose(serverpb.InternalRequest(alarm=alarm))

        checker = CorruptionChecker(
            member_id=self.member_id,
            interval=self.config.corrupt_check_time_ms / 1000,
            timeout=self.request_timeout,
            is_leader=lambda: self.node.is_leader,
            hash_kv=lambda revision: self.applier.store.hash_kv(revision),
            members=lambda: self.applier.membership.sorted_members(),
            read_barrier=self.node.read_barrier,
            raise_alarm=raise_corrupt,
            fetch=functools.partial(fetch_hash_kv, open_channel=self.tls.client_channel),
        )
        return asyncio.create_task(checker.run())

    def _schedule_compaction(self) -> None:
        if self.applier.store.compaction_pending and (
            self._compaction_task is None or self._compaction_task.done()
        ):
            self._compaction_task = asyncio.create_task(self._delete_compacted_rows())

    async def _delete_compacted_rows(self) -> None:
        """Physically delete compacted history in small batches, yielding to requests between."""
        store = self.applier.store
        while store.compact_step():
            self.applier.commit()
            await asyncio.sleep(0.001)
        self.applier.commit()

    async def _publish_attributes(self) -> None:
        """Record this member's name and client URLs in the replicated member list."""
        request = serverpb.InternalRequest(
            member_attributes=serverpb.MemberAttributesRequest(
                member_id=self.member_id,
                name=self.config.name,
                client_urls=[str(u) for u in self.config.advertise_client_urls],
            )
        )
        while True:
            try:
                await self.node.propose(request)
                return
            except asyncio.CancelledError:
                raise
            except Exception as error:
                log.info("publishing member attributes failed (%s); retrying", error)
                await asyncio.sleep(0.5)

    # ---- what the API layer uses -------------------------------------------------------------

    async def propose(self, request: serverpb.InternalRequest) -> Any:
        """Replicate and apply `request` on behalf of the caller bound to the running task
        (`raftkv.auth.identity`), who is named in its header and authorized when it applies."""
        await self.auth.stamp(request.header)
        if etcd_request_size(request, self.member_id) > self.config.max_request_bytes:
            raise RequestTooLargeError()
        await self.quota.enforce(request)
        try:
            response = await self.node.propose(request)
        except (RequestTimeoutError, ServerStoppedError):
            if self.metrics is not None:
                self.metrics.proposal_failed()
            raise
        if response is not None and hasattr(response, "header"):
            self.fill_header(response.header, response.header.revision)
        return response

    def fill_header(self, header: rpc_pb2.ResponseHeader, revision: int = 0) -> None:
        header.cluster_id = self.cluster_id
        header.member_id = self.member_id
        header.revision = revision or self.applier.store.current_revision
        header.raft_term = self.node.term

    def on_leader_change(self, listener: Callable[..., None]) -> None:
        self.node.add_leader_listener(listener)
