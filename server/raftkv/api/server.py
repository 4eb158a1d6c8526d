"""The `raftkv` server process: a member plus the etcd-compatible gRPC services on client URLs."""

from __future__ import annotations

import asyncio
import logging
import signal

import grpc

from raftkv.api.cluster import ClusterService
from raftkv.api.decoding import StrictDecodingInterceptor
from raftkv.api.election import ElectionService
from raftkv.api.kv import KVService
from raftkv.api.lease import LeaseService
from raftkv.api.lock import LockService
from raftkv.api.maintenance import MaintenanceService
from raftkv.api.watch import WatchService
from raftkv.node.config import ServerConfig
from raftkv.node.errors import DataDirError
from raftkv.node.server import MemberServer
from raftkv.pb.etcdserverpb import rpc_pb2_grpc
from raftkv.pb.v3electionpb import v3election_pb2_grpc
from raftkv.pb.v3lockpb import v3lock_pb2_grpc

log = logging.getLogger(__name__)

# etcd accepts a request of --max-request-bytes plus this much gRPC framing.
GRPC_OVERHEAD_BYTES = 512 * 1024


def grpc_server_options(config: ServerConfig) -> list[tuple[str, int]]:
    return [
        ("grpc.max_receive_message_length", config.max_request_bytes + GRPC_OVERHEAD_BYTES),
        ("grpc.max_send_message_length", 2**31 - 1),
        ("grpc.max_concurrent_streams", 2**31 - 1),
        ("grpc.keepalive_time_ms", 2 * 60 * 60 * 1000),
        ("grpc.keepalive_timeout_ms", 20 * 1000),
        ("grpc.http2.min_ping_interval_without_data_ms", 5 * 1000),
        ("grpc.keepalive_permit_without_calls", 1),
    ]


def build_grpc_server(member: MemberServer) -> grpc.aio.Server:
    server = grpc.aio.server(
        options=grpc_server_options(member.config),
        interceptors=[StrictDecodingInterceptor()],
    )
    rpc_pb2_grpc.add_KVServicer_to_server(KVService(member), server)
    rpc_pb2_grpc.add_LeaseServicer_to_server(LeaseService(member), server)
    rpc_pb2_grpc.add_ClusterServicer_to_server(ClusterService(member), server)
    rpc_pb2_grpc.add_MaintenanceServicer_to_server(MaintenanceService(member), server)
    watch = WatchService(
        member, max_response_bytes=member.config.max_request_bytes + GRPC_OVERHEAD_BYTES
    )
    rpc_pb2_grpc.add_WatchServicer_to_server(watch, server)
    v3lock_pb2_grpc.add_LockServicer_to_server(LockService(member), server)
    v3election_pb2_grpc.add_ElectionServicer_to_server(ElectionService(member), server)
    for url in member.config.listen_client_urls:
        if url.scheme != "http":
            raise DataDirError(f"client URL {url} needs TLS, which is not configured")
        if server.add_insecure_port(f"{url.host}:{url.port}") == 0:
            raise OSError(f"cannot listen on {url}")
    return server


async def serve(config: ServerConfig) -> None:
    member = MemberServer(config)
    await member.start()
    grpc_server = build_grpc_server(member)
    await grpc_server.start()
    log.info("serving client requests on %s", ", ".join(str(u) for u in config.listen_client_urls))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    stopped_by_failure = asyncio.create_task(_wait_member_failure(member))
    await asyncio.wait(
        [asyncio.create_task(stop.wait()), stopped_by_failure],
        return_when=asyncio.FIRST_COMPLETED,
    )
    log.info("shutting down")
    await grpc_server.stop(grace=1.0)
    await member.stop()
    if stopped_by_failure.done():
        raise SystemExit(1)


async def _wait_member_failure(member: MemberServer) -> None:
    while not member.node.stopped:
        await asyncio.sleep(0.2)


def run(config: ServerConfig) -> int:
    try:
        asyncio.run(serve(config))
    except DataDirError as error:
        log.error("%s", error)
        return 1
    return 0
