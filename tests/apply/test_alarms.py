"""Alarms as the state machine applies them: etcd's response shapes, persistence, and what a
raised NOSPACE or CORRUPT alarm refuses at apply time (the same on every member)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from raftkv.apply.alarms import AlarmStore, CorruptClusterError, NoSpaceError, alarm_text
from raftkv.apply.applier import Applier
from raftkv.pb.etcdserverpb import rpc_pb2 as pb
from raftkv.pb.raftpb import raft_pb2 as raftpb
from raftkv.pb.serverpb import internal_pb2 as serverpb

A = pb.AlarmRequest
M1, M2 = 0x1111, 0x2222


@pytest.fixture
def applier(tmp_path: Path) -> Iterator[Applier]:
    applier = Applier(tmp_path / "db", max_txn_ops=16)
    yield applier
    applier.close()


class Log:
    """Feeds requests to an applier as consecutive committed entries."""

    def __init__(self, applier: Applier) -> None:
        self.applier = applier
        self.index = 0

    def apply(self, **request: Any) -> Any:
        self.index += 1
        data = serverpb.InternalRequest(**request).SerializeToString()
        _, result = self.applier.apply_normal(raftpb.Entry(index=self.index, term=1, data=data))
        self.applier.commit()
        return result

    def alarm(self, action: int, member: int = 0, alarm: int = pb.NONE) -> Any:
        return self.apply(alarm=A(action=action, memberID=member, alarm=alarm))


def alarms(response: pb.AlarmResponse) -> list[tuple[int, int]]:
    return [(a.memberID, a.alarm) for a in response.alarms]


def put(key: bytes = b"k", value: bytes = b"v") -> dict[str, Any]:
    return {"put": pb.PutRequest(key=key, value=value)}


def txn(*success: pb.RequestOp, failure: tuple[pb.RequestOp, ...] = ()) -> dict[str, Any]:
    return {"txn": pb.TxnRequest(success=list(success), failure=list(failure))}


PUT_OP = pb.RequestOp(request_put=pb.PutRequest(key=b"t", value=b"v"))
DEL_OP = pb.RequestOp(request_delete_range=pb.DeleteRangeRequest(key=b"k"))
GET_OP = pb.RequestOp(request_range=pb.RangeRequest(key=b"k"))


def test_activate_get_and_deactivate_answer_like_etcd(applier: Applier) -> None:
    log = Log(applier)
    assert alarms(log.alarm(A.GET)) == []
    first = log.alarm(A.ACTIVATE, M2, pb.NOSPACE)
    assert alarms(first) == [(M2, pb.NOSPACE)]
    assert not first.HasField("header")  # etcd 3.4 answers alarms without one
    # Raising an alarm that is already up changes nothing and reports nothing.
    assert alarms(log.alarm(A.ACTIVATE, M2, pb.NOSPACE)) == []
    log.alarm(A.ACTIVATE, M1, pb.CORRUPT)
    log.alarm(A.ACTIVATE, M1, pb.NOSPACE)
    everything = [(M1, pb.NOSPACE), (M2, pb.NOSPACE), (M1, pb.CORRUPT)]
    assert alarms(log.alarm(A.GET)) == everything
    assert alarms(log.alarm(A.GET, alarm=pb.CORRUPT)) == [(M1, pb.CORRUPT)]
    assert alarms(log.alarm(A.DEACTIVATE, M2, pb.NOSPACE)) == [(M2, pb.NOSPACE)]
    assert alarms(log.alarm(A.DEACTIVATE, M2, pb.NOSPACE)) == []
    assert alarms(log.alarm(A.GET)) == [(M1, pb.NOSPACE), (M1, pb.CORRUPT)]


def test_alarms_survive_a_reopen_and_travel_in_a_snapshot(tmp_path: Path) -> None:
    db = tmp_path / "db"
    applier = Applier(db, max_txn_ops=16)
    Log(applier).alarm(A.ACTIVATE, M1, pb.NOSPACE)
    applier.backend.snapshot_to(tmp_path / "copy.db")
    applier.close()

    reopened = Applier(db, max_txn_ops=16)
    assert reopened.alarms.get() == [pb.AlarmMember(memberID=M1, alarm=pb.NOSPACE)]
    reopened.close()

    fresh = Applier(tmp_path / "other.db", max_txn_ops=16)
    assert fresh.alarms.get() == []
    fresh.restore(tmp_path / "copy.db")
    assert fresh.alarms.is_raised(pb.NOSPACE, M1)
    assert isinstance(Log(fresh).apply(**put()), NoSpaceError)
    fresh.close()


def test_nospace_refuses_growth_but_not_reads_deletes_or_compaction(applier: Applier) -> None:
    log = Log(applier)
    log.apply(**put())
    log.apply(**put())
    log.alarm(A.ACTIVATE, M1, pb.NOSPACE)
    refused = [
        put(),
        txn(PUT_OP),
        txn(GET_OP, failure=(PUT_OP,)),
        txn(pb.RequestOp(request_txn=pb.TxnRequest(success=[PUT_OP]))),
        {"lease_grant": pb.LeaseGrantRequest(ID=5, TTL=60)},
    ]
    for request in refused:
        error = log.apply(**request)
        assert isinstance(error, NoSpaceError), request
        assert str(error) == "etcdserver: mvcc: database space exceeded"
    assert applier.store.current_revision == 3  # nothing was written

    assert log.apply(**txn(GET_OP)).succeeded
    assert log.apply(**txn(DEL_OP)).responses[0].response_delete_range.deleted == 1
    assert log.apply(compaction=pb.CompactionRequest(revision=3)).header.revision == 4

    log.alarm(A.DEACTIVATE, M1, pb.NOSPACE)
    assert log.apply(**put()).header.revision == 5


def test_corrupt_refuses_every_replicated_write(applier: Applier) -> None:
    log = Log(applier)
    log.apply(**put())
    log.apply(lease_grant=pb.LeaseGrantRequest(ID=9, TTL=60))
    log.alarm(A.ACTIVATE, M2, pb.CORRUPT)
    for request in (
        put(),
        {"delete_range": pb.DeleteRangeRequest(key=b"k")},
        txn(DEL_OP),
        {"compaction": pb.CompactionRequest(revision=2)},
        {"lease_grant": pb.LeaseGrantRequest(ID=5, TTL=60)},
        {"lease_revoke": pb.LeaseRevokeRequest(ID=9)},
    ):
        error = log.apply(**request)
        assert isinstance(error, CorruptClusterError), request
        assert str(error) == "etcdserver: corrupt cluster"
    assert [kv.value for kv in applier.store.range(b"k").kvs] == [b"v"]
    assert 9 in applier.lessor
    # Alarms themselves still apply: an operator can clear it.
    assert alarms(log.alarm(A.DEACTIVATE, M2, pb.CORRUPT)) == [(M2, pb.CORRUPT)]
    assert log.apply(**put()).header.revision == 3


def test_status_text_is_etcds_protobuf_rendering() -> None:
    assert alarm_text(pb.AlarmMember(memberID=42, alarm=pb.NOSPACE)) == "memberID:42 alarm:NOSPACE "
    assert alarm_text(pb.AlarmMember(memberID=7, alarm=pb.CORRUPT)) == "memberID:7 alarm:CORRUPT "


def test_an_alarm_without_a_type_is_never_raised(tmp_path: Path) -> None:
    from raftkv.storage.backend import Backend

    backend = Backend(tmp_path / "db")
    store = AlarmStore(backend)
    assert store.activate(M1, pb.NONE) is None
    assert store.get() == []
    backend.close()
