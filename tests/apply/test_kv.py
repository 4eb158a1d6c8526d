"""KVApplier Range, Put, DeleteRange and Compaction, against etcd's documented (and, where noted,
observed with etcd 3.4) behaviour."""

from __future__ import annotations

import pytest
from raftkv.apply.errors import (
    EmptyKeyError,
    KeyNotFoundError,
    LeaseNotFoundError,
    LeaseProvidedError,
    ValueProvidedError,
)
from raftkv.apply.kv import KVApplier
from raftkv.mvcc import CompactedError, FutureRevisionError, KVStore
from raftkv.pb.etcdserverpb import rpc_pb2 as pb

RR = pb.RangeRequest


def put(kv: KVApplier, key: bytes, value: bytes = b"v", **kw: object) -> pb.PutResponse:
    return kv.put(pb.PutRequest(key=key, value=value, **kw))


def rng(kv: KVApplier, key: bytes, range_end: bytes = b"", **kw: object) -> pb.RangeResponse:
    return kv.range(RR(key=key, range_end=range_end, **kw))


def keys(resp: pb.RangeResponse) -> list[bytes]:
    return [item.key for item in resp.kvs]


@pytest.fixture
def s_keys(kv: KVApplier) -> KVApplier:
    """s1..s4 put at revisions 2..5, then s1 again at 6 (version 2), as in the etcd session."""
    for k in (b"s1", b"s2", b"s3", b"s4"):
        put(kv, k, b"v" + k)
    put(kv, b"s1", b"x")
    return kv


# -- Range ---------------------------------------------------------------------------------------


def test_range_reports_current_revision_and_count(s_keys: KVApplier) -> None:
    resp = rng(s_keys, b"s", b"t")
    assert keys(resp) == [b"s1", b"s2", b"s3", b"s4"]
    assert (resp.header.revision, resp.count, resp.more) == (6, 4, False)
    old = rng(s_keys, b"s1", revision=2)
    assert ([i.value for i in old.kvs], old.header.revision) == ([b"vs1"], 6)


def test_range_limit_sets_more_and_count_stays_total(s_keys: KVApplier) -> None:
    resp = rng(s_keys, b"s", b"t", limit=2)
    assert (keys(resp), resp.more, resp.count) == ([b"s1", b"s2"], True, 4)
    exact = rng(s_keys, b"s", b"t", limit=4)
    assert (len(exact.kvs), exact.more) == (4, False)


def test_revision_filters_apply_before_limit_and_not_to_count(s_keys: KVApplier) -> None:
    # Observed with etcd 3.4: limit 1 + min_mod_revision → more=true, count = keys in range.
    resp = rng(s_keys, b"s", b"t", limit=1, min_mod_revision=4)
    assert (keys(resp), resp.more, resp.count) == ([b"s1"], True, 4)
    assert keys(rng(s_keys, b"s", b"t", min_mod_revision=4)) == [b"s1", b"s3", b"s4"]
    assert keys(rng(s_keys, b"s", b"t", max_mod_revision=3)) == [b"s2"]
    assert keys(rng(s_keys, b"s", b"t", min_create_revision=3, max_create_revision=4)) == [
        b"s2",
        b"s3",
    ]


def test_sort_target_without_order_sorts_ascending(s_keys: KVApplier) -> None:
    # etcd: order NONE with a non-KEY target means ASCEND; ties keep key order.
    resp = rng(s_keys, b"s", b"t", sort_target=RR.VERSION, limit=2)
    assert (keys(resp), resp.more) == ([b"s2", b"s3"], True)
    resp = rng(s_keys, b"s", b"t", sort_target=RR.VERSION, sort_order=RR.DESCEND)
    assert keys(resp) == [b"s1", b"s2", b"s3", b"s4"]


@pytest.mark.parametrize(
    ("target", "order", "expected"),
    [
        (RR.KEY, RR.NONE, [b"s1", b"s2", b"s3", b"s4"]),
        (RR.KEY, RR.DESCEND, [b"s4", b"s3", b"s2", b"s1"]),
        (RR.MOD, RR.ASCEND, [b"s2", b"s3", b"s4", b"s1"]),
        (RR.MOD, RR.DESCEND, [b"s1", b"s4", b"s3", b"s2"]),
        (RR.CREATE, RR.DESCEND, [b"s4", b"s3", b"s2", b"s1"]),
        (RR.VALUE, RR.ASCEND, [b"s2", b"s3", b"s4", b"s1"]),  # "vs2" < ... < "x"
    ],
)
def test_sort_targets_and_orders(
    s_keys: KVApplier, target: int, order: int, expected: list[bytes]
) -> None:
    assert keys(rng(s_keys, b"s", b"t", sort_target=target, sort_order=order)) == expected


def test_sorting_happens_before_the_limit(s_keys: KVApplier) -> None:
    resp = rng(s_keys, b"s", b"t", sort_order=RR.DESCEND, limit=1)
    assert (keys(resp), resp.more, resp.count) == ([b"s4"], True, 4)


