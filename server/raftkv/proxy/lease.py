"""Lease keep-alives through the proxy: one upstream stream, renewals of one lease coalesced.

Every client LeaseKeepAlive stream ends at the proxy. `KeepAliveHub` holds a single
LeaseKeepAlive stream to the cluster for the whole proxy and renews each lease at most once at
a time: a client asking while a renewal of the same lease is on its way waits for that one.
A client asking shortly after a renewal (within a tenth of the lease's TTL) is answered from it
without asking the cluster, with the TTL that is left of it — rounded down, counted from when
the renewal was *sent*, so the answer never promises more than the cluster granted. Many
processes keeping one lease alive through a proxy (a shared session) thus cost the cluster
about ten renewals per TTL instead of three per process.

Renewing is idempotent, so when the upstream stream breaks (its member died) the renewals on
it are simply sent again on a new stream to another member: the client sees latency, no error.
A lease the cluster no longer knows gets TTL 0, as from the cluster itself. LeaseKeepAlive
needs no auth in etcd 3.4, so the shared stream carries no token.

The price of answering from a recent renewal: a lease revoked *around* the proxy (directly on
the cluster, or by another proxy) can be reported alive for up to a tenth of its TTL. A
revocation through this proxy is seen at once (`forget`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import AsyncIterator

import grpc

from raftkv.client import errors
from raftkv.client.transport import Endpoint, Transport
from raftkv.pb.etcdserverpb import rpc_pb2
from raftkv.proxy.metrics import ProxyMetrics

__all__ = ["KeepAliveHub", "serve_keep_alive"]

log = logging.getLogger(__name__)

# A renewal answers later requests for this fraction of the TTL it granted.
REUSE_FRACTION = 0.1
# Past this many remembered renewals, the ones too old to answer from are dropped.
MAX_RECENT = 1024


class KeepAliveHub:
    def __init__(self, transport: Transport, metrics: ProxyMetrics) -> None:
        self._transport = transport
        self._metrics = metrics
        self._pending: dict[int, asyncio.Future[rpc_pb2.LeaseKeepAliveResponse]] = {}
        self._sent_at: dict[int, float] = {}
        # lease ID -> (when its last renewal was sent, the answer)
        self._recent: dict[int, tuple[float, rpc_pb2.LeaseKeepAliveResponse]] = {}
        self._outbox: asyncio.Queue[int] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None

    async def renew(self, lease_id: int) -> rpc_pb2.LeaseKeepAliveResponse:
        self._metrics.keepalive_requests.inc()
        loop = asyncio.get_running_loop()
        recent = self._recent.get(lease_id)
        if recent is not None:
            sent, answer = recent
            age = loop.time() - sent
            if age < answer.TTL * REUSE_FRACTION:
                reply = rpc_pb2.LeaseKeepAliveResponse()
                reply.CopyFrom(answer)
                reply.TTL = max(math.floor(answer.TTL - age), 1)
                return reply
            del self._recent[lease_id]
        future = self._pending.get(lease_id)
        if future is None:
            future = self._pending[lease_id] = loop.create_future()
            self._outbox.put_nowait(lease_id)
            if self._task is None or self._task.done():
                self._task = loop.create_task(self._run(), name="raftkv-proxy-keepalive")
        return await asyncio.shield(future)

    def forget(self, lease_id: int) -> None:
        """The lease was revoked through the proxy: no answer may come from its last renewal."""
        self._recent.pop(lease_id, None)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for future in self._pending.values():
            future.cancel()

    # -- the upstream stream ----------------------------------------------------------------------

    async def _run(self) -> None:
        attempt = 0
        while self._pending:
            loop = asyncio.get_running_loop()
            try:
                endpoint = await self._transport.stream_endpoint(loop.time() + 30.0)
            except errors.UnavailableError:
                continue
            if await self._serve(endpoint):
                attempt = 0
            else:
                attempt += 1
                await asyncio.sleep(min(0.05 * 2**attempt, 1.0))

    async def _serve(self, endpoint: Endpoint) -> bool:
        """Renew on one stream until it breaks; True if it answered at least once."""
        transport = self._transport
        call = transport.stubs(endpoint).lease.LeaseKeepAlive(
            metadata=transport.metadata(require_leader=True)
        )
        # Whatever was waiting when the previous stream broke is sent again (idempotent).
        while not self._outbox.empty():
            self._outbox.get_nowait()
        for lease_id in self._pending:
            self._outbox.put_nowait(lease_id)
        reader = asyncio.get_running_loop().create_task(self._read(call))
        answered = False
        try:
            while True:
                get = asyncio.ensure_future(self._outbox.get())
                done, _ = await asyncio.wait({get, reader}, return_when=asyncio.FIRST_COMPLETED)
                if reader in done:
                    get.cancel()
                    answered = reader.result()
                    break
                lease_id = get.result()
                if lease_id not in self._pending:
                    continue  # answered meanwhile (a resend after failover)
                self._sent_at[lease_id] = asyncio.get_running_loop().time()
                self._metrics.keepalive_upstream.inc()
                await call.write(rpc_pb2.LeaseKeepAliveRequest(ID=lease_id))
        except (grpc.aio.AioRpcError, asyncio.InvalidStateError):
            pass  # the stream broke while writing; the reader says why
        finally:
            reader.cancel()
            call.cancel()
        transport.mark_failed(endpoint)
        return answered

    async def _read(self, call: grpc.aio.StreamStreamCall) -> bool:
        answered = False
        try:
            while True:
                response = await call.read()
                if response is grpc.aio.EOF:
                    return answered
                answered = True
                self._answer(response)
        except grpc.aio.AioRpcError as rpc_error:
            error = errors.from_rpc_error(rpc_error)
            log.info("lease keep-alive stream ended: %s", error.message)
            return answered

    def _prune(self) -> None:
        now = asyncio.get_running_loop().time()
        stale = [
            lease_id
            for lease_id, (sent, answer) in self._recent.items()
            if now - sent >= answer.TTL * REUSE_FRACTION
        ]
        for lease_id in stale:
            del self._recent[lease_id]

    def _answer(self, response: rpc_pb2.LeaseKeepAliveResponse) -> None:
        lease_id = response.ID
        sent = self._sent_at.pop(lease_id, None)
        if sent is not None and response.TTL > 0:
            self._recent[lease_id] = (sent, response)
            if len(self._recent) > MAX_RECENT:
                self._prune()
        future = self._pending.pop(lease_id, None)
        if future is not None and not future.done():
            future.set_result(response)


async def serve_keep_alive(
    hub: KeepAliveHub,
    requests: AsyncIterator[rpc_pb2.LeaseKeepAliveRequest],
    context: grpc.aio.ServicerContext,
) -> AsyncIterator[rpc_pb2.LeaseKeepAliveResponse]:
    """The LeaseKeepAlive RPC of the proxy: each request answered as its renewal completes."""
    answers: asyncio.Queue[rpc_pb2.LeaseKeepAliveResponse | None] = asyncio.Queue()
    renewals: set[asyncio.Task[None]] = set()

    async def renew(lease_id: int) -> None:
        answers.put_nowait(await hub.renew(lease_id))

    async def read() -> None:
        async for request in requests:
            task = asyncio.get_running_loop().create_task(renew(request.ID))
            renewals.add(task)
            task.add_done_callback(renewals.discard)
        # The client closed its side: answer what is on its way, then end the call.
        if renewals:
            await asyncio.wait(set(renewals))
        answers.put_nowait(None)

    reader = asyncio.get_running_loop().create_task(read())
    try:
        while True:
            answer = await answers.get()
            if answer is None:
                return
            yield answer
    finally:
        reader.cancel()
        for task in list(renewals):
            task.cancel()
