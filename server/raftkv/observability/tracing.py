"""OpenTelemetry tracing for raftkv: the provider from `OTEL_*` variables, W3C trace contexts as
bytes, span helpers, and the gRPC interceptor that opens one server span per client call.

Why it is shaped this way:

- **Off means absent.** `configure_from_env` returns None unless `OTEL_TRACES_EXPORTER` names an
  exporter (the default, `none`, turns tracing off). Callers hold a `Tracing | None` and test it
  once per hook; with None no span object is built, no context serialized, and the interceptor
  is not installed at all, so tracing costs nothing on the hot path when it is off.
- **No global state.** Each `Tracing` owns its `TracerProvider` (the global one is never set),
  so several members can run in one process (tests) with their own resource
  (`service.instance.id` = member name) and exporter.
- **Contexts travel as W3C `traceparent` bytes.** Raft carries them opaquely
  (`Message.trace_context`, `RequestHeader.trace_context`); `encode` and `decode` are the only
  places that know the format. Only sampled contexts are ever encoded: an unsampled request
  leaves nothing to propagate, so followers do no work for it.
- **Internal work is traced only under a traced request.** `span_if_traced` and `child_span`
  return nothing unless the current span is recording, so background proposals (checkpoints,
  attribute publishes, compactions) and watch deliveries of untraced writes start no traces.
  Lease expiries are the exception: they are traced as roots of their own (`span`).

The SDK reads the rest of the standard variables itself: `OTEL_TRACES_SAMPLER[_ARG]` (the
provider's sampler), `OTEL_EXPORTER_OTLP_*` (the OTLP exporter), `OTEL_BSP_*` (the batch span
processor), `OTEL_RESOURCE_ATTRIBUTES` and `OTEL_SERVICE_NAME` (the resource; raftkv's default
service name is `raftkv`).
"""

from __future__ import annotations

import asyncio
import inspect
import os
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import grpc
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.resources import OTELResourceDetector, Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
from opentelemetry.trace import Link, NonRecordingSpan, Span, SpanContext, SpanKind, TraceFlags
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.trace.status import Status, StatusCode

from raftkv.observability.interceptors import HandlerWrappingInterceptor

DEFAULT_SERVICE_NAME = "raftkv"
TRACEPARENT = "traceparent"
_PROPAGATOR = TraceContextTextMapPropagator()


class TracingConfigError(ValueError):
    """The OTEL_* variables ask for something raftkv cannot do; the message says what."""


def _exporter(name: str) -> SpanExporter:
    if name == "console":
        return ConsoleSpanExporter(service_name=None)
    if name == "otlp":
        protocol = os.environ.get(
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
        )
        if protocol not in (None, "", "grpc"):
            raise TracingConfigError(
                f"OTLP protocol {protocol!r} is not supported by raftkv; use grpc"
            )
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter()
    raise TracingConfigError(
        f"OTEL_TRACES_EXPORTER: unknown exporter {name!r} (raftkv knows otlp, console and none)"
    )


def resource_for(instance_id: str) -> Resource:
    """The SDK's resource from the environment, defaulting the service name to `raftkv` and the
    instance to `instance_id` (the member name) where the variables say nothing else."""
    from_env = OTELResourceDetector().detect().attributes
    defaults = {"service.name": DEFAULT_SERVICE_NAME, "service.instance.id": instance_id}
    return Resource.create().merge(
        Resource({key: value for key, value in defaults.items() if key not in from_env})
    )


def configure_from_env(instance_id: str) -> Tracing | None:
    """Tracing as the `OTEL_*` variables configure it, or None when they leave it off."""
    names = [
        name.strip().lower()
        for name in os.environ.get("OTEL_TRACES_EXPORTER", "none").split(",")
        if name.strip()
    ]
    names = [name for name in names if name != "none"]
    if not names:
        return None
    processors = [BatchSpanProcessor(_exporter(name)) for name in dict.fromkeys(names)]
    return Tracing.with_processors(processors, resource_for(instance_id))


def encode(span_context: SpanContext) -> bytes:
    """`span_context` as a W3C traceparent; b"" unless it is valid and sampled."""
    if not span_context.is_valid or not span_context.trace_flags.sampled:
        return b""
    return b"00-%032x-%016x-01" % (span_context.trace_id, span_context.span_id)


def decode(data: bytes) -> SpanContext | None:
    """A traceparent made by `encode` (or any W3C version-00 one) as a remote span context."""
    if len(data) != 55 or data[2:3] != b"-" or data[35:36] != b"-" or data[52:53] != b"-":
        return None
    try:
        trace_id = int(data[3:35], 16)
        span_id = int(data[36:52], 16)
        flags = int(data[53:55], 16)
    except ValueError:
        return None
    if data[:2] != b"00" or trace_id == 0 or span_id == 0:
        return None
    return SpanContext(trace_id, span_id, is_remote=True, trace_flags=TraceFlags(flags & 1))


def _parent(context: SpanContext | None) -> otel_context.Context | None:
    if context is None:
        return None
    return trace.set_span_in_context(NonRecordingSpan(context))


def current_span_recording() -> bool:
    return trace.get_current_span().is_recording()


