"""Where a member's CPU goes per Put: a fixed number of Puts against a fresh 3-member cluster.

Wall-clock throughput on a shared machine says little; CPU per request and the share of each
stage of the write path do not depend on what else runs. This script starts a raftkv cluster,
sends a fixed number of Puts from closed-loop clients spread over the members (followers forward
to the leader, as in the `put` workload), records every member with py-spy meanwhile (Python
frames only, sampling, no slowdown of the member) and prints, per member role, the CPU seconds
per Put read from /proc and the share of samples in each stage of the write path.

    .venv/bin/python -m bench.profile_put [--puts 6000] [--clients 64] [--out DIR]

The stage of a sample is the first rule (in STAGES order) whose pattern appears in its stack,
so a Put handler that proposes is counted under the innermost named stage it was in; the
write-path table (PATH_STAGES) instead charges a sample to the stage it runs under, converted
to microseconds of the member's CPU per Put (py-spy --gil samples only the thread holding the
GIL, so time in C without it (fsync, epoll, grpc's core threads) is spread over the stages).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from raftkv.pb.etcdserverpb import rpc_pb2

from bench.clusters import Kind, start_cluster
from bench.load import RPC_TIMEOUT_S, Client, leader_target

# Write-path stages by the function a sample runs under (first match in this order, anywhere
# in the stack): what a stage costs including everything it calls.
PATH_STAGES: list[tuple[str, tuple[str, ...]]] = [
    ("apply (mvcc, sqlite, lease, watch)", ("RaftNode._apply ",)),
    ("WAL write + fsync (worker thread)", ("GroupCommitWAL._write_batch",)),
    ("WAL group commit (loop side)", ("GroupCommitWAL._flush_loop",)),
    ("peer send (batch, grpc write)", ("PeerTransport._run_writer",)),
    ("peer receive + Raft step", ("PeerService.Stream",)),
    ("client RPC (handler, quota, propose, reply)", ("KVService.", "_unary.<locals>.handle")),
    ("Ready loop (Raft output, rest)", ("RaftNode._ready_loop",)),
    ("tick + read loops", ("RaftNode._tick_loop", "RaftNode._read_loop")),
    ("watch (catch-up, progress)", ("WatchableStore._sync_loop", "WatchableStore._progress")),
]
# Samples whose innermost frame is the event loop running a callback with no Python frame of
# its own: grpc.aio's Cython completion callbacks.
GRPC_CALLBACK = "Handle._run (asyncio/events.py"

# (stage, substrings of a frame "function (file)") — checked innermost-first over each stack.
STAGES: list[tuple[str, tuple[str, ...]]] = [
    ("wal encode+write", ("storage/wal.py",)),
    ("raft core", ("raftkv/raft/",)),
    ("watch notify", ("raftkv/watch/",)),
    ("mvcc+backend (sqlite)", ("raftkv/mvcc/", "storage/backend.py")),
    ("apply", ("raftkv/apply/",)),
    ("peer transport", ("raftkv/transport/",)),
    ("tracing/metrics", ("raft_tracing.py", "observability/")),
    ("ready loop", ("node/raft_node.py",)),
    ("api handlers", ("raftkv/api/", "node/server.py", "node/quota.py")),
    ("grpc aio", ("grpc/aio/", "grpc/_cython", "grpc/_")),
    ("asyncio loop", ("asyncio/",)),
]


def classify(stack: str) -> str:
    """The stage of one collapsed py-spy stack (frames separated by ';', innermost last)."""
    frames = stack.split(";")
    for frame in reversed(frames):
        for stage, patterns in STAGES:
            if any(p in frame for p in patterns):
                return stage
    return "other"


def classify_path(stack: str) -> str:
    """The write-path stage (PATH_STAGES) of one collapsed py-spy stack."""
    for stage, patterns in PATH_STAGES:
        if any(p in stack for p in patterns):
            return stage
    if stack.rsplit(";", 1)[-1].startswith(GRPC_CALLBACK):
        return "grpc.aio callbacks (Cython, no Python frame)"
    return "event loop, other"


def summarize(raw: Path, by: Callable[[str], str] = classify) -> dict[str, float]:
    """Shares of samples per stage from a py-spy raw (collapsed) file."""
    counts: Counter[str] = Counter()
    for line in raw.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if stack and n.isdigit():
            counts[by(stack)] += int(n)
    total = sum(counts.values()) or 1
    return {stage: counts[stage] / total for stage in sorted(counts, key=lambda s: -counts[s])}


async def drive(targets: list[str], puts: int, clients: int) -> None:
    value = b"v" * 256
    remaining = puts
    async with Client(targets) as client:

        async def worker(i: int) -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                await client.kv(i).Put(
                    rpc_pb2.PutRequest(key=b"prof/%d/%010d" % (i, remaining), value=value),
                    timeout=RPC_TIMEOUT_S,
                )

        await asyncio.gather(*(worker(i) for i in range(clients)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--puts", type=int, default=6000)
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--warmup", type=int, default=500)
    parser.add_argument("--out", type=Path, default=None, help="keep py-spy files here")
    parser.add_argument("--no-spy", action="store_true", help="CPU per Put only")
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="profile-put-"))
    out.mkdir(parents=True, exist_ok=True)
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    root = Path(tempfile.mkdtemp(prefix="bench-", dir=Path.cwd()))
    try:
        with start_cluster(Kind.RAFTKV, root) as cluster:
            leader = asyncio.run(leader_target(cluster.targets))
            asyncio.run(drive(cluster.targets, args.warmup, args.clients))
            roles = {
                m.name: ("leader" if m.target == leader else "follower") for m in cluster.members
            }
            spies = []
            if not args.no_spy:
                for m in cluster.members:
                    raw = out / f"{m.name}-{roles[m.name]}.txt"
                    cmd = [spy, "record", "--gil", "--format", "raw", "-r", "250", "-o", str(raw)]
                    spies.append(
                        subprocess.Popen(
                            [*cmd, "--pid", str(m.pid)],
                            stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL,
                        )
                    )
            cpu_before = {m.name: m.cpu_seconds() for m in cluster.members}
            asyncio.run(drive(cluster.targets, args.puts, args.clients))
            cpu = {m.name: m.cpu_seconds() - cpu_before[m.name] for m in cluster.members}
            for proc in spies:
                proc.send_signal(2)
            for proc in spies:
                proc.wait(timeout=60)
            report: dict[str, object] = {
                "puts": args.puts,
                "clients": args.clients,
                "cpu_us_per_put": {
                    f"{n} ({roles[n]})": round(c / args.puts * 1e6) for n, c in cpu.items()
                },
                "cpu_us_per_put_all_members": round(sum(cpu.values()) / args.puts * 1e6),
            }
            if not args.no_spy:
                files = sorted(out.glob("m*.txt"))
                per_put = {m.name: cpu[m.name] / args.puts * 1e6 for m in cluster.members}
                report["write_path_us_per_put"] = {
                    f.stem: {
                        k: round(v * per_put[f.stem.split("-")[0]])
                        for k, v in summarize(f, classify_path).items()
                    }
                    for f in files
                }
                report["innermost_module_shares"] = {
                    f.stem: {k: round(v, 3) for k, v in summarize(f).items()} for f in files
                }
                report["py_spy_files"] = str(out)
            print(json.dumps(report, indent=2))
    finally:
        shutil.rmtree(root, ignore_errors=True)
        if args.out is None and os.environ.get("KEEP_PROFILE") is None:
            shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    main()
