"""A watcher that never reads costs the member a bounded amount of memory, and loses nothing.

The client here is the most hostile kind: a hand-written HTTP/2 connection that opens a Watch
with several watchers of the same keys, grants the server huge flow-control windows (so only
TCP holds the server back) and then does not read its socket at all while far more event data
than the bound is due to it (each watcher is owed its own copy). The member's resident memory
(from /proc) must stay within a generous bound — what the watchers are owed waits in the store's
history, not in the member's buffers — and once the client reads, each watcher receives every
event, in revision order, exactly once.

The bound covers what the writes themselves cost (the Raft log keeps recent entries in memory,
sqlite caches pages): about twice the written volume was measured without any watcher, and
unbounded buffering would add WATCHERS times the volume on top.
"""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from raftkv.pb.etcdserverpb import rpc_pb2, rpc_pb2_grpc

from tests.support.raftkv import RaftKVCluster, RaftKVMember, start_raftkv_cluster

pytestmark = pytest.mark.integration

TXNS = 25
PUTS_PER_TXN = 80
VALUE_BYTES = 16 * 1024  # 25 x 80 x 16 KiB: about 31 MiB written ...
WATCHERS = 8  # ... and 250 MiB of events owed to the deaf stream
# Measured: about 55 MiB of growth without a watcher, 70 MiB with the deaf ones.
RSS_GROWTH_BOUND = 128 * 1024 * 1024
DEADLINE_S = 120.0

# HTTP/2 frame types and flags used by the raw client.
DATA, HEADERS, SETTINGS, PING, GOAWAY, WINDOW_UPDATE = 0x0, 0x1, 0x4, 0x6, 0x7, 0x8
END_HEADERS, ACK = 0x4, 0x1
SETTINGS_INITIAL_WINDOW_SIZE = 0x4
MAX_WINDOW = 2**31 - 1


def _frame(kind: int, flags: int, stream: int, payload: bytes) -> bytes:
    return (
        struct.pack(">I", len(payload))[1:]
        + bytes([kind, flags])
        + struct.pack(">I", stream)
        + payload
    )


def _hpack_literal(name: bytes, value: bytes) -> bytes:
    """A header field literal without indexing, new name (short names and values only)."""
    assert len(name) < 127 and len(value) < 127
    return b"\x00" + bytes([len(name)]) + name + bytes([len(value)]) + value


class RawWatchClient:
    """One HTTP/2 connection with one Watch call on stream 1; reads only when told to."""

    def __init__(self, target: str) -> None:
        host, port = target.rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout=30)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        self._buffer = b""
        self._grpc = b""
        settings = struct.pack(">HI", SETTINGS_INITIAL_WINDOW_SIZE, MAX_WINDOW)
        self.sock.sendall(
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
            + _frame(SETTINGS, 0, 0, settings)
            + _frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", MAX_WINDOW - 65535))
        )

    def open_watch(self, requests: list[rpc_pb2.WatchRequest]) -> None:
        headers = b"".join(
            _hpack_literal(name, value)
            for name, value in [
                (b":method", b"POST"),
                (b":scheme", b"http"),
                (b":path", b"/etcdserverpb.Watch/Watch"),
                (b":authority", b"raftkv"),
                (b"content-type", b"application/grpc"),
                (b"te", b"trailers"),
            ]
        )
        messages = b""
        for request in requests:
            body = request.SerializeToString()
            messages += b"\x00" + struct.pack(">I", len(body)) + body
        self.sock.sendall(_frame(HEADERS, END_HEADERS, 1, headers) + _frame(DATA, 0, 1, messages))

    def _read_frame(self) -> tuple[int, int, int, bytes]:
        while len(self._buffer) < 9:
            self._fill()
        length = int.from_bytes(self._buffer[:3], "big")
        while len(self._buffer) < 9 + length:
            self._fill()
        kind, flags = self._buffer[3], self._buffer[4]
        stream = int.from_bytes(self._buffer[5:9], "big") & 0x7FFFFFFF
        payload = self._buffer[9 : 9 + length]
        self._buffer = self._buffer[9 + length :]
        return kind, flags, stream, payload

    def _fill(self) -> None:
        data = self.sock.recv(1024 * 1024)
        if not data:
            raise ConnectionError("the server closed the connection")
        self._buffer += data

    def handshake(self) -> None:
        """Acknowledge the server's settings (before going deaf: gRPC expects the ACK)."""
        while True:
            kind, flags, _, _ = self._read_frame()
            if kind == SETTINGS and not flags & ACK:
                self.sock.sendall(_frame(SETTINGS, ACK, 0, b""))
                return

    def responses(self) -> Iterator[rpc_pb2.WatchResponse]:
        """The Watch responses, read from the socket from now on."""
        while True:
            kind, flags, stream, payload = self._read_frame()
            if kind == SETTINGS and not flags & ACK:
                self.sock.sendall(_frame(SETTINGS, ACK, 0, b""))
            elif kind == PING and not flags & ACK:
                self.sock.sendall(_frame(PING, ACK, 0, payload))
            elif kind == GOAWAY:
                raise ConnectionError(f"GOAWAY {payload[4:8].hex()}")
            elif kind == DATA and stream == 1:
                self._grpc += payload
                while len(self._grpc) >= 5:
                    size = int.from_bytes(self._grpc[1:5], "big")
                    if len(self._grpc) < 5 + size:
                        break
                    yield rpc_pb2.WatchResponse.FromString(self._grpc[5 : 5 + size])
                    self._grpc = self._grpc[5 + size :]
            elif kind == HEADERS and stream == 1 and self._grpc == b"" and flags & 0x1:
                raise ConnectionError("the watch ended (trailers)")

    def close(self) -> None:
        self.sock.close()


