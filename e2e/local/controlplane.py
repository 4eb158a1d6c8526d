"""A real Kubernetes control plane on 127.0.0.1: storage, kube-apiserver, kube-controller-manager.

The binaries are the ones `e2e/local/build-tools.sh` builds into `.tools/bin` from the Kubernetes
Go modules. Storage is either Debian's etcd 3.4 or a 3-member raftkv cluster (the API server then
talks etcd v3 gRPC to raftkv, which makes the whole tier a compatibility test of raftkv).

Everything lives in one temp dir with fresh loopback ports; `stop()` kills every process and is
safe to call after a failed start. There is no kubelet and no scheduler: `nodeagent` plays both.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.etcd import free_port

REPO = Path(__file__).resolve().parents[2]
TOOLS_BIN = REPO / ".tools" / "bin"
SERVICE_CIDR = "10.96.0.0/16"
ADMIN_TOKEN_USER = "e2e-admin"
_START_TIMEOUT_S = 120.0

# Only the controllers the tier needs: workloads, ownership, endpoints, service accounts and the
# storage-object protection finalizers. No node lifecycle (it would taint the agent's node), no
# volume binder or attach/detach (the node agent provisions and binds local volumes itself).
CONTROLLERS = (
    "statefulset",
    "deployment",
    "replicaset",
    "disruption",
    "garbagecollector",
    "namespace",
    "endpoint",
    "endpointslice",
    "endpointslicemirroring",
    "serviceaccount",
    "serviceaccount-token",
    "root-ca-cert-publisher",
    "pvc-protection",
    "pv-protection",
    "job",
)


@dataclass
class Proc:
    """One control-plane process with its log file."""

    name: str
    argv: list[str]
    log_path: Path
    process: subprocess.Popen[bytes] | None = None

    def start(self, env: dict[str, str] | None = None) -> None:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                self.argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                env=env,
            )

    def check_alive(self) -> None:
        if self.process is None or self.process.poll() is not None:
            raise RuntimeError(f"{self.name} exited:\n{self.log_tail()}")

    def stop(self, timeout: float = 10.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def tool(name: str) -> str:
    path = TOOLS_BIN / name
    if not path.exists():
        raise FileNotFoundError(f"{path} missing: run `make e2e-tools`")
    return str(path)


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_pki(pki: Path) -> None:
    """A CA, the API server's serving cert (127.0.0.1, localhost, kubernetes.default.svc) and the
    service-account signing key pair, made with the openssl command line."""
    pki.mkdir(parents=True)
    days = "2"
    _openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-days",
        days,
        "-subj",
        "/CN=raftkv-e2e-ca",
        cwd=pki,
    )
    sans = (
        "subjectAltName=IP:127.0.0.1,IP:10.96.0.1,DNS:localhost,DNS:kubernetes,"
        "DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
    )
    _openssl(
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "apiserver.key",
        "-out",
        "apiserver.csr",
        "-subj",
        "/CN=kube-apiserver",
        cwd=pki,
    )
    (pki / "apiserver.ext").write_text(sans + "\nextendedKeyUsage=serverAuth\n")
    _openssl(
        "x509",
        "-req",
        "-in",
        "apiserver.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "apiserver.crt",
        "-days",
        days,
        "-extfile",
        "apiserver.ext",
        cwd=pki,
    )
    _openssl("genrsa", "-out", "sa.key", "2048", cwd=pki)
    _openssl("rsa", "-in", "sa.key", "-pubout", "-out", "sa.pub", cwd=pki)


def write_kubeconfig(path: Path, server: str, ca_file: Path, token: str, namespace: str) -> None:
    """A kubeconfig with one bearer-token user (an admin token or a ServiceAccount token)."""
    path.touch(mode=0o600)
    path.write_text(
        f"""apiVersion: v1
kind: Config
clusters:
- name: local
  cluster:
    server: {server}
    certificate-authority: {ca_file}
users:
- name: user
  user:
    token: {token}
contexts:
- name: local
  context:
    cluster: local
    user: user
    namespace: {namespace}
