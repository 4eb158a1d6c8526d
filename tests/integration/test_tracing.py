"""One client request is one trace, through Raft on the leader and on both followers.

Three real members run in this process (each a `MemberServer` with its own peer transport and
gRPC server on 127.0.0.1 ports, all on one event loop), each with its own tracer provider whose
in-memory exporter plays the collector; a plain gRPC client talks to them. The assertions walk
the span trees the members reported: same trace ID everywhere, and every span under the parent
the design says (see raftkv.node.raft_tracing).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from raftkv.api.server import build_grpc_server
from raftkv.node.config import ServerConfig
from raftkv.node.server import MemberServer
from raftkv.observability.tracing import Tracing
from raftkv.pb.etcdserverpb import rpc_pb2, rpc_pb2_grpc

from tests.support.etcd import free_port

CLIENT_TRACE_ID = 0x0AF7651916CD43DD8448EB211C80319C
CLIENT_SPAN_ID = 0xB7AD6B7169203331
CLIENT_TRACEPARENT = f"00-{CLIENT_TRACE_ID:032x}-{CLIENT_SPAN_ID:016x}-01"


@dataclass
class Member:
    name: str
    server: MemberServer
    grpc_server: grpc.aio.Server
    target: str
    exporter: InMemorySpanExporter

    @property
    def id(self) -> int:
        return self.server.member_id

    def spans(self, trace_id: int) -> list[ReadableSpan]:
        return [s for s in self.exporter.get_finished_spans() if s.context.trace_id == trace_id]


@dataclass
class Cluster:
    members: list[Member]

    def leader(self) -> Member:
        return next(m for m in self.members if m.server.node.is_leader)

    def followers(self) -> list[Member]:
        return [m for m in self.members if not m.server.node.is_leader]

    def spans(self, trace_id: int) -> list[ReadableSpan]:
        return [s for m in self.members for s in m.spans(trace_id)]

    async def settled(self, trace_id: int, done: Callable[[list[ReadableSpan]], bool]) -> None:
        """Wait (bounded) until the members' spans of `trace_id` satisfy `done`."""
        deadline = time.monotonic() + 10
        while not done(self.spans(trace_id)):
            assert time.monotonic() < deadline, _describe(self.spans(trace_id))
            await asyncio.sleep(0.02)


def _describe(spans: list[ReadableSpan]) -> str:
    return "\n".join(
        f"{instance(s)} {s.name} "
        f"{s.context.span_id:016x} <- {s.parent.span_id if s.parent else 0:016x}"
        for s in spans
    )


@contextlib.asynccontextmanager
async def in_process_cluster(root: Path) -> AsyncIterator[Cluster]:
    names = ["m1", "m2", "m3"]
    peers = {name: f"http://127.0.0.1:{free_port()}" for name in names}
    members: list[Member] = []
    try:
        for name in names:
            client_port = free_port()
            config = ServerConfig(
                name=name,
                data_dir=str(root / name),
                listen_client_urls=[f"http://127.0.0.1:{client_port}"],
                advertise_client_urls=[f"http://127.0.0.1:{client_port}"],
                listen_peer_urls=[peers[name]],
                initial_advertise_peer_urls=[peers[name]],
                initial_cluster={n: [u] for n, u in peers.items()},
                heartbeat_interval_ms=50,
                election_timeout_ms=500,
            )
            exporter = InMemorySpanExporter()
            tracing = Tracing.with_processors(
                [SimpleSpanProcessor(exporter)],
                Resource({"service.name": "raftkv", "service.instance.id": name}),
            )
            server = MemberServer(config, tracing=tracing)
            target = f"127.0.0.1:{client_port}"
            grpc_server = build_grpc_server(server, target, [tracing.server_interceptor()])
            members.append(Member(name, server, grpc_server, target, exporter))
        await asyncio.gather(*(m.server.start() for m in members))
        for member in members:
            await member.grpc_server.start()
        cluster = Cluster(members)
        await _wait_ready(cluster)
        for member in members:
            member.exporter.clear()
        yield cluster
    finally:
        for member in members:
            await member.grpc_server.stop(None)
        for member in members:
            with contextlib.suppress(Exception):
                await member.server.stop()


