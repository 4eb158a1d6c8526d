"""The load a robustness run puts on the cluster, and what it records for the checkers.

Everything speaks raw gRPC (grpc.aio stubs, one channel per member) rather than through
`raftkv.client`, on purpose: the client retries and fails over, which would hide from the
history what the server really answered. Each request goes to one member chosen at random, with
a deadline; a failed read is forgotten, a failed write is recorded as of unknown outcome.

- `KVClient`s run Put, linearizable Range, Delete and two kinds of CAS transaction over a few
  keys, writing unique values, into one shared history.
- `Watcher`s watch the whole key space and record every response, reopening their stream on
  another member (at the revision after the last event) when it breaks, when the server
  cancels it, or now and then on purpose; a compacted start resumes at the compaction revision.
  They ask for progress notifications as they go.
- `LockWorker`s take the Lock service's lock under a lease and write through transactions
  fenced on the lock key's create revision; some stall past their lease on purpose.
- A `DurableWriter` writes keys that are never overwritten, to find lost acknowledged writes.
- `Compactor` compacts behind the slowest full watcher, so those watchers never lose events.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import grpc
from raftkv.pb.etcdserverpb import rpc_pb2, rpc_pb2_grpc
from raftkv.pb.mvccpb import kv_pb2
from raftkv.pb.v3lockpb import v3lock_pb2, v3lock_pb2_grpc

from tests.robustness.history import Call, Kind, Op, Result, unknown
from tests.robustness.watchcheck import Event, Response, Session, WatchLog

KEY_PREFIX = "lin/"
FENCE_KEY = b"fence/l"
LOCK_NAME = b"lock/l"
DURABLE_PREFIX = "dur/"
ALL_KEYS = b"\0"  # key and range_end both "\0": the whole key space
_OP_TIMEOUT_S = 3.0


class Endpoint:
    """One member's client URL: a channel and the stubs the workload uses."""

    def __init__(self, name: str, target: str) -> None:
        self.name = name
        self.channel = grpc.aio.insecure_channel(target)
        self.kv = rpc_pb2_grpc.KVStub(self.channel)
        self.watch = rpc_pb2_grpc.WatchStub(self.channel)
        self.lease = rpc_pb2_grpc.LeaseStub(self.channel)
        self.lock = v3lock_pb2_grpc.LockStub(self.channel)
        self.maintenance = rpc_pb2_grpc.MaintenanceStub(self.channel)

    async def close(self) -> None:
        await self.channel.close()


def _value(kv: kv_pb2.KeyValue) -> str:
    return kv.value.decode(errors="replace")


def _read(revision: int, kvs: Sequence[kv_pb2.KeyValue], succeeded: bool = True) -> Result:
    if not kvs:
        return Result(revision, succeeded=succeeded)
    return Result(revision, _value(kvs[0]), kvs[0].mod_revision, succeeded=succeeded)


