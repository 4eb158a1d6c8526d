"""RaftTracer's bookkeeping on its own, driven with hand-made Ready batches and messages: which
entries are traced, what a MsgApp carries, batched entries of several traces, and spans that
cannot finish (a silent follower, lost leadership) ending instead of piling up."""

from __future__ import annotations

import pytest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanContext, TraceFlags
from raftkv.node import raft_tracing
from raftkv.node.raft_tracing import GIVE_UP_SECONDS, RaftTracer, header_trace_context
from raftkv.observability.tracing import Tracing, decode, encode
from raftkv.pb.etcdserverpb import rpc_pb2
from raftkv.pb.raftpb import raft_pb2 as raftpb
from raftkv.pb.serverpb import internal_pb2 as serverpb
from raftkv.raft import Ready

LEADER, PEER_A, PEER_B = 1, 2, 3


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000_000_000

    def time_ns(self) -> int:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += int(seconds * 1e9)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(raft_tracing, "time", fake)
    return fake


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def tracer(exporter: InMemorySpanExporter) -> RaftTracer:
    tracing = Tracing.with_processors([SimpleSpanProcessor(exporter)], Resource({}))
    return RaftTracer(tracing, LEADER)


def context(trace_id: int, span_id: int) -> SpanContext:
    return SpanContext(trace_id, span_id, is_remote=True, trace_flags=TraceFlags(1))


def entry(index: int, trace: SpanContext | None, value: bytes = b"v") -> raftpb.Entry:
    request = serverpb.InternalRequest(put=rpc_pb2.PutRequest(key=b"k", value=value))
    request.header.id = index
    if trace is not None:
        request.header.trace_context = encode(trace)
    return raftpb.Entry(term=1, index=index, data=request.SerializeToString())


def msg_app(to: int, entries: list[raftpb.Entry], trace: bytes = b"") -> raftpb.Message:
    message = raftpb.Message(type=raftpb.MSG_APP, to=to, entries=entries, trace_context=trace)
    setattr(message, "from", LEADER)
    return message


def ack(peer: int, index: int) -> raftpb.Message:
    message = raftpb.Message(type=raftpb.MSG_APP_RESP, to=LEADER, index=index)
    setattr(message, "from", peer)
    return message


def named(exporter: InMemorySpanExporter, name: str) -> list[ReadableSpan]:
    return [s for s in exporter.get_finished_spans() if s.name == name]


def test_header_context_is_read_without_decoding_the_request() -> None:
    trace = context(7, 9)
    assert header_trace_context(entry(1, trace, value=b"x" * 300_000)) == encode(trace)
    assert header_trace_context(entry(2, None)) == b""
    assert header_trace_context(raftpb.Entry(index=3, data=b"")) == b""  # a leader's no-op
    change = raftpb.Entry(index=4, type=raftpb.ENTRY_CONF_CHANGE, data=b"\x0a\x02\x08\x01")
    assert header_trace_context(change) == b""
    assert header_trace_context(raftpb.Entry(index=5, data=b"\x0a\xff")) == b""


def test_leader_stages_and_what_each_msgapp_carries(
    tracer: RaftTracer, exporter: InMemorySpanExporter, clock: Clock
) -> None:
    proposal = context(0xA1, 0xB1)
    entries = [entry(5, proposal), entry(6, None)]
    tracer.persisting(Ready(entries=entries), is_leader=True)
    clock.advance(0.002)
    tracer.persisted(entries=2, fsync_seconds=0.001)
    to_a, to_b = msg_app(PEER_A, entries, b"core"), msg_app(PEER_B, entries[1:], b"")
    tracer.sending([to_a, to_b])
    assert to_b.trace_context == b""  # entry 6 is not traced
    clock.advance(0.003)
    tracer.received([ack(PEER_A, 6)])
    [replicate] = named(exporter, "raft.replicate")
    carried = decode(to_a.trace_context)
    assert carried is not None
    assert (carried.trace_id, carried.span_id) == (0xA1, replicate.context.span_id)
    assert replicate.parent == proposal
    assert replicate.attributes is not None and replicate.attributes["raft.peer_id"] == "2"
    assert replicate.end_time - replicate.start_time == 3_000_000  # type: ignore[operator]
    [append] = named(exporter, "raft.append")
    [fsync] = named(exporter, "wal.fsync")
    assert append.parent == proposal
    assert fsync.parent == append.context
    assert fsync.end_time - fsync.start_time == 1_000_000  # type: ignore[operator]
    assert fsync.attributes is not None and fsync.attributes["wal.entries"] == 2
    assert named(exporter, "raft.commit") == []  # still open: no commit index covers it yet
    tracer.persisting(Ready(hard_state=raftpb.HardState(term=1, commit=5)), is_leader=True)
    [commit] = named(exporter, "raft.commit")
    assert commit.parent == proposal


