"""Service registration, discovery and the balancers over the live view: instances appear,
change and vanish (a dead process within its TTL), and balancers only hand out live ones."""

from __future__ import annotations

import asyncio
import time

from raftkv.client import AsyncClient
from raftkv.client.recipes import (
    Discovery,
    LeastRecentlyUsed,
    Registration,
    RoundRobin,
    ServiceSnapshot,
    ServiceView,
    list_instances,
)

from tests.support.raftkv import RaftKVCluster


async def test_discovery_sees_instances_come_change_and_go(
    cluster: RaftKVCluster, name: str
) -> None:
    service = name.rsplit("/", 1)[-1]
    snapshots: list[ServiceSnapshot] = []
    async with AsyncClient(cluster.endpoints) as client:

        async def follow() -> None:
            async for snapshot in Discovery(client, service):
                snapshots.append(snapshot)

        follower = asyncio.create_task(follow())
        graceful = await Registration(client, service, "a", "10.0.0.1:80", ttl=2).start()
        crashing = AsyncClient(cluster.endpoints)
        await Registration(crashing, service, "b", "10.0.0.2:80", ttl=2).start()
        assert await list_instances(client, service) == {"a": "10.0.0.1:80", "b": "10.0.0.2:80"}
        await graceful.set("10.0.0.1:81")
        await graceful.close()  # deregisters at once

        await crashing.close()  # nobody renews "b" any more, as if its process died
        died = time.monotonic()
        while await list_instances(client, service):
            assert time.monotonic() - died < 2 + 3, "b outlived its TTL"
            await asyncio.sleep(0.1)
        await asyncio.sleep(0.2)
        follower.cancel()

    changes = [(c.kind, c.instance, c.address) for s in snapshots for c in s.changes]
    assert changes == [
        ("added", "a", "10.0.0.1:80"),
        ("added", "b", "10.0.0.2:80"),
        ("updated", "a", "10.0.0.1:81"),
        ("removed", "a", "10.0.0.1:81"),
        ("removed", "b", "10.0.0.2:80"),
    ]
    assert snapshots[0].instances == {}
    assert snapshots[-1].instances == {}
    revisions = [s.revision for s in snapshots]
    assert revisions == sorted(revisions)


async def test_balancers_hand_out_only_live_instances(cluster: RaftKVCluster, name: str) -> None:
    service = name.rsplit("/", 1)[-1]
    async with AsyncClient(cluster.endpoints) as client, ServiceView(client, service) as view:
        regs = [
            await Registration(client, service, f"i{n}", f"10.0.0.{n}:80", ttl=5).start()
            for n in (1, 2, 3)
        ]
        await view.wait_for(lambda instances: len(instances) == 3, timeout=5)
        rr = RoundRobin(view)
        assert [rr.pick().name for _ in range(4)] == ["i1", "i2", "i3", "i1"]
        await regs[1].close()
        await view.wait_for(lambda instances: "i2" not in instances, timeout=5)
        assert [rr.pick().name for _ in range(3)] == ["i3", "i1", "i3"]

        lru = LeastRecentlyUsed(view)
        assert [lru.pick().name for _ in range(2)] == ["i1", "i3"]
        lru.release("i1")  # i1 finished last: i3 is now the least recently used
        assert lru.pick().address == "10.0.0.3:80"
        regs.append(await Registration(client, service, "i4", "10.0.0.4:80", ttl=5).start())
        await view.wait_for(lambda instances: "i4" in instances, timeout=5)
        assert lru.pick().name == "i4"  # never used yet
        for reg in regs:
            await reg.close()
        await view.wait_for(lambda instances: not instances, timeout=5)
