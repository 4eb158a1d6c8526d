"""Client-side load balancing: round-robin and least-recently-used over the live instances of a
service; an instance that deregisters leaves the rotation.

    .venv/bin/python examples/load_balancing.py
"""

import asyncio

from _endpoints import ENDPOINTS
from raftkv.client import AsyncClient
from raftkv.client.recipes import LeastRecentlyUsed, Registration, RoundRobin, ServiceView


async def main() -> None:
    async with AsyncClient(ENDPOINTS) as client, ServiceView(client, "example-api") as view:
        registrations = [
            await Registration(client, "example-api", f"api-{n}", f"127.0.0.1:900{n}").start()
            for n in (1, 2, 3)
        ]
        await view.wait_for(lambda live: len(live) == 3, timeout=5)
        rr, lru = RoundRobin(view), LeastRecentlyUsed(view)
        print("round robin:", [rr.pick().name for _ in range(5)])
        print("least recently used:", [lru.pick().name for _ in range(3)])
        await registrations[0].close()
        await view.wait_for(lambda live: "api-1" not in live, timeout=5)
        print("after api-1 left:", [rr.pick().name for _ in range(4)])
        for registration in registrations[1:]:
            await registration.close()


asyncio.run(main())
