"""The corruption check: etcd 3.4's comparison rules, and the round the leader runs."""

from __future__ import annotations

import asyncio

from raftkv.membership import Member
from raftkv.node.corruption import CorruptionChecker, KVHash, find_corrupt
from raftkv.pb.etcdserverpb import rpc_pb2 as pb

LEADER, F1, F2 = 1, 2, 3


def leader(hash_: int = 100, revision: int = 10, compact: int = 5) -> KVHash:
    return KVHash(LEADER, hash_, revision, compact)


def test_equal_hashes_and_skipped_members_find_nothing() -> None:
    peers = [KVHash(F1, 100, 10, 5), KVHash(F2, 100, 8, 5)]
    assert find_corrupt(leader(), leader(), peers) == []
    assert find_corrupt(leader(), leader(), []) == []


def test_a_member_with_another_hash_at_the_same_compaction_is_corrupt() -> None:
    peers = [KVHash(F1, 100, 10, 5), KVHash(F2, 999, 10, 5)]
    assert find_corrupt(leader(), leader(), peers) == [F2]


def test_a_different_hash_after_another_compaction_is_not_comparable() -> None:
    # F2 compacted at 3 (it has not applied the compaction at 5 yet): hashes may differ.
    assert find_corrupt(leader(), leader(), [KVHash(F2, 999, 10, 3)]) == []


def test_a_member_ahead_of_the_leader_is_corrupt() -> None:
    after = leader(revision=12)
    assert find_corrupt(leader(), after, [KVHash(F1, 100, 13, 5)]) == [F1]
    assert find_corrupt(leader(), after, [KVHash(F2, 100, 12, 6)]) == [F2]


def test_the_leader_whose_own_hash_changed_at_the_same_revision_is_corrupt() -> None:
    assert find_corrupt(leader(100), leader(101), []) == [LEADER]
    # A write in between changes the hash legitimately.
    assert find_corrupt(leader(100), leader(101, revision=11), []) == []


class FakeCluster:
    """The leader's view for one check: its store, its peers' answers and the alarms raised."""

    def __init__(self, answers: dict[int, pb.HashKVResponse | None]) -> None:
        self.answers = answers
        self.asked: list[tuple[int, int]] = []
        self.alarms: list[int] = []
        self.barriers = 0

    async def fetch(
        self, member: Member, revision: int, timeout: float
    ) -> pb.HashKVResponse | None:
        self.asked.append((member.id, revision))
        return self.answers[member.id]

    async def barrier(self) -> None:
        self.barriers += 1

    async def raise_alarm(self, member_id: int) -> None:
        self.alarms.append(member_id)

    def checker(self) -> CorruptionChecker:
        members = [
            Member(LEADER, "a", ("http://a",), ("http://a:1",)),
            Member(F1, "b", ("http://b",), ("http://b:1",)),
            Member(F2, "c", ("http://c",), ("http://c:1",)),
            Member(9, "learner", ("http://d",), ("http://d:1",), is_learner=True),
        ]
        return CorruptionChecker(
            member_id=LEADER,
            interval=60,
            timeout=1,
            is_leader=lambda: True,
            hash_kv=lambda revision: (100, 5, 10),
            members=lambda: members,
            read_barrier=self.barrier,
            raise_alarm=self.raise_alarm,
            fetch=self.fetch,
        )


def answer(hash_: int, revision: int = 10, compact: int = 5) -> pb.HashKVResponse:
    return pb.HashKVResponse(
        header=pb.ResponseHeader(revision=revision), hash=hash_, compact_revision=compact
    )


def test_a_round_asks_voters_at_the_leaders_revision_and_alarms_the_odd_one() -> None:
    cluster = FakeCluster({F1: answer(100), F2: answer(7)})
    assert asyncio.run(cluster.checker().check()) == [F2]
    assert sorted(cluster.asked) == [(F1, 10), (F2, 10)]
    assert cluster.barriers == 1
    assert cluster.alarms == [F2]


def test_unreachable_members_are_skipped() -> None:
    cluster = FakeCluster({F1: None, F2: answer(100)})
    assert asyncio.run(cluster.checker().check()) == []
    assert cluster.alarms == []
