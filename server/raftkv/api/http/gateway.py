"""etcd's JSON gateway: the `/v3/...` (and `/v3beta/...`) POST paths on the client URLs.

etcd 3.4 serves them with grpc-gateway, which turns each HTTP request into a gRPC call to the
member itself. raftkv does the same: every request becomes a call on a gRPC channel to the
member's own internal socket, so the gateway runs the very code path gRPC clients get
(interceptors, metrics, tracing, auth, learner and leader rules, error translation) and adds
only the JSON mapping, which is what this module is:

- the body is JSON for the method's request message (protobuf's JSON mapping: bytes in base64,
  64-bit integers as strings or numbers, proto or camelCase field names, unknown fields
  ignored); an empty body is the empty message. Bytes are standard base64 with padding and
  nothing else, refused with Go's "illegal base64 data at input byte N" as etcd's gateway does
  (protobuf's Python parser would silently skip what is not base64, turning a typo into
  another key). Nesting deeper than Python's recursion limit is refused, not a crash;
- the answer is the response message in JSON with the proto field names (`range_end`,
  `create_revision`), 64-bit integers as strings, default values left out — grpc-gateway's
  OrigName marshalling as etcd configures it;
- a gRPC error becomes `{"error": msg, "message": msg, "code": grpc_code}` with the HTTP status
  grpc-gateway 1.x gives that code (FailedPrecondition is 412, OutOfRange 400...);
- a streaming method answers one `{"result": {...}}` line per response message. Its body may
  hold several JSON request objects one after the other (a watch create and a cancel); a watch
  call stays open after them until the HTTP client goes away, a keep-alive ends with them.
  One body holds at most MAX_STREAM_REQUESTS of them.

The `Authorization` header is passed on as the `token` metadata raftkv's auth reads, as etcd's
gateway passes it to its gRPC server.
"""

from __future__ import annotations

import asyncio
import functools
import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from enum import Enum
from http import HTTPStatus
from typing import Any

import grpc
from google.protobuf import json_format, message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor, MethodDescriptor
from google.protobuf.message import Message

from raftkv.api.http.router import JSON, HttpRouter, Request, Response
from raftkv.pb.etcdserverpb import rpc_pb2
from raftkv.pb.v3electionpb import v3election_pb2
from raftkv.pb.v3lockpb import v3lock_pb2

PREFIXES = ("/v3", "/v3beta")
# Request objects in the body of one streaming call (watch creates, keep-alives).
MAX_STREAM_REQUESTS = 1000

# grpc-gateway 1.x's HTTP status for each gRPC code (observed on etcd 3.4 where reachable).
HTTP_STATUS: dict[grpc.StatusCode, int] = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.CANCELLED: 408,
    grpc.StatusCode.UNKNOWN: 500,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.FAILED_PRECONDITION: 412,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DATA_LOSS: 500,
}
# etcd's gateway sends these on every answer (browsers may call it).
CORS_HEADERS = [
    ("access-control-allow-headers", "accept, content-type, authorization"),
    ("access-control-allow-methods", "POST, GET, OPTIONS, PUT, DELETE"),
    ("access-control-allow-origin", "*"),
]


class Kind(Enum):
    UNARY = "unary"
    SERVER_STREAM = "server-stream"  # one request, a stream of responses
    BIDI_OPEN = "bidi-open"  # requests from the body, then kept open (watch)
    BIDI_CLOSED = "bidi-closed"  # requests from the body, then half-closed (keep-alive)


@dataclass(frozen=True)
class Route:
    path: str  # after the version prefix
    method: MethodDescriptor
    kind: Kind

    @property
    def grpc_path(self) -> str:
        return f"/{self.method.containing_service.full_name}/{self.method.name}"

    @property
    def request_class(self) -> type[Message]:
        return message_factory.GetMessageClass(self.method.input_type)

    @property
    def response_class(self) -> type[Message]:
        return message_factory.GetMessageClass(self.method.output_type)


