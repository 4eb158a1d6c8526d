"""Cluster administration on one member: membership changes and leadership transfer.

What etcd's Cluster service and MoveLeader do, in etcd 3.4's order, so that the same request
fails with the same error: first the URL rules of MemberAdd, then the caller's root role (with
auth enabled; MoveLeader needs none, as in etcd 3.4), then (with `--strict-reconfig-check`) the
quorum checks of `membership.reconfig` against this member's view of which peers are started
and connected, then a check against the applied member list (the same one every member repeats
when the change is applied, done here too so an obvious mistake costs no Raft round), then the
proposal. The proposal's result is the member list right after the change applied.

Promotion is the one change that needs the leader: only it knows how far the learner's log has
got. A follower raises `NotLeaderError`; the API layer forwards the request to the leader.

`ClusterAdmin` keeps no state of its own; it reads the member (`MemberServer`) it is given.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from raftkv.membership import Member, compute_member_id, promote_context, reconfig
from raftkv.node.errors import BadLeaderTransfereeError, LeaderTransferTimeoutError, NotLeaderError
from raftkv.pb.raftpb import raft_pb2 as raftpb

if TYPE_CHECKING:
    from raftkv.node.server import MemberServer

log = logging.getLogger(__name__)


class ClusterAdmin:
    """Membership changes and leadership transfer for the member `server`."""

    def __init__(self, server: MemberServer) -> None:
        self.server = server

    # ---- membership changes ------------------------------------------------------------------

    async def add_member(
        self, peer_urls: Sequence[str], is_learner: bool
    ) -> tuple[Member, list[Member]]:
        """Add a member that has not started yet; returns it and the member list after."""
        urls = reconfig.parse_peer_urls(peer_urls)
        await self.server.auth.require_admin()
        # etcd 3.4 derives a runtime member's ID from its URLs and the time, with no token.
        member = Member(
            id=compute_member_id(urls, "", now=int(time.time())),
            name="",
            peer_urls=urls,
            is_learner=is_learner,
        )
        if self._strict:
            reconfig.check_add(self._members(), is_learner, self._self_id, self._connected)
        kind = raftpb.CONF_CHANGE_ADD_LEARNER_NODE if is_learner else raftpb.CONF_CHANGE_ADD_NODE
        change = raftpb.ConfChange(type=kind, node_id=member.id, context=member.to_json())
        members = await self._propose(change)
        log.info("added %s %x with peer URLs %s", _kind(member), member.id, ",".join(urls))
        return member, members

    async def remove_member(self, member_id: int) -> list[Member]:
        """Remove a member (the leader too: it hands over and stops once this applies)."""
        await self.server.auth.require_admin()
        if self._strict:
            reconfig.check_remove(self._members(), member_id, self._self_id, self._connected)
        change = raftpb.ConfChange(type=raftpb.CONF_CHANGE_REMOVE_NODE, node_id=member_id)
        members = await self._propose(change)
        log.info("removed member %x", member_id)
        return members

    async def update_member(self, member_id: int, peer_urls: Sequence[str]) -> list[Member]:
        """Replace a member's peer URLs."""
        await self.server.auth.require_admin()
        urls = reconfig.parse_peer_urls(peer_urls)
        context = Member(id=member_id, name="", peer_urls=urls).to_json()
        change = raftpb.ConfChange(
            type=raftpb.CONF_CHANGE_UPDATE_NODE, node_id=member_id, context=context
        )
        members = await self._propose(change)
        log.info("updated member %x peer URLs to %s", member_id, ",".join(urls))
        return members

    async def promote_member(self, member_id: int) -> list[Member]:
        """Make a caught-up learner a voter. Only the leader can judge "caught up"."""
        await self.server.auth.require_admin()
        node = self.server.node
        if not node.is_leader:
            raise NotLeaderError()
        match = {i: p.match for i, p in node.rawnode.status().progress.items()}
        if not match:  # stepped down since the check above
            raise NotLeaderError()
        reconfig.check_learner_in_sync(match, self._self_id, member_id)
        if self._strict:
            reconfig.check_promote(self._members())
        change = raftpb.ConfChange(
            type=raftpb.CONF_CHANGE_ADD_NODE, node_id=member_id, context=promote_context(member_id)
        )
        members = await self._propose(change)
        log.info("promoted learner %x to a voting member", member_id)
        return members

    # ---- leadership ----------------------------------------------------------------------------

    async def move_leader(self, target: int, timeout: float) -> None:
        """On the leader: hand leadership to the voter `target`, waiting until it leads."""
        node = self.server.node
        if not node.is_leader:
            raise NotLeaderError()
        member = self.server.applier.membership.get(target)
        if member is None or member.is_learner:
            raise BadLeaderTransfereeError()
        log.info("leadership transfer from %x to %x starting", self._self_id, target)
        node.transfer_leadership(target)
        try:
            async with asyncio.timeout(timeout):
                while node.leader != target:
                    await asyncio.sleep(node.tick_seconds)
        except TimeoutError:
            raise LeaderTransferTimeoutError() from None
        log.info("leadership transferred from %x to %x", self._self_id, target)

    # ---- helpers -------------------------------------------------------------------------------

    @property
    def _strict(self) -> bool:
        return self.server.config.strict_reconfig_check

    @property
    def _self_id(self) -> int:
        return self.server.member_id

    def _members(self) -> list[Member]:
        return self.server.applier.membership.sorted_members()

    def _connected(self, member_id: int) -> bool:
        if member_id == self._self_id:
            return True
        return self.server.peer_connected(member_id)

    async def _propose(self, change: raftpb.ConfChange) -> list[Member]:
        self.server.applier.membership.validate(change)
        return await self.server.node.propose_conf_change(change)


def _kind(member: Member) -> str:
    return "learner" if member.is_learner else "voting member"
