"""The workloads against real servers: tiny runs on etcd, and a server lacking services.

The smoke tests run each client-side workload for a fraction of a second against a real
1-member etcd (shared by the module, each workload under its own prefix), so a broken client,
a wrong stub, a lost watch event or a metric that is never produced shows up in seconds.
The others point workloads and `etcdctl check perf` at a gRPC server that implements nothing:
they must report "unsupported" (what raftkv gets while it lacks a service), not crash."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import grpc
import pytest

from bench.checkperf import run_check_perf
from bench.clusters import Cluster, Kind, Member
from bench.load import Unsupported
from bench.workloads import QUICK, Profile, lease_keepalive, memory, puts, reads, watch_fanout
from tests.support.etcd import EtcdCluster, free_port, start_etcd_cluster
from tests.support.fixtures import require_etcd

pytestmark = pytest.mark.integration

TINY = replace(
    QUICK,
    seconds=0.3,
    warmup=0.05,
    put_concurrency=(4,),
    read_concurrency=4,
    read_keys=50,
    watchers=6,
    watch_streams=2,
    watch_rate=50,
    watch_burst=20,
    lease_streams=2,
)


def _bench_cluster(root: Path, targets: list[tuple[str, object]]) -> Cluster:
    """A bench Cluster over processes somebody else started (and will stop)."""
    members = [
        Member(
            name=f"m{i}",
            client_url=f"http://{target}",
            peer_url="",
            data_dir=root,
            log_path=root / "log",
            argv=[],
            process=process,  # type: ignore[arg-type]
        )
        for i, (target, process) in enumerate(targets)
    ]
    return Cluster(kind=Kind.ETCD, root=root, members=members)


def _on_etcd(etcd: EtcdCluster, tmp_path: Path) -> Cluster:
    return _bench_cluster(tmp_path, [(etcd.grpc_targets[0], etcd.members[0].process)])


def test_put_workload_on_real_etcd(etcd_cluster: EtcdCluster, tmp_path: Path) -> None:
    metrics = {m.name: m for m in asyncio.run(puts(_on_etcd(etcd_cluster, tmp_path), TINY))}
    for label in ("1 client", "4 clients"):
        assert metrics[f"{label}: throughput"].value > 0
        assert 0 < metrics[f"{label}: p50"].value <= metrics[f"{label}: p99"].value
    assert metrics["4 clients: member CPU per op"].value > 0
    assert not any("errors" in name for name in metrics)


def test_read_workload_on_real_etcd(etcd_cluster: EtcdCluster, tmp_path: Path) -> None:
    metrics = {m.name: m for m in asyncio.run(reads(_on_etcd(etcd_cluster, tmp_path), TINY))}
    for label in ("linearizable, 1 client", "linearizable, 4 clients", "serializable, 4 clients"):
        assert metrics[f"{label}: throughput"].value > 0
    assert not any("errors" in name for name in metrics)


def test_watch_workload_delivers_every_event(etcd_cluster: EtcdCluster, tmp_path: Path) -> None:
    metrics = {m.name: m for m in asyncio.run(watch_fanout(_on_etcd(etcd_cluster, tmp_path), TINY))}
    assert metrics["paced: events delivered"].value == 100
    assert metrics["burst: events delivered"].value == 100
    assert 0 < metrics["paced: delivery p50"].value < 1000
    assert metrics["burst: events/s delivered"].value > 0


def test_lease_workload_on_real_etcd(etcd_cluster: EtcdCluster, tmp_path: Path) -> None:
    metrics = {
        m.name: m for m in asyncio.run(lease_keepalive(_on_etcd(etcd_cluster, tmp_path), TINY))
    }
    assert metrics["2 streams: throughput"].value > 0


@pytest.fixture
def empty_server() -> Iterator[str]:
    """A real gRPC server on 127.0.0.1 with no services: every call is UNIMPLEMENTED."""
    server = grpc.server(ThreadPoolExecutor(max_workers=1))
    target = f"127.0.0.1:{free_port()}"
    server.add_insecure_port(target)
    server.start()
    try:
        yield target
    finally:
        server.stop(grace=None)


@pytest.mark.parametrize("workload", [lease_keepalive, watch_fanout])
def test_missing_service_is_unsupported(
    workload: Callable[[Cluster, Profile], Awaitable[object]], empty_server: str, tmp_path: Path
) -> None:
    cluster = _bench_cluster(tmp_path, [(empty_server, None)])
    with pytest.raises(Unsupported, match="UNIMPLEMENTED"):
        asyncio.run(workload(cluster, TINY))


def test_check_perf_on_a_server_without_kv_is_unsupported(empty_server: str) -> None:
    require_etcd()
    with pytest.raises(Unsupported):
        run_check_perf(f"http://{empty_server}", "s", slack_s=20)


def test_memory_keeps_its_numbers_when_the_load_fails(tmp_path: Path) -> None:
    # etcd refuses every 128-put Txn above 4 KiB: the load fails on its first batch.
    require_etcd()
    with start_etcd_cluster(tmp_path, max_request_bytes=4096) as etcd:
        cluster = _on_etcd(etcd, tmp_path)
        metrics = {m.name: m.value for m in asyncio.run(memory(cluster, TINY))}
    assert metrics["idle RSS, largest member"] > 0
    assert "request is too large" in str(metrics["100k keys: not reached"])
    assert "100k keys: RSS, largest member" not in metrics


def test_the_tracing_benchmark_exports_spans_only_when_tracing_is_on() -> None:
    run = subprocess.run(
        [sys.executable, "-m", "bench.tracing_bench", "--seconds", "0.3", "--rounds", "1"],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    rows = {row["tracing"]: row for row in json.loads(run.stdout)["settings"]}
    assert set(rows) == {"off", "1 % sampled", "100 % sampled"}
    assert rows["off"]["spans exported"] == 0
    # Each Put makes a dozen spans on a 3-member cluster (leader and followers).
    assert rows["100 % sampled"]["spans exported"] > 10 * 10
    assert all(row["puts/s (median)"] > 0 for row in rows.values())
