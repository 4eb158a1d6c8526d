"""The member's metrics come out under etcd's names, types, labels and buckets."""

from __future__ import annotations

import asyncio

import prometheus_client
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from raftkv.observability.metrics import MemberSnapshot, ServerMetrics
from raftkv.observability.network import HeartbeatMonitor, probe_peers_forever
from raftkv.storage.wal import FlushStats

# Upper bounds etcd 3.4 exposes for its disk histograms (read from a real etcd's /metrics).
ETCD_DISK_BOUNDS = [0.001 * 2**i for i in range(14)]


def snapshot(**overrides: object) -> MemberSnapshot:
    fields: dict[str, object] = {
        "member_id": 0x8E9E05C52164694D,
        "has_leader": True,
        "is_leader": False,
        "is_learner": False,
        "leader_changes_seen": 2,
        "proposals_committed": 40,
        "proposals_applied": 39,
        "proposals_pending": 1,
        "quota_backend_bytes": 2 * 1024**3,
        "db_total_size_bytes": 81920,
        "db_in_use_bytes": 40960,
        "keys_total": 7,
        "current_revision": 12,
        "compact_revision": -1,
        "watchers": 3,
        "slow_watchers": 1,
        "leases": 2,
        "active_peers": (0x91BC3C398FB3C146, 0xFD422379FDA50E48),
        "client_grpc_received_bytes": 1000,
        "client_grpc_sent_bytes": 2000,
    }
    fields.update(overrides)
    return MemberSnapshot(**fields)  # type: ignore[arg-type]


def scrape(registry: CollectorRegistry) -> dict[str, tuple[str, list[tuple[str, dict, float]]]]:
    """name -> (type, [(sample name, labels, value)]) as a Prometheus server would read it."""
    text = generate_latest(registry).decode()
    return {
        family.name: (family.type, [(s.name, s.labels, s.value) for s in family.samples])
        for family in text_string_to_metric_families(text)
    }


def value(families: dict, sample_name: str, **labels: str) -> float:
    for _, samples in families.values():
        for name, sample_labels, v in samples:
            if name == sample_name and all(sample_labels.get(k) == x for k, x in labels.items()):
                return v
    raise KeyError(f"{sample_name}{labels} not exposed")


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


def test_importing_registers_nothing_globally() -> None:
    names = set(prometheus_client.REGISTRY._names_to_collectors)
    assert not [n for n in names if n.startswith(("etcd_", "raftkv_", "grpc_server"))]


def test_member_state_is_read_at_scrape_time_under_etcd_names(registry: CollectorRegistry) -> None:
    metrics = ServerMetrics(registry)
    state = {"snap": snapshot()}
    metrics.observe_member(lambda: state["snap"])
    families = scrape(registry)
    assert value(families, "etcd_server_has_leader") == 1
    assert value(families, "etcd_server_is_leader") == 0
    assert value(families, "etcd_server_leader_changes_seen_total") == 2
    assert value(families, "etcd_server_proposals_committed_total") == 40
    assert value(families, "etcd_server_proposals_applied_total") == 39
    assert value(families, "etcd_server_proposals_pending") == 1
    assert value(families, "etcd_mvcc_db_total_size_in_bytes") == 81920
    assert value(families, "etcd_mvcc_db_total_size_in_use_in_bytes") == 40960
    assert value(families, "etcd_debugging_mvcc_keys_total") == 7
    assert value(families, "etcd_debugging_mvcc_compact_revision") == 0  # -1 before compaction
    assert value(families, "etcd_server_quota_backend_bytes") == 2 * 1024**3
    assert value(families, "etcd_server_id", server_id="8e9e05c52164694d") == 1
    assert value(families, "etcd_cluster_version", cluster_version="3.4") == 1
    assert value(families, "etcd_network_client_grpc_received_bytes_total") == 1000
    assert (
        value(
            families,
            "etcd_network_active_peers",
            Local="8e9e05c52164694d",
            Remote="fd422379fda50e48",
        )
        == 1
    )
    # etcd keeps these as gauges despite the _total suffix; dashboards rely on the series name.
    assert families["etcd_server_proposals_committed_total"][0] == "gauge"
    assert families["etcd_server_leader_changes_seen"][0] == "counter"

    state["snap"] = snapshot(has_leader=False, keys_total=9)
    families = scrape(registry)
    assert value(families, "etcd_server_has_leader") == 0
    assert value(families, "etcd_debugging_mvcc_keys_total") == 9


