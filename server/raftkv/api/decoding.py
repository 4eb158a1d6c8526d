"""Undecodable and oversized requests get grpc-go's answers, as etcd gives them: INTERNAL,
"grpc: error unmarshalling request: ...", and RESOURCE_EXHAUSTED, "grpc: received message larger
than max (N vs. M)".

grpcio would answer UNKNOWN with a Python exception name, and its C core words the size error
its own way. An interceptor rewrites every method handler so its deserializer returns a marker
instead of raising (or decoding a message over the limit), and the handler aborts the call
when it meets the marker, on unary and streaming requests alike (handlers that read with
`context.read()` call `abort_if_undecodable` themselves). The C core's own receive limit is
set above this one (`api.server`), so it only catches messages far too large to be worth
reading, and bounds the memory one message can take.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from raftkv.observability.interceptors import HandlerWrappingInterceptor


class _Undecodable:
    """Stands for a request the handler must refuse with `code` and `message`."""

    __slots__ = ("code", "message")

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        self.code = code
        self.message = message


def _tolerant(
    deserialize: Callable[[bytes], Any] | None, max_message_bytes: int | None
) -> Callable[[bytes], Any] | None:
    if deserialize is None:
        return None

    def decode(data: bytes) -> Any:
        if max_message_bytes is not None and len(data) > max_message_bytes:
            return _Undecodable(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"grpc: received message larger than max ({len(data)} vs. {max_message_bytes})",
            )
        try:
            return deserialize(data)
        except DecodeError as error:
            return _Undecodable(
                grpc.StatusCode.INTERNAL, f"grpc: error unmarshalling request: {error}"
            )

    return decode


async def abort_if_undecodable(request: Any, context: grpc.aio.ServicerContext) -> None:
    """For handlers that read with `context.read()` instead of iterating their requests."""
    if isinstance(request, _Undecodable):
        await context.abort(request.code, request.message)


def _unary(behavior: Callable[..., Any]) -> Callable[..., Any]:
    async def handle(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await abort_if_undecodable(request, context)
        return await behavior(request, context)

    return handle


def _server_streaming(behavior: Callable[..., Any]) -> Callable[..., Any]:
    # grpc picks the calling convention from the function's kind: keep the original's.
    if inspect.isasyncgenfunction(behavior):

        async def generate(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            await abort_if_undecodable(request, context)
            async for response in behavior(request, context):
                yield response

        return generate
    return _unary(behavior)


async def _checked(
    requests: AsyncIterator[Any], context: grpc.aio.ServicerContext
) -> AsyncIterator[Any]:
    async for request in requests:
        await abort_if_undecodable(request, context)
        yield request


def _streaming(behavior: Callable[..., Any]) -> Callable[..., Any]:
    if inspect.isasyncgenfunction(behavior):

        async def generate(
            requests: AsyncIterator[Any], context: grpc.aio.ServicerContext
        ) -> AsyncIterator[Any]:
            async for response in behavior(_checked(requests, context), context):
                yield response

        return generate

    async def handle(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> Any:
        return await behavior(_checked(requests, context), context)

    return handle


class StrictDecodingInterceptor(HandlerWrappingInterceptor):
    """`max_message_bytes` is etcd's receive limit (--max-request-bytes plus gRPC's overhead
    allowance); None leaves the size to the C core."""

    def __init__(self, max_message_bytes: int | None = None) -> None:
        super().__init__()
        self.max_message_bytes = max_message_bytes

    def wrap(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        deserialize = _tolerant(handler.request_deserializer, self.max_message_bytes)
        changes: dict[str, Any] = {"request_deserializer": deserialize}
        if handler.unary_unary is not None:
            changes["unary_unary"] = _unary(handler.unary_unary)
        elif handler.unary_stream is not None:
            changes["unary_stream"] = _server_streaming(handler.unary_stream)
        elif handler.stream_unary is not None:
            changes["stream_unary"] = _streaming(handler.stream_unary)
        elif handler.stream_stream is not None:
            changes["stream_stream"] = _streaming(handler.stream_stream)
        return handler._replace(**changes)  # type: ignore[attr-defined]
