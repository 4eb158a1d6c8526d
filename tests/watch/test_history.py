"""Unsynced watchers: replaying history, joining the live stream, compaction and restore."""

from __future__ import annotations

import asyncio
from pathlib import Path

from raftkv.mvcc import KVStore
from raftkv.storage.backend import Backend

from tests.watch.harness import (
    DELETE,
    PUT,
    assert_quiet,
    async_test,
    collect_events,
    create,
    delete,
    put,
    recv,
    recv_created,
    revisions,
    watching,
)


@async_test
async def test_history_replays_in_one_batch_then_live_events_follow(store: KVStore) -> None:
    r1 = put(store, (b"h/a", b"1"))
    r2 = put(store, (b"h/a", b"2"))
    put(store, (b"x", b"ignored"))
    r3 = delete(store, b"h/a")
    async with watching(store) as hub:
        stream = hub.open_stream()
        create(stream, b"h/", range_end=b"h0", start_revision=r1)
        await recv_created(stream)
        replay = await recv(stream)
        # Catch-up responses carry the current revision in their header, as etcd's do.
        assert replay.header.revision == store.current_revision
        assert [(e.type, e.kv.mod_revision) for e in replay.events] == [
            (PUT, r1),
            (PUT, r2),
            (DELETE, r3),
        ]
        assert hub.watcher_counts == (1, 0)
        r4 = put(store, (b"h/b", b"3"))
        live = await recv(stream)
        assert (live.header.revision, revisions(list(live.events))) == (r4, [r4])


@async_test
async def test_history_events_carry_prev_kv_read_at_the_revision_before(store: KVStore) -> None:
    r1 = put(store, (b"k", b"1"))
    r2 = put(store, (b"k", b"2"))
    delete(store, b"k")
    put(store, (b"k", b"again"))
    async with watching(store) as hub:
        stream = hub.open_stream()
        create(stream, b"k", start_revision=r1, prev_kv=True)
        await recv_created(stream)
        events = await collect_events(stream, 4)
        assert [e.prev_kv.value if e.HasField("prev_kv") else None for e in events] == [
            None,  # created
            b"1",
            b"2",  # the delete shows what it removed
            None,  # re-created after the delete
        ]
        assert events[1].prev_kv.mod_revision == r1
        assert events[2].prev_kv.mod_revision == r2


@async_test
async def test_small_windows_replay_everything_once_in_order_while_writes_continue(
    store: KVStore,
) -> None:
    written = [put(store, (b"w/%d" % (i % 3), b"%d" % i), (b"noise", b"n")) for i in range(40)]
    first = written[0]
    async with watching(store, window_revisions=4, window_events=3) as hub:
        stream = hub.open_stream()
        create(stream, b"w/", range_end=b"w0", start_revision=first)
        create(stream, b"w/1", start_revision=first + 30, watch_id=9)
        await recv_created(stream)
        await recv_created(stream)
        events = []
        other = []
        # Keep writing while the watchers catch up window by window.
        while len(events) < 70:
            if len(written) < 70:
                written.append(put(store, (b"w/%d" % (len(written) % 3), b"v")))
            response = await recv(stream)
            target = other if response.watch_id == 9 else events
            target.extend(response.events)
            await asyncio.sleep(0)
        assert revisions(events) == written
        expected_other = [r for i, r in enumerate(written) if i % 3 == 1 and r >= first + 30]
        while len(other) < len(expected_other):
            other.extend((await recv(stream)).events)
        assert revisions(other) == expected_other
        assert hub.watcher_counts == (2, 0)
        await assert_quiet(stream)


@async_test
async def test_a_compacted_start_revision_is_created_then_canceled(store: KVStore) -> None:
    first = put(store, (b"c", b"1"))
    second = put(store, (b"c", b"2"))
    store.compact(second)
    async with watching(store) as hub:
        stream = hub.open_stream()
        create(stream, b"c", start_revision=first, watch_id=5)
        created = await recv(stream)
        assert (created.created, created.watch_id, created.header.revision) == (True, 5, second)
        canceled = await recv(stream)
        assert (canceled.watch_id, canceled.canceled, canceled.created) == (5, True, False)
        assert (canceled.compact_revision, canceled.header.revision) == (second, 0)
        put(store, (b"c", b"3"))
        await assert_quiet(stream)
        # As in etcd the ID stays taken until the client cancels it.
        create(stream, b"c", watch_id=5)
        assert (await recv(stream)).cancel_reason.startswith("mvcc: duplicate watch ID")
        stream.cancel(5)
        assert (await recv(stream)).canceled
        # Starting exactly at the compaction revision is allowed.
        create(stream, b"c", start_revision=second, watch_id=5)
        await recv_created(stream)
        assert [e.kv.value for e in (await recv(stream)).events] == [b"2", b"3"]


