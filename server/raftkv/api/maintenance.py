"""etcd's Maintenance service."""

from __future__ import annotations

import grpc

from raftkv.api.handlers import unary
from raftkv.node.server import MemberServer
from raftkv.pb.etcdserverpb import rpc_pb2, rpc_pb2_grpc

# The etcd API version raftkv implements; clients gate features on the major.minor part.
SERVER_VERSION = "3.4.0"


class MaintenanceService(rpc_pb2_grpc.MaintenanceServicer):
    def __init__(self, server: MemberServer) -> None:
        self.server = server

    @unary
    async def Status(
        self, request: rpc_pb2.StatusRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.StatusResponse:
        node = self.server.node
        backend = self.server.applier.backend
        me = self.server.applier.membership.get(self.server.member_id)
        response = rpc_pb2.StatusResponse(
            version=SERVER_VERSION,
            dbSize=backend.size(),
            dbSizeInUse=backend.size_in_use(),
            leader=node.leader,
            raftIndex=node.committed_index,
            raftTerm=node.term,
            raftAppliedIndex=node.applied_index,
            isLearner=bool(me and me.is_learner),
        )
        self.server.fill_header(response.header)
        return response
