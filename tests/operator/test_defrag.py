"""Scheduled defragmentation: followers first, the leader last after leadership moved to the
most caught-up follower, and nothing at all on an unhealthy cluster."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import pytest
from raftkv_operator import defrag
from raftkv_operator.defrag import MemberState, NotHealthy, defragment_cluster, plan


def state(endpoint: str, member_id: int, *, leader: int = 2, applied: int = 100) -> MemberState:
    return MemberState(endpoint, member_id, leader, applied)


def test_plan_puts_the_leader_last_and_picks_the_most_caught_up_successor() -> None:
    decided = plan(
        [state("a", 1, applied=90), state("b", 2, applied=100), state("c", 3, applied=95)]
    )
    assert [m.endpoint for m in decided.followers] == ["a", "c"]
    assert decided.leader.endpoint == "b"
    assert decided.successor is not None and decided.successor.endpoint == "c"


def test_plan_of_a_single_member_has_no_successor() -> None:
    decided = plan([state("a", 2)])
    assert decided.followers == () and decided.successor is None


@pytest.mark.parametrize(
    ("members", "why"),
    [
        ([state("a", 1), None, state("c", 3)], "1 of 3 members do not answer"),
        ([state("a", 1, leader=1), state("b", 2)], "do not agree"),
        ([state("a", 1, leader=0), state("b", 2, leader=0)], "do not agree"),
        ([state("a", 1, leader=9), state("b", 2, leader=9)], "not one of the members"),
    ],
)
def test_unhealthy_clusters_are_not_defragmented(
    members: list[MemberState | None], why: str
) -> None:
    with pytest.raises(NotHealthy, match=why):
        plan(members)


class FakeCluster:
    """Three members; the log records every call, and moving leadership takes effect."""

    def __init__(self) -> None:
        self.leader = 2
        self.log: list[str] = []
        self.applied = {"a": 90, "b": 100, "c": 95}
        self.ids = {"a": 1, "b": 2, "c": 3}

    async def status(self, endpoint: str) -> MemberState | None:
        return MemberState(endpoint, self.ids[endpoint], self.leader, self.applied[endpoint])

    async def defragment(self, endpoint: str) -> None:
        assert self.ids[endpoint] != self.leader, "the leader must not be defragmented"
        self.log.append(f"defrag {endpoint}")

    async def move_leader(self, target_id: int) -> None:
        self.log.append(f"move to {target_id}")
        self.leader = target_id


def test_defragment_cluster_order() -> None:
    cluster = FakeCluster()
    done = asyncio.run(defragment_cluster(cluster, ["a", "b", "c"]))
    assert cluster.log == ["defrag a", "defrag c", "move to 3", "defrag b"]
    assert done == ["a", "c", "b"]


def test_tick_runs_at_the_scheduled_slot_and_reports() -> None:
    cluster = FakeCluster()
    status: dict[str, Any] = {"clusterID": "1"}
    body = {
        "metadata": {"creationTimestamp": "2026-01-01T00:00:00Z"},
        "spec": {"maintenance": {"defragSchedule": "0 3 * * *"}},
        "status": status,
    }
    events: list[tuple[str, str, str]] = []

    async def endpoints() -> list[str]:
        return ["a", "b", "c"]

    def run(now: datetime) -> dict[str, Any] | None:
        return asyncio.run(
            defrag.tick(
                body,
                calls=lambda endpoints: cluster,
                endpoints=endpoints,
                events=lambda *e: events.append(e),
                clock=lambda: now,
            )
        )

    assert run(datetime(2026, 1, 1, 2, 59, tzinfo=UTC)) is None
    fields = run(datetime(2026, 1, 1, 3, 0, 30, tzinfo=UTC))
    assert fields == {
        "lastScheduledDefrag": "2026-01-01T03:00:00Z",
        "lastDefrag": {"time": "2026-01-01T03:00:30Z", "members": 3},
    }
    assert events[0][:2] == ("Normal", "DefragSucceeded")
    assert fields is not None
    status.update(fields)
    assert run(datetime(2026, 1, 1, 4, 0, tzinfo=UTC)) is None  # next slot is tomorrow
