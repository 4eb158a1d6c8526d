"""`raftkv`, the server command: etcd's flags in, a running member out.

`main` owns the process edges only: it reads argv and the environment, reports a bad
configuration as `raftkv: error: ...` with exit code 2 (argparse's convention for usage errors)
before anything touches the data dir, sets up logging and hands over to `raftkv.api.server.run`.
That import happens after the configuration is known to be good, so a bad flag fails fast
without loading gRPC and the rest of the server.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence

from raftkv.cli.flags import parse_server_args
from raftkv.node.config import ConfigError
from raftkv.observability.logging import configure_logging, log_fields

USAGE_ERROR = 2

log = logging.getLogger(__name__)


def main(argv: Sequence[str] | None = None) -> int:
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
    from raftkv.api.server import run

    return run(config)


if __name__ == "__main__":
    sys.exit(main())
