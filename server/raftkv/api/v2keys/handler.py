"""`/v2/keys` over HTTP: etcd 3.4's v2 request parameters, answers, statuses and headers.

This module is only the HTTP edge: it reads the form (body fields before query fields, as Go's
`FormValue`), validates every parameter in etcd's order with etcd's error codes (those carry
index 0: nothing was read yet), calls `V2Store`, and writes the JSON (Go's encoder: a trailing
newline, `<>&` escaped) with `X-Etcd-Index`, `X-Raft-Index`, `X-Raft-Term`,
`X-Etcd-Cluster-Id` and the CORS headers etcd sends. A `wait=true` GET answers its headers at
once and the event's JSON when it happens (chunked), which is how etcd's long-poll behaves.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Callable
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import grpc

from raftkv.api.http.router import JSON, HttpRouter, Request, Response
from raftkv.api.v2keys import mapping
from raftkv.api.v2keys.errors import (
    INDEX_NAN,
    INVALID_FIELD,
    INVALID_FORM,
    PREV_VALUE_REQUIRED,
    REFRESH_TTL_REQUIRED,
    REFRESH_VALUE,
    TTL_NAN,
    V2Error,
)
from raftkv.api.v2keys.store import Result, V2Store
from raftkv.api.v2keys.v3 import GrpcV3

PATH = "/v2/keys"
ALLOWED = "HEAD,GET,PUT,POST,DELETE"
CORS_HEADERS = [
    ("Access-Control-Allow-Headers", "accept, content-type, authorization"),
    ("Access-Control-Allow-Methods", "POST, GET, OPTIONS, PUT, DELETE"),
    ("Access-Control-Allow-Origin", "*"),
]
_TRUE = {"1", "t", "T", "TRUE", "true", "True"}
_FALSE = {"0", "f", "F", "FALSE", "false", "False"}
_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")


def encode(value: Any) -> bytes:
    """JSON as Go's encoding/json writes it to a response."""
    text = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    for char, escaped in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026")):
        text = text.replace(char, escaped)
    return text.encode() + b"\n"


class Form:
    """The request's fields: a form body's first, then the query's (Go's `r.Form`)."""

    def __init__(self, request: Request) -> None:
        fields: dict[str, list[str]] = {}
        content_type = (request.header("content-type") or "").split(";")[0].strip().lower()
        if request.method in ("POST", "PUT", "PATCH") and (
            content_type == "application/x-www-form-urlencoded"
        ):
            body = request.body.decode(errors="replace")
            _check_escapes(body)
            fields = parse_qs(body, keep_blank_values=True)
        raw_query = urlsplit(request.target).query
        _check_escapes(raw_query)
        query = parse_qs(raw_query, keep_blank_values=True)
        for name, values in query.items():
            fields.setdefault(name, []).extend(values)
        self._fields = fields

    def has(self, name: str) -> bool:
        return name in self._fields

    def get(self, name: str) -> str:
        values = self._fields.get(name)
        return values[0] if values else ""

    def boolean(self, name: str, cause: str | None = None) -> bool | None:
        """Go's strconv.ParseBool of the field; None when absent or empty."""
        text = self.get(name)
        if not text:
            return None
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
        raise V2Error(INVALID_FIELD, cause or f'invalid value for "{name}"')

    def uint(self, name: str, code: int) -> int | None:
        if not self.has(name):
            return None
        text = self.get(name)
        if not text.isascii() or not text.isdigit() or int(text) >= 2**64:
            raise V2Error(code, f'invalid value for "{name}"')
        return int(text)


def _check_escapes(raw: str) -> None:
    """Go's form parser refuses a `%` not followed by two hex digits; etcd answers 210."""
    bad = _BAD_ESCAPE.search(raw)
    if bad is not None:
        escape = raw[bad.start() : bad.start() + 3]
        raise V2Error(INVALID_FORM, f'invalid URL escape "{escape}"')


def parse(request: Request) -> dict[str, Any]:
    """The key request's options, validated in etcd's order."""
    form = Form(request)
    options: dict[str, Any] = {
        "prev_index": form.uint("prevIndex", INDEX_NAN) or 0,
        "wait_index": form.uint("waitIndex", INDEX_NAN) or 0,
    }
    for name in ("recursive", "sorted", "wait", "dir", "quorum", "stream"):
        options[name] = bool(form.boolean(name))
    if options["wait"] and request.method not in ("GET", "HEAD"):
        raise V2Error(INVALID_FIELD, '"wait" can only be used with GET requests')
    options["value_set"] = form.has("value")
    options["value"] = form.get("value")
    options["prev_value"] = form.get("prevValue") if form.has("prevValue") else None
    if options["prev_value"] == "":
        raise V2Error(PREV_VALUE_REQUIRED, '"prevValue" cannot be empty')
    ttl_text = form.get("ttl")
    options["ttl"] = form.uint("ttl", TTL_NAN) if ttl_text else None
    options["prev_exist"] = form.boolean("prevExist", "invalid value for prevExist")
    options["refresh"] = bool(form.boolean("refresh"))
    if options["refresh"]:
        if options["value_set"]:
            raise V2Error(REFRESH_VALUE, "A value was provided on a refresh")
        if options["ttl"] is None:
            raise V2Error(REFRESH_TTL_REQUIRED, "No TTL value set")
    return options


