"""Configuration subscriptions: the subtree as loaded, then every published change in order,
a multi-key publish seen as one update."""

from __future__ import annotations

import asyncio

from raftkv.client import AsyncClient
from raftkv.client.recipes import ConfigUpdate, publish, subscribe

from tests.support.raftkv import RaftKVCluster


async def test_subscribers_load_then_follow_each_change_in_order(
    cluster: RaftKVCluster, name: str
) -> None:
    async with AsyncClient(cluster.endpoints) as pub, AsyncClient(cluster.endpoints) as sub:
        await publish(pub, name, {"db/host": "a", "db/port": "5432"})
        updates: list[ConfigUpdate] = []
        got = asyncio.Event()

        async def follow() -> None:
            async for update in subscribe(sub, name):
                updates.append(update)
                if len(updates) == 4:
                    got.set()

        follower = asyncio.create_task(follow())
        await asyncio.sleep(0.2)
        await publish(pub, name, {"db/host": "b", "db/port": "6432"})  # one txn
        await publish(pub, name, {"db/port": None})
        await publish(pub, name, {"feature": "on"})
        await asyncio.wait_for(got.wait(), 5)
        follower.cancel()

    first, switch, removal, feature = updates
    assert first.initial and dict(first.values) == {"db/host": b"a", "db/port": b"5432"}
    assert dict(switch.changed) == {"db/host": b"b", "db/port": b"6432"}
    assert dict(removal.changed) == {"db/port": None}
    assert dict(feature.values) == {"db/host": b"b", "feature": b"on"}
    assert feature.text("feature") == "on" and feature.text("missing", "off") == "off"
    assert [u.revision for u in updates] == sorted(u.revision for u in updates)
