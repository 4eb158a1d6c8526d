"""The lock and election recipes as etcd runs them inside its server, over the member itself.

etcd 3.4 serves the v3lock and v3election services with its client library's concurrency
recipes (mutex, election) running in the server over an in-process client. What a caller
observes is therefore the recipes' behaviour, and this module reproduces it over the member's
own paths, so the services work on any member, followers included:

- a linearizable read is `node.read_barrier()` then a range on the applied store, as the KV
  service does; writes are Raft proposals of the same `TxnRequest`s the recipes send;
- waiting is a watch on the member's watchable store, opened without an await after the read
  it follows, so no event between the read and the watch can be missed.

The one wait both recipes share is etcd's "wait for deletes": a contender owns the key
`<name>/<lease in hex>` and is first once no key under `<name>/` has a smaller create revision.
It waits for the deletion of the contender just ahead of it only (the youngest older key), then
reads again, so each deletion wakes one waiter and waiters go first in create-revision order.

Two choices differ from etcd 3.4 on purpose, where etcd's answer is wrong for the caller:

- a contender whose own key disappears while it waits (its lease expired or was revoked) fails
  at once with "session expired" (the error later etcd versions return), instead of waiting on
  and then reporting a lock or leadership whose key no longer exists;
- a watch cancelled by compaction (possible only after this member installs a snapshot while
  a caller waits) makes the recipe read again rather than fail.

A lease of 0 asks for a session lease, as etcd's recipes do: a 60 s lease is granted and never
kept alive, and the key lives at most that long.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Coroutine
from types import TracebackType
from typing import Any

from raftkv.lease import NO_LEASE, LeaseExistsError
from raftkv.node.server import MemberServer
from raftkv.pb.etcdserverpb import rpc_pb2 as pb
from raftkv.pb.mvccpb.kv_pb2 import Event
from raftkv.pb.serverpb import internal_pb2 as serverpb
from raftkv.watch import WatchableStore

log = logging.getLogger(__name__)

# etcd's concurrency.Session default TTL, used when a request names no lease.
DEFAULT_SESSION_TTL = 60
_INT63 = (1 << 63) - 1


class RecipeError(Exception):
    """Errors of the lock and election recipes; etcd sends them with code Unknown."""

    message = "recipe error"

    def __init__(self) -> None:
        super().__init__(self.message)


class SessionExpiredError(RecipeError):
    message = "session expired"


class ElectionNoLeaderError(RecipeError):
    message = "election: no leader"


class ElectionNotLeaderError(RecipeError):
    message = "election: not leader"


class MissingLeaderKeyError(RecipeError):
    message = '"leader" field must be provided'


class WatchCompacted(Exception):
    """An internal watch was cancelled because its next revision was compacted away."""


def prefix_end(prefix: bytes) -> bytes:
    """etcd's range end for "every key starting with `prefix`"."""
    stripped = prefix.rstrip(b"\xff")
    if not stripped:
        return b"\0"
    return stripped[:-1] + bytes([stripped[-1] + 1])


def contender_key(prefix: bytes, lease: int) -> bytes:
    """`<prefix><lease in hex>`: one key per lease, so a lease re-entering finds its place."""
    return prefix + f"{lease:x}".encode()


def first_created(prefix: bytes) -> pb.RangeRequest:
    """The oldest key under `prefix` (the owner, or the leader)."""
    return pb.RangeRequest(
        key=prefix,
        range_end=prefix_end(prefix),
        sort_target=pb.RangeRequest.CREATE,
        sort_order=pb.RangeRequest.ASCEND,
        limit=1,
    )


def created_at(key: bytes, revision: int) -> pb.Compare:
    """Compare: `key` was created at `revision` (0: it does not exist)."""
    return pb.Compare(
        key=key,
        target=pb.Compare.CREATE,
        result=pb.Compare.EQUAL,
        create_revision=revision,
    )


def put_op(key: bytes, value: bytes, lease: int) -> pb.RequestOp:
    return pb.RequestOp(request_put=pb.PutRequest(key=key, value=value, lease=lease))


def range_op(request: pb.RangeRequest) -> pb.RequestOp:
    return pb.RequestOp(request_range=request)


def delete_op(key: bytes) -> pb.RequestOp:
    return pb.RequestOp(request_delete_range=pb.DeleteRangeRequest(key=key))


