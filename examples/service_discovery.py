"""Service registration and discovery: two instances register with a TTL lease; a watcher
prints the live set as it changes; one instance "crashes" and drops out within its TTL.

    make run        # in another terminal
    .venv/bin/python examples/service_discovery.py
"""

import asyncio
import time

from _endpoints import ENDPOINTS
from raftkv.client import AsyncClient
from raftkv.client.recipes import Discovery, Registration


async def main() -> None:
    async with AsyncClient(ENDPOINTS) as client:

        async def show() -> None:
            async for snapshot in Discovery(client, "example-web"):
                live = ", ".join(f"{k}={v}" for k, v in snapshot.instances.items()) or "-"
                print(f"rev {snapshot.revision}: live [{live}]", flush=True)

        watcher = asyncio.create_task(show())
        async with Registration(client, "example-web", "web-1", "127.0.0.1:8081", ttl=2):
            crashing = AsyncClient(ENDPOINTS)
            await Registration(crashing, "example-web", "web-2", "127.0.0.1:8082", ttl=2).start()
            await asyncio.sleep(0.5)
            await crashing.close()  # stops renewing, as a killed process would
            started = time.monotonic()
            print("web-2 crashed; waiting for its TTL...", flush=True)
            await asyncio.sleep(3.5)
            print(f"{time.monotonic() - started:.1f}s later web-2 is gone", flush=True)
        await asyncio.sleep(0.3)
        watcher.cancel()


asyncio.run(main())
