"""`raftkv grpc-proxy` in front of a real raftkv cluster (and of etcd 3.4): coalescing, caching,
registration, auth.

Each test starts a cluster and a proxy process on 127.0.0.1 and talks to the proxy as any
etcd client would (raw gRPC, raftkv's client, etcdctl). What the proxy does to the cluster is
read from both sides: the proxy's /metrics and the members' own watcher counts.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from raftkv.client import AsyncClient, PermissionType, SyncClient, errors
from raftkv.pb.etcdserverpb import rpc_pb2 as pb
from raftkv.pb.etcdserverpb import rpc_pb2_grpc as rpc

from tests.proxy.support import ProxyProcess, start_proxy
from tests.support.etcd import EtcdCluster, etcdctl
from tests.support.fixtures import etcd_cluster3
from tests.support.raftkv import RaftKVCluster, start_raftkv_cluster

pytestmark = pytest.mark.integration

__all__ = ["etcd_cluster3"]  # the fixture, imported to be used here

WAIT_S = 60.0


def wait_until(condition: Callable[[], bool], what: str, timeout: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.1)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[RaftKVCluster]:
    with start_raftkv_cluster(tmp_path, size=3) as cluster:
        yield cluster


@pytest.fixture
def proxy(tmp_path: Path, cluster: RaftKVCluster) -> Iterator[ProxyProcess]:
    proxy = start_proxy(tmp_path, cluster.endpoints)
    try:
        yield proxy
    finally:
        proxy.kill()


def member_watchers(cluster: RaftKVCluster) -> int:
    """Watchers the members hold (their own etcd_debugging_mvcc_watcher_total)."""
    total = 0
    for member in cluster.members:
        with urllib.request.urlopen(f"{member.client_url}/metrics", timeout=10) as response:
            for line in response.read().decode().splitlines():
                if line.startswith("etcd_debugging_mvcc_watcher_total "):
                    total += int(float(line.split()[1]))
    return total


# ---- 1,000 watchers ---------------------------------------------------------------------------

RANGES = [
    pb.WatchCreateRequest(key=b"w/a/", range_end=b"w/a0"),
    pb.WatchCreateRequest(key=b"w/b/", range_end=b"w/b0"),
    pb.WatchCreateRequest(key=b"w/c"),
    pb.WatchCreateRequest(key=b"w/d/", range_end=b"w/d0", prev_kv=True),
]
WRITES = [(b"w/a/1", 0), (b"w/b/1", 1), (b"w/c", 2), (b"w/d/1", 3), (b"w/a/2", 0), (b"w/d/2", 3)]
STREAMS = 50
PER_STREAM = 20


class WatchStream:
    """One client Watch stream with PER_STREAM watchers; records what each receives."""

    def __init__(self, channel: grpc.aio.Channel, first: int) -> None:
        self.call = rpc.WatchStub(channel).Watch()
        self.ranges = [(first + i) % len(RANGES) for i in range(PER_STREAM)]
        self.ids: list[int] = []  # watch IDs in create order
        self.events: dict[int, list[tuple[bytes, int, bool]]] = {}

    async def open(self) -> None:
        for index in self.ranges:
            await self.call.write(pb.WatchRequest(create_request=RANGES[index]))

    async def read(self) -> None:
        async for response in self.call:
            if response.created:
                assert not response.canceled, response
                self.ids.append(response.watch_id)
            for event in response.events:
                self.events.setdefault(response.watch_id, []).append(
                    (event.kv.key, event.kv.mod_revision, event.HasField("prev_kv"))
                )


def test_a_thousand_watchers_share_one_upstream_watch_per_range(
    cluster: RaftKVCluster, proxy: ProxyProcess
) -> None:
    async def scenario() -> None:
        channels = [grpc.aio.insecure_channel(proxy.target) for _ in range(5)]
        streams = [WatchStream(channels[i % len(channels)], i * PER_STREAM) for i in range(STREAMS)]
        readers = [asyncio.create_task(s.read()) for s in streams]
        try:
            for stream in streams:
                await stream.open()
            await poll(
                lambda: all(len(s.ids) == PER_STREAM for s in streams),
                lambda: f"created: {sum(len(s.ids) for s in streams)} of 1000\n{proxy.log_tail()}",
            )
            assert [sorted(s.ids) for s in streams] == [list(range(PER_STREAM))] * STREAMS

            metrics = await asyncio.to_thread(proxy.metrics)
            assert metrics["raftkv_grpc_proxy_watchers"] == STREAMS * PER_STREAM
            assert metrics["raftkv_grpc_proxy_upstream_watches"] == len(RANGES)
            assert metrics["etcd_grpc_proxy_watchers_coalescing_total"] == (
                STREAMS * PER_STREAM - len(RANGES)
            )
            # The cluster agrees: it serves four watchers, not a thousand.
            assert await asyncio.to_thread(member_watchers, cluster) == len(RANGES)

            async with AsyncClient(proxy.url) as client:
                revisions = [(await client.put(key, b"v")).header.revision for key, _ in WRITES]

            def expected(index: int) -> list[tuple[bytes, int, bool]]:
                return [
                    (key, rev, False)  # every write creates its key: no previous value
                    for (key, target), rev in zip(WRITES, revisions, strict=True)
                    if target == index
                ]

            def complete() -> bool:
                return all(
                    len(s.events.get(watch_id, [])) == len(expected(index))
                    for s in streams
                    for watch_id, index in zip(s.ids, s.ranges, strict=True)
                )

            def missing() -> str:
                short = [
                    (index, len(s.events.get(watch_id, [])))
                    for s in streams
                    for watch_id, index in zip(s.ids, s.ranges, strict=True)
                    if len(s.events.get(watch_id, [])) != len(expected(index))
                ]
                return f"(range, events) of {len(short)} watchers short: {short[:10]}"

            await poll(complete, missing)
            for stream in streams:
                for watch_id, index in zip(stream.ids, stream.ranges, strict=True):
                    assert stream.events[watch_id] == expected(index)
            metrics = await asyncio.to_thread(proxy.metrics)
            # Each event came once from the cluster and went to 250 watchers.
            assert metrics["etcd_grpc_proxy_events_coalescing_total"] == len(WRITES) * (
                STREAMS * PER_STREAM // len(RANGES) - 1
            )
        finally:
            for reader in readers:
                reader.cancel()
            for channel in channels:
                await channel.close()

    asyncio.run(scenario())
    # Clients gone: the proxy closes its upstream watches.
    wait_until(lambda: proxy.metrics()["raftkv_grpc_proxy_upstream_watches"] == 0, "no upstream")
    wait_until(lambda: member_watchers(cluster) == 0, "members without watchers")


async def poll(condition: Callable[[], bool], describe: Callable[[], str]) -> None:
    # Twice the usual wait: a thousand watchers' worth of responses on a loaded machine.
    deadline = time.monotonic() + 2 * WAIT_S
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out: {describe()}")
        await asyncio.sleep(0.05)


def test_a_watcher_from_an_old_revision_catches_up_then_joins_the_shared_watch(
    cluster: RaftKVCluster, proxy: ProxyProcess
) -> None:
    with SyncClient(proxy.url) as client:
        first = client.put(b"h/k", b"1").header.revision
        client.put(b"h/k", b"2")
        client.put(b"h/k", b"3")
        client.put(b"elsewhere", b"")  # the shared watch starts past the range's last event
        with (
            client.watch(b"h/", prefix=True) as live,
            client.watch(b"h/", prefix=True, start_revision=first) as old,
        ):
            seen: list[bytes] = []
            while len(seen) < 3:
                try:
                    seen += [e.kv.value for e in old.next(timeout=WAIT_S)]
                except TimeoutError:
                    raise AssertionError(f"saw {seen}; proxy:\n{proxy.log_tail()}") from None
            assert seen == [b"1", b"2", b"3"]
            # Caught up, but the shared watch is further on: they cannot meet yet.
            assert proxy.metrics()["raftkv_grpc_proxy_upstream_watches"] == 2
            client.put(b"h/k", b"4")  # both see it, and meet there
            assert [e.kv.value for e in old.next(timeout=WAIT_S)] == [b"4"]
            assert [e.kv.value for e in live.next(timeout=WAIT_S)] == [b"4"]
            wait_until(
                lambda: proxy.metrics()["raftkv_grpc_proxy_upstream_watches"] == 1,
                "one upstream watch",
            )
            client.put(b"h/k", b"5")
            assert [e.kv.value for e in old.next(timeout=WAIT_S)] == [b"5"]
            assert [e.kv.value for e in live.next(timeout=WAIT_S)] == [b"5"]


# ---- keep-alives, cache -----------------------------------------------------------------------


def test_keep_alives_of_one_lease_are_coalesced(
    cluster: RaftKVCluster, proxy: ProxyProcess
) -> None:
    clients = 20

    async def scenario() -> tuple[int, int]:
        async with AsyncClient(proxy.url) as owner:
            granted = await owner.lease_grant(6)
            sessions = [AsyncClient(proxy.url) for _ in range(clients)]
            leases = [s.keep_alive(granted.id) for s in sessions]
            try:
                for lease in leases:
                    await lease.start()
                await asyncio.sleep(8)  # beyond the TTL: only the renewals keep it alive
                assert not any(lease.is_lost for lease in leases)
                ttl = await owner.lease_time_to_live(granted.id)
                assert ttl.ttl > 0
            finally:
                for lease in leases:
                    await lease.shutdown()
                for session in sessions:
                    await session.close()
        metrics = await asyncio.to_thread(proxy.metrics)
        return (
            int(metrics["raftkv_grpc_proxy_lease_keepalive_requests_total"]),
            int(metrics["raftkv_grpc_proxy_lease_keepalive_upstream_requests_total"]),
        )

    asked, sent = asyncio.run(scenario())
    # 20 clients renewing every 2 s for 8 s asked about 100 times; the cluster heard a fraction
    # (without coalescing, every request would have been sent).
    assert asked >= clients * 3
    assert sent * 2 <= asked, (asked, sent)


def wait_applied(cluster: RaftKVCluster) -> None:
    """Every member has applied what was committed so far: serializable reads anywhere see it."""
    target = max(m.status(timeout=10).raftIndex for m in cluster.members)
    wait_until(
        lambda: all(m.status(timeout=10).raftAppliedIndex >= target for m in cluster.members),
        f"every member to apply index {target}",
    )


def test_serializable_reads_are_cached_and_writes_through_the_proxy_invalidate(
    tmp_path: Path, cluster: RaftKVCluster
) -> None:
    # A long cache life, so that what the test sees cannot be an expiry under load.
    proxy = start_proxy(tmp_path, cluster.endpoints, "--range-cache-ttl=600")
    try:
        with SyncClient(proxy.url) as client, SyncClient(cluster.endpoints) as direct:
            client.put(b"c/k", b"1")
            wait_applied(cluster)
            assert client.get(b"c/k", serializable=True).kvs[0].value == b"1"
            before = proxy.metrics()
            # A write around the proxy: the cached answer is still served (that is the cache).
            direct.put(b"c/k", b"around")
            wait_applied(cluster)
            assert client.get(b"c/k", serializable=True).kvs[0].value == b"1"
            after = proxy.metrics()
            assert after["etcd_grpc_proxy_cache_hits_total"] == (
                before["etcd_grpc_proxy_cache_hits_total"] + 1
            )
            assert after["etcd_grpc_proxy_cache_keys_total"] == 1
            # Linearizable reads are never cached.
            assert client.get(b"c/k").kvs[0].value == b"around"
            # A write through the proxy drops what it touched.
            client.put(b"c/k", b"2")
            wait_applied(cluster)
            assert client.get(b"c/k", serializable=True).kvs[0].value == b"2"
            client.delete(b"c/", prefix=True)
            wait_applied(cluster)
            assert client.get(b"c/k", serializable=True).kvs == ()
    finally:
        proxy.kill()


# ---- resolver registration --------------------------------------------------------------------


def test_the_proxy_registers_under_the_prefix_until_it_dies_and_the_ttl_passes(
    tmp_path: Path, cluster: RaftKVCluster
) -> None:
    ttl = 3
    proxy = start_proxy(
        tmp_path, cluster.endpoints, "--resolver-prefix=/proxies", f"--resolver-ttl={ttl}"
    )
    try:
        with SyncClient(cluster.endpoints) as client:

            def registered() -> list[dict[str, object]]:
                kvs = client.get(b"/proxies/", prefix=True).kvs
                return [{"key": kv.key.decode(), **json.loads(kv.value)} for kv in kvs]

            wait_until(lambda: len(registered()) == 1, "the registration")
            (entry,) = registered()
            assert entry["key"] == f"/proxies/{proxy.target}"
            assert (entry["Op"], entry["Addr"]) == (0, proxy.target)
            assert "name" in json.loads(str(entry["Metadata"]))
            # Through the proxy, the member list is the list of proxies (etcd's behaviour).
            listed = etcdctl(proxy.target, "member", "list", "-w", "json")
            assert json.loads(listed.stdout)["members"][0]["clientURLs"] == [proxy.target]

            proxy.kill(signal.SIGKILL)
            killed = time.monotonic()
            wait_until(lambda: registered() == [], "the registration to expire")
            # It outlived the proxy by about the TTL (the lease is not revoked by anyone).
            assert time.monotonic() - killed >= ttl - 1.5
    finally:
        proxy.kill()


# ---- auth -------------------------------------------------------------------------------------


def test_callers_act_with_their_own_rights_through_the_proxy(
    cluster: RaftKVCluster, proxy: ProxyProcess
) -> None:
    with SyncClient(cluster.endpoints) as admin:
        admin.user_add("root", "rootpw")
        admin.user_grant_role("root", "root")
        admin.role_add("reader")
        admin.role_grant_permission("reader", "a/", PermissionType.READ, prefix=True)
        admin.user_add("alice", "alicepw")
        admin.user_grant_role("alice", "reader")
        admin.auth_enable()
    with (
        SyncClient(cluster.endpoints, username="root", password="rootpw") as root,
        SyncClient(proxy.url, username="alice", password="alicepw") as alice,
    ):
        root.put("a/1", "x")
        assert alice.get("a/1").kvs[0].value == b"x"
        with pytest.raises(errors.PermissionDeniedError):
            alice.get("b/1")
        with pytest.raises(errors.PermissionDeniedError):
            alice.put("a/2", "y")
        with alice.watch("a/", prefix=True) as watch:
            root.put("a/3", "z")
            assert [e.kv.key for e in watch.next(timeout=WAIT_S)] == [b"a/3"]
        with pytest.raises(errors.PermissionDeniedError), alice.watch("b/", prefix=True) as refused:
            refused.next(timeout=WAIT_S)


# ---- in front of etcd -------------------------------------------------------------------------


def test_the_proxy_works_in_front_of_etcd(tmp_path: Path, etcd_cluster3: EtcdCluster) -> None:
    proxy = start_proxy(tmp_path, etcd_cluster3.endpoints)
    try:
        with SyncClient(proxy.url, timeout=30) as client:
            with (
                client.watch("e/", prefix=True) as first,
                client.watch("e/", prefix=True) as second,
            ):
                revision = client.put("e/k", "v").header.revision
                for watch in (first, second):
                    assert [(e.kv.key, e.revision) for e in watch.next(timeout=WAIT_S)] == [
                        (b"e/k", revision)
                    ]
                assert proxy.metrics()["raftkv_grpc_proxy_upstream_watches"] == 1
            with client.lease(ttl=10) as lease:
                client.put("e/leased", "x", lease=lease.id)
                assert client.get("e/leased").kvs[0].lease == lease.id
            assert client.get("e/leased").kvs == ()  # revoked on exit, with its key
            names = sorted(m.name for m in client.member_list().members)
            assert names == sorted(m.name for m in etcd_cluster3.members)
    finally:
        proxy.kill()