class InternalWatch:
    """Watchers on the member's watchable store, read in-process; close it (or use `with`)."""

    def __init__(self, watchable: WatchableStore) -> None:
        self._stream = watchable.open_stream()
        self._next_id = 1

    def add(self, key: bytes, *, range_end: bytes = b"", start_revision: int) -> None:
        request = pb.WatchCreateRequest(
            key=key, range_end=range_end, start_revision=start_revision, watch_id=self._next_id
        )
        self._next_id += 1
        self._stream.create(request)

    async def next(self) -> pb.WatchResponse:
        """The next response carrying events; raises WatchCompacted if a watcher was cancelled."""
        while True:
            response = (await self._stream.next()).response
            if response.canceled:
                raise WatchCompacted()
            if response.events:
                return response

    def close(self) -> None:
        self._stream.close()

    def __enter__(self) -> InternalWatch:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class Recipes:
    """The member as the recipes' client: reads, txns, session leases, waits."""

    def __init__(self, server: MemberServer) -> None:
        self.server = server
        self._random = random.Random()
        self._background: set[asyncio.Task[Any]] = set()

    async def get(self, request: pb.RangeRequest) -> pb.RangeResponse:
        """A linearizable range, checked against the caller's read access."""
        await self.server.node.read_barrier()
        await self.server.auth.check_range(request.key, request.range_end)
        response = self.server.applier.kv.range(request)
        self.server.fill_header(response.header)
        return response

    async def txn(self, request: pb.TxnRequest) -> pb.TxnResponse:
        self.server.applier.kv.validate_txn(request)
        response: pb.TxnResponse = await self.server.propose(serverpb.InternalRequest(txn=request))
        return response

    async def delete(self, key: bytes) -> pb.DeleteRangeResponse:
        request = pb.DeleteRangeRequest(key=key)
        self.server.applier.kv.validate_delete_range(request)
        response: pb.DeleteRangeResponse = await self.server.propose(
            serverpb.InternalRequest(delete_range=request)
        )
        return response

    async def session_lease(self, lease: int) -> int:
        """`lease`, or a new lease of DEFAULT_SESSION_TTL seconds when it is 0 (NO_LEASE)."""
        if lease != NO_LEASE:
            return lease
        lessor = self.server.applier.lessor
        while True:
            lease_id = self._new_lease_id()
            if lease_id == NO_LEASE or lease_id in lessor:
                continue
            grant = pb.LeaseGrantRequest(TTL=DEFAULT_SESSION_TTL, ID=lease_id)
            try:
                response = await self.server.propose(serverpb.InternalRequest(lease_grant=grant))
            except LeaseExistsError:  # another generator picked the same ID meanwhile
                continue
            granted: int = response.ID
            return granted

    def _new_lease_id(self) -> int:
        """etcd's shape (the member's 16 ID bits, then 48 more), with random low bits so the IDs
        stay apart from the sequential ones the Lease service hands out."""
        prefix = (self.server.member_id & 0xFFFF) << 48
        return (prefix | self._random.getrandbits(48)) & _INT63

    async def wait_deletes(
        self, prefix: bytes, own_key: bytes, own_revision: int
    ) -> pb.ResponseHeader:
        """Wait until no key under `prefix` was created before `own_revision`; returns the header
        of the read that found none. Raises SessionExpiredError once `own_key` (created at
        `own_revision`) is gone."""
        older = pb.RangeRequest(
            key=prefix,
            range_end=prefix_end(prefix),
            sort_target=pb.RangeRequest.CREATE,
            sort_order=pb.RangeRequest.DESCEND,
            limit=1,
            max_create_revision=own_revision - 1,
        )
        while True:
            found = await self.get(older)
            # Same revision as `found`: no await in between.
            own = self.server.applier.kv.range(pb.RangeRequest(key=own_key)).kvs
            if not own or own[0].create_revision != own_revision:
                raise SessionExpiredError()
            if not found.kvs:
                return found.header
            with InternalWatch(self.server.watchable) as watch:
                start = found.header.revision + 1
                watch.add(found.kvs[0].key, start_revision=start)
                watch.add(own_key, start_revision=start)
                await _until_deleted(watch, own_key)

    def in_background(self, work: Coroutine[Any, Any, Any], what: str) -> None:
        """Run cleanup `work` to completion even though the request that needs it has ended."""

        async def run() -> None:
            try:
                await work
            except Exception as error:
                log.warning("%s failed: %s", what, error)

        task = asyncio.create_task(run())
        self._background.add(task)
        task.add_done_callback(self._background.discard)


async def _until_deleted(watch: InternalWatch, own_key: bytes) -> None:
    """Return when a watched key other than `own_key` is deleted (or the watch was compacted:
    the caller reads again); raise SessionExpiredError when `own_key` is."""
    while True:
        try:
            response = await watch.next()
        except WatchCompacted:
            return
        deletes = [e.kv.key for e in response.events if e.type == Event.DELETE]
        if own_key in deletes:
            raise SessionExpiredError()
        if deletes:
            return
