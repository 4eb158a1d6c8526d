"""Building blocks every recipe shares: idempotent retries, owned sessions, prefix views, waits.

Recipes run while members fail, so each write they make is shaped to be *safely repeatable*: a
key named after the session's lease, created with "if absent" (lock, election, barrier), or a
write that leaves a short-lived receipt (the queues). `retrying` then repeats such a write after
an UNAVAILABLE error or a lost reply, which the client itself must not do for writes.

`PrefixView` is "list, then watch from the list's revision": a consistent copy of every key
under a prefix, updated in revision order by a resumable watch, reloaded after a compaction. It is
what discovery, configuration, heartbeats, progress and election observation are built on.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType, TracebackType
from typing import TypeVar

from raftkv.client import errors, ops
from raftkv.client.aio import AsyncClient
from raftkv.client.lease import Lease
from raftkv.client.ops import Compare, KeyLike, to_bytes
from raftkv.client.types import (
    Event,
    EventType,
    GetResult,
    KeyValue,
    SortOrder,
    SortTarget,
    WatchFilter,
)
from raftkv.client.watch import Watch

__all__ = [
    "LostError",
    "PrefixUpdate",
    "PrefixView",
    "Session",
    "create_if_absent",
    "retrying",
    "unique_id",
    "wait_deleted",
    "wait_predecessors",
]

T = TypeVar("T")

# Failures after which a repeatable write may be sent again: the cluster could not answer, or the
# reply was lost (the write may or may not have been applied).
AMBIGUOUS = (errors.UnavailableError, errors.TimeoutError)
_RETRY_FOR_S = 30.0


class LostError(errors.EtcdError):
    """The session lease behind a lock, election or registration is gone, or its key was
    deleted: whatever it protected is no longer protected."""

    MESSAGE = "session lost"


def unique_id() -> str:
    """A key suffix unique across processes, increasing with wall time for readability."""
    return f"{time.time_ns():020d}-{secrets.token_hex(4)}"


async def retrying(write: Callable[[], Awaitable[T]], *, retry_for: float = _RETRY_FOR_S) -> T:
    """Run `write`, repeating it after ambiguous failures for up to `retry_for` seconds.

    Only for writes that are safe to repeat (see the module docstring)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + retry_for
    pause = 0.05
    while True:
        try:
            return await write()
        except AMBIGUOUS:
            if loop.time() + pause > deadline:
                raise
            await asyncio.sleep(pause)
            pause = min(pause * 2, 1.0)


class Session:
    """The lease a recipe hangs its keys on: the caller's, or one it grants and revokes itself."""

    def __init__(self, client: AsyncClient, lease: Lease | None, ttl: int) -> None:
        self._client = client
        self._given = lease
        self._ttl = ttl
        self.lease: Lease | None = lease

    async def open(self) -> Lease:
        if self.lease is None:
            # A grant repeated after an ambiguous failure may leave a spare lease: it expires.
            self.lease = await retrying(lambda: self._client.lease(self._ttl).start())
        return self.lease

    async def close(self) -> None:
        """Revoke the lease if this session granted it (its keys are deleted at once)."""
        lease, self.lease = self.lease, self._given
        if lease is not None and lease is not self._given:
            with contextlib.suppress(*AMBIGUOUS):
                await lease.close()


async def until_lost(work: Awaitable[T], lost: asyncio.Event, what: str) -> T:
    """Await `work` unless `lost` is set first, which raises `LostError(what)`."""
    task = asyncio.ensure_future(work)
    waiter = asyncio.ensure_future(lost.wait())
    try:
        await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiter.cancel()
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    if task.done() and not task.cancelled():
        return task.result()
    raise LostError(what)


class CancelOnLoss:
    """Cancel the task that entered it when `lost` is set, and turn that cancellation into
    `LostError` on exit (the way `asyncio.timeout` turns its cancellation into TimeoutError)."""

    def __init__(self, lost: asyncio.Event, what: str) -> None:
        self._lost = lost
        self._what = what
        self._watcher: asyncio.Task[None] | None = None
        self._fired = False
        self._task: asyncio.Task[object] | None = None

    async def __aenter__(self) -> CancelOnLoss:
        self._task = asyncio.current_task()
        self._watcher = asyncio.get_running_loop().create_task(self._watch())
        return self

    async def _watch(self) -> None:
        await self._lost.wait()
        self._fired = True
        if self._task is not None:
            self._task.cancel(f"{self._what}: lost")

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
        fired = self._fired and exc_type is asyncio.CancelledError and self._task is not None
        if fired and self._task is not None and self._task.uncancel() == 0:
            raise LostError(self._what) from exc


