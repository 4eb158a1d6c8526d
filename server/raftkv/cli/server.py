"""`raftkv`, the server command: etcd's flags in, a running member out.

`main` owns the process edges only: it reads argv and the environment, reports a bad
configuration as `raftkv: error: ...` with exit code 2 (argparse's convention for usage errors)
before anything touches the data dir, sets up logging and hands over to `raftkv.api.server.run`.
That import happens after the configuration is known to be good, so a bad flag fails fast
without loading gRPC and the rest of the server, and after `--cipher-suites` and
`--tls-min-version` are exported to gRPC's TLS library, which reads them when it loads.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence

from raftkv.cli.flags import parse_server_args
from raftkv.node.config import ConfigError, ServerConfig
from raftkv.observability.logging import configure_logging, log_fields

USAGE_ERROR = 2

log = logging.getLogger(__name__)


def main(argv: Sequence[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else list(argv)
    if args[:1] == ["grpc-proxy"]:  # `raftkv grpc-proxy start ...`, as `etcd grpc-proxy`
        from raftkv.cli.grpc_proxy import main as grpc_proxy_main

        return grpc_proxy_main(args[1:])
    warnings: list[str] = []
    try:
        config = parse_server_args(
            sys.argv[1:] if argv is None else argv, os.environ, on_warning=warnings.append
        )
    except ConfigError as error:
        print(f"raftkv: error: {error}", file=sys.stderr)
        print("Try 'raftkv --help' for the list of flags.", file=sys.stderr)
        return USAGE_ERROR

    configure_logging(config.log_level, name=config.name)
    for warning in warnings:
        log.warning(warning)
    log_fields(
        log,
        "starting raftkv",
        member_name=config.name,
        data_dir=config.data_dir,
        listen_client_urls=[str(url) for url in config.listen_client_urls],
        listen_peer_urls=[str(url) for url in config.listen_peer_urls],
        initial_cluster_state=config.initial_cluster_state,
    )
    _export_grpc_ciphers(config)
    from raftkv.api.server import run

    return run(config)


def _export_grpc_ciphers(config: ServerConfig) -> None:
    """gRPC reads its TLS cipher list from the environment once, when it is imported, and
    has no other setting for it; nothing has imported it yet (see the module docstring)."""
    value = config.grpc_cipher_env
    if value is None:
        return
    if "grpc" in sys.modules:
        raise RuntimeError("gRPC was imported before --cipher-suites could be applied")
    os.environ["GRPC_SSL_CIPHER_SUITES"] = value


if __name__ == "__main__":
    sys.exit(main())
