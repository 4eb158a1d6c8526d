"""Large responses are split into fragments only for watchers that asked, as etcd splits them."""

from __future__ import annotations

import itertools

from raftkv.mvcc import KVStore
from raftkv.pb.etcdserverpb import rpc_pb2
from raftkv.pb.mvccpb import kv_pb2
from raftkv.watch import split_fragments

from tests.watch.harness import async_test, create, put, recv_created, watching


def _response(sizes: list[int]) -> rpc_pb2.WatchResponse:
    return rpc_pb2.WatchResponse(
        header=rpc_pb2.ResponseHeader(revision=9, member_id=1),
        watch_id=4,
        events=[
            kv_pb2.Event(kv=kv_pb2.KeyValue(key=b"k%d" % i, value=b"x" * size, mod_revision=9))
            for i, size in enumerate(sizes)
        ],
    )


def test_a_response_under_the_limit_or_with_one_event_is_sent_whole() -> None:
    small = _response([10, 10])
    assert split_fragments(small, 1000) == [small]
    huge_single = _response([5000])
    assert split_fragments(huge_single, 1000) == [huge_single]


def test_pieces_stay_under_the_limit_and_reassemble_the_events_in_order() -> None:
    response = _response([300] * 10 + [2500] + [300] * 3)
    limit = 1000
    pieces = split_fragments(response, limit)
    assert [p.fragment for p in pieces] == [True] * (len(pieces) - 1) + [False]
    assert [e for p in pieces for e in p.events] == list(response.events)
    for piece in pieces:
        assert (piece.watch_id, piece.header) == (response.watch_id, response.header)
        # Each piece is as full as it may be: under the limit unless it holds a single event,
        # and adding the next event would have reached the limit.
        assert piece.ByteSize() < limit or len(piece.events) == 1
    for piece, following in itertools.pairwise(pieces):
        grown = rpc_pb2.WatchResponse()
        grown.CopyFrom(piece)
        grown.fragment = True
        grown.events.append(following.events[0])
        assert grown.ByteSize() >= limit
    assert len(pieces) == 6  # 3+3+3+1 small, the large one alone, the last three


def test_the_limit_is_compared_with_the_whole_encoded_size() -> None:
    response = _response([100, 100])
    exact = response.ByteSize()
    assert len(split_fragments(response, exact + 1)) == 1
    assert len(split_fragments(response, exact)) == 2


@async_test
async def test_only_watchers_created_with_fragment_get_responses_marked_splittable(
    store: KVStore,
) -> None:
    async with watching(store) as hub:
        stream = hub.open_stream()
        create(stream, b"f", fragment=True, watch_id=1)
        create(stream, b"f", watch_id=2)
        await recv_created(stream)
        await recv_created(stream)
        put(store, (b"f", b"v"))
        first, second = await stream.next(), await stream.next()
        assert {(i.response.watch_id, i.fragment) for i in (first, second)} == {
            (1, True),
            (2, False),
        }