async def create_if_absent(
    client: AsyncClient, key: bytes, value: bytes, lease: int
) -> tuple[int, KeyValue | None]:
    """Create `key` unless it exists; repeatable. Returns its create revision, and the existing
    key-value when it was already there (a session taking its place again)."""

    async def attempt() -> tuple[int, KeyValue | None]:
        result = await (
            client.txn()
            .if_(Compare.create_revision(key) == 0)
            .then(ops.put(key, value, lease=lease))
            .else_(ops.get(key))
            .commit()
        )
        if result.succeeded:
            return result.header.revision, None
        got = result.responses[0]
        assert isinstance(got, GetResult) and got.kv is not None
        return got.kv.create_revision, got.kv

    return await retrying(attempt)


# -- waiting for keys to go ------------------------------------------------------------------------


async def wait_deleted(client: AsyncClient, key: bytes, after_revision: int) -> None:
    """Return once `key` is deleted after `after_revision` (at once if it already was)."""
    watch = client.watch(key, start_revision=after_revision + 1, filters=[WatchFilter.NOPUT])
    async with watch:
        async for event in watch.events():
            if event.is_delete:
                return


async def wait_predecessors(client: AsyncClient, prefix: bytes, revision: int) -> None:
    """Return once no key under `prefix` created before `revision` remains: the fair queue of
    locks and elections, where each waiter watches only the waiter just before it."""
    while True:
        older = await client.get(
            prefix,
            prefix=True,
            max_create_revision=revision - 1,
            sort_target=SortTarget.CREATE,
            sort_order=SortOrder.DESCEND,
            limit=1,
        )
        if not older.kvs:
            return
        await wait_deleted(client, older.kvs[0].key, older.header.revision)


# -- prefix views ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PrefixUpdate:
    """Every key under the prefix at `revision`, and the events that led there from the previous
    update. `reset` marks a full load (the first update, and reloads after a compaction), whose
    `events` are the differences from the previous copy as PUT/DELETE events."""

    revision: int
    kvs: Mapping[bytes, KeyValue]
    events: tuple[Event, ...]
    reset: bool


class PrefixView:
    """A live copy of the keys under `prefix`: `async with PrefixView(client, p) as view:`.

    `view.kvs` is the newest copy; iterating yields a `PrefixUpdate` for the initial load and then
    after each watch response, in revision order, surviving member failures.
    """

    def __init__(self, client: AsyncClient, prefix: KeyLike) -> None:
        self._client = client
        self.prefix = to_bytes(prefix)
        self._kvs: dict[bytes, KeyValue] = {}
        self.revision = 0
        self._watch: Watch | None = None
        self._pending: PrefixUpdate | None = None
        self._closed = False

    @property
    def kvs(self) -> Mapping[bytes, KeyValue]:
        return MappingProxyType(self._kvs)

    async def start(self) -> PrefixView:
        await self._load()
        return self

    async def close(self) -> None:
        self._closed = True
        if self._watch is not None:
            await self._watch.cancel()

    async def __aenter__(self) -> PrefixView:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def _load(self) -> None:
        got = await self._client.get(self.prefix, prefix=True)
        fresh = {kv.key: kv for kv in got.kvs}
        events = [
            Event(EventType.PUT, kv, None)
            for key, kv in fresh.items()
            if key not in self._kvs or self._kvs[key].mod_revision != kv.mod_revision
        ]
        events += [
            Event(EventType.DELETE, kv, None) for key, kv in self._kvs.items() if key not in fresh
        ]
        self._kvs, self.revision = fresh, got.header.revision
        self._pending = PrefixUpdate(self.revision, dict(fresh), tuple(events), reset=True)
        if self._watch is not None:
            await self._watch.cancel()
        self._watch = self._client.watch(self.prefix, prefix=True, start_revision=self.revision + 1)
        await self._watch.start()

    def __aiter__(self) -> AsyncIterator[PrefixUpdate]:
        return self._updates()

    async def _updates(self) -> AsyncIterator[PrefixUpdate]:
        if self._watch is None:
            await self.start()
        while not self._closed:
            if self._pending is not None:
                update, self._pending = self._pending, None
                yield update
                continue
            assert self._watch is not None
            try:
                batch = await anext(self._watch)
            except StopAsyncIteration:
                return
            except errors.CompactedError:
                await self._load()
                continue
            if not batch.events:
                continue
            for event in batch.events:
                if event.is_put:
                    self._kvs[event.kv.key] = event.kv
                else:
                    self._kvs.pop(event.kv.key, None)
            self.revision = batch.events[-1].revision
            yield PrefixUpdate(self.revision, dict(self._kvs), batch.events, reset=False)
