"""Cluster monitoring: which members answer, who leads, reported when that changes.

Raft leadership of the cluster itself is not in the keyspace, so the monitor asks: every
`interval` it lists the members and sends each one a Status request (concurrently, each with a
short deadline). It yields a `ClusterState` at start and whenever a member's health or the
leader changes — a loop for alerting on "member down", "no leader" or "leader moved".
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

from raftkv.client import errors
from raftkv.client.aio import AsyncClient
from raftkv.client.types import Member

__all__ = ["ClusterMonitor", "ClusterState", "MemberHealth"]


@dataclass(frozen=True, slots=True)
class MemberHealth:
    id: int
    name: str
    endpoint: str
    healthy: bool
    is_leader: bool
    raft_term: int
    error: str = ""


@dataclass(frozen=True, slots=True)
class ClusterState:
    """`leader` is the leader's member id as the healthy members see it (0: none)."""

    leader: int
    members: tuple[MemberHealth, ...]

    @property
    def has_quorum(self) -> bool:
        return sum(m.healthy for m in self.members) * 2 > len(self.members)

    def _signature(self) -> tuple[object, ...]:
        return (self.leader, tuple((m.id, m.healthy) for m in self.members))


class ClusterMonitor:
    """`async for state in ClusterMonitor(client):` — the cluster's health now, then after each
    change; `await monitor.check()` takes one look."""

    def __init__(
        self, client: AsyncClient, *, interval: float = 1.0, status_timeout: float = 1.0
    ) -> None:
        self._client = client
        self.interval = interval
        self.status_timeout = status_timeout
        self._members: tuple[Member, ...] = ()

    async def check(self) -> ClusterState:
        try:
            self._members = (await self._client.member_list(timeout=self.status_timeout)).members
        except errors.EtcdError:
            if not self._members:
                raise  # nothing known yet to report on
        healths = await asyncio.gather(*(self._probe(m) for m in self._members))
        leaders = {h.id for h in healths if h.is_leader}
        return ClusterState(leaders.pop() if len(leaders) == 1 else 0, tuple(healths))

    async def __aiter__(self) -> AsyncIterator[ClusterState]:
        last: tuple[object, ...] | None = None
        while True:
            state = await self.check()
            if state._signature() != last:
                last = state._signature()
                yield state
            await asyncio.sleep(self.interval)

    async def _probe(self, member: Member) -> MemberHealth:
        if not member.client_urls:
            return MemberHealth(member.id, member.name, "", False, False, 0, "not started")
        endpoint = member.client_urls[0]
        try:
            status = await self._client.status(endpoint, timeout=self.status_timeout)
        except errors.EtcdError as error:
            return MemberHealth(member.id, member.name, endpoint, False, False, 0, error.message)
        is_leader = status.leader != 0 and status.leader == status.header.member_id
        healthy = status.leader != 0 and not status.errors
        return MemberHealth(
            member.id,
            member.name,
            endpoint,
            healthy,
            is_leader,
            status.raft_term,
            "; ".join(status.errors) if status.errors else ("" if healthy else "no leader"),
        )
