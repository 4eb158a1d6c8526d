"""Periodic progress notifications (bookmarks) for watchers created with progress_notify."""

from __future__ import annotations

import asyncio

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

INTERVAL = 0.1


@async_test
async def test_a_quiet_watcher_gets_the_current_revision_each_interval(store: KVStore) -> None:
    async with watching(store, progress_interval=INTERVAL) as hub:
        stream = hub.open_stream()
        create(stream, b"quiet", progress_notify=True, watch_id=60)
        create(stream, b"quiet", watch_id=61)  # did not ask
        await recv_created(stream)
        await recv_created(stream)
        rev = put(store, (b"elsewhere", b"1"))
        for _ in range(2):
            notify = await recv(stream, timeout=5 * INTERVAL)
            assert (notify.watch_id, len(notify.events), notify.header.revision) == (60, 0, rev)


@async_test
async def test_no_progress_notification_in_an_interval_that_had_events(store: KVStore) -> None:
    async with watching(store, progress_interval=INTERVAL) as hub:
        stream = hub.open_stream()
        create(stream, b"busy", progress_notify=True)
        await recv_created(stream)
        # Events more often than the interval: only events arrive.
        for i in range(8):
            put(store, (b"busy", b"%d" % i))
            response = await recv(stream)
            assert len(response.events) == 1
            await asyncio.sleep(INTERVAL / 4)
        await assert_quiet(stream, wait=INTERVAL / 2)


@async_test
async def test_a_watcher_still_catching_up_gets_no_progress_notification(store: KVStore) -> None:
    first = put(store, (b"lag", b"1"))
    put(store, (b"lag", b"2"))
    async with watching(store, progress_interval=INTERVAL, max_pending=1) as hub:
        stream = hub.open_stream()
        create(stream, b"lag", progress_notify=True, start_revision=first)
        # Not reading: the created response fills the queue, the watcher stays unsynced.
        await asyncio.sleep(3 * INTERVAL)
        assert hub.watcher_counts == (0, 1)
        assert stream.queued[0] == 1
        await recv_created(stream)
        replay = await recv(stream)
        assert [e.kv.value for e in replay.events] == [b"1", b"2"]
