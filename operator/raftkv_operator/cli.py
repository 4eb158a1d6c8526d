"""`raftkv-operator`: `kopf run` of the handlers in `raftkv_operator.main`.

Any argument is passed to `kopf run` (`--namespace`, `--all-namespaces`, `--liveness`,
`--log-format json`, `--verbose`).
"""

from __future__ import annotations

import sys

from kopf import cli


def main() -> None:
    cli.main(args=["run", "--module", "raftkv_operator.main", *sys.argv[1:]])


if __name__ == "__main__":
    main()
