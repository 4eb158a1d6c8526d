"""Start real raftkv member processes on 127.0.0.1 for integration tests.

The same promises as `tests.support.etcd`: fresh loopback ports, a cluster handed out only once
it has a leader and serves linearizable reads, and `stop()` (also on a failed start) that kills
every process and removes the data dirs. Members can be killed with SIGKILL and restarted with
their data dir, which is what the durability tests are about.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

import grpc
from raftkv.pb.etcdserverpb import rpc_pb2, rpc_pb2_grpc

from tests.support.etcd import free_port

_READY_TIMEOUT_S = 30.0


@dataclass
class RaftKVMember:
    name: str
    client_url: str
    peer_url: str
    data_dir: Path
    log_path: Path
    args: list[str]
    process: subprocess.Popen[bytes] | None = None
    # Where it listens for peers when that differs from `peer_url` (a proxy in front).
    listen_peer_url: str = ""
    # What the Python interpreter runs, before the flags (a wrapper may replace the server).
    launcher: tuple[str, ...] = ("-m", "raftkv.cli.server")

    @property
    def target(self) -> str:
        return self.client_url.removeprefix("http://")

    def start(self) -> None:
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, *self.launcher, *self.args],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)
            if sig in (signal.SIGKILL, signal.SIGTERM):
                self.process.wait(timeout=10)

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def status(self, timeout: float = 1.0) -> rpc_pb2.StatusResponse:
        with grpc.insecure_channel(self.target) as channel:
            stub = rpc_pb2_grpc.MaintenanceStub(channel)
            return stub.Status(rpc_pb2.StatusRequest(), timeout=timeout)


@dataclass
class RaftKVCluster:
    root: Path
    members: list[RaftKVMember] = field(default_factory=list)
    # The bootstrap flags the members were given (a snapshot restore needs the same ones).
    initial_cluster: str = ""
    initial_cluster_token: str = ""

    @property
    def endpoints(self) -> str:
        return ",".join(m.client_url for m in self.members)

    @property
    def grpc_targets(self) -> list[str]:
        return [m.target for m in self.members]

    def leader(self) -> RaftKVMember:
        """The member that currently leads, waiting for one to be elected."""
        deadline = time.monotonic() + _READY_TIMEOUT_S
        while time.monotonic() < deadline:
            for member in self.members:
                if not member.alive:
                    continue
                with contextlib.suppress(grpc.RpcError):
                    status = member.status()
                    if status.leader and status.leader == status.header.member_id:
                        return member
            time.sleep(0.1)
        raise TimeoutError("no leader elected")

    def restart(self, member: RaftKVMember) -> None:
        member.start()
        wait_serving(member)

    def start(self) -> None:
        """Start every member (new, or from data dirs prepared beforehand) and wait until all
        serve; on failure stop everything."""
        try:
            env_clean = {k for k in os.environ if k.startswith("ETCD_")}
            if env_clean:
                raise RuntimeError(
                    f"ETCD_* variables would change the members: {sorted(env_clean)}"
                )
            for member in self.members:
                member.start()
            for member in self.members:
                wait_serving(member)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        for member in self.members:
            member.kill(signal.SIGKILL)
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> RaftKVCluster:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def wait_serving(member: RaftKVMember, timeout: float = _READY_TIMEOUT_S) -> None:
    """Wait until `member` knows a leader and answers a linearizable read."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        if not member.alive:
            raise RuntimeError(f"{member.name} exited:\n{member.log_tail()}")
        try:
            with grpc.insecure_channel(member.target) as channel:
                kv = rpc_pb2_grpc.KVStub(channel)
                kv.Range(rpc_pb2.RangeRequest(key=b"health"), timeout=2)
                return
        except grpc.RpcError as error:
            last_error = error
            time.sleep(0.1)
    raise TimeoutError(f"{member.name} not serving: {last_error}\n{member.log_tail()}")


def start_raftkv_cluster(
    root: Path,
    size: int = 3,
    *,
    peer_proxy: PeerProxy | None = None,
    **extra_flags: str | int,
) -> RaftKVCluster:
    """Start `size` members of a new cluster under `root`; returns once all serve."""
    cluster = plan_raftkv_cluster(root, size, peer_proxy=peer_proxy, **extra_flags)
    cluster.start()
    return cluster


# Given a member's name and the peer port it listens on, returns the port it advertises
# (where a proxy in front of it listens).
PeerProxy = Callable[[str, int], int]


def plan_raftkv_cluster(
    root: Path,
    size: int = 3,
    *,
    peer_proxy: PeerProxy | None = None,
    **extra_flags: str | int,
) -> RaftKVCluster:
    """Ports, names, data dir paths and flags of a new cluster, started by `cluster.start()`.

    Between the two, a test may fill the data dirs (`member.data_dir`), e.g. by restoring a
    snapshot with `cluster.initial_cluster` and `cluster.initial_cluster_token`. With
    `peer_proxy`, members listen for peers on their own ports and advertise the proxy's
    (`member.peer_url` is then the advertised URL, `member.listen_peer_url` the real one).
    """
    root = root / f"raftkv-{uuid.uuid4().hex[:8]}"
    root.mkdir(parents=True)
    names = [f"m{i}" for i in range(size)]
    listen_peers = {name: free_port() for name in names}
    peers = {
        name: f"http://127.0.0.1:{peer_proxy(name, port) if peer_proxy else port}"
        for name, port in listen_peers.items()
    }
    initial_cluster = ",".join(f"{n}={u}" for n, u in peers.items())
    token = f"test-{root.name}"
    cluster = RaftKVCluster(root, initial_cluster=initial_cluster, initial_cluster_token=token)
    for name in names:
        client_url = f"http://127.0.0.1:{free_port()}"
        flags = {
            "name": name,
            "data-dir": str(root / f"{name}.raftkv"),
            "listen-client-urls": client_url,
            "advertise-client-urls": client_url,
            "listen-peer-urls": f"http://127.0.0.1:{listen_peers[name]}",
            "initial-advertise-peer-urls": peers[name],
            "initial-cluster": initial_cluster,
            "initial-cluster-token": token,
            "initial-cluster-state": "new",
            "heartbeat-interval": 50,
            "election-timeout": 500,
            **{k.replace("_", "-"): v for k, v in extra_flags.items()},
        }
        args = [f"--{k}={v}" for k, v in flags.items()]
        member = RaftKVMember(
            name,
            client_url,
            peers[name],
            root / f"{name}.raftkv",
            root / f"{name}.log",
            args,
            listen_peer_url=f"http://127.0.0.1:{listen_peers[name]}",
        )
        cluster.members.append(member)
    return cluster
