"""The proxy's Prometheus metrics: etcd's grpc-proxy names where etcd has one, raftkv's beside.

etcd's grpc-proxy reports `etcd_grpc_proxy_*`; dashboards written for it read these names, so
they keep etcd's types (etcd made the cache hit and miss counts gauges). The numbers of client
watchers, of upstream watches and of keep-alive renewals are raftkv's own (`raftkv_grpc_proxy_*`):
they are what shows that coalescing works (one upstream watch per distinct range, however many
clients watch it).

Values that live in the proxy's structures (cached ranges, watchers) are read at scrape time
through the functions handed in, so nothing is updated on the hot path but the event counters.
Everything registers on the registry passed in.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge


class ProxyMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.watchers_coalescing = Gauge(
            "etcd_grpc_proxy_watchers_coalescing_total",
            "Total number of current watchers coalescing",
            registry=registry,
        )
        self.events_coalescing = Counter(
            "etcd_grpc_proxy_events_coalescing_total",
            "Total number of events coalescing",
            registry=registry,
        )
        self.cache_keys = Gauge(
            "etcd_grpc_proxy_cache_keys_total",
            "Total number of keys/ranges cached",
            registry=registry,
        )
        self.cache_hits = Gauge(
            "etcd_grpc_proxy_cache_hits_total",
            "Total number of cache hits",
            registry=registry,
        )
        self.cache_misses = Gauge(
            "etcd_grpc_proxy_cache_misses_total",
            "Total number of cache misses",
            registry=registry,
        )
        self.client_watchers = Gauge(
            "raftkv_grpc_proxy_watchers",
            "Client watchers served by the proxy.",
            registry=registry,
        )
        self.upstream_watches = Gauge(
            "raftkv_grpc_proxy_upstream_watches",
            "Watches the proxy holds open on the cluster (one per coalesced group of watchers).",
            registry=registry,
        )
        self.keepalive_requests = Counter(
            "raftkv_grpc_proxy_lease_keepalive_requests_total",
            "Lease keep-alive requests received from clients.",
            registry=registry,
        )
        self.keepalive_upstream = Counter(
            "raftkv_grpc_proxy_lease_keepalive_upstream_requests_total",
            "Lease keep-alive requests the proxy sent to the cluster.",
            registry=registry,
        )

    def read_watch_state(
        self,
        watchers: Callable[[], int],
        upstream: Callable[[], int],
        coalescing: Callable[[], int],
    ) -> None:
        """Gauges read from the watch proxy at scrape time."""
        self.client_watchers.set_function(watchers)
        self.upstream_watches.set_function(upstream)
        self.watchers_coalescing.set_function(coalescing)

    def read_cache_size(self, size: Callable[[], int]) -> None:
        self.cache_keys.set_function(size)