def _routes() -> Iterator[Route]:
    services = {
        **rpc_pb2.DESCRIPTOR.services_by_name,
        **v3lock_pb2.DESCRIPTOR.services_by_name,
        **v3election_pb2.DESCRIPTOR.services_by_name,
    }
    # (path, service, method, kind); the paths etcd 3.4 serves, plus 3.5's /maintenance/hashkv.
    table = [
        ("/kv/range", "KV", "Range", Kind.UNARY),
        ("/kv/put", "KV", "Put", Kind.UNARY),
        ("/kv/deleterange", "KV", "DeleteRange", Kind.UNARY),
        ("/kv/txn", "KV", "Txn", Kind.UNARY),
        ("/kv/compaction", "KV", "Compact", Kind.UNARY),
        ("/watch", "Watch", "Watch", Kind.BIDI_OPEN),
        ("/lease/grant", "Lease", "LeaseGrant", Kind.UNARY),
        ("/lease/revoke", "Lease", "LeaseRevoke", Kind.UNARY),
        ("/kv/lease/revoke", "Lease", "LeaseRevoke", Kind.UNARY),
        ("/lease/keepalive", "Lease", "LeaseKeepAlive", Kind.BIDI_CLOSED),
        ("/lease/timetolive", "Lease", "LeaseTimeToLive", Kind.UNARY),
        ("/kv/lease/timetolive", "Lease", "LeaseTimeToLive", Kind.UNARY),
        ("/lease/leases", "Lease", "LeaseLeases", Kind.UNARY),
        ("/kv/lease/leases", "Lease", "LeaseLeases", Kind.UNARY),
        ("/cluster/member/add", "Cluster", "MemberAdd", Kind.UNARY),
        ("/cluster/member/remove", "Cluster", "MemberRemove", Kind.UNARY),
        ("/cluster/member/update", "Cluster", "MemberUpdate", Kind.UNARY),
        ("/cluster/member/list", "Cluster", "MemberList", Kind.UNARY),
        ("/cluster/member/promote", "Cluster", "MemberPromote", Kind.UNARY),
        ("/maintenance/alarm", "Maintenance", "Alarm", Kind.UNARY),
        ("/maintenance/status", "Maintenance", "Status", Kind.UNARY),
        ("/maintenance/defragment", "Maintenance", "Defragment", Kind.UNARY),
        ("/maintenance/hash", "Maintenance", "Hash", Kind.UNARY),
        ("/maintenance/hashkv", "Maintenance", "HashKV", Kind.UNARY),
        ("/maintenance/snapshot", "Maintenance", "Snapshot", Kind.SERVER_STREAM),
        ("/maintenance/transfer-leadership", "Maintenance", "MoveLeader", Kind.UNARY),
        ("/auth/enable", "Auth", "AuthEnable", Kind.UNARY),
        ("/auth/disable", "Auth", "AuthDisable", Kind.UNARY),
        ("/auth/authenticate", "Auth", "Authenticate", Kind.UNARY),
        ("/auth/user/add", "Auth", "UserAdd", Kind.UNARY),
        ("/auth/user/get", "Auth", "UserGet", Kind.UNARY),
        ("/auth/user/list", "Auth", "UserList", Kind.UNARY),
        ("/auth/user/delete", "Auth", "UserDelete", Kind.UNARY),
        ("/auth/user/changepw", "Auth", "UserChangePassword", Kind.UNARY),
        ("/auth/user/grant", "Auth", "UserGrantRole", Kind.UNARY),
        ("/auth/user/revoke", "Auth", "UserRevokeRole", Kind.UNARY),
        ("/auth/role/add", "Auth", "RoleAdd", Kind.UNARY),
        ("/auth/role/get", "Auth", "RoleGet", Kind.UNARY),
        ("/auth/role/list", "Auth", "RoleList", Kind.UNARY),
        ("/auth/role/delete", "Auth", "RoleDelete", Kind.UNARY),
        ("/auth/role/grant", "Auth", "RoleGrantPermission", Kind.UNARY),
        ("/auth/role/revoke", "Auth", "RoleRevokePermission", Kind.UNARY),
        ("/lock/lock", "Lock", "Lock", Kind.UNARY),
        ("/lock/unlock", "Lock", "Unlock", Kind.UNARY),
        ("/election/campaign", "Election", "Campaign", Kind.UNARY),
        ("/election/proclaim", "Election", "Proclaim", Kind.UNARY),
        ("/election/leader", "Election", "Leader", Kind.UNARY),
        ("/election/observe", "Election", "Observe", Kind.SERVER_STREAM),
        ("/election/resign", "Election", "Resign", Kind.UNARY),
    ]
    for path, service, method, kind in table:
        yield Route(path, services[service].methods_by_name[method], kind)


ROUTES: tuple[Route, ...] = tuple(_routes())


class BadRequest(Exception):
    """The body is not JSON for the request message."""


def to_json(message: Message) -> dict[str, Any]:
    return json_format.MessageToDict(message, preserving_proto_field_name=True)


def parse_request(body: bytes, cls: type[Message]) -> Message:
    """One request message from a whole body (empty means the empty message)."""
    if not body.strip():
        return cls()
    try:
        value = _loads(json.loads, body)
    except (ValueError, UnicodeDecodeError) as error:
        raise BadRequest(str(error)) from error
    return _loads(_from_value, value, cls)


