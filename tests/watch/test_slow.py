"""A client that stops reading holds bounded memory, slows nobody, and later gets everything."""

from __future__ import annotations

import asyncio

from raftkv.mvcc import KVStore
from raftkv.pb.mvccpb import kv_pb2

from tests.watch.harness import (
    async_test,
    collect_events,
    create,
    put,
    recv,
    recv_created,
    revisions,
    watching,
)

VALUE = b"v" * 1024


@async_test
async def test_a_non_reading_watcher_is_bounded_and_others_are_unaffected(store: KVStore) -> None:
    async with watching(store, max_pending=8, max_pending_bytes=1 << 30) as hub:
        stuck = hub.open_stream()
        create(stuck, b"s/", range_end=b"s0")
        await recv_created(stuck)
        reader = hub.open_stream()
        create(reader, b"s/", range_end=b"s0")
        await recv_created(reader)

        received: list[kv_pb2.Event] = []

        async def read_all() -> None:
            while len(received) < 500:
                received.extend((await recv(reader)).events)

        reading = asyncio.create_task(read_all())
        written = []
        most_queued = 0
        for i in range(500):
            written.append(put(store, (b"s/%d" % (i % 10), VALUE)))
            most_queued = max(most_queued, stuck.queued[0])
            if i % 10 == 0:
                await asyncio.sleep(0)  # let the reader and the catch-up task run
        await asyncio.wait_for(reading, 10)

        assert revisions(received) == written
        assert most_queued <= 8
        # The stuck watcher fell back to history instead of buffering 500 responses.
        assert hub.watcher_counts == (1, 1)
        queued_bytes = stuck.queued[1]
        assert queued_bytes < 8 * (len(VALUE) + 200)

        # Once it reads again it gets every revision exactly once, in order.
        caught_up = await collect_events(stuck, 500)
        assert revisions(caught_up) == written
        assert hub.watcher_counts == (2, 0)


@async_test
async def test_the_byte_budget_bounds_a_stuck_stream_with_large_values(store: KVStore) -> None:
    big = b"x" * 100_000
    async with watching(store, max_pending_bytes=300_000) as hub:
        stuck = hub.open_stream()
        create(stuck, b"big")
        await recv_created(stuck)
        written = [put(store, (b"big", big)) for _ in range(50)]
        for _ in range(20):
            await asyncio.sleep(0)
        responses, queued_bytes = stuck.queued
        # Under the budget plus the one response that crossed it.
        assert responses == 3
        assert queued_bytes < 300_000 + len(big) + 200
        caught_up = await collect_events(stuck, 50)
        assert revisions(caught_up) == written


@async_test
async def test_a_stuck_stream_does_not_stop_a_catching_up_one(store: KVStore) -> None:
    history = [put(store, (b"h", b"%d" % i)) for i in range(30)]
    async with watching(store, max_pending=2, window_revisions=5) as hub:
        stuck = hub.open_stream()
        create(stuck, b"h", start_revision=history[0])
        await recv_created(stuck)
        other = hub.open_stream()
        create(other, b"h", start_revision=history[0])
        await recv_created(other)
        assert revisions(await collect_events(other, 30)) == history
        assert stuck.queued[0] == 2
        assert hub.watcher_counts == (1, 1)
