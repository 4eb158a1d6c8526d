"""What every gRPC method shares: etcd's `hasleader` metadata rule and the error translation."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc

from raftkv.api import errors
from raftkv.node.server import MemberServer

RequireLeaderKey = "hasleader"

Req = TypeVar("Req")
Resp = TypeVar("Resp")


def requires_leader(context: grpc.aio.ServicerContext) -> bool:
    return any(
        key == RequireLeaderKey and value == "true"
        for key, value in (context.invocation_metadata() or ())
    )


async def abort_with(context: grpc.aio.ServicerContext, error: BaseException) -> None:
    """Abort the call with etcd's status for a domain error; re-raise anything else."""
    mapped = errors.lookup(error)
    if mapped is None:
        raise error
    await context.abort(mapped.code, mapped.message)


def unary(
    method: Callable[[Any, Req, grpc.aio.ServicerContext], Awaitable[Resp]],
) -> Callable[[Any, Req, grpc.aio.ServicerContext], Awaitable[Resp]]:
    """Wrap a unary servicer method: leader requirement, then etcd's errors."""

    @functools.wraps(method)
    async def wrapper(self: Any, request: Req, context: grpc.aio.ServicerContext) -> Resp:
        server: MemberServer = self.server
        try:
            if requires_leader(context):
                server.node.require_leader()
            return await method(self, request, context)
        except Exception as error:
            await abort_with(context, error)
            raise  # unreachable: abort raises

    return wrapper


def in_process(
    method: Callable[[Any, Req, grpc.aio.ServicerContext], Awaitable[Resp]],
) -> Callable[[Any, Req, grpc.aio.ServicerContext], Awaitable[Resp]]:
    """Wrap a unary Lock or Election method. etcd serves these through an in-process client
    whose errors lose their gRPC code, so every domain error reaches the caller as Unknown with
    etcd's message; only the hasleader check (an interceptor in etcd) keeps its own code."""

    @functools.wraps(method)
    async def wrapper(self: Any, request: Req, context: grpc.aio.ServicerContext) -> Resp:
        server: MemberServer = self.server
        try:
            if requires_leader(context):
                server.node.require_leader()
        except Exception as error:
            await abort_with(context, error)
        try:
            return await method(self, request, context)
        except Exception as error:
            mapped = errors.lookup(error)
            if mapped is None:
                raise
            await context.abort(grpc.StatusCode.UNKNOWN, mapped.message)
            raise  # unreachable: abort raises

    return wrapper
