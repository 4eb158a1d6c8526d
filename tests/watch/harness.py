"""Helpers for the watch tests: writes on a real KVStore, and reading a stream with deadlines."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, ParamSpec

from raftkv.mvcc import KVStore
from raftkv.pb.etcdserverpb import rpc_pb2
from raftkv.pb.mvccpb import kv_pb2
from raftkv.watch import WatchableStore, WatchStream

PUT = kv_pb2.Event.PUT
DELETE = kv_pb2.Event.DELETE
NOPUT = rpc_pb2.WatchCreateRequest.NOPUT
NODELETE = rpc_pb2.WatchCreateRequest.NODELETE

P = ParamSpec("P")


def async_test(fn: Callable[P, Awaitable[None]]) -> Callable[P, None]:
    """Run an async test on a fresh event loop, failing it after 30 s instead of hanging."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> None:
        async def bounded() -> None:
            await asyncio.wait_for(fn(*args, **kwargs), 30)

        asyncio.run(bounded())

    return wrapper


@asynccontextmanager
async def watching(store: KVStore, **options: Any) -> AsyncIterator[WatchableStore]:
    hub = WatchableStore(store, **options)
    hub.start()
    try:
        yield hub
    finally:
        await hub.stop()


def put(store: KVStore, *pairs: tuple[bytes, bytes]) -> int:
    """One write transaction putting every pair; returns its revision."""
    with store.write() as txn:
        for key, value in pairs:
            txn.put(key, value)
    return store.current_revision


def delete(store: KVStore, key: bytes, range_end: bytes = b"") -> int:
    with store.write() as txn:
        txn.delete_range(key, range_end)
    return store.current_revision


def create(stream: WatchStream, key: bytes, **fields: Any) -> None:
    stream.create(rpc_pb2.WatchCreateRequest(key=key, **fields))


async def recv(stream: WatchStream, timeout: float = 2.0) -> rpc_pb2.WatchResponse:
    item = await asyncio.wait_for(stream.next(), timeout)
    return item.response


async def recv_created(stream: WatchStream) -> int:
    response = await recv(stream)
    assert response.created and not response.canceled, response
    return response.watch_id


async def assert_quiet(stream: WatchStream, wait: float = 0.05) -> None:
    """Nothing more arrives, even after the background tasks had time to run."""
    try:
        item = await asyncio.wait_for(stream.next(), wait)
    except TimeoutError:
        return
    raise AssertionError(f"unexpected response: {item.response}")


async def collect_events(
    stream: WatchStream, count: int, watch_id: int | None = None
) -> list[kv_pb2.Event]:
    """Read responses until `count` events (of `watch_id`, if given) have arrived."""
    events: list[kv_pb2.Event] = []
    while len(events) < count:
        response = await recv(stream)
        if watch_id is None or response.watch_id == watch_id:
            events.extend(response.events)
    assert len(events) == count, events
    return events


async def collect_by_watch(
    stream: WatchStream, counts: dict[int, int]
) -> dict[int, list[kv_pb2.Event]]:
    """Read responses until each watch ID in `counts` has had that many events."""
    events: dict[int, list[kv_pb2.Event]] = {watch_id: [] for watch_id in counts}
    while any(len(events[w]) < n for w, n in counts.items()):
        response = await recv(stream)
        events[response.watch_id].extend(response.events)
    assert {w: len(e) for w, e in events.items()} == counts
    return events


def revisions(events: list[kv_pb2.Event]) -> list[int]:
    return [e.kv.mod_revision for e in events]
