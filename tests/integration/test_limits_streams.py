"""`--max-concurrent-streams` bounds the calls one client connection has open at once (etcd's
flag, HTTP/2's SETTINGS_MAX_CONCURRENT_STREAMS): a call past the bound waits for a free stream,
and runs as soon as one ends; other connections are not affected."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from raftkv.pb.etcdserverpb import rpc_pb2, rpc_pb2_grpc

from tests.support.raftkv import RaftKVCluster, start_raftkv_cluster

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RaftKVCluster]:
    root: Path = tmp_path_factory.mktemp("streams")
    with start_raftkv_cluster(root, size=1, max_concurrent_streams=2) as c:
        yield c


def open_watch(channel: grpc.Channel, key: bytes) -> grpc.Future:
    """A watch stream that stays open; returns once the server has answered `created`."""
    create = rpc_pb2.WatchRequest(create_request=rpc_pb2.WatchCreateRequest(key=key))
    stream = rpc_pb2_grpc.WatchStub(channel).Watch(iter([create]), timeout=60)
    assert next(stream).created
    return stream


def test_a_call_past_the_bound_waits_for_a_free_stream(cluster: RaftKVCluster) -> None:
    target = cluster.members[0].target
    # Its own connection each (grpcio shares one between identical channels by default).
    own = [("grpc.use_local_subchannel_pool", 1)]
    with (
        grpc.insecure_channel(target, options=own) as busy,
        grpc.insecure_channel(target, options=own) as other,
    ):
        watches = [open_watch(busy, b"a"), open_watch(busy, b"b")]
        kv = rpc_pb2_grpc.KVStub(busy)
        with pytest.raises(grpc.RpcError) as waited:
            kv.Range(rpc_pb2.RangeRequest(key=b"a"), timeout=2)
        assert waited.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
        # Another connection has its own streams.
        rpc_pb2_grpc.KVStub(other).Range(rpc_pb2.RangeRequest(key=b"a"), timeout=30)
        watches[0].cancel()
        assert kv.Range(rpc_pb2.RangeRequest(key=b"a"), timeout=30).count == 0
        watches[1].cancel()
