"""Scheduled defragmentation (`spec.maintenance.defragSchedule`, cron, UTC).

Defragmenting a member rewrites its backend and blocks it meanwhile; on the leader that stalls
every write of the cluster. So followers go first, one at a time, each checked healthy again
before the next, and the leader last, after leadership moved to the most caught-up follower
(`plan` is the pure decision). Only a healthy cluster is defragmented: every voter answers and
all agree on one leader; otherwise the slot is skipped with a Warning event (the next slot tries
again), because taking a member away while another is down could cost quorum.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from raftkv.client import AsyncClient, TLSConfig, errors

from raftkv_operator.backups import CronSchedule, backup_due, format_time, parse_time

CALL_TIMEOUT_S = 10.0
DEFRAG_TIMEOUT_S = 600.0
HEALTHY_AGAIN_S = 60.0


@dataclass(frozen=True)
class MemberState:
    """One member's answer to Status on its own endpoint."""

    endpoint: str
    member_id: int
    leader_id: int  # the leader it knows (0: none)
    applied_index: int
    learner: bool = False


@dataclass(frozen=True)
class DefragPlan:
    """Defragment `followers` in order, then move leadership to `successor` (None: a single
    member, nothing to hand over to) and defragment `leader`."""

    followers: tuple[MemberState, ...]
    leader: MemberState
    successor: MemberState | None


class NotHealthy(Exception):
    """The cluster is not healthy enough to take a member away for a while."""


def plan(members: Sequence[MemberState | None]) -> DefragPlan:
    """Followers by endpoint order, the leader last; refuses unless every member answered and
    all name the same leader, which is one of them."""
    if not members:
        raise NotHealthy("no member to defragment")
    missing = sum(1 for m in members if m is None)
    if missing:
        raise NotHealthy(f"{missing} of {len(members)} members do not answer")
    answered = [m for m in members if m is not None]
    leaders = {m.leader_id for m in answered}
    if len(leaders) != 1 or 0 in leaders:
        raise NotHealthy("the members do not agree on one leader")
    (leader_id,) = leaders
    leader = next((m for m in answered if m.member_id == leader_id), None)
    if leader is None:
        raise NotHealthy(f"the leader {leader_id:x} is not one of the members asked")
    followers = tuple(m for m in answered if m.member_id != leader_id)
    voters = [m for m in followers if not m.learner]
    successor = max(voters, key=lambda m: m.applied_index) if voters else None
    return DefragPlan(followers, leader, successor)


def defrag_due(
    schedule: CronSchedule, last_slot: datetime | None, created: datetime, now: datetime
) -> datetime | None:
    """The slot to defragment for now (same rule as backups: missed slots make one run)."""
    return backup_due(schedule, last_slot, created, now)


class MemberCalls(Protocol):
    async def status(self, endpoint: str) -> MemberState | None: ...
    async def defragment(self, endpoint: str) -> None: ...
    async def move_leader(self, target_id: int) -> None: ...


class ClientCalls:
    """`MemberCalls` through `raftkv.client`."""

    def __init__(self, endpoints: Sequence[str], tls: TLSConfig | None = None) -> None:
        self._endpoints, self._tls = list(endpoints), tls

    def _client(self, endpoints: Sequence[str] | None = None) -> AsyncClient:
        return AsyncClient(
            list(endpoints or self._endpoints),
            timeout=CALL_TIMEOUT_S,
            dial_timeout=1.0,
            tls=self._tls,
        )

    async def status(self, endpoint: str) -> MemberState | None:
        try:
            async with self._client([endpoint]) as client:
                s = await client.status(endpoint, timeout=CALL_TIMEOUT_S)
        except errors.EtcdError:
            return None
        return MemberState(
            endpoint, s.header.member_id, s.leader, s.raft_applied_index, s.is_learner
        )

    async def defragment(self, endpoint: str) -> None:
        async with self._client([endpoint]) as client:
            await client.defragment(endpoint, timeout=DEFRAG_TIMEOUT_S)

    async def move_leader(self, target_id: int) -> None:
        async with self._client() as client:
            await client.move_leader(target_id, timeout=CALL_TIMEOUT_S)


async def _healthy_again(calls: MemberCalls, member: MemberState) -> None:
    deadline = time.monotonic() + HEALTHY_AGAIN_S
    while time.monotonic() < deadline:
        state = await calls.status(member.endpoint)
        if state is not None and state.leader_id:
            return
        await asyncio.sleep(1.0)
    raise NotHealthy(f"{member.endpoint} has no leader after its defragmentation")


async def defragment_cluster(calls: MemberCalls, endpoints: Sequence[str]) -> list[str]:
    """Defragment every member (see the module docstring); returns the endpoints in the order
    they were defragmented. Raises NotHealthy (nothing done yet, or stopped halfway) or the
    client's error."""
    states = await asyncio.gather(*(calls.status(e) for e in endpoints))
    decided = plan(states)
    done = []
    for member in decided.followers:
        await calls.defragment(member.endpoint)
        await _healthy_again(calls, member)
        done.append(member.endpoint)
    if decided.successor is not None:
        await calls.move_leader(decided.successor.member_id)
        # Defragment the old leader only once it follows the new one.
        deadline = time.monotonic() + HEALTHY_AGAIN_S
        while True:
            state = await calls.status(decided.leader.endpoint)
            if state is not None and state.leader_id == decided.successor.member_id:
                break
            if time.monotonic() > deadline:
                raise NotHealthy("leadership did not move away from the leader")
            await asyncio.sleep(0.5)
    await calls.defragment(decided.leader.endpoint)
    await _healthy_again(calls, decided.leader)
    done.append(decided.leader.endpoint)
    return done


EventSink = Callable[[str, str, str], None]


async def tick(
    body: Mapping[str, Any],
    *,
    calls: Callable[[Sequence[str]], MemberCalls],
    endpoints: Callable[[], Awaitable[Sequence[str]]],
    events: EventSink,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> dict[str, Any] | None:
    """Defragment when a slot of `spec.maintenance.defragSchedule` is due; the status fields to
    patch (`lastScheduledDefrag`, and `lastDefrag` {time, members} on success), or None."""
    raw = ((body.get("spec") or {}).get("maintenance") or {}).get("defragSchedule")
    if not raw:
        return None
    meta, status = body["metadata"], body.get("status") or {}
    now = clock()
    created = parse_time(meta.get("creationTimestamp")) or now
    slot = defrag_due(
        CronSchedule.parse(str(raw)), parse_time(status.get("lastScheduledDefrag")), created, now
    )
    if slot is None or not status.get("clusterID"):
        return None
    fields: dict[str, Any] = {"lastScheduledDefrag": format_time(slot)}
    try:
        members = await endpoints()
        done = await defragment_cluster(calls(members), members)
    except (NotHealthy, errors.EtcdError) as error:
        events("Warning", "DefragFailed", f"scheduled defragmentation skipped or stopped: {error}")
        return fields
    fields["lastDefrag"] = {"time": format_time(clock()), "members": len(done)}
    events(
        "Normal",
        "DefragSucceeded",
        f"defragmented {len(done)} members, the leader last: {', '.join(done)}",
    )
    return fields
