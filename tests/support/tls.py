"""Certificates from the `openssl` command line, and raftkv / etcd 3.4 clusters serving TLS.

`make_pki` writes a throwaway CA, a server certificate for 127.0.0.1 (usable by members for
client and peer URLs alike, so it carries both serverAuth and clientAuth), client certificates
with the common names the tests log in with (root, alice), and a second CA with a certificate
of its own: a stranger the members must refuse.

`start_tls_raftkv_cluster` and `start_tls_etcd_cluster` start 3-member clusters with https
client and peer URLs and the same TLS flags, waiting until every member serves over mutual TLS;
both stop (kill processes, remove dirs) on failure, as `tests.support.raftkv` and `.etcd` do.
"""

from __future__ import annotations

import json
import ssl
import subprocess
import time
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path

import grpc
from raftkv.pb.etcdserverpb import rpc_pb2, rpc_pb2_grpc

from tests.support.etcd import ETCD_BIN, EtcdCluster, EtcdMember, free_port
from tests.support.raftkv import RaftKVCluster, RaftKVMember

_READY_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class Pki:
    root: Path
    ca: Path
    server_cert: Path
    server_key: Path
    # common name -> (cert, key)
    clients: dict[str, tuple[Path, Path]]
    other_ca: Path
    stranger_cert: Path
    stranger_key: Path

    def client(self, name: str) -> tuple[Path, Path]:
        return self.clients[name]


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def _ca(root: Path, name: str) -> None:
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.crt", "-days", "2",
            "-subj", f"/CN={name}", cwd=root)  # fmt: skip


def issue(root: Path, ca: str, name: str, common_name: str, extensions: str) -> None:
    """`<name>.crt` and `<name>.key`, signed by the CA `<ca>.crt`; a fresh serial every time."""
    (root / f"{name}.ext").write_text(extensions + "\n")
    openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={common_name}",
            cwd=root)  # fmt: skip
    openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.crt", "-CAkey", f"{ca}.key",
            "-set_serial", str(uuid.uuid4().int >> 64), "-out", f"{name}.crt", "-days", "2",
            "-extfile", f"{name}.ext", cwd=root)  # fmt: skip


SERVER_EXTENSIONS = "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth"
CLIENT_EXTENSIONS = "extendedKeyUsage=clientAuth"


def make_pki(root: Path, clients: tuple[str, ...] = ("root", "alice")) -> Pki:
    root.mkdir(parents=True, exist_ok=True)
    _ca(root, "ca")
    _ca(root, "other-ca")
    issue(root, "ca", "server", "raftkv-member", SERVER_EXTENSIONS)
    for name in clients:
        issue(root, "ca", name, name, CLIENT_EXTENSIONS)
    issue(root, "other-ca", "stranger", "raftkv-member", SERVER_EXTENSIONS)
    return Pki(
        root=root,
        ca=root / "ca.crt",
        server_cert=root / "server.crt",
        server_key=root / "server.key",
        clients={name: (root / f"{name}.crt", root / f"{name}.key") for name in clients},
        other_ca=root / "other-ca.crt",
        stranger_cert=root / "stranger.crt",
        stranger_key=root / "stranger.key",
    )


def member_tls_flags(pki: Pki) -> dict[str, str]:
    """Client mTLS with --client-cert-auth and peer TLS with verified peer certificates."""
    return {
        "cert-file": str(pki.server_cert),
        "key-file": str(pki.server_key),
        "trusted-ca-file": str(pki.ca),
        "client-cert-auth": "true",
        "peer-cert-file": str(pki.server_cert),
        "peer-key-file": str(pki.server_key),
        "peer-trusted-ca-file": str(pki.ca),
        "peer-client-cert-auth": "true",
    }


def channel_credentials(pki: Pki, client: str = "root") -> grpc.ChannelCredentials:
    cert, key = pki.client(client)
    return grpc.ssl_channel_credentials(pki.ca.read_bytes(), key.read_bytes(), cert.read_bytes())


def https_context(pki: Pki, client: str = "root") -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(pki.ca))
    context.load_cert_chain(*pki.client(client))
    return context


def _urls(size: int) -> list[tuple[str, str]]:
    return [
        (f"https://127.0.0.1:{free_port()}", f"https://127.0.0.1:{free_port()}")
        for _ in range(size)
    ]


