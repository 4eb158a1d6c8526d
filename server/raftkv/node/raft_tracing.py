"""The Raft stages of traced requests, as spans, on one member (the leader and the followers).

A traced proposal carries its `raft.propose` span's traceparent in `RequestHeader.trace_context`,
inside the log entry's data, so every member can tell which entries are traced without any
shared table. On top of that, the context travels in the Raft messages: the leader rewrites the
`Message.trace_context` of each MsgApp (which the Raft core fills from the proposal) to the
`raft.replicate` span of that follower, and the follower hangs its own spans under what the
message carried. One Put therefore makes one trace:

    <service>/<method>          SERVER span of the member the client called
      raft.propose              proposal submitted -> result back (the member that was called)
        raft.append             leader: the Ready holding the entry -> WAL write + fsync done
          wal.fsync             one per fsync; linked to the raft.append of every traced
                                entry it made durable (group commit covers many requests)
        raft.commit             leader: entry appended -> commit index covers it
        raft.replicate          leader, per follower: MsgApp carrying the entry sent -> acked
          raft.append           follower: MsgApp received -> WAL write + fsync done
            wal.fsync
          raft.apply            follower: applying the entry (watch.notify spans under it)
        raft.apply              leader (and the called member, if it is a follower)
        raft.respond            the called member: entry applied -> the proposer has the result

A MsgApp can carry entries of several requests but only one context; the follower uses it for
the entry of the same trace and each other traced entry's own header context for the rest.

Everything here runs on the member's event loop. Spans are built with explicit start times
where the stage began before it was known to be traced. Entries whose spans cannot end (a
follower that never acknowledges, a log truncated under a new leader) are given up after
`GIVE_UP_SECONDS` so the tables stay bounded.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any

from google.protobuf.message import DecodeError

from raftkv.observability.tracing import Span, SpanContext, Tracing, decode, encode
from raftkv.pb.raftpb import raft_pb2 as raftpb
from raftkv.pb.serverpb import internal_pb2 as serverpb

GIVE_UP_SECONDS = 30.0
_SWEEP_EVERY_NS = 1_000_000_000
_UNTRACED: AbstractContextManager[None] = nullcontext()


def header_trace_context(entry: raftpb.Entry) -> bytes:
    """The trace context in a normal entry's `InternalRequest` header, read without decoding
    the request itself (which may hold a large value). Protobuf writes fields in field-number
    order, so a header (field 1) is the first thing in the data when there is one."""
    data = entry.data
    if entry.type != raftpb.ENTRY_NORMAL or len(data) < 2 or data[0] != 0x0A:
        return b""
    length, shift, pos = 0, 0, 1
    try:
        while True:
            byte = data[pos]
            pos += 1
            length |= (byte & 0x7F) << shift
            if byte < 0x80:
                break
            shift += 7
        return serverpb.RequestHeader.FromString(data[pos : pos + length]).trace_context
    except (IndexError, DecodeError):
        return b""


@dataclass(slots=True, eq=False)
class _Traced:
    """A traced entry this member has in its log, and its spans still open."""

    index: int
    parent: SpanContext  # what this member's spans for the entry hang under
    origin: bytes  # the entry's header context: the proposer's raft.propose span
    started_ns: int  # leader: its Ready began; follower: the MsgApp arrived
    leader: bool
    commit: Span | None = None
    replicate: dict[int, Span] = field(default_factory=dict)
    acked: set[int] = field(default_factory=set)
    applied: bool = False


class RaftTracer:
    """Records the spans above for one member; `RaftNode` calls it from its hooks."""

    def __init__(self, tracing: Tracing, member_id: int) -> None:
        self._tracing = tracing
        self._member = f"{member_id:x}"
        # Follower: traced entries of MsgApps stepped since the last Ready.
        self._received: dict[int, tuple[SpanContext, bytes, int]] = {}
        self._entries: dict[int, _Traced] = {}
        self._persisting: list[_Traced] = []
        self._open_replicates = 0
        # This member's own traced proposals: origin context -> when its entry was applied (ns).
        self._local: dict[bytes, int] = {}
        self._was_leader = False
        self._next_sweep_ns = 0

    def _attributes(self, traced: _Traced, **extra: Any) -> dict[str, Any]:
        return {"raftkv.member_id": self._member, "raft.index": traced.index, **extra}

    # ---- the proposer ------------------------------------------------------------------------

    @contextmanager
    def proposing(self, request: serverpb.InternalRequest) -> Iterator[None]:
        """A `raft.propose` span around a proposal made under a recording span; puts its
        context in the request header, so it must be entered before the request is encoded."""
        attributes = {"raftkv.member_id": self._member, "raftkv.request": _kind(request)}
        with self._tracing.span_if_traced("raft.propose", attributes) as span:
            if span is None:
                yield
                return
            origin = encode(span.get_span_context())
            request.header.trace_context = origin
            self._local[origin] = 0
            try:
                yield
                applied_ns = self._local.get(origin, 0)
                if applied_ns:
                    respond = self._tracing.start_span(
                        "raft.respond",
                        span.get_span_context(),
                        start_ns=applied_ns,
                        attributes={"raftkv.member_id": self._member},
                    )
                    respond.end()
            finally:
                self._local.pop(origin, None)

    # ---- the Ready loop ----------------------------------------------------------------------

    def received(self, messages: list[raftpb.Message]) -> None:
        """Peer messages about to be stepped: a follower notes the traced entries a MsgApp
        brings, a leader ends the replication spans a MsgAppResp acknowledges."""
        now = 0
        for message in messages:
            if message.type == raftpb.MSG_APP:
                if not message.trace_context or not message.entries:
                    continue
                carried = decode(message.trace_context)
                if carried is None:
                    continue
                now = now or time.time_ns()
                for entry in message.entries:
                    origin = header_trace_context(entry)
                    own = decode(origin) if origin else None
                    if own is None:
                        continue
                    parent = carried if own.trace_id == carried.trace_id else own
                    self._received[entry.index] = (parent, origin, now)
            elif (
                message.type == raftpb.MSG_APP_RESP and self._open_replicates and not message.reject
            ):
                self._acked(getattr(message, "from"), message.index)

    def persisting(self, ready: Any, is_leader: bool) -> None:
        """A Ready is about to be persisted: find its traced entries and start their stages."""
        now = time.time_ns()
        received, self._received = self._received, {}
        if self._was_leader and not is_leader:
            self._leadership_lost(now)
        self._was_leader = is_leader
        if is_leader and ready.hard_state is not None:
            self._committed(ready.hard_state.commit, now)
        if now >= self._next_sweep_ns:
            self._sweep(now)
        persisting: list[_Traced] = []
        for entry in ready.entries:
            if is_leader:
                origin = header_trace_context(entry)
                parent = decode(origin) if origin else None
                if parent is None:
                    continue
                traced = _Traced(entry.index, parent, origin, now, leader=True)
                traced.commit = self._tracing.start_span(
                    "raft.commit", parent, start_ns=now, attributes=self._attributes(traced)
                )
            else:
                got = received.get(entry.index)
                if got is None:
                    continue
                traced = _Traced(entry.index, *got, leader=False)
            replaced = self._entries.get(entry.index)
            if replaced is not None:
                self._give_up(replaced, now, "entry overwritten")
            self._entries[entry.index] = traced
            persisting.append(traced)
        self._persisting = persisting

    def persisted(self, entries: int, fsync_seconds: float | None) -> None:
        """The Ready's entries are durable (`fsync_seconds` is None if no fsync was owed)."""
        persisting, self._persisting = self._persisting, []
        if not persisting:
            return
        now = time.time_ns()
        appends = [
            self._tracing.start_span(
                "raft.append",
                traced.parent,
                start_ns=traced.started_ns,
                attributes=self._attributes(traced, **{"raft.role": _role(traced)}),
            )
            for traced in persisting
        ]
        if fsync_seconds is not None:
            started = max(now - int(fsync_seconds * 1e9), persisting[0].started_ns)
            fsync = self._tracing.start_span(
                "wal.fsync",
                appends[0].get_span_context(),
                start_ns=started,
                links=[append.get_span_context() for append in appends],
                attributes={
                    "raftkv.member_id": self._member,
                    "wal.entries": entries,
                    "wal.traced_entries": len(appends),
                },
            )
            fsync.end(now)
        for append in appends:
            append.end(now)

    def sending(self, messages: list[raftpb.Message]) -> None:
        """Messages about to be sent: start a replication span per (traced entry, follower) at
        its first MsgApp, and make each MsgApp carry the span of its latest traced entry."""
        if not self._was_leader or not self._entries:
            return
        now = 0
        for message in messages:
            if message.type != raftpb.MSG_APP or not message.entries:
                continue
            low, high = message.entries[0].index, message.entries[-1].index
            peer = message.to
            latest: tuple[int, Span] | None = None
            for traced in self._entries.values():
                if not traced.leader or not low <= traced.index <= high or peer in traced.acked:
                    continue
                span = traced.replicate.get(peer)
                if span is None:
                    now = now or time.time_ns()
                    span = self._tracing.start_span(
                        "raft.replicate",
                        traced.parent,
                        start_ns=now,
                        attributes=self._attributes(traced, **{"raft.peer_id": f"{peer:x}"}),
                    )
                    traced.replicate[peer] = span
                    self._open_replicates += 1
                if latest is None or traced.index > latest[0]:
                    latest = (traced.index, span)
            if latest is not None:
                message.trace_context = encode(latest[1].get_span_context())

    def applying(self, index: int) -> AbstractContextManager[None]:
        """A `raft.apply` span, current while the entry at `index` is applied (if traced)."""
        traced = self._entries.get(index)
        if traced is None:
            return _UNTRACED
        return self._apply_span(traced)

    @contextmanager
    def _apply_span(self, traced: _Traced) -> Iterator[None]:
        attributes = self._attributes(traced, **{"raft.role": _role(traced)})
        with self._tracing.span_under(traced.parent, "raft.apply", attributes):
            yield
        now = time.time_ns()
        if traced.commit is not None:  # the commit was learned without a hard state change
            traced.commit.end(now)
            traced.commit = None
        traced.applied = True
        if traced.origin in self._local:
            self._local[traced.origin] = now
        self._forget_if_done(traced)

    # ---- bookkeeping -------------------------------------------------------------------------

    def _acked(self, peer: int, index: int) -> None:
        now = time.time_ns()
        for traced in list(self._entries.values()):
            if traced.index > index:
                continue
            span = traced.replicate.pop(peer, None)
            if span is not None:
                span.end(now)
                self._open_replicates -= 1
                traced.acked.add(peer)
                self._forget_if_done(traced)

    def _committed(self, commit: int, now: int) -> None:
        for traced in self._entries.values():
            if traced.commit is not None and traced.index <= commit:
                traced.commit.end(now)
                traced.commit = None

    def _forget_if_done(self, traced: _Traced) -> None:
        done = traced.applied and traced.commit is None and not traced.replicate
        if done and self._entries.get(traced.index) is traced:
            del self._entries[traced.index]

    def _end_open(self, traced: _Traced, now: int, why: str) -> None:
        for span in (traced.commit, *traced.replicate.values()):
            if span is not None:
                span.set_attribute("raft.incomplete", why)
                span.end(now)
        self._open_replicates -= len(traced.replicate)
        traced.replicate.clear()
        traced.commit = None

    def _give_up(self, traced: _Traced, now: int, why: str) -> None:
        self._end_open(traced, now, why)
        if self._entries.get(traced.index) is traced:
            del self._entries[traced.index]

    def _leadership_lost(self, now: int) -> None:
        for traced in list(self._entries.values()):
            if traced.leader:
                self._end_open(traced, now, "leadership lost")
                self._forget_if_done(traced)

    def _sweep(self, now: int) -> None:
        self._next_sweep_ns = now + _SWEEP_EVERY_NS
        limit = now - int(GIVE_UP_SECONDS * 1e9)
        for traced in [t for t in self._entries.values() if t.started_ns < limit]:
            self._give_up(traced, now, "gave up waiting")


def _role(traced: _Traced) -> str:
    return "leader" if traced.leader else "follower"


def _kind(request: serverpb.InternalRequest) -> str:
    return request.WhichOneof("request") or ""
