"""Distributed queues: FIFO with competing consumers, a priority queue, a batch released at a
count, and a double barrier.

    .venv/bin/python examples/queues.py
"""

import asyncio

from _endpoints import ENDPOINTS
from raftkv.client import AsyncClient
from raftkv.client.recipes import ConditionQueue, DoubleBarrier, PriorityQueue, Queue


async def main() -> None:
    async with AsyncClient(ENDPOINTS) as client:
        jobs = Queue(client, "/example/queues/jobs")
        for i in range(4):
            await jobs.push(f"job-{i}")
        print("FIFO:", [(await jobs.pop()).decode() for _ in range(4)])

        urgent = PriorityQueue(client, "/example/queues/tickets")
        for ticket, priority in (("minor", 5), ("outage", 0), ("typo", 9)):
            await urgent.push(ticket, priority)
        print("by priority:", [(await urgent.pop()).decode() for _ in range(3)])

        batches = ConditionQueue(client, "/example/queues/players", 3)
        game = asyncio.create_task(batches.take())
        for player in ("ann", "ben", "cat"):
            await batches.push(player)
        print("a game starts with:", [p.decode() for p in await game])

        async def participant(n: int) -> None:
            async with AsyncClient(ENDPOINTS) as own:
                barrier = DoubleBarrier(own, "/example/queues/stage", 3)
                await barrier.enter()
                print(f"participant {n} entered with the others", flush=True)
                await barrier.leave()

        await asyncio.gather(*(participant(n) for n in range(3)))
        print("all three left together")


asyncio.run(main())
