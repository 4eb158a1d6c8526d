"""The HTTP/1.1 loop bounds what one client can hold: a huge head gets 431, a body over the
limit gets a 413, a client that trickles its request is cut off, and a streamed gateway body
holds a bounded number of requests."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable
from typing import TypeVar

import pytest
from raftkv.api.http import HttpRouter, Request, Response
from raftkv.api.http.conn import serve_connection
from raftkv.api.http.gateway import MAX_STREAM_REQUESTS, BadRequest, parse_requests
from raftkv.pb.etcdserverpb import rpc_pb2

T = TypeVar("T")


async def echo(request: Request) -> Response:
    return Response.json({"size": len(request.body)})


def serve(client: Callable[[int], T], **limits: float) -> T:
    """Run `client(port)` in a thread against a server with `limits`; its result."""
    router = HttpRouter()
    router.add("*", "/echo", echo)

    async def main() -> T:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await serve_connection(reader, writer, router, max_body_bytes=1024, **limits)  # type: ignore[arg-type]

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            return await asyncio.to_thread(client, port)
        finally:
            server.close()
            await server.wait_closed()

    return asyncio.run(main())


def read_status(sock: socket.socket) -> int:
    data = b""
    while b"\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError(f"closed after {data!r}")
        data += chunk
    return int(data.split(b" ", 2)[1])


def test_a_body_over_the_limit_gets_a_413() -> None:
    def client(port: int) -> int:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            body = b"x" * (200 * 1024)
            head = b"POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: %d\r\n\r\n" % len(body)
            sock.sendall(head + body)
            return read_status(sock)

    assert serve(client) == 413


def test_a_huge_request_head_gets_431() -> None:
    def client(port: int) -> int:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(
                b"GET /echo HTTP/1.1\r\nhost: x\r\nx-big: " + b"a" * 64 * 1024 + b"\r\n\r\n"
            )
            return read_status(sock)

    assert serve(client) == 431


def test_a_client_trickling_its_request_is_cut_off() -> None:
    def client(port: int) -> float:
        started = time.monotonic()
        with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
            head = b"GET /echo HTTP/1.1\r\nhost: x\r\nx-slow: " + b"a" * 1000
            try:
                for byte in head:
                    sock.sendall(bytes([byte]))
                    time.sleep(0.05)  # well within the idle timeout, byte by byte
            except OSError:
                return time.monotonic() - started
            raise AssertionError("the server kept reading the trickled request")

    # 1000+ bytes at 20 per second would take 50 s; the request timeout is 1 s.
    assert serve(client, idle_timeout=10.0, request_timeout=1.0) < 30


def test_an_idle_keep_alive_connection_is_closed_after_its_answer() -> None:
    def client(port: int) -> bytes:
        with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
            sock.sendall(b"GET /echo HTTP/1.1\r\nhost: x\r\n\r\n")
            received = b""
            while chunk := sock.recv(4096):  # until the server closes the idle connection
                received += chunk
            return received

    received = serve(client, idle_timeout=0.5, request_timeout=10.0)
    assert received.startswith(b"HTTP/1.1 200 ")
    assert received.endswith(b'{"size":0}')


def test_a_streamed_gateway_body_holds_a_bounded_number_of_requests() -> None:
    watch = rpc_pb2.WatchRequest
    assert len(parse_requests(b"{}" * MAX_STREAM_REQUESTS, watch)) == MAX_STREAM_REQUESTS
    with pytest.raises(BadRequest, match="more than 1000 requests"):
        parse_requests(b"{}" * (MAX_STREAM_REQUESTS + 1), watch)
