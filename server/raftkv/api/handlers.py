"""What every gRPC method shares: etcd's learner and `hasleader` rules, the caller, the errors.

Every method runs with the caller's credentials bound to its task (`raftkv.auth.identity`): the
`token` metadata (else `authorization`, as etcd reads them), and the TLS client certificate's
common name where there is one. Nothing is checked here; the checks happen where etcd makes
them, through the member's `AuthGate`: proposals name the caller and are authorized when
applied, local reads and admin calls are checked where they are served.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc

from raftkv.api import errors
from raftkv.auth import Credentials, identity
from raftkv.node.errors import NotSupportedForLearnerError
from raftkv.node.server import MemberServer
from raftkv.pb.etcdserverpb import rpc_pb2

RequireLeaderKey = "hasleader"
# Where etcd looks for the auth token, in this order.
TOKEN_KEYS = ("token", "authorization")

Req = TypeVar("Req")
Resp = TypeVar("Resp")


def requires_leader(context: grpc.aio.ServicerContext) -> bool:
    return any(
        key == RequireLeaderKey and value == "true"
        for key, value in (context.invocation_metadata() or ())
    )


def credentials(context: grpc.aio.ServicerContext) -> Credentials:
    """What the caller presented (a token, a client certificate), unchecked."""
    metadata = context.invocation_metadata() or ()
    token = next((value for wanted in TOKEN_KEYS for key, value in metadata if key == wanted), None)
    names = (context.auth_context() or {}).get("x509_common_name")
    common_name = names[0].decode() if names else None
    return Credentials(token=token, common_name=common_name)


def token_metadata(context: grpc.aio.ServicerContext) -> list[tuple[str, str]]:
    """The caller's token metadata, for a call forwarded to another member on its behalf."""
    return [(k, v) for k, v in (context.invocation_metadata() or ()) if k in TOKEN_KEYS]


def refuse_on_learner(server: MemberServer, request: object) -> None:
    """etcd's rule: a learner answers only Status and serializable Range requests."""
    if not server.is_learner:
        return
    if isinstance(request, rpc_pb2.StatusRequest):
        return
    if isinstance(request, rpc_pb2.RangeRequest) and request.serializable:
        return
    raise NotSupportedForLearnerError()


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
            refuse_on_learner(server, request)
            if requires_leader(context):
                server.node.require_leader()
            with identity.bound(credentials(context)):
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
            refuse_on_learner(server, request)
            if requires_leader(context):
                server.node.require_leader()
        except Exception as error:
            await abort_with(context, error)
        try:
            with identity.bound(credentials(context)):
                return await method(self, request, context)
        except Exception as error:
            mapped = errors.lookup(error)
            if mapped is None:
                raise
            await context.abort(grpc.StatusCode.UNKNOWN, mapped.message)
            raise  # unreachable: abort raises

    return wrapper
