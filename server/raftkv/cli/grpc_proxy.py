"""`raftkv grpc-proxy start`: etcd's grpc-proxy flags in, a running proxy out.

The flags are etcd 3.4's for `etcd grpc-proxy start`, with its defaults: `--endpoints` (the
cluster), `--listen-addr` (where clients connect), `--advertise-client-url` and
`--resolver-prefix`/`--resolver-ttl` (self-registration), `--metrics-addr`, `--cert/--key/
--cacert` (TLS towards the cluster) and `--cert-file/--key-file/--trusted-ca-file` (TLS towards
the clients), plus raftkv's `--range-cache-ttl`. Mistakes are reported as
`raftkv grpc-proxy: error: ...` with exit status 2 before anything connects.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import NoReturn

from raftkv.client.transport import TLSConfig, parse_endpoints
from raftkv.observability.logging import configure_logging
from raftkv.proxy.cache import DEFAULT_TTL_S
from raftkv.proxy.config import DEFAULT_ENDPOINTS, DEFAULT_LISTEN_ADDR, ProxyConfig, ServingTLS

USAGE_ERROR = 2


class UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="raftkv grpc-proxy",
        description="A stateless gRPC proxy in front of a raftkv or etcd cluster.",
        allow_abbrev=False,
    )
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    start = commands.add_parser("start", help="start the proxy", allow_abbrev=False)
    start.add_argument(
        "--endpoints",
        default=",".join(DEFAULT_ENDPOINTS),
        help="comma-separated cluster client URLs (default: %(default)s)",
    )
    start.add_argument(
        "--listen-addr",
        default=DEFAULT_LISTEN_ADDR,
        help="host:port the proxy serves clients on (default: %(default)s)",
    )
    start.add_argument(
        "--advertise-client-url",
        default=DEFAULT_LISTEN_ADDR,
        help="address clients reach this proxy at, registered under --resolver-prefix "
        "(default: %(default)s)",
    )
    start.add_argument(
        "--resolver-prefix",
        default="",
        help="register this proxy under this key prefix so clients can discover it",
    )
    start.add_argument(
        "--resolver-ttl",
        type=int,
        default=0,
        help="TTL in seconds of the registration's lease (0: 60 s)",
    )
    start.add_argument("--metrics-addr", default="", help="host:port (or URL) serving /metrics")
    start.add_argument("--cert", help="client certificate for the cluster (TLS)")
    start.add_argument("--key", help="client key for the cluster (TLS)")
    start.add_argument("--cacert", help="CA bundle that verifies the cluster's certificates")
    start.add_argument("--cert-file", help="the proxy's own serving certificate")
    start.add_argument("--key-file", help="the proxy's own serving key")
    start.add_argument("--trusted-ca-file", help="require client certificates signed by this CA")
    start.add_argument(
        "--range-cache-ttl",
        type=float,
        default=DEFAULT_TTL_S,
        help="seconds a serializable Range answer is served from the proxy's cache; 0 turns "
        "the cache off (raftkv's addition; default: %(default)s)",
    )
    start.add_argument(
        "--log-level", default="info", choices=("debug", "info", "warn", "error"), help="log level"
    )
    return parser


def parse_proxy_args(argv: Sequence[str]) -> ProxyConfig:
    """The proxy's configuration, or `UsageError`."""
    args = build_parser().parse_args(list(argv))
    if (args.cert is None) != (args.key is None):
        raise UsageError("--cert and --key go together")
    if (args.cert_file is None) != (args.key_file is None):
        raise UsageError("--cert-file and --key-file go together")
    if args.trusted_ca_file and not args.cert_file:
        raise UsageError("--trusted-ca-file needs --cert-file and --key-file")
    if args.resolver_ttl < 0:
        raise UsageError("--resolver-ttl must not be negative")
    if args.range_cache_ttl < 0:
        raise UsageError("--range-cache-ttl must not be negative")
    upstream = None
    if args.cert or args.cacert:
        upstream = TLSConfig(ca_file=args.cacert, cert_file=args.cert, key_file=args.key)
    try:
        # Bare host:port endpoints use TLS when TLS towards the cluster is configured.
        parsed = parse_endpoints(args.endpoints, tls=upstream is not None)
    except ValueError as error:
        raise UsageError(f"--endpoints: {error}") from None
    endpoints = tuple(ep.url for ep in parsed)
    serving = None
    if args.cert_file:
        serving = ServingTLS(args.cert_file, args.key_file, args.trusted_ca_file)
    return ProxyConfig(
        endpoints=endpoints,
        listen_addr=args.listen_addr,
        advertise_client_url=args.advertise_client_url,
        resolver_prefix=args.resolver_prefix.rstrip("/"),
        resolver_ttl=args.resolver_ttl,
        metrics_addr=args.metrics_addr,
        upstream_tls=upstream,
        serving_tls=serving,
        cache_ttl=args.range_cache_ttl,
        log_level=args.log_level,
    )


def main(argv: Sequence[str]) -> int:
    try:
        config = parse_proxy_args(argv)
    except UsageError as error:
        print(f"raftkv grpc-proxy: error: {error}", file=sys.stderr)
        return USAGE_ERROR
    configure_logging(config.log_level, name="grpc-proxy")
    from raftkv.proxy import run

    return run(config)
