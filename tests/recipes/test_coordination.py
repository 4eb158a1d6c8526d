"""Heartbeats with a liveness monitor, and task progress reports."""

from __future__ import annotations

import asyncio
import time

from raftkv.client import AsyncClient
from raftkv.client.recipes import (
    Heartbeat,
    LivenessChange,
    LivenessMonitor,
    ProgressReporter,
    TaskProgress,
    watch_progress,
)

from tests.support.raftkv import RaftKVCluster


async def test_the_monitor_reports_arrivals_statuses_and_deaths(
    cluster: RaftKVCluster, name: str
) -> None:
    group = name.rsplit("/", 1)[-1]
    changes: list[LivenessChange] = []
    async with AsyncClient(cluster.endpoints) as client:
        monitor = LivenessMonitor(client, group)
        dead = asyncio.Event()

        async def follow() -> None:
            async for change in monitor:
                changes.append(change)
                if change.member == "w2" and not change.alive:
                    dead.set()

        follower = asyncio.create_task(follow())
        async with Heartbeat(client, group, "w1", ttl=2, status="idle") as w1:
            worker = AsyncClient(cluster.endpoints)
            await Heartbeat(worker, group, "w2", ttl=2).__aenter__()
            await w1.beat("busy")
            await asyncio.sleep(0.2)
            assert set(monitor.alive) == {"w1", "w2"}
            await worker.close()  # w2 hangs: no more renewals
            hung = time.monotonic()
            await asyncio.wait_for(dead.wait(), 2 + 3)
            assert time.monotonic() - hung < 2 + 3
            assert set(monitor.alive) == {"w1"}
        await asyncio.sleep(0.2)
        follower.cancel()

    seen = [(c.member, c.alive, c.status) for c in changes]
    assert seen == [
        ("w1", True, b"idle"),
        ("w2", True, b""),
        ("w1", True, b"busy"),
        ("w2", False, b""),
        ("w1", False, b""),
    ]


async def test_progress_is_reported_per_worker_until_the_task_finishes(
    cluster: RaftKVCluster, name: str
) -> None:
    task = name.rsplit("/", 1)[-1]
    async with AsyncClient(cluster.endpoints) as client:
        reports: list[TaskProgress] = []

        async def follow() -> None:
            async for progress in watch_progress(client, task):
                reports.append(progress)
                if progress.finished:
                    return

        follower = asyncio.create_task(follow())
        await asyncio.sleep(0.2)
        a, b = ProgressReporter(client, task, "a"), ProgressReporter(client, task, "b")
        await a.report(0, 2)
        await b.report(1, 2, "parsing")
        await a.report(2, 2)
        await b.report(2, 2, "done")
        await asyncio.wait_for(follower, 5)

    assert [round(r.fraction, 2) for r in reports] == [0.0, 0.0, 0.25, 0.75, 1.0]
    assert reports[-1].finished and reports[-1].workers["b"].note == "done"
