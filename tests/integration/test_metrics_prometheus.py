"""The shipped dashboards work against a real Prometheus scraping a live raftkv cluster.

A Prometheus server (Debian's package; `make test` installs it) scrapes a 3-member cluster
every second while a small load writes, watches, reads, grants leases that expire and keeps
others alive. Then every PromQL expression of every server dashboard, with Grafana's template
variables filled in as Grafana would, must return at least one sample that is a number, and
every template variable query must find values. A dashboard panel that shows "No data" on a
healthy cluster fails this test, naming the panel. The members trace half of the requests (to
their console: nothing leaves the machine), so every target marked `"exemplar": true` must
also find exemplars carrying a trace ID in Prometheus' exemplar storage.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import shutil
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from raftkv.pb.etcdserverpb import rpc_pb2, rpc_pb2_grpc

from tests.support.etcd import free_port
from tests.support.raftkv import RaftKVCluster, start_raftkv_cluster

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
# The operator's dashboard reads the operator's metrics, not a member's.
DASHBOARDS = sorted(
    p for p in (ROOT / "charts/raftkv/dashboards").glob("*.json") if "operator" not in p.name
)
PROMETHEUS = shutil.which("prometheus")
CLUSTER = "it"
RATE_INTERVAL = "10s"  # what Grafana's $__rate_interval is for a 1 s scrape, rounded up
LOAD_SECONDS_BEFORE_QUERIES = 15


def http_json(url: str) -> Any:
    """The JSON body, also of an error answer (Prometheus explains a bad query in it)."""
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as error:
        return json.loads(error.read())


class Prometheus:
    def __init__(self, root: Path, targets: list[str]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = root / "prometheus.yml"
        job = {
            "job_name": "raftkv",
            "static_configs": [{"targets": targets, "labels": {"cluster": CLUSTER}}],
        }
        config.write_text(
            json.dumps(
                {
                    "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                    "scrape_configs": [job],
                }
            )
        )
        assert PROMETHEUS is not None
        self.log = (root / "prometheus.log").open("wb")
        self.process = subprocess.Popen(
            [
                PROMETHEUS,
                f"--config.file={config}",
                f"--storage.tsdb.path={root / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--enable-feature=exemplar-storage",
                "--log.level=warn",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

    def wait_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process.poll() is None, "prometheus exited; see prometheus.log"
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as response:
                    if response.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.2)
        raise TimeoutError("prometheus not ready")

    def query(self, expr: str) -> list[dict[str, Any]]:
        body = http_json(f"{self.url}/api/v1/query?" + urllib.parse.urlencode({"query": expr}))
        assert body["status"] == "success", f"{expr}: {body.get('error')}"
        return body["data"]["result"]

    def exemplars(self, expr: str) -> list[dict[str, Any]]:
        """Exemplars of the series `expr` selects, over the last five minutes."""
        now = time.time()
        query = urllib.parse.urlencode({"query": expr, "start": now - 300, "end": now})
        body = http_json(f"{self.url}/api/v1/query_exemplars?{query}")
        assert body["status"] == "success", f"{expr}: {body.get('error')}"
        return [e for series in body["data"] for e in series["exemplars"]]

    def label_values(self, match: str, label: str) -> set[str]:
        query = urllib.parse.urlencode({"match[]": match, "start": time.time() - 300})
        body = http_json(f"{self.url}/api/v1/series?{query}")
        return {series[label] for series in body["data"] if label in series}

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()


class Load:
    """Writes, reads, watches and leases against every member until stopped."""

    def __init__(self, targets: list[str]) -> None:
        self.targets = targets
        self.stopping = threading.Event()
        self.errors: list[BaseException] = []
        self.puts = 0
        self.thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join(timeout=30)

    async def _run(self) -> None:
        channels = [grpc.aio.insecure_channel(t) for t in self.targets]
        try:
            await asyncio.gather(
                *(self._writer(c, i) for i, c in enumerate(channels)),
                *(self._watcher(c) for c in channels),
                *(self._keeper(c) for c in channels),
                self._expiring_leases(channels[0]),
            )
        except Exception as error:  # reported by the test
            self.errors.append(error)
        finally:
            for channel in channels:
                await channel.close()

    async def _writer(self, channel: grpc.aio.Channel, n: int) -> None:
        kv = rpc_pb2_grpc.KVStub(channel)
        while not self.stopping.is_set():
            key = b"load/%d/%d" % (n, self.puts % 50)
            await kv.Put(rpc_pb2.PutRequest(key=key, value=b"v" * 100), timeout=10)
            await kv.Range(rpc_pb2.RangeRequest(key=key), timeout=10)
            self.puts += 1
            await asyncio.sleep(0.03)

    async def _watcher(self, channel: grpc.aio.Channel) -> None:
        call = rpc_pb2_grpc.WatchStub(channel).Watch()
        create = rpc_pb2.WatchCreateRequest(key=b"load/", range_end=b"load0")
        await call.write(rpc_pb2.WatchRequest(create_request=create))
        while not self.stopping.is_set():
            try:
                async with asyncio.timeout(0.5):
                    await call.read()
            except TimeoutError:
                pass
        call.cancel()

    async def _keeper(self, channel: grpc.aio.Channel) -> None:
        lease = rpc_pb2_grpc.LeaseStub(channel)
        granted = await lease.LeaseGrant(rpc_pb2.LeaseGrantRequest(TTL=30), timeout=10)
        call = lease.LeaseKeepAlive()
        while not self.stopping.is_set():
            await call.write(rpc_pb2.LeaseKeepAliveRequest(ID=granted.ID))
            await call.read()
            await asyncio.sleep(0.5)
        call.cancel()

    async def _expiring_leases(self, channel: grpc.aio.Channel) -> None:
        lease = rpc_pb2_grpc.LeaseStub(channel)
        kv = rpc_pb2_grpc.KVStub(channel)
        while not self.stopping.is_set():
            granted = await lease.LeaseGrant(rpc_pb2.LeaseGrantRequest(TTL=2), timeout=10)
            await kv.Put(rpc_pb2.PutRequest(key=b"ephemeral", lease=granted.ID), timeout=10)
            await asyncio.sleep(1.0)


@pytest.fixture
def cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[RaftKVCluster]:
    # Traced requests put exemplars on the latency histograms.
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "console")
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "traceidratio")
    monkeypatch.setenv("OTEL_TRACES_SAMPLER_ARG", "0.5")
    # Frequent snapshots, so the snapshot panels have data within the test.
    with start_raftkv_cluster(tmp_path, size=3, snapshot_count=100) as cluster:
        yield cluster


def dashboard_targets(dashboard: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(panel title, target) of every target with an expression, rows included."""

    def panels(items: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for panel in items:
            yield panel
            yield from panels(panel.get("panels", []))

    for panel in panels(dashboard["panels"]):
        for target in panel.get("targets", []):
            if target.get("expr"):
                yield panel["title"], target


def substitute(expr: str, instances: list[str]) -> str:
    # Grafana's multi-value "All" for instance: an alternative of regex-escaped values, whose
    # backslashes are doubled inside the PromQL string literal.
    alternatives = "|".join(re.escape(i).replace("\\", "\\\\") for i in instances)
    values = {"$__rate_interval": RATE_INTERVAL, "$cluster": CLUSTER, "$instance": alternatives}
    for name, value in values.items():
        expr = expr.replace(name, value)
    assert "$" not in expr, f"unknown template variable in {expr}"
    return expr


def has_number(result: list[dict[str, Any]]) -> bool:
    return any(not math.isnan(float(sample["value"][1])) for sample in result)


@pytest.mark.skipif(
    PROMETHEUS is None, reason="prometheus not installed (`make test` installs Debian's package)"
)
def test_every_dashboard_query_returns_data(cluster: RaftKVCluster, tmp_path: Path) -> None:
    assert DASHBOARDS, "no dashboards in charts/raftkv/dashboards"
    instances = cluster.grpc_targets
    prometheus = Prometheus(tmp_path, instances)
    load = Load(instances)
    try:
        prometheus.wait_ready()
        load.start()
        time.sleep(LOAD_SECONDS_BEFORE_QUERIES)
        assert not load.errors, load.errors
        assert load.puts > 50, "the load did not get going"
        up = prometheus.query(f'up{{cluster="{CLUSTER}"}} == 1')
        assert len(up) == 3, f"prometheus scrapes {len(up)} of 3 members"

        missing: list[str] = []
        checked = with_exemplars = 0
        for path in DASHBOARDS:
            dashboard = json.loads(path.read_text())
            for variable in dashboard["templating"]["list"]:
                if variable["type"] != "query":
                    continue
                query = substitute(variable["query"]["query"], instances)
                match = re.fullmatch(r"label_values\((.*),\s*(\w+)\)", query)
                assert match, f"{path.name}: unsupported variable query {query}"
                if not prometheus.label_values(match.group(1), match.group(2)):
                    missing.append(f"{path.name}: variable ${variable['name']}: {query}")
            for title, target in dashboard_targets(dashboard):
                checked += 1
                expr = substitute(target["expr"], instances)
                if not has_number(prometheus.query(expr)):
                    missing.append(f"{path.name}: panel {title!r}: {expr}")
                if target.get("exemplar"):
                    with_exemplars += 1
                    if not any("trace_id" in e["labels"] for e in prometheus.exemplars(expr)):
                        missing.append(f"{path.name}: panel {title!r}: no exemplars: {expr}")
        assert checked > 40
        assert with_exemplars >= 2, "the latency panels link to traces"
        assert not missing, "queries without data:\n" + "\n".join(missing)
    finally:
        load.stop()
        prometheus.stop()
    assert not load.errors, load.errors
