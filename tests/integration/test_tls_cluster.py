"""raftkv clusters with TLS on client and peer URLs, watched from outside.

- A 3-member cluster with client mutual TLS and verified peer TLS elects a leader and
  replicates; a client without a certificate is refused on both the gRPC and the HTTP path,
  and a would-be peer with a certificate from another CA is refused on the peer port.
- Rotating the certificate files changes the certificate served to new connections on every
  path (gRPC and HTTP/1 on the client port, the peer port) without a restart, and the cluster
  keeps working with the new certificate.
- `--tls-min-version=TLS1.3` refuses TLS 1.2 clients; `--cipher-suites` refuses TLS 1.2
  clients that offer only other suites, on both client-port paths.
- `--auto-tls` / `--peer-auto-tls`: members generate certificates under
  `<data-dir>/fixtures/{client,peer}`, find each other over TLS and serve raftkvctl with
  `--insecure-skip-tls-verify`.
"""

from __future__ import annotations

import contextlib
import os
import socket
import ssl
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from raftkv.cli import ctl
from raftkv.client import SyncClient, TLSConfig
from raftkv.pb.etcdserverpb import rpc_pb2, rpc_pb2_grpc
from raftkv.pb.raftpb import peer_pb2_grpc
from raftkv.pb.raftpb.peer_pb2 import ProbeRequest

from tests.support.raftkv import RaftKVCluster, RaftKVMember
from tests.support.tls import (
    SERVER_EXTENSIONS,
    Pki,
    channel_credentials,
    https_context,
    issue,
    make_pki,
    plan_tls_raftkv_cluster,
    start_tls_raftkv_cluster,
    wait_serving_tls,
)

pytestmark = pytest.mark.integration

_WAIT_S = 60.0


def _target(url: str) -> str:
    return url.split("://", 1)[1]


def _kv(member: RaftKVMember, pki: Pki) -> tuple[grpc.Channel, rpc_pb2_grpc.KVStub]:
    channel = grpc.secure_channel(_target(member.client_url), channel_credentials(pki))
    return channel, rpc_pb2_grpc.KVStub(channel)


def _presented_serial(url: str, alpn: str, pki: Pki | None = None) -> int:
    """The serial of the certificate a new TLS connection to `url` is shown (ALPN `alpn`)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols([alpn])
    if pki is not None:
        context.load_cert_chain(*pki.client("root"))
    host, port = _target(url).rsplit(":", 1)
    with (
        socket.create_connection((host, int(port)), timeout=10) as sock,
        context.wrap_socket(sock) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
        assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


def _handshake(
    url: str, alpn: str, pki: Pki, *, maximum: ssl.TLSVersion | None = None, ciphers: str = ""
) -> None:
    """A TLS handshake with client certificate root; raises ssl.SSLError/OSError if refused."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.load_cert_chain(*pki.client("root"))
    context.set_alpn_protocols([alpn])
    if maximum is not None:
        context.maximum_version = maximum
    if ciphers:
        context.set_ciphers(ciphers)
    host, port = _target(url).rsplit(":", 1)
    with (
        socket.create_connection((host, int(port)), timeout=10) as sock,
        context.wrap_socket(sock) as tls,
    ):
        # TLS 1.3 servers refuse a missing client certificate after the handshake: read.
        tls.settimeout(2)
        with contextlib.suppress(TimeoutError):
            tls.recv(1)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, pki: Pki) -> Iterator[RaftKVCluster]:
    cluster = start_tls_raftkv_cluster(tmp_path_factory.mktemp("tls-cluster"), pki)
    try:
        yield cluster
    finally:
        cluster.stop()


def _wait_value(member: RaftKVMember, pki: Pki, key: bytes, value: bytes) -> None:
    deadline = time.monotonic() + _WAIT_S
    channel, kv = _kv(member, pki)
    with channel:
        while True:
            response = kv.Range(rpc_pb2.RangeRequest(key=key, serializable=True), timeout=10)
            if response.kvs and response.kvs[0].value == value:
                return
            assert time.monotonic() < deadline, f"{member.name} never saw {key!r}={value!r}"
            time.sleep(0.1)


def test_a_cluster_with_peer_tls_elects_and_replicates(cluster: RaftKVCluster, pki: Pki) -> None:
    channel, kv = _kv(cluster.members[0], pki)
    with channel:
        kv.Put(rpc_pb2.PutRequest(key=b"/tls/replicated", value=b"yes"), timeout=30)
    for member in cluster.members:
        _wait_value(member, pki, b"/tls/replicated", b"yes")
    target = _target(cluster.members[1].client_url)
    with grpc.secure_channel(target, channel_credentials(pki)) as channel:
        status = rpc_pb2_grpc.MaintenanceStub(channel).Status(rpc_pb2.StatusRequest(), timeout=10)
    assert status.leader != 0
    cert, key = pki.client("root")
    tls_flags = [f"--cacert={pki.ca}", f"--cert={cert}", f"--key={key}"]
    endpoint = f"--endpoints={cluster.members[0].client_url}"
    assert ctl.main([endpoint, *tls_flags, "endpoint", "health", "--cluster"]) == 0
    assert ctl.main([endpoint, *tls_flags, "get", "/tls/replicated"]) == 0


