"""Recipes carry on while the member their client talks to is SIGKILLed: a config subscriber
still sees every published change once and in order, and a queue worked by producers and
a consumer across the kill hands out every item exactly once, in FIFO order per producer."""

from __future__ import annotations

import asyncio
import signal

from raftkv.client import AsyncClient
from raftkv.client.recipes import ConfigUpdate, Queue, publish, subscribe

from tests.recipes.conftest import follower
from tests.support.raftkv import RaftKVCluster, RaftKVMember

CHANGES = 30


def victim_first(cluster: RaftKVCluster) -> tuple[str, RaftKVMember]:
    """Endpoints that send a new client to a follower first, and that follower."""
    victim = follower(cluster)
    others = [m.client_url for m in cluster.members if m is not victim]
    return ",".join([victim.client_url, *others]), victim


async def test_a_subscriber_sees_every_change_in_order_across_a_member_kill(
    fresh_cluster: RaftKVCluster, name: str
) -> None:
    endpoints, victim = victim_first(fresh_cluster)
    async with (
        AsyncClient(fresh_cluster.endpoints) as pub,
        AsyncClient(endpoints) as sub,
    ):
        await publish(pub, name, {"counter": "0"})
        updates: list[ConfigUpdate] = []
        done = asyncio.Event()

        async def follow() -> None:
            async for update in subscribe(sub, name):
                updates.append(update)
                if update.text("counter") == str(CHANGES):
                    done.set()

        following = asyncio.create_task(follow())
        while not updates:
            await asyncio.sleep(0.05)
        for i in range(1, CHANGES + 1):
            if i == CHANGES // 3:
                victim.kill(signal.SIGKILL)
            await publish(pub, name, {"counter": str(i)})
        await asyncio.wait_for(done.wait(), 30)
        following.cancel()

    assert [u.text("counter") for u in updates] == [str(i) for i in range(CHANGES + 1)]
    revisions = [u.revision for u in updates]
    assert revisions == sorted(set(revisions)), "no update repeated or out of order"


async def test_a_queue_hands_out_each_item_once_across_a_member_kill(
    fresh_cluster: RaftKVCluster, name: str
) -> None:
    endpoints, victim = victim_first(fresh_cluster)
    producers, per_producer = 2, 15
    total = producers * per_producer
    popped: list[bytes] = []

    async def produce(client: AsyncClient, producer: int) -> None:
        queue = Queue(client, name)
        for i in range(per_producer):
            await queue.push(f"{producer}-{i:02d}".encode())

    async def consume(client: AsyncClient) -> None:
        queue = Queue(client, name)
        while len(popped) < total:
            popped.append(await queue.pop())

    async with AsyncClient(endpoints) as a, AsyncClient(endpoints) as b:
        consumer = asyncio.create_task(consume(a))
        writers = [asyncio.create_task(produce(c, n)) for n, c in enumerate((a, b))]
        while len(popped) < 5:
            await asyncio.sleep(0.02)
        victim.kill(signal.SIGKILL)
        await asyncio.wait_for(asyncio.gather(*writers, consumer), 40)
        assert await Queue(a, name).size() == 0

    assert len(popped) == len(set(popped)) == total, "each item exactly once"
    for producer in range(producers):
        mine = [item for item in popped if item.startswith(f"{producer}-".encode())]
        assert mine == sorted(mine), f"producer {producer}'s items left the queue out of order"
