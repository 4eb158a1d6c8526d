"""The leader's lease loop: expiry and checkpoints reach the lessor only through proposals."""

from __future__ import annotations

import asyncio
from typing import Any

from raftkv.lease import LeaseKeeper, Lessor
from raftkv.pb.serverpb import internal_pb2 as serverpb

from tests.lease.conftest import FakeClock, FakeKV


class FakeRaft:
    """Applies each proposal to the lessor at once, as a one-member cluster would."""

    def __init__(self, lessor: Lessor, fail: bool = False) -> None:
        self.lessor = lessor
        self.fail = fail
        self.proposed: list[tuple[str, Any]] = []

    async def propose(self, request: serverpb.InternalRequest) -> None:
        kind = request.WhichOneof("request")
        await asyncio.sleep(0)
        if kind == "lease_revoke":
            self.proposed.append((kind, request.lease_revoke.ID))
            if self.fail:
                raise TimeoutError("no quorum")
            self.lessor.revoke(request.lease_revoke.ID)
        elif kind == "lease_checkpoint":
            pairs = [(c.ID, c.remaining_TTL) for c in request.lease_checkpoint.checkpoints]
            self.proposed.append((kind, pairs))
            if self.fail:
                raise TimeoutError("no quorum")
            self.lessor.checkpoint(pairs)


def run(coro: Any) -> Any:
    return asyncio.run(coro)


async def step(keeper: LeaseKeeper) -> None:
    await keeper.run_once()
    await keeper.wait_revokes()


def test_leader_revokes_expired_leases_and_their_keys(
    lessor: Lessor, kv: FakeKV, clock: FakeClock
) -> None:
    raft = FakeRaft(lessor)
    keeper = LeaseKeeper(lessor, raft.propose, extend=1.0)
    lessor.grant(1, 5)
    lessor.grant(2, 50)
    kv.put(b"k", 1)
    keeper.on_leadership(True)

    async def scenario() -> None:
        clock.advance(5.9)
        await step(keeper)
        assert raft.proposed == []  # 5 s TTL + 1 s extension on promotion
        clock.advance(0.1)
        await step(keeper)

    run(scenario())
    assert raft.proposed == [("lease_revoke", 1)]
    assert [x.id for x in lessor.leases()] == [2]
    assert kv.keys == {}


def test_follower_proposes_nothing(lessor: Lessor, clock: FakeClock) -> None:
    raft = FakeRaft(lessor)
    keeper = LeaseKeeper(lessor, raft.propose, extend=1.0)
    lessor.grant(1, 5)
    lessor.grant(2, 5000)
    keeper.on_leadership(True)
    keeper.on_leadership(False)
    clock.advance(10_000)
    run(step(keeper))
    assert raft.proposed == []
    assert 1 in lessor


def test_revokes_per_round_follow_the_revoke_rate(lessor: Lessor, clock: FakeClock) -> None:
    raft = FakeRaft(lessor)
    keeper = LeaseKeeper(lessor, raft.propose, extend=0, interval=0.5, revoke_rate=4)
    keeper.on_leadership(True)
    for lease_id in range(1, 6):
        lessor.grant(lease_id, 10)
    clock.advance(10)

    async def scenario() -> list[int]:
        counts = []
        for _ in range(3):
            before = len(raft.proposed)
            await step(keeper)
            counts.append(len(raft.proposed) - before)
        return counts

    assert run(scenario()) == [2, 2, 1]
    assert lessor.leases() == []


def test_failed_revoke_is_retried_until_it_applies(lessor: Lessor, clock: FakeClock) -> None:
    raft = FakeRaft(lessor, fail=True)
    keeper = LeaseKeeper(lessor, raft.propose, extend=0)
    keeper.on_leadership(True)
    lessor.grant(1, 5)

    async def scenario() -> None:
        clock.advance(5)
        await step(keeper)
        raft.fail = False
        await step(keeper)
        assert 1 in lessor  # not reported again before the retry interval
        clock.advance(3)
        await step(keeper)

    run(scenario())
    assert raft.proposed == [("lease_revoke", 1), ("lease_revoke", 1)]
    assert 1 not in lessor


def test_checkpoints_are_proposed_in_one_batch_and_applied(
    lessor: Lessor, clock: FakeClock
) -> None:
    raft = FakeRaft(lessor)
    keeper = LeaseKeeper(lessor, raft.propose, extend=0)
    keeper.on_leadership(True)
    lessor.grant(1, 1000)
    lessor.grant(2, 2000)
    clock.advance(300)
    run(step(keeper))
    assert raft.proposed == [("lease_checkpoint", [(1, 700), (2, 1700)])]
    assert sorted((x.id, x.remaining_ttl) for x in lessor.leases()) == [(1, 700), (2, 1700)]


def test_keeper_loop_runs_by_itself_and_stops(lessor: Lessor, clock: FakeClock) -> None:
    raft = FakeRaft(lessor)
    keeper = LeaseKeeper(lessor, raft.propose, extend=0, interval=0.01)
    keeper.on_leadership(True)
    lessor.grant(1, 5)
    clock.advance(5)

    async def scenario() -> None:
        keeper.start()
        for _ in range(200):
            if 1 not in lessor:
                break
            await asyncio.sleep(0.01)
        await keeper.stop()

    run(scenario())
    assert 1 not in lessor
