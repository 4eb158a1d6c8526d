"""The retry rules, proven deterministically against in-process fake members.

Real clusters cannot make a member fail on cue, so these tests run small gRPC servers in the
test's own event loop whose KV and Auth services fail exactly as scripted, and count what reached
them. They pin down the promises of `raftkv.client.transport`: reads move to the next endpoint on
UNAVAILABLE, writes are never re-sent after they may have reached a member, writes do move on when
nothing was sent, calls are spread round-robin, and a rejected token is renewed once.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import grpc
import pytest
from raftkv.client import AsyncClient, Compare, errors, ops
from raftkv.pb.etcdserverpb import rpc_pb2, rpc_pb2_grpc

from tests.support.etcd import free_port

Failure = tuple[grpc.StatusCode, str] | None


@dataclass
class FakeMember(rpc_pb2_grpc.KVServicer, rpc_pb2_grpc.AuthServicer):
    """A member whose every KV call fails with `failure` (or succeeds when it is None)."""

    member_id: int
    failure: Failure = None
    delay: float = 0.0
    require_token: bool = False
    calls: list[str] = field(default_factory=list)
    tokens_issued: int = 0
    valid_token: str = ""
    accept_tokens: bool = True

    async def _serve(self, method: str, context: grpc.aio.ServicerContext) -> None:
        self.calls.append(method)
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.require_token:
            sent = dict(context.invocation_metadata() or ()).get("token")
            if sent != self.valid_token or not self.accept_tokens:
                await context.abort(
                    grpc.StatusCode.UNAUTHENTICATED, "etcdserver: invalid auth token"
                )
        if self.failure is not None:
            await context.abort(*self.failure)

    def _header(self) -> rpc_pb2.ResponseHeader:
        return rpc_pb2.ResponseHeader(cluster_id=1, member_id=self.member_id, revision=5)

    async def Range(self, request, context):  # type: ignore[no-untyped-def]
        await self._serve("Range", context)
        return rpc_pb2.RangeResponse(header=self._header())

    async def Put(self, request, context):  # type: ignore[no-untyped-def]
        await self._serve("Put", context)
        return rpc_pb2.PutResponse(header=self._header())

    async def Txn(self, request, context):  # type: ignore[no-untyped-def]
        await self._serve("Txn", context)
        return rpc_pb2.TxnResponse(header=self._header(), succeeded=True)

    async def Authenticate(self, request, context):  # type: ignore[no-untyped-def]
        self.calls.append("Authenticate")
        if (request.name, request.password) != ("alice", "secret"):
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                "etcdserver: authentication failed, invalid user ID or password",
            )
        self.tokens_issued += 1
        self.valid_token = f"token-{self.tokens_issued}"
        return rpc_pb2.AuthenticateResponse(header=self._header(), token=self.valid_token)


@asynccontextmanager
async def serving(*members: FakeMember) -> AsyncIterator[list[str]]:
    """Serve each fake member on its own loopback port; yields their "host:port" targets."""
    servers, targets = [], []
    for member in members:
        server = grpc.aio.server()
        rpc_pb2_grpc.add_KVServicer_to_server(member, server)
        rpc_pb2_grpc.add_AuthServicer_to_server(member, server)
        target = f"127.0.0.1:{free_port()}"
        server.add_insecure_port(target)
        await server.start()
        servers.append(server)
        targets.append(target)
    try:
        yield targets
    finally:
        for server in servers:
            await server.stop(None)


UNAVAILABLE: Failure = (grpc.StatusCode.UNAVAILABLE, "etcdserver: request timed out")
Call = Callable[[AsyncClient], object]


async def test_reads_move_to_the_next_endpoint_on_unavailable() -> None:
    failing, healthy = FakeMember(1, UNAVAILABLE), FakeMember(2)
    async with serving(failing, healthy) as targets, AsyncClient(targets) as client:
        got = await client.get("k")
        ro = await client.txn().if_(Compare.version("k") == 0).then(ops.get("k")).commit()
    assert got.header.member_id == 2 and ro.header.member_id == 2
    assert failing.calls == ["Range"]  # the first pick; then it sat out its cooldown
    assert healthy.calls == ["Range", "Txn"]


@pytest.mark.parametrize(
    "write",
    [
        lambda c: c.put("k", "v"),
        lambda c: c.txn().if_(Compare.version("k") == 0).then(ops.put("k", "v")).commit(),
        lambda c: c.commit(ops.txn(then=[ops.get("k"), ops.delete("k")])),
    ],
    ids=["put", "txn", "txn-with-a-delete"],
)
async def test_writes_that_reached_a_member_are_not_retried(write: Call) -> None:
    failing, healthy = FakeMember(1, UNAVAILABLE), FakeMember(2)
    async with serving(failing, healthy) as targets, AsyncClient(targets) as client:
        with pytest.raises(errors.UnavailableError) as info:
            await write(client)  # type: ignore[misc]
    assert isinstance(info.value, errors.TimeoutError)  # etcd's "request timed out"
    assert info.value.message == "etcdserver: request timed out"
    assert len(failing.calls) == 1
    assert healthy.calls == []


async def test_writes_move_on_when_nothing_was_sent() -> None:
    healthy = FakeMember(2)
    async with serving(healthy) as targets:
        dead = f"127.0.0.1:{free_port()}"  # nothing listens: the connection fails before sending
        async with AsyncClient([dead, *targets], dial_timeout=0.5) as client:
            put = await client.put("k", "v")
    assert put.header.member_id == 2
    assert healthy.calls == ["Put"]


async def test_calls_are_spread_round_robin() -> None:
    a, b, c = FakeMember(1), FakeMember(2), FakeMember(3)
    async with serving(a, b, c) as targets, AsyncClient(",".join(targets)) as client:
        answered = [(await client.get("k")).header.member_id for _ in range(6)]
    assert sorted(answered) == [1, 1, 2, 2, 3, 3]
    assert len(a.calls) == len(b.calls) == len(c.calls) == 2


async def test_a_rejected_token_is_renewed_once_and_the_call_retried() -> None:
    member = FakeMember(1, require_token=True)
    async with (
        serving(member) as targets,
        AsyncClient(targets, username="alice", password="secret") as client,
    ):
        await client.put("k", "v")
        member.valid_token = "rotated-by-the-server"  # the client's token is now invalid
        await client.put("k", "v2")
        member.accept_tokens = False
        with pytest.raises(errors.InvalidAuthTokenError):
            await client.get("k")
    assert member.calls == [
        "Authenticate",
        "Put",
        "Put",  # rejected with "invalid auth token"
        "Authenticate",
        "Put",
        "Range",
        "Authenticate",
        "Range",  # rejected again: no endless loop
    ]


async def test_wrong_credentials_raise_auth_failed() -> None:
    member = FakeMember(1, require_token=True)
    async with (
        serving(member) as targets,
        AsyncClient(targets, username="alice", password="wrong") as client,
    ):
        with pytest.raises(errors.AuthFailedError):
            await client.get("k")


async def test_the_deadline_covers_the_whole_call() -> None:
    slow = FakeMember(1, delay=5.0)
    async with serving(slow) as targets, AsyncClient(targets, timeout=5.0) as client:
        started = time.monotonic()
        with pytest.raises(errors.TimeoutError):
            await client.get("k", timeout=0.3)
        elapsed = time.monotonic() - started
    assert 0.25 < elapsed < 2.0
