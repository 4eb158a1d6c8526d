"""Leases kept alive in the background, with honest loss detection.

Sessions, locks and elections all hang off a lease, and they are only safe if the holder knows
when the lease may be gone. So a `Lease` tracks the latest moment it is *sure* the lease still
exists: each renewal moves that moment to `send time + granted TTL`, measured from when the
request left the client (the server's countdown started later, so this errs on the early side).
`lost` is set when that moment passes without a renewal, when the server answers a renewal with
TTL 0 (revoked or expired), or when the client closes while the lease is still being renewed.

Renewals run every TTL/3 like etcd's client, over a keep-alive stream that moves to another
endpoint when its member fails; the whole loop runs under an `asyncio.timeout_at` that each
renewal pushes forward, so no code path can outlive the lease without noticing.

Closing a lease normally (leaving `async with`) revokes it, which deletes its keys at once.
"""

from __future__ import annotations

import asyncio
import contextlib
from types import TracebackType

import grpc

from raftkv.client import errors
from raftkv.client.transport import Retry, Transport
from raftkv.client.types import LeaseKeepAliveResult, LeaseTimeToLiveResult
from raftkv.pb.etcdserverpb import rpc_pb2

__all__ = ["Lease", "keep_alive_once"]


class _Gone(Exception):
    """The server says the lease no longer exists."""


async def keep_alive_once(
    transport: Transport, lease_id: int, timeout: float | None = None
) -> LeaseKeepAliveResult:
    """Renew `lease_id` once; raises `LeaseNotFoundError` if it has expired or was revoked."""
    loop = asyncio.get_running_loop()
    deadline = transport.deadline(timeout)
    while True:
        endpoint = await transport.stream_endpoint(deadline)
        call = transport.stubs(endpoint).lease.LeaseKeepAlive(
            metadata=transport.metadata(require_leader=True),
            timeout=max(deadline - loop.time(), 0.0),
        )
        token = transport.token
        try:
            await call.write(rpc_pb2.LeaseKeepAliveRequest(ID=lease_id))
            resp = await call.read()
        except asyncio.InvalidStateError:
            # The stream ended before the request could be written: nothing was sent.
            transport.mark_failed(endpoint)
            continue
        except grpc.aio.AioRpcError as e:
            err = errors.from_rpc_error(e)
            if transport.wants_new_token(err):
                await transport.refresh_token(token)
                continue
            if err.code is grpc.StatusCode.UNAVAILABLE:
                # Renewing is idempotent, so any endpoint may try again.
                transport.mark_failed(endpoint)
                continue
            raise err from None
        finally:
            call.cancel()
        if resp is grpc.aio.EOF:
            transport.mark_failed(endpoint)
            continue
        if resp.TTL <= 0:
            raise errors.LeaseNotFoundError()
        return LeaseKeepAliveResult.from_pb(resp)