def _redirect(request: Request) -> Response | None:
    """Go's ServeMux sends a request for an unclean path to the clean one."""
    raw = request.path
    clean = mapping.clean_path(raw)
    if raw.endswith("/") and clean != "/":
        clean += "/"
    if clean == raw:
        return None
    query = urlsplit(request.target).query
    location = clean + (f"?{query}" if query else "")
    body = f'<a href="{location}">Moved Permanently</a>.\n\n'.encode()
    return Response(301, body, "text/html; charset=utf-8", [("Location", location)])


class V2KeysApi:
    """Serves `/v2/keys` from a `V2Store`; `raft_index` reads the member's applied index."""

    def __init__(self, store: V2Store, raft_index: Callable[[], int]) -> None:
        self._store = store
        self._raft_index = raft_index
        self._channel: grpc.aio.Channel | None = None
        self._cluster_id = 0  # learned from the first answer, for error headers

    @classmethod
    def to_target(cls, grpc_target: str, raft_index: Callable[[], int]) -> V2KeysApi:
        """An API with its own channel to the member's gRPC socket (closed by `close`)."""
        channel = grpc.aio.insecure_channel(grpc_target, options=[("grpc.enable_retries", 0)])
        api = cls(V2Store(GrpcV3(channel)), raft_index)
        api._channel = channel
        return api

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()

    def mount(self, router: HttpRouter) -> None:
        router.add("*", PATH, self.serve)
        router.add("*", PATH + "/", self.serve)

    async def serve(self, request: Request) -> Response:
        redirect = _redirect(request)
        if redirect is not None:
            return redirect
        method = "GET" if request.method == "HEAD" else request.method
        if method not in ("GET", "PUT", "POST", "DELETE"):
            headers = [("Allow", ALLOWED), ("X-Content-Type-Options", "nosniff")]
            return Response(405, b"Method Not Allowed\n", headers=headers)
        path = mapping.clean_path(unquote(request.path[len(PATH) :]))
        try:
            options = parse(request)
            if method == "GET" and options["wait"]:
                return await self._wait(path, options)
            result = await self._call(method, path, options)
        except V2Error as error:
            return self._error(error)
        self._cluster_id = result.cluster_id
        headers = self._headers(result.cluster_id, result.index, result.term)
        status = 201 if result.created else 200
        return Response(status, encode(result.to_json()), JSON, headers)

    async def _call(self, method: str, path: str, o: dict[str, Any]) -> Result:
        store = self._store
        if method == "GET":
            return await store.get(path, recursive=o["recursive"], sort=o["sorted"])
        if method == "POST":
            return await store.create_in_order(
                path, value=o["value"], is_dir=o["dir"], ttl=o["ttl"]
            )
        if method == "DELETE":
            return await store.delete(
                path,
                is_dir=o["dir"],
                recursive=o["recursive"],
                prev_value=o["prev_value"],
                prev_index=o["prev_index"],
            )
        return await store.put(
            path,
            value="" if o["dir"] else o["value"],
            is_dir=o["dir"],
            ttl=o["ttl"],
            prev_exist=o["prev_exist"],
            prev_value=o["prev_value"],
            prev_index=o["prev_index"],
            refresh=o["refresh"],
        )

    async def _wait(self, path: str, o: dict[str, Any]) -> Response:
        index, term, cluster_id, events = await self._store.wait(
            path, recursive=o["recursive"], wait_index=o["wait_index"]
        )

        async def body() -> AsyncIterator[bytes]:
            try:
                async for event in events:
                    yield encode(event)
            except V2Error:
                return  # the member stopped serving the watch: end the answer without an event
            finally:
                await events.aclose()  # type: ignore[attr-defined]

        return Response(
            200, content_type=JSON, headers=self._headers(cluster_id, index, term), stream=body()
        )

    def _headers(self, cluster_id: int, index: int, term: int) -> list[tuple[str, str]]:
        return [
            *CORS_HEADERS,
            ("X-Etcd-Cluster-Id", f"{cluster_id:x}"),
            ("X-Etcd-Index", str(index)),
            ("X-Raft-Index", str(self._raft_index())),
            ("X-Raft-Term", str(term)),
        ]

    def _error(self, error: V2Error) -> Response:
        headers = [*CORS_HEADERS, ("X-Etcd-Index", str(error.index))]
        if self._cluster_id:
            headers.insert(len(CORS_HEADERS), ("X-Etcd-Cluster-Id", f"{self._cluster_id:x}"))
        return Response(error.status, encode(error.to_json()), JSON, headers)
