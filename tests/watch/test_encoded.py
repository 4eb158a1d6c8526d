"""Pre-encoded event responses: the bytes a client decodes are the response etcd would send, and
a lagging stream gets several revisions of a watcher in one response, whole and in order."""

from __future__ import annotations

from raftkv.mvcc import KVStore
from raftkv.pb.etcdserverpb import rpc_pb2
from raftkv.watch.stream import MERGE_AFTER_PENDING

from tests.watch.harness import async_test, create, put, recv, recv_created, watching

HEADER = rpc_pb2.ResponseHeader(cluster_id=7, member_id=9, raft_term=3)


def header_bytes(revision: int) -> bytes:
    header = rpc_pb2.ResponseHeader()
    header.CopyFrom(HEADER)
    header.revision = revision
    return header.SerializeToString()


@async_test
async def test_an_encoded_event_response_decodes_to_the_full_response(store: KVStore) -> None:
    async with watching(store) as hub:
        stream = hub.open_stream()
        create(stream, b"k", watch_id=5)
        create(stream, b"k", watch_id=6, prev_kv=True)
        await recv_created(stream)
        await recv_created(stream)
        put(store, (b"k", b"one"))
        revision = put(store, (b"k", b"two"))
        last: dict[int, rpc_pb2.WatchResponse] = {}  # the two watchers' order is arbitrary
        for _ in range(4):
            item = await stream.next()
            response = rpc_pb2.WatchResponse.FromString(item.wire(header_bytes(item.revision)))
            last[response.watch_id] = response
        last_plain, last_prev = last[5], last[6]
        assert last_plain.header.revision == revision
        assert (last_plain.header.cluster_id, last_plain.header.member_id) == (7, 9)
        assert last_plain.header.raft_term == 3
        assert last_plain.watch_id == 5
        assert [e.kv.value for e in last_plain.events] == [b"two"]
        assert not last_plain.events[0].HasField("prev_kv")
        assert last_prev.watch_id == 6
        assert last_prev.events[0].prev_kv.value == b"one"


@async_test
async def test_a_lagging_stream_gets_revisions_merged_whole_and_in_order(store: KVStore) -> None:
    async with watching(store) as hub:
        stream = hub.open_stream()
        create(stream, b"a", range_end=b"b", watch_id=1)
        create(stream, b"a", range_end=b"b", watch_id=2)
        await recv_created(stream)
        await recv_created(stream)
        writes = 4 * MERGE_AFTER_PENDING
        revisions = [put(store, (b"a%d" % i, b"v"), (b"a%dx" % i, b"v")) for i in range(writes)]
        seen: dict[int, list[tuple[int, bytes]]] = {1: [], 2: []}
        responses = 0
        while len(seen[1]) + len(seen[2]) < 4 * writes:
            response = await recv(stream)
            responses += 1
            events = [(e.kv.mod_revision, e.kv.key) for e in response.events]
            # The response's revision is that of its last event.
            assert response.header.revision == events[-1][0]
            seen[response.watch_id] += events
        expected = [(r, k) for i, r in enumerate(revisions) for k in (b"a%d" % i, b"a%dx" % i)]
        assert seen == {1: expected, 2: expected}
        assert responses < 2 * writes  # merged once the queue was long


@async_test
async def test_events_are_not_merged_across_a_progress_response(store: KVStore) -> None:
    async with watching(store) as hub:
        stream = hub.open_stream()
        create(stream, b"p", range_end=b"q", watch_id=1)
        await recv_created(stream)
        for i in range(MERGE_AFTER_PENDING):
            put(store, (b"p%d" % i, b"v"))
        stream.request_progress()
        progress_revision = hub.current_revision
        after = put(store, (b"p-after", b"v"))
        order: list[tuple[int, int]] = []  # (watch_id, revision) as received
        while not order or order[-1] != (1, after):
            response = await recv(stream)
            order.append((response.watch_id, response.header.revision))
        progress_at = order.index((-1, progress_revision))
        assert all(rev <= progress_revision for _, rev in order[:progress_at])
        assert order[progress_at + 1 :] == [(1, after)]
