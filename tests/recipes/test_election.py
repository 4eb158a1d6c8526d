"""`Election` and `run_as_leader`: one leader at a time, handover on resign, observers see each
leader and value in order, and leader-only work stops the moment leadership is lost."""

from __future__ import annotations

import asyncio

import pytest
from raftkv.client import AsyncClient, KeyValue
from raftkv.client.recipes import Election, LostError, current_leader, run_as_leader

from tests.support.raftkv import RaftKVCluster


async def test_the_second_candidate_leads_only_after_the_first_resigns(
    cluster: RaftKVCluster, name: str
) -> None:
    async with AsyncClient(cluster.endpoints) as a, AsyncClient(cluster.endpoints) as b:
        seen: list[bytes | None] = []

        async def observe() -> None:
            async for leader in Election(b, name).observe():
                seen.append(None if leader is None else leader.value)

        observer = asyncio.create_task(observe())
        first, second = Election(a, name), Election(b, name)
        await first.campaign("p1")
        assert first.is_leader
        campaign = asyncio.create_task(second.campaign("p2"))
        await asyncio.sleep(0.3)
        assert not campaign.done()
        await first.proclaim("p1-updated")
        leader = await current_leader(b, name)
        assert isinstance(leader, KeyValue) and leader.value == b"p1-updated"

        await first.resign()
        key = await asyncio.wait_for(campaign, 5)
        assert key.rev > 0 and second.is_leader
        assert (await second.leader()) is not None
        with pytest.raises(Exception, match="not leader"):
            await first.proclaim("too late")
        await second.resign()
        await asyncio.sleep(0.3)
        observer.cancel()
        assert seen == [None, b"p1", b"p1-updated", b"p2", None]


async def test_leader_only_work_is_cancelled_when_leadership_is_lost(
    cluster: RaftKVCluster, name: str
) -> None:
    async with AsyncClient(cluster.endpoints) as a, AsyncClient(cluster.endpoints) as b:
        ticks: list[int] = []
        leading = asyncio.Event()

        async def work() -> None:
            leading.set()
            for i in range(1000):
                ticks.append(i)
                await asyncio.sleep(0.05)

        runner = asyncio.create_task(run_as_leader(a, name, "worker-a", work))
        await leading.wait()
        leader = await current_leader(b, name)
        assert leader is not None and leader.value == b"worker-a"
        await b.delete(leader.key)  # leadership taken away (as when its lease expires)
        with pytest.raises(LostError):
            await asyncio.wait_for(runner, 5)
        stopped_at = len(ticks)
        await asyncio.sleep(0.2)
        assert len(ticks) == stopped_at  # no leader-only step after the loss
        # The next candidate is elected at once, and a finished runner hands over too.
        assert await run_as_leader(b, name, "worker-b", lambda: asyncio.sleep(0, "done")) == "done"
        assert await current_leader(b, name) is None
