"""Leader election and cluster monitoring: two candidates; the leader runs a leader-only task
that is cancelled when its leadership is taken away; the other takes over; then the cluster's
health as the ClusterMonitor sees it.

    .venv/bin/python examples/leader_election.py
"""

import asyncio

from _endpoints import ENDPOINTS
from raftkv.client import AsyncClient
from raftkv.client.recipes import ClusterMonitor, Election, LostError, run_as_leader

NAME = "/example/election/scheduler"


async def scheduler(name: str) -> None:
    for tick in range(100):
        print(f"{name}: scheduling round {tick}", flush=True)
        await asyncio.sleep(0.2)


async def main() -> None:
    async with AsyncClient(ENDPOINTS) as a, AsyncClient(ENDPOINTS) as b:

        async def observe() -> None:
            async for leader in Election(b, NAME).observe():
                print("leader:", leader.value.decode() if leader else None, flush=True)

        observer = asyncio.create_task(observe())
        first = asyncio.create_task(run_as_leader(a, NAME, "node-a", lambda: scheduler("node-a")))
        await asyncio.sleep(0.7)
        second = asyncio.create_task(run_as_leader(b, NAME, "node-b", lambda: scheduler("node-b")))
        await asyncio.sleep(0.3)
        leader = await Election(b, NAME).leader()
        assert leader is not None
        await b.delete(leader.key)  # as if node-a's lease had expired
        try:
            await first
        except LostError as error:
            print(f"node-a stopped: {error}", flush=True)
        await asyncio.sleep(0.5)
        second.cancel()
        await asyncio.sleep(0.2)
        observer.cancel()

        state = await ClusterMonitor(a).check()
        print(f"raft leader {state.leader:x}, quorum {state.has_quorum}")
        for member in state.members:
            print(f"  {member.name}: {'healthy' if member.healthy else member.error}")


asyncio.run(main())