def test_clients_without_a_certificate_are_refused(cluster: RaftKVCluster, pki: Pki) -> None:
    url = cluster.members[0].client_url
    anonymous = grpc.ssl_channel_credentials(pki.ca.read_bytes())
    with (
        grpc.secure_channel(_target(url), anonymous) as channel,
        pytest.raises(grpc.RpcError) as refused,
    ):
        rpc_pb2_grpc.KVStub(channel).Range(rpc_pb2.RangeRequest(key=b"k"), timeout=5)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    with pytest.raises(OSError):  # ssl.SSLError or a reset, depending on the TLS version
        urllib.request.urlopen(
            f"{url}/health", timeout=10, context=ssl.create_default_context(cafile=str(pki.ca))
        ).read()
    with urllib.request.urlopen(f"{url}/health", timeout=10, context=https_context(pki)) as resp:
        assert resp.read() == b'{"health":"true"}'


def _follower(cluster: RaftKVCluster, pki: Pki) -> RaftKVMember:
    deadline = time.monotonic() + _WAIT_S
    while True:
        for member in cluster.members:
            target = _target(member.client_url)
            with grpc.secure_channel(target, channel_credentials(pki)) as channel:
                stub = rpc_pb2_grpc.MaintenanceStub(channel)
                status = stub.Status(rpc_pb2.StatusRequest(), timeout=10)
            if status.leader and status.leader != status.header.member_id:
                return member
        assert time.monotonic() < deadline, "no follower found"
        time.sleep(0.2)


def test_the_python_client_over_mutual_tls(cluster: RaftKVCluster, pki: Pki) -> None:
    """AsyncClient/SyncClient on an https endpoint; a follower forwards the lease keep-alive
    to the leader's https client URL with its own client certificate."""
    cert, key = pki.client("alice")
    tls = TLSConfig(ca_file=pki.ca, cert_file=cert, key_file=key)
    with SyncClient([_follower(cluster, pki).client_url], tls=tls, timeout=30) as client:
        client.put("/tls/client", "py")
        assert client.get("/tls/client").kvs[0].value == b"py"
        lease = client.lease_grant(60)
        assert client.lease_keep_alive_once(lease.id).ttl > 0


def test_http_clients_offering_h2_too_get_http1(cluster: RaftKVCluster, pki: Pki) -> None:
    """curl and browsers offer h2 and http/1.1: they are served HTTP/1.1, not taken for gRPC."""
    context = https_context(pki)
    context.set_alpn_protocols(["h2", "http/1.1"])
    host, port = _target(cluster.members[0].client_url).rsplit(":", 1)
    with (
        socket.create_connection((host, int(port)), timeout=10) as sock,
        context.wrap_socket(sock, server_hostname=host) as tls,
    ):
        assert tls.selected_alpn_protocol() == "http/1.1"
        tls.sendall(b"GET /health HTTP/1.1\r\nHost: raftkv\r\nConnection: close\r\n\r\n")
        response = b""
        while chunk := tls.recv(65536):
            response += chunk
    assert response.startswith(b"HTTP/1.1 200")
    assert response.endswith(b'{"health":"true"}')


def test_a_peer_with_a_certificate_from_another_ca_is_refused(
    cluster: RaftKVCluster, pki: Pki
) -> None:
    target = _target(cluster.members[0].peer_url)

    def probe(credentials: grpc.ChannelCredentials) -> grpc.StatusCode:
        with grpc.secure_channel(target, credentials) as channel:
            try:
                peer_pb2_grpc.PeerStub(channel).Probe(ProbeRequest(), timeout=5)
            except grpc.RpcError as error:
                return error.code()
        return grpc.StatusCode.OK

    stranger = grpc.ssl_channel_credentials(
        pki.ca.read_bytes(), pki.stranger_key.read_bytes(), pki.stranger_cert.read_bytes()
    )
    member = grpc.ssl_channel_credentials(
        pki.ca.read_bytes(), pki.server_key.read_bytes(), pki.server_cert.read_bytes()
    )
    assert probe(stranger) == grpc.StatusCode.UNAVAILABLE  # the TLS handshake fails
    # the member's own certificate gets through TLS; the call is refused for its metadata
    assert probe(member) == grpc.StatusCode.INVALID_ARGUMENT


