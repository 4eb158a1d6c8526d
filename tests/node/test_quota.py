"""The backend quota: which requests it weighs, when it refuses, and the NOSPACE alarm it raises."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from raftkv.apply.alarms import NoSpaceError
from raftkv.node.errors import RequestTimeoutError
from raftkv.node.quota import KV_OVERHEAD, LEASE_OVERHEAD, BackendQuota, request_cost
from raftkv.pb.etcdserverpb import rpc_pb2 as pb
from raftkv.pb.serverpb import internal_pb2 as serverpb

ME = 0xABC
LIMIT = 10_000


def put(value: bytes = b"v", key: bytes = b"k") -> serverpb.InternalRequest:
    return serverpb.InternalRequest(put=pb.PutRequest(key=key, value=value))


def put_op(value: bytes) -> pb.RequestOp:
    return pb.RequestOp(request_put=pb.PutRequest(key=b"k", value=value))


def test_costs_are_etcds_estimates() -> None:
    assert request_cost(put(b"x" * 100, b"key")) == KV_OVERHEAD + 103
    # Only one branch of a txn runs: the costlier one counts; nested puts count too.
    txn = pb.TxnRequest(
        success=[put_op(b"a" * 10), put_op(b"b" * 10)],
        failure=[pb.RequestOp(request_txn=pb.TxnRequest(success=[put_op(b"c" * 1000)]))],
    )
    assert request_cost(serverpb.InternalRequest(txn=txn)) == KV_OVERHEAD + 1001
    lease = serverpb.InternalRequest(lease_grant=pb.LeaseGrantRequest(TTL=5))
    assert request_cost(lease) == LEASE_OVERHEAD
    deletes_only = pb.TxnRequest(
        success=[pb.RequestOp(request_delete_range=pb.DeleteRangeRequest(key=b"k"))]
    )
    for free in (
        serverpb.InternalRequest(txn=deletes_only),
        serverpb.InternalRequest(delete_range=pb.DeleteRangeRequest(key=b"k")),
        serverpb.InternalRequest(compaction=pb.CompactionRequest(revision=3)),
        serverpb.InternalRequest(lease_revoke=pb.LeaseRevokeRequest(ID=1)),
    ):
        assert request_cost(free) == 0


class FakeMember:
    def __init__(self, size: int) -> None:
        self.size = size
        self.raised = False
        self.proposed: list[serverpb.InternalRequest] = []
        self.fail_proposals = False

    async def propose(self, request: serverpb.InternalRequest) -> Any:
        self.proposed.append(request)
        if self.fail_proposals:
            raise RequestTimeoutError()
        self.raised = True
        return None

    def quota(self) -> BackendQuota:
        return BackendQuota(
            LIMIT,
            member_id=ME,
            backend_size=lambda: self.size,
            nospace_raised=lambda: self.raised,
            propose=self.propose,
        )


def test_a_write_that_would_reach_the_quota_is_refused_and_raises_the_alarm_once() -> None:
    member = FakeMember(size=LIMIT - KV_OVERHEAD - 2)
    quota = member.quota()
    asyncio.run(quota.enforce(put(b"")))  # size + cost stays below the limit
    with pytest.raises(NoSpaceError):
        asyncio.run(quota.enforce(put(b"xy")))
    (alarm,) = member.proposed
    assert alarm.alarm == pb.AlarmRequest(
        action=pb.AlarmRequest.ACTIVATE, memberID=ME, alarm=pb.NOSPACE
    )
    with pytest.raises(NoSpaceError):
        asyncio.run(quota.enforce(put(b"xy")))
    assert len(member.proposed) == 1  # already raised: not proposed again


def test_space_reclaiming_requests_pass_a_full_backend() -> None:
    member = FakeMember(size=LIMIT * 2)
    quota = member.quota()
    asyncio.run(
        quota.enforce(serverpb.InternalRequest(delete_range=pb.DeleteRangeRequest(key=b"k")))
    )
    asyncio.run(
        quota.enforce(serverpb.InternalRequest(compaction=pb.CompactionRequest(revision=2)))
    )
    assert member.proposed == []


def test_the_write_is_refused_even_when_the_alarm_cannot_be_proposed() -> None:
    member = FakeMember(size=LIMIT)
    member.fail_proposals = True
    with pytest.raises(NoSpaceError):
        asyncio.run(member.quota().enforce(put()))
    with pytest.raises(NoSpaceError):
        asyncio.run(member.quota().enforce(put()))
    assert len(member.proposed) == 2  # retried with the next refused write
