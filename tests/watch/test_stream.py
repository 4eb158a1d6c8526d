"""A Watch stream's requests and control responses behave as etcd 3.4's (observed on a real etcd:
IDs, refusals, cancel, progress request)."""

from __future__ import annotations

from raftkv.mvcc import KVStore

from tests.watch.harness import (
    assert_quiet,
    async_test,
    create,
    put,
    recv,
    recv_created,
    watching,
)


@async_test
async def test_created_carries_the_current_revision_and_ids_count_from_zero(
    store: KVStore,
) -> None:
    rev = put(store, (b"a", b"1"))
    async with watching(store) as hub:
        stream = hub.open_stream()
        create(stream, b"a", watch_id=1)
        first = await recv(stream)
        assert (first.created, first.canceled, first.watch_id, first.header.revision) == (
            True,
            False,
            1,
            rev,
        )
        # Server-chosen IDs start at 0 and skip IDs the client took.
        for _ in range(3):
            create(stream, b"a")
        assert [await recv_created(stream) for _ in range(3)] == [0, 2, 3]
        # IDs are per stream.
        other = hub.open_stream()
        create(other, b"a")
        assert await recv_created(other) == 0


@async_test
async def test_duplicate_id_and_empty_range_are_refused_with_etcds_reasons(
    store: KVStore,
) -> None:
    async with watching(store) as hub:
        stream = hub.open_stream()
        create(stream, b"a", watch_id=3)
        await recv_created(stream)
        create(stream, b"b", watch_id=3)
        duplicate = await recv(stream)
        assert (duplicate.watch_id, duplicate.created, duplicate.canceled) == (-1, True, True)
        assert duplicate.cancel_reason == "mvcc: duplicate watch ID provided on the WatchStream"
        for range_end in (b"a", b"b"):
            create(stream, b"b", range_end=range_end)
            refused = await recv(stream)
            assert (refused.watch_id, refused.created, refused.canceled) == (-1, True, True)
            assert refused.cancel_reason == "mvcc: watcher range is empty"
        # Refusals took no ID: the first server-chosen one is still 0.
        create(stream, b"c")
        assert await recv_created(stream) == 0
        assert hub.watcher_counts == (2, 0)


@async_test
async def test_cancel_answers_once_then_the_watcher_is_silent(store: KVStore) -> None:
    async with watching(store) as hub:
        stream = hub.open_stream()
        create(stream, b"k", watch_id=5)
        await recv_created(stream)
        stream.cancel(99)  # unknown: no answer, as in etcd
        stream.cancel(5)
        canceled = await recv(stream)
        assert (canceled.watch_id, canceled.canceled, canceled.cancel_reason) == (5, True, "")
        assert canceled.header.revision == store.current_revision
        put(store, (b"k", b"v"))
        await assert_quiet(stream)
        # The ID is free again.
        create(stream, b"k", watch_id=5)
        assert await recv_created(stream) == 5


@async_test
async def test_progress_request_answers_once_for_the_stream_even_while_catching_up(
    store: KVStore,
) -> None:
    first = put(store, (b"p/a", b"1"))
    last = put(store, (b"p/b", b"2"))
    async with watching(store) as hub:
        stream = hub.open_stream()
        stream.request_progress()
        empty = await recv(stream)
        assert (empty.watch_id, empty.header.revision, len(empty.events)) == (-1, last, 0)
        # A watcher still replaying history does not hold the answer back (etcd 3.4).
        create(stream, b"p/", range_end=b"p0", start_revision=first)
        stream.request_progress()
        await recv_created(stream)
        progress = await recv(stream)
        assert (progress.watch_id, progress.header.revision, progress.created) == (-1, last, False)
        replay = await recv(stream)
        assert [e.kv.key for e in replay.events] == [b"p/a", b"p/b"]


@async_test
async def test_closing_a_stream_drops_its_watchers(store: KVStore) -> None:
    async with watching(store) as hub:
        stream = hub.open_stream()
        create(stream, b"a")
        create(stream, b"b", start_revision=1)
        assert sum(hub.watcher_counts) == 2
        stream.close()
        assert hub.watcher_counts == (0, 0)
        put(store, (b"a", b"1"))
        assert stream.queued == (0, 0)


@async_test
async def test_terminate_ends_the_stream_with_the_error(store: KVStore) -> None:
    async with watching(store) as hub:
        stream = hub.open_stream()
        create(stream, b"a")
        stream.terminate(RuntimeError("no leader"))
        assert hub.watcher_counts == (0, 0)
        try:
            await recv(stream)
        except RuntimeError as error:
            assert str(error) == "no leader"
        else:
            raise AssertionError("a terminated stream must raise its error")
