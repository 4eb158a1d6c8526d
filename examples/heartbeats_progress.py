"""Distributed notification: workers heartbeat under /heartbeats/example-workers and report
progress on a task; a monitor prints liveness changes and the task's progress.

    .venv/bin/python examples/heartbeats_progress.py
"""

import asyncio

from _endpoints import ENDPOINTS
from raftkv.client import AsyncClient
from raftkv.client.recipes import Heartbeat, LivenessMonitor, ProgressReporter, watch_progress


async def worker(name: str, steps: int) -> None:
    async with AsyncClient(ENDPOINTS) as client, Heartbeat(client, "example-workers", name, ttl=2):
        reporter = ProgressReporter(client, "example-task", name)
        for done in range(steps + 1):
            await reporter.report(done, steps)
            await asyncio.sleep(0.1)


async def main() -> None:
    async with AsyncClient(ENDPOINTS) as client:
        await client.delete("/tasks/example-task/", prefix=True)

        async def monitor() -> None:
            async for change in LivenessMonitor(client, "example-workers"):
                print(f"{change.member} {'alive' if change.alive else 'gone'}", flush=True)

        async def progress() -> None:
            async for state in watch_progress(client, "example-task"):
                print(f"progress {state.fraction:.0%}", flush=True)
                if state.finished and len(state.workers) == 2:
                    return

        watching = asyncio.create_task(monitor())
        await asyncio.sleep(0.3)
        follow = asyncio.create_task(progress())
        await asyncio.gather(worker("w1", 3), worker("w2", 5))
        await asyncio.wait_for(follow, 10)
        await asyncio.sleep(0.3)
        watching.cancel()


asyncio.run(main())