async def _wait_ready(cluster: Cluster) -> None:
    """A leader everyone follows, and every member has applied all it knows to be committed."""
    deadline = time.monotonic() + 15
    while True:
        nodes = [m.server.node for m in cluster.members]
        leaders = {n.leader for n in nodes}
        if (
            len(leaders) == 1
            and 0 not in leaders
            and all(n.applied_index >= n.committed_index > 0 for n in nodes)
            and len({len(m.server.applier.membership.members) for m in cluster.members}) == 1
        ):
            return
        assert time.monotonic() < deadline, "no stable leader"
        await asyncio.sleep(0.05)


def instance(span: ReadableSpan) -> str:
    return str(span.resource.attributes["service.instance.id"])


def by_name(spans: list[ReadableSpan], name: str, member: str) -> list[ReadableSpan]:
    return [s for s in spans if s.name == name and instance(s) == member]


def one(spans: list[ReadableSpan], name: str, member: str) -> ReadableSpan:
    found = by_name(spans, name, member)
    assert len(found) == 1, (name, member, _describe(spans))
    return found[0]


def child_of(span: ReadableSpan, parent: ReadableSpan) -> bool:
    return span.parent is not None and span.parent.span_id == parent.context.span_id


def test_put_on_leader_is_one_trace_across_the_cluster(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with in_process_cluster(tmp_path) as cluster:
            leader = cluster.leader()
            f1, f2 = cluster.followers()
            async with grpc.aio.insecure_channel(leader.target) as channel:
                await rpc_pb2_grpc.KVStub(channel).Put(
                    rpc_pb2.PutRequest(key=b"traced", value=b"v"),
                    metadata=(("traceparent", CLIENT_TRACEPARENT),),
                )

            def complete(spans: list[ReadableSpan]) -> bool:
                return len(by_name(spans, "raft.replicate", leader.name)) == 2 and all(
                    by_name(spans, "raft.apply", f.name) for f in (f1, f2)
                )

            await cluster.settled(CLIENT_TRACE_ID, complete)
            spans = cluster.spans(CLIENT_TRACE_ID)
            # The client's span is the root: the server span hangs under it.
            server = one(spans, "etcdserverpb.KV/Put", leader.name)
            assert server.kind is SpanKind.SERVER
            assert server.parent is not None and server.parent.span_id == CLIENT_SPAN_ID
            assert server.parent.is_remote
            propose = one(spans, "raft.propose", leader.name)
            assert child_of(propose, server)
            for stage in ("raft.append", "raft.commit", "raft.apply", "raft.respond"):
                assert child_of(one(spans, stage, leader.name), propose), stage
            append = one(spans, "raft.append", leader.name)
            fsync = one(spans, "wal.fsync", leader.name)
            assert child_of(fsync, append)
            assert append.context in [link.context for link in fsync.links]
            replicates = {
                s.attributes["raft.peer_id"]: s
                for s in by_name(spans, "raft.replicate", leader.name)
            }
            assert set(replicates) == {f"{f1.id:x}", f"{f2.id:x}"}
            for follower in (f1, f2):
                replicate = replicates[f"{follower.id:x}"]
                assert child_of(replicate, propose)
                f_append = one(spans, "raft.append", follower.name)
                f_fsync = one(spans, "wal.fsync", follower.name)
                f_apply = one(spans, "raft.apply", follower.name)
                assert child_of(f_append, replicate)
                assert child_of(f_fsync, f_append)
                assert child_of(f_apply, replicate)
                # The follower acknowledged after its fsync: the replication span covers it.
                assert replicate.end_time >= f_fsync.end_time
            assert {s.context.trace_id for s in spans} == {CLIENT_TRACE_ID}

    asyncio.run(scenario())


def server_span(member: Member, method: str) -> ReadableSpan:
    [span] = [s for s in member.exporter.get_finished_spans() if s.name == method]
    return span


def test_put_on_a_follower_and_the_watch_it_wakes(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with in_process_cluster(tmp_path) as cluster:
            leader = cluster.leader()
            called, watching = cluster.followers()
            async with (
                grpc.aio.insecure_channel(called.target) as to_called,
                grpc.aio.insecure_channel(watching.target) as to_watching,
            ):
                watch = rpc_pb2_grpc.WatchStub(to_watching).Watch()
                create = rpc_pb2.WatchCreateRequest(key=b"watched")
                await watch.write(rpc_pb2.WatchRequest(create_request=create))
                assert (await watch.read()).created
                await rpc_pb2_grpc.KVStub(to_called).Put(
                    rpc_pb2.PutRequest(key=b"watched", value=b"v")
                )
                event = await watch.read()
                assert [e.kv.key for e in event.events] == [b"watched"]
                watch.cancel()

            # No traceparent from the client: the called member's server span is the root.
            root = server_span(called, "etcdserverpb.KV/Put")
            assert root.parent is None
            trace_id = root.context.trace_id

            def complete(spans: list[ReadableSpan]) -> bool:
                return (
                    len(by_name(spans, "raft.replicate", leader.name)) == 2
                    and bool(by_name(spans, "watch.send", watching.name))
                    and bool(by_name(spans, "raft.apply", leader.name))
                )

            await cluster.settled(trace_id, complete)
            spans = cluster.spans(trace_id)
            propose = one(spans, "raft.propose", called.name)
            assert child_of(propose, root)
            assert child_of(one(spans, "raft.respond", called.name), propose)
            # The leader works under the called follower's proposal ...
            for stage in ("raft.append", "raft.commit", "raft.apply"):
                assert child_of(one(spans, stage, leader.name), propose), stage
            replicates = {
                s.attributes["raft.peer_id"]: s
                for s in by_name(spans, "raft.replicate", leader.name)
            }
            # ... and each follower under the leader's replication span to it.
            for follower in (called, watching):
                replicate = replicates[f"{follower.id:x}"]
                assert child_of(replicate, propose)
                assert child_of(one(spans, "raft.append", follower.name), replicate)
                assert child_of(one(spans, "raft.apply", follower.name), replicate)
            notify = one(spans, "watch.notify", watching.name)
            assert child_of(notify, one(spans, "raft.apply", watching.name))
            assert child_of(one(spans, "watch.send", watching.name), notify)

    asyncio.run(scenario())


def test_concurrent_requests_share_fsyncs_and_keep_their_own_traces(tmp_path: Path) -> None:
    count = 20

    async def scenario() -> None:
        async with in_process_cluster(tmp_path) as cluster:
            leader = cluster.leader()
            followers = cluster.followers()
            # A slow disk on the leader: proposals pile up behind its first fsync, so the next
            # Ready (one fsync, MsgApps with many entries) carries many requests.
            wal = leader.server.node.wal
            save = wal.save

            async def slow_save(*args: object, **kwargs: object) -> None:
                await asyncio.sleep(0.2)
                await save(*args, **kwargs)  # type: ignore[arg-type]

            wal.save = slow_save  # type: ignore[method-assign]
            trace_ids = [CLIENT_TRACE_ID + n for n in range(count)]
            async with grpc.aio.insecure_channel(leader.target) as channel:
                kv = rpc_pb2_grpc.KVStub(channel)
                await asyncio.gather(
                    *(
                        kv.Put(
                            rpc_pb2.PutRequest(key=b"k%d" % n, value=b"v"),
                            metadata=(("traceparent", f"00-{t:032x}-{CLIENT_SPAN_ID:016x}-01"),),
                        )
                        for n, t in enumerate(trace_ids)
                    )
                )
            parents: list[str] = []
            for trace_id in trace_ids:
                await cluster.settled(
                    trace_id,
                    lambda spans: all(by_name(spans, "raft.apply", f.name) for f in followers),
                )
                spans = cluster.spans(trace_id)
                propose = one(spans, "raft.propose", leader.name)
                replicates = {
                    s.attributes["raft.peer_id"]: s
                    for s in by_name(spans, "raft.replicate", leader.name)
                }
                for follower in followers:
                    append = one(spans, "raft.append", follower.name)
                    apply = one(spans, "raft.apply", follower.name)
                    assert apply.parent is not None and append.parent is not None
                    assert apply.parent.span_id == append.parent.span_id
                    # Under the leader's replication span to this follower when the MsgApp's
                    # one context was this request's, else under the request's proposal.
                    if child_of(append, replicates[f"{follower.id:x}"]):
                        parents.append("replicate")
                    else:
                        assert child_of(append, propose)
                        parents.append("propose")
            assert set(parents) == {"replicate", "propose"}
            fsyncs = [s for s in leader.exporter.get_finished_spans() if s.name == "wal.fsync"]
            assert sum(len(s.links) for s in fsyncs) == count  # each request linked once
            assert max(len(s.links) for s in fsyncs) > 1  # group commit: one fsync, many
            # Every link points at a raft.append span of one of the requests.
            appends = {
                s.context.span_id
                for s in leader.exporter.get_finished_spans()
                if s.name == "raft.append"
            }
            assert {link.context.span_id for s in fsyncs for link in s.links} == appends

    asyncio.run(scenario())


def test_unsampled_requests_leave_no_trace_anywhere(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with in_process_cluster(tmp_path) as cluster:
            leader = cluster.leader()
            unsampled = CLIENT_TRACEPARENT[:-2] + "00"
            async with grpc.aio.insecure_channel(leader.target) as channel:
                response = await rpc_pb2_grpc.KVStub(channel).Put(
                    rpc_pb2.PutRequest(key=b"k", value=b"v"), metadata=(("traceparent", unsampled),)
                )
            deadline = time.monotonic() + 10
            while any(
                m.server.applier.store.current_revision < response.header.revision
                for m in cluster.members
            ):
                assert time.monotonic() < deadline
                await asyncio.sleep(0.02)
            await asyncio.sleep(0.2)  # acknowledgements in flight
            assert [s.name for m in cluster.members for s in m.exporter.get_finished_spans()] == []

    asyncio.run(scenario())


def test_lease_expiry_is_a_trace_through_the_cluster(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with in_process_cluster(tmp_path) as cluster:
            leader = cluster.leader()
            async with grpc.aio.insecure_channel(leader.target) as channel:
                grant = await rpc_pb2_grpc.LeaseStub(channel).LeaseGrant(
                    rpc_pb2.LeaseGrantRequest(TTL=1)
                )
            deadline = time.monotonic() + 15
            while not [s for s in leader.exporter.get_finished_spans() if s.name == "lease.expire"]:
                assert time.monotonic() < deadline, "the lease did not expire"
                await asyncio.sleep(0.05)
            [expire] = [s for s in leader.exporter.get_finished_spans() if s.name == "lease.expire"]
            assert expire.parent is None
            assert expire.attributes is not None
            assert expire.attributes["raftkv.lease_id"] == grant.ID
            followers = cluster.followers()
            await cluster.settled(
                expire.context.trace_id,
                lambda spans: all(by_name(spans, "raft.apply", f.name) for f in followers),
            )
            spans = cluster.spans(expire.context.trace_id)
            propose = one(spans, "raft.propose", leader.name)
            assert child_of(propose, expire)
            assert propose.attributes is not None
            assert propose.attributes["raftkv.request"] == "lease_revoke"
            for follower in followers:
                one(spans, "raft.append", follower.name)

    asyncio.run(scenario())
