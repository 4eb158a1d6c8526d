"""The cluster workloads: each takes a running cluster and a profile and returns metrics.

Every workload talks to the cluster only through its endpoints (and, for memory and recovery,
the member processes), so the same code measures etcd and raftkv. Workloads raise
`bench.load.Unsupported` when the server lacks a service they need; the runner turns that into
an "unsupported" cell. The profile decides how long each phase runs: `quick` keeps a whole
side-by-side run within about three minutes, `full` within about twenty.

Loads are closed loops (each stream waits for its answer before sending again) spread over one
connection per member. The load generator is one Python process; on a small machine it shares
the CPUs with the members, so each concurrent phase also reports the CPU the members used per
request, which does not depend on how fast the client could push.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from raftkv.pb.etcdserverpb import rpc_pb2

from bench import checkperf
from bench.clusters import Cluster, Member, wait_serving
from bench.load import (
    RPC_TIMEOUT_S,
    Client,
    LoadFailed,
    LoadResult,
    check_unimplemented,
    closed_loop,
    leader_target,
    load_keys,
    prefix_end,
    raise_if_stream_unimplemented,
)
from bench.results import Better, Metric
from bench.stats import LatencySummary

VALUE_BYTES = 256
MIB = 1024 * 1024


@dataclass(frozen=True)
class Profile:
    """How much of each workload to run."""

    name: str
    seconds: float  # each measured phase
    warmup: float
    put_concurrency: tuple[int, ...] = (16, 64)
    read_concurrency: int = 64
    read_keys: int = 1000
    watchers: int = 100
    watch_streams: int = 10
    watch_rate: int = 100  # puts/s in the paced phase
    watch_burst: int = 200  # puts in the as-fast-as-possible phase
    lease_streams: int = 16
    memory_keys: tuple[int, ...] = (100_000,)
    memory_budget_s: float = 120.0  # per system, for loading all memory stages
    checkperf_loads: tuple[str, ...] = ("s",)
    recovery_keys: int = 0  # 0: recovery is not run
    recovery_budget_s: float = 120.0


QUICK = Profile(name="quick", seconds=1.0, warmup=0.2, watch_burst=100, memory_budget_s=45.0)
FULL = Profile(
    name="full",
    seconds=8.0,
    warmup=1.0,
    watch_burst=500,
    memory_keys=(100_000, 1_000_000),
    memory_budget_s=240.0,
    checkperf_loads=("s", "m", "l"),
    recovery_keys=200_000,
)


@dataclass(frozen=True)
class Workload:
    name: str
    title: str
    description: str
    run: Callable[[Cluster, Profile], Awaitable[list[Metric]]]
    # Metrics the report's summary shows for this workload.
    headlines: tuple[str, ...] = ()
    # Seconds the workload may take per system before it is abandoned.
    time_limit: Callable[[Profile], float] = field(default=lambda p: 60 + 20 * p.seconds)


def _value(size: int = VALUE_BYTES) -> bytes:
    return os.urandom(size)


def _ms(seconds: float) -> float:
    return seconds * 1000


def _latency_metrics(label: str, result: LoadResult) -> list[Metric]:
    if not result.latencies:
        raise RuntimeError(
            f"{label}: no request succeeded ({result.errors} errors: {result.first_error})"
        )
    lat = result.latency
    out = [
        Metric(f"{label}: throughput", result.ops_per_second, "ops/s", Better.HIGHER),
        Metric(f"{label}: p50", _ms(lat.p50), "ms", Better.LOWER),
        Metric(f"{label}: p90", _ms(lat.p90), "ms", Better.LOWER),
        Metric(f"{label}: p99", _ms(lat.p99), "ms", Better.LOWER),
    ]
    if result.errors:
        out.append(
            Metric(f"{label}: errors ({result.first_error})", result.errors, "", Better.LOWER)
        )
    return out


async def _measured(
    cluster: Cluster,
    profile: Profile,
    label: str,
    workers: int,
    op: Callable[[int], Awaitable[object]],
) -> list[Metric]:
    """Warm up, then run `op` in a closed loop; latency, throughput and member CPU per op."""
    await closed_loop(workers, profile.warmup, op)
    cpu_before = cluster.cpu_seconds()
    result = await closed_loop(workers, profile.seconds, op)
    cpu = cluster.cpu_seconds() - cpu_before
    metrics = _latency_metrics(label, result)
    if workers > 1:
        metrics.append(
            Metric(f"{label}: member CPU per op", cpu / result.ops * 1e6, "us", Better.LOWER)
        )
        metrics.append(
            Metric(
                f"{label}: load generator CPU", result.client_cpu_seconds / result.seconds, "cores"
            )
        )
    return metrics


async def puts(cluster: Cluster, profile: Profile) -> list[Metric]:
    value = _value()
    metrics: list[Metric] = []
    # One client, one request at a time, against the leader: the commit latency floor.
    async with Client([await leader_target(cluster.targets)]) as leader:
        counter = 0

        async def put_one(i: int) -> None:
            nonlocal counter
            counter += 1
            await leader.kv(i).Put(
                rpc_pb2.PutRequest(key=b"bench/put/seq/%010d" % counter, value=value),
                timeout=RPC_TIMEOUT_S,
            )

        metrics += await _measured(cluster, profile, "1 client", 1, put_one)

    async with Client(cluster.targets) as client:
        for workers in profile.put_concurrency:
            key_counter = 0

            async def put_many(i: int) -> None:
                nonlocal key_counter
                key_counter += 1
                await client.kv(i).Put(
                    rpc_pb2.PutRequest(key=b"bench/put/%d/%010d" % (i, key_counter), value=value),
                    timeout=RPC_TIMEOUT_S,
                )

            metrics += await _measured(cluster, profile, f"{workers} clients", workers, put_many)
    return metrics


def _range_op(
    client: Client, keys: list[bytes], serializable: bool
) -> Callable[[int], Awaitable[object]]:
    """A closed-loop op reading the keys round-robin through worker i's connection."""
    counter = 0

    async def get(i: int) -> None:
        nonlocal counter
        counter += 1
        await client.kv(i).Range(
            rpc_pb2.RangeRequest(key=keys[counter % len(keys)], serializable=serializable),
            timeout=RPC_TIMEOUT_S,
        )

    return get


