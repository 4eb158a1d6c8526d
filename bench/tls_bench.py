"""What TLS on the client port costs: gRPC puts over https versus http to the same member.

Run: ``python -m bench.tls_bench [--rounds 3] [--seconds 3] [--clients 1,16,64]``.
Prints one JSON document. It starts one raftkv member listening on an http and an https client
URL (a self-signed certificate, `raftkv.transport.tls.self_signed`) and runs closed-loop puts of
256-byte values over one connection, alternating the two URLs round by round. Both go through
the client-port front and its splice pump; on https the front only peeks at the ClientHello and
gRPC's C core terminates TLS. For each number of concurrent clients it reports the medians over
rounds of throughput, p50 and p99 latency, and the member's CPU per put.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc
from raftkv.pb.etcdserverpb import rpc_pb2, rpc_pb2_grpc
from raftkv.transport.tls import self_signed


def _port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _puts(
    channel: grpc.aio.Channel, clients: int, seconds: float, pid: int
) -> dict[str, float]:
    value = os.urandom(256)
    kv = rpc_pb2_grpc.KVStub(channel)
    await kv.Put(rpc_pb2.PutRequest(key=b"bench/tls/warm", value=value), timeout=30)
    latencies: list[float] = []
    cpu_before = _cpu_seconds(pid)
    deadline = time.perf_counter() + seconds
    counter = 0

    async def client(i: int) -> None:
        nonlocal counter
        while time.perf_counter() < deadline:
            counter += 1
            started = time.perf_counter()
            await kv.Put(rpc_pb2.PutRequest(key=b"bench/tls/%d" % counter, value=value))
            latencies.append(time.perf_counter() - started)

    await asyncio.gather(*(client(i) for i in range(clients)))
    cpu = _cpu_seconds(pid) - cpu_before
    latencies.sort()
    return {
        "ops_per_s": len(latencies) / seconds,
        "p50_ms": latencies[len(latencies) // 2] * 1e3,
        "p99_ms": latencies[int(len(latencies) * 0.99)] * 1e3,
        "cpu_us_per_put": cpu / max(len(latencies), 1) * 1e6,
    }


async def _run(args: argparse.Namespace, workdir: Path) -> dict[str, object]:
    cert, key = self_signed(workdir / "certs", ["127.0.0.1"])
    plain, secure, peer = _port(), _port(), _port()
    urls = f"http://127.0.0.1:{plain},https://127.0.0.1:{secure}"
    server = subprocess.Popen(
        [
            sys.executable, "-m", "raftkv.cli.server", "--name=b", f"--data-dir={workdir / 'b'}",
            f"--listen-client-urls={urls}", f"--advertise-client-urls={urls}",
            f"--listen-peer-urls=http://127.0.0.1:{peer}",
            f"--initial-advertise-peer-urls=http://127.0.0.1:{peer}",
            f"--initial-cluster=b=http://127.0.0.1:{peer}",
            f"--cert-file={cert}", f"--key-file={key}", "--log-level=warn",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        credentials = grpc.ssl_channel_credentials(cert.read_bytes())
        channels = {
            "http": grpc.aio.insecure_channel(f"127.0.0.1:{plain}"),
            "https": grpc.aio.secure_channel(f"127.0.0.1:{secure}", credentials),
        }
        for channel in channels.values():
            await asyncio.wait_for(channel.channel_ready(), 60)
        results: dict[str, object] = {}
        for clients in (int(c) for c in args.clients.split(",")):
            rounds: dict[str, list[dict[str, float]]] = {name: [] for name in channels}
            for _ in range(args.rounds):
                for name, channel in channels.items():
                    rounds[name].append(await _puts(channel, clients, args.seconds, server.pid))
            results[str(clients)] = {
                name: {
                    metric: round(statistics.median(r[metric] for r in runs), 2)
                    for metric in runs[0]
                }
                for name, runs in rounds.items()
            }
        for channel in channels.values():
            await channel.close()
        return results
    finally:
        server.terminate()
        server.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--clients", default="1,16,64")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="raftkv-tls-bench-") as workdir:
        print(json.dumps(asyncio.run(_run(args, Path(workdir))), indent=2))


if __name__ == "__main__":
    main()
