"""Queues and barriers: FIFO across producers and consumers with every item delivered exactly
once, priorities, batches released at a count, and (double) barriers holding everyone."""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest
from raftkv.client import AsyncClient
from raftkv.client.recipes import Barrier, ConditionQueue, DoubleBarrier, PriorityQueue, Queue

from tests.support.raftkv import RaftKVCluster


async def test_fifo_across_producers_and_exactly_once_across_consumers(
    cluster: RaftKVCluster, name: str
) -> None:
    clients = [AsyncClient(cluster.endpoints) for _ in range(4)]
    try:
        pushed = []
        for i in range(12):  # producers take turns, on different clients and members
            value = f"item-{i:02d}".encode()
            await Queue(clients[i % 3], name).push(value)
            pushed.append(value)
        assert await Queue(clients[3], name).items() == pushed
        assert await Queue(clients[3], name).pop() == pushed[0]

        popped: list[bytes] = []

        async def consume(client: AsyncClient) -> None:
            queue = Queue(client, name)
            while (value := await queue.try_pop()) is not None:
                popped.append(value)

        await asyncio.gather(*(consume(c) for c in clients))
        assert Counter(popped) == Counter(pushed[1:])  # each item once, none lost
        assert await Queue(clients[0], name).size() == 0
    finally:
        for client in clients:
            await client.close()


async def test_pop_waits_for_a_push(cluster: RaftKVCluster, name: str) -> None:
    async with AsyncClient(cluster.endpoints) as a, AsyncClient(cluster.endpoints) as b:
        waiting = asyncio.create_task(Queue(a, name).pop())
        await asyncio.sleep(0.3)
        assert not waiting.done()
        await Queue(b, name).push("late")
        assert await asyncio.wait_for(waiting, 5) == b"late"
        with pytest.raises(TimeoutError):
            await Queue(a, name).pop(timeout=0.2)


async def test_priority_queue_serves_lower_numbers_first_then_fifo(
    cluster: RaftKVCluster, name: str
) -> None:
    async with AsyncClient(cluster.endpoints) as client:
        queue = PriorityQueue(client, name)
        for value, priority in [("low-1", 9), ("high", 0), ("mid", 5), ("low-2", 9)]:
            await queue.push(value, priority)
        order = [b"high", b"mid", b"low-1", b"low-2"]
        assert await queue.items() == order
        assert [await queue.pop() for _ in range(4)] == order
        with pytest.raises(ValueError):
            await queue.push("x", 100000)


async def test_condition_queue_releases_a_batch_once_the_count_is_reached(
    cluster: RaftKVCluster, name: str
) -> None:
    async with AsyncClient(cluster.endpoints) as a, AsyncClient(cluster.endpoints) as b:
        taker = asyncio.create_task(ConditionQueue(a, name, 3).take())
        producer = ConditionQueue(b, name, 3)
        for value in ("p1", "p2"):
            await producer.push(value)
        await asyncio.sleep(0.3)
        assert not taker.done()  # two of three
        await producer.push("p3")
        await producer.push("p4")
        assert await asyncio.wait_for(taker, 5) == [b"p1", b"p2", b"p3"]
        assert await producer.items() == [b"p4"]


async def test_barrier_holds_waiters_until_released(cluster: RaftKVCluster, name: str) -> None:
    async with AsyncClient(cluster.endpoints) as a, AsyncClient(cluster.endpoints) as b:
        await Barrier(a, name).wait(timeout=1)  # not held: passes at once
        await Barrier(a, name).hold()
        waiters = [asyncio.create_task(Barrier(b, name).wait()) for _ in range(3)]
        await asyncio.sleep(0.3)
        assert not any(w.done() for w in waiters)
        await Barrier(a, name).release()
        await asyncio.wait_for(asyncio.gather(*waiters), 5)


async def test_double_barrier_enters_and_leaves_together(cluster: RaftKVCluster, name: str) -> None:
    clients = [AsyncClient(cluster.endpoints) for _ in range(3)]
    log: list[str] = []
    try:

        async def participant(i: int, client: AsyncClient) -> None:
            barrier = DoubleBarrier(client, name, 3)
            log.append(f"arrive-{i}")
            await barrier.enter()
            log.append(f"enter-{i}")
            await asyncio.sleep(0.1 * i)
            log.append(f"done-{i}")
            await barrier.leave()
            log.append(f"leave-{i}")

        tasks = []
        for i, client in enumerate(clients):
            tasks.append(asyncio.create_task(participant(i, client)))
            await asyncio.sleep(0.2)
        await asyncio.wait_for(asyncio.gather(*tasks), 10)
    finally:
        for client in clients:
            await client.close()
    first_enter = min(log.index(f"enter-{i}") for i in range(3))
    last_arrive = max(log.index(f"arrive-{i}") for i in range(3))
    first_leave = min(log.index(f"leave-{i}") for i in range(3))
    last_done = max(log.index(f"done-{i}") for i in range(3))
    assert first_enter > last_arrive  # nobody entered before all three arrived
    assert first_leave > last_done  # nobody left before all three were done
