"""What the client-port front costs: puts through it versus straight to the gRPC server.

Run: ``python -m bench.front_bench [--rounds 3] [--seconds 3] [--clients 1,16,64]``.
Prints one JSON document. It starts one 3-member raftkv cluster and, against its leader, runs
closed-loop puts (256-byte values, one connection) two ways, alternating round by round:
`front` dials the client URL (TCP, through the front and its splice pump), `direct` dials the
member's internal gRPC socket (an abstract unix socket, found in /proc), which bypasses the
front. For each number of concurrent clients it reports the medians over rounds of throughput,
p50 and p99 latency, and the CPU all members used per put. The `direct` path also skips TCP,
so the difference is an upper bound on the front's cost.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import grpc
from raftkv.pb.etcdserverpb import rpc_pb2, rpc_pb2_grpc

from bench.clusters import Cluster, Kind, start_cluster
from bench.load import leader_target

CHECKOUT = Path(__file__).resolve().parent.parent


def internal_grpc_target(pid: int) -> str:
    """The `unix-abstract:` gRPC address the member with `pid` listens on behind its front."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if link.startswith("socket:["):
            inodes.add(link[len("socket:[") : -1])
    with open("/proc/net/unix") as table:
        for line in table:
            fields = line.split()
            if len(fields) >= 8 and fields[6] in inodes and fields[7].startswith("@raftkv-grpc-"):
                return "unix-abstract:" + fields[7][1:]
    raise RuntimeError(f"no internal gRPC socket found for pid {pid}")


async def _puts(target: str, clients: int, seconds: float, cluster: Cluster) -> dict[str, float]:
    value = os.urandom(256)
    latencies: list[float] = []
    errors = 0
    async with grpc.aio.insecure_channel(target) as channel:
        kv = rpc_pb2_grpc.KVStub(channel)
        await kv.Put(rpc_pb2.PutRequest(key=b"bench/front/warm", value=value), timeout=10)
        cpu_before = cluster.cpu_seconds()
        deadline = time.perf_counter() + seconds
        counter = 0

        async def client(i: int) -> None:
            nonlocal counter, errors
            while time.perf_counter() < deadline:
                counter += 1
                key = b"bench/front/%d/%d" % (i, counter)
                started = time.perf_counter()
                try:
                    await kv.Put(rpc_pb2.PutRequest(key=key, value=value), timeout=10)
                except grpc.aio.AioRpcError:
                    errors += 1
                    continue
                latencies.append(time.perf_counter() - started)

        await asyncio.gather(*(client(i) for i in range(clients)))
        cpu = cluster.cpu_seconds() - cpu_before
    latencies.sort()
    return {
        "ops_per_s": len(latencies) / seconds,
        "p50_ms": latencies[len(latencies) // 2] * 1e3,
        "p99_ms": latencies[int(len(latencies) * 0.99)] * 1e3,
        "members_cpu_us_per_op": cpu / max(len(latencies), 1) * 1e6,
        "errors": errors,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--clients", default="1,16,64")
    args = parser.parse_args()
    clients = [int(c) for c in args.clients.split(",")]
    with tempfile.TemporaryDirectory(dir=CHECKOUT, prefix=".bench-front-") as root:
        cluster = start_cluster(Kind.RAFTKV, Path(root))
        try:
            front = asyncio.run(leader_target(cluster.targets))
            leader = next(m for m in cluster.members if m.target == front)
            paths = {"front": front, "direct": internal_grpc_target(leader.pid)}
            runs: dict[str, dict[int, list[dict[str, float]]]] = {p: {} for p in paths}
            for round_no in range(args.rounds):
                order = list(paths) if round_no % 2 == 0 else list(reversed(paths))
                for n in clients:
                    for path in order:
                        result = asyncio.run(_puts(paths[path], n, args.seconds, cluster))
                        runs[path].setdefault(n, []).append(result)
        finally:
            cluster.stop()
    report = {
        path: {
            str(n): {key: statistics.median(r[key] for r in results) for key in results[0]}
            for n, results in by_clients.items()
        }
        for path, by_clients in runs.items()
    }
    print(json.dumps({"rounds": args.rounds, "seconds": args.seconds, **report}, indent=2))


if __name__ == "__main__":
    main()
