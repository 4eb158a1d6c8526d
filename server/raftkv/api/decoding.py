"""Undecodable requests get grpc-go's answer, as etcd gives it: INTERNAL, "grpc: error
unmarshalling request: ...".

grpcio would answer UNKNOWN with a Python exception name. An interceptor rewrites every
method handler so its deserializer returns a marker instead of raising, and the handler aborts
the call when it meets the marker, on unary and streaming requests alike (handlers that read
with `context.read()` call `abort_if_undecodable` themselves).
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from raftkv.observability.interceptors import HandlerWrappingInterceptor


class _Undecodable:
    __slots__ = ("error",)

    def __init__(self, error: DecodeError) -> None:
        self.error = error


def _message(marker: _Undecodable) -> str:
    return f"grpc: error unmarshalling request: {marker.error}"


def _tolerant(deserialize: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    if deserialize is None:
        return None

    def decode(data: bytes) -> Any:
        try:
            return deserialize(data)
        except DecodeError as error:
            return _Undecodable(error)

    return decode


async def abort_if_undecodable(request: Any, context: grpc.aio.ServicerContext) -> None:
    """For handlers that read with `context.read()` instead of iterating their requests."""
    if isinstance(request, _Undecodable):
        await context.abort(grpc.StatusCode.INTERNAL, _message(request))


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
    def wrap(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        changes: dict[str, Any] = {"request_deserializer": _tolerant(handler.request_deserializer)}
        if handler.unary_unary is not None:
            changes["unary_unary"] = _unary(handler.unary_unary)
        elif handler.unary_stream is not None:
            changes["unary_stream"] = _server_streaming(handler.unary_stream)
        elif handler.stream_unary is not None:
            changes["stream_unary"] = _streaming(handler.stream_unary)
        elif handler.stream_stream is not None:
            changes["stream_stream"] = _streaming(handler.stream_stream)
        return handler._replace(**changes)  # type: ignore[attr-defined]