current-context: local
"""
    )


@dataclass
class ControlPlane:
    """kube-apiserver + kube-controller-manager on 127.0.0.1 over etcd or raftkv storage."""

    root: Path
    storage: str = "etcd"  # "etcd" or "raftkv"
    procs: list[Proc] = field(default_factory=list)
    raftkv_storage: object | None = None
    apiserver_port: int = 0
    admin_token: str = ""

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.apiserver_port}"

    @property
    def ca_file(self) -> Path:
        return self.root / "pki" / "ca.crt"

    @property
    def kubeconfig(self) -> Path:
        return self.root / "admin.kubeconfig"

    def start(self) -> None:
        try:
            self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        pki = self.root / "pki"
        make_pki(pki)
        etcd_servers = self._start_storage()
        self.admin_token = os.urandom(16).hex()
        (pki / "tokens.csv").write_text(
            f'{self.admin_token},{ADMIN_TOKEN_USER},{ADMIN_TOKEN_USER},"system:masters"\n'
        )
        self.apiserver_port = free_port()
        apiserver = Proc(
            "kube-apiserver",
            [
                tool("kube-apiserver"),
                f"--etcd-servers={etcd_servers}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                f"--secure-port={self.apiserver_port}",
                f"--cert-dir={self.root / 'apiserver-certs'}",
                f"--tls-cert-file={pki / 'apiserver.crt'}",
                f"--tls-private-key-file={pki / 'apiserver.key'}",
                f"--client-ca-file={pki / 'ca.crt'}",
                f"--token-auth-file={pki / 'tokens.csv'}",
                "--authorization-mode=RBAC",
                f"--service-account-key-file={pki / 'sa.pub'}",
                f"--service-account-signing-key-file={pki / 'sa.key'}",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                # The lease reconciler would publish 127.0.0.1 as the `kubernetes` Service's
                # endpoint, which Endpoints validation refuses (loopback).
                "--endpoint-reconciler-type=none",
                "--allow-privileged=true",
                "--profiling=false",
                "--v=1",
            ],
            self.root / "kube-apiserver.log",
        )
        apiserver.start()
        self.procs.append(apiserver)
        write_kubeconfig(self.kubeconfig, self.server, self.ca_file, self.admin_token, "default")
        self._wait_ready(apiserver)
        kcm = Proc(
            "kube-controller-manager",
            [
                tool("kube-controller-manager"),
                f"--kubeconfig={self.kubeconfig}",
                f"--authentication-kubeconfig={self.kubeconfig}",
                f"--authorization-kubeconfig={self.kubeconfig}",
                "--bind-address=127.0.0.1",
                f"--secure-port={free_port()}",
                f"--cert-dir={self.root / 'kcm-certs'}",
                "--leader-elect=false",
                "--use-service-account-credentials=true",
                f"--service-account-private-key-file={pki / 'sa.key'}",
                f"--root-ca-file={pki / 'ca.crt'}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                f"--controllers={','.join(CONTROLLERS)}",
                "--concurrent-statefulset-syncs=5",
                "--v=1",
            ],
            self.root / "kube-controller-manager.log",
        )
        kcm.start()
        self.procs.append(kcm)

    def _start_storage(self) -> str:
        if self.storage == "etcd":
            client, peer = free_port(), free_port()
            etcd = Proc(
                "etcd",
                [
                    shutil.which("etcd") or "etcd",
                    "--name=e2e",
                    f"--data-dir={self.root / 'etcd'}",
                    f"--listen-client-urls=http://127.0.0.1:{client}",
                    f"--advertise-client-urls=http://127.0.0.1:{client}",
                    f"--listen-peer-urls=http://127.0.0.1:{peer}",
                    f"--initial-advertise-peer-urls=http://127.0.0.1:{peer}",
                    f"--initial-cluster=e2e=http://127.0.0.1:{peer}",
                ],
                self.root / "etcd.log",
            )
            env = {k: v for k, v in os.environ.items() if not k.startswith("ETCD_")}
            etcd.start(env)
            self.procs.append(etcd)
            return f"http://127.0.0.1:{client}"
        if self.storage == "raftkv":
            from tests.support.raftkv import start_raftkv_cluster

            cluster = start_raftkv_cluster(self.root / "raftkv-storage", size=3)
            self.raftkv_storage = cluster
            return cluster.endpoints
        raise ValueError(f"unknown storage {self.storage!r} (etcd or raftkv)")

    def _wait_ready(self, apiserver: Proc) -> None:
        context = ssl.create_default_context(cafile=str(self.ca_file))
        deadline = time.monotonic() + _START_TIMEOUT_S
        last = ""
        while time.monotonic() < deadline:
            apiserver.check_alive()
            request = urllib.request.Request(
                f"{self.server}/readyz", headers={"Authorization": f"Bearer {self.admin_token}"}
            )
            try:
                with urllib.request.urlopen(request, context=context, timeout=5) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, OSError) as error:
                last = str(error)
            time.sleep(0.5)
        raise TimeoutError(f"kube-apiserver not ready: {last}\n{apiserver.log_tail()}")

    def check_alive(self) -> None:
        for proc in self.procs:
            proc.check_alive()

    def stop(self) -> None:
        for proc in reversed(self.procs):
            proc.stop()
        if self.raftkv_storage is not None:
            self.raftkv_storage.stop()  # type: ignore[attr-defined]