def test_rotated_certificates_are_served_without_a_restart(
    cluster: RaftKVCluster, pki: Pki
) -> None:
    member = cluster.members[0]
    paths = {
        "client gRPC": (member.client_url, "h2"),
        "client HTTP/1": (member.client_url, "http/1.1"),
        "peer": (member.peer_url, "h2"),
    }
    before = {path: _presented_serial(url, alpn, pki) for path, (url, alpn) in paths.items()}
    issue(pki.root, "ca", "rotated", "raftkv-member", SERVER_EXTENSIONS)
    rotated = x509.load_pem_x509_certificate((pki.root / "rotated.crt").read_bytes())
    for name in ("key", "crt"):  # key first: a half-done rotation keeps the old pair
        tmp = pki.root / f"swap.{name}"
        tmp.write_bytes((pki.root / f"rotated.{name}").read_bytes())
        os.replace(tmp, pki.root / f"server.{name}")
    after = {path: _presented_serial(url, alpn, pki) for path, (url, alpn) in paths.items()}
    assert set(before.values()) != {rotated.serial_number}
    assert after == dict.fromkeys(paths, rotated.serial_number)
    # new connections between members and from clients work with the rotated certificate
    channel, kv = _kv(cluster.members[2], pki)
    with channel:
        kv.Put(rpc_pb2.PutRequest(key=b"/tls/after-rotation", value=b"ok"), timeout=30)
    _wait_value(member, pki, b"/tls/after-rotation", b"ok")


def _single(tmp_path: Path, pki: Pki, **flags: str) -> RaftKVCluster:
    return start_tls_raftkv_cluster(tmp_path, pki, size=1, **flags)


def test_tls_min_version_refuses_tls12(tmp_path: Path, pki: Pki) -> None:
    """Three members: they reach each other over TLS 1.3 (the cluster serves), while TLS 1.2
    clients are refused on both client-port paths and on the peer port."""
    cluster = start_tls_raftkv_cluster(tmp_path, pki, size=3, tls_min_version="TLS1.3")
    try:
        member = cluster.members[0]
        for url, alpn in ((member.client_url, "h2"), (member.client_url, "http/1.1"),
                          (member.peer_url, "h2")):  # fmt: skip
            with pytest.raises(ssl.SSLError):
                _handshake(url, alpn, pki, maximum=ssl.TLSVersion.TLSv1_2)
            _handshake(url, alpn, pki)  # TLS 1.3 clients are served
    finally:
        cluster.stop()


def test_cipher_suites_limit_tls12(tmp_path: Path, pki: Pki) -> None:
    cluster = _single(tmp_path, pki, cipher_suites="TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256")
    try:
        url = cluster.members[0].client_url
        tls12 = ssl.TLSVersion.TLSv1_2
        for alpn in ("h2", "http/1.1"):
            with pytest.raises(ssl.SSLError):
                _handshake(url, alpn, pki, maximum=tls12, ciphers="ECDHE-ECDSA-AES256-GCM-SHA384")
            _handshake(url, alpn, pki, maximum=tls12, ciphers="ECDHE-ECDSA-AES128-GCM-SHA256")
    finally:
        cluster.stop()


def test_auto_tls_on_both_sides(tmp_path: Path, pki: Pki) -> None:
    cluster = plan_tls_raftkv_cluster(tmp_path, pki, size=3)
    for member in cluster.members:
        member.args = [
            arg
            for arg in member.args
            if not arg.startswith(("--cert-file", "--key-file", "--trusted-ca", "--client-cert"))
            and not arg.startswith(("--peer-cert", "--peer-key", "--peer-trusted", "--peer-client"))
        ] + ["--auto-tls", "--peer-auto-tls"]
    try:
        for member in cluster.members:
            member.start()
        endpoints = ",".join(m.client_url for m in cluster.members)
        tls_flags = ["--insecure-transport=false", "--insecure-skip-tls-verify"]
        deadline = time.monotonic() + _WAIT_S
        while ctl.main([f"--endpoints={endpoints}", *tls_flags, "put", "/auto", "tls"]) != 0:
            assert time.monotonic() < deadline, cluster.members[0].log_tail()
            time.sleep(0.5)
        for member in cluster.members:
            for kind in ("client", "peer"):
                assert (member.data_dir / "fixtures" / kind / "cert.pem").exists()
        last = f"--endpoints={cluster.members[2].client_url}"
        assert ctl.main([last, *tls_flags, "get", "/auto"]) == 0
    finally:
        cluster.stop()


def test_a_member_joins_over_peer_tls(tmp_path: Path, pki: Pki) -> None:
    """`member add`, then a new member with --initial-cluster-state=existing asks the others
    for the member list over the peer port (TLS) and catches up."""
    cluster = plan_tls_raftkv_cluster(tmp_path, pki, size=2)
    first, second = cluster.members
    first.args = [
        f"--initial-cluster=m0={first.peer_url}" if arg.startswith("--initial-cluster=") else arg
        for arg in first.args
    ]
    second.args = [*second.args, "--initial-cluster-state=existing"]
    try:
        first.start()
        wait_serving_tls(first, pki)
        with grpc.secure_channel(_target(first.client_url), channel_credentials(pki)) as channel:
            request = rpc_pb2.MemberAddRequest(peerURLs=[second.peer_url])
            rpc_pb2_grpc.ClusterStub(channel).MemberAdd(request, timeout=30)
            # two voters now: writes wait for the new member
            second.start()
            wait_serving_tls(second, pki)
            rpc_pb2_grpc.KVStub(channel).Put(
                rpc_pb2.PutRequest(key=b"/tls/joined", value=b"yes"), timeout=30
            )
        _wait_value(second, pki, b"/tls/joined", b"yes")
    finally:
        cluster.stop()
