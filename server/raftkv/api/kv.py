"""etcd's KV service: reads served locally (after ReadIndex unless serializable), writes by Raft."""

from __future__ import annotations

import grpc

from raftkv.api.handlers import unary
from raftkv.node.server import MemberServer
from raftkv.pb.etcdserverpb import rpc_pb2, rpc_pb2_grpc
from raftkv.pb.serverpb import internal_pb2 as serverpb


def txn_is_read_only(request: rpc_pb2.TxnRequest) -> bool:
    for op in (*request.success, *request.failure):
        kind = op.WhichOneof("request")
        if kind == "request_txn":
            if not txn_is_read_only(op.request_txn):
                return False
        elif kind != "request_range":
            return False
    return True


class KVService(rpc_pb2_grpc.KVServicer):
    def __init__(self, server: MemberServer) -> None:
        self.server = server

    @unary
    async def Range(
        self, request: rpc_pb2.RangeRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.RangeResponse:
        if not request.serializable:
            await self.server.node.read_barrier()
        await self.server.auth.check_range(request.key, request.range_end)
        response = self.server.applier.kv.range(request)
        self.server.fill_header(response.header)
        return response

    @unary
    async def Put(
        self, request: rpc_pb2.PutRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.PutResponse:
        self.server.applier.kv.validate_put(request)
        return await self.server.propose(serverpb.InternalRequest(put=request))

    @unary
    async def DeleteRange(
        self, request: rpc_pb2.DeleteRangeRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.DeleteRangeResponse:
        self.server.applier.kv.validate_delete_range(request)
        return await self.server.propose(serverpb.InternalRequest(delete_range=request))

    @unary
    async def Txn(
        self, request: rpc_pb2.TxnRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.TxnResponse:
        self.server.applier.kv.validate_txn(request)
        if txn_is_read_only(request):
            await self.server.node.read_barrier()
            await self.server.auth.check_txn(request)
            response = self.server.applier.kv.txn(request)
            self.server.fill_header(response.header)
            return response
        return await self.server.propose(serverpb.InternalRequest(txn=request))

    @unary
    async def Compact(
        self, request: rpc_pb2.CompactionRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.CompactionResponse:
        return await self.server.propose(serverpb.InternalRequest(compaction=request))
