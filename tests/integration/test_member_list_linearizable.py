"""MemberList with `linearizable` goes through a ReadIndex round; without it, any member answers."""

from __future__ import annotations

import signal

import grpc
import pytest
from raftkv.pb.etcdserverpb import rpc_pb2, rpc_pb2_grpc

from tests.support.raftkv import RaftKVCluster


def member_list(target: str, linearizable: bool) -> rpc_pb2.MemberListResponse:
    with grpc.insecure_channel(target) as channel:
        return rpc_pb2_grpc.ClusterStub(channel).MemberList(
            rpc_pb2.MemberListRequest(linearizable=linearizable), timeout=2
        )


def test_linearizable_member_list_needs_a_quorum(cluster3: RaftKVCluster) -> None:
    for target in cluster3.grpc_targets:
        assert len(member_list(target, linearizable=True).members) == 3
    survivor, *others = cluster3.members
    for member in others:
        member.kill(signal.SIGKILL)
    assert len(member_list(survivor.target, linearizable=False).members) == 3
    with pytest.raises(grpc.RpcError) as raised:
        member_list(survivor.target, linearizable=True)
    assert raised.value.code() in (
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.UNAVAILABLE,
    )
