"""etcd's Maintenance service: status, alarms, defragmentation, hashes and backend snapshots.

Shapes follow etcd 3.4 where clients can see them: `Status.errors` lists "etcdserver: no leader"
and every raised alarm as etcd prints it; `Defragment` and `Alarm` answer without a header;
`Alarm` goes through Raft for every action (so a GET is linearizable); `HashKV`'s header carries
the member's current revision.

With auth enabled, Defragment, Hash, HashKV and Snapshot need the root role; Status, Alarm and
MoveLeader are open to anyone, as in etcd 3.4. This service hands auth errors back untranslated
(code Unknown, "auth: permission denied"), as etcd 3.4's does.

`Snapshot` streams a consistent copy of the backend database, taken with the backend's own
online backup into a temporary file beside the database (the live file keeps changing, and the
stream may be slow), in chunks whose `remaining_bytes` counts down to 0, then one last message
whose blob is the SHA-256 of every byte sent before it. That is the stream `etcdctl snapshot
save` stores and `snapshot restore` checks.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import grpc

from raftkv.api.handlers import abort_with, credentials, requires_leader, unary
from raftkv.apply.alarms import alarm_text
from raftkv.auth import AuthError, Credentials, UntranslatedAuthError
from raftkv.node.admin import ClusterAdmin
from raftkv.node.server import MemberServer
from raftkv.pb.etcdserverpb import rpc_pb2, rpc_pb2_grpc
from raftkv.pb.serverpb import internal_pb2 as serverpb

# The etcd API version raftkv implements; clients gate features on the major.minor part.
SERVER_VERSION = "3.4.0"

# Bytes of database per Snapshot message.
SNAPSHOT_CHUNK_BYTES = 64 * 1024
_SNAPSHOT_PREFIX = "client-snapshot-"
NO_LEADER_TEXT = "etcdserver: no leader"


class MaintenanceService(rpc_pb2_grpc.MaintenanceServicer):
    def __init__(self, server: MemberServer) -> None:
        self.server = server
        # Copies left behind by streams a crash interrupted; no stream is running yet.
        for stale in server.snap_dir.glob(_SNAPSHOT_PREFIX + "*"):
            stale.unlink(missing_ok=True)

    @unary
    async def Status(
        self, request: rpc_pb2.StatusRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.StatusResponse:
        node = self.server.node
        applier = self.server.applier
        me = applier.membership.get(self.server.member_id)
        response = rpc_pb2.StatusResponse(
            version=SERVER_VERSION,
            dbSize=applier.backend.size(),
            dbSizeInUse=applier.backend.size_in_use(),
            leader=node.leader,
            raftIndex=node.committed_index,
            raftTerm=node.term,
            raftAppliedIndex=node.applied_index,
            isLearner=bool(me and me.is_learner),
        )
        if node.leader == 0:
            response.errors.append(NO_LEADER_TEXT)
        response.errors.extend(alarm_text(alarm) for alarm in applier.alarms.get())
        self.server.fill_header(response.header)
        return response

    @unary
    async def Alarm(
        self, request: rpc_pb2.AlarmRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.AlarmResponse:
        try:
            response: rpc_pb2.AlarmResponse = await self.server.propose(
                serverpb.InternalRequest(alarm=request)
            )
        except AuthError as error:  # an invalid token
            raise UntranslatedAuthError(error) from None
        response.ClearField("header")  # etcd 3.4 answers alarms without one
        return response

    @unary
    async def Defragment(
        self, request: rpc_pb2.DefragmentRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.DefragmentResponse:
        await self._require_admin()
        applier = self.server.applier
        # Rows a compaction still has to delete would otherwise survive the rebuild.
        applier.store.finish_compaction()
        applier.backend.defragment()
        return rpc_pb2.DefragmentResponse()

    @unary
    async def Hash(
        self, request: rpc_pb2.HashRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.HashResponse:
        await self._require_admin()
        response = rpc_pb2.HashResponse(hash=self.server.applier.backend.hash())
        self.server.fill_header(response.header)
        return response

    @unary
    async def HashKV(
        self, request: rpc_pb2.HashKVRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.HashKVResponse:
        await self._require_admin()
        hash_, compact, current = self.server.applier.store.hash_kv(request.revision)
        response = rpc_pb2.HashKVResponse(hash=hash_, compact_revision=compact)
        self.server.fill_header(response.header, current)
        return response

    @unary
    async def MoveLeader(
        self, request: rpc_pb2.MoveLeaderRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.MoveLeaderResponse:
        # Served by the leader only; waits until the target leads, within the client's deadline.
        remaining = context.time_remaining()
        timeout = self.server.request_timeout
        await ClusterAdmin(self.server).move_leader(
            request.targetID, timeout if remaining is None else min(remaining, timeout)
        )
        return rpc_pb2.MoveLeaderResponse()  # etcd 3.4 answers without a header

    async def Snapshot(
        self, request: rpc_pb2.SnapshotRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[rpc_pb2.SnapshotResponse]:
        path = self.server.snap_dir / f"{_SNAPSHOT_PREFIX}{uuid.uuid4().hex}.db"
        try:
            if requires_leader(context):
                self.server.node.require_leader()
            await self._require_admin(credentials(context))
            header = rpc_pb2.ResponseHeader()
            self.server.fill_header(header)
            self.server.applier.backend.snapshot_to(path)
            async for message in _stream_file(path, header):
                yield message
        except Exception as error:
            await abort_with(context, error)
        finally:
            path.unlink(missing_ok=True)

    async def _require_admin(self, caller: Credentials | None = None) -> None:
        try:
            await self.server.auth.require_admin(caller)
        except AuthError as error:
            raise UntranslatedAuthError(error) from None


async def _stream_file(
    path: Path, header: rpc_pb2.ResponseHeader
) -> AsyncIterator[rpc_pb2.SnapshotResponse]:
    """The file in chunks (the first with `header`), then its SHA-256."""
    digest = hashlib.sha256()
    first = True
    with path.open("rb") as f:
        remaining = path.stat().st_size
        while remaining > 0:
            chunk = f.read(SNAPSHOT_CHUNK_BYTES)
            if not chunk:
                raise OSError(f"{path} ended {remaining} bytes early")
            digest.update(chunk)
            remaining -= len(chunk)
            message = rpc_pb2.SnapshotResponse(remaining_bytes=remaining, blob=chunk)
            if first:
                message.header.CopyFrom(header)
                first = False
            yield message
    yield rpc_pb2.SnapshotResponse(remaining_bytes=0, blob=digest.digest())
