"""The receiving end of the peer service: admits callers, then hands their traffic to the node.

Every call is admitted the same way before anything is read from it: the metadata must name this
member as the receiver, carry this cluster's ID, and come from a member that has not been
removed. Only then does the receiver send its initial metadata, which is the sender's signal
that the call is established; a refused call ends with FAILED_PRECONDITION and a message from
`wire`. A member that has not learned its cluster ID yet (cluster ID 0) admits any cluster.
The one exception is `Members`, a read of the member list for a member that is joining and does
not know its own ID yet.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path

import grpc

from raftkv.pb.raftpb import peer_pb2_grpc
from raftkv.pb.raftpb.peer_pb2 import (
    MembersRequest,
    MembersResponse,
    MessageBatch,
    ProbeRequest,
    ProbeResponse,
    SnapshotAck,
    SnapshotChunk,
    StreamAck,
)
from raftkv.transport import wire
from raftkv.transport.protocols import IsRemoved, MemberList, OnMessages, OnSnapshot, PeerMetrics
from raftkv.transport.snapshot import SnapshotStreamError, receive_snapshot

log = logging.getLogger(__name__)


class PeerService(peer_pb2_grpc.PeerServicer):
    """Serves `raftkv.raftpb.Peer` for one member. `cluster_id` may be updated in place."""

    def __init__(
        self,
        *,
        member_id: int,
        cluster_id: int,
        on_messages: OnMessages,
        on_snapshot: OnSnapshot,
        snapshot_dir: Path,
        is_removed: IsRemoved,
        metrics: PeerMetrics,
        member_list: MemberList | None = None,
    ) -> None:
        self.member_id = member_id
        self.cluster_id = cluster_id
        self._on_messages = on_messages
        self._on_snapshot = on_snapshot
        self._snapshot_dir = snapshot_dir
        self._is_removed = is_removed
        self._metrics = metrics
        self._member_list = member_list

    async def _admit(self, context: grpc.aio.ServicerContext) -> int:
        """Check the caller's metadata; return its member ID or abort the call."""
        metadata = {key: value for key, value in context.invocation_metadata() or ()}
        try:
            sender = int(metadata[wire.SENDER_ID_KEY], 16)
            receiver = int(metadata[wire.RECEIVER_ID_KEY], 16)
            cluster = int(metadata[wire.CLUSTER_ID_KEY], 16)
        except (KeyError, ValueError, TypeError):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, wire.BAD_METADATA)
        if receiver != self.member_id:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, wire.MEMBER_ID_MISMATCH)
        if self.cluster_id and cluster != self.cluster_id:
            log.warning(
                "refusing peer %x: cluster ID %x, ours is %x", sender, cluster, self.cluster_id
            )
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, wire.CLUSTER_ID_MISMATCH)
        await self._refuse_if_removed(sender, context)
        await context.send_initial_metadata(((wire.MEMBER_ID_KEY, f"{self.member_id:x}"),))
        return sender

    async def _refuse_if_removed(self, sender: int, context: grpc.aio.ServicerContext) -> None:
        if self._is_removed(sender):
            log.warning("refusing peer %x: it has been removed from the cluster", sender)
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, wire.MEMBER_REMOVED)

    async def Stream(
        self, request_iterator: AsyncIterator[MessageBatch], context: grpc.aio.ServicerContext
    ) -> StreamAck:
        sender = await self._admit(context)
        log.debug("message stream from %x opened", sender)
        async for batch in request_iterator:
            self._metrics.bytes_received(sender, batch.ByteSize())
            # A member removed while its stream was open must stop being heard at once.
            await self._refuse_if_removed(sender, context)
            self._on_messages(list(batch.messages))
        log.debug("message stream from %x closed by the sender", sender)
        return StreamAck()

    async def SendSnapshot(
        self, request_iterator: AsyncIterator[SnapshotChunk], context: grpc.aio.ServicerContext
    ) -> SnapshotAck:
        sender = await self._admit(context)

        def count(n: int) -> None:
            self._metrics.bytes_received(sender, n)

        try:
            message, path = await receive_snapshot(
                aiter(request_iterator), self._snapshot_dir, count
            )
        except SnapshotStreamError as exc:
            log.warning("refusing snapshot from %x: %s", sender, exc)
            await context.abort(exc.code, str(exc))
        size = path.stat().st_size
        log.info(
            "received snapshot at index %d from %x (%d bytes)",
            message.snapshot.metadata.index,
            sender,
            size,
        )
        try:
            await self._on_snapshot(message, path)
        except Exception:
            log.exception("the node did not accept the snapshot from %x", sender)
            path.unlink(missing_ok=True)
            await context.abort(grpc.StatusCode.INTERNAL, "snapshot not accepted by the receiver")
        return SnapshotAck(received_bytes=size)

    async def Probe(
        self, request: ProbeRequest, context: grpc.aio.ServicerContext
    ) -> ProbeResponse:
        await self._admit(context)
        return ProbeResponse(member_id=self.member_id)

    async def Members(
        self, request: MembersRequest, context: grpc.aio.ServicerContext
    ) -> MembersResponse:
        # Not admitted like the other calls: the caller is joining and has no member ID yet.
        if self._member_list is None:
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, "member list not served here")
        return self._member_list()
