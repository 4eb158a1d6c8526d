"""The asyncio driver around the pure Raft core.

One task ticks the clock, one runs the Ready loop, one serves linearizable reads. The Ready loop
is the only place that touches the Raft core's output, in the order its contract demands:

1. install an incoming snapshot (backend file swap, snapshot file, WAL marker);
2. append entries and hard state to the WAL and wait for the fsync (group commit: proposals that
   arrive while the fsync runs are batched into the next Ready, so one fsync covers them all);
3. send messages (only now: they may promise what was just persisted);
4. apply committed entries in order and answer the proposers waiting on them;
5. advance, and take a Raft snapshot every `snapshot_count` applied entries.

Everything runs on one event loop thread; the only await in the loop is the WAL fsync, which
runs in a worker thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from raftkv.apply.applier import Applier
from raftkv.membership import Member
from raftkv.node.errors import NoLeaderError, RequestTimeoutError, ServerStoppedError
from raftkv.observability.metrics import ServerMetrics
from raftkv.pb.raftpb import raft_pb2 as raftpb
from raftkv.pb.serverpb import internal_pb2 as serverpb
from raftkv.raft import MemoryStorage, ProposalDroppedError, RawNode, StateType
from raftkv.storage.snapshotter import Snapshotter
from raftkv.storage.wal import GroupCommitWAL

if TYPE_CHECKING:
    from raftkv.node.raft_tracing import RaftTracer

log = logging.getLogger(__name__)

# Entries kept in memory after a snapshot so slightly lagging followers catch up without one.
SNAPSHOT_CATCH_UP_ENTRIES = 5000


@dataclass
class LeaderChange:
    """What listeners (lease, metrics) learn when the leader changes."""

    leader: int
    is_leader: bool
    term: int


class RequestIDs:
    """etcd's request ID scheme: 16 bits of member ID, then a time-seeded counter."""

    def __init__(self, member_id: int) -> None:
        prefix = (member_id & 0xFFFF) << 48
        suffix = (int(time.time() * 1000) << 8) & ((1 << 48) - 1)
        self._counter = itertools.count(suffix)
        self._prefix = prefix

    def next(self) -> int:
        return self._prefix | (next(self._counter) & ((1 << 48) - 1))


