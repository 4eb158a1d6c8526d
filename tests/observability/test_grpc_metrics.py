"""The gRPC interceptor counts calls, codes and messages with go-grpc-prometheus' labels."""

from __future__ import annotations

import asyncio
import io

import grpc
import pytest
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.openmetrics import exposition as openmetrics
from prometheus_client.openmetrics.parser import text_fd_to_metric_families
from prometheus_client.parser import text_string_to_metric_families
from raftkv.observability.grpc_server import go_code_name
from raftkv.observability.tracing import Tracing, resource_for
from raftkv.pb.etcdserverpb import rpc_pb2, rpc_pb2_grpc

from tests.observability.grpc_fixture import start_grpc


def samples(registry: CollectorRegistry) -> dict[tuple[str, frozenset], float]:
    text = generate_latest(registry).decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return samples(registry)[(name, frozenset(labels.items()))]


def kv(method: str, kind: str = "unary") -> dict[str, str]:
    return {"grpc_type": kind, "grpc_service": "etcdserverpb.KV", "grpc_method": method}


def test_go_code_names() -> None:
    assert go_code_name(grpc.StatusCode.OK) == "OK"
    assert go_code_name(grpc.StatusCode.NOT_FOUND) == "NotFound"
    assert go_code_name(grpc.StatusCode.CANCELLED) == "Canceled"
    assert go_code_name(grpc.StatusCode.DEADLINE_EXCEEDED) == "DeadlineExceeded"


def test_calls_codes_and_messages_are_counted() -> None:
    registry = CollectorRegistry()

    async def run() -> None:
        server, address, _ = await start_grpc(registry)
        try:
            async with grpc.aio.insecure_channel("unix-abstract:" + address[1:]) as channel:
                stub = rpc_pb2_grpc.KVStub(channel)
                for _ in range(3):
                    await stub.Put(rpc_pb2.PutRequest(key=b"a"))
                with pytest.raises(grpc.aio.AioRpcError) as missing:
                    await stub.Put(rpc_pb2.PutRequest(key=b"missing"))
                assert missing.value.code() == grpc.StatusCode.NOT_FOUND
                with pytest.raises(grpc.aio.AioRpcError):
                    await stub.Put(rpc_pb2.PutRequest(key=b"crash"))

                watch = rpc_pb2_grpc.WatchStub(channel).Watch()
                for key in (b"x", b"y"):
                    create = rpc_pb2.WatchCreateRequest(key=key)
                    await watch.write(rpc_pb2.WatchRequest(create_request=create))
                    await watch.read()
                await watch.done_writing()
                await watch.code()

                maintenance = rpc_pb2_grpc.MaintenanceStub(channel)
                assert len([r async for r in maintenance.Snapshot(rpc_pb2.SnapshotRequest())]) == 3
        finally:
            await server.stop(grace=None)

    asyncio.run(run())
    put = kv("Put")
    assert sample(registry, "grpc_server_started_total", **put) == 5
    assert sample(registry, "grpc_server_handled_total", **put, grpc_code="OK") == 3
    assert sample(registry, "grpc_server_handled_total", **put, grpc_code="NotFound") == 1
    assert sample(registry, "grpc_server_handled_total", **put, grpc_code="Unknown") == 1
    assert sample(registry, "grpc_server_msg_received_total", **put) == 5
    assert sample(registry, "grpc_server_msg_sent_total", **put) == 3
    assert sample(registry, "grpc_server_handling_seconds_count", **put) == 5

    watch = {
        "grpc_type": "bidi_stream",
        "grpc_service": "etcdserverpb.Watch",
        "grpc_method": "Watch",
    }
    assert sample(registry, "grpc_server_started_total", **watch) == 1
    assert sample(registry, "grpc_server_msg_received_total", **watch) == 2
    assert sample(registry, "grpc_server_msg_sent_total", **watch) == 2
    assert sample(registry, "grpc_server_handled_total", **watch, grpc_code="OK") == 1

    snapshot = {
        "grpc_type": "server_stream",
        "grpc_service": "etcdserverpb.Maintenance",
        "grpc_method": "Snapshot",
    }
    assert sample(registry, "grpc_server_msg_sent_total", **snapshot) == 3
    assert sample(registry, "grpc_server_handled_total", **snapshot, grpc_code="OK") == 1


def test_registered_services_start_at_zero_for_every_code() -> None:
    registry = CollectorRegistry()

    async def run() -> None:
        server, _, _ = await start_grpc(registry)
        await server.stop(grace=None)

    asyncio.run(run())
    assert sample(registry, "grpc_server_started_total", **kv("Txn")) == 0
    assert sample(registry, "grpc_server_handled_total", **kv("Txn"), grpc_code="Unavailable") == 0
    codes = {
        dict(labels)["grpc_code"]
        for (name, labels) in samples(registry)
        if name == "grpc_server_handled_total" and dict(labels)["grpc_method"] == "Range"
    }
    assert len(codes) == 17


def test_a_traced_calls_latency_carries_its_trace_id_as_an_exemplar() -> None:
    registry = CollectorRegistry()
    spans = InMemorySpanExporter()
    tracing = Tracing.with_processors([SimpleSpanProcessor(spans)], resource_for("m1"))

    async def run() -> None:
        server, address, _ = await start_grpc(registry, tracing=tracing)
        try:
            async with grpc.aio.insecure_channel("unix-abstract:" + address[1:]) as channel:
                await rpc_pb2_grpc.KVStub(channel).Put(rpc_pb2.PutRequest(key=b"a"))
        finally:
            await server.stop(grace=None)

    asyncio.run(run())
    tracing.shutdown()
    (span,) = spans.get_finished_spans()
    trace_id = f"{span.context.trace_id:032x}"
    families = text_fd_to_metric_families(
        io.StringIO(openmetrics.generate_latest(registry).decode())
    )
    exemplars = [
        s.exemplar.labels
        for family in families
        if family.name == "grpc_server_handling_seconds"
        for s in family.samples
        if s.exemplar is not None
    ]
    assert exemplars == [{"trace_id": trace_id}]
    # Untraced calls (tracing off) carry none: the plain text format is unchanged.
    assert b"trace_id" not in generate_latest(registry)
