"""The etcdctl auth session of issue #9, over mutual TLS, against raftkv and etcd 3.4 alike.

Certificates come from the `openssl` command line (`tests.support.tls`): a CA, a server
certificate for 127.0.0.1 that every member uses for client and peer URLs, and client
certificates with the common names root, alice and guest (a name no user has). Both 3-member
clusters run with `--client-cert-auth --trusted-ca-file` on https client URLs, verified peer TLS
(`--peer-client-cert-auth`), and small request limits. The real `/usr/bin/etcdctl` then runs
the same commands against both, always over mutual TLS, and every command's stdout, stderr and
exit code must match after `tests.compat` normalisation:

- set up users and roles, enable auth;
- reads and writes with no password (the certificate's common name is the user, as etcd does
  with --client-cert-auth), with a wrong password, permitted and denied, as root and alice;
- listings (`user list`, `role get`), disabling auth;
- a request over --max-request-bytes and a txn over --max-txn-ops.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.compat.harness import ComparisonError, CtlResult, Outcome, System, run_etcdctl
from tests.compat.normalize import ClusterIdentity
from tests.support.etcd import EtcdCluster
from tests.support.fixtures import require_etcd
from tests.support.raftkv import RaftKVCluster
from tests.support.tls import Pki, make_pki, start_tls_etcd_cluster, start_tls_raftkv_cluster

pytestmark = pytest.mark.integration

MAX_REQUEST_BYTES = 4096
MAX_TXN_OPS = 4
LIMITS = {"max-request-bytes": MAX_REQUEST_BYTES, "max-txn-ops": MAX_TXN_OPS}

_WAIT_S = 60.0
ROOT_PW = "--user=root:rootpw"
ALICE_PW = "--user=alice:alicepw"

# (client certificate, etcdctl arguments, stdin)
Step = tuple[str, tuple[str, ...], str | None]

SETUP: list[Step] = [
    ("guest", ("user", "add", "root", "--new-user-password=rootpw"), None),
    ("guest", ("user", "grant-role", "root", "root"), None),
    ("guest", ("user", "add", "alice:alicepw", "--interactive=false"), None),
    ("guest", ("role", "add", "reader"), None),
    ("guest", ("role", "grant-permission", "reader", "read", "/app/", "--prefix"), None),
    ("guest", ("role", "grant-permission", "reader", "readwrite", "/w/", "--prefix"), None),
    ("guest", ("user", "grant-role", "alice", "reader"), None),
    ("guest", ("put", "/app/x", "hello"), None),
    ("guest", ("put", "/secret", "s3cret"), None),
    ("guest", ("user", "list"), None),
    ("guest", ("auth", "enable"), None),
]

ENABLED: list[Step] = [
    # a certificate whose common name is no user, and no password
    ("guest", ("get", "/app/x"), None),
    ("guest", ("put", "/app/x", "anon"), None),
    # passwords: wrong, permitted, denied
    ("guest", ("--user=alice:wrong", "get", "/app/x"), None),
    ("guest", ("--user=nobody:pw", "get", "/app/x"), None),
    ("guest", (ALICE_PW, "get", "/app/x"), None),
    ("guest", (ALICE_PW, "get", "/secret"), None),
    ("guest", (ALICE_PW, "put", "/w/x", "mine"), None),
    ("guest", (ALICE_PW, "put", "/app/x", "nope"), None),
    # the certificate's common name is the user when no password is given
    ("alice", ("get", "/app/x"), None),
    ("alice", ("get", "/app/", "--prefix"), None),
    ("alice", ("get", "/secret"), None),
    ("alice", ("put", "/w/y", "by-cert"), None),
    ("alice", ("put", "/secret", "nope"), None),
    ("alice", ("user", "list"), None),
    ("alice", ("role", "get", "reader"), None),
    ("alice", ("auth", "disable"), None),
    # a password wins over the certificate
    ("alice", (ROOT_PW, "get", "/secret"), None),
    ("root", ("get", "/secret"), None),
    ("root", ("get", "/w/", "--prefix"), None),
    ("root", ("user", "list"), None),
    ("root", ("role", "get", "reader"), None),
    ("root", ("user", "get", "alice"), None),
    ("guest", (ROOT_PW, "role", "list"), None),
    # limits: one request over --max-request-bytes, one txn over --max-txn-ops
    ("root", ("put", "/w/big", "v" * (MAX_REQUEST_BYTES + 100)), None),
    ("root", ("put", "/w/fits", "v" * 100), None),
    (
        "root",
        ("txn", "--interactive=false"),
        "\n" + "".join(f"put /w/t{i} {i}\n" for i in range(MAX_TXN_OPS + 1)) + "\n\n",
    ),
    (
        "root",
        ("txn", "--interactive=false"),
        "\n" + "".join(f"put /w/t{i} {i}\n" for i in range(MAX_TXN_OPS)) + "\n\n",
    ),
    ("root", ("auth", "disable"), None),
    ("guest", ("get", "/secret"), None),
    ("guest", ("put", "/app/x", "open again"), None),
    ("guest", ("auth", "disable"), None),
]


@dataclass
class TlsSystem(System):
    """A cluster under comparison reached only over mutual TLS."""

    pki: Pki | None = field(default=None)

    def tls_args(self, client: str) -> list[str]:
        assert self.pki is not None
        cert, key = self.pki.client(client)
        return [f"--cacert={self.pki.ca}", f"--cert={cert}", f"--key={key}"]

    def run(self, client: str, args: tuple[str, ...], stdin: str | None) -> CtlResult:
        data = stdin.encode() if stdin is not None else None
        return run_etcdctl(self.endpoints(), [*self.tls_args(client), *args], data)

    def _wait_identity(self) -> ClusterIdentity:
        # raftkv members publish their names and client URLs through Raft after they serve.
        args = [*self.tls_args("root"), "member", "list", "-w", "json"]
        deadline = time.monotonic() + _WAIT_S
        while True:
            result = run_etcdctl(self.endpoints(), args)
            if result.code == 0:
                identity = ClusterIdentity.from_member_list_json(result.stdout.decode())
                if sorted(m.name for m in identity.members) == sorted(self.member_names) and all(
                    m.client_urls for m in identity.members
                ):
                    return identity
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.label}: member list incomplete: {result}")
            time.sleep(0.1)


@dataclass
class TlsPair:
    etcd: TlsSystem
    raftkv: TlsSystem

    @property
    def systems(self) -> tuple[TlsSystem, TlsSystem]:
        return self.etcd, self.raftkv


def _start(root: Path, pki: Pki) -> TlsPair:
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = [
            pool.submit(start_tls_etcd_cluster, root, pki, 3, **LIMITS),
            pool.submit(start_tls_raftkv_cluster, root, pki, 3, **LIMITS),
        ]
        clusters: list[EtcdCluster | RaftKVCluster] = []
        error: BaseException | None = None
        for future in futures:
            try:
                clusters.append(future.result())
            except BaseException as exc:
                error = exc
    try:
        if error is not None:
            raise error
        return TlsPair(
            TlsSystem("etcd", clusters[0], pki=pki), TlsSystem("raftkv", clusters[1], pki=pki)
        )
    except BaseException:
        for cluster in clusters:
            cluster.stop()
        raise


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsPair]:
    require_etcd()
    root = tmp_path_factory.mktemp("tls-compat")
    pki = make_pki(root / "pki", clients=("root", "alice", "guest"))
    pair = _start(root, pki)
    try:
        yield pair
    finally:
        for system in pair.systems:
            system.cluster.stop()


def _run(pair: TlsPair, steps: list[Step]) -> tuple[list[str], list[Outcome]]:
    differences: list[str] = []
    outcomes: list[Outcome] = []
    for client, args, stdin in steps:
        etcd, raftkv = (
            system.normalize(system.run(client, args, stdin)) for system in pair.systems
        )
        outcomes.append(etcd)
        if etcd != raftkv:
            shown = " ".join(a if len(a) < 80 else a[:20] + "..." for a in args)
            differences.append(f"[{client}] etcdctl {shown}\n  etcd:   {etcd}\n  raftkv: {raftkv}")
    return differences, outcomes


def test_etcdctl_over_mutual_tls_matches_etcd(pair: TlsPair) -> None:
    differences, _ = _run(pair, SETUP)
    enabled_differences, outcomes = _run(pair, ENABLED)
    differences += enabled_differences
    if differences:
        raise ComparisonError("\n".join(differences))
    # The session is meaningful only if the certificate really named the user.
    outcome = dict(zip(((client, args) for client, args, _ in ENABLED), outcomes, strict=True))
    assert outcome["root", ("get", "/secret")].stdout == "/secret\ns3cret\n"
    assert outcome["alice", ("put", "/w/y", "by-cert")].code == 0
    assert "permission denied" in outcome["alice", ("put", "/secret", "nope")].stderr
    big = ("put", "/w/big", "v" * (MAX_REQUEST_BYTES + 100))
    assert "request is too large" in outcome["root", big].stderr
    txns = [o for (_, args, _), o in zip(ENABLED, outcomes, strict=True) if args[0] == "txn"]
    assert "too many operations in txn request" in txns[0].stderr
    assert txns[1].code == 0
