"""The HTTP router and the HTTP/1.1 connection loop (others mount the JSON gateway on them)."""

from __future__ import annotations

import asyncio
import http.client
import socket
from collections.abc import AsyncIterator

import pytest
from raftkv.api.http import HttpRouter, Request, Response, serve_http


async def echo(request: Request) -> Response:
    size = len(request.body)
    return Response.json({"method": request.method, "path": request.path, "size": size})


def test_exact_paths_prefixes_and_the_longest_match() -> None:
    router = HttpRouter()

    def named(name: str):  # type: ignore[no-untyped-def]
        async def handler(request: Request) -> Response:
            return Response.text(name)

        return handler

    router.add("POST", "/v3/", named("gateway"))
    router.add("POST", "/v3/watch", named("watch"))
    router.add("GET", "/health", named("health"))

    def call(method: str, target: str) -> tuple[int, bytes]:
        response = asyncio.run(router.dispatch(Request(method, target)))
        return response.status, response.body

    assert call("POST", "/v3/kv/range") == (200, b"gateway")
    assert call("POST", "/v3/watch") == (200, b"watch")
    assert call("GET", "/health?serializable=true") == (200, b"health")
    assert call("HEAD", "/health") == (200, b"health")
    assert call("GET", "/healthz")[0] == 404
    assert call("GET", "/v3")[0] == 404
    status, _ = call("DELETE", "/health")
    assert status == 405
    response = asyncio.run(router.dispatch(Request("PUT", "/health")))
    assert ("allow", "GET, HEAD") in response.headers
    with pytest.raises(ValueError, match="already mounted"):
        router.add("GET", "/health", named("again"))
    with pytest.raises(ValueError, match="must start with /"):
        router.add("GET", "health", named("bad"))


def test_query_and_headers_are_parsed() -> None:
    request = Request("GET", "/health?exclude=NOSPACE&exclude=CORRUPT", [("accept", "*/*")])
    assert request.path == "/health"
    assert request.query == {"exclude": ["NOSPACE", "CORRUPT"]}
    assert request.header("Accept") == "*/*"
    assert request.header("x-missing") is None


async def with_server(router: HttpRouter, client, max_body_bytes: int = 1024):  # type: ignore[no-untyped-def]
    """Serve `router` on a free port while `client(port)` runs in a thread; its result."""
    server = await serve_http("127.0.0.1", 0, router, max_body_bytes=max_body_bytes)
    port = server.sockets[0].getsockname()[1]
    try:
        return await asyncio.to_thread(client, port)
    finally:
        server.close()
        await server.wait_closed()


def test_keep_alive_bodies_and_head() -> None:
    router = HttpRouter()
    router.add("*", "/echo", echo)

    def client(port: int) -> tuple[list[tuple[int, bytes, str | None]], set[int]]:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        results, sockets = [], set()
        for method, body in (("GET", None), ("POST", b"x" * 100), ("HEAD", None)):
            conn.request(method, "/echo", body=body)
            response = conn.getresponse()
            results.append((response.status, response.read(), response.getheader("content-length")))
            sockets.add(id(conn.sock))
        conn.close()
        return results, sockets

    (get, post, head), sockets = asyncio.run(with_server(router, client))
    assert len(sockets) == 1  # one connection carried all three requests
    assert get[:2] == (200, b'{"method":"GET","path":"/echo","size":0}')
    assert post[:2] == (200, b'{"method":"POST","path":"/echo","size":100}')
    assert head[:2] == (200, b"")  # HEAD announces the length of what GET would send
    assert head[2] == str(len(b'{"method":"HEAD","path":"/echo","size":0}'))


def test_a_body_over_the_limit_is_refused() -> None:
    router = HttpRouter()
    router.add("POST", "/echo", echo)

    def client(port: int) -> int:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        conn.request("POST", "/echo", body=b"x" * 5000)
        return conn.getresponse().status

    assert asyncio.run(with_server(router, client, max_body_bytes=1000)) == 413


def test_malformed_requests_get_400() -> None:
    def client(port: int) -> bytes:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(b"NOT AN HTTP REQUEST\r\n\r\n")
            return sock.recv(1024)

    assert asyncio.run(with_server(HttpRouter(), client)).startswith(b"HTTP/1.1 400 ")


def test_handler_errors_become_500_and_the_server_keeps_serving() -> None:
    router = HttpRouter()

    async def broken(request: Request) -> Response:
        raise RuntimeError("bug")

    router.add("GET", "/broken", broken)
    router.add("GET", "/echo", echo)

    def client(port: int) -> tuple[int, int]:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        conn.request("GET", "/broken")
        first = conn.getresponse()
        first.read()
        conn.request("GET", "/echo")
        return first.status, conn.getresponse().status

    assert asyncio.run(with_server(router, client)) == (500, 200)


def test_streamed_responses_are_chunked_and_stop_when_the_client_leaves() -> None:
    router = HttpRouter()
    finished = asyncio.Event()
    produced: list[int] = []

    async def events() -> AsyncIterator[bytes]:
        try:
            for i in range(1000):
                produced.append(i)
                yield b'{"event":%d}\n' % i
                await asyncio.sleep(0.01 if i >= 3 else 0)
        finally:
            finished.set()

    async def watch(request: Request) -> Response:
        if request.query.get("n"):
            n = int(request.query["n"][0])

            async def few() -> AsyncIterator[bytes]:
                for i in range(n):
                    yield b"chunk%d;" % i

            return Response(stream=few())
        return Response(stream=events(), content_type="application/json")

    router.add("POST", "/v3/watch", watch)

    async def run() -> None:
        server = await serve_http("127.0.0.1", 0, router, max_body_bytes=1024)
        port = server.sockets[0].getsockname()[1]

        def whole(port: int) -> tuple[str | None, bytes]:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("POST", "/v3/watch?n=3", body=b"{}")
            response = conn.getresponse()
            return response.getheader("transfer-encoding"), response.read()

        def first_then_leave(port: int) -> bytes:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("POST", "/v3/watch", body=b"{}")
            line = conn.getresponse().readline()
            conn.sock.shutdown(socket.SHUT_RDWR)  # type: ignore[union-attr]
            conn.close()
            return line

        try:
            assert await asyncio.to_thread(whole, port) == ("chunked", b"chunk0;chunk1;chunk2;")
            assert await asyncio.to_thread(first_then_leave, port) == b'{"event":0}\n'
            await asyncio.wait_for(finished.wait(), timeout=5)
            assert len(produced) < 1000  # stopped early, not run to the end
        finally:
            server.close()
            await server.wait_closed()

    asyncio.run(run())