def test_health_counters_have_etcds_exact_names(registry: CollectorRegistry) -> None:
    metrics = ServerMetrics(registry)
    metrics.observe_member(snapshot)
    metrics.health_checked(True)
    metrics.health_checked(True)
    metrics.health_checked(False)
    text = generate_latest(registry).decode()
    assert "\netcd_server_health_success 2.0\n" in text
    assert "\netcd_server_health_failures 1.0\n" in text


def test_disk_histograms_use_etcds_buckets(registry: CollectorRegistry) -> None:
    metrics = ServerMetrics(registry)
    metrics.wal_flushed(FlushStats(calls=3, entries=5, fsync_seconds=0.003))
    metrics.applied_batch(entries=5, commit_seconds=0.0005)
    families = scrape(registry)
    for name in (
        "etcd_disk_wal_fsync_duration_seconds",
        "etcd_disk_backend_commit_duration_seconds",
    ):
        kind, samples = families[name]
        assert kind == "histogram"
        bounds = [float(labels["le"]) for n, labels, _ in samples if n == f"{name}_bucket"]
        assert bounds[:-1] == pytest.approx(ETCD_DISK_BOUNDS)
    assert value(families, "etcd_disk_wal_fsync_duration_seconds_bucket", le="0.004") == 1
    assert value(families, "etcd_disk_wal_fsync_duration_seconds_bucket", le="0.002") == 0
    assert value(families, "raftkv_wal_group_commit_entries_sum") == 5
    assert value(families, "raftkv_wal_group_commit_calls_sum") == 3
    assert value(families, "raftkv_apply_batch_entries_sum") == 5


def test_process_metrics_are_exposed(registry: CollectorRegistry) -> None:
    ServerMetrics(registry)
    families = scrape(registry)
    # etcdctl check datascale reads this one.
    assert value(families, "process_resident_memory_bytes") > 1_000_000


def test_two_members_in_one_process_do_not_collide() -> None:
    first, second = CollectorRegistry(), CollectorRegistry()
    ServerMetrics(first).proposal_failed()
    ServerMetrics(second)
    assert value(scrape(first), "etcd_server_proposals_failed_total") == 1
    assert value(scrape(second), "etcd_server_proposals_failed_total") == 0


def test_peer_traffic_is_labelled_with_hex_member_ids(registry: CollectorRegistry) -> None:
    peers = ServerMetrics(registry).peers
    peers.bytes_sent(0xABC, 100)
    peers.bytes_sent(0xABC, 50)
    peers.bytes_received(0xDEF, 70)
    peers.send_failed(0xABC, 3)
    peers.observe_rtt(0xABC, 0.0003)
    families = scrape(registry)
    assert value(families, "etcd_network_peer_sent_bytes_total", To="abc") == 150
    assert value(families, "etcd_network_peer_received_bytes_total", From="def") == 70
    assert value(families, "etcd_network_peer_sent_failures_total", To="abc") == 3
    assert value(families, "etcd_network_peer_round_trip_time_seconds_count", To="abc") == 1
    assert (
        value(families, "etcd_network_peer_round_trip_time_seconds_bucket", To="abc", le="0.0004")
        == 1
    )
    peers.forget(0xABC)
    with pytest.raises(KeyError):
        value(scrape(registry), "etcd_network_peer_sent_bytes_total", To="abc")


def test_late_heartbeats_are_counted_as_send_failures(registry: CollectorRegistry) -> None:
    metrics = ServerMetrics(registry)
    now = [0.0]
    monitor = HeartbeatMonitor(0.1, metrics.heartbeat_late, lambda: now[0])
    for t in (0.0, 0.1, 0.2, 0.5, 0.6):  # 0.2 -> 0.5 leaves a 0.3 s gap (> 2 x 0.1 s)
        now[0] = t
        monitor.sent(7)
    monitor.reset()
    now[0] = 9.0
    monitor.sent(7)  # first heartbeat after a leadership change: nothing to compare with
    assert value(scrape(registry), "etcd_server_heartbeat_send_failures_total") == 1


def test_prober_measures_every_peer_and_survives_failures() -> None:
    probed: list[int] = []

    async def probe(member_id: int) -> float:
        probed.append(member_id)
        if member_id == 2:
            raise ConnectionError("peer down")
        return 0.001

    async def run() -> None:
        task = asyncio.create_task(probe_peers_forever(probe, lambda: [1, 2, 3], interval=0.01))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(run())
    assert probed[:6] == [1, 2, 3, 1, 2, 3]