class Lease:
    """A lease kept alive until closed: `async with client.lease(ttl=10) as lease: ...`.

    `id` is the lease id to attach keys to, `ttl` the TTL the server granted, and `lost` an
    `asyncio.Event` set once the lease may have expired (see the module docstring). After `lost`
    the lease is not renewed any more.
    """

    def __init__(
        self,
        transport: Transport,
        ttl: int,
        *,
        lease_id: int = 0,
        grant: bool = True,
        revoke_on_close: bool = True,
    ) -> None:
        self._transport = transport
        self._grant = grant
        self._revoke_on_close = revoke_on_close
        self.id = lease_id
        self.ttl = ttl
        self.lost = asyncio.Event()
        self._expires_at = 0.0
        self._task: asyncio.Task[None] | None = None

    @property
    def is_lost(self) -> bool:
        return self.lost.is_set()

    def remaining(self) -> float:
        """Seconds the lease is known to last without another renewal."""
        return max(self._expires_at - asyncio.get_running_loop().time(), 0.0)

    async def start(self) -> Lease:
        """Grant the lease (or, for an existing one, renew it once), then keep it alive."""
        if self._task is not None:
            return self
        loop = asyncio.get_running_loop()
        sent = loop.time()
        if self._grant:
            resp = await self._transport.unary(
                lambda s: s.lease.LeaseGrant,
                rpc_pb2.LeaseGrantRequest(TTL=self.ttl, ID=self.id),
                retry=Retry.MUTABLE,
            )
            self.id, self.ttl = resp.ID, resp.TTL
        else:
            renewed = await keep_alive_once(self._transport, self.id)
            self.ttl = renewed.ttl
        self._expires_at = sent + self.ttl
        self._task = loop.create_task(self._keep_alive(), name=f"raftkv-lease-{self.id:x}")
        self._transport.track(self)
        return self

    async def close(self) -> None:
        """Stop renewing and, unless the lease is already lost, revoke it (when configured to)."""
        await self._stop()
        if self._revoke_on_close and not self.lost.is_set():
            await self.revoke()

    async def shutdown(self) -> None:
        """The client is closing: stop renewing without revoking. Nobody keeps the lease alive
        any more, so it counts as lost; the server expires it after its TTL."""
        running = self._task is not None and not self._task.done()
        await self._stop()
        if running:
            self.lost.set()

    async def revoke(self) -> None:
        """Stop renewing and revoke the lease now (its keys are deleted); idempotent."""
        await self._stop()
        with contextlib.suppress(errors.LeaseNotFoundError):
            await self._transport.unary(
                lambda s: s.lease.LeaseRevoke,
                rpc_pb2.LeaseRevokeRequest(ID=self.id),
                retry=Retry.MUTABLE,
            )

    async def time_to_live(self, *, keys: bool = False) -> LeaseTimeToLiveResult:
        resp = await self._transport.unary(
            lambda s: s.lease.LeaseTimeToLive,
            rpc_pb2.LeaseTimeToLiveRequest(ID=self.id, keys=keys),
            retry=Retry.IMMUTABLE,
        )
        return LeaseTimeToLiveResult.from_pb(resp)

    async def __aenter__(self) -> Lease:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def _stop(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    # -- the keep-alive task ---------------------------------------------------------------------

    async def _keep_alive(self) -> None:
        try:
            async with asyncio.timeout_at(self._expires_at) as scope:
                attempt = 0
                while True:
                    renewed = await self._renew_on_one_stream(scope)
                    attempt = 0 if renewed else attempt + 1
                    await asyncio.sleep(min(0.05 * 2**attempt, 1.0))
        except (TimeoutError, _Gone):
            self.lost.set()
        except Exception:
            self.lost.set()  # a bug, not a verdict on the lease; but nobody renews it any more
            raise

    async def _renew_on_one_stream(self, scope: asyncio.Timeout) -> bool:
        """Renew every TTL/3 on one stream until it fails; True if it renewed at least once."""
        transport = self._transport
        loop = asyncio.get_running_loop()
        try:
            endpoint = await transport.stream_endpoint(self._expires_at)
        except errors.UnavailableError:
            return False
        call = transport.stubs(endpoint).lease.LeaseKeepAlive(
            metadata=transport.metadata(require_leader=True)
        )
        token = transport.token
        renewed = False
        try:
            while True:
                sent = loop.time()
                await call.write(rpc_pb2.LeaseKeepAliveRequest(ID=self.id))
                resp = await call.read()
                if resp is grpc.aio.EOF:
                    return renewed
                if resp.TTL <= 0:
                    raise _Gone
                renewed = True
                self.ttl = resp.TTL
                self._expires_at = sent + resp.TTL
                scope.reschedule(self._expires_at)
                await asyncio.sleep(resp.TTL / 3)
        except grpc.aio.AioRpcError as e:
            err = errors.from_rpc_error(e)
            if isinstance(err, errors.LeaseNotFoundError):
                raise _Gone from None
            if transport.wants_new_token(err):
                await transport.refresh_token(token)
            else:
                transport.mark_failed(endpoint)
            return renewed
        except asyncio.InvalidStateError:
            # Writing to a stream that has already ended (its member went away).
            transport.mark_failed(endpoint)
            return renewed
        finally:
            call.cancel()
