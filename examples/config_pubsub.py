"""Configuration / publish-subscribe: a subscriber loads /example/config, then applies each
change in order; a publisher changes several keys in one transaction.

    .venv/bin/python examples/config_pubsub.py
"""

import asyncio

from _endpoints import ENDPOINTS
from raftkv.client import AsyncClient
from raftkv.client.recipes import publish, subscribe

ROOT = "/example/config"


async def main() -> None:
    async with AsyncClient(ENDPOINTS) as client:
        await publish(client, ROOT, {"db/host": "db-1", "db/port": "5432", "feature": None})
        applied = asyncio.Event()

        async def subscriber() -> None:
            config: dict[str, bytes] = {}
            async for update in subscribe(client, ROOT):
                config = dict(update.values)
                what = "loaded" if update.initial else "changed"
                print(f"rev {update.revision} {what} {sorted(update.changed)} -> {config}")
                if config.get("feature") == b"on":
                    applied.set()

        task = asyncio.create_task(subscriber())
        await asyncio.sleep(0.3)
        await publish(client, ROOT, {"db/host": "db-2", "db/port": "6432"})  # one update
        await publish(client, ROOT, {"feature": "on"})
        await asyncio.wait_for(applied.wait(), 10)
        task.cancel()


asyncio.run(main())