def plan_tls_raftkv_cluster(
    root: Path, pki: Pki, size: int = 3, **extra: str | int
) -> RaftKVCluster:
    root = root / f"raftkv-tls-{uuid.uuid4().hex[:8]}"
    root.mkdir(parents=True)
    urls = _urls(size)
    names = [f"m{i}" for i in range(size)]
    initial = ",".join(f"{n}={peer}" for n, (_, peer) in zip(names, urls, strict=True))
    cluster = RaftKVCluster(root, initial_cluster=initial, initial_cluster_token=root.name)
    for name, (client, peer) in zip(names, urls, strict=True):
        flags = {
            "name": name,
            "data-dir": str(root / f"{name}.raftkv"),
            "listen-client-urls": client,
            "advertise-client-urls": client,
            "listen-peer-urls": peer,
            "initial-advertise-peer-urls": peer,
            "initial-cluster": initial,
            "initial-cluster-token": root.name,
            "heartbeat-interval": 50,
            "election-timeout": 500,
            **member_tls_flags(pki),
            **{k.replace("_", "-"): v for k, v in extra.items()},
        }
        args = [f"--{k}={v}" for k, v in flags.items()]
        cluster.members.append(
            RaftKVMember(name, client, peer, root / f"{name}.raftkv", root / f"{name}.log", args)
        )
    return cluster


def wait_serving_tls(member: RaftKVMember, pki: Pki, timeout: float = _READY_TIMEOUT_S) -> None:
    """Wait until `member` answers a linearizable read over mutual TLS."""
    deadline = time.monotonic() + timeout
    target = member.client_url.removeprefix("https://")
    last: Exception | None = None
    while time.monotonic() < deadline:
        if not member.alive:
            raise RuntimeError(f"{member.name} exited:\n{member.log_tail()}")
        try:
            with grpc.secure_channel(target, channel_credentials(pki)) as channel:
                rpc_pb2_grpc.KVStub(channel).Range(rpc_pb2.RangeRequest(key=b"x"), timeout=2)
                return
        except grpc.RpcError as error:
            last = error
            time.sleep(0.2)
    raise TimeoutError(f"{member.name} not serving over TLS: {last}\n{member.log_tail()}")


def start_tls_raftkv_cluster(
    root: Path, pki: Pki, size: int = 3, **extra: str | int
) -> RaftKVCluster:
    cluster = plan_tls_raftkv_cluster(root, pki, size, **extra)
    try:
        for member in cluster.members:
            member.start()
        for member in cluster.members:
            wait_serving_tls(member, pki)
    except BaseException:
        cluster.stop()
        raise
    return cluster


def _etcd_healthy(url: str, context: ssl.SSLContext) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2.0, context=context) as resp:
            return bool(json.loads(resp.read()).get("health") == "true")
    except (OSError, ValueError):
        return False


def start_tls_etcd_cluster(root: Path, pki: Pki, size: int = 3, **extra: str | int) -> EtcdCluster:
    root = root / f"etcd-tls-{uuid.uuid4().hex[:8]}"
    root.mkdir(parents=True)
    urls = _urls(size)
    members = [
        EtcdMember(f"m{i}", client, peer, root / f"m{i}.etcd", root / f"m{i}.log")
        for i, (client, peer) in enumerate(urls)
    ]
    cluster = EtcdCluster(members=members, root=root)
    initial = ",".join(f"{m.name}={m.peer_url}" for m in members)
    try:
        for m in members:
            flags = {
                "name": m.name,
                "data-dir": str(m.data_dir),
                "listen-client-urls": m.client_url,
                "advertise-client-urls": m.client_url,
                "listen-peer-urls": m.peer_url,
                "initial-advertise-peer-urls": m.peer_url,
                "initial-cluster": initial,
                "initial-cluster-state": "new",
                "initial-cluster-token": root.name,
                "logger": "zap",
                "log-outputs": "stderr",
                **member_tls_flags(pki),
                **{k.replace("_", "-"): v for k, v in extra.items()},
            }
            with m.log_path.open("wb") as log:
                m.process = subprocess.Popen(
                    [str(ETCD_BIN), *(f"--{k}={v}" for k, v in flags.items())],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                )
        context = https_context(pki)
        deadline = time.monotonic() + _READY_TIMEOUT_S
        pending = list(members)
        while pending:
            for m in list(pending):
                assert m.process is not None
                if m.process.poll() is not None:
                    raise RuntimeError(f"etcd {m.name} exited:\n{m.log_tail()}")
                if _etcd_healthy(m.client_url, context):
                    pending.remove(m)
            if pending and time.monotonic() > deadline:
                raise TimeoutError(f"etcd members not healthy: {[m.name for m in pending]}")
            time.sleep(0.1)
    except BaseException:
        cluster.stop()
        raise
    return cluster
