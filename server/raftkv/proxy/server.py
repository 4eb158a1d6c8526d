"""`GrpcProxy`: the gRPC server of the proxy, its metrics listener and its registration.

Every method of the etcd v3 services (KV, Watch, Lease, Cluster, Maintenance, Auth, Lock,
Election) is served by a generic handler built from the service descriptors, so a method is
forwarded unchanged unless it is named in `_special()`: the KV methods (cache), Watch and
LeaseKeepAlive (coalescing), LeaseRevoke (drops the cache) and MemberList (lists registered
proxies). Requests and responses are the generated protobuf classes; the proxy keeps no state a
restart would lose, so any number of proxies can stand in front of one cluster.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor
from google.protobuf.message_factory import GetMessageClass
from prometheus_client import CollectorRegistry, start_http_server

from raftkv.client import AsyncClient, errors
from raftkv.client.transport import Retry
from raftkv.observability.grpc_server import GrpcServerMetrics
from raftkv.pb.etcdserverpb import rpc_pb2
from raftkv.pb.v3electionpb import v3election_pb2
from raftkv.pb.v3lockpb import v3lock_pb2
from raftkv.proxy.cache import RangeCache
from raftkv.proxy.config import ProxyConfig
from raftkv.proxy.forward import Forwarder, StubMethod, retry_class
from raftkv.proxy.kv import KVProxy
from raftkv.proxy.lease import KeepAliveHub, serve_keep_alive
from raftkv.proxy.metrics import ProxyMetrics
from raftkv.proxy.register import Registration, registered_members
from raftkv.proxy.watch import WatchHub, serve_watch

__all__ = ["SERVICES", "GrpcProxy", "run"]

log = logging.getLogger(__name__)

# Each service and the attribute of `raftkv.client.transport.Stubs` holding its stub.
SERVICES: tuple[tuple[ServiceDescriptor, str], ...] = (
    (rpc_pb2.DESCRIPTOR.services_by_name["KV"], "kv"),
    (rpc_pb2.DESCRIPTOR.services_by_name["Watch"], "watch"),
    (rpc_pb2.DESCRIPTOR.services_by_name["Lease"], "lease"),
    (rpc_pb2.DESCRIPTOR.services_by_name["Cluster"], "cluster"),
    (rpc_pb2.DESCRIPTOR.services_by_name["Maintenance"], "maintenance"),
    (rpc_pb2.DESCRIPTOR.services_by_name["Auth"], "auth"),
    (v3lock_pb2.DESCRIPTOR.services_by_name["Lock"], "lock"),
    (v3election_pb2.DESCRIPTOR.services_by_name["Election"], "election"),
)

_SERVER_OPTIONS = [
    ("grpc.max_receive_message_length", -1),
    ("grpc.max_send_message_length", -1),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_ping_interval_without_data_ms", 5000),
]


def _host_port(addr: str) -> str:
    """etcd accepts "host:port" or a URL for its proxy addresses."""
    return addr.split("://", 1)[-1].rstrip("/")


def _stub_method(attr: str, name: str) -> StubMethod:
    return lambda stubs: getattr(getattr(stubs, attr), name)


class GrpcProxy:
    """A running proxy: `await proxy.start()`, then `await proxy.stop()`."""

    def __init__(self, config: ProxyConfig, registry: CollectorRegistry | None = None) -> None:
        self.config = config
        self.registry = registry or CollectorRegistry()
        self.metrics = ProxyMetrics(self.registry)
        self.client = AsyncClient(config.endpoints, tls=config.upstream_tls)
        transport = self.client.transport
        self.forwarder = Forwarder(transport)
        self.cache = RangeCache(
            ttl=config.cache_ttl,
            on_hit=self.metrics.cache_hits.inc,
            on_miss=self.metrics.cache_misses.inc,
        )
        self.metrics.read_cache_size(lambda: len(self.cache))
        self.kv = KVProxy(self.forwarder, self.cache)
        self.watches = WatchHub(transport, self.metrics)
        self.keep_alives = KeepAliveHub(transport, self.metrics)
        self.registration: Registration | None = None
        self.port = 0
        self._server: grpc.aio.Server | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._metrics_server: Any = None

    # -- the special methods ----------------------------------------------------------------------

    async def _watch(
        self, requests: AsyncIterator[rpc_pb2.WatchRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[rpc_pb2.WatchResponse]:
        async for response in serve_watch(self.watches, requests, context):
            yield response

    async def _keep_alive(
        self,
        requests: AsyncIterator[rpc_pb2.LeaseKeepAliveRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[rpc_pb2.LeaseKeepAliveResponse]:
        async for response in serve_keep_alive(self.keep_alives, requests, context):
            yield response

    async def _lease_revoke(
        self, request: rpc_pb2.LeaseRevokeRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.LeaseRevokeResponse:
        try:
            return await self.forwarder.unary(
                lambda s: s.lease.LeaseRevoke, request, context, Retry.MUTABLE
            )
        finally:
            self.cache.clear()  # the lease's keys are gone, whichever they were
            self.keep_alives.forget(request.ID)

    async def _member_list(
        self, request: rpc_pb2.MemberListRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.MemberListResponse:
        prefix = self.config.resolver_prefix
        if prefix:
            try:
                members = await registered_members(self.client, prefix)
            except errors.EtcdError as error:  # e.g. auth on and the prefix not readable
                log.warning("could not read the registered proxies: %s", error.message)
                members = []
            if members:
                return rpc_pb2.MemberListResponse(members=members)
        return await self.forwarder.unary(
            lambda s: s.cluster.MemberList, request, context, Retry.IMMUTABLE
        )

    def _special(self) -> dict[str, Callable[..., Any]]:
        return {
            "/etcdserverpb.KV/Range": self.kv.range,
            "/etcdserverpb.KV/Put": self.kv.put,
            "/etcdserverpb.KV/DeleteRange": self.kv.delete_range,
            "/etcdserverpb.KV/Txn": self.kv.txn,
            "/etcdserverpb.KV/Compact": self.kv.compact,
            "/etcdserverpb.Watch/Watch": self._watch,
            "/etcdserverpb.Lease/LeaseKeepAlive": self._keep_alive,
            "/etcdserverpb.Lease/LeaseRevoke": self._lease_revoke,
            "/etcdserverpb.Cluster/MemberList": self._member_list,
        }

    # -- handlers ---------------------------------------------------------------------------------

    def _forwarding(self, full_name: str, method: StubMethod, streaming: bool) -> Any:
        forwarder = self.forwarder
        if streaming:

            async def stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
                async for response in forwarder.server_stream(method, request, context):
                    yield response

            return stream

        async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
            return await forwarder.unary(method, request, context, retry_class(full_name, request))

        return unary

    def _handler(
        self,
        service: ServiceDescriptor,
        attr: str,
        m: MethodDescriptor,
        special: dict[str, Callable[..., Any]],
    ) -> Any:
        full_name = f"/{service.full_name}/{m.name}"
        behavior = special.get(full_name) or self._forwarding(
            full_name, _stub_method(attr, m.name), m.server_streaming
        )
        codec = {
            "request_deserializer": GetMessageClass(m.input_type).FromString,
            "response_serializer": GetMessageClass(m.output_type).SerializeToString,
        }
        if m.client_streaming and m.server_streaming:
            return grpc.stream_stream_rpc_method_handler(behavior, **codec)
        if m.server_streaming:
            return grpc.unary_stream_rpc_method_handler(behavior, **codec)
        return grpc.unary_unary_rpc_method_handler(behavior, **codec)

    def handlers(self) -> list[grpc.GenericRpcHandler]:
        special = self._special()
        return [
            grpc.method_handlers_generic_handler(
                service.full_name,
                {m.name: self._handler(service, attr, m, special) for m in service.methods},
            )
            for service, attr in SERVICES
        ]

    # -- lifecycle --------------------------------------------------------------------------------

    async def start(self) -> None:
        config = self.config
        interceptor = GrpcServerMetrics(self.registry, [service for service, _ in SERVICES])
        server = grpc.aio.server(interceptors=[interceptor], options=_SERVER_OPTIONS)
        server.add_generic_rpc_handlers(self.handlers())
        listen = _host_port(config.listen_addr)
        if config.serving_tls is not None:
            tls = config.serving_tls
            ca = Path(tls.trusted_ca_file).read_bytes() if tls.trusted_ca_file else None
            credentials = grpc.ssl_server_credentials(
                [(Path(tls.key_file).read_bytes(), Path(tls.cert_file).read_bytes())],
                root_certificates=ca,
                require_client_auth=ca is not None,
            )
            self.port = server.add_secure_port(listen, credentials)
        else:
            self.port = server.add_insecure_port(listen)
        await server.start()
        self._server = server
        if config.metrics_addr:
            host, _, port = _host_port(config.metrics_addr).rpartition(":")
            self._metrics_server, _ = start_http_server(
                int(port), addr=host or "0.0.0.0", registry=self.registry
            )
        if config.resolver_prefix:
            self.registration = Registration(
                self.client,
                config.resolver_prefix,
                config.advertise_client_url,
                config.resolver_ttl,
            )
            self._tasks.append(asyncio.get_running_loop().create_task(self.registration.run()))
        log.info("grpc-proxy serving on %s, forwarding to %s", listen, ",".join(config.endpoints))

    async def stop(self, grace: float = 1.0) -> None:
        """Stop serving; a registration is revoked, so clients stop finding this proxy."""
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._server is not None:
            await self._server.stop(grace)
        await self.watches.close()
        await self.keep_alives.close()
        await self.forwarder.leaders.close()
        await self.client.close()
        if self._metrics_server is not None:
            self._metrics_server.shutdown()
            self._metrics_server.server_close()


def run(config: ProxyConfig) -> int:
    """Serve until SIGINT or SIGTERM; the process's exit status."""

    async def main() -> int:
        proxy = GrpcProxy(config)
        try:
            await proxy.start()
        except (RuntimeError, OSError) as error:  # a taken port, unreadable certificates
            log.error("grpc-proxy cannot start: %s", error)
            await proxy.stop(grace=0)
            return 1
        stopping = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stopping.set)
        try:
            await stopping.wait()
        finally:
            await proxy.stop()
        return 0

    return asyncio.run(main())