async def reads(cluster: Cluster, profile: Profile) -> list[Metric]:
    prefix = b"bench/read/"
    keys = [prefix + b"%010d" % n for n in range(profile.read_keys)]
    workers = profile.read_concurrency
    async with Client(cluster.targets) as client:
        await load_keys(client, prefix, 0, profile.read_keys, _value())
        # One client on the leader: a ReadIndex round without forwarding.
        async with Client([await leader_target(cluster.targets)]) as leader:
            metrics = await _measured(
                cluster, profile, "linearizable, 1 client", 1, _range_op(leader, keys, False)
            )
        metrics += await _measured(
            cluster,
            profile,
            f"linearizable, {workers} clients",
            workers,
            _range_op(client, keys, False),
        )
        metrics += await _measured(
            cluster,
            profile,
            f"serializable, {workers} clients",
            workers,
            _range_op(client, keys, True),
        )
    return metrics


class _WatchPhase:
    """Events one phase expects and what has arrived so far."""

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.received = 0
        self.latencies: list[float] = []
        self.last_receive = 0.0
        self.done = asyncio.Event()

    def record(self, latency: float, now: float) -> None:
        self.received += 1
        self.latencies.append(latency)
        self.last_receive = now
        if self.received >= self.expected:
            self.done.set()


async def watch_fanout(cluster: Cluster, profile: Profile) -> list[Metric]:
    """N watchers on one prefix; every put is delivered N times.

    The value starts with the writer's clock (perf_counter_ns) and a phase byte, so the reader
    measures put-sent to event-received latency. Phase 0 paces puts at `watch_rate`/s
    (delivery latency at a sustainable rate); phase 1 writes `watch_burst` puts as fast as 16
    writers can and measures how fast all events arrive (delivery throughput).
    """
    prefix = b"bench/watch/"
    watchers = profile.watchers
    paced_puts = max(1, int(profile.watch_rate * profile.seconds))
    phases = [_WatchPhase(paced_puts * watchers), _WatchPhase(profile.watch_burst * watchers)]
    pad = bytes(VALUE_BYTES - 9)
    drain_timeout = 10 + 2 * profile.seconds

    async with Client(cluster.targets) as client:
        calls = []
        per_stream = [watchers // profile.watch_streams] * profile.watch_streams
        for i in range(watchers % profile.watch_streams):
            per_stream[i] += 1
        create = rpc_pb2.WatchRequest(
            create_request=rpc_pb2.WatchCreateRequest(key=prefix, range_end=prefix_end(prefix))
        )
        try:
            # One create at a time, each confirmed before the next (and before any put, or a
            # watcher would miss events). A server without Watch fails the first read.
            for s, count in enumerate(per_stream):
                call = client.watch(s).Watch(timeout=None)
                calls.append(call)
                for _ in range(count):
                    try:
                        await call.write(create)
                        response = await asyncio.wait_for(call.read(), RPC_TIMEOUT_S)
                    except grpc.aio.AioRpcError as error:
                        check_unimplemented(error)
                        await raise_if_stream_unimplemented(client.watch(s).Watch)
                        raise
                    if response is grpc.aio.EOF:
                        raise RuntimeError("watch stream closed during creation")
                    if response.canceled or not response.created:
                        raise RuntimeError(f"watch not created: {response}")

            async def reader(call: grpc.aio.StreamStreamCall) -> None:
                while True:
                    response = await call.read()
                    if response is grpc.aio.EOF:
                        return
                    now_ns = time.perf_counter_ns()
                    now = now_ns / 1e9
                    for event in response.events:
                        value = event.kv.value
                        sent_ns = int.from_bytes(value[:8], "big")
                        phases[value[8]].record((now_ns - sent_ns) / 1e9, now)

            readers = [asyncio.create_task(reader(call)) for call in calls]
            counter = 0

            async def put(phase: int, i: int = 0) -> None:
                nonlocal counter
                counter += 1
                stamp = time.perf_counter_ns().to_bytes(8, "big") + bytes([phase]) + pad
                await client.kv(i).Put(
                    rpc_pb2.PutRequest(key=prefix + b"%010d" % counter, value=stamp),
                    timeout=RPC_TIMEOUT_S,
                )

            # Phase 0: paced. Each put is its own task so a slow commit does not delay the next.
            start = time.perf_counter()
            tasks = []
            for n in range(paced_puts):
                await asyncio.sleep(max(0.0, start + n / profile.watch_rate - time.perf_counter()))
                tasks.append(asyncio.create_task(put(0, n)))
            await asyncio.gather(*tasks)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(phases[0].done.wait(), drain_timeout)

            # Phase 1: burst.
            burst_start = time.perf_counter()
            cpu_before = cluster.cpu_seconds()
            remaining = profile.watch_burst

            async def burst_writer(i: int) -> None:
                nonlocal remaining
                while remaining > 0:
                    remaining -= 1
                    await put(1, i)

            await asyncio.gather(*(burst_writer(i) for i in range(16)))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(phases[1].done.wait(), drain_timeout)
            burst_cpu = cluster.cpu_seconds() - cpu_before
            for task in readers:
                if task.done() and task.exception() is not None:
                    raise RuntimeError("a watch stream failed") from task.exception()
                task.cancel()
        finally:
            for call in calls:
                call.cancel()

    paced, burst = phases
    if not paced.latencies:
        raise RuntimeError("no watch event arrived")
    lat = LatencySummary.of(paced.latencies)
    burst_seconds = max(burst.last_receive - burst_start, 1e-9)
    return [
        Metric("paced: delivery p50", _ms(lat.p50), "ms", Better.LOWER),
        Metric("paced: delivery p90", _ms(lat.p90), "ms", Better.LOWER),
        Metric("paced: delivery p99", _ms(lat.p99), "ms", Better.LOWER),
        Metric(
            "paced: events delivered",
            100 * paced.received / paced.expected,
            "%",
            Better.HIGHER,
        ),
        Metric(
            "burst: events/s delivered", burst.received / burst_seconds, "events/s", Better.HIGHER
        ),
        Metric(
            "burst: events delivered", 100 * burst.received / burst.expected, "%", Better.HIGHER
        ),
        Metric(
            "burst: member CPU per delivered event",
            burst_cpu / max(burst.received, 1) * 1e6,
            "us",
            Better.LOWER,
        ),
    ]


async def lease_keepalive(cluster: Cluster, profile: Profile) -> list[Metric]:
    """Keep-alive streams, each renewing its own lease back to back (one request in flight)."""
    async with Client(cluster.targets) as client:
        lease_ids = []
        for i in range(profile.lease_streams):
            try:
                grant = await client.lease(i).LeaseGrant(
                    rpc_pb2.LeaseGrantRequest(TTL=60), timeout=RPC_TIMEOUT_S
                )
            except grpc.aio.AioRpcError as error:
                check_unimplemented(error)
                raise
            lease_ids.append(grant.ID)
        calls = [client.lease(i).LeaseKeepAlive(timeout=None) for i in range(len(lease_ids))]
        try:
            try:
                await calls[0].write(rpc_pb2.LeaseKeepAliveRequest(ID=lease_ids[0]))
                await asyncio.wait_for(calls[0].read(), RPC_TIMEOUT_S)
            except grpc.aio.AioRpcError as error:
                check_unimplemented(error)
                await raise_if_stream_unimplemented(client.lease(0).LeaseKeepAlive)
                raise

            async def keepalive(i: int) -> None:
                await calls[i].write(rpc_pb2.LeaseKeepAliveRequest(ID=lease_ids[i]))
                response = await asyncio.wait_for(calls[i].read(), RPC_TIMEOUT_S)
                if response is grpc.aio.EOF:
                    raise RuntimeError("keep-alive stream closed by the server")
                if response.TTL <= 0:
                    raise RuntimeError(f"lease {lease_ids[i]:x} expired")

            return await _measured(cluster, profile, f"{len(calls)} streams", len(calls), keepalive)
        finally:
            for call in calls:
                call.cancel()


def _dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _count_label(n: int) -> str:
    """1000000 -> '1M', 100000 -> '100k'."""
    if n % 1_000_000 == 0:
        return f"{n // 1_000_000}M"
    if n % 1000 == 0:
        return f"{n // 1000}k"
    return str(n)


async def memory(cluster: Cluster, profile: Profile) -> list[Metric]:
    """RSS of each member after loading N keys (256-byte values) through 128-put Txns.

    Stages run in order (100k, then up to 1M); a stage that cannot finish within what is left
    of the budget is reported as not reached, with how far the load got.
    """
    prefix = b"bench/mem/"
    value = _value()
    baseline = [m.rss_bytes() for m in cluster.members]
    metrics = [Metric("idle RSS, largest member", max(baseline) / MIB, "MiB", Better.LOWER)]
    deadline = time.perf_counter() + profile.memory_budget_s
    loaded = 0
    async with Client(cluster.targets) as client:
        for stage in profile.memory_keys:
            label = _count_label(stage) + " keys"
            started, before = time.perf_counter(), loaded
            try:
                loaded += await load_keys(client, prefix, loaded, stage, value, deadline=deadline)
            except LoadFailed as failure:
                # Keep what the earlier stages measured; say where this one stopped.
                metrics.append(
                    Metric(f"{label}: not reached", f"load failed {failure}".replace("|", "/"))
                )
                break
            if loaded < stage:
                metrics.append(
                    Metric(
                        f"{label}: not reached",
                        f"{loaded} keys loaded in the {profile.memory_budget_s:.0f} s budget",
                    )
                )
                break
            rate = (stage - before) / (time.perf_counter() - started)
            await asyncio.sleep(1.0)  # let apply and compaction settle
            rss = [m.rss_bytes() for m in cluster.members]
            disk = [_dir_bytes(m.data_dir) for m in cluster.members]
            metrics += [
                Metric(f"{label}: load rate (128-put Txns)", rate, "keys/s", Better.HIGHER),
                Metric(f"{label}: RSS, largest member", max(rss) / MIB, "MiB", Better.LOWER),
                Metric(
                    f"{label}: RSS growth per key per member",
                    (sum(rss) - sum(baseline)) / len(rss) / stage,
                    "bytes",
                    Better.LOWER,
                ),
                Metric(f"{label}: data dir, largest member", max(disk) / MIB, "MiB", Better.LOWER),
            ]
    return metrics


def _check_perf_workload(load: str) -> Workload:
    limit, clients = checkperf.LOAD_MODELS[load]

    async def run(cluster: Cluster, profile: Profile) -> list[Metric]:
        report = await asyncio.to_thread(checkperf.run_check_perf, cluster.endpoints, load)
        metrics = report.metrics()
        if report.cleanup_error:
            metrics.append(
                Metric("cleanup (DeleteRange of the prefix)", f"failed: {report.cleanup_error}")
            )
        return metrics

    return Workload(
        name=f"checkperf-{load}",
        title=f"etcdctl check perf --load={load}",
        description=(
            f"etcd's own check: {clients} Go clients put 256-byte keys with 1 KiB values at "
            f"up to {limit} writes/s for {checkperf.CHECK_SECONDS} s, then delete the prefix. "
            f"PASS needs > {int(limit * 0.9)} writes/s, slowest request <= 500 ms, "
            "stddev <= 100 ms and no errors."
        ),
        run=run,
        headlines=("verdict", "throughput"),
        time_limit=lambda p: checkperf.CHECK_SECONDS + 120,
    )


async def _follower(cluster: Cluster) -> Member:
    leader = await leader_target(cluster.targets)
    return next(m for m in cluster.members if m.target != leader)


async def _restart_follower(cluster: Cluster) -> tuple[float, float]:
    """SIGKILL a follower and start it again; (data dir MiB at the kill, seconds to serve)."""
    follower = await _follower(cluster)
    data_mib = _dir_bytes(follower.data_dir) / MIB
    follower.kill(signal.SIGKILL)
    started = time.monotonic()
    follower.start()
    await asyncio.to_thread(wait_serving, follower, 120.0)
    return data_mib, time.monotonic() - started


async def recovery(cluster: Cluster, profile: Profile) -> list[Metric]:
    """Restart a follower (SIGKILL) when nearly empty, then after writing N keys.

    The first restart is the fixed cost (process start, imports, joining); the second adds
    reading the data back. Keys go in as 128-put Txns, so the WAL holds N/128 large entries.
    Time is from process start to the first linearizable Range the member answers.
    """
    _, empty_s = await _restart_follower(cluster)
    async with Client(cluster.targets) as client:
        loaded = await load_keys(
            client,
            b"bench/recovery/",
            0,
            profile.recovery_keys,
            _value(),
            deadline=time.perf_counter() + profile.recovery_budget_s,
        )
    data_mib, loaded_s = await _restart_follower(cluster)
    return [
        Metric("nearly empty: restart to first linearizable read", empty_s, "s", Better.LOWER),
        Metric("keys written before the second kill", loaded, "keys"),
        Metric("follower data dir at the second kill", data_mib, "MiB"),
        Metric(
            "after the writes: restart to first linearizable read",
            loaded_s,
            "s",
            Better.LOWER,
        ),
    ]


def _checkperf_names(profile: Profile) -> list[str]:
    return [f"checkperf-{load}" for load in profile.checkperf_loads]


WORKLOADS: list[Workload] = [
    Workload(
        "put",
        "Writes (Put, 256-byte values)",
        "1 client sending one Put at a time to the leader; then 16 and 64 concurrent clients "
        "over one connection per member (followers forward to the leader).",
        puts,
        headlines=("1 client: p50", "64 clients: throughput", "64 clients: member CPU per op"),
    ),
    Workload(
        "range",
        "Reads (Range of one key out of 1000)",
        "Linearizable reads (a ReadIndex round through the leader) from 1 client on the leader "
        "and from 64 clients spread over the members; serializable reads (the member's local "
        "state) from 64 clients.",
        reads,
        headlines=(
            "linearizable, 64 clients: throughput",
            "linearizable, 64 clients: member CPU per op",
            "serializable, 64 clients: throughput",
            "serializable, 64 clients: member CPU per op",
        ),
    ),
    Workload(
        "watch",
        "Watch fan-out",
        "100 watchers on one prefix, in 10 Watch streams spread over the members. A paced "
        "phase (100 puts/s) measures put-to-delivery latency; a burst phase (16 writers, as "
        "fast as they can) measures events delivered per second. Every put is delivered to all "
        "watchers.",
        watch_fanout,
        headlines=("paced: delivery p50", "burst: events/s delivered"),
    ),
    Workload(
        "lease",
        "Lease keep-alive",
        "16 LeaseKeepAlive streams, each renewing its own 60 s lease with one request in "
        "flight; requests/s answered.",
        lease_keepalive,
        headlines=("16 streams: throughput", "16 streams: member CPU per op"),
    ),
    Workload(
        "memory",
        "Memory after loading keys",
        "Keys with 256-byte values loaded through Txns of 128 puts (8 in flight); RSS read "
        "from /proc after a 1 s pause. etcd's RSS includes the pages of its bbolt mmap it has "
        "touched.",
        memory,
        headlines=("100k keys: RSS, largest member",),
        time_limit=lambda p: p.memory_budget_s + 60,
    ),
    *(_check_perf_workload(load) for load in checkperf.LOAD_MODELS),
    Workload(
        "recovery",
        "Restart of a member with a large WAL",
        "A follower is SIGKILLed and started again on its data dir, once while the cluster is "
        "nearly empty and once after keys were written through 128-put Txns; time from "
        "process start to its first linearizable read.",
        recovery,
        headlines=("after the writes: restart to first linearizable read",),
        time_limit=lambda p: p.recovery_budget_s + 180,
    ),
]


def selected(profile: Profile, only: list[str] | None) -> tuple[list[Workload], dict[str, str]]:
    """The workloads to run for `profile` (or just `only`), and why the others are skipped."""
    skipped: dict[str, str] = {}
    chosen = []
    names = {w.name for w in WORKLOADS}
    if only:
        unknown = sorted(set(only) - names - {"checkperf"})
        if unknown:
            raise ValueError(f"unknown workloads {unknown}; known: {sorted(names)}")
    for workload in WORKLOADS:
        if (
            only
            and workload.name not in only
            and not ("checkperf" in only and workload.name.startswith("checkperf-"))
        ):
            continue
        if workload.name.startswith("checkperf-") and workload.name not in _checkperf_names(
            profile
        ):
            skipped[workload.name] = f"not part of the {profile.name} run"
            continue
        if workload.name == "recovery" and profile.recovery_keys == 0:
            skipped[workload.name] = f"not part of the {profile.name} run"
            continue
        chosen.append(workload)
    return chosen, skipped
