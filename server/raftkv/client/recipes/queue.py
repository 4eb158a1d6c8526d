"""Distributed queues and barriers: FIFO, priority, count-triggered, barrier and double barrier.

Items live as keys under `<name>/`; a queue's order is the keys' create revision, which the
cluster assigns, so FIFO holds across any number of producers on any machines. Popping is one
transaction: "if the head still has the mod revision I read, delete it" — exactly one of several
concurrent consumers wins each item, the others read the new head and try again.

Exactly once, even when a member dies mid-request. A reply lost on the way back leaves a write
ambiguous, and neither a push nor a pop may simply be repeated (an item could be queued twice, or
popped and then dropped). So each pop also writes a *receipt* `<name>.receipts/<item>` holding the
consumer's claim id, under a short lease (`receipt_ttl`). A consumer whose pop was ambiguous
reads the receipt: its own claim id means it got the item. A producer pushes with "only if
neither the item nor its receipt exists", which makes repeating the push harmless.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence
from typing import ClassVar

from raftkv.client import ops
from raftkv.client.aio import AsyncClient
from raftkv.client.lease import Lease
from raftkv.client.ops import Compare, KeyLike, to_bytes
from raftkv.client.recipes._common import (
    AMBIGUOUS,
    Session,
    create_if_absent,
    retrying,
    unique_id,
    wait_deleted,
)
from raftkv.client.types import GetResult, KeyValue, SortOrder, SortTarget, WatchFilter

__all__ = ["Barrier", "ConditionQueue", "DoubleBarrier", "PriorityQueue", "Queue"]


class _Receipts:
    """A lease for pop receipts, granted lazily and replaced before it gets old."""

    def __init__(self, client: AsyncClient, ttl: int) -> None:
        self._client = client
        self._ttl = ttl
        self._id = 0
        self._renew_at = 0.0

    async def lease(self) -> int:
        if time.monotonic() >= self._renew_at:
            granted = await retrying(lambda: self._client.lease_grant(self._ttl))
            self._id, self._renew_at = granted.id, time.monotonic() + granted.ttl / 2
        return self._id


class Queue:
    """A FIFO queue of byte strings: `await q.push(b"job")`, `await q.pop()` (waits for one)."""

    order: ClassVar[str] = "fifo"

    def __init__(self, client: AsyncClient, name: KeyLike, *, receipt_ttl: int = 60) -> None:
        self._client = client
        base = to_bytes(name).rstrip(b"/")
        self.prefix = base + b"/"
        self._receipt_prefix = base + b".receipts/"
        self._receipts = _Receipts(client, receipt_ttl)

    async def push(self, value: KeyLike) -> bytes:
        """Append `value`; returns the item's key."""
        return await self._push(self.prefix + unique_id().encode(), to_bytes(value))

    async def pop(self, *, timeout: float | None = None) -> bytes:
        """Remove and return the head, waiting for an item (at most `timeout`: TimeoutError)."""
        async with asyncio.timeout(timeout):
            while True:
                taken, revision = await self._take(1)
                if taken:
                    return taken[0].value
                await self._wait_for_push(revision)

    async def try_pop(self) -> bytes | None:
        """Remove and return the head, or None when the queue is empty."""
        taken, _ = await self._take(1)
        return taken[0].value if taken else None

    async def items(self) -> list[bytes]:
        """The queued values, head first (a snapshot)."""
        got = await self._client.get(
            self.prefix, prefix=True, sort_target=SortTarget.CREATE, sort_order=SortOrder.ASCEND
        )
        return [kv.value for kv in self._ordered(got.kvs)]

    async def size(self) -> int:
        return (await self._client.get(self.prefix, prefix=True, count_only=True)).count

    # -- internals ---------------------------------------------------------------------------------

    def _ordered(self, kvs: Sequence[KeyValue]) -> list[KeyValue]:
        return list(kvs)

    async def _head(self, count: int) -> GetResult:
        return await self._client.get(
            self.prefix,
            prefix=True,
            sort_target=SortTarget.CREATE,
            sort_order=SortOrder.ASCEND,
            limit=count,
        )

    def _receipt(self, key: bytes) -> bytes:
        return self._receipt_prefix + key[len(self.prefix) :]

    async def _push(self, key: bytes, value: bytes) -> bytes:
        # Repeatable: once the item exists, or existed and was popped, this changes nothing.
        await retrying(
            self._client.txn()
            .if_(
                Compare.create_revision(key) == 0,
                Compare.create_revision(self._receipt(key)) == 0,
            )
            .then(ops.put(key, value))
            .commit
        )
        return key

    async def _take(self, count: int) -> tuple[list[KeyValue], int]:
        """Claim the first `count` items at once; ([], revision read) when fewer are queued."""
        while True:
            head = await self._head(count)
            if len(head.kvs) < count:
                return [], head.header.revision
            items = list(head.kvs)
            if await self._claim(items):
                return items, head.header.revision

    async def _claim(self, items: list[KeyValue]) -> bool:
        claim = unique_id().encode()
        lease = await self._receipts.lease()
        txn = self._client.txn()
        for kv in items:
            txn.if_(Compare.mod_revision(kv.key) == kv.mod_revision)
            txn.then(ops.delete(kv.key), ops.put(self._receipt(kv.key), claim, lease=lease))
        try:
            return (await txn.commit()).succeeded
        except AMBIGUOUS:
            # Our own receipt says the claim went through; anything else says it did not.
            receipt = await retrying(lambda: self._client.get(self._receipt(items[0].key)))
            return receipt.value == claim

    async def _wait_for_push(self, revision: int) -> None:
        watch = self._client.watch(
            self.prefix, prefix=True, start_revision=revision + 1, filters=[WatchFilter.NODELETE]
        )
        async with watch:
            async for batch in watch:
                if batch.events:
                    return


