"""TLS: an etcd that serves clients only over HTTPS and requires client certificates.

The shared fixtures start plain-HTTP clusters, so this module starts its own member with
certificates made by the `openssl` CLI for the occasion (a throwaway CA, a server certificate for
127.0.0.1 and a client certificate).
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from raftkv.client import SyncClient, TLSConfig, errors

from tests.support.etcd import ETCD_BIN, free_port
from tests.support.fixtures import require_etcd

pytestmark = pytest.mark.integration


@dataclass
class Certs:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=30)


def make_certs(root: Path) -> Certs:
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    _openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.crt", "-days", "1",
             "-subj", "/CN=raftkv-test-ca", cwd=root)  # fmt: skip
    for name, extensions in [
        ("server", "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth"),
        ("client", "extendedKeyUsage=clientAuth"),
    ]:
        (root / f"{name}.ext").write_text(extensions + "\n")
        _openssl("req", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr",
                 "-subj", f"/CN={name}", cwd=root)  # fmt: skip
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
                 "-CAcreateserial", "-out", f"{name}.crt", "-days", "1",
                 "-extfile", f"{name}.ext", cwd=root)  # fmt: skip
    return Certs(
        root / "ca.crt", root / "server.crt", root / "server.key", root / "client.crt",
        root / "client.key",
    )  # fmt: skip


def full_tls(certs: Certs) -> TLSConfig:
    return TLSConfig(ca_file=certs.ca, cert_file=certs.client_cert, key_file=certs.client_key)


@pytest.fixture(scope="module")
def tls_member(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Certs]]:
    """(https endpoint, certificates) of a single etcd member with client-cert auth."""
    require_etcd()
    if shutil.which("openssl") is None:
        pytest.skip("the openssl CLI is needed to make test certificates")
    root = tmp_path_factory.mktemp("etcd-tls")
    certs = make_certs(root)
    client_url = f"https://127.0.0.1:{free_port()}"
    peer_url = f"http://127.0.0.1:{free_port()}"
    with (root / "etcd.log").open("wb") as log:
        process = subprocess.Popen(
            [
                str(ETCD_BIN),
                "--name=tls",
                f"--data-dir={root / 'data'}",
                f"--listen-client-urls={client_url}",
                f"--advertise-client-urls={client_url}",
                f"--listen-peer-urls={peer_url}",
                f"--initial-advertise-peer-urls={peer_url}",
                f"--initial-cluster=tls={peer_url}",
                f"--cert-file={certs.server_cert}",
                f"--key-file={certs.server_key}",
                f"--trusted-ca-file={certs.ca}",
                "--client-cert-auth",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        with SyncClient(client_url, tls=full_tls(certs)) as client:
            _wait_until_serving(client)
        yield client_url, certs
    finally:
        process.kill()
        process.wait()


def _wait_until_serving(client: SyncClient) -> None:
    deadline = time.monotonic() + 20
    while True:
        try:
            client.status()
            return
        except errors.UnavailableError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def test_mutual_tls_round_trip(tls_member: tuple[str, Certs]) -> None:
    url, certs = tls_member
    tls = full_tls(certs)
    with SyncClient(url, tls=tls) as client:
        client.put("/tls/k", "secret")
        got = client.get("/tls/k")
    assert got.value == b"secret"
    # A bare host:port endpoint uses TLS as soon as TLS is configured.
    with SyncClient(url.removeprefix("https://"), tls=tls) as client:
        assert client.get("/tls/k").value == b"secret"


def test_without_a_client_certificate_the_member_is_unavailable(
    tls_member: tuple[str, Certs],
) -> None:
    url, certs = tls_member
    no_cert = TLSConfig(ca_file=certs.ca)
    with (
        SyncClient(url, tls=no_cert, timeout=1.0) as client,
        pytest.raises(errors.UnavailableError),
    ):
        client.get("/tls/k")
    with pytest.raises(ValueError):
        TLSConfig(cert_file=certs.client_cert).credentials()