def parse_requests(body: bytes, cls: type[Message]) -> list[Message]:
    """The request messages of a streaming call: JSON objects one after another, at most
    MAX_STREAM_REQUESTS (a body of tiny objects would otherwise make a hundred times its size
    in messages)."""
    try:
        text = body.decode()
    except UnicodeDecodeError as error:
        raise BadRequest(str(error)) from error
    decoder = json.JSONDecoder()
    messages = []
    position = 0
    while True:
        while position < len(text) and text[position].isspace():
            position += 1
        if position == len(text):
            return messages
        try:
            value, position = _loads(decoder.raw_decode, text, position)
        except ValueError as error:
            raise BadRequest(str(error)) from error
        messages.append(_loads(_from_value, value, cls))
        if len(messages) > MAX_STREAM_REQUESTS:
            raise BadRequest(f"more than {MAX_STREAM_REQUESTS} requests in one body")


def _from_value(value: object, cls: type[Message]) -> Message:
    if not isinstance(value, dict):
        raise BadRequest(f"cannot read {type(value).__name__} as {cls.DESCRIPTOR.name}")
    try:
        _check_bytes(value, cls.DESCRIPTOR)
        return json_format.ParseDict(value, cls(), ignore_unknown_fields=True)
    except json_format.ParseError as error:
        raise BadRequest(str(error)) from error


def _loads(load: Any, *args: Any) -> Any:
    """`load(*args)` with JSON nested too deeply for Python's parser refused as bad input."""
    try:
        return load(*args)
    except RecursionError as error:
        raise BadRequest("invalid JSON: exceeded max depth") from error


def _check_bytes(value: dict[str, Any], descriptor: Descriptor) -> None:
    """Raise BadRequest for a bytes field that is not strict base64, in `value` (JSON for a
    `descriptor` message) and the messages nested in it."""
    for name, item in value.items():
        field = descriptor.fields_by_name.get(name) or _by_json_name(descriptor).get(name)
        if field is None or item is None:
            continue
        items = item if _is_repeated(field) and isinstance(item, list) else [item]
        for element in items:
            if field.type == FieldDescriptor.TYPE_BYTES and isinstance(element, str):
                go_base64_check(element)
            elif field.type == FieldDescriptor.TYPE_MESSAGE and isinstance(element, dict):
                _check_bytes(element, field.message_type)


def _is_repeated(field: FieldDescriptor) -> bool:
    return bool(field.is_repeated)


@functools.cache
def _by_json_name(descriptor: Descriptor) -> dict[str, FieldDescriptor]:
    return {field.json_name: field for field in descriptor.fields}


_BASE64_ALPHABET = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/")
_NEWLINES = frozenset(b"\r\n")


def go_base64_check(text: str) -> None:
    """Go's base64.StdEncoding rules (what etcd's gateway decodes bytes with): the standard
    alphabet, padding required, CR and LF ignored. Raises BadRequest with Go's message, which
    names the offset Go's decoder stops at."""
    data = text.encode()
    position = 0
    while position < len(data):
        position = _go_quantum(data, position)


def _go_quantum(data: bytes, position: int) -> int:
    """Check the 4-symbol group starting at `position`; the position after it."""
    symbols = 0
    while symbols < 4:
        if position == len(data):
            if symbols == 0:
                return position
            _corrupt(position - symbols)
        byte = data[position]
        position += 1
        if byte in _BASE64_ALPHABET:
            symbols += 1
        elif byte in _NEWLINES:
            continue
        elif byte != ord("=") or symbols < 2:
            _corrupt(position - 1)
        else:
            if symbols == 2:  # a second "=" must follow
                position = _skip_newlines(data, position)
                if position == len(data):
                    _corrupt(len(data))
                if data[position] != ord("="):
                    _corrupt(position - 1)
                position += 1
            position = _skip_newlines(data, position)
            if position < len(data):
                _corrupt(position)  # data after the padding
            return position
    return position


def _skip_newlines(data: bytes, position: int) -> int:
    while position < len(data) and data[position] in _NEWLINES:
        position += 1
    return position


def _corrupt(offset: int) -> None:
    raise BadRequest(f"illegal base64 data at input byte {offset}")


def _json_response(value: object, status: int = 200) -> Response:
    response = Response.json(value, status)
    response.headers.extend(CORS_HEADERS)
    return response


def error_response(code: grpc.StatusCode, message: str) -> Response:
    """etcd's gateway error object, with grpc-gateway's HTTP status for `code`."""
    body = {"error": message, "message": message, "code": code.value[0]}
    return _json_response(body, HTTP_STATUS.get(code, 500))


def stream_error(code: grpc.StatusCode, message: str) -> dict[str, Any]:
    """grpc-gateway 1.x's object for an error on a streaming call."""
    status = HTTP_STATUS.get(code, 500)
    return {
        "error": {
            "grpc_code": code.value[0],
            "http_code": status,
            "message": message,
            "http_status": HTTPStatus(status).phrase,
        }
    }


def _line(value: object) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode() + b"\n"


