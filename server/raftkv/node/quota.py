"""The backend quota (`--quota-backend-bytes`): refuse writes that would grow a full database.

As in etcd 3.4, the check runs on the member that receives the request, before proposing it:
a Put, a Txn that puts, or a LeaseGrant is refused when this member's backend size plus an
estimate of the request's cost reaches the quota. The refusal also raises a NOSPACE alarm for
this member through Raft, so that the whole cluster stops taking such writes (the alarm is
enforced at apply time, see `raftkv.apply.alarms`) until an operator compacts, defragments and
disarms it. Reads, deletes and compaction pass: they are how space is won back.

The size is the database file plus its sqlite WAL (`Backend.size`), the bytes the member really
uses on disk, which only a defragmentation gives back after a compaction.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from raftkv.apply.alarms import NOSPACE, NoSpaceError, txn_puts
from raftkv.node.errors import NodeError
from raftkv.pb.etcdserverpb import rpc_pb2
from raftkv.pb.serverpb import internal_pb2 as serverpb

log = logging.getLogger(__name__)

# etcd's estimates of the bytes a key's metadata and a lease take in the backend.
KV_OVERHEAD = 256
LEASE_OVERHEAD = 64


def _put_cost(put: rpc_pb2.PutRequest) -> int:
    return KV_OVERHEAD + len(put.key) + len(put.value)


def _branch_cost(ops: Any) -> int:
    total = 0
    for op in ops:
        kind = op.WhichOneof("request")
        if kind == "request_put":
            total += _put_cost(op.request_put)
        elif kind == "request_txn":
            total += txn_cost(op.request_txn)
    return total


def txn_cost(txn: rpc_pb2.TxnRequest) -> int:
    """The costlier of the two branches: only one of them runs."""
    return max(_branch_cost(txn.success), _branch_cost(txn.failure))


def request_cost(request: serverpb.InternalRequest) -> int:
    """Estimated bytes `request` adds to the backend; 0 for requests the quota lets through."""
    kind = request.WhichOneof("request")
    if kind == "put":
        return _put_cost(request.put)
    if kind == "txn" and txn_puts(request.txn):
        return txn_cost(request.txn)
    if kind == "lease_grant":
        return LEASE_OVERHEAD
    return 0


class BackendQuota:
    """Guards proposals against `limit` bytes of backend; see the module docstring."""

    def __init__(
        self,
        limit: int,
        *,
        member_id: int,
        backend_size: Callable[[], int],
        nospace_raised: Callable[[], bool],
        propose: Callable[[serverpb.InternalRequest], Awaitable[Any]],
    ) -> None:
        self.limit = limit
        self._member_id = member_id
        self._backend_size = backend_size
        self._nospace_raised = nospace_raised
        self._propose = propose

    def available(self, request: serverpb.InternalRequest) -> bool:
        cost = request_cost(request)
        return cost == 0 or self._backend_size() + cost < self.limit

    async def enforce(self, request: serverpb.InternalRequest) -> None:
        """Raise NoSpaceError (after raising this member's NOSPACE alarm) if over quota."""
        if self.available(request):
            return
        if not self._nospace_raised():
            log.warning(
                "backend size %d reached the quota of %d bytes; raising the NOSPACE alarm",
                self._backend_size(),
                self.limit,
            )
            alarm = rpc_pb2.AlarmRequest(
                action=rpc_pb2.AlarmRequest.ACTIVATE, memberID=self._member_id, alarm=NOSPACE
            )
            # The write is refused either way; a failed alarm proposal is retried by the next one.
            with contextlib.suppress(NodeError):
                await self._propose(serverpb.InternalRequest(alarm=alarm))
        raise NoSpaceError()
