"""Leases through the real state machine: Raft entries applied by the Applier to a real MVCC
store, so the glue (the range deleter, attachments rebuilt from the store, snapshot restore) is
what is tested, deterministically and without processes."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from raftkv.apply import errors as apply_errors
from raftkv.apply.applier import Applier
from raftkv.lease import LeaseExistsError, LeaseNotFoundError, LeaseTTLTooLargeError, Lessor
from raftkv.pb.etcdserverpb import rpc_pb2 as pb
from raftkv.pb.mvccpb.kv_pb2 import Event
from raftkv.pb.raftpb import raft_pb2 as raftpb
from raftkv.pb.serverpb import internal_pb2 as serverpb

from tests.lease.conftest import FakeClock


class Member:
    """An Applier fed with numbered entries, as the Raft driver feeds it."""

    def __init__(self, db: Path, clock: FakeClock) -> None:
        self.db = db
        self.clock = clock
        self.index = itertools.count(1)
        self.applier = Applier(db, max_txn_ops=128, lessor=Lessor(min_ttl=2, clock=clock))

    def apply(self, **request: Any) -> Any:
        data = serverpb.InternalRequest(**request).SerializeToString()
        entry = raftpb.Entry(index=next(self.index), type=raftpb.ENTRY_NORMAL, data=data)
        _, result = self.applier.apply_normal(entry)
        self.applier.commit()
        if isinstance(result, Exception):
            raise result
        return result

    def grant(self, lease_id: int, ttl: int) -> pb.LeaseGrantResponse:
        return self.apply(lease_grant=pb.LeaseGrantRequest(ID=lease_id, TTL=ttl))

    def revoke(self, lease_id: int) -> pb.LeaseRevokeResponse:
        return self.apply(lease_revoke=pb.LeaseRevokeRequest(ID=lease_id))

    def put(self, key: bytes, lease: int = 0, **options: bool) -> pb.PutResponse:
        return self.apply(put=pb.PutRequest(key=key, value=b"v", lease=lease, **options))

    def live(self) -> dict[bytes, int]:
        return {kv.key: kv.lease for kv in self.applier.store.range(b"\0", b"\0").kvs}

    def reopen(self) -> None:
        self.applier.close()
        self.applier = Applier(self.db, max_txn_ops=128, lessor=Lessor(min_ttl=2, clock=self.clock))


@pytest.fixture
def member(tmp_path: Path, clock: FakeClock) -> Iterator[Member]:
    member = Member(tmp_path / "db", clock)
    yield member
    member.applier.close()


def test_applied_grant_answers_with_id_raised_ttl_and_revision(member: Member) -> None:
    member.put(b"before")
    granted = member.grant(5, 1)
    assert (granted.ID, granted.TTL, granted.header.revision) == (5, 2, 2)
    with pytest.raises(LeaseExistsError):
        member.grant(5, 10)
    with pytest.raises(LeaseTTLTooLargeError):
        member.grant(6, 9_000_000_001)


def test_put_with_an_unknown_lease_fails_and_writes_nothing(member: Member) -> None:
    with pytest.raises(apply_errors.LeaseNotFoundError):
        member.put(b"k", lease=9)
    assert member.live() == {}


def test_put_delete_and_ignore_lease_keep_attachments_right(member: Member) -> None:
    member.grant(1, 60)
    member.grant(2, 60)
    member.put(b"a", lease=1)
    member.put(b"b", lease=1)
    member.put(b"b", lease=2)
    member.apply(put=pb.PutRequest(key=b"a", value=b"new", ignore_lease=True))
    lessor = member.applier.lessor
    assert (lessor.keys(1), lessor.keys(2)) == ([b"a"], [b"b"])
    txn = pb.TxnRequest(
        success=[
            pb.RequestOp(request_delete_range=pb.DeleteRangeRequest(key=b"a")),
            pb.RequestOp(request_put=pb.PutRequest(key=b"c", value=b"v", lease=2)),
        ]
    )
    member.apply(txn=txn)
    assert (lessor.keys(1), lessor.keys(2)) == ([], [b"b", b"c"])


def test_revoke_deletes_attached_keys_in_one_revision_through_mvcc(member: Member) -> None:
    member.grant(1, 60)
    for key in (b"x", b"y", b"z"):
        member.put(key, lease=1)
    member.put(b"plain")
    before = member.applier.store.current_revision
    revoked = member.revoke(1)
    assert revoked.header.revision == before + 1
    assert member.live() == {b"plain": 0}
    history = member.applier.store.events_since(before + 1)
    assert [(e.type, e.kv.key, e.kv.mod_revision) for e in history] == [
        (Event.DELETE, b"x", before + 1),
        (Event.DELETE, b"y", before + 1),
        (Event.DELETE, b"z", before + 1),
    ]
    with pytest.raises(LeaseNotFoundError):
        member.revoke(1)


def test_revoke_of_a_lease_without_keys_keeps_the_revision(member: Member) -> None:
    member.put(b"k")
    member.grant(1, 60)
    assert member.revoke(1).header.revision == member.applier.store.current_revision == 2


def test_reopen_rebuilds_leases_checkpoints_and_attachments(member: Member) -> None:
    member.grant(1, 600)
    member.grant(2, 60)
    member.put(b"a", lease=1)
    member.put(b"b", lease=2)
    member.put(b"b", lease=1)
    member.put(b"c", lease=2)
    member.apply(delete_range=pb.DeleteRangeRequest(key=b"c"))
    checkpoint = pb.LeaseCheckpointRequest(
        checkpoints=[pb.LeaseCheckpoint(ID=1, remaining_TTL=420)]
    )
    member.apply(lease_checkpoint=checkpoint)

    member.reopen()

    lessor = member.applier.lessor
    assert sorted((x.id, x.ttl, x.remaining_ttl) for x in lessor.leases()) == [
        (1, 600, 420),
        (2, 60, 0),
    ]
    assert (lessor.keys(1), lessor.keys(2)) == ([b"a", b"b"], [])
    lessor.promote(extend=1)
    assert lessor.remaining(1) == 421
    member.revoke(1)  # the rebuilt attachments are what revoke deletes
    assert member.live() == {}


def test_snapshot_restore_reloads_the_lessor_and_keeps_its_role(
    member: Member, tmp_path: Path, clock: FakeClock
) -> None:
    # A second member's state, shipped as a snapshot database file.
    other = Member(tmp_path / "other.db", clock)
    other.grant(7, 30)
    other.put(b"from-snapshot", lease=7)
    snapshot = tmp_path / "snapshot.db"
    other.applier.backend.snapshot_to(snapshot)
    other.applier.close()

    member.grant(1, 60)
    member.applier.lessor.promote(extend=0)
    member.applier.restore(snapshot)

    lessor = member.applier.lessor
    assert [x.id for x in lessor.leases()] == [7]
    assert lessor.keys(7) == [b"from-snapshot"]
    assert lessor.is_primary
    assert lessor.remaining(7) == 30
    member.revoke(7)
    assert member.live() == {}
