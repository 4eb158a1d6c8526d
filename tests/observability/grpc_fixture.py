"""A small etcd-shaped gRPC server for tests of the front and of the gRPC metrics.

`FakeKV.Range` answers with a value of the size asked for in `limit` (large messages),
`FakeKV.Put` fails with etcd-like statuses on request, `FakeWatch.Watch` echoes each create
request's key back as an event (a bidi stream in the `context.read()`/`context.write()` style
the real Watch service uses) and `FakeMaintenance.Snapshot` is an async generator.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import grpc
from prometheus_client import CollectorRegistry
from raftkv.api.http import ClientPortFront, HttpRouter, internal_grpc_address
from raftkv.observability.grpc_server import GrpcServerMetrics
from raftkv.observability.tracing import Tracing
from raftkv.pb.etcdserverpb import rpc_pb2, rpc_pb2_grpc
from raftkv.pb.mvccpb import kv_pb2

MAX_MESSAGE = 64 * 1024 * 1024
OPTIONS = [
    ("grpc.max_receive_message_length", MAX_MESSAGE),
    ("grpc.max_send_message_length", MAX_MESSAGE),
]


class FakeKV(rpc_pb2_grpc.KVServicer):
    async def Range(
        self, request: rpc_pb2.RangeRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.RangeResponse:
        value = b"v" * request.limit
        return rpc_pb2.RangeResponse(kvs=[kv_pb2.KeyValue(key=request.key, value=value)], count=1)

    async def Put(
        self, request: rpc_pb2.PutRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.PutResponse:
        if request.key == b"missing":
            await context.abort(grpc.StatusCode.NOT_FOUND, "etcdserver: key not found")
        if request.key == b"crash":
            raise RuntimeError("handler bug")
        return rpc_pb2.PutResponse(header=rpc_pb2.ResponseHeader(revision=len(request.value)))


class FakeWatch(rpc_pb2_grpc.WatchServicer):
    async def Watch(self, request_iterator: object, context: grpc.aio.ServicerContext) -> None:
        while True:
            request = await context.read()
            if request is grpc.aio.EOF:
                return
            key = request.create_request.key
            event = kv_pb2.Event(kv=kv_pb2.KeyValue(key=key))
            await context.write(rpc_pb2.WatchResponse(created=True, events=[event]))


class FakeMaintenance(rpc_pb2_grpc.MaintenanceServicer):
    async def Snapshot(
        self, request: rpc_pb2.SnapshotRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[rpc_pb2.SnapshotResponse]:
        for remaining in (2, 1, 0):
            yield rpc_pb2.SnapshotResponse(remaining_bytes=remaining, blob=b"x" * 10)


async def start_grpc(
    registry: CollectorRegistry | None = None,
    options: list[tuple[str, int]] | None = None,
    tracing: Tracing | None = None,
) -> tuple[grpc.aio.Server, str, GrpcServerMetrics | None]:
    """The fake services on a fresh internal socket; returns (server, connect address, metrics).
    With `tracing`, its interceptor runs outside the metrics one, as in the member."""
    interceptors: list[grpc.aio.ServerInterceptor] = []
    if tracing is not None:
        interceptors.append(tracing.server_interceptor())
    metrics = None
    if registry is not None:
        services = [rpc_pb2.DESCRIPTOR.services_by_name[n] for n in ("KV", "Watch")]
        metrics = GrpcServerMetrics(registry, services)
        interceptors.append(metrics)
    server = grpc.aio.server(options=[*OPTIONS, *(options or [])], interceptors=interceptors)
    rpc_pb2_grpc.add_KVServicer_to_server(FakeKV(), server)
    rpc_pb2_grpc.add_WatchServicer_to_server(FakeWatch(), server)
    rpc_pb2_grpc.add_MaintenanceServicer_to_server(FakeMaintenance(), server)
    target, address = internal_grpc_address()
    assert server.add_insecure_port(target) == 1
    await server.start()
    return server, address, metrics


@contextlib.asynccontextmanager
async def front_with_grpc(
    router: HttpRouter | None = None,
    registry: CollectorRegistry | None = None,
    grpc_options: list[tuple[str, int]] | None = None,
) -> AsyncIterator[tuple[ClientPortFront, int]]:
    """The front on 127.0.0.1:<free port> before the fake gRPC services; yields (front, port)."""
    server, address, _ = await start_grpc(registry, grpc_options)
    front = ClientPortFront(router or HttpRouter(), address, max_body_bytes=1024 * 1024)
    try:
        port = await front.listen("127.0.0.1", 0)
        yield front, port
    finally:
        front.stop_accepting()
        await server.stop(grace=0.5)
        await front.close()
