"""The Watch gRPC service over a real gRPC server and client on 127.0.0.1, with the member
reduced to what the service uses (headers, leader) and writes made directly on a real KVStore."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import grpc
from raftkv.api.watch import WatchService, add_to_server
from raftkv.mvcc import KVStore
from raftkv.node.errors import NoLeaderError
from raftkv.pb.etcdserverpb import rpc_pb2, rpc_pb2_grpc
from raftkv.pb.mvccpb import kv_pb2
from raftkv.watch import WatchableStore

from tests.watch.harness import async_test, put, revisions

CLUSTER_ID, MEMBER_ID, TERM = 0xC1, 0xE1, 5
ELECTION_TIMEOUT_MS = 50


@dataclass
class FakeNode:
    leader: int = MEMBER_ID
    term: int = TERM

    def require_leader(self) -> None:
        if self.leader == 0:
            raise NoLeaderError()


class OpenGate:
    """The member's auth gate with auth disabled: every watch may be created."""

    async def check_watch(self, key: bytes, range_end: bytes, credentials: object) -> None:
        return None


@dataclass
class FakeMember:
    """The parts of MemberServer the Watch service uses."""

    store: KVStore
    watchable: WatchableStore
    node: FakeNode = field(default_factory=FakeNode)
    auth: OpenGate = field(default_factory=OpenGate)
    config: Any = field(
        default_factory=lambda: SimpleNamespace(election_timeout_ms=ELECTION_TIMEOUT_MS)
    )

    def fill_header(self, header: rpc_pb2.ResponseHeader, revision: int = 0) -> None:
        header.cluster_id = CLUSTER_ID
        header.member_id = MEMBER_ID
        header.revision = revision or self.store.current_revision
        header.raft_term = self.node.term


@dataclass
class Served:
    member: FakeMember
    stub: rpc_pb2_grpc.WatchStub


@asynccontextmanager
async def serving(
    store: KVStore, max_response_bytes: int = 1 << 20, **hub_options: Any
) -> AsyncIterator[Served]:
    hub = WatchableStore(store, **hub_options)
    hub.start()
    member = FakeMember(store, hub)
    server = grpc.aio.server()
    service = WatchService(member, max_response_bytes=max_response_bytes)  # type: ignore[arg-type]
    add_to_server(service, server)  # as the member registers it: responses written as bytes
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield Served(member, rpc_pb2_grpc.WatchStub(channel))
    finally:
        await channel.close()
        await server.stop(None)
        await hub.stop()


def create_request(key: bytes, **fields: Any) -> rpc_pb2.WatchRequest:
    return rpc_pb2.WatchRequest(create_request=rpc_pb2.WatchCreateRequest(key=key, **fields))


async def read(call: Any, timeout: float = 2.0) -> rpc_pb2.WatchResponse:
    response = await asyncio.wait_for(call.read(), timeout)
    assert response is not grpc.aio.EOF
    return response


async def read_events(call: Any, count: int) -> list[kv_pb2.Event]:
    events: list[kv_pb2.Event] = []
    while len(events) < count:
        events.extend((await read(call)).events)
    return events


@async_test
async def test_headers_name_the_member_and_keep_the_compaction_cancels_zero_revision(
    store: KVStore,
) -> None:
    first = put(store, (b"k", b"1"))
    second = put(store, (b"k", b"2"))
    store.compact(second)
    async with serving(store) as served:
        call = served.stub.Watch()
        await call.write(create_request(b"k"))
        created = await read(call)
        assert created.created
        assert (created.header.cluster_id, created.header.member_id) == (CLUSTER_ID, MEMBER_ID)
        assert (created.header.raft_term, created.header.revision) == (TERM, second)
        await call.write(create_request(b"k", start_revision=first, watch_id=4))
        assert (await read(call)).created
        canceled = await read(call)
        assert (canceled.watch_id, canceled.canceled, canceled.compact_revision) == (
            4,
            True,
            second,
        )
        assert (canceled.header.revision, canceled.header.member_id) == (0, MEMBER_ID)
        call.cancel()


@async_test
async def test_fragments_on_the_wire_only_for_watchers_that_asked(store: KVStore) -> None:
    value = b"x" * 3000
    history = [put(store, (b"f/%d" % i, value)) for i in range(8)]
    async with serving(store, max_response_bytes=10_000) as served:
        call = served.stub.Watch()
        await call.write(
            create_request(b"f/", range_end=b"f0", start_revision=history[0], fragment=True)
        )
        fragmented_id = (await read(call)).watch_id
        pieces = []
        while not pieces or pieces[-1].fragment:
            pieces.append(await read(call))
        assert {p.watch_id for p in pieces} == {fragmented_id}
        assert [p.fragment for p in pieces] == [True] * (len(pieces) - 1) + [False]
        assert len(pieces) == 3  # three 3000-byte events fit under 10000 bytes
        assert revisions([e for p in pieces for e in p.events]) == history

        await call.write(create_request(b"f/", range_end=b"f0", start_revision=history[0]))
        assert (await read(call)).created
        whole = await read(call)
        assert (whole.fragment, revisions(list(whole.events))) == (False, history)
        call.cancel()


