"""gRPC server metrics with the names and labels of go-grpc-prometheus, which etcd uses.

etcd's dashboards and alerts read `grpc_server_started_total`, `grpc_server_handled_total`
(`grpc_code` is the Go name of the status: `OK`, `NotFound`, `Unavailable`...),
`grpc_server_msg_received_total`, `grpc_server_msg_sent_total` and, with etcd's
`--metrics=extensive`, `grpc_server_handling_seconds`; raftkv always reports all five.

The interceptor wraps each method's handler once (the wrapped handler is cached per method),
so a call costs one dictionary lookup plus the counter updates; the labelled children of every
method are resolved up front. Streaming handlers get a thin proxy of their context so that
`context.read()` and `context.write()` are counted as messages, as are items of a request
iterator and of a response generator.

Like etcd, the series of every method of the registered services start at zero (for every
code), so rates and ratios are defined before the first call.

When the call is traced (a sampled span is current: the tracing interceptor runs outside this
one), its latency observation carries the trace ID as an OpenMetrics exemplar, so a dashboard's
latency panel links a slow bucket to a trace of a request that landed in it.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any

import grpc
from google.protobuf.descriptor import ServiceDescriptor
from opentelemetry import trace
from prometheus_client import CollectorRegistry, Counter, Histogram

from raftkv.observability.interceptors import HandlerWrappingInterceptor

# prometheus-client's default buckets are Go's prometheus.DefBuckets, which etcd uses here.
HANDLING_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def go_code_name(code: grpc.StatusCode) -> str:
    """The status code as Go's codes.Code.String() spells it (`NOT_FOUND` -> `NotFound`)."""
    if code is grpc.StatusCode.CANCELLED:
        return "Canceled"
    if code is grpc.StatusCode.OK:
        return "OK"
    return "".join(part.capitalize() for part in code.name.split("_"))


ALL_CODES = tuple(go_code_name(code) for code in grpc.StatusCode)


def grpc_type(client_streaming: bool, server_streaming: bool) -> str:
    if client_streaming and server_streaming:
        return "bidi_stream"
    if client_streaming:
        return "client_stream"
    if server_streaming:
        return "server_stream"
    return "unary"


class _MethodStats:
    """The labelled children of one method, resolved once."""

    def __init__(self, metrics: GrpcServerMetrics, labels: tuple[str, str, str]) -> None:
        self.started = metrics.started.labels(*labels)
        self.received = metrics.received.labels(*labels)
        self.sent = metrics.sent.labels(*labels)
        self._latency: Any = None  # resolved on first use: a histogram is 13 series
        self._handling_metric = metrics.handling
        self._handled_metric = metrics.handled
        self._labels = labels
        self._handled: dict[str, Any] = {}

    def handled(self, code: str) -> Any:
        child = self._handled.get(code)
        if child is None:
            child = self._handled[code] = self._handled_metric.labels(*self._labels, code)
        return child

    def finish(self, code: str, started: float) -> None:
        self.handled(code).inc()
        if self._latency is None:
            self._latency = self._handling_metric.labels(*self._labels)
        self._latency.observe(time.perf_counter() - started, trace_exemplar())


def trace_exemplar() -> dict[str, str] | None:
    """`{"trace_id": ...}` of the current span when it is sampled, else None."""
    span_context = trace.get_current_span().get_span_context()
    if span_context.trace_flags.sampled:
        return {"trace_id": trace.format_trace_id(span_context.trace_id)}
    return None


def _status_of(context: Any, error: BaseException | None) -> str:
    """The code a call ended with: what the handler set (abort sets it too), else from error."""
    if isinstance(error, asyncio.CancelledError):
        return "Canceled"
    code = context.code() if hasattr(context, "code") else None
    if isinstance(code, grpc.StatusCode):
        return go_code_name(code)
    return "Unknown" if error is not None else "OK"


class _CountingContext:
    """Delegates to the real servicer context, counting streamed messages."""

    def __init__(self, context: Any, stats: _MethodStats) -> None:
        self._context = context
        self._stats = stats

    async def read(self) -> Any:
        message = await self._context.read()
        if message is not grpc.aio.EOF:
            self._stats.received.inc()
        return message

    async def write(self, message: Any) -> None:
        await self._context.write(message)
        self._stats.sent.inc()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._context, name)


async def _counted(requests: AsyncIterator[Any], stats: _MethodStats) -> AsyncIterator[Any]:
    async for request in requests:
        stats.received.inc()
        yield request