def test_a_follower_that_never_acknowledges_is_given_up(
    tracer: RaftTracer, exporter: InMemorySpanExporter, clock: Clock
) -> None:
    proposal = context(0xA2, 0xB2)
    entries = [entry(5, proposal)]
    tracer.persisting(Ready(entries=entries), is_leader=True)
    tracer.persisted(entries=1, fsync_seconds=0.001)
    tracer.sending([msg_app(PEER_A, entries), msg_app(PEER_B, entries)])
    tracer.received([ack(PEER_A, 5)])
    tracer.persisting(Ready(hard_state=raftpb.HardState(term=1, commit=5)), is_leader=True)
    with tracer.applying(5):
        pass
    assert [s.attributes["raft.peer_id"] for s in named(exporter, "raft.replicate")] == ["2"]  # type: ignore[index]
    clock.advance(GIVE_UP_SECONDS + 1)
    tracer.persisting(Ready(), is_leader=True)
    silent = [s for s in named(exporter, "raft.replicate") if s.attributes["raft.peer_id"] == "3"]  # type: ignore[index]
    assert len(silent) == 1
    assert silent[0].attributes["raft.incomplete"] == "gave up waiting"  # type: ignore[index]
    # Nothing is left open: a later ack from the silent follower changes nothing.
    tracer.received([ack(PEER_B, 5)])
    assert len(named(exporter, "raft.replicate")) == 2


def test_losing_leadership_ends_the_leader_spans(
    tracer: RaftTracer, exporter: InMemorySpanExporter, clock: Clock
) -> None:
    entries = [entry(5, context(0xA3, 0xB3))]
    tracer.persisting(Ready(entries=entries), is_leader=True)
    tracer.persisted(entries=1, fsync_seconds=None)
    assert named(exporter, "wal.fsync") == []  # nothing was owed an fsync
    tracer.sending([msg_app(PEER_A, entries)])
    tracer.persisting(Ready(), is_leader=False)
    spans = named(exporter, "raft.commit") + named(exporter, "raft.replicate")
    assert len(spans) == 2
    assert {s.attributes["raft.incomplete"] for s in spans} == {"leadership lost"}  # type: ignore[index]
    with tracer.applying(5):  # a later leader may still commit it: it is applied and traced
        pass
    assert len(named(exporter, "raft.apply")) == 1


def test_follower_batch_of_two_traces(
    tracer: RaftTracer, exporter: InMemorySpanExporter, clock: Clock
) -> None:
    first, second = context(0xC1, 0xD1), context(0xC2, 0xD2)
    replicate = context(0xC2, 0xEE)  # the leader's replication span, in the second trace
    entries = [entry(8, first), entry(9, None), entry(10, second)]
    tracer.received([msg_app(LEADER, entries, encode(replicate))])
    clock.advance(0.004)
    tracer.persisting(Ready(entries=entries), is_leader=False)
    tracer.persisted(entries=3, fsync_seconds=0.001)
    for index in (8, 9, 10):
        with tracer.applying(index):
            pass
    appends = {s.parent.trace_id: s for s in named(exporter, "raft.append")}  # type: ignore[union-attr]
    assert appends[0xC2].parent == replicate  # the message's context, for its own trace
    assert appends[0xC1].parent == first  # the other request: its own header context
    assert all(s.end_time - s.start_time == 4_000_000 for s in appends.values())  # type: ignore[operator]
    [fsync] = named(exporter, "wal.fsync")
    linked = {link.context.span_id for link in fsync.links}
    assert linked == {s.context.span_id for s in appends.values()}
    applies = named(exporter, "raft.apply")
    assert sorted(s.parent.span_id for s in applies) == [0xD1, 0xEE]  # type: ignore[union-attr]


def test_entries_stepped_but_not_in_the_next_ready_are_dropped(
    tracer: RaftTracer, exporter: InMemorySpanExporter, clock: Clock
) -> None:
    entries = [entry(4, context(0xF1, 0xF2))]
    tracer.received([msg_app(LEADER, entries, encode(context(0xF1, 0xF3)))])
    tracer.persisting(Ready(), is_leader=False)  # a duplicate: nothing new to persist
    tracer.persisting(Ready(entries=entries), is_leader=False)
    tracer.persisted(entries=1, fsync_seconds=0.001)
    with tracer.applying(4):
        pass
    assert exporter.get_finished_spans() == ()
