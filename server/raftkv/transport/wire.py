"""What both ends of a peer connection must agree on: metadata, status messages, gRPC options.

Kept apart from the sender and the receiver so that the two cannot drift, and so that tests can
speak the protocol by hand (a deliberately lying sender) with the same constants.
"""

from __future__ import annotations

from urllib.parse import urlsplit

import grpc

SENDER_ID_KEY = "raftkv-sender-id"
RECEIVER_ID_KEY = "raftkv-receiver-id"
CLUSTER_ID_KEY = "raftkv-cluster-id"
# Sent back by the receiver as initial metadata once it has accepted the call.
MEMBER_ID_KEY = "raftkv-member-id"

CLUSTER_ID_MISMATCH = "cluster ID mismatch"
MEMBER_ID_MISMATCH = "member ID mismatch"
MEMBER_REMOVED = "the member has been removed from the cluster"
BAD_METADATA = "missing or malformed peer metadata"

MAX_MESSAGE_BYTES = 64 * 1024 * 1024

# Keepalive pings every 2 s that go unanswered for 2 s close the connection, so a dead peer is
# noticed within about 4 s even when no message is in flight. Recent gRPC cores time pings out by
# http2.ping_timeout_ms (default a minute), not only keepalive_timeout_ms, so both are set.
# Reconnection backoff is capped low because peers restart, and a member that stays down costs
# only a failed dial per second.
_COMMON_OPTIONS: list[tuple[str, int]] = [
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.keepalive_time_ms", 2000),
    ("grpc.keepalive_timeout_ms", 2000),
    ("grpc.http2.ping_timeout_ms", 2000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
]
CHANNEL_OPTIONS: list[tuple[str, int]] = [
    *_COMMON_OPTIONS,
    ("grpc.enable_retries", 0),
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
]
# A snapshot upload gets its own TCP connection so that hundreds of MB do not queue in front
# of heartbeats on the message stream.
SNAPSHOT_CHANNEL_OPTIONS: list[tuple[str, int]] = [
    *CHANNEL_OPTIONS,
    ("grpc.use_local_subchannel_pool", 1),
]
SERVER_OPTIONS: list[tuple[str, int]] = [
    *_COMMON_OPTIONS,
    ("grpc.http2.min_ping_interval_without_data_ms", 1000),
    ("grpc.http2.max_ping_strikes", 0),
]


def peer_metadata(sender_id: int, receiver_id: int, cluster_id: int) -> tuple[tuple[str, str], ...]:
    """The metadata every peer call carries."""
    return (
        (SENDER_ID_KEY, f"{sender_id:x}"),
        (RECEIVER_ID_KEY, f"{receiver_id:x}"),
        (CLUSTER_ID_KEY, f"{cluster_id:x}"),
    )


def parse_url(url: str) -> tuple[str, str]:
    """Split a peer URL such as ``http://127.0.0.1:2380`` into (scheme, gRPC target)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"peer URL {url!r}: scheme must be http or https")
    if parts.hostname is None or parts.port is None:
        raise ValueError(f"peer URL {url!r}: host and port are required")
    return parts.scheme, parts.netloc


def open_channel(
    url: str,
    credentials: grpc.ChannelCredentials | None,
    options: list[tuple[str, int]] = CHANNEL_OPTIONS,
) -> grpc.aio.Channel:
    """A channel to a peer URL: TLS for https (credentials required), plaintext for http."""
    scheme, target = parse_url(url)
    if scheme == "https":
        if credentials is None:
            raise ValueError(f"peer URL {url!r} needs TLS credentials")
        return grpc.aio.secure_channel(target, credentials, options=options)
    return grpc.aio.insecure_channel(target, options=options)
