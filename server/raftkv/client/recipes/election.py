"""Leader election in the client, and a runner that does work only while it leads.

Why in the client rather than through the Election service: the recipe then works against any
etcd v3 server, shares etcd's `concurrency.Election` layout (`<name>/<lease id in hex>`, the
oldest key leads) so `etcdctl elect` and `raftkvctl elect` campaign in the same elections, and —
the deciding reason — it survives member failures. A Campaign RPC blocks on one member until the
caller leads; if that member dies the client cannot tell whether it was queued and must not
blindly repeat a write. Here every step is repeatable (the key is named after the lease and
created only if absent) and the wait is a resumable watch, so a campaign simply carries on.

Leadership ends when the leader resigns, when its key is deleted, or when its lease may have
expired (`Lease.lost`). `Election.lost` is set then; `run_as_leader` cancels the leader-only
work at that moment, so no leader-only action starts after leadership is gone.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

from raftkv.client import errors, ops
from raftkv.client.aio import AsyncClient
from raftkv.client.lease import Lease
from raftkv.client.ops import Compare, KeyLike, to_bytes
from raftkv.client.recipes._common import (
    AMBIGUOUS,
    CancelOnLoss,
    LostError,
    PrefixView,
    Session,
    create_if_absent,
    retrying,
    until_lost,
    wait_deleted,
    wait_predecessors,
)
from raftkv.client.types import KeyValue, LeaderKey, SortOrder, SortTarget

__all__ = ["Election", "current_leader", "run_as_leader"]

T = TypeVar("T")
_UNSET = object()


class Election:
    """One participant of election `name`: `campaign`, then `proclaim`/`resign` as leader.

    Without `lease` the participant grants its own lease of `ttl` seconds, revoked on `resign`.
    """

    def __init__(
        self, client: AsyncClient, name: KeyLike, *, ttl: int = 10, lease: Lease | None = None
    ) -> None:
        self._client = client
        self.name = to_bytes(name).rstrip(b"/")
        self.prefix = self.name + b"/"
        self._session = Session(client, lease, ttl)
        self.leader_key: LeaderKey | None = None
        self.lost = asyncio.Event()
        self._monitor: asyncio.Task[None] | None = None

    @property
    def is_leader(self) -> bool:
        return self.leader_key is not None and not self.lost.is_set()

    async def campaign(self, value: KeyLike, *, timeout: float | None = None) -> LeaderKey:
        """Wait until this participant leads (at most `timeout`); publish `value` as leader.

        On failure or cancellation the candidacy is withdrawn."""
        lease = await self._session.open()
        key = self.prefix + f"{lease.id:x}".encode()
        data = to_bytes(value)
        try:
            async with asyncio.timeout(timeout):
                revision, existing = await create_if_absent(self._client, key, data, lease.id)
                if existing is not None and existing.value != data:
                    await self._put_value(key, revision, lease.id, data)
                await until_lost(
                    wait_predecessors(self._client, self.prefix, revision),
                    lease.lost,
                    "election",
                )
                mine = await self._client.get(key)
                if mine.kv is None or mine.kv.create_revision != revision:
                    raise LostError("campaign key deleted while waiting")
        except BaseException:
            await asyncio.shield(self._withdraw(key, None))
            raise
        self.leader_key = LeaderKey(self.name, key, revision, lease.id)
        self.lost.clear()
        self._monitor = asyncio.get_running_loop().create_task(
            self._watch_loss(lease, key, revision)
        )
        return self.leader_key

    async def proclaim(self, value: KeyLike) -> None:
        """Publish a new value as leader; `ElectionNotLeaderError` when not leading."""
        leader = self.leader_key
        if leader is None or self.lost.is_set():
            raise errors.ElectionNotLeaderError()
        await self._put_value(leader.key, leader.rev, leader.lease, to_bytes(value))

    async def resign(self) -> None:
        """Stop leading (or campaigning); the next candidate takes over. Idempotent."""
        if self._monitor is not None:
            self._monitor.cancel()
            self._monitor = None
        leader, self.leader_key = self.leader_key, None
        if leader is not None:
            await self._withdraw(leader.key, leader.rev)
        else:
            await self._session.close()

    async def leader(self) -> KeyValue | None:
        """The current leader's key-value, None when nobody leads."""
        return await current_leader(self._client, self.prefix)

    async def observe(self) -> AsyncIterator[KeyValue | None]:
        """The leader now, then after each change of leader or of its value (None: no leader)."""
        async with PrefixView(self._client, self.prefix) as view:
            shown: object = _UNSET
            async for update in view:
                leader = min(update.kvs.values(), key=lambda kv: kv.create_revision, default=None)
                now = None if leader is None else (leader.key, leader.value, leader.create_revision)
                if now != shown:
                    shown = now
                    yield leader

    # -- internals ---------------------------------------------------------------------------------

    async def _put_value(self, key: bytes, revision: int, lease: int, value: bytes) -> None:
        result = await retrying(
            self._client.txn()
            .if_(Compare.create_revision(key) == revision)
            .then(ops.put(key, value, lease=lease))
            .commit
        )
        if not result.succeeded:
            self.lost.set()
            raise errors.ElectionNotLeaderError()

    async def _withdraw(self, key: bytes, revision: int | None) -> None:
        txn = self._client.txn()
        if revision is not None:
            txn.if_(Compare.create_revision(key) == revision)
        with contextlib.suppress(*AMBIGUOUS):
            await retrying(txn.then(ops.delete(key)).commit, retry_for=5.0)
        await self._session.close()

    async def _watch_loss(self, lease: Lease, key: bytes, revision: int) -> None:
        deleted = asyncio.ensure_future(wait_deleted(self._client, key, revision))
        expired = asyncio.ensure_future(lease.lost.wait())
        try:
            await asyncio.wait({deleted, expired}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            deleted.cancel()
            expired.cancel()
        self.lost.set()


async def current_leader(client: AsyncClient, name: KeyLike) -> KeyValue | None:
    """The leader's key-value of election `name` (the oldest candidate), None when nobody."""
    prefix = to_bytes(name).rstrip(b"/") + b"/"
    got = await client.get(
        prefix, prefix=True, sort_target=SortTarget.CREATE, sort_order=SortOrder.ASCEND, limit=1
    )
    return got.kv


async def run_as_leader(
    client: AsyncClient,
    name: KeyLike,
    value: KeyLike,
    work: Callable[[], Awaitable[T]],
    *,
    ttl: int = 10,
) -> T:
    """Campaign in election `name`, then run `work()` while leading and resign when it ends.

    If leadership is lost first, `work` is cancelled and `LostError` is raised: call again to
    campaign anew.
    """
    election = Election(client, name, ttl=ttl)
    await election.campaign(value)
    try:
        async with CancelOnLoss(election.lost, f"leadership of {election.name.decode()}"):
            return await work()
    finally:
        await asyncio.shield(election.resign())