class RaftNode:
    """Runs one member's Raft core against its WAL, snapshots, transport and state machine."""

    def __init__(
        self,
        *,
        member_id: int,
        rawnode: RawNode,
        storage: MemoryStorage,
        wal: GroupCommitWAL,
        snapshotter: Snapshotter,
        applier: Applier,
        send: Callable[[list[raftpb.Message]], None],
        tick_seconds: float,
        election_ticks: int,
        snapshot_count: int,
        snapshot_index: int,
        request_timeout: float,
        metrics: ServerMetrics | None = None,
        tracer: RaftTracer | None = None,
    ) -> None:
        self.member_id = member_id
        self._metrics = metrics
        # None when tracing is off: every hook below is skipped after one test.
        self._tracer = tracer
        self.rawnode = rawnode
        self.storage = storage
        self.wal = wal
        self.snapshotter = snapshotter
        self.applier = applier
        self._send = send
        self.tick_seconds = tick_seconds
        self.election_ticks = election_ticks
        self.snapshot_count = snapshot_count
        self.request_timeout = request_timeout

        self.applied_index = applier.consistent_index
        self.committed_index = 0
        self.snapshot_index = snapshot_index
        self.conf_state = rawnode.status().conf_state
        self.leader = 0
        self.term = 0
        self.stopped = False
        self.leader_changes_seen = 0

        self._ids = RequestIDs(member_id)
        self._ready_wakeup = asyncio.Event()
        self._waiters: dict[int, asyncio.Future[Any]] = {}
        self._applied_waiters: list[tuple[int, int, asyncio.Future[None]]] = []
        self._applied_seq = itertools.count()
        self._read_wakeup = asyncio.Event()
        self._read_batch: asyncio.Future[None] | None = None
        self._read_states: dict[bytes, asyncio.Future[int]] = {}
        self._read_ids = itertools.count(1)
        self._incoming_snapshots: dict[int, Path] = {}
        self._leader_listeners: list[Callable[[LeaderChange], None]] = []
        self._apply_listeners: list[Callable[[], None]] = []
        self._tasks: list[asyncio.Task[None]] = []

    # ---- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._tick_loop(), name="raft-tick"),
            asyncio.create_task(self._ready_loop(), name="raft-ready"),
            asyncio.create_task(self._read_loop(), name="raft-read"),
        ]
        self._ready_wakeup.set()

    async def stop(self) -> None:
        self.stopped = True
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._fail_all(ServerStoppedError())

    def add_leader_listener(self, listener: Callable[[LeaderChange], None]) -> None:
        self._leader_listeners.append(listener)

    def add_apply_listener(self, listener: Callable[[], None]) -> None:
        """Called after each applied batch (the backend commit has happened)."""
        self._apply_listeners.append(listener)

    @property
    def pending_proposals(self) -> int:
        """Proposals waiting to be committed and applied (etcd_server_proposals_pending)."""
        return len(self._waiters)

    @property
    def is_leader(self) -> bool:
        return self.leader == self.member_id and self.leader != 0

    # ---- inputs ----------------------------------------------------------------------------

    def step(self, messages: list[raftpb.Message]) -> None:
        """Messages from peers (the transport calls this on the loop thread)."""
        if self._tracer is not None:
            self._tracer.received(messages)
        for message in messages:
            try:
                self.rawnode.step(message)
            except Exception:  # a malformed or stale peer message must not stop the member
                log.warning(
                    "dropped peer message %s from %x",
                    message.type,
                    message.__getattribute__("from"),
                )
        self._ready_wakeup.set()

    async def receive_snapshot(self, message: raftpb.Message, payload: Path) -> None:
        """A snapshot (message + backend file) fully received by the transport."""
        self._incoming_snapshots[message.snapshot.metadata.index] = payload
        self.step([message])

    def report_unreachable(self, member_id: int) -> None:
        self.rawnode.report_unreachable(member_id)

    def report_snapshot(self, member_id: int, failed: bool) -> None:
        self.rawnode.report_snapshot(member_id, failed)
        self._ready_wakeup.set()

    # ---- proposals ---------------------------------------------------------------------------

    async def propose(self, request: serverpb.InternalRequest) -> Any:
        """Replicate `request`, apply it, and return what applying it produced.

        Raises the domain error the apply produced, or RequestTimeoutError.
        """
        if self._tracer is not None:
            with self._tracer.proposing(request):
                return await self._propose(request)
        return await self._propose(request)

    async def _propose(self, request: serverpb.InternalRequest) -> Any:
        request_id = self._ids.next()
        request.header.id = request_id
        data = request.SerializeToString()
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._waiters[request_id] = future
        try:
            async with asyncio.timeout(self.request_timeout):
                await self._submit(lambda: self.rawnode.propose(data, request.header.trace_context))
                return await future
        except TimeoutError:
            raise RequestTimeoutError() from None
        finally:
            self._waiters.pop(request_id, None)

    async def propose_conf_change(self, change: raftpb.ConfChange) -> list[Member]:
        """Replicate a membership change; returns the member list after it applied."""
        change.id = self._ids.next()
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._waiters[change.id] = future

        def propose() -> None:
            self.rawnode.propose_conf_change(change)

        try:
            async with asyncio.timeout(self.request_timeout):
                await self._submit(propose)
                # A follower forwards the change; a leader that cannot take it yet (just
                # elected, or another change pending) drops it without a word. Proposing it
                # again each election timeout is safe: a copy applied after the original fails
                # validation (or, for an update, changes nothing), and nobody waits for it.
                while not future.done():
                    await asyncio.wait({future}, timeout=self.tick_seconds * self.election_ticks)
                    if not future.done() and not self.is_leader:
                        with contextlib.suppress(ProposalDroppedError):
                            propose()
                            self._ready_wakeup.set()
                return future.result()
        except TimeoutError:
            raise RequestTimeoutError() from None
        finally:
            self._waiters.pop(change.id, None)

    async def _submit(self, propose: Callable[[], None]) -> None:
        """Hand a proposal to Raft, waiting out moments with no leader."""
        while True:
            if self.stopped:
                raise ServerStoppedError()
            try:
                propose()
            except ProposalDroppedError:
                await asyncio.sleep(self.tick_seconds)
                continue
            self._ready_wakeup.set()
            return

    # ---- linearizable reads ------------------------------------------------------------------

    async def read_barrier(self) -> None:
        """Return once this member has applied everything committed before the call (ReadIndex).

        Concurrent callers share one ReadIndex round, as etcd's linearizable read loop does.
        """
        if self._read_batch is None:
            self._read_batch = asyncio.get_running_loop().create_future()
            self._read_wakeup.set()
        try:
            async with asyncio.timeout(self.request_timeout):
                await asyncio.shield(self._read_batch)
        except TimeoutError:
            raise RequestTimeoutError() from None

    async def _read_loop(self) -> None:
        while True:
            await self._read_wakeup.wait()
            self._read_wakeup.clear()
            batch, self._read_batch = self._read_batch, None
            if batch is None:
                continue
            try:
                index = await self._read_index_round()
                await self.wait_applied(index)
                if not batch.done():
                    batch.set_result(None)
            except Exception as error:
                if not batch.done():
                    batch.set_exception(error)
                    batch.exception()  # readers may all have timed out; don't warn about it

    async def _read_index_round(self) -> int:
        """Ask the leader for its commit index; retry each election timeout until answered."""
        loop = asyncio.get_running_loop()
        while not self.stopped:
            ctx = next(self._read_ids).to_bytes(8, "big")
            future: asyncio.Future[int] = loop.create_future()
            self._read_states[ctx] = future
            try:
                self.rawnode.read_index(ctx)
                self._ready_wakeup.set()
                async with asyncio.timeout(self.tick_seconds * self.election_ticks):
                    return await future
            except TimeoutError:
                continue
            finally:
                self._read_states.pop(ctx, None)
        raise ServerStoppedError()

    async def wait_applied(self, index: int) -> None:
        if self.applied_index >= index:
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._applied_waiters, (index, next(self._applied_seq), future))
        await future

    def transfer_leadership(self, target: int) -> None:
        """Ask Raft to hand leadership to `target`; `leader` changes once it has happened."""
        self.rawnode.transfer_leader(target)
        self._ready_wakeup.set()

    def halt(self) -> None:
        """Stop serving for good (this member was removed); the process then shuts down."""
        self.stopped = True
        self._fail_all(ServerStoppedError())

    def require_leader(self) -> None:
        """etcd's `hasleader` metadata: fail at once when this member knows no leader."""
        if self.leader == 0:
            raise NoLeaderError()

    # ---- the loops ---------------------------------------------------------------------------

    async def _tick_loop(self) -> None:
        next_tick = time.monotonic()
        while True:
            next_tick += self.tick_seconds
            await asyncio.sleep(max(0.0, next_tick - time.monotonic()))
            self.rawnode.tick()
            self._ready_wakeup.set()

    async def _ready_loop(self) -> None:
        try:
            while True:
                await self._ready_wakeup.wait()
                self._ready_wakeup.clear()
                while self.rawnode.has_ready():
                    ready = self.rawnode.ready()
                    await self._handle_ready(ready)
                    self.rawnode.advance(ready)
                    await self._maybe_snapshot()
        except asyncio.CancelledError:
            raise
        except Exception:
            # Persistence or apply failed: continuing could lose acknowledged data. Stop serving.
            log.exception("raft loop failed; member stops")
            self.stopped = True
            self._fail_all(ServerStoppedError())
            raise

    async def _handle_ready(self, ready: Any) -> None:
        tracer = self._tracer
        if ready.soft_state is not None:
            self._on_soft_state(ready.soft_state)
        if tracer is not None:
            tracer.persisting(ready, self.is_leader)
        if ready.snapshot is not None and ready.snapshot.metadata.index > 0:
            await self._install_snapshot(ready.snapshot)
        if ready.hard_state is not None or ready.entries:
            await self.wal.save(ready.hard_state, ready.entries, sync=ready.must_sync)
            if tracer is not None:
                fsync = self.wal.wal.last_fsync_seconds if ready.must_sync else None
                tracer.persisted(len(ready.entries), fsync)
        if ready.entries:
            self.storage.append(ready.entries)
        if ready.hard_state is not None:
            self.storage.set_hard_state(ready.hard_state)
            self.term = ready.hard_state.term
            self.committed_index = max(self.committed_index, ready.hard_state.commit)
        if ready.messages:
            if tracer is not None:
                tracer.sending(ready.messages)
            self._send(ready.messages)
        for read_state in ready.read_states:
            future = self._read_states.get(read_state.request_ctx)
            if future is not None and not future.done():
                future.set_result(read_state.index)
        if ready.committed_entries:
            self._apply(ready.committed_entries)

    def _on_soft_state(self, soft_state: Any) -> None:
        if soft_state.lead != self.leader and soft_state.lead != 0:
            self.leader_changes_seen += 1
        self.leader = soft_state.lead
        self.term = self.rawnode.term
        change = LeaderChange(
            leader=soft_state.lead,
            is_leader=soft_state.raft_state == StateType.LEADER,
            term=self.term,
        )
        for listener in self._leader_listeners:
            listener(change)

    def _apply(self, entries: list[raftpb.Entry]) -> None:
        tracer = self._tracer
        for entry in entries:
            if entry.index <= self.applied_index:
                # Already in the backend (consistent index), but Raft's own configuration is
                # rebuilt from the replayed log after a restart.
                if entry.type == raftpb.ENTRY_CONF_CHANGE:
                    self._replay_conf_change(entry)
                continue
            if entry.type == raftpb.ENTRY_CONF_CHANGE:
                self._apply_conf_change(entry)
            elif tracer is None:
                request_id, result = self.applier.apply_normal(entry)
                self._resolve(request_id, result)
            else:
                with tracer.applying(entry.index):
                    request_id, result = self.applier.apply_normal(entry)
                self._resolve(request_id, result)
            self.applied_index = entry.index
        started = time.perf_counter()
        self.applier.commit()
        if self._metrics is not None:
            self._metrics.applied_batch(len(entries), time.perf_counter() - started)
        while self._applied_waiters and self._applied_waiters[0][0] <= self.applied_index:
            _, _, future = heapq.heappop(self._applied_waiters)
            if not future.done():
                future.set_result(None)
        for listener in self._apply_listeners:
            listener()

    def _apply_conf_change(self, entry: raftpb.Entry) -> None:
        change = raftpb.ConfChange.FromString(entry.data)
        error = self.applier.apply_conf_change(entry.index, change)
        if error is None:
            self.conf_state = self.rawnode.apply_conf_change(change)
            self._resolve(change.id, self.applier.membership.sorted_members())
        else:
            self._resolve(change.id, error)

    def _replay_conf_change(self, entry: raftpb.Entry) -> None:
        # A change the member list refused when it was first applied was never applied to Raft.
        if not self.applier.membership.was_refused(entry.index):
            change = raftpb.ConfChange.FromString(entry.data)
            self.conf_state = self.rawnode.apply_conf_change(change)

    def _resolve(self, request_id: int, result: Any) -> None:
        future = self._waiters.get(request_id)
        if future is None or future.done():
            return
        if isinstance(result, BaseException):
            future.set_exception(result)
        else:
            future.set_result(result)

    async def _install_snapshot(self, snapshot: raftpb.Snapshot) -> None:
        index = snapshot.metadata.index
        payload = self._incoming_snapshots.pop(index, None)
        if payload is None:
            raise RuntimeError(f"snapshot at index {index} arrived without its database file")
        self.applier.restore(payload)
        self.snapshotter.save(snapshot)
        await self.wal.save_snapshot(index, snapshot.metadata.term)
        self.storage.apply_snapshot(snapshot)
        self.conf_state = snapshot.metadata.conf_state
        self.snapshot_index = index
        self.applied_index = max(self.applied_index, self.applier.consistent_index, index)
        self.committed_index = max(self.committed_index, index)
        for stale in [i for i in self._incoming_snapshots if i <= index]:
            self._incoming_snapshots.pop(stale).unlink(missing_ok=True)

    async def _maybe_snapshot(self) -> None:
        if self.applied_index - self.snapshot_index <= self.snapshot_count:
            return
        index = self.applied_index
        started = time.perf_counter()
        # The backend must be durable at `index` before the WAL before it can be released.
        self.applier.commit_durable()
        info = serverpb.SnapshotPayloadInfo(cluster_id=self.applier.membership.cluster_id)
        snapshot = self.storage.create_snapshot(index, self.conf_state, info.SerializeToString())
        self.snapshotter.save(snapshot)
        await self.wal.save_snapshot(index, snapshot.metadata.term)
        compact_to = index - SNAPSHOT_CATCH_UP_ENTRIES
        if compact_to > self.storage.first_index():
            self.storage.compact(compact_to)
        await self.wal.release_before(index)
        self.snapshotter.purge()
        self.snapshot_index = index
        if self._metrics is not None:
            self._metrics.snapshot_saved(time.perf_counter() - started)
        log.info("saved snapshot at index %d", index)

    def _fail_all(self, error: Exception) -> None:
        for future in list(self._waiters.values()):
            if not future.done():
                future.set_exception(error)
        for _, _, future in self._applied_waiters:
            if not future.done():
                future.set_exception(error)
        self._applied_waiters.clear()
