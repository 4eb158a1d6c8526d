"""`Lock`: mutual exclusion, fairness in queue order, fencing tokens, giving up, loss detection."""

from __future__ import annotations

import asyncio
import itertools
import time

import pytest
from raftkv.client import AsyncClient
from raftkv.client.recipes import Lock, LostError, lock_owner

from tests.support.raftkv import RaftKVCluster


async def _count(client: AsyncClient, name: str) -> int:
    return (await client.get(name + "/", prefix=True, count_only=True)).count


async def _wait_count(client: AsyncClient, name: str, count: int) -> None:
    while await _count(client, name) != count:
        await asyncio.sleep(0.02)


async def test_holders_never_overlap_and_are_served_in_queue_order(
    cluster: RaftKVCluster, name: str
) -> None:
    spans: list[tuple[int, float, float, int]] = []
    all_queued = asyncio.Event()
    async with AsyncClient(cluster.endpoints) as watcher:

        async def contender(i: int) -> None:
            async with AsyncClient(cluster.endpoints) as client, Lock(client, name) as token:
                entered = time.monotonic()
                await (all_queued.wait() if i == 0 else asyncio.sleep(0.05))
                spans.append((i, entered, time.monotonic(), token))

        tasks = []
        for i in range(5):
            tasks.append(asyncio.create_task(contender(i)))
            await _wait_count(watcher, name, i + 1)  # queued in this order
        all_queued.set()
        await asyncio.gather(*tasks)
        assert await _count(watcher, name) == 0

    assert [s[0] for s in spans] == [0, 1, 2, 3, 4]
    for (_, _, end, token), (_, start, _, next_token) in itertools.pairwise(spans):
        assert end <= start
        assert next_token > token  # fencing tokens only grow


async def test_a_holder_whose_lease_is_revoked_is_cancelled_and_the_next_gets_in(
    cluster: RaftKVCluster, name: str
) -> None:
    async with AsyncClient(cluster.endpoints) as a, AsyncClient(cluster.endpoints) as b:
        lock = Lock(a, name)
        reached_end = False
        started = asyncio.Event()

        async def hold() -> None:
            nonlocal reached_end
            async with lock:
                started.set()
                await asyncio.sleep(30)
                reached_end = True

        holder = asyncio.create_task(hold())
        await started.wait()
        owner = await lock_owner(b, name)
        assert owner is not None and owner.create_revision == lock.token
        await b.lease_revoke(owner.lease)  # e.g. an operator, or the TTL running out
        with pytest.raises(LostError):
            await asyncio.wait_for(holder, 5)
        assert not reached_end
        async with Lock(b, name) as token:
            assert token > lock.token


async def test_try_acquire_and_timeouts_leave_no_trace(cluster: RaftKVCluster, name: str) -> None:
    async with AsyncClient(cluster.endpoints) as a, AsyncClient(cluster.endpoints) as b:
        async with Lock(a, name):
            assert not await Lock(b, name).try_acquire()
            with pytest.raises(TimeoutError):
                await Lock(b, name).acquire(timeout=0.3)
            assert await _count(b, name) == 1  # only the holder's key
        free = Lock(b, name)
        assert await free.try_acquire()
        assert free.held
        await free.release()
        assert await _count(b, name) == 0


async def test_a_crashed_holder_is_released_after_its_ttl(
    cluster: RaftKVCluster, name: str
) -> None:
    crashed = AsyncClient(cluster.endpoints)
    await Lock(crashed, name, ttl=2).acquire()
    await crashed.close()  # stops renewing without releasing, as a killed process would
    started = time.monotonic()
    async with AsyncClient(cluster.endpoints) as b:
        await Lock(b, name).acquire(timeout=5)
    assert time.monotonic() - started < 2 + 2.5
