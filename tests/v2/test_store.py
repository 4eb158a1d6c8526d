"""`V2Store` on raftkv's real KV applier and MVCC store (no Raft, no server): the v2 rules, the
guarded-Txn retry when another write gets in between the read and the commit, and TTL leases.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from raftkv.api.v2keys import mapping
from raftkv.api.v2keys.errors import V2Error
from raftkv.api.v2keys.store import V2Store
from raftkv.apply.kv import KVApplier
from raftkv.mvcc import KVStore
from raftkv.pb.etcdserverpb import rpc_pb2
from raftkv.storage.backend import Backend


class AppliedV3:
    """The `V3` seam over a KVApplier. `before_write`, when set, runs once just before the next
    write Txn: the competing writer of a race."""

    def __init__(self, store: KVStore) -> None:
        self.kv = KVApplier(store)
        self.store = store
        self.leases: dict[int, int] = {}
        self.before_write: Callable[[], None] | None = None
        self.writes = 0

    async def txn(self, request: rpc_pb2.TxnRequest) -> rpc_pb2.TxnResponse:
        if any(op.HasField("request_put") for op in request.success):
            self.writes += 1
            hook, self.before_write = self.before_write, None
            if hook is not None:
                hook()
        return self.kv.txn(request)

    async def lease_grant(self, ttl: int) -> int:
        lease = len(self.leases) + 100
        self.leases[lease] = ttl
        return lease

    async def lease_revoke(self, lease: int) -> None:
        self.leases.pop(lease, None)

    def expire(self, lease: int) -> None:
        """What the lessor does when a lease ends: delete its keys in one revision."""
        start, end = mapping.NAMESPACE, mapping.prefix_end(mapping.NAMESPACE)
        keys = [kv.key for kv in self.store.range(start, end).kvs if kv.lease == lease]
        ops = [
            rpc_pb2.RequestOp(request_delete_range=rpc_pb2.DeleteRangeRequest(key=k)) for k in keys
        ]
        self.kv.txn(rpc_pb2.TxnRequest(success=ops))

    def lease_of(self, path: str) -> int:
        return int(self.store.range(mapping.node_key(path)).kvs[0].lease)

    def watch(self, request: rpc_pb2.WatchCreateRequest) -> AsyncIterator[rpc_pb2.WatchResponse]:
        raise NotImplementedError("waits are tested against a server")


@pytest.fixture
def v3(tmp_path: Path) -> Iterator[AppliedV3]:
    backend = Backend(tmp_path / "db")
    yield AppliedV3(KVStore(backend))
    backend.close()


T = TypeVar("T")


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coroutine)


def put(store: V2Store, path: str, value: str = "", **options: Any) -> Any:
    arguments: dict[str, Any] = {
        "value": value,
        "is_dir": False,
        "ttl": None,
        "prev_exist": None,
        "prev_value": None,
        "prev_index": 0,
        "refresh": False,
    }
    arguments.update(options)
    return run(store.put(path, **arguments))


def competing(v3: AppliedV3, path: str, value: str) -> Callable[[], None]:
    def write() -> None:
        encoded = mapping.encode_value(
            is_dir=False, value=value, created=None, expiry_ns=None, written_ns=0
        )
        v3.kv.txn(
            rpc_pb2.TxnRequest(
                success=[
                    rpc_pb2.RequestOp(
                        request_put=rpc_pb2.PutRequest(key=mapping.node_key(path), value=encoded)
                    )
                ]
            )
        )

    return write


def test_a_write_that_lost_a_race_is_decided_again(v3: AppliedV3) -> None:
    store = V2Store(v3)
    put(store, "/a", "x")
    v3.before_write = competing(v3, "/a", "other")
    with pytest.raises(V2Error) as raised:
        put(store, "/a", "y", prev_value="x")
    # the second look saw the other writer's value: compare failed, nothing overwritten
    assert (raised.value.code, raised.value.cause) == (101, "[x != other]")
    assert run(store.get("/a", recursive=False, sort=False)).node["value"] == "other"


def test_an_empty_directory_delete_fails_when_a_child_appears_first(v3: AppliedV3) -> None:
    store = V2Store(v3)
    put(store, "/d", is_dir=True)
    v3.before_write = competing(v3, "/d/child", "1")
    with pytest.raises(V2Error) as raised:
        run(store.delete("/d", is_dir=True, recursive=False, prev_value=None, prev_index=0))
    assert raised.value.code == 108
    assert run(store.get("/d/child", recursive=False, sort=False)).node["value"] == "1"


def test_in_order_keys_are_named_by_their_index_and_stay_ordered_under_races(
    v3: AppliedV3,
) -> None:
    store = V2Store(v3)
    first = run(store.create_in_order("/q", value="1", is_dir=False, ttl=None))
    assert first.node["key"] == f"/q/{first.index:020d}"
    assert first.node["createdIndex"] == first.index
    v3.before_write = competing(v3, "/elsewhere", "x")  # takes the revision it predicted
    second = run(store.create_in_order("/q", value="2", is_dir=False, ttl=None))
    assert second.node["key"] > first.node["key"]
    listed = run(store.get("/q", recursive=False, sort=True)).node["nodes"]
    assert [n["value"] for n in listed] == ["1", "2"]


def test_an_in_order_key_is_renamed_when_its_directory_got_a_child_first(v3: AppliedV3) -> None:
    """Otherwise a key named before another could be created after it, and a consumer that
    read up to the other one would never see it."""
    store = V2Store(v3)
    run(store.create_in_order("/q", value="1", is_dir=False, ttl=None))
    v3.before_write = competing(v3, "/q/other", "x")
    late = run(store.create_in_order("/q", value="2", is_dir=False, ttl=None))
    assert late.node["key"] == f"/q/{late.index:020d}"  # decided again after the other child
    listed = run(store.get("/q", recursive=False, sort=True)).node["nodes"]
    assert [n["value"] for n in listed] == ["1", "2", "x"]


def test_writes_create_missing_parents_in_the_same_revision(v3: AppliedV3) -> None:
    store = V2Store(v3)
    result = put(store, "/a/b/c", "1")
    tree = run(store.get("/a", recursive=True, sort=True)).node
    assert tree["createdIndex"] == tree["nodes"][0]["createdIndex"] == result.index
    assert v3.writes == 1


def test_children_share_their_directorys_lease_and_follow_a_new_one(v3: AppliedV3) -> None:
    store = V2Store(v3)
    put(store, "/svc", is_dir=True, ttl=100)
    put(store, "/svc/web", "10.0.0.1")
    dir_lease = v3.lease_of("/svc")
    assert dir_lease and v3.lease_of("/svc/web") == dir_lease
    put(store, "/svc", is_dir=True, prev_exist=True, ttl=50)
    new_lease = v3.lease_of("/svc")
    assert new_lease != dir_lease and v3.lease_of("/svc/web") == new_lease
    v3.expire(new_lease)
    with pytest.raises(V2Error) as raised:
        run(store.get("/svc/web", recursive=False, sort=False))
    assert (raised.value.code, raised.value.cause) == (100, "/svc")


def test_a_refresh_keeps_the_value_on_a_new_lease(
    v3: AppliedV3,
) -> None:
    store = V2Store(v3)
    put(store, "/k", "v", ttl=10)
    refreshed = put(store, "/k", ttl=20, refresh=True)
    assert (refreshed.node["value"], refreshed.node["ttl"]) == ("v", 20)
    with pytest.raises(V2Error):
        put(store, "/k", "w", prev_value="nope", ttl=5)
    assert v3.lease_of("/k") == max(v3.leases)  # the refresh's lease; the compare granted none
