"""Bad input gets etcd's gRPC status and message, and the member keeps serving."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from raftkv.pb.etcdserverpb import rpc_pb2, rpc_pb2_grpc

from tests.support.raftkv import RaftKVCluster, start_raftkv_cluster

MAX_REQUEST_BYTES = 64 * 1024


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RaftKVCluster]:
    root: Path = tmp_path_factory.mktemp("bad-input")
    with start_raftkv_cluster(root, size=1, max_request_bytes=MAX_REQUEST_BYTES) as c:
        yield c


@pytest.fixture
def channel(cluster: RaftKVCluster) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(cluster.grpc_targets[0]) as ch:
        yield ch


def status_of(call: object) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as raised:
        call()  # type: ignore[operator]
    error = raised.value
    return error.code(), error.details()


def test_empty_keys(channel: grpc.Channel) -> None:
    kv = rpc_pb2_grpc.KVStub(channel)
    expected = (grpc.StatusCode.INVALID_ARGUMENT, "etcdserver: key is not provided")
    assert status_of(lambda: kv.Put(rpc_pb2.PutRequest(key=b"", value=b"v"))) == expected
    assert status_of(lambda: kv.Range(rpc_pb2.RangeRequest(key=b""))) == expected
    assert status_of(lambda: kv.DeleteRange(rpc_pb2.DeleteRangeRequest(key=b""))) == expected


def test_over_large_request(channel: grpc.Channel) -> None:
    kv = rpc_pb2_grpc.KVStub(channel)
    big = rpc_pb2.PutRequest(key=b"big", value=b"x" * (MAX_REQUEST_BYTES + 1))
    assert status_of(lambda: kv.Put(big)) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "etcdserver: request is too large",
    )


def test_unknown_lease(channel: grpc.Channel) -> None:
    kv = rpc_pb2_grpc.KVStub(channel)
    put = rpc_pb2.PutRequest(key=b"leased", value=b"v", lease=0x1234)
    assert status_of(lambda: kv.Put(put)) == (
        grpc.StatusCode.NOT_FOUND,
        "etcdserver: requested lease not found",
    )


def test_bad_revisions(channel: grpc.Channel) -> None:
    kv = rpc_pb2_grpc.KVStub(channel)
    current = kv.Put(rpc_pb2.PutRequest(key=b"rev", value=b"1")).header.revision
    kv.Put(rpc_pb2.PutRequest(key=b"rev", value=b"2"))
    assert status_of(lambda: kv.Range(rpc_pb2.RangeRequest(key=b"rev", revision=current + 99))) == (
        grpc.StatusCode.OUT_OF_RANGE,
        "etcdserver: mvcc: required revision is a future revision",
    )
    kv.Compact(rpc_pb2.CompactionRequest(revision=current + 1))
    assert status_of(lambda: kv.Range(rpc_pb2.RangeRequest(key=b"rev", revision=current))) == (
        grpc.StatusCode.OUT_OF_RANGE,
        "etcdserver: mvcc: required revision has been compacted",
    )
    assert status_of(lambda: kv.Compact(rpc_pb2.CompactionRequest(revision=current))) == (
        grpc.StatusCode.OUT_OF_RANGE,
        "etcdserver: mvcc: required revision has been compacted",
    )


@pytest.mark.parametrize(
    "payload",
    [b"\xff\xff\xff", b"\x0a\xff\xff\xff\xff\x0f", b"\x12\x05abc", bytes(range(256))],
    ids=["bad-tag", "huge-length", "truncated", "noise"],
)
def test_malformed_protobuf_is_refused_and_the_member_keeps_serving(
    channel: grpc.Channel, payload: bytes
) -> None:
    raw_put = channel.unary_unary(
        "/etcdserverpb.KV/Put",
        request_serializer=lambda b: b,
        response_deserializer=lambda b: b,
    )
    with pytest.raises(grpc.RpcError) as raised:
        raw_put(payload, timeout=5)
    # grpc-go's answer, which is what etcd clients see from etcd.
    assert raised.value.code() == grpc.StatusCode.INTERNAL
    assert raised.value.details().startswith("grpc: error unmarshalling request:")
    kv = rpc_pb2_grpc.KVStub(channel)
    kv.Put(rpc_pb2.PutRequest(key=b"alive", value=payload[:8]), timeout=5)
    assert kv.Range(rpc_pb2.RangeRequest(key=b"alive"), timeout=5).kvs[0].value == payload[:8]


def test_malformed_watch_request_ends_the_stream_with_grpc_gos_error(channel: grpc.Channel) -> None:
    raw_watch = channel.stream_stream(
        "/etcdserverpb.Watch/Watch",
        request_serializer=lambda b: b,
        response_deserializer=lambda b: b,
    )
    with pytest.raises(grpc.RpcError) as raised:
        list(raw_watch(iter([b"\xff\xff\xff"]), timeout=5))
    assert raised.value.code() == grpc.StatusCode.INTERNAL
    assert raised.value.details().startswith("grpc: error unmarshalling request:")