def test_keys_only_and_count_only(s_keys: KVApplier) -> None:
    bare = rng(s_keys, b"s", b"t", keys_only=True, sort_target=RR.VALUE)
    assert keys(bare) == [b"s2", b"s3", b"s4", b"s1"]  # sorted by the value it then drops
    assert all(item.value == b"" and item.version for item in bare.kvs)
    counted = rng(s_keys, b"s", b"t", count_only=True, limit=1)
    assert (list(counted.kvs), counted.count, counted.more) == ([], 4, False)


def test_range_errors(kv: KVApplier, store: KVStore) -> None:
    with pytest.raises(EmptyKeyError, match=r"^etcdserver: key is not provided$"):
        rng(kv, b"")
    put(kv, b"a")
    put(kv, b"a")
    with pytest.raises(FutureRevisionError):
        rng(kv, b"a", revision=4)
    store.compact(3)
    with pytest.raises(CompactedError):
        rng(kv, b"a", revision=2)
    assert keys(rng(kv, b"a", revision=3)) == [b"a"]


# -- Put -----------------------------------------------------------------------------------------


def test_put_returns_the_new_revision_and_optionally_the_previous_kv(kv: KVApplier) -> None:
    first = put(kv, b"k", b"1", prev_kv=True)
    assert first.header.revision == 2 and not first.HasField("prev_kv")
    second = put(kv, b"k", b"2", lease=7, prev_kv=True)
    assert second.header.revision == 3
    assert (second.prev_kv.value, second.prev_kv.mod_revision) == (b"1", 2)
    assert not put(kv, b"k", b"3").HasField("prev_kv")


def test_ignore_value_and_ignore_lease_keep_the_current_ones(kv: KVApplier) -> None:
    put(kv, b"k", b"orig", lease=7)
    put(kv, b"k", b"", ignore_value=True, lease=8)
    got = rng(kv, b"k").kvs[0]
    assert (got.value, got.lease, got.version) == (b"orig", 8, 2)
    put(kv, b"k", b"new", ignore_lease=True)
    got = rng(kv, b"k").kvs[0]
    assert (got.value, got.lease, got.version) == (b"new", 8, 3)


def test_put_validation_errors(kv: KVApplier, store: KVStore) -> None:
    with pytest.raises(EmptyKeyError):
        put(kv, b"")
    with pytest.raises(ValueProvidedError, match=r"^etcdserver: value is provided$"):
        put(kv, b"k", b"x", ignore_value=True)
    with pytest.raises(LeaseProvidedError, match=r"^etcdserver: lease is provided$"):
        put(kv, b"k", b"", lease=7, ignore_lease=True)
    with pytest.raises(KeyNotFoundError, match=r"^etcdserver: key not found$"):
        put(kv, b"missing", b"", ignore_value=True)
    with pytest.raises(KeyNotFoundError):
        put(kv, b"missing", b"x", ignore_lease=True)
    with pytest.raises(LeaseNotFoundError, match=r"^etcdserver: requested lease not found$"):
        put(kv, b"k", b"x", lease=99)
    # etcd checks the lease before the key a plain Put's ignore_value needs.
    with pytest.raises(LeaseNotFoundError):
        put(kv, b"missing", b"", lease=99, ignore_value=True)
    assert store.current_revision == 1


def test_without_a_lease_checker_any_lease_is_accepted(store: KVStore) -> None:
    plain = KVApplier(store)
    plain.put(pb.PutRequest(key=b"k", lease=12345))
    assert store.range(b"k").kvs[0].lease == 12345


# -- DeleteRange ---------------------------------------------------------------------------------


def test_delete_range_counts_and_returns_previous_kvs(s_keys: KVApplier) -> None:
    resp = s_keys.delete_range(pb.DeleteRangeRequest(key=b"s2", range_end=b"s4", prev_kv=True))
    assert (resp.deleted, resp.header.revision) == (2, 7)
    assert [(p.key, p.value) for p in resp.prev_kvs] == [(b"s2", b"vs2"), (b"s3", b"vs3")]
    quiet = s_keys.delete_range(pb.DeleteRangeRequest(key=b"s1"))
    assert (quiet.deleted, len(quiet.prev_kvs), quiet.header.revision) == (1, 0, 8)
    everything = s_keys.delete_range(pb.DeleteRangeRequest(key=b"\0", range_end=b"\0"))
    assert everything.deleted == 1
    # Deleting nothing does not create a revision (etcd answers with the current one).
    nothing = s_keys.delete_range(pb.DeleteRangeRequest(key=b"s1"))
    assert (nothing.deleted, nothing.header.revision) == (0, 9)
    with pytest.raises(EmptyKeyError):
        s_keys.delete_range(pb.DeleteRangeRequest(key=b""))


# -- Compaction ----------------------------------------------------------------------------------


def test_compaction(kv: KVApplier, store: KVStore) -> None:
    for _ in range(5):
        put(kv, b"k")
    resp = kv.compact(pb.CompactionRequest(revision=3))
    assert resp.header.revision == 6
    assert store.compaction_pending  # deleted later, in steps
    kv.compact(pb.CompactionRequest(revision=5, physical=True))
    assert not store.compaction_pending  # physical: gone before the answer
    with pytest.raises(CompactedError):
        kv.compact(pb.CompactionRequest(revision=5))
    with pytest.raises(FutureRevisionError):
        kv.compact(pb.CompactionRequest(revision=7))
