"""The proxy over TLS on both sides: mutual TLS from its clients (`--cert-file --key-file
--trusted-ca-file`) and to a cluster that requires client certificates (`--cert --key
--cacert`)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from raftkv.client import SyncClient, TLSConfig
from raftkv.pb.etcdserverpb import rpc_pb2 as pb
from raftkv.pb.etcdserverpb import rpc_pb2_grpc as rpc

from tests.proxy.support import ProxyProcess, start_proxy
from tests.support.raftkv import RaftKVCluster
from tests.support.tls import Pki, channel_credentials, make_pki, start_tls_raftkv_cluster

pytestmark = pytest.mark.integration


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return make_pki(tmp_path / "pki")


@pytest.fixture
def tls_cluster(tmp_path: Path, pki: Pki) -> Iterator[RaftKVCluster]:
    with start_tls_raftkv_cluster(tmp_path, pki) as cluster:
        yield cluster


@pytest.fixture
def tls_proxy(tmp_path: Path, pki: Pki, tls_cluster: RaftKVCluster) -> Iterator[ProxyProcess]:
    cert, key = pki.client("root")
    proxy = start_proxy(
        tmp_path,
        tls_cluster.endpoints,
        f"--cacert={pki.ca}",
        f"--cert={cert}",
        f"--key={key}",
        f"--cert-file={pki.server_cert}",
        f"--key-file={pki.server_key}",
        f"--trusted-ca-file={pki.ca}",
        credentials=channel_credentials(pki, "alice"),
    )
    try:
        yield proxy
    finally:
        proxy.kill()


def test_clients_with_a_certificate_reach_a_tls_cluster_through_the_proxy(
    pki: Pki, tls_proxy: ProxyProcess
) -> None:
    cert, key = pki.client("alice")
    tls = TLSConfig(ca_file=pki.ca, cert_file=cert, key_file=key)
    with SyncClient([tls_proxy.target], tls=tls, timeout=30) as client:
        revision = client.put("/tls/via-proxy", "yes").header.revision
        assert client.get("/tls/via-proxy").kvs[0].value == b"yes"
        with client.watch("/tls/", prefix=True, start_revision=revision) as watch:
            assert [e.kv.value for e in watch.next(timeout=30)] == [b"yes"]


def test_clients_without_a_trusted_certificate_are_refused(
    pki: Pki, tls_proxy: ProxyProcess
) -> None:
    request = pb.RangeRequest(key=b"/tls/x")
    no_certificate = grpc.ssl_channel_credentials(pki.ca.read_bytes())
    stranger = grpc.ssl_channel_credentials(
        pki.ca.read_bytes(), pki.stranger_key.read_bytes(), pki.stranger_cert.read_bytes()
    )
    for credentials in (no_certificate, stranger):
        with grpc.secure_channel(tls_proxy.target, credentials) as channel:
            with pytest.raises(grpc.RpcError) as refused:
                rpc.KVStub(channel).Range(request, timeout=10)
            assert refused.value.code() is grpc.StatusCode.UNAVAILABLE
    with grpc.insecure_channel(tls_proxy.target) as channel, pytest.raises(grpc.RpcError):
        rpc.KVStub(channel).Range(request, timeout=10)
