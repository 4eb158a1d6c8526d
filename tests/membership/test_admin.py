"""ClusterAdmin's leader-only paths, on a stand-in member: transfer outcomes and refusals."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import pytest
from raftkv.membership import Member
from raftkv.node.admin import ClusterAdmin
from raftkv.node.errors import BadLeaderTransfereeError, LeaderTransferTimeoutError, NotLeaderError


@dataclass
class FakeNode:
    member_id: int
    leader: int
    follows_transfer: bool = True
    tick_seconds: float = 0.001
    transfers: list[int] = field(default_factory=list)

    @property
    def is_leader(self) -> bool:
        return self.leader == self.member_id

    def transfer_leadership(self, target: int) -> None:
        self.transfers.append(target)
        if self.follows_transfer:
            asyncio.get_running_loop().call_later(0.01, setattr, self, "leader", target)


class FakeMembership:
    def __init__(self, *members: Member) -> None:
        self.members = {m.id: m for m in members}

    def get(self, member_id: int) -> Member | None:
        return self.members.get(member_id)


class OpenGate:
    """The member's auth gate with auth disabled: anyone may change membership."""

    async def require_admin(self) -> None:
        return None


class FakeServer:
    def __init__(self, node: FakeNode, *members: Member) -> None:
        self.member_id = node.member_id
        self.node = node
        self.auth = OpenGate()
        self.applier: Any = type("Applier", (), {"membership": FakeMembership(*members)})()


VOTER = Member(2, "b", ("http://h:2",))
LEARNER = Member(3, "", ("http://h:3",), is_learner=True)


def move(server: FakeServer, target: int, timeout: float = 1.0) -> None:
    admin = ClusterAdmin(server)  # type: ignore[arg-type]
    asyncio.run(admin.move_leader(target, timeout))


def test_leadership_moves_to_a_voter_and_the_call_returns_once_it_leads() -> None:
    server = FakeServer(FakeNode(member_id=1, leader=1), VOTER, LEARNER)
    move(server, 2)
    assert server.node.transfers == [2] and server.node.leader == 2


def test_only_the_leader_moves_leadership_and_only_to_a_voter() -> None:
    with pytest.raises(NotLeaderError):
        move(FakeServer(FakeNode(member_id=1, leader=2), VOTER), 2)
    for target in (LEARNER.id, 99):
        server = FakeServer(FakeNode(member_id=1, leader=1), VOTER, LEARNER)
        with pytest.raises(BadLeaderTransfereeError):
            move(server, target)
        assert server.node.transfers == []


def test_a_transfer_that_does_not_happen_times_out_with_etcds_error() -> None:
    server = FakeServer(FakeNode(member_id=1, leader=1, follows_transfer=False), VOTER)
    with pytest.raises(LeaderTransferTimeoutError, match="leader transfer took too long"):
        move(server, 2, timeout=0.05)


def test_promotion_on_a_follower_is_left_to_the_leader() -> None:
    server = FakeServer(FakeNode(member_id=1, leader=2), VOTER, LEARNER)
    admin = ClusterAdmin(server)  # type: ignore[arg-type]
    with pytest.raises(NotLeaderError):
        asyncio.run(admin.promote_member(LEARNER.id))
