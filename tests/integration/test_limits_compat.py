"""Request limits side by side with real etcd 3.4: the same oversized and too-many-ops requests
go to a one-member etcd and a one-member raftkv started with the same small
`--max-request-bytes` and `--max-txn-ops`, over gRPC and over the JSON gateway, and must get the
same answer: status code and message, byte for byte.

The exact size boundary depends on the member ID (etcd measures its internal request with a
header whose request ID starts with 16 bits of the member ID), so it is found by bisection on
each server and compared with what etcd's encoding predicts for that server's member ID.
"""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from raftkv.node.server import etcd_request_size
from raftkv.pb.etcdserverpb import rpc_pb2, rpc_pb2_grpc
from raftkv.pb.serverpb import internal_pb2 as serverpb

from tests.support.etcd import start_etcd_cluster
from tests.support.fixtures import require_etcd
from tests.support.raftkv import start_raftkv_cluster

pytestmark = pytest.mark.integration

MAX_REQUEST_BYTES = 4096
MAX_TXN_OPS = 4
# etcd's gRPC receive limit: --max-request-bytes plus 512 KiB.
GRPC_LIMIT = MAX_REQUEST_BYTES + 512 * 1024
FLAGS = {"max_request_bytes": MAX_REQUEST_BYTES, "max_txn_ops": MAX_TXN_OPS}


@dataclass
class Server:
    target: str
    url: str


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Server]]:
    require_etcd()
    root: Path = tmp_path_factory.mktemp("limits")
    with (
        start_etcd_cluster(root, **FLAGS) as etcd,  # type: ignore[arg-type]
        start_raftkv_cluster(root, size=1, **FLAGS) as raftkv,
    ):
        yield {
            "etcd": Server(etcd.grpc_targets[0], etcd.client_urls[0]),
            "raftkv": Server(raftkv.grpc_targets[0], raftkv.members[0].client_url),
        }


def put(key: bytes, size: int) -> rpc_pb2.RequestOp:
    return rpc_pb2.RequestOp(request_put=rpc_pb2.PutRequest(key=key, value=b"x" * size))


def puts(count: int, prefix: bytes = b"k") -> list[rpc_pb2.RequestOp]:
    return [put(b"%s%d" % (prefix, i), 1) for i in range(count)]


def compare(count: int) -> list[rpc_pb2.Compare]:
    return [rpc_pb2.Compare(key=b"c%d" % i, target=rpc_pb2.Compare.VERSION) for i in range(count)]


def range_op(key: bytes) -> rpc_pb2.RequestOp:
    return rpc_pb2.RequestOp(request_range=rpc_pb2.RangeRequest(key=key))


Probe = Callable[[grpc.Channel], object]
KV = rpc_pb2_grpc.KVStub

GRPC_PROBES: dict[str, Probe] = {
    "put over the limit": lambda ch: KV(ch).Put(
        rpc_pb2.PutRequest(key=b"a", value=b"x" * (MAX_REQUEST_BYTES + 1))
    ),
    "put beyond gRPC's limit": lambda ch: KV(ch).Put(
        rpc_pb2.PutRequest(key=b"a", value=b"x" * (GRPC_LIMIT + 100))
    ),
    "range of a huge key (not proposed)": lambda ch: KV(ch).Range(
        rpc_pb2.RangeRequest(key=b"k" * (MAX_REQUEST_BYTES * 2))
    ),
    "delete of a huge key": lambda ch: KV(ch).DeleteRange(
        rpc_pb2.DeleteRangeRequest(key=b"k" * (MAX_REQUEST_BYTES + 1))
    ),
    "txn at the op limit": lambda ch: KV(ch).Txn(rpc_pb2.TxnRequest(success=puts(MAX_TXN_OPS))),
    "txn success over the op limit": lambda ch: KV(ch).Txn(
        rpc_pb2.TxnRequest(success=puts(MAX_TXN_OPS + 1))
    ),
    "txn compare over the op limit": lambda ch: KV(ch).Txn(
        rpc_pb2.TxnRequest(compare=compare(MAX_TXN_OPS + 1))
    ),
    "read-only txn failure over the op limit": lambda ch: KV(ch).Txn(
        rpc_pb2.TxnRequest(failure=[range_op(b"r%d" % i) for i in range(MAX_TXN_OPS + 1)])
    ),
    "nested txn over the op limit": lambda ch: KV(ch).Txn(
        rpc_pb2.TxnRequest(
            success=[
                rpc_pb2.RequestOp(
                    request_txn=rpc_pb2.TxnRequest(success=puts(MAX_TXN_OPS + 1, b"n"))
                )
            ]
        )
    ),
    "txn over the byte limit": lambda ch: KV(ch).Txn(
        rpc_pb2.TxnRequest(success=[put(b"t", MAX_REQUEST_BYTES)])
    ),
    "read-only txn over the byte limit": lambda ch: KV(ch).Txn(
        rpc_pb2.TxnRequest(success=[range_op(b"r" * (MAX_REQUEST_BYTES + 10))])
    ),
    "user add with a huge name": lambda ch: rpc_pb2_grpc.AuthStub(ch).UserAdd(
        rpc_pb2.AuthUserAddRequest(name="u" * (MAX_REQUEST_BYTES + 10), password="p")
    ),
    "watch create beyond gRPC's limit": lambda ch: next(
        iter(
            rpc_pb2_grpc.WatchStub(ch).Watch(
                iter(
                    [
                        rpc_pb2.WatchRequest(
                            create_request=rpc_pb2.WatchCreateRequest(key=b"w" * (GRPC_LIMIT + 1))
                        )
                    ]
                ),
                timeout=10,
            )
        )
    ),
}