@dataclass
class KVClient:
    client_id: int
    endpoints: list[Endpoint]
    rng: random.Random
    history: list[Call]
    keys: int = 4
    # The last value and mod_revision this client saw of each key, to make CAS succeed often.
    known: dict[str, tuple[str | None, int]] = field(default_factory=dict)
    seq: int = 0

    def _next_op(self) -> Op:
        key = f"{KEY_PREFIX}{self.rng.randrange(self.keys)}"
        self.seq += 1
        value = f"c{self.client_id}-{self.seq}"
        roll = self.rng.random()
        if roll < 0.35:
            return Op(Kind.GET, key)
        if roll < 0.65:
            return Op(Kind.PUT, key, value)
        if roll < 0.72:
            return Op(Kind.DELETE, key)
        seen_value, seen_rev = self.known.get(key, (None, 0))
        if roll < 0.86 and seen_value is not None:
            return Op(Kind.CAS_VALUE, key, value, expect=seen_value)
        return Op(Kind.CAS_REV, key, value, expect_rev=seen_rev)

    async def _execute(self, endpoint: Endpoint, op: Op) -> Result:
        key = op.key.encode()
        kv = endpoint.kv
        if op.kind is Kind.GET:
            resp = await kv.Range(rpc_pb2.RangeRequest(key=key), timeout=_OP_TIMEOUT_S)
            return _read(resp.header.revision, resp.kvs)
        if op.kind is Kind.DELETE:
            resp = await kv.DeleteRange(rpc_pb2.DeleteRangeRequest(key=key), timeout=_OP_TIMEOUT_S)
            return Result(resp.header.revision, deleted=resp.deleted)
        value = (op.value or "").encode()
        if op.kind is Kind.PUT:
            put = rpc_pb2.PutRequest(key=key, value=value)
            resp = await kv.Put(put, timeout=_OP_TIMEOUT_S)
            return Result(resp.header.revision)
        if op.kind is Kind.CAS_VALUE:
            compare = rpc_pb2.Compare(
                key=key,
                result=rpc_pb2.Compare.EQUAL,
                target=rpc_pb2.Compare.VALUE,
                value=(op.expect or "").encode(),
            )
        else:
            compare = rpc_pb2.Compare(
                key=key,
                result=rpc_pb2.Compare.EQUAL,
                target=rpc_pb2.Compare.MOD,
                mod_revision=op.expect_rev,
            )
        txn = rpc_pb2.TxnRequest(
            compare=[compare],
            success=[rpc_pb2.RequestOp(request_put=rpc_pb2.PutRequest(key=key, value=value))],
            failure=[rpc_pb2.RequestOp(request_range=rpc_pb2.RangeRequest(key=key))],
        )
        resp = await kv.Txn(txn, timeout=_OP_TIMEOUT_S)
        if resp.succeeded:
            return Result(resp.header.revision)
        return _read(resp.header.revision, resp.responses[0].response_range.kvs, False)

    def _learn(self, op: Op, result: Result) -> None:
        if op.kind is Kind.GET or (
            op.kind in (Kind.CAS_VALUE, Kind.CAS_REV) and not result.succeeded
        ):
            self.known[op.key] = (result.value, result.mod_rev)
        elif op.kind is Kind.DELETE:
            self.known[op.key] = (None, 0)
        else:
            self.known[op.key] = (op.value, result.revision)

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            op = self._next_op()
            endpoint = self.rng.choice(self.endpoints)
            call = time.monotonic()
            try:
                result = await self._execute(endpoint, op)
            except grpc.aio.AioRpcError:
                if op.kind is not Kind.GET:
                    self.history.append(unknown(self.client_id, op, call))
                await asyncio.sleep(0.05)
                continue
            self.history.append(Call(self.client_id, op, call, time.monotonic(), result))
            self._learn(op, result)


def _event(e: kv_pb2.Event) -> Event:
    kv = e.kv
    prev = None
    if e.HasField("prev_kv"):
        prev = (_value(e.prev_kv), e.prev_kv.mod_revision)
    if e.type == kv_pb2.Event.PUT:
        return Event("PUT", kv.key.decode(errors="replace"), _value(kv), kv.mod_revision, prev)
    return Event("DELETE", kv.key.decode(errors="replace"), None, kv.mod_revision, prev)


def _response(resp: rpc_pb2.WatchResponse) -> Response:
    now = time.monotonic()
    if resp.created:
        return Response(now, resp.header.revision, "created")
    if resp.compact_revision:
        return Response(now, resp.header.revision, "compacted", (), resp.compact_revision)
    if resp.canceled:
        return Response(now, resp.header.revision, "canceled")
    if resp.events:
        return Response(now, resp.header.revision, "events", tuple(map(_event, resp.events)))
    return Response(now, resp.header.revision, "progress")


