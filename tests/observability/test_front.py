"""HTTP/1.1 and gRPC on one port: the front passes gRPC through untouched and serves HTTP."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
import urllib.request

import grpc
import pytest
from raftkv.api.http import HttpRouter, Request, Response
from raftkv.api.http.front import HTTP2_PREFACE
from raftkv.api.http.pump import SplicePump
from raftkv.pb.etcdserverpb import rpc_pb2, rpc_pb2_grpc

from tests.observability.grpc_fixture import MAX_MESSAGE, front_with_grpc

CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_MESSAGE),
    ("grpc.max_send_message_length", MAX_MESSAGE),
]


def hello_router() -> HttpRouter:
    router = HttpRouter()

    async def hello(request: Request) -> Response:
        return Response.text("hello over http/1.1\n")

    router.add("GET", "/hello", hello)
    return router


def http_get(port: int, path: str) -> tuple[int, bytes]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
        return response.status, response.read()


async def wait_for(condition: object, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached")
        await asyncio.sleep(0.02)


def test_http_and_grpc_are_served_on_the_same_port() -> None:
    async def run() -> None:
        async with (
            front_with_grpc(hello_router()) as (_, port),
            grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel,
        ):
            kv = rpc_pb2_grpc.KVStub(channel)
            grpc_call = kv.Range(rpc_pb2.RangeRequest(key=b"k", limit=3), timeout=5)
            http_call = asyncio.to_thread(http_get, port, "/hello")
            response, (status, body) = await asyncio.gather(grpc_call, http_call)
            assert response.kvs[0].value == b"vvv"
            assert (status, body) == (200, b"hello over http/1.1\n")

    asyncio.run(run())


def test_grpc_streams_pass_through() -> None:
    async def run() -> None:
        async with (
            front_with_grpc() as (_, port),
            grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel,
        ):
            watch = rpc_pb2_grpc.WatchStub(channel).Watch(timeout=5)
            for key in (b"a", b"b", b"c"):
                await watch.write(
                    rpc_pb2.WatchRequest(create_request=rpc_pb2.WatchCreateRequest(key=key))
                )
                response = await watch.read()
                assert response.events[0].kv.key == key
            await watch.done_writing()
            assert await watch.read() is grpc.aio.EOF
            assert await watch.code() == grpc.StatusCode.OK

            maintenance = rpc_pb2_grpc.MaintenanceStub(channel)
            chunks = [r async for r in maintenance.Snapshot(rpc_pb2.SnapshotRequest())]
            assert [c.remaining_bytes for c in chunks] == [2, 1, 0]

    asyncio.run(run())


def test_large_messages_pass_through_both_ways() -> None:
    size = 16 * 1024 * 1024

    async def run() -> None:
        async with (
            front_with_grpc() as (_, port),
            grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=CHANNEL_OPTIONS) as channel,
        ):
            kv = rpc_pb2_grpc.KVStub(channel)
            value = os.urandom(size)
            put = await kv.Put(rpc_pb2.PutRequest(key=b"big", value=value), timeout=20)
            assert put.header.revision == size
            got = await kv.Range(rpc_pb2.RangeRequest(key=b"big", limit=size), timeout=20)
            assert len(got.kvs[0].value) == size

    asyncio.run(run())


def test_many_connections_at_once_and_all_are_released() -> None:
    async def run() -> None:
        async with front_with_grpc(hello_router()) as (front, port):
            # A local subchannel pool: each channel opens its own connection.
            options = [("grpc.use_local_subchannel_pool", 1)]
            channels = [
                grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=options) for _ in range(60)
            ]
            responses = await asyncio.gather(
                *(
                    rpc_pb2_grpc.KVStub(c).Range(rpc_pb2.RangeRequest(key=b"%d" % i), timeout=10)
                    for i, c in enumerate(channels)
                ),
                *(asyncio.to_thread(http_get, port, "/hello") for _ in range(20)),
            )
            assert [r.kvs[0].key for r in responses[:60]] == [b"%d" % i for i in range(60)]
            assert all(status == 200 for status, _ in responses[60:])
            assert front.pump.connections == 60
            await asyncio.gather(*(c.close() for c in channels))
            await wait_for(lambda: front.pump.connections == 0)

    asyncio.run(run())


def test_keepalive_pings_reach_the_grpc_server() -> None:
    """An idle client pinging every 100 ms must see its pings answered through the front: a
    missed answer (300 ms timeout) makes gRPC drop the connection."""
    server_options = [
        ("grpc.http2.min_ping_interval_without_data_ms", 50),
        ("grpc.keepalive_permit_without_calls", 1),
    ]
    client_options = [
        ("grpc.keepalive_time_ms", 100),
        ("grpc.keepalive_timeout_ms", 300),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
    ]

    async def run() -> None:
        async with (
            front_with_grpc(grpc_options=server_options) as (front, port),
            grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=client_options) as channel,
        ):
            kv = rpc_pb2_grpc.KVStub(channel)
            await kv.Range(rpc_pb2.RangeRequest(key=b"k"), timeout=5)
            await asyncio.sleep(1.5)
            assert channel.get_state() == grpc.ChannelConnectivity.READY
            await kv.Range(rpc_pb2.RangeRequest(key=b"k"), timeout=5)
            assert front.pump.connections == 1  # the same connection throughout

    asyncio.run(run())


def test_closing_the_front_ends_proxied_connections() -> None:
    async def run() -> None:
        async with front_with_grpc() as (front, port):
            raw = socket.create_connection(("127.0.0.1", port))
            raw.sendall(HTTP2_PREFACE)
            await wait_for(lambda: front.pump.connections == 1)
            raw.close()
            await wait_for(lambda: front.pump.connections == 0)

            raw = socket.create_connection(("127.0.0.1", port))
            raw.sendall(HTTP2_PREFACE)
            await wait_for(lambda: front.pump.connections == 1)
            await front.close()
            raw.settimeout(5)
            # The gRPC server's SETTINGS may arrive first; then the connection must end.
            while raw.recv(65536):
                pass
            raw.close()
            with pytest.raises(OSError):
                socket.create_connection(("127.0.0.1", port), timeout=1).close()

    asyncio.run(run())


def test_pump_passes_half_close_and_survives_a_slow_reader() -> None:
    pump = SplicePump()
    pump.start()
    try:
        client, client_far = socket.socketpair()
        server, server_far = socket.socketpair()
        pump.join(client_far, server_far)
        data = os.urandom(8 * 1024 * 1024)
        client.sendall(data[:1024])
        client.setblocking(True)

        def send_rest() -> None:
            client.sendall(data[1024:])
            client.shutdown(socket.SHUT_WR)

        sender = asyncio.run(_in_thread_after_slow_read(send_rest, server, len(data)))
        assert sender == data
        # The other direction still works after the half-close, then closes cleanly.
        server.sendall(b"reply")
        server.shutdown(socket.SHUT_WR)
        received = b""
        while chunk := client.recv(1024):
            received += chunk
        assert received == b"reply"
        assert pump.bytes_from_clients == len(data)
        assert pump.bytes_to_clients == len(b"reply")
        deadline = time.monotonic() + 5
        while pump.connections and time.monotonic() < deadline:
            time.sleep(0.01)
        assert pump.connections == 0
    finally:
        pump.stop()


async def _in_thread_after_slow_read(send: object, server: socket.socket, total: int) -> bytes:
    sender = asyncio.create_task(asyncio.to_thread(send))  # type: ignore[arg-type]
    await asyncio.sleep(0.3)  # the sender fills every buffer on the way and must wait
    assert not sender.done()
    received = bytearray()

    def read_all() -> None:
        while chunk := server.recv(1 << 20):
            received.extend(chunk)

    await asyncio.to_thread(read_all)
    await sender
    assert len(received) == total
    return bytes(received)


def test_first_bytes_arriving_one_by_one_are_still_routed() -> None:
    async def run() -> None:
        async with front_with_grpc(hello_router()) as (front, port):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            for piece in (b"G", b"E", b"T /hello HTTP/1.1\r\nHost: x\r\n\r\n"):
                writer.write(piece)
                await writer.drain()
                await asyncio.sleep(0.05)
            assert (await reader.readline()).startswith(b"HTTP/1.1 200")
            writer.close()

            raw = socket.create_connection(("127.0.0.1", port))
            raw.sendall(HTTP2_PREFACE[:2])
            await asyncio.sleep(0.1)
            assert front.pump.connections == 0  # still undecided
            raw.sendall(HTTP2_PREFACE[2:])
            await wait_for(lambda: front.pump.connections == 1)
            raw.close()

    asyncio.run(run())


def test_a_dead_pump_thread_ends_the_process_instead_of_leaving_it_deaf() -> None:
    # Run in a child: the guard ends the whole process with status 1.
    script = (
        "import time\n"
        "from raftkv.api.http.pump import SplicePump\n"
        "pump = SplicePump()\n"
        "def broken():\n"
        "    raise RuntimeError('injected pump failure')\n"
        "pump._pump = broken\n"
        "pump.start()\n"
        "time.sleep(10)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 1
    assert "injected pump failure" in done.stderr
