"""Reading a TLS ClientHello without consuming it: what the client offers, before any handshake.

The client port decides per connection who terminates TLS (see `front`): gRPC's own TLS for
gRPC clients, Python's ssl module for HTTP/1 clients. The ClientHello says which is which
before a byte is consumed: gRPC clients offer only `h2` in ALPN (grpc-go, grpc-core, Java),
while curl, browsers and HTTP libraries offer `http/1.1` (often beside `h2`). The hello also
lists the versions the client can speak, which lets the front refuse a client below
`--tls-min-version` on connections it hands to gRPC, whose Python API has no such setting.

Only the first TLS record is read (a ClientHello fits one record unless it exceeds 16 KiB);
anything this parser does not understand yields None, and the caller treats the connection
as a plain HTTPS one.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

RECORD_HANDSHAKE = 0x16
HANDSHAKE_CLIENT_HELLO = 0x01
EXT_ALPN = 16
EXT_SUPPORTED_VERSIONS = 43
RECORD_HEADER = 5
MAX_RECORD = RECORD_HEADER + (1 << 14) + 2048
TLS12 = 0x0303
TLS13 = 0x0304
# A fatal protocol_version alert, as a TLS 1.2 record (what a server sends a client it refuses
# for its version).
PROTOCOL_VERSION_ALERT = bytes([0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x46])


@dataclass(frozen=True)
class ClientHello:
    alpn: tuple[str, ...]
    # The versions offered: supported_versions (TLS 1.3 clients), else the legacy version.
    versions: tuple[int, ...]

    @property
    def grpc_only(self) -> bool:
        """The client can only speak HTTP/2 over this connection: gRPC."""
        return "h2" in self.alpn and "http/1.1" not in self.alpn

    def offers(self, version: int) -> bool:
        return any(v >= version and v <= TLS13 for v in self.versions)


def record_length(head: bytes) -> int | None:
    """Bytes of the whole first record, once its header is there; None if not a handshake."""
    if len(head) < RECORD_HEADER or head[0] != RECORD_HANDSHAKE:
        return None
    return RECORD_HEADER + int.from_bytes(head[3:5], "big")


def parse_client_hello(record: bytes) -> ClientHello | None:
    """The offers of the ClientHello in `record` (a whole first record); None if unreadable."""
    try:
        return _parse(record)
    except (IndexError, struct.error, ValueError):
        return None


def _parse(record: bytes) -> ClientHello | None:
    if record_length(record) != len(record) or record[RECORD_HEADER] != HANDSHAKE_CLIENT_HELLO:
        return None
    body = memoryview(record)[RECORD_HEADER + 4 :]
    legacy_version = int.from_bytes(body[0:2], "big")
    at = 2 + 32  # version, random
    at += 1 + body[at]  # session id
    at += 2 + int.from_bytes(body[at : at + 2], "big")  # cipher suites
    at += 1 + body[at]  # compression methods
    alpn: list[str] = []
    versions: list[int] = []
    if at < len(body):
        end = at + 2 + int.from_bytes(body[at : at + 2], "big")
        at += 2
        while at + 4 <= end:
            kind, size = struct.unpack_from("!HH", body, at)
            data = body[at + 4 : at + 4 + size]
            at += 4 + size
            if kind == EXT_ALPN:
                alpn = _alpn(data)
            elif kind == EXT_SUPPORTED_VERSIONS:
                versions = [
                    int.from_bytes(data[i : i + 2], "big") for i in range(1, 1 + data[0], 2)
                ]
    return ClientHello(tuple(alpn), tuple(versions or [legacy_version]))


def _alpn(data: memoryview) -> list[str]:
    names = []
    at = 2
    end = 2 + int.from_bytes(data[0:2], "big")
    while at < end:
        size = data[at]
        names.append(bytes(data[at + 1 : at + 1 + size]).decode("ascii", "replace"))
        at += 1 + size
    return names
