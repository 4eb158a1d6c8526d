"""Tracing's configuration from the OTEL_* variables, the W3C context format, and the gRPC
server interceptor (one SERVER span per call, under the caller's traceparent)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator

import grpc
import pytest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SimpleSpanProcessor,
)
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ParentBased
from opentelemetry.trace import SpanContext, SpanKind, StatusCode, TraceFlags
from raftkv.observability import tracing
from raftkv.observability.tracing import Tracing, TracingConfigError, configure_from_env
from raftkv.pb.etcdserverpb import rpc_pb2, rpc_pb2_grpc

from tests.observability.grpc_fixture import FakeKV, FakeMaintenance, FakeWatch

TRACE_ID = 0x4BF92F3577B34DA6A3CE929D0E0E4736
SPAN_ID = 0x00F067AA0BA902B7
TRACEPARENT = f"00-{TRACE_ID:032x}-{SPAN_ID:016x}-01"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (
        "OTEL_TRACES_EXPORTER",
        "OTEL_SERVICE_NAME",
        "OTEL_RESOURCE_ATTRIBUTES",
        "OTEL_TRACES_SAMPLER",
        "OTEL_TRACES_SAMPLER_ARG",
        "OTEL_EXPORTER_OTLP_PROTOCOL",
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
    ):
        monkeypatch.delenv(name, raising=False)


@contextlib.contextmanager
def configured(instance: str = "m1") -> Iterator[Tracing]:
    configured = configure_from_env(instance)
    assert configured is not None
    try:
        yield configured
    finally:
        configured.shutdown()


def processors(configured: Tracing) -> list[object]:
    return list(configured.provider._active_span_processor._span_processors)


# ---- configuration ---------------------------------------------------------------------------


def test_tracing_is_off_unless_an_exporter_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    assert configure_from_env("m1") is None
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "none")
    assert configure_from_env("m1") is None


def test_console_exporter_with_raftkv_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "console")
    with configured("infra0") as on:
        [processor] = processors(on)
        assert isinstance(processor, BatchSpanProcessor)
        assert isinstance(processor.span_exporter, ConsoleSpanExporter)
        attributes = on.provider.resource.attributes
        assert attributes["service.name"] == "raftkv"
        assert attributes["service.instance.id"] == "infra0"


def test_otlp_and_console_together(monkeypatch: pytest.MonkeyPatch) -> None:
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "otlp, console")
    with configured() as on:
        exporters = [type(p.span_exporter) for p in processors(on)]  # type: ignore[attr-defined]
        assert exporters == [OTLPSpanExporter, ConsoleSpanExporter]


def test_service_name_and_resource_variables_win(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "console")
    monkeypatch.setenv("OTEL_SERVICE_NAME", "kv-prod")
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "service.instance.id=pod-7,zone=b")
    with configured("m1") as on:
        attributes = on.provider.resource.attributes
        assert attributes["service.name"] == "kv-prod"
        assert attributes["service.instance.id"] == "pod-7"
        assert attributes["zone"] == "b"


def test_sampler_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "console")
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "parentbased_traceidratio")
    monkeypatch.setenv("OTEL_TRACES_SAMPLER_ARG", "0")
    with configured() as on:
        assert isinstance(on.provider.sampler, ParentBased)
        with on.span("root") as span:
            assert not span.is_recording()
            assert tracing.encode(span.get_span_context()) == b""


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("OTEL_TRACES_EXPORTER", "zipkin", "unknown exporter 'zipkin'"),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf", "'http/protobuf' is not supported"),
    ],
)
def test_unusable_settings_are_refused(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, message: str
) -> None:
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "otlp")
    monkeypatch.setenv(variable, value)
    with pytest.raises(TracingConfigError, match=message):
        configure_from_env("m1")


# ---- the context format ----------------------------------------------------------------------


def test_traceparent_round_trip() -> None:
    context = SpanContext(TRACE_ID, SPAN_ID, is_remote=False, trace_flags=TraceFlags(1))
    encoded = tracing.encode(context)
    assert encoded == TRACEPARENT.encode()
    decoded = tracing.decode(encoded)
    assert decoded is not None
    assert (decoded.trace_id, decoded.span_id, decoded.is_remote) == (TRACE_ID, SPAN_ID, True)
    assert decoded.trace_flags.sampled


def test_unsampled_contexts_are_not_propagated() -> None:
    context = SpanContext(TRACE_ID, SPAN_ID, is_remote=False, trace_flags=TraceFlags(0))
    assert tracing.encode(context) == b""


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"garbage",
        TRACEPARENT.replace("00-", "ff-", 1).encode(),
        f"00-{0:032x}-{SPAN_ID:016x}-01".encode(),
        f"00-{TRACE_ID:032x}-{0:016x}-01".encode(),
        TRACEPARENT.replace("4bf9", "zzzz").encode(),
    ],
)
def test_malformed_contexts_decode_to_none(data: bytes) -> None:
    assert tracing.decode(data) is None


# ---- the interceptor -------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def traced_server() -> AsyncIterator[tuple[str, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    on = Tracing.with_processors([SimpleSpanProcessor(exporter)], Resource({}))
    server = grpc.aio.server(interceptors=[on.server_interceptor()])
    rpc_pb2_grpc.add_KVServicer_to_server(FakeKV(), server)
    rpc_pb2_grpc.add_WatchServicer_to_server(FakeWatch(), server)
    rpc_pb2_grpc.add_MaintenanceServicer_to_server(FakeMaintenance(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield f"127.0.0.1:{port}", exporter
    finally:
        await server.stop(None)
        on.shutdown()


def spans_named(exporter: InMemorySpanExporter, name: str) -> list[ReadableSpan]:
    return [s for s in exporter.get_finished_spans() if s.name == name]


def test_server_span_continues_the_callers_trace() -> None:
    async def scenario() -> None:
        async with traced_server() as (target, exporter), grpc.aio.insecure_channel(target) as ch:
            await rpc_pb2_grpc.KVStub(ch).Put(
                rpc_pb2.PutRequest(key=b"k"), metadata=(("traceparent", TRACEPARENT),)
            )
            await rpc_pb2_grpc.KVStub(ch).Put(rpc_pb2.PutRequest(key=b"k"))
            traced, fresh = spans_named(exporter, "etcdserverpb.KV/Put")
            assert traced.kind is SpanKind.SERVER
            assert traced.context.trace_id == TRACE_ID
            assert traced.parent is not None and traced.parent.span_id == SPAN_ID
            assert traced.attributes is not None
            assert traced.attributes["rpc.system"] == "grpc"
            assert traced.attributes["rpc.method"] == "Put"
            assert traced.attributes["rpc.grpc.status_code"] == 0
            assert fresh.parent is None and fresh.context.trace_id != TRACE_ID

    asyncio.run(scenario())


def test_unsampled_caller_gets_no_spans() -> None:
    async def scenario() -> None:
        async with traced_server() as (target, exporter), grpc.aio.insecure_channel(target) as ch:
            unsampled = TRACEPARENT[:-2] + "00"
            await rpc_pb2_grpc.KVStub(ch).Put(
                rpc_pb2.PutRequest(key=b"k"), metadata=(("traceparent", unsampled),)
            )
            assert exporter.get_finished_spans() == ()

    asyncio.run(scenario())


def test_failed_calls_carry_their_status() -> None:
    async def scenario() -> None:
        async with traced_server() as (target, exporter), grpc.aio.insecure_channel(target) as ch:
            stub = rpc_pb2_grpc.KVStub(ch)
            for key in (b"missing", b"crash"):
                with pytest.raises(grpc.aio.AioRpcError):
                    await stub.Put(rpc_pb2.PutRequest(key=key))
            missing, crash = spans_named(exporter, "etcdserverpb.KV/Put")
            assert missing.status.status_code is StatusCode.ERROR
            assert missing.status.description == "etcdserver: key not found"
            assert missing.attributes is not None
            assert missing.attributes["rpc.grpc.status_code"] == grpc.StatusCode.NOT_FOUND.value[0]
            assert not missing.events  # an abort is an answer, not an exception
            assert crash.status.status_code is StatusCode.ERROR
            assert [event.name for event in crash.events] == ["exception"]

    asyncio.run(scenario())


def test_streams_get_one_span_for_the_whole_call() -> None:
    async def scenario() -> None:
        async with traced_server() as (target, exporter), grpc.aio.insecure_channel(target) as ch:
            chunks = [
                r
                async for r in rpc_pb2_grpc.MaintenanceStub(ch).Snapshot(
                    rpc_pb2.SnapshotRequest(), metadata=(("traceparent", TRACEPARENT),)
                )
            ]
            assert len(chunks) == 3
            call = rpc_pb2_grpc.WatchStub(ch).Watch()
            await call.write(
                rpc_pb2.WatchRequest(create_request=rpc_pb2.WatchCreateRequest(key=b"a"))
            )
            await call.read()
            await call.done_writing()
            assert await call.read() is grpc.aio.EOF
            [snapshot] = spans_named(exporter, "etcdserverpb.Maintenance/Snapshot")
            assert snapshot.parent is not None and snapshot.parent.span_id == SPAN_ID
            [watch] = spans_named(exporter, "etcdserverpb.Watch/Watch")
            assert watch.kind is SpanKind.SERVER

    asyncio.run(scenario())