@async_test
async def test_hasleader_stream_fails_at_once_without_a_leader(store: KVStore) -> None:
    async with serving(store) as served:
        served.member.node.leader = 0
        call = served.stub.Watch(metadata=(("hasleader", "true"),))
        await call.write(create_request(b"k"))
        try:
            await asyncio.wait_for(call.read(), 2)
        except grpc.aio.AioRpcError as error:
            assert (error.code(), error.details()) == (
                grpc.StatusCode.UNAVAILABLE,
                "etcdserver: no leader",
            )
        else:
            raise AssertionError("a hasleader watch must fail without a leader")
        # Without the metadata the same member serves the watch.
        plain = served.stub.Watch()
        await plain.write(create_request(b"k"))
        assert (await read(plain)).created
        plain.cancel()


@async_test
async def test_hasleader_stream_ends_after_the_leader_is_lost_for_a_while(store: KVStore) -> None:
    async with serving(store) as served:
        bound = served.stub.Watch(metadata=(("hasleader", "true"),))
        plain = served.stub.Watch()
        for call in (bound, plain):
            await call.write(create_request(b"k"))
            assert (await read(call)).created
        served.member.node.leader = 0
        lost_at = asyncio.get_running_loop().time()
        try:
            await asyncio.wait_for(bound.read(), 2)
        except grpc.aio.AioRpcError as error:
            assert (error.code(), error.details()) == (
                grpc.StatusCode.UNAVAILABLE,
                "etcdserver: no leader",
            )
        else:
            raise AssertionError("the hasleader stream must end")
        # etcd tolerates three leaderless election timeouts before ending the stream.
        assert asyncio.get_running_loop().time() - lost_at >= 3 * ELECTION_TIMEOUT_MS / 1000
        # The stream without the metadata still works.
        rev = put(store, (b"k", b"v"))
        assert revisions(list((await read(plain)).events)) == [rev]
        plain.cancel()


@async_test
async def test_a_client_that_does_not_read_does_not_hold_back_another(store: KVStore) -> None:
    async with serving(store, max_pending=16) as served:
        stuck = served.stub.Watch()
        await stuck.write(create_request(b"s/", range_end=b"s0"))
        assert (await read(stuck)).created
        reader = served.stub.Watch()
        await reader.write(create_request(b"s/", range_end=b"s0"))
        assert (await read(reader)).created

        received: list[kv_pb2.Event] = []

        async def read_all() -> None:
            received.extend(await read_events(reader, 2000))

        reading = asyncio.create_task(read_all())
        value = b"v" * 4096
        written = []
        for i in range(2000):
            written.append(put(store, (b"s/%d" % (i % 7), value)))
            if i % 20 == 0:
                await asyncio.sleep(0)
        await asyncio.wait_for(reading, 20)
        assert revisions(received) == written
        # gRPC flow control stopped the stuck stream; its watcher now waits on history.
        assert served.member.watchable.watcher_counts == (1, 1)
        assert revisions(await read_events(stuck, 2000)) == written
        assert served.member.watchable.watcher_counts == (2, 0)
        stuck.cancel()
        reader.cancel()


@async_test
async def test_the_stream_keeps_sending_after_the_client_half_closes(store: KVStore) -> None:
    async with serving(store) as served:
        call = served.stub.Watch()
        await call.write(create_request(b"h"))
        await call.done_writing()
        assert (await read(call)).created
        rev = put(store, (b"h", b"v"))
        assert revisions(list((await read(call)).events)) == [rev]
        call.cancel()


@async_test
async def test_cancel_and_progress_requests_over_the_wire(store: KVStore) -> None:
    async with serving(store) as served:
        call = served.stub.Watch()
        await call.write(create_request(b"c", watch_id=3))
        assert (await read(call)).created
        await call.write(rpc_pb2.WatchRequest(progress_request=rpc_pb2.WatchProgressRequest()))
        progress = await read(call)
        assert (progress.watch_id, progress.header.revision) == (-1, store.current_revision)
        await call.write(
            rpc_pb2.WatchRequest(cancel_request=rpc_pb2.WatchCancelRequest(watch_id=3))
        )
        canceled = await read(call)
        assert (canceled.watch_id, canceled.canceled) == (3, True)
        assert served.member.watchable.watcher_counts == (0, 0)
        call.cancel()
        # Ending the call drops the stream's watchers.
        second = served.stub.Watch()
        await second.write(create_request(b"c"))
        assert (await read(second)).created
        assert served.member.watchable.watcher_counts == (1, 0)
        second.cancel()
        for _ in range(100):
            if served.member.watchable.watcher_counts == (0, 0):
                break
            await asyncio.sleep(0.01)
        assert served.member.watchable.watcher_counts == (0, 0)
