"""Auto-compaction policies, driven by a fake clock."""

from __future__ import annotations

import asyncio
import itertools

from raftkv.node.compactor import (
    PeriodicCompactionPolicy,
    RevisionCompactionPolicy,
    run_compactor,
)


def test_revision_mode_keeps_the_last_n_revisions_checking_every_five_minutes() -> None:
    policy = RevisionCompactionPolicy(retain=100)
    assert policy.tick(0, 1000, True) is None  # the first check is one interval away
    assert policy.tick(299, 1000, True) is None
    assert policy.tick(300, 1000, True) == 900
    assert policy.tick(600, 1000, True) is None  # nothing new to compact
    assert policy.tick(900, 1050, True) == 950
    assert policy.tick(1200, 1200, False) is None  # followers never compact
    assert policy.tick(1500, 1200, True) == 1100


def test_revision_mode_never_compacts_below_revision_one() -> None:
    policy = RevisionCompactionPolicy(retain=100)
    policy.tick(0, 50, True)
    assert policy.tick(300, 50, True) is None


def test_periodic_mode_compacts_to_the_revision_of_one_retention_ago() -> None:
    policy = PeriodicCompactionPolicy(retention_seconds=600)  # 10 min: every 10 min, samples/min
    revision = {t: 10 + t // 60 for t in range(0, 1801, 60)}  # one revision per minute
    results = {t: policy.tick(t, revision[t], True) for t in sorted(revision)}
    compactions = {t: r for t, r in results.items() if r is not None}
    # At t=600 the sample from t=0 is exactly one retention old; at t=1200 the one from t=600.
    assert compactions == {600: revision[0], 1200: revision[600], 1800: revision[1200]}


def test_periodic_mode_with_long_retention_runs_hourly() -> None:
    policy = PeriodicCompactionPolicy(retention_seconds=72 * 3600)
    assert policy.interval == 3600
    compactions = [t for t in range(0, 80 * 3600, 360) if policy.tick(t, 1 + t, True) is not None]
    assert compactions[0] == 72 * 3600
    assert all(b - a == 3600 for a, b in itertools.pairwise(compactions))


def test_runner_proposes_and_survives_failures() -> None:
    calls: list[int] = []
    now = [0.0]

    async def compact(revision: int) -> None:
        calls.append(revision)
        if len(calls) == 1:
            raise RuntimeError("etcdserver: request timed out")

    async def scenario() -> None:
        policy = RevisionCompactionPolicy(retain=10, check_seconds=1)
        revision = [100]

        def clock() -> float:
            now[0] += 1
            revision[0] += 5
            return now[0]

        task = asyncio.create_task(
            run_compactor(
                policy,
                clock=clock,
                current_revision=lambda: revision[0],
                is_leader=lambda: True,
                compact=compact,
                poll_seconds=0,
            )
        )
        while len(calls) < 3:
            await asyncio.sleep(0)
        task.cancel()

    asyncio.run(scenario())
    assert calls[:3] == sorted(calls[:3]) and len(set(calls[:3])) == 3
