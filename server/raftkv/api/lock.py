"""etcd's v3lock service: a fair distributed lock held by a lease.

Lock follows etcd's mutex recipe (see `raftkv.api.concurrency`): one txn creates
`<name>/<lease hex>` under the lease unless it exists (a lease locking again keeps its place)
and reads the current owner; the caller owns the lock at once if it is the oldest key, and
otherwise waits for its predecessors' deletion. The answer's header revision is that of the
read that found no older key (the txn's when uncontended), so `key` plus that revision is a
fencing token.

A Lock call that ends while waiting (the client cancels, its deadline passes, a read fails)
deletes its key, as etcd's mutex does, so an abandoned waiter does not block the queue until
its lease expires. Unlock is a plain delete of the key.
"""

from __future__ import annotations

import grpc

from raftkv.api.concurrency import (
    Recipes,
    SessionExpiredError,
    contender_key,
    created_at,
    first_created,
    put_op,
    range_op,
)
from raftkv.api.handlers import in_process
from raftkv.node.server import MemberServer
from raftkv.pb.etcdserverpb import rpc_pb2 as pb
from raftkv.pb.v3lockpb import v3lock_pb2, v3lock_pb2_grpc


class LockService(v3lock_pb2_grpc.LockServicer):
    def __init__(self, server: MemberServer) -> None:
        self.server = server
        self.recipes = Recipes(server)

    @in_process
    async def Lock(
        self, request: v3lock_pb2.LockRequest, context: grpc.aio.ServicerContext
    ) -> v3lock_pb2.LockResponse:
        recipes = self.recipes
        lease = await recipes.session_lease(request.lease)
        prefix = request.name + b"/"
        key = contender_key(prefix, lease)
        owner = range_op(first_created(prefix))
        created = await recipes.txn(
            pb.TxnRequest(
                compare=[created_at(key, 0)],
                success=[put_op(key, b"", lease), owner],
                failure=[range_op(pb.RangeRequest(key=key)), owner],
            )
        )
        if created.succeeded:
            revision = created.header.revision
        else:
            revision = created.responses[0].response_range.kvs[0].create_revision
        owners = created.responses[1].response_range.kvs
        if not owners or owners[0].create_revision == revision:
            return v3lock_pb2.LockResponse(header=created.header, key=key)
        try:
            header = await recipes.wait_deletes(prefix, key, revision)
        except SessionExpiredError:
            raise  # the key is gone already
        except BaseException:
            recipes.in_background(recipes.delete(key), f"releasing abandoned lock key {key!r}")
            raise
        return v3lock_pb2.LockResponse(header=header, key=key)

    @in_process
    async def Unlock(
        self, request: v3lock_pb2.UnlockRequest, context: grpc.aio.ServicerContext
    ) -> v3lock_pb2.UnlockResponse:
        deleted = await self.recipes.delete(request.key)
        return v3lock_pb2.UnlockResponse(header=deleted.header)
