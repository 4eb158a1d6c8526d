"""etcd's v3election service: leader election with a proclaimed value, held by a lease.

The recipe is etcd's (see `raftkv.api.concurrency`): a campaigner creates
`<name>/<lease hex>` holding its value and leads once no older key remains under `<name>/`; the
leader is always the oldest key. A lease campaigning again keeps its place and, if it brings a
new value, proclaims it. Proclaim and Resign act only while the leader key still has the
create revision of the leadership they name (else Proclaim says "election: not leader" and
Resign does nothing), so a stale leader cannot overwrite or delete a newer one's key.

A Campaign call the client abandons (cancel, deadline) resigns, as etcd's does. Any other
failure leaves the key: the caller may still be queued and can retry with the same lease.

Observe streams the leader's key-value: the current one (or the first put under `<name>/` when
there is none), each later value it proclaims, and after its key is deleted the next leader.
Like etcd, a failed read ends the stream without an error status, and a call made with
`hasleader=true` is ended with "etcdserver: no leader" once the member has been without a leader
for more than MAX_NO_LEADER_COUNT election timeouts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

import grpc

from raftkv.api import errors
from raftkv.api.concurrency import (
    ElectionNoLeaderError,
    ElectionNotLeaderError,
    InternalWatch,
    MissingLeaderKeyError,
    Recipes,
    WatchCompacted,
    contender_key,
    created_at,
    delete_op,
    first_created,
    prefix_end,
    put_op,
    range_op,
)
from raftkv.api.handlers import abort_with, credentials, in_process, requires_leader
from raftkv.api.watch import MAX_NO_LEADER_COUNT
from raftkv.auth import identity
from raftkv.node.errors import NoLeaderError
from raftkv.node.server import MemberServer
from raftkv.pb.etcdserverpb import rpc_pb2 as pb
from raftkv.pb.mvccpb.kv_pb2 import Event
from raftkv.pb.v3electionpb import v3election_pb2 as epb
from raftkv.pb.v3electionpb import v3election_pb2_grpc

log = logging.getLogger(__name__)


class ElectionService(v3election_pb2_grpc.ElectionServicer):
    def __init__(self, server: MemberServer) -> None:
        self.server = server
        self.recipes = Recipes(server)

    @in_process
    async def Campaign(
        self, request: epb.CampaignRequest, context: grpc.aio.ServicerContext
    ) -> epb.CampaignResponse:
        recipes = self.recipes
        lease = await recipes.session_lease(request.lease)
        prefix = request.name + b"/"
        key = contender_key(prefix, lease)
        created = await recipes.txn(
            pb.TxnRequest(
                compare=[created_at(key, 0)],
                success=[put_op(key, request.value, lease)],
                failure=[range_op(pb.RangeRequest(key=key))],
            )
        )
        revision = created.header.revision
        if not created.succeeded:
            mine = created.responses[0].response_range.kvs[0]
            revision = mine.create_revision
            if mine.value != request.value:
                try:
                    await self._proclaim(key, revision, lease, request.value)
                except Exception:
                    with contextlib.suppress(Exception):
                        await self._resign(key, revision)
                    raise
        try:
            await recipes.wait_deletes(prefix, key, revision)
        except asyncio.CancelledError:
            recipes.in_background(self._resign(key, revision), f"resigning {key!r}")
            raise
        leader = epb.LeaderKey(name=request.name, key=key, rev=revision, lease=lease)
        return epb.CampaignResponse(header=created.header, leader=leader)

    @in_process
    async def Proclaim(
        self, request: epb.ProclaimRequest, context: grpc.aio.ServicerContext
    ) -> epb.ProclaimResponse:
        if not request.HasField("leader"):
            raise MissingLeaderKeyError()
        leader = request.leader
        lease = await self.recipes.session_lease(leader.lease)
        proclaimed = await self._proclaim(leader.key, leader.rev, lease, request.value)
        return epb.ProclaimResponse(header=proclaimed.header)

    @in_process
    async def Resign(
        self, request: epb.ResignRequest, context: grpc.aio.ServicerContext
    ) -> epb.ResignResponse:
        if not request.HasField("leader"):
            raise MissingLeaderKeyError()
        # etcd opens a session for the leader's lease first, granting one when it is 0.
        await self.recipes.session_lease(request.leader.lease)
        resigned = await self._resign(request.leader.key, request.leader.rev)
        return epb.ResignResponse(header=resigned.header)

    @in_process
    async def Leader(
        self, request: epb.LeaderRequest, context: grpc.aio.ServicerContext
    ) -> epb.LeaderResponse:
        found = await self.recipes.get(first_created(request.name + b"/"))
        if not found.kvs:
            raise ElectionNoLeaderError()
        return epb.LeaderResponse(header=found.header, kv=found.kvs[0])

    async def Observe(self, request: epb.LeaderRequest, context: grpc.aio.ServicerContext) -> None:
        needs_leader = requires_leader(context)
        if needs_leader:
            try:
                self.server.node.require_leader()
            except NoLeaderError as error:
                await abort_with(context, error)
        with identity.bound(credentials(context)):  # its reads are the caller's
            sender = asyncio.create_task(self._send_changes(request.name + b"/", context))
        tasks = [sender]
        if needs_leader:
            tasks.append(asyncio.create_task(self._leader_lost()))
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        for task in done:
            error = task.exception()
            if error is not None:
                await abort_with(context, error)

    # ---- the recipe's steps ------------------------------------------------------------------

    async def _proclaim(
        self, key: bytes, revision: int, lease: int, value: bytes
    ) -> pb.TxnResponse:
        proclaimed = await self.recipes.txn(
            pb.TxnRequest(compare=[created_at(key, revision)], success=[put_op(key, value, lease)])
        )
        if not proclaimed.succeeded:
            raise ElectionNotLeaderError()
        return proclaimed

    async def _resign(self, key: bytes, revision: int) -> pb.TxnResponse:
        return await self.recipes.txn(
            pb.TxnRequest(compare=[created_at(key, revision)], success=[delete_op(key)])
        )

    async def _send_changes(self, prefix: bytes, context: grpc.aio.ServicerContext) -> None:
        try:
            async with contextlib.aclosing(self._changes(prefix)) as changes:
                async for change in changes:
                    await context.write(change)
        except Exception as error:
            if errors.lookup(error) is None:
                raise
            log.debug("election observer of %r ended: %s", prefix, error)

    async def _changes(self, prefix: bytes) -> AsyncIterator[epb.LeaderResponse]:
        while True:
            found = await self.recipes.get(first_created(prefix))
            try:
                if found.kvs:
                    header, leader = found.header, found.kvs[0]
                else:
                    header, leader = await self._first_put(prefix, found.header.revision + 1)
                yield epb.LeaderResponse(header=header, kv=leader)
                updates = self._updates(leader.key, header.revision + 1)
                async with contextlib.aclosing(updates):
                    async for update in updates:
                        yield update
            except WatchCompacted:
                continue  # read the leader again

    async def _updates(self, key: bytes, start_revision: int) -> AsyncIterator[epb.LeaderResponse]:
        """The leader key's new values from `start_revision` on, until it is deleted."""
        with InternalWatch(self.server.watchable) as watch:
            watch.add(key, start_revision=start_revision)
            while True:
                response = await watch.next()
                self._fill(response.header)
                for event in response.events:
                    if event.type == Event.DELETE:
                        return
                    yield epb.LeaderResponse(header=response.header, kv=event.kv)

    async def _first_put(
        self, prefix: bytes, start_revision: int
    ) -> tuple[pb.ResponseHeader, pb.KeyValue]:
        """The first key put under `prefix` from `start_revision` on, with the header of its
        watch response at that key's revision."""
        with InternalWatch(self.server.watchable) as watch:
            watch.add(prefix, range_end=prefix_end(prefix), start_revision=start_revision)
            while True:
                response = await watch.next()
                for event in response.events:
                    if event.type == Event.PUT:
                        self._fill(response.header)
                        response.header.revision = event.kv.mod_revision
                        return response.header, event.kv

    def _fill(self, header: pb.ResponseHeader) -> None:
        self.server.fill_header(header, header.revision)

    async def _leader_lost(self) -> None:
        """Raise NoLeaderError once the member has been leaderless for more than
        MAX_NO_LEADER_COUNT consecutive election timeouts (etcd's hasleader stream rule)."""
        interval = self.server.config.election_timeout_ms / 1000
        leaderless = 0
        while leaderless <= MAX_NO_LEADER_COUNT:
            await asyncio.sleep(interval)
            leaderless = leaderless + 1 if self.server.node.leader == 0 else 0
        raise NoLeaderError()
