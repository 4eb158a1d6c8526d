"""The member's Prometheus metrics, under etcd's names so etcd's dashboards and alerts work.

Two kinds of values, kept apart on purpose:

- Events on the hot path (a WAL fsync, an applied batch, a failed proposal) are counted or
  observed the moment they happen, through the small methods of `ServerMetrics`. Each is a
  lock-protected add in prometheus-client; nothing else runs per request.
- State that already lives in the member (leader, indexes, database size, key count, watchers)
  is read only when Prometheus scrapes: the member hands in a function returning a
  `MemberSnapshot`, and a collector turns it into gauges. Nothing is updated between scrapes.

Everything registers on the registry passed in, never on prometheus-client's global one, so
several members can live in one test process and importing this module has no effect. This
module imports nothing of raftkv's; callers pass plain values (see `FlushLike`).

etcd keeps some odd types for compatibility (`etcd_server_proposals_committed_total` is a gauge
in etcd), and this module copies them: a dashboard written for etcd must read the same series.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol

from prometheus_client import (
    CollectorRegistry,
    Counter,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from raftkv.observability.network import PeerTrafficMetrics
from raftkv.observability.promutil import (
    BATCH_BUCKETS,
    DISK_BUCKETS,
    SNAPSHOT_BUCKETS,
    member_hex,
)

# The version pair /version and etcd_server_version report (what Status says too).
SERVER_VERSION = "3.4.0"
CLUSTER_VERSION = "3.4.0"


class FlushLike(Protocol):
    """One WAL group commit (raftkv.storage.wal.FlushStats has this shape)."""

    calls: int
    entries: int
    fsync_seconds: float


@dataclass(frozen=True)
class MemberSnapshot:
    """The member's state at scrape time; every field becomes one of etcd's gauges."""

    member_id: int
    has_leader: bool
    is_leader: bool
    is_learner: bool
    leader_changes_seen: int
    proposals_committed: int
    proposals_applied: int
    proposals_pending: int
    quota_backend_bytes: int
    db_total_size_bytes: int
    db_in_use_bytes: int
    keys_total: int
    current_revision: int
    compact_revision: int
    watchers: int
    slow_watchers: int
    leases: int
    # Peers with an open message stream (etcd_network_active_peers{Local,Remote}).
    active_peers: tuple[int, ...] = ()
    # gRPC bytes through the client port (counted by the front that shares it with HTTP).
    client_grpc_received_bytes: int = 0
    client_grpc_sent_bytes: int = 0


class ServerMetrics:
    """The metrics one member reports; see the module docstring for the two kinds."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.peers = PeerTrafficMetrics(registry)
        # process_* (etcdctl check datascale reads process_resident_memory_bytes), python_*.
        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)
        GCCollector(registry=registry)
        self._wal_fsync = Histogram(
            "etcd_disk_wal_fsync_duration_seconds",
            "The latency distributions of fsync called by WAL.",
            buckets=DISK_BUCKETS,
            registry=registry,
        )
        self._backend_commit = Histogram(
            "etcd_disk_backend_commit_duration_seconds",
            "The latency distributions of commit called by backend.",
            buckets=DISK_BUCKETS,
            registry=registry,
        )
        self._snapshot_save = Histogram(
            "etcd_debugging_snap_save_total_duration_seconds",
            "The total latency distributions of save called by snapshot.",
            buckets=SNAPSHOT_BUCKETS,
            registry=registry,
        )
        self._proposals_failed = Counter(
            "etcd_server_proposals_failed_total",
            "The total number of failed proposals seen.",
            registry=registry,
        )
        self._heartbeat_failures = Counter(
            "etcd_server_heartbeat_send_failures_total",
            "The total number of leader heartbeat send failures (likely overloaded from slow "
            "disk).",
            registry=registry,
        )
        self._lease_expired = Counter(
            "etcd_debugging_server_lease_expired_total",
            "The total number of expired leases.",
            registry=registry,
        )
        # etcd's health counters have no `_total` suffix, which prometheus-client's Counter
        # would add; they are plain integers exposed by the member collector.
        self.health_successes = 0
        self.health_failures = 0
        self._group_commit = Histogram(
            "raftkv_wal_group_commit_entries",
            "Raft entries made durable by one WAL fsync (group commit batch size).",
            buckets=BATCH_BUCKETS,
            registry=registry,
        )
        self._group_commit_calls = Histogram(
            "raftkv_wal_group_commit_calls",
            "WAL save calls covered by one fsync.",
            buckets=BATCH_BUCKETS,
            registry=registry,
        )
        self._apply_batch = Histogram(
            "raftkv_apply_batch_entries",
            "Committed entries applied in one batch (one backend transaction).",
            buckets=BATCH_BUCKETS,
            registry=registry,
        )

    # ---- hot-path events -------------------------------------------------------------------

    def wal_flushed(self, stats: FlushLike) -> None:
        """A WAL group commit finished (GroupCommitWAL's `on_flush`)."""
        self._wal_fsync.observe(stats.fsync_seconds)
        self._group_commit.observe(stats.entries)
        self._group_commit_calls.observe(stats.calls)

    def applied_batch(self, entries: int, commit_seconds: float) -> None:
        """One batch of committed entries applied and committed to the backend."""
        self._apply_batch.observe(entries)
        self._backend_commit.observe(commit_seconds)

    def snapshot_saved(self, seconds: float) -> None:
        self._snapshot_save.observe(seconds)

    def proposal_failed(self) -> None:
        self._proposals_failed.inc()

    def heartbeat_late(self, member_id: int, seconds_late: float) -> None:
        self._heartbeat_failures.inc()

    def lease_expired(self) -> None:
        self._lease_expired.inc()

    def health_checked(self, healthy: bool) -> None:
        if healthy:
            self.health_successes += 1
        else:
            self.health_failures += 1

    # ---- scrape-time state -----------------------------------------------------------------

    def observe_member(self, snapshot: Callable[[], MemberSnapshot]) -> None:
        """Report the member's state, read by calling `snapshot` at every scrape."""
        self.registry.register(_MemberCollector(snapshot, self))