class Tracing:
    """Tracing switched on: one provider, one tracer, and the helpers raftkv's layers call."""

    def __init__(self, provider: TracerProvider) -> None:
        self.provider = provider
        self.tracer = provider.get_tracer("raftkv")

    @classmethod
    def with_processors(cls, processors: Sequence[SpanProcessor], resource: Resource) -> Tracing:
        provider = TracerProvider(resource=resource)
        for processor in processors:
            provider.add_span_processor(processor)
        return cls(provider)

    def shutdown(self) -> None:
        """Export what is buffered and stop the exporters."""
        self.provider.shutdown()

    # ---- spans -------------------------------------------------------------------------------

    def start_span(
        self,
        name: str,
        parent: SpanContext | None,
        *,
        start_ns: int | None = None,
        links: Sequence[SpanContext] = (),
        attributes: dict[str, Any] | None = None,
        kind: SpanKind = SpanKind.INTERNAL,
    ) -> Span:
        """A span under `parent` (a new trace if None), ended by the caller (`Span.end`)."""
        return self.tracer.start_span(
            name,
            context=_parent(parent),
            kind=kind,
            attributes=attributes,
            links=[Link(link) for link in links],
            start_time=start_ns,
        )

    @contextmanager
    def span(self, name: str, attributes: dict[str, Any] | None = None) -> Iterator[Span]:
        """A span under the current one (or a new trace), current while the block runs."""
        with self.tracer.start_as_current_span(name, attributes=attributes) as span:
            yield span

    @contextmanager
    def span_if_traced(
        self, name: str, attributes: dict[str, Any] | None = None
    ) -> Iterator[Span | None]:
        """Like `span` when the current span is recording; otherwise no span (yields None)."""
        if not current_span_recording():
            yield None
            return
        with self.tracer.start_as_current_span(name, attributes=attributes) as span:
            yield span

    def child_span(self, name: str, attributes: dict[str, Any] | None = None) -> Span | None:
        """A span under the current one if that is recording (ended by the caller), else None."""
        if not current_span_recording():
            return None
        return self.tracer.start_span(name, attributes=attributes)

    @contextmanager
    def span_under(
        self, parent: SpanContext, name: str, attributes: dict[str, Any] | None = None
    ) -> Iterator[Span]:
        """A span under `parent`, current while the block runs."""
        with self.tracer.start_as_current_span(
            name, context=_parent(parent), attributes=attributes
        ) as span:
            yield span

    # ---- gRPC --------------------------------------------------------------------------------

    def server_interceptor(self) -> TracingServerInterceptor:
        return TracingServerInterceptor(self)


def _incoming_context(metadata: Sequence[tuple[str, Any]] | None) -> otel_context.Context | None:
    """The W3C context a client sent in its metadata (`traceparent`, `tracestate`), if any."""
    if not metadata:
        return None
    carrier = {key: value for key, value in metadata if key in (TRACEPARENT, "tracestate")}
    if TRACEPARENT not in carrier:
        return None
    return _PROPAGATOR.extract(carrier)


def _finish(span: Span, context: Any, error: BaseException | None) -> None:
    if error is not None and not isinstance(error, (grpc.aio.AbortError, asyncio.CancelledError)):
        span.record_exception(error)
    code = context.code() if hasattr(context, "code") else None
    if not isinstance(code, grpc.StatusCode):
        code = grpc.StatusCode.OK if error is None else grpc.StatusCode.UNKNOWN
    span.set_attribute("rpc.grpc.status_code", code.value[0])
    if code is not grpc.StatusCode.OK:
        details = context.details() if hasattr(context, "details") else None
        span.set_status(Status(StatusCode.ERROR, details or code.name))
    span.end()


class TracingServerInterceptor(HandlerWrappingInterceptor):
    """One SERVER span per call, named `service/method` (OpenTelemetry's RPC conventions),
    under the caller's `traceparent` when it sent one, and current while the handler runs so
    the member's spans (the proposal and what follows) hang under it."""

    def __init__(self, tracing: Tracing) -> None:
        super().__init__()
        self._tracing = tracing

    def wrap(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        service, _, name = method.lstrip("/").partition("/")
        attributes = {"rpc.system": "grpc", "rpc.service": service, "rpc.method": name}
        span_name = f"{service}/{name}"
        tracer = self._tracing.tracer

        def start(context: Any) -> tuple[Span, object]:
            span = tracer.start_span(
                span_name,
                context=_incoming_context(context.invocation_metadata()),
                kind=SpanKind.SERVER,
                attributes=attributes,
            )
            return span, otel_context.attach(trace.set_span_in_context(span))

        for kind in ("unary_unary", "unary_stream", "stream_unary", "stream_stream"):
            behavior = getattr(handler, kind)
            if behavior is not None:
                return handler._replace(**{kind: _wrap_behavior(behavior, start)})
        return handler


def _wrap_behavior(
    behavior: Callable[..., Any], start: Callable[[Any], tuple[Span, object]]
) -> Callable[..., Any]:

    if inspect.isasyncgenfunction(behavior):

        async def generator(request: Any, context: Any) -> AsyncIterator[Any]:
            span, token = start(context)
            error: BaseException | None = None
            try:
                async for response in behavior(request, context):
                    yield response
            except BaseException as raised:
                error = raised
                raise
            finally:
                otel_context.detach(token)
                _finish(span, context, error)

        return generator

    if not inspect.iscoroutinefunction(behavior):
        return behavior  # an unimplemented base-class method: grpc answers Unimplemented

    async def coroutine(request: Any, context: Any) -> Any:
        span, token = start(context)
        error: BaseException | None = None
        try:
            return await behavior(request, context)
        except BaseException as raised:
            error = raised
            raise
        finally:
            otel_context.detach(token)
            _finish(span, context, error)

    return coroutine