class GrpcServerMetrics(HandlerWrappingInterceptor):
    """A grpc.aio server interceptor reporting go-grpc-prometheus' metrics."""

    def __init__(
        self, registry: CollectorRegistry, services: Iterable[ServiceDescriptor] = ()
    ) -> None:
        labels = ["grpc_type", "grpc_service", "grpc_method"]
        self.started = Counter(
            "grpc_server_started_total",
            "Total number of RPCs started on the server.",
            labels,
            registry=registry,
        )
        self.handled = Counter(
            "grpc_server_handled_total",
            "Total number of RPCs completed on the server, regardless of success or failure.",
            [*labels, "grpc_code"],
            registry=registry,
        )
        self.received = Counter(
            "grpc_server_msg_received_total",
            "Total number of RPC stream messages received on the server.",
            labels,
            registry=registry,
        )
        self.sent = Counter(
            "grpc_server_msg_sent_total",
            "Total number of gRPC stream messages sent by the server.",
            labels,
            registry=registry,
        )
        self.handling = Histogram(
            "grpc_server_handling_seconds",
            "Histogram of response latency (seconds) of gRPC that had been application-level "
            "handled by the server.",
            labels,
            buckets=HANDLING_BUCKETS,
            registry=registry,
        )
        self._stats: dict[str, _MethodStats] = {}
        super().__init__()
        for service in services:
            for method in service.methods:
                stats = self._method_stats(
                    f"/{service.full_name}/{method.name}",
                    grpc_type(method.client_streaming, method.server_streaming),
                )
                for code in ALL_CODES:
                    stats.handled(code)

    def _method_stats(self, full_method: str, kind: str) -> _MethodStats:
        stats = self._stats.get(full_method)
        if stats is None:
            service, _, method = full_method.lstrip("/").partition("/")
            stats = self._stats[full_method] = _MethodStats(self, (kind, service, method))
        return stats

    def wrap(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        stats = self._method_stats(
            method, grpc_type(handler.request_streaming, handler.response_streaming)
        )
        if handler.unary_unary is not None:
            return handler._replace(unary_unary=_wrap_unary(handler.unary_unary, stats))
        if handler.unary_stream is not None:
            return handler._replace(unary_stream=_wrap_stream(handler.unary_stream, stats, False))
        if handler.stream_unary is not None:
            return handler._replace(stream_unary=_wrap_stream(handler.stream_unary, stats, True))
        return handler._replace(stream_stream=_wrap_stream(handler.stream_stream, stats, True))


def _wrap_unary(behavior: Callable[..., Any], stats: _MethodStats) -> Callable[..., Any]:
    if not inspect.iscoroutinefunction(behavior):
        return behavior  # an unimplemented base-class method: grpc answers Unimplemented

    async def unary(request: Any, context: Any) -> Any:
        stats.started.inc()
        stats.received.inc()
        started = time.perf_counter()
        error: BaseException | None = None
        try:
            response = await behavior(request, context)
            stats.sent.inc()
            return response
        except BaseException as raised:
            error = raised
            raise
        finally:
            stats.finish(_status_of(context, error), started)

    return unary


def _wrap_stream(
    behavior: Callable[..., Any], stats: _MethodStats, request_streaming: bool
) -> Callable[..., Any]:
    def arguments(request: Any, context: Any) -> tuple[Any, Any]:
        stats.started.inc()
        if request_streaming:
            if request is not None:
                request = _counted(request, stats)
        else:
            stats.received.inc()
        return request, _CountingContext(context, stats)

    if inspect.isasyncgenfunction(behavior):

        async def generator(request: Any, context: Any) -> AsyncIterator[Any]:
            request, counting = arguments(request, context)
            started = time.perf_counter()
            error: BaseException | None = None
            try:
                async for response in behavior(request, counting):
                    stats.sent.inc()
                    yield response
            except BaseException as raised:
                error = raised
                raise
            finally:
                stats.finish(_status_of(context, error), started)

        return generator

    if not inspect.iscoroutinefunction(behavior):
        return behavior

    async def coroutine(request: Any, context: Any) -> Any:
        request, counting = arguments(request, context)
        started = time.perf_counter()
        error: BaseException | None = None
        try:
            return await behavior(request, counting)
        except BaseException as raised:
            error = raised
            raise
        finally:
            stats.finish(_status_of(context, error), started)

    return coroutine
