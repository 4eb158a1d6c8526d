"""Synced watchers: each write's events, per revision, shaped by range, filters and prev_kv."""

from __future__ import annotations

from raftkv.mvcc import KVStore
from raftkv.pb.mvccpb import kv_pb2

from tests.watch.harness import (
    DELETE,
    NODELETE,
    NOPUT,
    PUT,
    assert_quiet,
    async_test,
    collect_by_watch,
    create,
    delete,
    put,
    recv,
    recv_created,
    watching,
)


@async_test
async def test_a_put_reaches_the_key_watcher_with_the_writes_revision(store: KVStore) -> None:
    async with watching(store) as hub:
        stream = hub.open_stream()
        create(stream, b"k")
        wid = await recv_created(stream)
        put(store, (b"other", b"x"))
        rev = put(store, (b"k", b"v1"))
        response = await recv(stream)
        assert (response.watch_id, response.header.revision) == (wid, rev)
        (event,) = response.events
        expected = kv_pb2.KeyValue(
            key=b"k", value=b"v1", create_revision=rev, mod_revision=rev, version=1
        )
        assert (event.type, event.kv) == (PUT, expected)
        assert not event.HasField("prev_kv")
        await assert_quiet(stream)


@async_test
async def test_a_revision_arrives_whole_in_one_response(store: KVStore) -> None:
    async with watching(store) as hub:
        stream = hub.open_stream()
        create(stream, b"t/", range_end=b"t0")
        await recv_created(stream)
        rev = put(store, (b"t/a", b"1"), (b"u", b"2"), (b"t/b", b"3"))
        response = await recv(stream)
        assert [(e.kv.key, e.kv.mod_revision) for e in response.events] == [
            (b"t/a", rev),
            (b"t/b", rev),
        ]
        gone = delete(store, b"t/", b"t0")
        response = await recv(stream)
        assert [(e.type, e.kv.key, e.kv.mod_revision) for e in response.events] == [
            (DELETE, b"t/a", gone),
            (DELETE, b"t/b", gone),
        ]


@async_test
async def test_ranges_prefix_from_key_and_all_keys(store: KVStore) -> None:
    async with watching(store) as hub:
        stream = hub.open_stream()
        create(stream, b"b", watch_id=1)  # one key
        create(stream, b"b", range_end=b"c", watch_id=2)  # prefix b
        create(stream, b"b", range_end=b"\0", watch_id=3)  # every key >= b
        create(stream, b"", range_end=b"\0", watch_id=4)  # every key
        for _ in range(4):
            await recv_created(stream)
        for key in (b"a", b"b", b"bb", b"c"):
            put(store, (key, b"v"))
        seen: dict[int, list[bytes]] = {1: [], 2: [], 3: [], 4: []}
        for _ in range(1 + 2 + 3 + 4):
            response = await recv(stream)
            seen[response.watch_id].extend(e.kv.key for e in response.events)
        assert seen == {
            1: [b"b"],
            2: [b"b", b"bb"],
            3: [b"b", b"bb", b"c"],
            4: [b"a", b"b", b"bb", b"c"],
        }


@async_test
async def test_filters_drop_puts_or_deletes_and_silence_empty_batches(store: KVStore) -> None:
    async with watching(store) as hub:
        stream = hub.open_stream()
        create(stream, b"f", filters=[NOPUT], watch_id=1)
        create(stream, b"f", filters=[NODELETE], watch_id=2)
        await recv_created(stream)
        await recv_created(stream)
        put_rev = put(store, (b"f", b"1"))
        only_put = await recv(stream)
        assert (only_put.watch_id, [e.type for e in only_put.events]) == (2, [PUT])
        assert only_put.header.revision == put_rev
        delete(store, b"f")
        only_delete = await recv(stream)
        assert (only_delete.watch_id, [e.type for e in only_delete.events]) == (1, [DELETE])
        await assert_quiet(stream)


@async_test
async def test_prev_kv_only_for_watchers_that_asked(store: KVStore) -> None:
    async with watching(store) as hub:
        stream = hub.open_stream()
        create(stream, b"p", prev_kv=True, watch_id=1)
        create(stream, b"p", watch_id=2)
        await recv_created(stream)
        await recv_created(stream)
        first = put(store, (b"p", b"1"))
        put(store, (b"p", b"2"))
        delete(store, b"p")
        events = await collect_by_watch(stream, {1: 3, 2: 3})
        with_prev, without_prev = events[1], events[2]
        assert not with_prev[0].HasField("prev_kv")  # a creation has no previous version
        assert (with_prev[1].prev_kv.value, with_prev[1].prev_kv.mod_revision) == (b"1", first)
        assert (with_prev[2].type, with_prev[2].prev_kv.value) == (DELETE, b"2")
        assert [e.HasField("prev_kv") for e in without_prev] == [False, False, False]
        assert [e.kv for e in without_prev] == [e.kv for e in with_prev]


@async_test
async def test_a_future_start_revision_skips_earlier_writes(store: KVStore) -> None:
    async with watching(store) as hub:
        stream = hub.open_stream()
        start = store.current_revision + 3
        create(stream, b"k", start_revision=start)
        await recv_created(stream)
        put(store, (b"k", b"1"))
        put(store, (b"k", b"2"))
        await assert_quiet(stream)
        third = put(store, (b"k", b"3"))
        assert third == start
        response = await recv(stream)
        assert [e.kv.value for e in response.events] == [b"3"]