def _metadata(request: Request) -> tuple[tuple[str, str], ...]:
    token = request.header("authorization")
    return (("token", token),) if token else ()


class JsonGateway:
    """Serves the gateway paths by calling the member over `channel` (its own gRPC socket)."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self._channel = channel

    @classmethod
    def to_target(cls, grpc_target: str) -> JsonGateway:
        """A gateway with its own channel to `grpc_target` (closed by `close`)."""
        # No size limits of its own, as etcd's gateway: the member applies its limits to the
        # request, and a large Range answer passes.
        options = [
            ("grpc.enable_retries", 0),
            ("grpc.max_receive_message_length", -1),
            ("grpc.max_send_message_length", -1),
        ]
        return cls(grpc.aio.insecure_channel(grpc_target, options=options))

    async def close(self) -> None:
        await self._channel.close()

    def mount(self, router: HttpRouter) -> None:
        for prefix in PREFIXES:
            for route in ROUTES:
                router.add("POST", prefix + route.path, self._handler(route))
                router.add("OPTIONS", prefix + route.path, _preflight)
            # grpc-gateway's answer for any other path under the prefix.
            router.add("*", prefix + "/", _not_found)

    def _handler(self, route: Route) -> Any:
        async def handle(request: Request) -> Response:
            return await self.serve(route, request)

        return handle

    async def serve(self, route: Route, request: Request) -> Response:
        if route.kind is Kind.UNARY:
            return await self._unary(route, request)
        return await self._stream(route, request)

    async def _unary(self, route: Route, request: Request) -> Response:
        try:
            message = parse_request(request.body, route.request_class)
        except BadRequest as error:
            return error_response(grpc.StatusCode.INVALID_ARGUMENT, str(error))
        call = self._channel.unary_unary(
            route.grpc_path,
            request_serializer=route.request_class.SerializeToString,
            response_deserializer=route.response_class.FromString,
        )
        try:
            response = await call(message, metadata=_metadata(request))
        except grpc.aio.AioRpcError as error:
            return error_response(error.code(), error.details() or "")
        return _json_response(to_json(response))

    async def _stream(self, route: Route, request: Request) -> Response:
        metadata = _metadata(request)
        call: grpc.aio.Call
        if route.kind is Kind.SERVER_STREAM:
            try:
                message = parse_request(request.body, route.request_class)
            except BadRequest as error:
                return error_response(grpc.StatusCode.INVALID_ARGUMENT, str(error))
            call = self._channel.unary_stream(
                route.grpc_path,
                request_serializer=route.request_class.SerializeToString,
                response_deserializer=route.response_class.FromString,
            )(message, metadata=metadata)
        else:
            try:
                messages = parse_requests(request.body, route.request_class)
            except BadRequest as error:
                # grpc-gateway reports a bad streamed body as Unknown (500).
                return error_response(grpc.StatusCode.UNKNOWN, str(error))
            call = self._channel.stream_stream(
                route.grpc_path,
                request_serializer=route.request_class.SerializeToString,
                response_deserializer=route.response_class.FromString,
            )(_requests(messages, keep_open=route.kind is Kind.BIDI_OPEN), metadata=metadata)
        responses = aiter(call)
        if route.kind is not Kind.SERVER_STREAM or route.method.name != "Observe":
            # The first answer decides the status, as in grpc-gateway. Observe may wait for a
            # leader indefinitely, so its headers go first (the socket is watched from then on).
            try:
                first = await anext(responses)
            except StopAsyncIteration:
                return _streamed(call, None, responses)
            except grpc.aio.AioRpcError as error:
                status = HTTP_STATUS.get(error.code(), 500)
                return _json_response(stream_error(error.code(), error.details() or ""), status)
            return _streamed(call, first, responses)
        return _streamed(call, None, responses)


async def _requests(messages: list[Message], *, keep_open: bool) -> AsyncIterator[Message]:
    for message in messages:
        yield message
    if keep_open:
        await asyncio.Event().wait()  # until the call is cancelled


def _streamed(call: grpc.aio.Call, first: Message | None, rest: AsyncIterator[Message]) -> Response:
    async def lines() -> AsyncIterator[bytes]:
        try:
            if first is not None:
                yield _line({"result": to_json(first)})
            try:
                async for message in rest:
                    yield _line({"result": to_json(message)})
            except grpc.aio.AioRpcError as error:
                yield _line(stream_error(error.code(), error.details() or ""))
        finally:
            call.cancel()

    response = Response(200, content_type=JSON, stream=lines())
    response.headers.extend(CORS_HEADERS)
    return response


async def _preflight(request: Request) -> Response:
    return Response(200, headers=list(CORS_HEADERS))


async def _not_found(request: Request) -> Response:
    return Response(404, b"Not Found\n", headers=[("x-content-type-options", "nosniff")])
