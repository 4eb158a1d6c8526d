"""The fault proxy on its own: it knows who dialed, and its faults do what they say.

The "member" dialing is this test process (its PID stands for member "a"), the receiver an
echo server on loopback standing for member "b".
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
from collections.abc import Iterator

import pytest

from tests.support.faultproxy import FaultProxy


@pytest.fixture
def echo_port() -> Iterator[int]:
    server = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                conn, _ = server.accept()
                threading.Thread(target=echo, args=(conn,), daemon=True).start()

    def echo(conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError):
            while data := conn.recv(4096):
                conn.sendall(data)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    thread.join()
    server.close()


@pytest.fixture
def proxy() -> Iterator[FaultProxy]:
    p = FaultProxy(lambda: {"a": os.getpid()}, seed=1)
    yield p
    p.stop()


def roundtrip(sock: socket.socket, payload: bytes, timeout: float) -> bytes:
    sock.settimeout(timeout)
    sock.sendall(payload)
    received = b""
    with contextlib.suppress(TimeoutError):
        while len(received) < len(payload):
            chunk = sock.recv(4096)
            if not chunk:
                break
            received += chunk
    return received


def test_forwards_and_identifies_the_sender(proxy: FaultProxy, echo_port: int) -> None:
    port = proxy.add_member("b", echo_port)
    with socket.create_connection(("127.0.0.1", port)) as sock:
        assert roundtrip(sock, b"hello", 10) == b"hello"
    assert proxy.unidentified == 0


def test_cut_stalls_until_healed(proxy: FaultProxy, echo_port: int) -> None:
    port = proxy.add_member("b", echo_port)
    with socket.create_connection(("127.0.0.1", port)) as sock:
        assert roundtrip(sock, b"before", 10) == b"before"
        proxy.cut("a", "b")
        assert roundtrip(sock, b"during", 0.5) == b""
        proxy.heal()
        # What was sent during the cut arrives once healed, in order, like TCP after a loss.
        assert roundtrip(sock, b"after", 10) == b"duringafter"


def test_cut_applies_to_its_direction_only(proxy: FaultProxy, echo_port: int) -> None:
    port = proxy.add_member("b", echo_port)
    proxy.cut("b", "a")  # b's messages to a travel on connections b dials, not this one
    with socket.create_connection(("127.0.0.1", port)) as sock:
        assert roundtrip(sock, b"through", 10) == b"through"
    proxy.isolate("b")
    with socket.create_connection(("127.0.0.1", port)) as sock:
        assert roundtrip(sock, b"blocked", 0.5) == b""


def test_reset_rate_breaks_connections(proxy: FaultProxy, echo_port: int) -> None:
    port = proxy.add_member("b", echo_port)
    proxy.set_link("a", "b", reset_rate=1.0)
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.settimeout(10)
        sock.sendall(b"x")
        with pytest.raises(ConnectionResetError):
            while sock.recv(4096):
                pass
            raise ConnectionResetError("closed")  # an orderly close counts as broken too
