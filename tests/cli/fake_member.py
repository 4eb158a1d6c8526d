"""A stand-in member for the local cluster tests: takes raftkv's flags, serves nothing real.

It parses its flags with raftkv's own parser (so the launcher's flags must be valid), records
each start in its data dir, says it is up, optionally accepts TCP connections on its client
port (FAKE_MEMBER_LISTEN=1) or crashes (FAKE_MEMBER_CRASH=<name>), and exits 0 on SIGTERM.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import time
from pathlib import Path
from types import FrameType

from raftkv.cli.flags import parse_server_args


def main() -> int:
    config = parse_server_args(sys.argv[1:], os.environ)

    def stop(signum: int, _frame: FrameType | None) -> None:
        print(f"fake {config.name} stopping on signal {signum}", file=sys.stderr, flush=True)
        sys.exit(0)

    signal.signal(signal.SIGTERM, stop)
    data_dir = Path(config.data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    (data_dir / "pid").write_text(str(os.getpid()))
    with (data_dir / "starts").open("a") as starts:
        starts.write("start\n")

    open_sockets = []
    if os.environ.get("FAKE_MEMBER_LISTEN") == "1":
        url = config.listen_client_urls[0]
        open_sockets.append(socket.create_server((url.host, url.port)))
    print(f"fake {config.name} up on {config.advertise_client_urls[0]}", file=sys.stderr)
    print(f"fake {config.name} cluster {sorted(config.initial_cluster)}", flush=True)

    if os.environ.get("FAKE_MEMBER_CRASH") == config.name:
        time.sleep(0.3)
        print(f"fake {config.name} crashing", flush=True)
        return 3
    while True:
        signal.pause()


if __name__ == "__main__":
    sys.exit(main())
