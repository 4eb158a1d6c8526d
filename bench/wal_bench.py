"""WAL group-commit throughput: C concurrent asyncio writers, each appending one entry per call.

Run: ``python -m bench.wal_bench [--seconds 3] [--concurrency 1,16,128] [--entry-bytes 256]``.
Prints one JSON document: for each C, calls/s (appends acknowledged durable), entries/s,
fsyncs/s and mean entries per fsync. The WAL lives in a temporary directory inside the checkout
so that it is on the same disk as a member's data would be; it is removed afterwards.
"""

import argparse
import asyncio
import json
import platform
import shutil
import tempfile
import time
from pathlib import Path

from raftkv.pb.raftpb.raft_pb2 import Entry, HardState
from raftkv.storage.wal import WAL, GroupCommitWAL

CHECKOUT = Path(__file__).resolve().parent.parent


async def _run(directory: Path, writers: int, seconds: float, entry_bytes: int) -> dict[str, float]:
    gc = GroupCommitWAL(WAL.create(directory, b"bench"))
    payload = bytes(entry_bytes)
    last_index = 0
    deadline = time.perf_counter() + seconds

    async def writer() -> None:
        nonlocal last_index
        while time.perf_counter() < deadline:
            last_index += 1  # claimed and submitted in one step: calls stay in index order
            await gc.save(
                HardState(term=1, commit=last_index - 1),
                [Entry(term=1, index=last_index, data=payload)],
            )

    start = time.perf_counter()
    await asyncio.gather(*(writer() for _ in range(writers)))
    elapsed = time.perf_counter() - start
    await gc.close()
    return {
        "writers": writers,
        "seconds": round(elapsed, 3),
        "appends_per_second": round(gc.calls / elapsed, 1),
        "entries_per_second": round(gc.entries_written / elapsed, 1),
        "fsyncs_per_second": round(gc.fsync_count / elapsed, 1),
        "mean_entries_per_fsync": round(gc.mean_entries_per_fsync, 2),
        "max_calls_per_fsync": gc.max_group_calls,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--concurrency", default="1,16,128")
    parser.add_argument("--entry-bytes", type=int, default=256)
    args = parser.parse_args(argv)
    results = []
    for writers in (int(c) for c in args.concurrency.split(",")):
        tmp = Path(tempfile.mkdtemp(prefix=".wal-bench-", dir=CHECKOUT))
        try:
            results.append(asyncio.run(_run(tmp / "wal", writers, args.seconds, args.entry_bytes)))
        finally:
            shutil.rmtree(tmp)
    report = {
        "benchmark": "wal_group_commit",
        "entry_bytes": args.entry_bytes,
        "python": platform.python_version(),
        "results": results,
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