def rss_bytes(member: RaftKVMember) -> int:
    assert member.process is not None
    status = Path(f"/proc/{member.process.pid}/status").read_text()
    line = next(line for line in status.splitlines() if line.startswith("VmRSS:"))
    return int(line.split()[1]) * 1024


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[RaftKVCluster]:
    with start_raftkv_cluster(tmp_path, size=1) as c:
        yield c


def _write_load(kv: rpc_pb2_grpc.KVStub) -> list[tuple[int, bytes]]:
    """TXNS transactions of PUTS_PER_TXN puts; (revision, key) of every event, in order."""
    value = b"v" * VALUE_BYTES
    expected: list[tuple[int, bytes]] = []
    for t in range(TXNS):
        keys = [b"load/%04d/%03d" % (t, p) for p in range(PUTS_PER_TXN)]
        txn = rpc_pb2.TxnRequest(
            success=[
                rpc_pb2.RequestOp(request_put=rpc_pb2.PutRequest(key=key, value=value))
                for key in keys
            ]
        )
        revision = kv.Txn(txn, timeout=60).header.revision
        expected.extend((revision, key) for key in keys)
    return expected


def test_a_watcher_that_never_reads_holds_bounded_memory_and_then_gets_every_event(
    cluster: RaftKVCluster,
) -> None:
    member = cluster.members[0]
    with grpc.insecure_channel(member.target) as channel:
        kv = rpc_pb2_grpc.KVStub(channel)
        warm_up = rpc_pb2.PutRequest(key=b"warm-up", value=b"v" * VALUE_BYTES)
        revision = kv.Put(warm_up, timeout=30).header.revision
        # From the next revision on, however late the member handles the creates.
        create = rpc_pb2.WatchRequest(
            create_request=rpc_pb2.WatchCreateRequest(
                key=b"load/", range_end=b"load0", start_revision=revision + 1
            )
        )
        before = rss_bytes(member)
        client = RawWatchClient(member.target)
        try:
            client.handshake()
            client.open_watch([create] * WATCHERS)
            expected = _write_load(kv)
            growth = rss_bytes(member) - before
            owed = WATCHERS * TXNS * PUTS_PER_TXN * VALUE_BYTES
            assert growth < RSS_GROWTH_BOUND, (
                f"RSS grew {growth >> 20} MiB with {owed >> 20} MiB of events unread"
            )
            received = _read_all(client, len(expected))
            assert sorted(received) == list(range(WATCHERS))
            for watch_id, events in received.items():
                assert events == expected, f"watcher {watch_id}"
        finally:
            client.close()
        # The member still serves.
        assert kv.Range(rpc_pb2.RangeRequest(key=b"warm-up"), timeout=30).count == 1


def _read_all(client: RawWatchClient, count: int) -> dict[int, list[tuple[int, bytes]]]:
    """(revision, key) of the events each watcher receives, until each has `count`."""
    received: dict[int, list[tuple[int, bytes]]] = {}
    deadline = time.monotonic() + DEADLINE_S
    for response in client.responses():
        assert not response.canceled, response.cancel_reason
        if response.created:
            received[response.watch_id] = []
        for event in response.events:
            assert len(event.kv.value) == VALUE_BYTES
            received[response.watch_id].append((event.kv.mod_revision, event.kv.key))
        done = all(len(events) >= count for events in received.values())
        if (len(received) == WATCHERS and done) or time.monotonic() > deadline:
            return received
    return received
