"""Run a raftkv member whose disk syncs can be slowed from outside: the slow-disk fault.

    python tests/support/slowdisk.py --slow-disk-file=PATH <raftkv flags>

wraps `os.fsync` and `os.fdatasync` so that each first sleeps for the number of seconds written
in PATH (read again at most every 100 ms; a missing or empty file means no delay), then runs the
raftkv server with the remaining flags. The WAL's fdatasync, which gates every acknowledged
write, goes through `os`, so writing "0.2" into the file makes that member's disk 200 ms slow
until the file is removed. sqlite's own syncs (in C) are not slowed.

It is run as a script, not as `-m tests...`, so it works from any working directory; it imports
only the standard library and the installed raftkv. Nothing of this is in the server.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable

FLAG = "--slow-disk-file="


class _Delay:
    def __init__(self, path: str) -> None:
        self._path = path
        self._lock = threading.Lock()
        self._read_at = 0.0
        self._seconds = 0.0

    def seconds(self) -> float:
        with self._lock:
            now = time.monotonic()
            if now - self._read_at > 0.1:
                self._read_at = now
                try:
                    with open(self._path) as f:
                        self._seconds = float(f.read().strip() or 0)
                except (OSError, ValueError):
                    self._seconds = 0.0
            return self._seconds


def _slowed(sync: Callable[[int], None], delay: _Delay) -> Callable[[int], None]:
    def slow_sync(fd: int) -> None:
        seconds = delay.seconds()
        if seconds > 0:
            time.sleep(seconds)
        sync(fd)

    return slow_sync


def main(argv: list[str]) -> int:
    paths = [a.removeprefix(FLAG) for a in argv if a.startswith(FLAG)]
    args = [a for a in argv if not a.startswith(FLAG)]
    if paths:
        delay = _Delay(paths[-1])
        os.fsync = _slowed(os.fsync, delay)
        os.fdatasync = _slowed(os.fdatasync, delay)
    from raftkv.cli.server import main as server_main

    return server_main(args)


if __name__ == "__main__":
    # Run as a script, this directory comes first on sys.path, and its raftkv.py (the test
    # fixture) would shadow the raftkv package.
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != here]
    sys.exit(main(sys.argv[1:]))
