"""Distributed lock: three workers take turns on /example/locks/report in the order they
queued; each gets a growing fencing token to hand to the storage it writes.

    .venv/bin/python examples/distributed_lock.py
"""

import asyncio

from _endpoints import ENDPOINTS
from raftkv.client import AsyncClient
from raftkv.client.recipes import Lock


async def worker(name: str) -> None:
    async with AsyncClient(ENDPOINTS) as client, Lock(client, "/example/locks/report") as token:
        print(f"{name} holds the lock (fencing token {token})", flush=True)
        await asyncio.sleep(0.3)
        print(f"{name} releases it", flush=True)


async def main() -> None:
    workers = []
    for name in ("alice", "bob", "carol"):
        workers.append(asyncio.create_task(worker(name)))
        await asyncio.sleep(0.1)
    await asyncio.gather(*workers)


asyncio.run(main())
