"""etcd's Cluster service."""

from __future__ import annotations

import grpc

from raftkv.api.handlers import unary
from raftkv.membership import Member
from raftkv.node.server import MemberServer
from raftkv.pb.etcdserverpb import rpc_pb2, rpc_pb2_grpc


def member_to_pb(member: Member) -> rpc_pb2.Member:
    return rpc_pb2.Member(
        ID=member.id,
        name=member.name,
        peerURLs=list(member.peer_urls),
        clientURLs=list(member.client_urls),
        isLearner=member.is_learner,
    )


class ClusterService(rpc_pb2_grpc.ClusterServicer):
    def __init__(self, server: MemberServer) -> None:
        self.server = server

    @unary
    async def MemberList(
        self, request: rpc_pb2.MemberListRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.MemberListResponse:
        response = rpc_pb2.MemberListResponse(
            members=[member_to_pb(m) for m in self.server.applier.membership.sorted_members()]
        )
        self.server.fill_header(response.header)
        # etcd's Cluster service answers without a revision: membership is not MVCC state.
        response.header.revision = 0
        return response
