"""Serving one HTTP/1.1 connection: h11 parses and frames, asyncio streams move the bytes.

h11 is sans-I/O (the model DESIGN.md points to): it turns received bytes into request events
and response events into bytes, and enforces HTTP/1.1's framing and keep-alive rules. This
module is the small I/O loop around it: read a request and its whole body (bounded), ask the
router, write the response (whole, or streamed chunk by chunk with back-pressure from
`drain()`), then wait for the next request on the same connection.

A streamed response ends when its iterator ends, or when the client closes the connection:
the socket is watched while streaming, and the iterator is cancelled and closed at once, so a
gateway watch does not outlive its HTTP client.

What one client can hold: a request head of at most h11's 16 KiB (431 beyond), a body of at
most `max_body_bytes` (413 beyond, and the connection is closed), a request read within
`REQUEST_TIMEOUT_S` of its first byte (a trickling "slowloris" client is cut off) and an idle
connection for `IDLE_TIMEOUT_S`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

import h11

from raftkv.api.http.router import HttpRouter, Request, Response

log = logging.getLogger(__name__)

READ_CHUNK = 64 * 1024
# An idle keep-alive connection is closed after this long (Go's net/http default is none; a
# bound keeps abandoned scrapers from piling up).
IDLE_TIMEOUT_S = 120.0
# A request's head and body must arrive within this long of its first byte: 5 MiB at 85 KiB/s.
REQUEST_TIMEOUT_S = 60.0
SERVER_HEADER = ("server", "raftkv")


class _BodyTooLarge(Exception):
    pass


async def serve_connection(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    router: HttpRouter,
    *,
    max_body_bytes: int,
    idle_timeout: float = IDLE_TIMEOUT_S,
    request_timeout: float = REQUEST_TIMEOUT_S,
) -> None:
    """Answer requests on one connection until either side closes it."""
    conn = h11.Connection(h11.SERVER)
    try:
        while True:
            try:
                request = await _read_request(
                    conn, reader, writer, max_body_bytes, idle_timeout, request_timeout
                )
            except _BodyTooLarge:
                await _send(conn, reader, writer, Response.text("request body too large\n", 413))
                return
            if request is None:
                return
            try:
                response = await router.dispatch(request)
            except Exception:
                log.exception("HTTP handler for %s %s failed", request.method, request.path)
                response = Response.text("internal server error\n", 500)
            await _send(conn, reader, writer, response, head=request.method == "HEAD")
            if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                return  # h11 says this connection cannot carry another request
            conn.start_next_cycle()
    except h11.RemoteProtocolError as error:
        if conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
            with contextlib.suppress(Exception):
                status = error.error_status_hint
                await _send(conn, reader, writer, Response.text(f"{error}\n", status))
    except (ConnectionError, TimeoutError, h11.LocalProtocolError):
        pass
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


async def _next_event(conn: h11.Connection, reader: asyncio.StreamReader, timeout: float) -> object:
    while True:
        event = conn.next_event()
        if event is not h11.NEED_DATA:
            return event
        async with asyncio.timeout(timeout):
            conn.receive_data(await reader.read(READ_CHUNK))


async def _read_request(
    conn: h11.Connection,
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    max_body_bytes: int,
    idle_timeout: float,
    request_timeout: float,
) -> Request | None:
    # Waiting for the next request is idle time; once its first bytes are in, the whole
    # request is due within `request_timeout`.
    if not conn.trailing_data[0]:  # no pipelined request already buffered
        async with asyncio.timeout(idle_timeout):
            data = await reader.read(READ_CHUNK)
        conn.receive_data(data)
    async with asyncio.timeout(request_timeout):
        return await _read_whole_request(conn, reader, writer, max_body_bytes, idle_timeout)


async def _read_whole_request(
    conn: h11.Connection,
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    max_body_bytes: int,
    idle_timeout: float,
) -> Request | None:
    event = await _next_event(conn, reader, idle_timeout)
    if not isinstance(event, h11.Request):
        return None  # ConnectionClosed, or PAUSED after a client's half-close
    request = Request(
        method=event.method.decode("ascii"),
        target=event.target.decode("latin-1"),
        headers=[(k.decode("latin-1"), v.decode("latin-1")) for k, v in event.headers],
    )
    if conn.they_are_waiting_for_100_continue:
        writer.write(conn.send(h11.InformationalResponse(status_code=100, headers=[])))
    body = bytearray()
    while True:
        event = await _next_event(conn, reader, idle_timeout)
        if isinstance(event, h11.Data):
            body += event.data
            if len(body) > max_body_bytes:
                raise _BodyTooLarge()
        elif isinstance(event, h11.EndOfMessage):
            request.body = bytes(body)
            return request
        else:
            return None


async def _send(
    conn: h11.Connection,
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    response: Response,
    *,
    head: bool = False,
) -> None:
    headers = [("content-type", response.content_type), SERVER_HEADER, *response.headers]
    if response.stream is None:
        headers.append(("content-length", str(len(response.body))))
    writer.write(conn.send(h11.Response(status_code=response.status, headers=headers)))
    if head:
        close = getattr(response.stream, "aclose", None)
        if close is not None:
            await close()
    elif response.stream is not None:
        await _send_stream(conn, reader, writer, response.stream)
    elif response.body:
        writer.write(conn.send(h11.Data(data=response.body)))
    writer.write(conn.send(h11.EndOfMessage()))
    await writer.drain()


async def _send_stream(
    conn: h11.Connection,
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    stream: AsyncIterator[bytes],
) -> None:
    """Send chunks as they come, while watching the socket for the client going away."""
    iterator = aiter(stream)
    closed = asyncio.ensure_future(reader.read(READ_CHUNK))
    chunk: asyncio.Future[bytes] | None = None
    try:
        while True:
            if chunk is None:
                chunk = asyncio.ensure_future(anext(iterator))
            await asyncio.wait({chunk, closed}, return_when=asyncio.FIRST_COMPLETED)
            if closed.done():
                data = closed.result()
                if not data:
                    raise ConnectionResetError("HTTP client closed the connection")
                conn.receive_data(data)  # a pipelined request: h11 keeps it for later
                closed = asyncio.ensure_future(reader.read(READ_CHUNK))
            if chunk.done():
                try:
                    data = chunk.result()
                except StopAsyncIteration:
                    return
                chunk = None
                if data:
                    writer.write(conn.send(h11.Data(data=data)))
                    await writer.drain()
    finally:
        for task in (chunk, closed):
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task
        close = getattr(iterator, "aclose", None)
        if close is not None:
            with contextlib.suppress(Exception):
                await close()


async def serve_http(
    host: str, port: int, router: HttpRouter, *, max_body_bytes: int
) -> asyncio.Server:
    """A plain HTTP/1.1 server (no gRPC) on host:port, e.g. for `--listen-metrics-urls`."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await serve_connection(reader, writer, router, max_body_bytes=max_body_bytes)

    return await asyncio.start_server(handle, host, port, reuse_address=True)
