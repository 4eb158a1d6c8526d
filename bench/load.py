"""The load generator's client side: grpc.aio channels, a closed-loop driver and bulk loading.

One client for both systems: the generated etcd v3 stubs over plain grpc.aio, with no retries or
client-side balancing, so etcd and raftkv receive byte-identical requests. Requests are spread
over one channel (one HTTP/2 connection) per member, as a client given every endpoint would do;
a follower forwards writes to its leader in both systems.

A server that lacks a service answers UNIMPLEMENTED; that surfaces as `Unsupported`, which the
runner reports as "unsupported" instead of failing the run. Other RPC errors are counted, and
the first one is kept for the report.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from types import TracebackType

import grpc
from raftkv.pb.etcdserverpb import rpc_pb2, rpc_pb2_grpc

from bench.stats import LatencySummary

RPC_TIMEOUT_S = 10.0
# etcd's default --max-txn-ops: the most puts one Txn may carry.
MAX_TXN_OPS = 128

_CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
]


class Unsupported(Exception):
    """The server does not implement a service or method the workload needs."""


def check_unimplemented(error: grpc.aio.AioRpcError) -> None:
    """Raise `Unsupported` if `error` says the server lacks the method."""
    if error.code() == grpc.StatusCode.UNIMPLEMENTED:
        raise Unsupported(f"{error.code().name}: {error.details()}") from error


async def raise_if_stream_unimplemented(
    open_stream: Callable[[], grpc.aio.StreamStreamCall], wait: float = 1.0
) -> None:
    """Raise `Unsupported` if the server lacks the streaming method `open_stream` calls.

    A write to a stream the server already refused fails with a generic INTERNAL error that
    hides the reason, so after such a failure this opens the stream again and only reads: a
    server without the method answers UNIMPLEMENTED at once, one with it stays silent.
    """
    call = open_stream()
    try:
        await asyncio.wait_for(call.read(), wait)
    except grpc.aio.AioRpcError as error:
        check_unimplemented(error)
    except TimeoutError:
        pass
    finally:
        call.cancel()


def prefix_end(prefix: bytes) -> bytes:
    """The range_end that selects every key starting with `prefix` (etcd's convention)."""
    end = bytearray(prefix)
    while end:
        if end[-1] < 0xFF:
            end[-1] += 1
            return bytes(end)
        end.pop()
    return b"\x00"


class Client:
    """grpc.aio channels to a cluster's members and the etcd stubs on each of them.

    Stubs are picked round-robin by an index (a worker number), so worker i of n always uses
    the same connection and the workers are spread evenly over the members.
    """

    def __init__(self, targets: Sequence[str], channels_per_target: int = 1) -> None:
        if not targets:
            raise ValueError("no targets")
        self.channels = [
            grpc.aio.insecure_channel(target, options=_CHANNEL_OPTIONS)
            for _ in range(channels_per_target)
            for target in targets
        ]
        self._kv = [rpc_pb2_grpc.KVStub(c) for c in self.channels]
        self._watch = [rpc_pb2_grpc.WatchStub(c) for c in self.channels]
        self._lease = [rpc_pb2_grpc.LeaseStub(c) for c in self.channels]
        self._maintenance = [rpc_pb2_grpc.MaintenanceStub(c) for c in self.channels]

    def kv(self, i: int = 0) -> rpc_pb2_grpc.KVStub:
        return self._kv[i % len(self._kv)]

    def watch(self, i: int = 0) -> rpc_pb2_grpc.WatchStub:
        return self._watch[i % len(self._watch)]

    def lease(self, i: int = 0) -> rpc_pb2_grpc.LeaseStub:
        return self._lease[i % len(self._lease)]

    def maintenance(self, i: int = 0) -> rpc_pb2_grpc.MaintenanceStub:
        return self._maintenance[i % len(self._maintenance)]

    async def close(self) -> None:
        await asyncio.gather(*(c.close() for c in self.channels))

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


async def leader_target(targets: Sequence[str]) -> str:
    """The target of the member that leads now (by Maintenance.Status), else the first one."""
    for target in targets:
        async with grpc.aio.insecure_channel(target) as channel:
            stub = rpc_pb2_grpc.MaintenanceStub(channel)
            with contextlib.suppress(grpc.aio.AioRpcError):
                status = await stub.Status(rpc_pb2.StatusRequest(), timeout=RPC_TIMEOUT_S)
                if status.leader and status.leader == status.header.member_id:
                    return target
    return targets[0]


@dataclass
class LoadResult:
    """What a closed-loop run did: successful ops with their latencies, and errors."""

    seconds: float
    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    first_error: str = ""
    client_cpu_seconds: float = 0.0

    @property
    def ops(self) -> int:
        return len(self.latencies)

    @property
    def ops_per_second(self) -> float:
        return self.ops / self.seconds if self.seconds > 0 else 0.0

    @property
    def latency(self) -> LatencySummary:
        return LatencySummary.of(self.latencies)


async def closed_loop(
    workers: int, seconds: float, op: Callable[[int], Awaitable[object]]
) -> LoadResult:
    """Run `op(worker)` back to back in `workers` concurrent tasks for `seconds`.

    Each worker waits for its request before sending the next (a closed loop), so the offered
    load adapts to the server and latency is not inflated by an unbounded queue.
    """
    result = LoadResult(seconds=0.0)
    start = time.perf_counter()
    cpu_start = time.process_time()
    deadline = start + seconds

    async def worker(i: int) -> None:
        while time.perf_counter() < deadline:
            sent = time.perf_counter()
            try:
                await op(i)
            except grpc.aio.AioRpcError as error:
                check_unimplemented(error)
                result.errors += 1
                result.first_error = result.first_error or f"{error.code().name}: {error.details()}"
                continue
            result.latencies.append(time.perf_counter() - sent)

    await asyncio.gather(*(worker(i) for i in range(workers)))
    result.seconds = time.perf_counter() - start
    result.client_cpu_seconds = time.process_time() - cpu_start
    return result


def put_txn(keys: Sequence[bytes], value: bytes) -> rpc_pb2.TxnRequest:
    """An unconditional Txn that puts `value` under each of `keys`."""
    return rpc_pb2.TxnRequest(
        success=[
            rpc_pb2.RequestOp(request_put=rpc_pb2.PutRequest(key=key, value=value)) for key in keys
        ]
    )


class LoadFailed(Exception):
    """A bulk load stopped on an RPC error after `written` keys were acknowledged."""

    def __init__(self, written: int, error: grpc.aio.AioRpcError) -> None:
        super().__init__(f"after {written} keys: {error.code().name}: {error.details()}")
        self.written = written


async def load_keys(
    client: Client,
    prefix: bytes,
    start: int,
    stop: int,
    value: bytes,
    concurrency: int = 8,
    deadline: float | None = None,
) -> int:
    """Put keys `prefix + %010d` for i in [start, stop) in Txns of MAX_TXN_OPS puts each.

    Stops early at `deadline` (a time.perf_counter() value); returns how many keys were
    written. Bulk loading through Txns keeps the time spent loading small for both systems.
    The first failed Txn stops every worker and raises `LoadFailed` (or `Unsupported`).
    """
    batches = [
        range(first, min(first + MAX_TXN_OPS, stop)) for first in range(start, stop, MAX_TXN_OPS)
    ]
    written = 0
    next_batch = 0
    failure: grpc.aio.AioRpcError | None = None

    async def worker(i: int) -> None:
        nonlocal written, next_batch, failure
        while next_batch < len(batches) and failure is None:
            if deadline is not None and time.perf_counter() > deadline:
                return
            batch = batches[next_batch]
            next_batch += 1
            keys = [prefix + b"%010d" % n for n in batch]
            try:
                await client.kv(i).Txn(put_txn(keys, value), timeout=RPC_TIMEOUT_S * 3)
            except grpc.aio.AioRpcError as error:
                check_unimplemented(error)
                failure = failure or error
                return
            written += len(keys)

    await asyncio.gather(*(worker(i) for i in range(concurrency)))
    if failure is not None:
        raise LoadFailed(written, failure)
    return written
