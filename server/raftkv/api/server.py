"""The `raftkv` server process: a member plus the etcd-compatible gRPC services on client URLs.

The gRPC server listens on an internal socket; the client URLs belong to the front
(`api.http.front`), which passes gRPC connections through to it and serves HTTP (/metrics,
/health, /version, and what others mount on the router) on the same port, as etcd does.
`--listen-metrics-urls` get a plain HTTP server with /metrics and /health.
"""

from __future__ import annotations

import asyncio
import logging
import signal

import grpc
from prometheus_client import CollectorRegistry, disable_created_metrics

from raftkv.api import instrument
from raftkv.api.auth import AuthService
from raftkv.api.cluster import ClusterService
from raftkv.api.decoding import StrictDecodingInterceptor
from raftkv.api.election import ElectionService
from raftkv.api.http import ClientPortFront, HttpRouter, internal_grpc_address, serve_http
from raftkv.api.http import endpoints as http_endpoints
from raftkv.api.http.gateway import JsonGateway
from raftkv.api.kv import KVService
from raftkv.api.lease import LeaseService
from raftkv.api.lock import LockService
from raftkv.api.maintenance import MaintenanceService
from raftkv.api.v2keys import V2KeysApi
from raftkv.api.watch import WatchService, add_to_server
from raftkv.node.config import ServerConfig
from raftkv.node.errors import DataDirError
from raftkv.node.server import MemberServer
from raftkv.observability.grpc_server import GrpcServerMetrics
from raftkv.observability.metrics import CLUSTER_VERSION, SERVER_VERSION, ServerMetrics
from raftkv.observability.tracing import TracingConfigError, configure_from_env
from raftkv.pb.etcdserverpb import rpc_pb2_grpc
from raftkv.pb.v3electionpb import v3election_pb2_grpc
from raftkv.pb.v3lockpb import v3lock_pb2_grpc
from raftkv.transport.tls import TLSMaterialError

log = logging.getLogger(__name__)

# etcd accepts a request of --max-request-bytes plus this much gRPC framing.
GRPC_OVERHEAD_BYTES = 512 * 1024
# grpcio's options are C ints.
_GRPC_INT_MAX = 2**31 - 1


def grpc_receive_limit(config: ServerConfig) -> int:
    """etcd's limit on one received message; larger ones get grpc-go's error (`api.decoding`)."""
    return config.max_request_bytes + GRPC_OVERHEAD_BYTES


def grpc_server_options(config: ServerConfig) -> list[tuple[str, int]]:
    # The C core refuses (in its own words) only messages over twice etcd's limit, so nearly
    # every oversized request gets etcd's exact error, and one message never holds more memory.
    core_receive_limit = min(2 * grpc_receive_limit(config), _GRPC_INT_MAX)
    # 0 is grpc-go's "no limit".
    streams = config.max_concurrent_streams or _GRPC_INT_MAX
    return [
        ("grpc.max_receive_message_length", core_receive_limit),
        ("grpc.max_send_message_length", _GRPC_INT_MAX),
        ("grpc.max_concurrent_streams", min(streams, _GRPC_INT_MAX)),
        ("grpc.keepalive_time_ms", 2 * 60 * 60 * 1000),
        ("grpc.keepalive_timeout_ms", 20 * 1000),
        ("grpc.http2.min_ping_interval_without_data_ms", 5 * 1000),
        ("grpc.keepalive_permit_without_calls", 1),
    ]


def http_body_limit(config: ServerConfig) -> int:
    """The largest HTTP request body: the C core's receive limit. JSON takes more bytes than
    protobuf for a request (hardly ever fewer), so a message the gateway could send (and have
    refused with etcd's error) fits; bigger bodies are refused with 413 before they are read."""
    return 2 * grpc_receive_limit(config)


