"""Watches on a real etcd: events in order with their revisions, history replay, filters,
progress notifications, compaction and cancellation. Resuming after a member dies is covered
in test_failover.py."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest
from raftkv.client import AsyncClient, Event, EventType, WatchBatch, WatchFilter, errors

pytestmark = pytest.mark.integration

Key = Callable[[str], bytes]
ClientFor = Callable[..., AsyncClient]


async def next_batch(watch: object, timeout: float = 5.0) -> WatchBatch:
    return await asyncio.wait_for(anext(watch), timeout)  # type: ignore[call-overload]


async def test_a_watch_from_now_sees_later_changes_in_order(
    client_for: ClientFor, key: Key
) -> None:
    async with client_for() as client:
        await client.put(key("before"), "not seen")
        async with client.watch(key(""), prefix=True, prev_kv=True) as watch:
            first = await client.put(key("a"), "1")
            await client.put(key("a"), "2")
            deleted = await client.delete(key("a"))
            events: list[Event] = []
            while len(events) < 3:
                events.extend((await next_batch(watch)).events)

    assert [(e.type, e.kv.key, e.kv.value) for e in events] == [
        (EventType.PUT, key("a"), b"1"),
        (EventType.PUT, key("a"), b"2"),
        (EventType.DELETE, key("a"), b""),
    ]
    assert [e.revision for e in events] == [
        first.header.revision,
        first.header.revision + 1,
        deleted.header.revision,
    ]
    assert events[0].prev_kv is None and events[0].is_put
    assert events[1].prev_kv is not None and events[1].prev_kv.value == b"1"
    assert events[2].is_delete and events[2].prev_kv is not None
    assert events[2].prev_kv.value == b"2"
    assert watch.next_revision == deleted.header.revision + 1


async def test_a_watch_from_an_old_revision_replays_history(
    client_for: ClientFor, key: Key
) -> None:
    async with client_for() as client:
        first = await client.put(key("k"), "1")
        await client.put(key("k"), "2")
        await client.put(key("other"), "x")
        async with client.watch(key("k"), start_revision=first.header.revision) as watch:
            replayed = [e async for e in _take(watch.events(), 2)]
    assert [(e.kv.value, e.revision) for e in replayed] == [
        (b"1", first.header.revision),
        (b"2", first.header.revision + 1),
    ]


async def test_filters_drop_event_kinds(client_for: ClientFor, key: Key) -> None:
    async with (
        client_for() as client,
        client.watch(key("k"), filters=[WatchFilter.NOPUT]) as watch,
    ):
        await client.put(key("k"), "1")
        gone = await client.delete(key("k"))
        batch = await next_batch(watch)
    assert [(e.type, e.revision) for e in batch.events] == [
        (EventType.DELETE, gone.header.revision)
    ]


async def test_requested_progress_arrives_as_an_empty_batch(
    client_for: ClientFor, key: Key
) -> None:
    async with client_for() as client, client.watch(key("quiet")) as watch:
        now = await client.put(key("elsewhere"), "x")
        await watch.request_progress()
        batch = await next_batch(watch)
    assert batch.is_progress_notify and batch.events == ()
    assert batch.revision == now.header.revision
    assert watch.next_revision == now.header.revision + 1


async def test_waiting_with_a_timeout_does_not_break_the_watch(
    client_for: ClientFor, key: Key
) -> None:
    async with client_for() as client, client.watch(key("k")) as watch:
        with pytest.raises(TimeoutError):
            await next_batch(watch, timeout=0.2)
        put = await client.put(key("k"), "late")
        batch = await next_batch(watch)
    assert [e.revision for e in batch.events] == [put.header.revision]


async def test_cancel_ends_iteration(client_for: ClientFor, key: Key) -> None:
    async with client_for() as client:
        watch = client.watch(key("k"))
        await watch.start()
        await client.put(key("k"), "delivered before the cancel")
        await asyncio.sleep(0.2)
        await watch.cancel()
        remaining = [batch async for batch in watch]
    assert [e.kv.value for b in remaining for e in b.events] == [b"delivered before the cancel"]


async def test_a_compacted_start_revision_raises_compacted_error(
    client_for: ClientFor, key: Key
) -> None:
    async with client_for() as client:
        old = await client.put(key("k"), "1")
        new = await client.put(key("k"), "2")
        await client.compact(new.header.revision)
        async with client.watch(key("k"), start_revision=old.header.revision) as watch:
            # etcd creates the watch first, then cancels it with the compact revision.
            with pytest.raises(errors.CompactedError) as info:
                await next_batch(watch)
            with pytest.raises(StopAsyncIteration):
                await next_batch(watch)  # the watch is over
    assert info.value.compact_revision == new.header.revision


async def _take(events, n: int):  # type: ignore[no-untyped-def]
    async for event in events:
        yield event
        n -= 1
        if n == 0:
            return
