"""The v3 calls the v2 store makes, over a gRPC channel to the member's own socket.

Like the JSON gateway, the v2 API calls the member the way any v3 client does, so every v2
write is an ordinary v3 Txn through Raft (durable, replicated, in the same revision history,
watched, metered and traced like the rest) and the v2 code needs nothing of the node's
internals. `V3` is the small seam the store is written against; `GrpcV3` is the real one.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Protocol

import grpc

from raftkv.api.v2keys.errors import RAFT_INTERNAL, UNAUTHORIZED, V2Error
from raftkv.pb.etcdserverpb import rpc_pb2, rpc_pb2_grpc


class V3(Protocol):
    async def txn(self, request: rpc_pb2.TxnRequest) -> rpc_pb2.TxnResponse: ...

    async def lease_grant(self, ttl: int) -> int: ...

    async def lease_revoke(self, lease: int) -> None: ...

    def watch(self, request: rpc_pb2.WatchCreateRequest) -> AsyncIterator[rpc_pb2.WatchResponse]:
        """The watch's responses, the created one first; closing the iterator cancels it."""
        ...


def translate(error: grpc.aio.AioRpcError) -> V2Error:
    """A failed v3 call as the v2 error etcd would give for a store it cannot reach."""
    if error.code() in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED):
        return V2Error(UNAUTHORIZED, error.details() or "")
    return V2Error(RAFT_INTERNAL, error.details() or error.code().name)


class GrpcV3:
    """`V3` over a channel (to the member's internal gRPC socket)."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self._kv = rpc_pb2_grpc.KVStub(channel)
        self._lease = rpc_pb2_grpc.LeaseStub(channel)
        self._watch = rpc_pb2_grpc.WatchStub(channel)

    async def txn(self, request: rpc_pb2.TxnRequest) -> rpc_pb2.TxnResponse:
        try:
            return await self._kv.Txn(request)
        except grpc.aio.AioRpcError as error:
            raise translate(error) from error

    async def lease_grant(self, ttl: int) -> int:
        try:
            response = await self._lease.LeaseGrant(rpc_pb2.LeaseGrantRequest(TTL=ttl))
        except grpc.aio.AioRpcError as error:
            raise translate(error) from error
        return int(response.ID)

    async def lease_revoke(self, lease: int) -> None:
        try:
            await self._lease.LeaseRevoke(rpc_pb2.LeaseRevokeRequest(ID=lease))
        except grpc.aio.AioRpcError as error:
            raise translate(error) from error

    async def watch(
        self, request: rpc_pb2.WatchCreateRequest
    ) -> AsyncIterator[rpc_pb2.WatchResponse]:
        async def requests() -> AsyncIterator[rpc_pb2.WatchRequest]:
            yield rpc_pb2.WatchRequest(create_request=request)
            await asyncio.Event().wait()  # keep the stream open until the call is cancelled

        call = self._watch.Watch(requests())
        try:
            async for response in call:
                yield response
        except grpc.aio.AioRpcError as error:
            raise translate(error) from error
        finally:
            with contextlib.suppress(Exception):
                call.cancel()
