"""Keep-alive coalescing in the proxy, against a fake upstream LeaseKeepAlive stream."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
from prometheus_client import CollectorRegistry
from raftkv.pb.etcdserverpb import rpc_pb2 as pb
from raftkv.proxy.lease import KeepAliveHub
from raftkv.proxy.metrics import ProxyMetrics


class FakeCall:
    """One upstream stream: records what the proxy writes, answers when the test says."""

    def __init__(self) -> None:
        self.written: list[int] = []
        self.responses: asyncio.Queue[Any] = asyncio.Queue()

    async def write(self, request: pb.LeaseKeepAliveRequest) -> None:
        self.written.append(request.ID)

    async def read(self) -> Any:
        item = await self.responses.get()
        if isinstance(item, BaseException):
            raise item
        return item

    def answer(self, lease_id: int, ttl: int) -> None:
        self.responses.put_nowait(pb.LeaseKeepAliveResponse(ID=lease_id, TTL=ttl))

    def cancel(self) -> None:
        pass


class FakeTransport:
    def __init__(self) -> None:
        self.calls: list[FakeCall] = []
        self.opened = asyncio.Event()
        self.lease = self  # stubs(endpoint).lease.LeaseKeepAlive

    async def stream_endpoint(self, deadline: float) -> str:
        return "member"

    def stubs(self, endpoint: str) -> FakeTransport:
        return self

    def LeaseKeepAlive(self, metadata: Any) -> FakeCall:
        call = FakeCall()
        self.calls.append(call)
        self.opened.set()
        return call

    def metadata(self, *, require_leader: bool = False) -> tuple[tuple[str, str], ...]:
        return (("hasleader", "true"),)

    def mark_failed(self, endpoint: str) -> None:
        pass


async def settle() -> None:
    for _ in range(10):
        await asyncio.sleep(0)


def make_hub() -> tuple[KeepAliveHub, FakeTransport]:
    transport = FakeTransport()
    return KeepAliveHub(transport, ProxyMetrics(CollectorRegistry())), transport  # type: ignore[arg-type]


def test_concurrent_renewals_of_one_lease_send_one_request() -> None:
    async def scenario() -> None:
        hub, transport = make_hub()
        renewals = [asyncio.create_task(hub.renew(7)) for _ in range(5)]
        other = asyncio.create_task(hub.renew(8))
        await settle()
        (call,) = transport.calls
        assert sorted(call.written) == [7, 8]
        call.answer(7, 10)
        call.answer(8, 30)
        assert [r.TTL for r in await asyncio.gather(*renewals)] == [10] * 5
        assert (await other).TTL == 30
        # Asked again at once: answered from that renewal, with no more than it granted.
        again = await hub.renew(7)
        assert again.ID == 7 and 1 <= again.TTL <= 10
        assert sorted(call.written) == [7, 8]
        # After a revoke through the proxy the next request goes to the cluster.
        hub.forget(7)
        pending = asyncio.create_task(hub.renew(7))
        await settle()
        assert sorted(call.written) == [7, 7, 8]
        call.answer(7, 0)  # gone: TTL 0, as the cluster says
        assert (await pending).TTL == 0
        await hub.close()

    asyncio.run(scenario())


def test_a_renewal_lost_with_its_stream_is_sent_again_on_a_new_one() -> None:
    async def scenario() -> None:
        hub, transport = make_hub()
        renewal = asyncio.create_task(hub.renew(7))
        await settle()
        first = transport.calls[0]
        assert first.written == [7]
        first.responses.put_nowait(
            grpc.aio.AioRpcError(grpc.StatusCode.UNAVAILABLE, None, None, "member died")
        )
        await asyncio.wait_for(_second_stream(transport), 10)
        second = transport.calls[1]
        await settle()
        assert second.written == [7]
        second.answer(7, 10)
        assert (await renewal).TTL == 10
        await hub.close()

    asyncio.run(scenario())


async def _second_stream(transport: FakeTransport) -> None:
    while len(transport.calls) < 2:
        await asyncio.sleep(0.01)