def outcome(probe: Probe, target: str) -> tuple[str, str]:
    with grpc.insecure_channel(target) as channel:
        try:
            probe(channel)
        except grpc.RpcError as error:
            return error.code().name, error.details() or ""
    return "OK", ""


@pytest.mark.parametrize("name", list(GRPC_PROBES))
def test_grpc_answers_match_etcd(servers: dict[str, Server], name: str) -> None:
    probe = GRPC_PROBES[name]
    expected = outcome(probe, servers["etcd"].target)
    assert outcome(probe, servers["raftkv"].target) == expected


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


GATEWAY_PROBES: dict[str, tuple[str, bytes]] = {
    "put over the limit": (
        "/v3/kv/put",
        json.dumps({"key": b64(b"a"), "value": b64(b"x" * (MAX_REQUEST_BYTES + 1))}).encode(),
    ),
    "put beyond gRPC's limit": (
        "/v3/kv/put",
        json.dumps({"key": b64(b"a"), "value": b64(b"x" * (GRPC_LIMIT + 100))}).encode(),
    ),
    "txn over the op limit": (
        "/v3/kv/txn",
        json.dumps(
            {
                "success": [
                    {"request_put": {"key": b64(b"g%d" % i), "value": b64(b"v")}}
                    for i in range(MAX_TXN_OPS + 1)
                ]
            }
        ).encode(),
    ),
    "key that is not base64": ("/v3/kv/put", b'{"key": "!!!", "value": "YQ=="}'),
    "value with bad padding": ("/v3/kv/put", b'{"key": "YQ==", "value": "YQ="}'),
    "range end with url-safe base64": ("/v3/kv/range", b'{"key": "YQ==", "range_end": "-_-_"}'),
    "txn compare key that is not base64": (
        "/v3/kv/txn",
        b'{"compare": [{"key": "a b", "target": "VALUE", "value": "YQ=="}]}',
    ),
    "watch create key that is not base64": ("/v3/watch", b'{"create_request": {"key": "!!"}}'),
}


def http_outcome(url: str, path: str, body: bytes) -> tuple[int, object]:
    request = urllib.request.Request(url + path, data=body, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.readline())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


@pytest.mark.parametrize("name", list(GATEWAY_PROBES))
def test_gateway_answers_match_etcd(servers: dict[str, Server], name: str) -> None:
    path, body = GATEWAY_PROBES[name]
    expected = http_outcome(servers["etcd"].url, path, body)
    assert http_outcome(servers["raftkv"].url, path, body) == expected


def largest_accepted_value(target: str) -> int:
    """The longest value a Put of key "a" may carry, by bisection."""
    with grpc.insecure_channel(target) as channel:
        kv = rpc_pb2_grpc.KVStub(channel)

        def accepted(size: int) -> bool:
            try:
                kv.Put(rpc_pb2.PutRequest(key=b"a", value=b"x" * size), timeout=10)
            except grpc.RpcError as error:
                assert error.details() == "etcdserver: request is too large"
                return False
            return True

        low, high = MAX_REQUEST_BYTES - 100, MAX_REQUEST_BYTES
        while low < high:
            middle = (low + high + 1) // 2
            if accepted(middle):
                low = middle
            else:
                high = middle - 1
        return low


def predicted_largest_value(member_id: int) -> int:
    size = 0
    while True:
        request = serverpb.InternalRequest(put=rpc_pb2.PutRequest(key=b"a", value=b"x" * size))
        if etcd_request_size(request, member_id) > MAX_REQUEST_BYTES:
            return size - 1
        size += 1


@pytest.mark.parametrize("server", ["etcd", "raftkv"])
def test_the_size_boundary_is_etcds_to_the_byte(servers: dict[str, Server], server: str) -> None:
    target = servers[server].target
    with grpc.insecure_channel(target) as channel:
        status = rpc_pb2_grpc.MaintenanceStub(channel).Status(rpc_pb2.StatusRequest(), timeout=10)
    assert largest_accepted_value(target) == predicted_largest_value(status.header.member_id)
