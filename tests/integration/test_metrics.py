"""HTTP beside gRPC on real members: /metrics, /health, /version on the client port while
etcdctl uses the same port, `--listen-metrics-urls`, and `etcdctl check datascale` (which reads
`<endpoint>/metrics`)."""

from __future__ import annotations

import json
import re
import time
import urllib.error
import urllib.request
from pathlib import Path

import grpc
import pytest
from raftkv.pb.etcdserverpb import rpc_pb2, rpc_pb2_grpc

from tests.support.etcd import etcdctl, free_port
from tests.support.fixtures import require_etcd
from tests.support.raftkv import RaftKVCluster, start_raftkv_cluster

pytestmark = pytest.mark.integration


def get(url: str, timeout: float = 5.0) -> tuple[int, str, bytes]:
    """(status, content type, body), whatever the status (curl's view)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.headers.get("Content-Type", ""), response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers.get("Content-Type", ""), error.read()


def metric(text: str, name: str) -> float:
    match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    assert match, f"{name} not in /metrics"
    return float(match.group(1))


def test_http_endpoints_share_the_client_port_with_grpc(cluster3: RaftKVCluster) -> None:
    require_etcd()
    put = etcdctl(cluster3.endpoints, "put", "observability/key", "value")
    assert put.returncode == 0, put.stderr
    for member in cluster3.members:
        status, kind, body = get(f"{member.client_url}/health")
        assert (status, body) == (200, b'{"health":"true"}')
        status, kind, body = get(f"{member.client_url}/version")
        assert (status, kind) == (200, "application/json")
        assert json.loads(body) == {"etcdserver": "3.4.0", "etcdcluster": "3.4.0"}
        status, kind, body = get(f"{member.client_url}/metrics")
        assert status == 200 and kind.startswith("text/plain; version=0.0.4")
        text = body.decode()
        assert metric(text, "etcd_server_has_leader") == 1
        assert metric(text, "etcd_debugging_mvcc_keys_total") == 1
        assert metric(text, "process_resident_memory_bytes") > 0
        assert metric(text, "etcd_network_client_grpc_received_bytes_total") > 0
    leaders = [
        metric(get(f"{m.client_url}/metrics")[2].decode(), "etcd_server_is_leader")
        for m in cluster3.members
    ]
    assert sorted(leaders) == [0, 0, 1]
    # gRPC still answers on the very same port.
    got = etcdctl(cluster3.endpoints, "get", "observability/key", "--print-value-only")
    assert got.stdout.strip() == "value"


def test_health_turns_false_when_the_quorum_is_gone(cluster3: RaftKVCluster) -> None:
    survivor, *others = cluster3.members
    for member in others:
        member.kill()
    deadline = time.monotonic() + 15
    while True:
        status, kind, body = get(f"{survivor.client_url}/health")
        if status == 503 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert (status, kind, body) == (503, "text/plain; charset=utf-8", b'{"health":"false"}\n')
    assert get(f"{survivor.client_url}/livez")[0] == 200
    assert get(f"{survivor.client_url}/readyz")[0] == 503
    deadline = time.monotonic() + 15
    text = ""
    while time.monotonic() < deadline:
        text = get(f"{survivor.client_url}/metrics")[2].decode()
        if metric(text, "etcd_server_has_leader") == 0:
            break
        time.sleep(0.2)
    assert metric(text, "etcd_server_has_leader") == 0
    assert metric(text, "etcd_server_health_failures") >= 1


def test_listen_metrics_urls_serve_metrics_and_health_only(tmp_path: Path) -> None:
    metrics_url = f"http://127.0.0.1:{free_port()}"
    with start_raftkv_cluster(tmp_path, size=1, listen_metrics_urls=metrics_url) as cluster:
        status, _, body = get(f"{metrics_url}/metrics")
        assert status == 200
        assert metric(body.decode(), "etcd_server_is_leader") == 1
        assert get(f"{metrics_url}/health")[:3:2] == (200, b'{"health":"true"}')
        assert get(f"{metrics_url}/version")[0] == 404
        # Plain HTTP there: a gRPC client gets no etcd service.
        host = metrics_url.removeprefix("http://")
        with grpc.insecure_channel(host) as channel, pytest.raises(grpc.RpcError):
            rpc_pb2_grpc.KVStub(channel).Range(rpc_pb2.RangeRequest(key=b"k"), timeout=2)
        assert cluster.members[0].alive


def test_etcdctl_check_datascale(cluster3: RaftKVCluster) -> None:
    """etcd's own data-scale check: 10,000 puts of 1 KiB by 50 clients, with the memory read
    from `<endpoint>/metrics` (process_resident_memory_bytes) before and after, then a delete."""
    require_etcd()
    result = etcdctl(cluster3.endpoints, "check", "datascale", "--load=s", timeout=240)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    match = re.search(r"PASS: Approximate system memory used : ([0-9.]+) MB", result.stdout)
    assert match, result.stdout[-2000:]
    assert float(match.group(1)) > 0
    # It cleaned up after itself (its delete went through raftkv too).
    prefix = b"/etcdctl-check-datascale/"
    with grpc.insecure_channel(cluster3.members[0].target) as channel:
        left = rpc_pb2_grpc.KVStub(channel).Range(
            rpc_pb2.RangeRequest(key=prefix, range_end=prefix[:-1] + b"0", count_only=True),
            timeout=5,
        )
    assert left.count == 0
