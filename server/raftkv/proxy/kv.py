"""The KV service through the proxy: forwarded, with serializable ranges cached (`cache`).

Writes are forwarded first and invalidate afterwards, whatever their outcome: a write that
failed ambiguously may still have been applied, so its ranges are dropped from the cache too.
"""

from __future__ import annotations

import grpc

from raftkv.client.transport import Retry
from raftkv.pb.etcdserverpb import rpc_pb2
from raftkv.proxy.cache import RangeCache, written_ranges
from raftkv.proxy.forward import Forwarder, forwarded_metadata, retry_class

__all__ = ["KVProxy"]


def _token(context: grpc.aio.ServicerContext) -> str:
    return next((v for k, v in forwarded_metadata(context) if k == "token"), "")


class KVProxy:
    def __init__(self, forwarder: Forwarder, cache: RangeCache) -> None:
        self._forward = forwarder
        self.cache = cache

    async def range(
        self, request: rpc_pb2.RangeRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.RangeResponse:
        if not request.serializable:
            return await self._forward.unary(
                lambda s: s.kv.Range, request, context, Retry.IMMUTABLE
            )
        token = _token(context)
        cached = self.cache.get(token, request)
        if cached is not None:
            return cached
        response = await self._forward.unary(
            lambda s: s.kv.Range, request, context, Retry.IMMUTABLE
        )
        self.cache.put(token, request, response)
        return response

    async def put(
        self, request: rpc_pb2.PutRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.PutResponse:
        try:
            return await self._forward.unary(lambda s: s.kv.Put, request, context, Retry.MUTABLE)
        finally:
            self.cache.invalidate([(request.key, b"")])

    async def delete_range(
        self, request: rpc_pb2.DeleteRangeRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.DeleteRangeResponse:
        try:
            return await self._forward.unary(
                lambda s: s.kv.DeleteRange, request, context, Retry.MUTABLE
            )
        finally:
            self.cache.invalidate([(request.key, request.range_end)])

    async def txn(
        self, request: rpc_pb2.TxnRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.TxnResponse:
        retry = retry_class("/etcdserverpb.KV/Txn", request)
        try:
            return await self._forward.unary(lambda s: s.kv.Txn, request, context, retry)
        finally:
            self.cache.invalidate(written_ranges(request))

    async def compact(
        self, request: rpc_pb2.CompactionRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.CompactionResponse:
        try:
            return await self._forward.unary(
                lambda s: s.kv.Compact, request, context, Retry.MUTABLE
            )
        finally:
            self.cache.clear()
