"""KV and transaction round trips through `AsyncClient` against a real etcd.

Each test writes under its own prefix and checks concrete values and revisions it caused, so a
client that mixes up request fields (range ends, sort, limits, txn branches) or response fields
(revisions, versions, prev_kv) fails here.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from raftkv.client import (
    AsyncClient,
    Compare,
    DeleteResult,
    GetResult,
    PutResult,
    SortOrder,
    SortTarget,
    TxnResult,
    ops,
)

pytestmark = pytest.mark.integration

Key = Callable[[str], bytes]
ClientFor = Callable[..., AsyncClient]


async def test_put_then_get_returns_the_value_and_its_revisions(
    client_for: ClientFor, key: Key
) -> None:
    async with client_for() as client:
        first = await client.put(key("a"), "hello")  # str values are UTF-8 encoded
        second = await client.put(key("a").decode(), b"world", prev_kv=True)
        got = await client.get(key("a"))

    assert second.header.revision == first.header.revision + 1
    assert second.prev_kv is not None and second.prev_kv.value == b"hello"
    assert got.value == b"world" and got.as_str() == "world"
    assert got.count == 1 and not got.more
    kv = got.kv
    assert kv is not None
    assert kv.key == key("a") and kv.key_str == key("a").decode()
    assert (kv.create_revision, kv.mod_revision, kv.version, kv.lease) == (
        first.header.revision,
        second.header.revision,
        2,
        0,
    )
    assert got.header.revision >= second.header.revision
    assert got.header.cluster_id and got.header.member_id


async def test_missing_key_gives_an_empty_result(client_for: ClientFor, key: Key) -> None:
    async with client_for() as client:
        got = await client.get(key("nothing"))
    assert got.kvs == () and got.count == 0 and got.value is None and got.kv is None


async def test_ranges_limits_sorting_and_counting(client_for: ClientFor, key: Key) -> None:
    async with client_for() as client:
        for name, value in [("b", "2"), ("a", "3"), ("c", "1")]:
            await client.put(key(name), value)
        await client.put(key("").rstrip(b"/") + b"0", "outside the prefix")

        everything = await client.get(key(""), prefix=True)
        limited = await client.get(key(""), prefix=True, limit=2)
        by_value = await client.get(
            key(""), prefix=True, sort_order=SortOrder.DESCEND, sort_target=SortTarget.VALUE
        )
        half_open = await client.get(key("a"), range_end=key("c"))
        from_b = await client.get(key("b"), from_key=True)
        keys_only = await client.get(key(""), prefix=True, keys_only=True)
        count_only = await client.get(key(""), prefix=True, count_only=True)

    assert [kv.key for kv in everything] == [key("a"), key("b"), key("c")]
    assert [kv.key for kv in limited.kvs] == [key("a"), key("b")]
    assert limited.more and limited.count == 3
    assert [kv.value for kv in by_value.kvs] == [b"3", b"2", b"1"]
    assert [kv.key for kv in half_open.kvs] == [key("a"), key("b")]
    assert [kv.key for kv in from_b.kvs][:2] == [key("b"), key("c")]
    assert all(kv.value == b"" for kv in keys_only.kvs) and len(keys_only.kvs) == 3
    assert count_only.count == 3 and count_only.kvs == ()


async def test_reads_at_an_old_revision_and_revision_filters(
    client_for: ClientFor, key: Key
) -> None:
    async with client_for() as client:
        old = await client.put(key("k"), "v1")
        await client.put(key("k"), "v2")
        other = await client.put(key("other"), "x")
        then = await client.get(key("k"), revision=old.header.revision)
        now = await client.get(key("k"), serializable=True)
        recent = await client.get(key(""), prefix=True, min_mod_revision=other.header.revision)
        created_early = await client.get(
            key(""), prefix=True, max_create_revision=old.header.revision
        )

    assert then.value == b"v1"
    assert now.value == b"v2"
    assert [kv.key for kv in recent.kvs] == [key("other")]
    assert [kv.key for kv in created_early.kvs] == [key("k")]


async def test_put_options_and_deletes(client_for: ClientFor, key: Key) -> None:
    async with client_for() as client:
        await client.put(key("k"), "kept")
        lease = await client.lease_grant(60)
        await client.put(key("k"), ignore_value=True, lease=lease.id)
        after_ignore = await client.get(key("k"))
        await client.put(key("k"), "new", ignore_lease=True)
        after_ignore_lease = await client.get(key("k"))
        await client.put(key("x/1"), "1")
        await client.put(key("x/2"), "2")
        one = await client.delete(key("k"), prev_kv=True)
        many = await client.delete(key("x/"), prefix=True, prev_kv=True)
        none = await client.delete(key("x/"), prefix=True)
        await client.lease_revoke(lease.id)

    assert after_ignore.kv is not None
    assert (after_ignore.kv.value, after_ignore.kv.lease) == (b"kept", lease.id)
    assert after_ignore_lease.kv is not None
    assert (after_ignore_lease.kv.value, after_ignore_lease.kv.lease) == (b"new", lease.id)
    assert isinstance(one, DeleteResult)
    assert one.deleted == 1 and [kv.value for kv in one.prev_kvs] == [b"new"]
    assert many.deleted == 2 and sorted(kv.value for kv in many.prev_kvs) == [b"1", b"2"]
    assert none.deleted == 0 and none.prev_kvs == ()


async def test_txn_takes_the_then_branch_when_all_comparisons_hold(
    client_for: ClientFor, key: Key
) -> None:
    async with client_for() as client:
        created = await client.put(key("k"), "x")
        result = await (
            client.txn()
            .if_(
                Compare.value(key("k")) == b"x",
                Compare.version(key("k")) > 0,
                Compare.create_revision(key("k")) == created.header.revision,
                Compare.mod_revision(key("k")) < created.header.revision + 1,
                Compare.lease(key("k")) == 0,
                Compare.value(key("k")) != "y",
            )
            .then(ops.put(key("k"), "y", prev_kv=True), ops.get(key("k")), ops.delete(key("z")))
            .else_(ops.get(key("k")))
            .commit()
        )

    assert isinstance(result, TxnResult) and result.succeeded
    put, get, delete = result.responses
    assert isinstance(put, PutResult) and put.prev_kv is not None and put.prev_kv.value == b"x"
    assert isinstance(get, GetResult) and get.value == b"y"
    assert isinstance(delete, DeleteResult) and delete.deleted == 0
    assert result.header.revision == created.header.revision + 1


async def test_txn_takes_the_else_branch_and_nests(client_for: ClientFor, key: Key) -> None:
    async with client_for() as client:
        await client.put(key("k"), "x")
        nested = ops.txn(
            Compare.version(key("n")) == 0,
            then=[ops.put(key("n"), "created by nested txn")],
            else_=[ops.get(key("n"))],
        )
        result = await (
            client.txn()
            .if_(Compare.value(key("k")) == "not x")
            .then(ops.put(key("k"), "wrong"))
            .else_(ops.get(key("k")), nested)
            .commit()
        )
        stored = await client.get(key("n"))

    assert not result.succeeded
    get, inner = result.responses
    assert isinstance(get, GetResult) and get.value == b"x"
    assert isinstance(inner, TxnResult) and inner.succeeded
    assert isinstance(inner.responses[0], PutResult)
    assert stored.value == b"created by nested txn"


async def test_create_if_absent_with_a_txn_succeeds_only_once(
    client_for: ClientFor, key: Key
) -> None:
    async with client_for() as client:

        async def create(value: str) -> bool:
            txn = client.txn().if_(Compare.create_revision(key("once")) == 0)
            return (await txn.then(ops.put(key("once"), value)).commit()).succeeded

        assert await create("first")
        assert not await create("second")
        assert (await client.get(key("once"))).value == b"first"


def test_txn_read_only_detection_decides_retry_safety() -> None:
    reads = ops.txn(then=[ops.get("a")], else_=[ops.txn(then=[ops.get("b")])])
    writes = ops.txn(then=[ops.get("a")], else_=[ops.txn(then=[ops.delete("b")])])
    assert reads.read_only
    assert not writes.read_only


def test_compare_rejects_operands_of_the_wrong_type() -> None:
    with pytest.raises(TypeError):
        _ = Compare.version("k") == "one"
    with pytest.raises(TypeError):
        _ = Compare.value("k") == 1
    with pytest.raises(TypeError):
        ops.txn().if_(ops.get("k"))  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        ops.txn().commit()


def test_prefix_ranges_follow_etcds_rules() -> None:
    assert ops.prefix_end(b"a/") == b"a0"
    assert ops.prefix_end(b"a\xff") == b"b"
    assert ops.prefix_end(b"\xff\xff") == b"\0"
    assert ops.key_range(b"", prefix=True) == (b"\0", b"\0")
    assert ops.key_range("k", from_key=True) == (b"k", b"\0")
    with pytest.raises(ValueError):
        ops.key_range("k", prefix=True, from_key=True)