class Watcher:
    """Watches the whole key space from `start`, across failures; see the module docstring."""

    def __init__(
        self,
        name: str,
        endpoints: list[Endpoint],
        rng: random.Random,
        *,
        prev_kv: bool,
        start: int = 1,
        hop_every: float = 8.0,
    ) -> None:
        self.log = WatchLog(name, prev_kv)
        self._endpoints = endpoints
        self._rng = rng
        self._next_start = start
        self._hop_every = hop_every
        self.seen_through = start - 1
        self.until: int | None = None
        self.reached = asyncio.Event()
        self._closed = False

    def close(self) -> None:
        """Make `run` return after its current session. Cancelling the task alone is not
        enough: grpc.aio and asyncio.wait_for (Python 3.11) can swallow a cancellation."""
        self._closed = True

    def finish_at(self, revision: int) -> None:
        """Set `reached` once events up to `revision` have been received."""
        self.until = revision
        if self.seen_through >= revision:
            self.reached.set()

    async def run(self) -> None:
        """Watch until closed; `reached` is set once events up to `until` arrived."""
        while not self._closed:
            endpoint = self._rng.choice(self._endpoints)
            session = Session(self._next_start, endpoint.name)
            self.log.sessions.append(session)
            with contextlib.suppress(grpc.aio.AioRpcError, asyncio.TimeoutError):
                await asyncio.wait_for(
                    self._session(endpoint, session),
                    timeout=self._rng.uniform(0.5, 1.5) * self._hop_every,
                )
            if session.compacted:
                self._next_start = session.compacted
            else:
                self._next_start = max(session.last_revision(), session.start - 1) + 1
            if not session.responses or session.responses[-1].kind != "events":
                await asyncio.sleep(0.05)

    async def _session(self, endpoint: Endpoint, session: Session) -> None:
        call = endpoint.watch.Watch()
        create = rpc_pb2.WatchCreateRequest(
            key=ALL_KEYS,
            range_end=ALL_KEYS,
            start_revision=session.start,
            prev_kv=self.log.prev_kv,
        )
        await call.write(rpc_pb2.WatchRequest(create_request=create))

        async def ask_progress() -> None:
            while True:
                await asyncio.sleep(self._rng.uniform(0.3, 1.0))
                await call.write(
                    rpc_pb2.WatchRequest(progress_request=rpc_pb2.WatchProgressRequest())
                )

        asker = asyncio.create_task(ask_progress())
        try:
            async for resp in call:
                response = _response(resp)
                session.responses.append(response)
                if response.kind == "events":
                    self.seen_through = max(self.seen_through, response.events[-1].mod_rev)
                    if self.until is not None and self.seen_through >= self.until:
                        self.reached.set()
                elif response.kind in ("compacted", "canceled"):
                    return
        finally:
            asker.cancel()
            call.cancel()
            with contextlib.suppress(BaseException):
                await asker


@dataclass
class LockWorker:
    """Takes the lock, writes "start" and "end" through fenced transactions, unlocks."""

    worker_id: int
    endpoints: list[Endpoint]
    rng: random.Random
    stall_rate: float = 0.15
    sessions: int = 0
    stalled: int = 0
    acknowledged: list[tuple[str, int]] = field(default_factory=list)  # (value, revision)
    refused: list[str] = field(default_factory=list)

    async def _fenced(self, ep: Endpoint, lock_key: bytes, created: int, value: str) -> None:
        txn = rpc_pb2.TxnRequest(
            compare=[
                rpc_pb2.Compare(
                    key=lock_key,
                    result=rpc_pb2.Compare.EQUAL,
                    target=rpc_pb2.Compare.CREATE,
                    create_revision=created,
                )
            ],
            success=[
                rpc_pb2.RequestOp(
                    request_put=rpc_pb2.PutRequest(key=FENCE_KEY, value=value.encode())
                )
            ],
        )
        with contextlib.suppress(grpc.aio.AioRpcError):
            resp = await ep.kv.Txn(txn, timeout=_OP_TIMEOUT_S)
            if resp.succeeded:
                self.acknowledged.append((value, resp.header.revision))
            else:
                self.refused.append(value)

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            ep = self.rng.choice(self.endpoints)
            stall = self.rng.random() < self.stall_rate
            ttl = 2 if stall else 10
            try:
                lease = await ep.lease.LeaseGrant(
                    rpc_pb2.LeaseGrantRequest(TTL=ttl), timeout=_OP_TIMEOUT_S
                )
            except grpc.aio.AioRpcError:
                await asyncio.sleep(0.1)
                continue
            try:
                await self._hold(ep, lease.ID, stall, ttl)
            except grpc.aio.AioRpcError:
                await asyncio.sleep(0.1)
            finally:
                with contextlib.suppress(grpc.aio.AioRpcError):
                    await ep.lease.LeaseRevoke(
                        rpc_pb2.LeaseRevokeRequest(ID=lease.ID), timeout=_OP_TIMEOUT_S
                    )

    async def _hold(self, ep: Endpoint, lease_id: int, stall: bool, ttl: int) -> None:
        locked = await ep.lock.Lock(
            v3lock_pb2.LockRequest(name=LOCK_NAME, lease=lease_id), timeout=15
        )
        got = await ep.kv.Range(rpc_pb2.RangeRequest(key=locked.key), timeout=_OP_TIMEOUT_S)
        if not got.kvs:
            return  # the lease ran out before we looked
        created = got.kvs[0].create_revision
        self.sessions += 1
        holder = f"w{self.worker_id}-{self.sessions}"
        await self._fenced(ep, locked.key, created, f"{holder}:start")
        await asyncio.sleep(self.rng.uniform(0.02, 0.2))
        if stall:
            # Stop keeping the lock alive: the lease expires, somebody else takes the lock, and
            # the fence must refuse our late write.
            self.stalled += 1
            await asyncio.sleep(ttl + 2.0)
        await self._fenced(ep, locked.key, created, f"{holder}:end")
        await ep.lock.Unlock(v3lock_pb2.UnlockRequest(key=locked.key), timeout=_OP_TIMEOUT_S)


