"""What tracing costs a 3-member raftkv cluster's writes: off, sampled 1 %, and sampled 100 %.

Run: ``python -m bench.tracing_bench [--seconds 4] [--rounds 3] [--clients 16]``.
Prints one JSON document. For each setting a fresh 3-member cluster takes `clients` concurrent
256-byte Puts in a closed loop (warm-up, then `seconds` measured); the settings are run in
rotation `rounds` times and each reports the median throughput and member CPU per Put, since a
shared machine's other load varies from run to run. Spans go over OTLP/gRPC to a receiver in
this process that counts and drops them, so exporting costs what it costs in production minus
the network. "off" is the default (`OTEL_TRACES_EXPORTER` unset); the cost of each setting is
relative to it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import tempfile
from concurrent import futures
from pathlib import Path

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from raftkv.pb.etcdserverpb import rpc_pb2

from bench.clusters import Kind, free_port, start_cluster
from bench.load import RPC_TIMEOUT_S, Client, closed_loop

CHECKOUT = Path(__file__).resolve().parent.parent
VALUE = bytes(256)
WARMUP_S = 1.0

SETTINGS: dict[str, dict[str, str]] = {
    "off": {},
    "1 % sampled": {
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
        "OTEL_TRACES_SAMPLER_ARG": "0.01",
    },
    "100 % sampled": {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_TRACES_SAMPLER": "always_on"},
}
_OTEL_VARIABLES = {name for env in SETTINGS.values() for name in env}


class SpanSink(trace_service_pb2_grpc.TraceServiceServicer):
    """An OTLP/gRPC receiver that counts the spans it is sent and keeps none."""

    def __init__(self) -> None:
        self.spans = 0

    def Export(
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: grpc.ServicerContext
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        for resource in request.resource_spans:
            self.spans += sum(len(scope.spans) for scope in resource.scope_spans)
        return trace_service_pb2.ExportTraceServiceResponse()


async def _measure(targets: list[str], clients: int, seconds: float) -> tuple[float, int]:
    """(puts/s, puts) of a closed loop of `clients` concurrent Puts."""
    async with Client(targets) as client:
        counter = 0

        async def put(i: int) -> None:
            nonlocal counter
            counter += 1
            key = b"bench/tracing/%d/%010d" % (i, counter)
            await client.kv(i).Put(rpc_pb2.PutRequest(key=key, value=VALUE), timeout=RPC_TIMEOUT_S)

        await closed_loop(clients, WARMUP_S, put)
        result = await closed_loop(clients, seconds, put)
    if result.errors:
        raise RuntimeError(f"{result.errors} puts failed: {result.first_error}")
    return result.ops_per_second, result.ops


def run_setting(env: dict[str, str], root: Path, clients: int, seconds: float) -> dict[str, float]:
    for name in _OTEL_VARIABLES:
        os.environ.pop(name, None)
    os.environ.update(env)  # the members inherit it
    cluster = start_cluster(Kind.RAFTKV, root)
    try:
        cpu_before = cluster.cpu_seconds()
        throughput, puts = asyncio.run(_measure(cluster.targets, clients, seconds))
        cpu = cluster.cpu_seconds() - cpu_before
    finally:
        cluster.stop()
    return {"puts_per_second": throughput, "member_cpu_us_per_put": cpu / puts * 1e6}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--clients", type=int, default=16)
    args = parser.parse_args(argv)

    sink = SpanSink()
    receiver = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(sink, receiver)
    port = free_port()
    receiver.add_insecure_port(f"127.0.0.1:{port}")
    receiver.start()
    os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"] = f"http://127.0.0.1:{port}"
    os.environ["OTEL_EXPORTER_OTLP_INSECURE"] = "true"

    runs: dict[str, list[dict[str, float]]] = {name: [] for name in SETTINGS}
    spans_exported = {name: 0 for name in SETTINGS}
    root = Path(tempfile.mkdtemp(prefix=".bench-tracing-", dir=CHECKOUT))
    try:
        for _ in range(args.rounds):
            for name, env in SETTINGS.items():
                before = sink.spans
                runs[name].append(run_setting(env, root, args.clients, args.seconds))
                spans_exported[name] += sink.spans - before
    finally:
        receiver.stop(grace=None)
        shutil.rmtree(root, ignore_errors=True)

    rows = []
    off_throughput = statistics.median(r["puts_per_second"] for r in runs["off"])
    off_cpu = statistics.median(r["member_cpu_us_per_put"] for r in runs["off"])
    for name, results in runs.items():
        throughput = statistics.median(r["puts_per_second"] for r in results)
        cpu = statistics.median(r["member_cpu_us_per_put"] for r in results)
        rows.append(
            {
                "tracing": name,
                "puts/s (median)": round(throughput, 1),
                "throughput vs off": f"{(throughput / off_throughput - 1) * 100:+.1f} %",
                "member CPU us/put (median)": round(cpu, 1),
                "CPU vs off": f"{(cpu / off_cpu - 1) * 100:+.1f} %",
                "spans exported": spans_exported[name],
            }
        )
    print(
        json.dumps(
            {
                "clients": args.clients,
                "seconds": args.seconds,
                "rounds": args.rounds,
                "settings": rows,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
