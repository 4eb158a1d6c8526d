"""What `raftkv grpc-proxy start` was asked to do (etcd's grpc-proxy flags, parsed by the CLI)."""

from __future__ import annotations

from dataclasses import dataclass

from raftkv.client.transport import TLSConfig
from raftkv.proxy.cache import DEFAULT_TTL_S

DEFAULT_ENDPOINTS = ("127.0.0.1:2379",)
DEFAULT_LISTEN_ADDR = "127.0.0.1:23790"


@dataclass(frozen=True)
class ServingTLS:
    """The proxy's own certificate; with `trusted_ca_file`, clients must present one signed by
    that CA (etcd's --trusted-ca-file)."""

    cert_file: str
    key_file: str
    trusted_ca_file: str | None = None


@dataclass(frozen=True)
class ProxyConfig:
    endpoints: tuple[str, ...] = DEFAULT_ENDPOINTS
    listen_addr: str = DEFAULT_LISTEN_ADDR
    # What clients dial to reach this proxy, registered under `resolver_prefix`.
    advertise_client_url: str = DEFAULT_LISTEN_ADDR
    resolver_prefix: str = ""
    resolver_ttl: int = 0
    # host:port serving /metrics; empty: no metrics listener.
    metrics_addr: str = ""
    # TLS towards the cluster (--cert/--key/--cacert); None: plain unless an endpoint is https.
    upstream_tls: TLSConfig | None = None
    # TLS towards the clients (--cert-file/--key-file/--trusted-ca-file).
    serving_tls: ServingTLS | None = None
    cache_ttl: float = DEFAULT_TTL_S
    log_level: str = "info"