def check_lock_fencing(
    merged: dict[int, tuple[Event, ...]], workers: Sequence[LockWorker]
) -> list[str]:
    """No two holders' fenced writes interleave: in revision order, once another holder has
    written, an earlier holder never writes again; and acknowledged fenced writes are there."""
    violations = []
    order = [
        (rev, e.value or "")
        for rev, events in sorted(merged.items())
        for e in events
        if e.key == FENCE_KEY.decode() and e.type == "PUT"
    ]
    finished: set[str] = set()
    current = None
    for rev, value in order:
        holder = value.split(":")[0]
        if holder != current:
            if current is not None:
                finished.add(current)
            if holder in finished:
                violations.append(
                    f"revision {rev}: {value} written after another holder took the lock"
                )
            current = holder
    in_log = {(value, rev) for rev, value in order}
    for worker in workers:
        for value, rev in worker.acknowledged:
            if (value, rev) not in in_log:
                violations.append(f"fenced write {value} at {rev} acknowledged but not in the log")
    return violations


@dataclass
class DurableWriter:
    """Writes dur/<n> keys one after another; remembers which were acknowledged."""

    endpoints: list[Endpoint]
    rng: random.Random
    acknowledged: dict[str, int] = field(default_factory=dict)  # key -> revision

    async def run(self, stop: asyncio.Event) -> None:
        n = 0
        while not stop.is_set():
            n += 1
            key = f"{DURABLE_PREFIX}{n:06d}"
            ep = self.rng.choice(self.endpoints)
            with contextlib.suppress(grpc.aio.AioRpcError):
                resp = await ep.kv.Put(
                    rpc_pb2.PutRequest(key=key.encode(), value=key.encode()),
                    timeout=_OP_TIMEOUT_S,
                )
                self.acknowledged[key] = resp.header.revision
            await asyncio.sleep(0.02)


@dataclass
class Compactor:
    """Compacts behind the slowest of `watchers` (which therefore never see a compaction)."""

    endpoints: list[Endpoint]
    watchers: list[Watcher]
    rng: random.Random
    margin: int = 20
    done: list[int] = field(default_factory=list)
    last: int = 0

    async def compact_once(self) -> int:
        safe = min(w.seen_through for w in self.watchers) - self.margin
        if safe <= self.last:
            return self.last
        self.last = safe
        ep = self.rng.choice(self.endpoints)
        await ep.kv.Compact(rpc_pb2.CompactionRequest(revision=safe), timeout=_OP_TIMEOUT_S)
        self.done.append(safe)
        return safe

    async def run(self, stop: asyncio.Event, every: float = 4.0) -> None:
        while not stop.is_set():
            await asyncio.sleep(self.rng.uniform(0.5, 1.5) * every)
            with contextlib.suppress(grpc.aio.AioRpcError):
                await self.compact_once()
