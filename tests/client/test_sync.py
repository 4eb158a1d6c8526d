"""`SyncClient`: the same client from blocking code, including the live objects (watch, lease)
that keep running on its private loop between calls."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest
from raftkv.client import Compare, EventType, SyncClient, errors, ops

from tests.support.etcd import EtcdCluster

pytestmark = pytest.mark.integration

Key = Callable[[str], bytes]


def test_blocking_kv_and_txn(etcd_cluster: EtcdCluster, key: Key) -> None:
    with SyncClient(etcd_cluster.endpoints) as client:
        put = client.put(key("k"), "v")
        got = client.get(key("k"))
        result = (
            client.txn()
            .if_(Compare.value(key("k")) == "v")
            .then(ops.put(key("k"), "w"))
            .else_(ops.get(key("k")))
            .commit()
        )
        after = client.get(key("k"), revision=put.header.revision + 1)
        with pytest.raises(errors.FutureRevisionError):
            client.get(key("k"), revision=put.header.revision + 1000)
        deleted = client.delete(key(""), prefix=True)
    assert got.value == b"v" and result.succeeded and after.value == b"w"
    assert deleted.deleted == 1


def test_a_watch_keeps_running_between_calls(etcd_cluster: EtcdCluster, key: Key) -> None:
    with SyncClient(etcd_cluster.endpoints) as client, client.watch(key(""), prefix=True) as watch:
        with pytest.raises(TimeoutError):
            watch.next(timeout=0.2)
        first = client.put(key("a"), "1")
        time.sleep(0.2)  # events arrive while the caller is doing something else
        client.delete(key("a"))
        events = []
        for event in watch.events():
            events.append((event.type, event.revision))
            if len(events) == 2:
                break
    assert events == [
        (EventType.PUT, first.header.revision),
        (EventType.DELETE, first.header.revision + 1),
    ]


def test_a_lease_is_kept_alive_and_its_loss_is_reported(
    etcd_cluster: EtcdCluster, key: Key
) -> None:
    with SyncClient(etcd_cluster.endpoints) as client, client.lease(2) as lease:
        client.put(key("k"), "v", lease=lease.id)
        time.sleep(3.0)
        alive = client.get(key("k"))
        assert not lease.lost.is_set()
        client.lease_revoke(lease.id)
        assert lease.lost.wait(timeout=3.0)
    assert alive.value == b"v"


def test_one_client_serves_several_threads(etcd_cluster: EtcdCluster, key: Key) -> None:
    failures: list[BaseException] = []
    with SyncClient(etcd_cluster.endpoints) as client:

        def work(n: int) -> None:
            try:
                for i in range(10):
                    client.put(key(f"{n}/{i}"), str(i))
            except BaseException as e:
                failures.append(e)

        threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        count = client.get(key(""), prefix=True, count_only=True).count
    assert failures == [] and count == 40


def test_closing_stops_the_loop_thread(etcd_cluster: EtcdCluster) -> None:
    def loop_threads() -> int:
        return sum(t.name == "raftkv-client" for t in threading.enumerate())

    before = loop_threads()
    client = SyncClient(etcd_cluster.endpoints)
    client.get("anything")
    running = loop_threads()
    client.close()
    client.close()  # idempotent
    assert running == before + 1
    assert loop_threads() == before
