"""Requests, responses and the router that maps HTTP paths to handlers.

Handlers are plain coroutines `async def handler(request: Request) -> Response`, mounted with
`HttpRouter.add(method, path, handler)`. A path ending in `/` mounts a prefix (`/v3/` serves
`/v3/kv/range`...), any other path matches exactly; the longest match wins, so a later
`/v3/watch` beats the `/v3/` prefix. A response either carries its whole `body` or streams an
async iterator of byte chunks (`Response(stream=...)`, sent with chunked encoding), which is
what the JSON gateway's `/v3/watch` needs; the stream is closed if the client goes away.

Nothing here touches sockets (`conn.py` does), so the routing rules are tested alone.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

TEXT = "text/plain; charset=utf-8"
JSON = "application/json"


@dataclass
class Request:
    method: str
    target: str  # the request target as sent: path and query
    headers: list[tuple[str, str]] = field(default_factory=list)  # names in lower case
    body: bytes = b""

    @property
    def path(self) -> str:
        return urlsplit(self.target).path

    @property
    def query(self) -> dict[str, list[str]]:
        return parse_qs(urlsplit(self.target).query)

    def header(self, name: str) -> str | None:
        name = name.lower()
        for key, value in self.headers:
            if key == name:
                return value
        return None


@dataclass
class Response:
    status: int = 200
    body: bytes = b""
    content_type: str = TEXT
    headers: list[tuple[str, str]] = field(default_factory=list)
    # When set, the body is this iterator's chunks, sent as they come (chunked encoding).
    stream: AsyncIterator[bytes] | None = None

    @classmethod
    def json(cls, value: Any, status: int = 200) -> Response:
        return cls(status, json.dumps(value, separators=(",", ":")).encode(), JSON)

    @classmethod
    def text(cls, text: str, status: int = 200) -> Response:
        return cls(status, text.encode())


Handler = Callable[[Request], Awaitable[Response]]


def not_found() -> Response:
    return Response.text("404 page not found\n", 404)


class HttpRouter:
    """Maps (method, path) to a handler; see the module docstring for the matching rules."""

    def __init__(self) -> None:
        self._exact: dict[str, dict[str, Handler]] = {}
        self._prefixes: list[tuple[str, dict[str, Handler]]] = []

    def add(self, method: str, path: str, handler: Handler) -> None:
        """Serve `method` (`GET`, `POST`..., or `*` for any) on `path` (a prefix if it ends
        with `/`). A GET handler also answers HEAD, without the body."""
        if not path.startswith("/"):
            raise ValueError(f"path {path!r} must start with /")
        if path.endswith("/") and path != "/":
            methods = next((m for p, m in self._prefixes if p == path), None)
            if methods is None:
                methods = {}
                self._prefixes.append((path, methods))
                self._prefixes.sort(key=lambda item: len(item[0]), reverse=True)
        else:
            methods = self._exact.setdefault(path, {})
        key = method.upper()
        if key in methods:
            raise ValueError(f"{key} {path} is already mounted")
        methods[key] = handler

    def _methods(self, path: str) -> dict[str, Handler] | None:
        methods = self._exact.get(path)
        if methods is not None:
            return methods
        for prefix, methods in self._prefixes:
            if path.startswith(prefix):
                return methods
        return None

    async def dispatch(self, request: Request) -> Response:
        methods = self._methods(request.path)
        if methods is None:
            return not_found()
        method = "GET" if request.method == "HEAD" else request.method
        handler = methods.get(method) or methods.get("*")
        if handler is None:
            allowed = sorted({*methods} - {"*"} | ({"HEAD"} if "GET" in methods else set()))
            response = Response.text("Method Not Allowed\n", 405)
            response.headers.append(("allow", ", ".join(allowed)))
            return response
        return await handler(request)