@async_test
async def test_restore_resyncs_watchers_from_their_next_revision(
    store: KVStore, tmp_path: Path
) -> None:
    # The snapshot a lagging member receives: the same history, and more.
    backend = Backend(tmp_path / "snapshot.db")
    snapshot = KVStore(backend)
    for target in (store, snapshot):
        put(target, (b"r", b"1"))
    seen_before = put(store, (b"r", b"2"))
    assert put(snapshot, (b"r", b"2")) == seen_before
    later = [put(snapshot, (b"r", b"%d" % i)) for i in (3, 4)]
    try:
        async with watching(store) as hub:
            stream = hub.open_stream()
            create(stream, b"r", watch_id=1)
            create(stream, b"r", start_revision=1, watch_id=2)
            await recv_created(stream)
            await recv_created(stream)
            await collect_events(stream, 2, watch_id=2)
            hub.restore(snapshot)
            replayed_responses = [await recv(stream) for _ in range(2)]
            by_watch: dict[int, list[int]] = {1: [], 2: []}
            for response in replayed_responses:
                by_watch[response.watch_id].extend(revisions(list(response.events)))
            # Each watcher gets the snapshot's newer revisions exactly once, from its history.
            assert by_watch == {1: later, 2: later}
            assert hub.watcher_counts == (2, 0)
            live = put(snapshot, (b"r", b"5"))
            final = await collect_events(stream, 2)
            assert revisions(final) == [live, live]
            put(store, (b"r", b"old store"))  # the replaced store no longer feeds anyone
            await assert_quiet(stream)
    finally:
        backend.close()


@async_test
async def test_restore_cancels_watchers_whose_next_revision_was_compacted(
    store: KVStore, tmp_path: Path
) -> None:
    backend = Backend(tmp_path / "snapshot.db")
    snapshot = KVStore(backend)
    put(store, (b"z", b"1"))
    put(snapshot, (b"z", b"1"))
    compacted = put(snapshot, (b"z", b"2"), (b"y", b"2"))
    put(snapshot, (b"z", b"3"))
    snapshot.compact(compacted + 1)
    try:
        async with watching(store) as hub:
            stream = hub.open_stream()
            create(stream, b"z", watch_id=3)
            await recv_created(stream)
            hub.restore(snapshot)
            canceled = await recv(stream)
            assert (canceled.watch_id, canceled.canceled) == (3, True)
            assert canceled.compact_revision == compacted + 1
            assert hub.watcher_counts == (0, 0)
    finally:
        backend.close()


@async_test
async def test_delete_events_from_history_carry_key_and_revision(store: KVStore) -> None:
    put(store, (b"d/1", b"a"), (b"d/2", b"b"))
    start = delete(store, b"d/", b"d0")
    async with watching(store) as hub:
        stream = hub.open_stream()
        create(stream, b"d/", range_end=b"d0", start_revision=start)
        await recv_created(stream)
        events = (await recv(stream)).events
        assert [(e.type, e.kv.key, e.kv.mod_revision) for e in events] == [
            (DELETE, b"d/1", start),
            (DELETE, b"d/2", start),
        ]


@async_test
async def test_catch_up_responses_are_cut_between_revisions_at_the_byte_budget(
    store: KVStore,
) -> None:
    value = b"v" * 100_000
    history = [put(store, (b"big", value)) for _ in range(10)]
    whole = put(store, (b"big", value), (b"big2", value), (b"big3", value))
    async with watching(store, max_batch_bytes=250_000) as hub:
        stream = hub.open_stream()
        create(stream, b"big", range_end=b"bih", start_revision=history[0])
        await recv_created(stream)
        batches = [revisions(list((await recv(stream)).events)) for _ in range(4)]
        # Three revisions reach the budget; a revision crossing it is never split.
        assert batches == [history[0:3], history[3:6], history[6:9], [history[9]] + [whole] * 3]
        await assert_quiet(stream)