class PriorityQueue(Queue):
    """A queue ordered by priority (lower numbers first, 0..99999), FIFO within a priority."""

    order: ClassVar[str] = "priority"

    async def push(self, value: KeyLike, priority: int = 0) -> bytes:  # type: ignore[override]
        if not 0 <= priority <= 99999:
            raise ValueError("priority must be within 0..99999")
        key = self.prefix + f"{priority:05d}/{unique_id()}".encode()
        return await self._push(key, to_bytes(value))

    def _ordered(self, kvs: Sequence[KeyValue]) -> list[KeyValue]:
        return sorted(kvs, key=lambda kv: (kv.key[len(self.prefix) :][:5], kv.create_revision))

    async def _head(self, count: int) -> GetResult:
        # The lowest priority present, then the oldest items of that priority.
        first = await self._client.get(self.prefix, prefix=True, keys_only=True, limit=1)
        if not first.kvs:
            return first
        level = first.kvs[0].key[: len(self.prefix) + 6]
        return await self._client.get(
            level,
            prefix=True,
            sort_target=SortTarget.CREATE,
            sort_order=SortOrder.ASCEND,
            limit=count,
        )

    async def _take(self, count: int) -> tuple[list[KeyValue], int]:
        del count  # one item at a time: a batch could straddle priorities
        return await super()._take(1)


class ConditionQueue(Queue):
    """A queue whose consumers take `count` items at once, waiting until that many are queued:
    work that must start together (a batch, a game of N players)."""

    def __init__(
        self, client: AsyncClient, name: KeyLike, count: int, *, receipt_ttl: int = 60
    ) -> None:
        if count < 1:
            raise ValueError("count must be at least 1")
        super().__init__(client, name, receipt_ttl=receipt_ttl)
        self.count = count

    async def take(self, *, timeout: float | None = None) -> list[bytes]:
        """Wait until `count` items are queued, then remove and return the oldest `count`."""
        async with asyncio.timeout(timeout):
            while True:
                taken, revision = await self._take(self.count)
                if taken:
                    return [kv.value for kv in taken]
                await self._wait_for_push(revision)


class Barrier:
    """Holds everyone in `wait()` while the barrier key exists: `hold()` raises it, `release()`
    lowers it (a coordinator's "don't start before I say so")."""

    def __init__(self, client: AsyncClient, name: KeyLike) -> None:
        self._client = client
        self.key = to_bytes(name)

    async def hold(self) -> None:
        await create_if_absent(self._client, self.key, b"", 0)

    async def release(self) -> None:
        await retrying(lambda: self._client.delete(self.key))

    async def wait(self, *, timeout: float | None = None) -> None:
        async with asyncio.timeout(timeout):
            got = await self._client.get(self.key)
            if got.kv is not None:
                await wait_deleted(self._client, self.key, got.header.revision)


class DoubleBarrier:
    """`count` participants `enter()` together and `leave()` together.

    Each participant is a key under `<name>/waiters/` on its own lease (`ttl`), so a participant
    that dies is dropped after its TTL instead of blocking the others for ever.
    """

    def __init__(
        self,
        client: AsyncClient,
        name: KeyLike,
        count: int,
        *,
        ttl: int = 10,
        lease: Lease | None = None,
    ) -> None:
        if count < 1:
            raise ValueError("count must be at least 1")
        self._client = client
        base = to_bytes(name).rstrip(b"/")
        self._waiters = base + b"/waiters/"
        self._ready = base + b"/ready"
        self.count = count
        self._session = Session(client, lease, ttl)
        self._key = b""

    async def enter(self, *, timeout: float | None = None) -> None:
        """Wait until `count` participants have entered."""
        lease = await self._session.open()
        self._key = self._waiters + f"{lease.id:x}".encode()
        async with asyncio.timeout(timeout):
            await create_if_absent(self._client, self._key, b"", lease.id)
            state = await self._client.commit(
                ops.txn().then(
                    ops.get(self._waiters, prefix=True, count_only=True), ops.get(self._ready)
                )
            )
            waiters, ready = state.responses
            assert isinstance(waiters, GetResult) and isinstance(ready, GetResult)
            if waiters.count >= self.count:
                await retrying(lambda: self._client.put(self._ready, b""))
            elif ready.kv is None:
                await self._wait_ready(state.header.revision)

    async def leave(self, *, timeout: float | None = None) -> None:
        """Wait until every participant has left (the last one resets the barrier)."""
        async with asyncio.timeout(timeout):
            while True:
                got = await self._client.get(
                    self._waiters,
                    prefix=True,
                    sort_target=SortTarget.CREATE,
                    sort_order=SortOrder.ASCEND,
                )
                if not got.kvs:
                    break
                lowest, highest = got.kvs[0], got.kvs[-1]
                if len(got.kvs) == 1 and lowest.key == self._key:
                    await retrying(
                        self._client.txn()
                        .then(ops.delete(self._ready), ops.delete(self._key))
                        .commit
                    )
                    break
                if lowest.key == self._key:
                    await wait_deleted(self._client, highest.key, got.header.revision)
                    continue
                deleted = await retrying(lambda: self._client.delete(self._key))
                await wait_deleted(self._client, lowest.key, deleted.header.revision)
        with contextlib.suppress(*AMBIGUOUS):
            await self._session.close()

    async def _wait_ready(self, revision: int) -> None:
        watch = self._client.watch(
            self._ready, start_revision=revision + 1, filters=[WatchFilter.NODELETE]
        )
        async with watch:
            async for batch in watch:
                if batch.events:
                    return
