"""Membership operations on a running raftkv cluster, through `raftkv.client` only.

The operator reaches members at their pods' IPs (no DNS needed, and the same in a real cluster as
in the local test tier). Every operation is written to be repeated safely, because a reconcile
can be cut off after the member saw the request but before the operator saw the answer:

- adding a member whose peer URL is already listed returns that member (without asking again);
- removing a member that is gone counts as done;
- promoting a member that is already a voter counts as done.

A learner that has not caught up yet raises `LearnerNotReady`, which the handlers turn into a
retry after a delay.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from raftkv.client import AsyncClient, TLSConfig, errors
from raftkv.client.types import Member, MemberListResult

log = logging.getLogger(__name__)

CALL_TIMEOUT = 5.0
STATUS_TIMEOUT = 2.0


class LearnerNotReady(Exception):
    """The leader refused the promotion: the learner's log is not close enough to its own."""


class NoMemberAnswers(Exception):
    """None of the endpoints answered the member list."""


@dataclass(frozen=True)
class MemberStatus:
    member_id: int
    cluster_id: int
    leader: int
    raft_index: int
    applied_index: int
    learner: bool


@dataclass(frozen=True)
class ClusterState:
    cluster_id: int
    members: tuple[Member, ...]
    # Status by endpoint key (the pod ordinal the caller used); missing = did not answer.
    statuses: Mapping[int, MemberStatus]

    @property
    def leader_id(self) -> int:
        votes = [s.leader for s in self.statuses.values() if s.leader]
        return max(set(votes), key=votes.count) if votes else 0

    @property
    def leader_index(self) -> int:
        return next(
            (s.raft_index for s in self.statuses.values() if s.member_id == self.leader_id), 0
        )


class Members:
    """A cluster's members at `endpoints` (ordinal → client URL of that pod)."""

    def __init__(self, endpoints: Mapping[int, str], *, tls: TLSConfig | None = None) -> None:
        self._endpoints = dict(endpoints)
        self._tls = tls

    def _client(self, endpoints: Sequence[str] | None = None) -> AsyncClient:
        urls = list(endpoints if endpoints is not None else self._endpoints.values())
        return AsyncClient(urls, timeout=CALL_TIMEOUT, dial_timeout=1.0, tls=self._tls)

    async def observe(self) -> ClusterState:
        """The member list (from any member) and each reachable member's Status."""
        if not self._endpoints:
            raise NoMemberAnswers("no member pod has an address yet")
        async with self._client() as client:
            try:
                listed = await client.member_list(timeout=CALL_TIMEOUT)
            except errors.EtcdError as error:
                raise NoMemberAnswers(str(error)) from error
            statuses = await asyncio.gather(
                *(self._status(client, url) for url in self._endpoints.values())
            )
        by_ordinal = {
            ordinal: status
            for ordinal, status in zip(self._endpoints, statuses, strict=True)
            if status is not None
        }
        return ClusterState(listed.header.cluster_id, listed.members, by_ordinal)

    @staticmethod
    async def _status(client: AsyncClient, url: str) -> MemberStatus | None:
        try:
            s = await client.status(url, timeout=STATUS_TIMEOUT)
        except errors.EtcdError as error:
            log.debug("member at %s did not answer Status: %s", url, error)
            return None
        return MemberStatus(
            member_id=s.header.member_id,
            cluster_id=s.header.cluster_id,
            leader=s.leader,
            raft_index=s.raft_index,
            applied_index=s.raft_applied_index,
            learner=s.is_learner,
        )

    async def add_learner(self, peer_url: str) -> Member:
        async with self._client() as client:
            # Look first: a second MemberAdd for an unstarted learner is refused as an
            # unhealthy cluster (strict reconfig check), not as a duplicate.
            existing = _with_peer_url(await client.member_list(), peer_url)
            if existing is not None:
                return existing
            try:
                return (await client.member_add([peer_url], is_learner=True)).member
            except errors.PeerURLExistsError:
                existing = _with_peer_url(await client.member_list(), peer_url)
                if existing is None:
                    raise
                return existing

    async def promote(self, member_id: int) -> None:
        async with self._client() as client:
            try:
                await client.member_promote(member_id)
            except errors.LearnerNotReadyError as error:
                raise LearnerNotReady(str(error)) from error
            except errors.MemberNotLearnerError:
                log.info("member %x is already a voter", member_id)

    async def remove(self, member_id: int) -> None:
        async with self._client() as client:
            try:
                await client.member_remove(member_id)
            except errors.MemberNotFoundError:
                log.info("member %x is already gone", member_id)

    async def move_leader(self, target_id: int) -> None:
        async with self._client() as client:
            await client.move_leader(target_id)


def _with_peer_url(listed: MemberListResult, peer_url: str) -> Member | None:
    return next((m for m in listed.members if peer_url in m.peer_urls), None)
