"""Raft peer transport over gRPC: one long-lived, batched message stream per peer.

Shaped after etcd's rafthttp (read for behaviour, nothing copied). Raft wants three things from a
transport, and each explains a part of this module:

* `send` must never block the Ready loop. It only sorts messages into a bounded queue per peer;
  a writer task per peer drains its queue into the peer's `Stream` call, taking everything that
  accumulated during the previous write as one `MessageBatch`. Under load that is many messages
  per write, when idle it is one.
* Messages to a peer must arrive in order or not at all. A single writer and a single call per
  peer give the order; when the call breaks, what was queued is dropped (Raft retransmits) and
  `on_unreachable` tells the node, which reports it to Raft so the leader probes instead of
  pipelining. While a peer is down, `send` drops its messages at once; the writer keeps
  redialing, trying the peer's URLs in order, with capped exponential backoff.
* Snapshots are too large for the stream. A MsgSnap goes to its own task, which streams the
  payload file from `snapshot_provider` over a dedicated connection and reports the outcome with
  `on_snapshot_status`.

A peer that refuses us because we were removed from the cluster is reported through
`on_removed`: the member must stop, and it may never have applied its own removal.

The receiving side is `receiver.PeerService`, served by a grpc.aio server of its own on the
member's peer URLs. Everything here runs on one event loop and is not thread-safe.

TLS (https:// peer URLs): the server side takes gRPC server credentials (dynamic ones reload
the certificate per handshake, see `transport.tls`); the sending side asks its `ChannelTLS` for
credentials at every dial and replaces a channel whose credentials changed (a rotated
certificate, or the certificate an auto-TLS peer now presents).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import enum
import logging
import time
from collections import deque
from collections.abc import Hashable, Sequence
from pathlib import Path

import grpc

from raftkv.pb.raftpb import peer_pb2_grpc
from raftkv.pb.raftpb.peer_pb2 import MessageBatch, ProbeRequest
from raftkv.pb.raftpb.raft_pb2 import MSG_SNAP, Message
from raftkv.transport import wire
from raftkv.transport.protocols import (
    IsRemoved,
    MemberList,
    NoopPeerMetrics,
    OnMessages,
    OnRemoved,
    OnSnapshot,
    OnSnapshotStatus,
    OnUnreachable,
    PeerMetrics,
    PeerStats,
    SnapshotProvider,
)
from raftkv.transport.receiver import PeerService
from raftkv.transport.snapshot import remove_partial_snapshots, send_snapshot
from raftkv.transport.tls import ChannelTLS

log = logging.getLogger(__name__)

DEFAULT_QUEUE_LIMIT = 4096
# A write takes whatever is queued up to this size; far below the 64 MiB message limit.
MAX_BATCH_BYTES = 8 * 1024 * 1024
# A single message this large could never be written; it is dropped rather than breaking the call.
_MAX_SINGLE_MESSAGE = wire.MAX_MESSAGE_BYTES - 1024
DIAL_TIMEOUT = 3.0
BACKOFF_MIN = 0.05
BACKOFF_MAX = 1.0


def _ignore_unreachable(member_id: int) -> None:
    pass


def _ignore_snapshot_status(member_id: int, failed: bool) -> None:
    pass


def _never_removed(member_id: int) -> bool:
    return False


def _ignore_removed() -> None:
    pass


class _State(enum.Enum):
    CONNECTING = "connecting"  # not yet known; messages are queued
    UP = "up"  # a call is established; messages are queued and written
    DOWN = "down"  # the last dial or call failed; messages are dropped


class _Peer:
    """Everything the transport keeps for one remote member."""

    def __init__(self, member_id: int, urls: list[str]) -> None:
        self.member_id = member_id
        self.urls = urls
        self.active_url: str | None = None
        # URL -> (channel, stub, the key of the TLS credentials it was opened with).
        self.channels: dict[str, tuple[grpc.aio.Channel, peer_pb2_grpc.PeerStub, Hashable]] = {}
        self.queue: deque[Message] = deque()
        self.wakeup = asyncio.Event()
        self.state = _State.CONNECTING
        self.restart = False  # set when the call must be redialed with new URLs or metadata
        self.last_error = ""
        self.writer: asyncio.Task[None] | None = None
        self.snapshot_tasks: set[asyncio.Task[None]] = set()
        self.stats = PeerStats()


class PeerTransport:
    """The gRPC `Transport`: serves the peer service and keeps a message stream to every peer."""

    def __init__(
        self,
        *,
        member_id: int,
        cluster_id: int,
        on_messages: OnMessages,
        on_snapshot: OnSnapshot,
        snapshot_dir: Path,
        snapshot_provider: SnapshotProvider | None = None,
        on_unreachable: OnUnreachable = _ignore_unreachable,
        on_snapshot_status: OnSnapshotStatus = _ignore_snapshot_status,
        is_removed: IsRemoved = _never_removed,
        member_list: MemberList | None = None,
        on_removed: OnRemoved = _ignore_removed,
        channel_tls: ChannelTLS | None = None,
        server_credentials: grpc.ServerCredentials | None = None,
        metrics: PeerMetrics | None = None,
        queue_limit: int = DEFAULT_QUEUE_LIMIT,
    ) -> None:
        self.member_id = member_id
        self._cluster_id = cluster_id
        self._snapshot_dir = snapshot_dir
        self._snapshot_provider = snapshot_provider
        self._on_unreachable = on_unreachable
        self._on_snapshot_status = on_snapshot_status
        self._on_removed = on_removed
        self._channel_tls = channel_tls
        self._server_credentials = server_credentials
        self._metrics: PeerMetrics = metrics if metrics is not None else NoopPeerMetrics()
        self._queue_limit = queue_limit
        self._service = PeerService(
            member_id=member_id,
            cluster_id=cluster_id,
            on_messages=on_messages,
            on_snapshot=on_snapshot,
            snapshot_dir=snapshot_dir,
            is_removed=is_removed,
            metrics=self._metrics,
            member_list=member_list,
        )
        self._peers: dict[int, _Peer] = {}
        self._server: grpc.aio.Server | None = None
        self._listen_urls: list[str] = []
        self._closing: set[asyncio.Task[None]] = set()
        self._started = False

    @property
    def cluster_id(self) -> int:
        return self._cluster_id

    @property
    def listen_urls(self) -> list[str]:
        """The URLs the peer service is bound to, with the actual ports when 0 was asked for."""
        return list(self._listen_urls)

    async def start(self, listen_urls: Sequence[str]) -> None:
        """Serve the peer service on `listen_urls` and start streaming to the known peers."""
        await asyncio.to_thread(self._snapshot_dir.mkdir, parents=True, exist_ok=True)
        await asyncio.to_thread(remove_partial_snapshots, self._snapshot_dir)
        server = grpc.aio.server(options=wire.SERVER_OPTIONS)
        peer_pb2_grpc.add_PeerServicer_to_server(self._service, server)
        for url in listen_urls:
            self._listen_urls.append(self._bind(server, url))
        await server.start()
        self._server = server
        self._started = True
        for peer in self._peers.values():
            self._start_writer(peer)
        log.info("member %x serving peers on %s", self.member_id, ", ".join(self._listen_urls))

    def _bind(self, server: grpc.aio.Server, url: str) -> str:
        scheme, target = wire.parse_url(url)
        if scheme == "https":
            if self._server_credentials is None:
                raise ValueError(f"listen URL {url!r} needs server TLS credentials")
            port = server.add_secure_port(target, self._server_credentials)
        else:
            port = server.add_insecure_port(target)
        if port == 0:
            raise OSError(f"cannot listen on {url}")
        host = target.rsplit(":", 1)[0]
        return f"{scheme}://{host}:{port}"

    async def stop(self) -> None:
        """Stop serving, end every stream and upload, and close the connections to peers."""
        self._started = False
        for member_id in list(self._peers):
            self.remove_peer(member_id)
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)
        if self._server is not None:
            await self._server.stop(grace=None)
            self._server = None

    def add_peer(self, member_id: int, urls: Sequence[str]) -> None:
        """Start streaming to a member, reachable by any of `urls` (tried in order)."""
        if member_id == self.member_id or member_id in self._peers:
            return
        peer = _Peer(member_id, self._checked_urls(urls))
        self._peers[member_id] = peer
        if self._started:
            self._start_writer(peer)

    def update_peer(self, member_id: int, urls: Sequence[str]) -> None:
        """Replace a peer's URLs; its stream is redialed, keeping queued messages."""
        peer = self._peers.get(member_id)
        new_urls = self._checked_urls(urls)
        if peer is None or new_urls == peer.urls:
            return
        peer.urls = new_urls
        for url in [url for url in peer.channels if url not in new_urls]:
            self._close_channel(peer.channels.pop(url)[0])
        self._redial(peer)

    def remove_peer(self, member_id: int) -> None:
        """Stop talking to a member; its queued messages and any upload to it are abandoned."""
        peer = self._peers.pop(member_id, None)
        if peer is None:
            return
        for task in [peer.writer, *peer.snapshot_tasks]:
            if task is not None:
                task.cancel()
                self._closing.add(task)
                task.add_done_callback(self._closing.discard)
        for channel, _, _ in peer.channels.values():
            self._close_channel(channel)
        peer.channels.clear()
        peer.queue.clear()

    def set_cluster_id(self, cluster_id: int) -> None:
        """Adopt the cluster ID (a joining member learns it late); streams are redialed."""
        if cluster_id == self._cluster_id:
            return
        self._cluster_id = cluster_id
        self._service.cluster_id = cluster_id
        for peer in self._peers.values():
            self._redial(peer)

    def peer_stats(self, member_id: int) -> PeerStats:
        """A copy of the stream counters for one peer (KeyError if unknown)."""
        return dataclasses.replace(self._peers[member_id].stats)

    def send(self, messages: Sequence[Message]) -> None:
        """Queue messages for their destinations; never blocks. Do not mutate them afterwards."""
        dropped: dict[int, int] = {}
        woken: set[int] = set()
        for message in messages:
            peer = self._peers.get(message.to)
            if peer is None:
                dropped[message.to] = dropped.get(message.to, 0) + 1
            elif message.type == MSG_SNAP:
                self._start_snapshot(peer, message)
            elif peer.state is _State.DOWN or len(peer.queue) >= self._queue_limit:
                dropped[message.to] = dropped.get(message.to, 0) + 1
            else:
                peer.queue.append(message)
                woken.add(message.to)
        for member_id in woken:
            self._peers[member_id].wakeup.set()
        for member_id, count in dropped.items():
            self._report_dropped(member_id, count)

    async def probe(self, member_id: int, timeout: float = 2.0) -> float:
        """Measure one round trip to a peer in seconds; raises grpc.aio.AioRpcError on failure."""
        peer = self._peers[member_id]
        stub = await self._stub(peer, peer.active_url or peer.urls[0])
        started = time.monotonic()
        await stub.Probe(ProbeRequest(), metadata=self._metadata(peer), timeout=timeout)
        rtt = time.monotonic() - started
        self._metrics.observe_rtt(member_id, rtt)
        return rtt

    # --- the message stream -----------------------------------------------------------------

    def _start_writer(self, peer: _Peer) -> None:
        peer.writer = asyncio.get_running_loop().create_task(
            self._run_writer(peer), name=f"raftkv-peer-writer-{peer.member_id:x}"
        )
        peer.writer.add_done_callback(self._writer_done)

    @staticmethod
    def _writer_done(task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error("peer writer crashed", exc_info=task.exception())

    async def _run_writer(self, peer: _Peer) -> None:
        backoff = BACKOFF_MIN
        while True:
            call = await self._dial(peer)
            if call is None:
                self._mark_down(peer, lost=0)
                peer.wakeup.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(peer.wakeup.wait(), backoff)
                backoff = min(backoff * 2, BACKOFF_MAX)
                continue
            backoff = BACKOFF_MIN
            if peer.state is not _State.UP:
                log.info("stream to peer %x established via %s", peer.member_id, peer.active_url)
            peer.state = _State.UP
            peer.stats.connected = True
            peer.last_error = ""
            lost = await self._pump(peer, call)
            peer.stats.connected = False
            if peer.restart and not lost:
                call.cancel()
                peer.state = _State.CONNECTING
                continue
            code, details = await call.code(), await call.details()
            log.warning("stream to peer %x broke: %s %s", peer.member_id, code.name, details)
            if details == wire.MEMBER_REMOVED:
                self._on_removed()
            self._mark_down(peer, lost)

    async def _dial(self, peer: _Peer) -> grpc.aio.StreamUnaryCall | None:
        """Open a `Stream` call on the first URL whose receiver admits us."""
        peer.restart = False
        metadata = self._metadata(peer)
        for url in list(peer.urls):
            try:
                call = (await self._stub(peer, url)).Stream(metadata=metadata)
            except OSError as exc:  # an auto-TLS peer's certificate could not be fetched
                error: str | None = f"TLS: {exc}"
            else:
                error = await self._admitted(call)
            if error is None:
                peer.active_url = url
                return call
            if error != peer.last_error:
                log.warning("cannot stream to peer %x via %s: %s", peer.member_id, url, error)
                peer.last_error = error
            if error.endswith(wire.MEMBER_REMOVED):
                self._on_removed()
        peer.active_url = None
        return None

    @staticmethod
    async def _admitted(call: grpc.aio.StreamUnaryCall) -> str | None:
        """Wait for the receiver's answer to a new call; None if admitted, else why not."""
        try:
            answer = await asyncio.wait_for(call.initial_metadata(), DIAL_TIMEOUT)
        except TimeoutError:
            call.cancel()
            return "no answer"
        except grpc.aio.AioRpcError as exc:
            return f"{exc.code().name} {exc.details()}"
        if wire.MEMBER_ID_KEY in answer:
            return None
        return f"{(await call.code()).name} {await call.details()}"

    async def _pump(self, peer: _Peer, call: grpc.aio.StreamUnaryCall) -> int:
        """Write queued messages until the call ends; return how many a failed write lost."""
        call.add_done_callback(lambda _: peer.wakeup.set())
        while not call.done() and not peer.restart:
            if not peer.queue:
                peer.wakeup.clear()
                await peer.wakeup.wait()
                continue
            batch, size = self._take_batch(peer)
            if not batch.messages:
                continue
            try:
                await call.write(batch)
            except (grpc.aio.AioRpcError, asyncio.InvalidStateError):
                return len(batch.messages)
            stats = peer.stats
            stats.messages_sent += len(batch.messages)
            stats.batches_sent += 1
            stats.bytes_sent += size
            self._metrics.bytes_sent(peer.member_id, size)
        return 0

    def _take_batch(self, peer: _Peer) -> tuple[MessageBatch, int]:
        batch = MessageBatch()
        size = 0
        queue = peer.queue
        while queue:
            message_size = queue[0].ByteSize()
            if message_size > _MAX_SINGLE_MESSAGE:
                queue.popleft()
                log.error("dropping a %d-byte message to %x", message_size, peer.member_id)
                self._report_dropped(peer.member_id, 1)
                continue
            if batch.messages and size + message_size > MAX_BATCH_BYTES:
                break
            batch.messages.append(queue.popleft())
            size += message_size
        return batch, size

    def _mark_down(self, peer: _Peer, lost: int) -> None:
        """Drop what was in flight or queued; tell the node unless it already knows."""
        lost += len(peer.queue)
        peer.queue.clear()
        was_down = peer.state is _State.DOWN
        peer.state = _State.DOWN
        if lost:
            peer.stats.messages_dropped += lost
            self._metrics.send_failed(peer.member_id, lost)
        if lost or not was_down:
            self._on_unreachable(peer.member_id)

    def _report_dropped(self, member_id: int, count: int) -> None:
        peer = self._peers.get(member_id)
        if peer is not None:
            peer.stats.messages_dropped += count
        self._metrics.send_failed(member_id, count)
        self._on_unreachable(member_id)

    def _redial(self, peer: _Peer) -> None:
        peer.restart = True
        peer.wakeup.set()

    def _metadata(self, peer: _Peer) -> tuple[tuple[str, str], ...]:
        return wire.peer_metadata(self.member_id, peer.member_id, self._cluster_id)

    def _checked_urls(self, urls: Sequence[str]) -> list[str]:
        if not urls:
            raise ValueError("a peer needs at least one URL")
        for url in urls:
            wire.parse_url(url)
        return list(urls)

    async def _channel_credentials(
        self, url: str
    ) -> tuple[Hashable, grpc.ChannelCredentials | None]:
        if self._channel_tls is None or wire.parse_url(url)[0] != "https":
            return None, None
        return await self._channel_tls.credentials(url)

    async def _stub(self, peer: _Peer, url: str) -> peer_pb2_grpc.PeerStub:
        """The stub of the channel to `url`, reopened when its TLS credentials changed."""
        key, credentials = await self._channel_credentials(url)
        cached = peer.channels.get(url)
        if cached is not None and cached[2] == key:
            return cached[1]
        if cached is not None:
            self._close_channel(cached[0])
        channel = wire.open_channel(url, credentials)
        stub = peer_pb2_grpc.PeerStub(channel)
        peer.channels[url] = (channel, stub, key)
        return stub

    def _close_channel(self, channel: grpc.aio.Channel) -> None:
        task = asyncio.get_running_loop().create_task(channel.close())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    # --- snapshots --------------------------------------------------------------------------

    def _start_snapshot(self, peer: _Peer, message: Message) -> None:
        task = asyncio.get_running_loop().create_task(
            self._send_snapshot(peer, message), name=f"raftkv-snapshot-to-{peer.member_id:x}"
        )
        peer.snapshot_tasks.add(task)
        task.add_done_callback(peer.snapshot_tasks.discard)

    async def _send_snapshot(self, peer: _Peer, message: Message) -> None:
        failed = True
        index = message.snapshot.metadata.index
        try:
            if self._snapshot_provider is None:
                raise RuntimeError("no snapshot provider was configured")
            payload = self._snapshot_provider(message)
            started = time.monotonic()
            await self._upload(peer, message, payload)
            failed = False
            log.info(
                "sent snapshot at index %d to %x in %.2f s",
                index,
                peer.member_id,
                time.monotonic() - started,
            )
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("sending snapshot at index %d to %x failed: %s", index, peer.member_id, exc)
        self._on_snapshot_status(peer.member_id, failed)

    async def _upload(self, peer: _Peer, message: Message, payload: Path) -> None:
        """Stream the snapshot over a fresh connection, via the first URL that admits us."""

        def count(n: int) -> None:
            self._metrics.bytes_sent(peer.member_id, n)

        refusals = []
        for url in list(peer.urls):
            _, credentials = await self._channel_credentials(url)
            channel = wire.open_channel(url, credentials, wire.SNAPSHOT_CHANNEL_OPTIONS)
            try:
                call = peer_pb2_grpc.PeerStub(channel).SendSnapshot(metadata=self._metadata(peer))
                error = await self._admitted(call)
                if error is None:
                    await send_snapshot(call, message, payload, count)
                    return
                refusals.append(f"{url}: {error}")
            finally:
                await channel.close()
        raise ConnectionError("; ".join(refusals))