def _raw_counter(name: str, help_text: str, value: float) -> Metric:
    """A counter exposed under exactly `name` (etcd has a few without `_total`)."""
    metric = Metric(name, help_text, "counter")
    metric.add_sample(name, {}, value)
    return metric


class _MemberCollector(Collector):
    def __init__(self, snapshot: Callable[[], MemberSnapshot], metrics: ServerMetrics) -> None:
        self._snapshot = snapshot
        self._metrics = metrics

    def describe(self) -> list[Metric]:
        # Registration must not call the member (it may not be started yet); no name checks.
        return []

    def collect(self) -> Iterator[Metric]:
        s = self._snapshot()
        me = member_hex(s.member_id)

        def gauge(name: str, help_text: str, value: float) -> GaugeMetricFamily:
            return GaugeMetricFamily(name, help_text, value=value)

        yield gauge(
            "etcd_server_has_leader",
            "Whether or not a leader exists. 1 is existence, 0 is not.",
            int(s.has_leader),
        )
        yield gauge(
            "etcd_server_is_leader",
            "Whether or not this member is a leader. 1 if is, 0 otherwise.",
            int(s.is_leader),
        )
        yield gauge(
            "etcd_server_is_learner",
            "Whether or not this member is a learner. 1 if is, 0 otherwise.",
            int(s.is_learner),
        )
        yield CounterMetricFamily(
            "etcd_server_leader_changes_seen",
            "The number of leader changes seen.",
            value=s.leader_changes_seen,
        )
        yield gauge(
            "etcd_server_proposals_committed_total",
            "The total number of consensus proposals committed.",
            s.proposals_committed,
        )
        yield gauge(
            "etcd_server_proposals_applied_total",
            "The total number of consensus proposals applied.",
            s.proposals_applied,
        )
        yield gauge(
            "etcd_server_proposals_pending",
            "The current number of pending proposals to commit.",
            s.proposals_pending,
        )
        yield gauge(
            "etcd_server_quota_backend_bytes",
            "Current backend storage quota size in bytes.",
            s.quota_backend_bytes,
        )
        yield gauge(
            "etcd_mvcc_db_total_size_in_bytes",
            "Total size of the underlying database physically allocated in bytes.",
            s.db_total_size_bytes,
        )
        yield gauge(
            "etcd_mvcc_db_total_size_in_use_in_bytes",
            "Total size of the underlying database logically in use in bytes.",
            s.db_in_use_bytes,
        )
        yield gauge("etcd_debugging_mvcc_keys_total", "Total number of keys.", s.keys_total)
        yield gauge(
            "etcd_debugging_mvcc_current_revision",
            "The current revision of store.",
            s.current_revision,
        )
        yield gauge(
            "etcd_debugging_mvcc_compact_revision",
            "The revision of the last compaction in store.",
            max(s.compact_revision, 0),
        )
        yield gauge("etcd_debugging_mvcc_watcher_total", "Total number of watchers.", s.watchers)
        yield gauge(
            "etcd_debugging_mvcc_slow_watcher_total",
            "Total number of unsynced slow watchers.",
            s.slow_watchers,
        )
        yield gauge("raftkv_lease_active", "Leases that exist on this member.", s.leases)
        yield CounterMetricFamily(
            "etcd_network_client_grpc_received_bytes",
            "The total number of bytes received from grpc clients.",
            value=s.client_grpc_received_bytes,
        )
        yield CounterMetricFamily(
            "etcd_network_client_grpc_sent_bytes",
            "The total number of bytes sent to grpc clients.",
            value=s.client_grpc_sent_bytes,
        )
        yield _raw_counter(
            "etcd_server_health_success",
            "The total number of successful health checks",
            self._metrics.health_successes,
        )
        yield _raw_counter(
            "etcd_server_health_failures",
            "The total number of failed health checks",
            self._metrics.health_failures,
        )
        active = GaugeMetricFamily(
            "etcd_network_active_peers",
            "The current number of active peer connections.",
            labels=["Local", "Remote"],
        )
        for peer in s.active_peers:
            active.add_metric([me, member_hex(peer)], 1)
        yield active
        for name, help_text, label, value in (
            (
                "etcd_server_id",
                "Server or member ID in hexadecimal format. 1 for 'server_id' label with "
                "current ID.",
                "server_id",
                me,
            ),
            (
                "etcd_server_version",
                "Which version is running. 1 for 'server_version' label with current version.",
                "server_version",
                SERVER_VERSION,
            ),
            (
                "etcd_cluster_version",
                "Which version is running. 1 for 'cluster_version' label with current cluster "
                "version",
                "cluster_version",
                CLUSTER_VERSION.rsplit(".", 1)[0],
            ),
        ):
            family = GaugeMetricFamily(name, help_text, labels=[label])
            family.add_metric([value], 1)
            yield family