def build_grpc_server(
    member: MemberServer,
    listen: str,
    interceptors: list[grpc.aio.ServerInterceptor] | None = None,
) -> grpc.aio.Server:
    """The gRPC server on `listen` (a grpc address: the front's internal socket)."""
    server = grpc.aio.server(
        options=grpc_server_options(member.config),
        # Innermost last: metrics see the calls the decoding check lets through, as in etcd,
        # whose go-grpc-prometheus interceptor is the last of its chain.
        interceptors=[
            StrictDecodingInterceptor(grpc_receive_limit(member.config)),
            *(interceptors or []),
        ],
    )
    rpc_pb2_grpc.add_KVServicer_to_server(KVService(member), server)
    rpc_pb2_grpc.add_LeaseServicer_to_server(LeaseService(member), server)
    rpc_pb2_grpc.add_ClusterServicer_to_server(ClusterService(member), server)
    rpc_pb2_grpc.add_MaintenanceServicer_to_server(MaintenanceService(member), server)
    rpc_pb2_grpc.add_AuthServicer_to_server(AuthService(member), server)
    watch = WatchService(
        member, max_response_bytes=member.config.max_request_bytes + GRPC_OVERHEAD_BYTES
    )
    add_to_server(watch, server)  # event responses are written pre-encoded
    v3lock_pb2_grpc.add_LockServicer_to_server(LockService(member), server)
    v3election_pb2_grpc.add_ElectionServicer_to_server(ElectionService(member), server)
    if server.add_insecure_port(listen) == 0:
        raise OSError(f"cannot listen on {listen}")
    return server


def _check_urls(config: ServerConfig) -> None:
    # https:// client URLs are checked by ServerConfig (they need --cert-file or --auto-tls).
    for url in config.listen_metrics_urls:
        if url.scheme != "http":
            raise DataDirError(f"metrics URL {url}: raftkv serves metrics over http only")


def _health_router(
    member: MemberServer, registry: CollectorRegistry, metrics: ServerMetrics, *, version: bool
) -> HttpRouter:
    router = HttpRouter()
    http_endpoints.mount(
        router,
        instrument.MemberHealth(member),
        registry,
        on_health=metrics.health_checked,
        server_version=SERVER_VERSION,
        cluster_version=CLUSTER_VERSION,
        version=version,
    )
    return router


async def serve(config: ServerConfig) -> None:
    _check_urls(config)
    # etcd exposes no `_created` series; they would double the size of every scrape.
    disable_created_metrics()
    registry = CollectorRegistry()
    metrics = ServerMetrics(registry)
    # None (and no tracing code on any path) unless OTEL_TRACES_EXPORTER names an exporter.
    tracing = configure_from_env(config.name)
    member = MemberServer(config, metrics=metrics, tracing=tracing)
    await member.start()
    grpc_target, grpc_address = internal_grpc_address()
    grpc_metrics = GrpcServerMetrics(registry, instrument.grpc_services())
    interceptors: list[grpc.aio.ServerInterceptor] = [grpc_metrics]
    if tracing is not None:
        interceptors.insert(0, tracing.server_interceptor())
    grpc_server = build_grpc_server(member, grpc_target, interceptors)
    # TLS clients of gRPC reach a second internal socket, where gRPC terminates TLS itself.
    client_tls = member.tls.client
    grpc_tls_address = None
    if client_tls is not None:
        grpc_tls_target, grpc_tls_address = internal_grpc_address()
        if grpc_server.add_secure_port(grpc_tls_target, client_tls.grpc_credentials()) == 0:
            raise OSError(f"cannot listen on {grpc_tls_target}")
    await grpc_server.start()
    router = _health_router(member, registry, metrics, version=True)
    gateway = JsonGateway.to_target(grpc_target)
    gateway.mount(router)
    v2keys = None
    if config.enable_v2:
        v2keys = V2KeysApi.to_target(grpc_target, raft_index=lambda: member.node.applied_index)
        v2keys.mount(router)
    front = ClientPortFront(
        router,
        grpc_address,
        max_body_bytes=http_body_limit(config),
        grpc_tls_address=grpc_tls_address,
    )
    metrics.observe_member(instrument.snapshot_source(member, front.pump))
    for url in config.listen_client_urls:
        await front.listen(url.host, url.port, client_tls if url.scheme == "https" else None)
    metrics_router = _health_router(member, registry, metrics, version=False)
    metrics_servers = [
        await serve_http(url.host, url.port, metrics_router, max_body_bytes=64 * 1024)
        for url in config.listen_metrics_urls
    ]
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
    front.stop_accepting()
    for http_server in metrics_servers:
        http_server.close()
    await grpc_server.stop(grace=1.0)
    await gateway.close()
    if v2keys is not None:
        await v2keys.close()
    await front.close()
    await member.stop()
    if tracing is not None:
        await asyncio.to_thread(tracing.shutdown)  # export the spans still buffered
    if stopped_by_failure.done():
        raise SystemExit(1)


async def _wait_member_failure(member: MemberServer) -> None:
    while not member.node.stopped:
        await asyncio.sleep(0.2)


def run(config: ServerConfig) -> int:
    try:
        asyncio.run(serve(config))
    except (DataDirError, TracingConfigError, TLSMaterialError) as error:
        log.error("%s", error)
        return 1
    return 0
