"""Start 3-member etcd and raftkv clusters on 127.0.0.1 for side-by-side benchmarks.

Both systems are launched the same way — the same etcd flags, the same Raft timing, data dirs
under one root on one disk — so that the only difference a benchmark sees is the server. A
cluster is handed out once every member answers a linearizable Range over gRPC (not etcd's
`/health`, which raftkv need not have), and `stop()` kills every process it started.

Members keep their command line, so a benchmark can kill one and start it again on the same data
dir (recovery time), and expose their pid for RSS and CPU readings from /proc.

Ports come from below the kernel's ephemeral range and are never handed out twice per process,
so an outgoing connection cannot take one between choosing it and the member binding it.
"""

from __future__ import annotations

import enum
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

import grpc
from raftkv.pb.etcdserverpb import rpc_pb2, rpc_pb2_grpc

ETCD_BIN = Path("/usr/bin/etcd")
ETCDCTL_BIN = Path("/usr/bin/etcdctl")

# The same Raft timing for both systems (etcd's defaults).
HEARTBEAT_MS = 100
ELECTION_MS = 1000

_PORT_FLOOR = 20000
_handed_out: set[int] = set()
_STOP_GRACE_S = 10.0
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


class Kind(enum.StrEnum):
    ETCD = "etcd"
    RAFTKV = "raftkv"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now and was not returned before by this process."""
    try:
        ceiling = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        ceiling = 32768
    rng = random.Random()
    for _ in range(1000):
        port = rng.randrange(_PORT_FLOOR, ceiling)
        if port in _handed_out:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise RuntimeError(f"no free port found in [{_PORT_FLOOR}, {ceiling})")


@dataclass
class Member:
    """One server process, its data dir and how to start it again."""

    name: str
    client_url: str
    peer_url: str
    data_dir: Path
    log_path: Path
    argv: list[str]
    process: subprocess.Popen[bytes] | None = None

    @property
    def target(self) -> str:
        """`host:port` for gRPC."""
        return self.client_url.removeprefix("http://")

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def pid(self) -> int:
        if self.process is None:
            raise RuntimeError(f"{self.name} was never started")
        return self.process.pid

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                self.argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Send `sig` and wait for the process to exit (SIGKILL after a grace period)."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(sig)
        try:
            self.process.wait(timeout=_STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def rss_bytes(self) -> int:
        """Resident set size of the member process, from /proc/<pid>/status."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError(f"no VmRSS for pid {self.pid}")

    def cpu_seconds(self) -> float:
        """User + system CPU time the member process has used so far."""
        stat = Path(f"/proc/{self.pid}/stat").read_text()
        # Fields after the parenthesised command name; utime and stime are fields 14 and 15.
        fields = stat[stat.rindex(")") + 2 :].split()
        return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "<no log>"


@dataclass
class Cluster:
    """A running cluster of one kind. Members are named m0, m1, ... in start order."""

    kind: Kind
    root: Path
    members: list[Member]
    _stopped: bool = field(default=False, repr=False)

    @property
    def targets(self) -> list[str]:
        """`host:port` of every member, for gRPC channels."""
        return [m.target for m in self.members]

    @property
    def endpoints(self) -> str:
        """Client URLs joined with commas, as etcdctl's --endpoints expects."""
        return ",".join(m.client_url for m in self.members)

    def cpu_seconds(self) -> float:
        """CPU time used by all members so far."""
        return sum(m.cpu_seconds() for m in self.members if m.alive)

    def stop(self) -> None:
        """Kill every member and delete the cluster's files.

        SIGKILL, not a graceful stop: the cluster is thrown away, and a graceful raftkv stop
        takes seconds that would only lengthen the run.
        """
        if self._stopped:
            return
        self._stopped = True
        for member in self.members:
            member.kill(signal.SIGKILL)
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> Cluster:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def serves_linearizable_read(target: str, timeout: float = 2.0) -> bool:
    """True when the member at `target` answers a linearizable Range."""
    try:
        with grpc.insecure_channel(target) as channel:
            rpc_pb2_grpc.KVStub(channel).Range(
                rpc_pb2.RangeRequest(key=b"bench-ready"), timeout=timeout
            )
        return True
    except grpc.RpcError:
        return False


def wait_serving(member: Member, timeout: float) -> float:
    """Wait until `member` answers a linearizable read; returns the seconds waited."""
    start = time.monotonic()
    deadline = start + timeout
    while time.monotonic() < deadline:
        if not member.alive:
            raise RuntimeError(f"{member.name} exited:\n{member.log_tail()}")
        if serves_linearizable_read(member.target, timeout=min(2.0, deadline - time.monotonic())):
            return time.monotonic() - start
        time.sleep(0.02)
    raise TimeoutError(f"{member.name} not serving after {timeout:.0f}s:\n{member.log_tail()}")


def _argv(kind: Kind, flags: dict[str, str | int]) -> list[str]:
    args = [f"--{name}={value}" for name, value in flags.items()]
    if kind is Kind.ETCD:
        return [str(ETCD_BIN), *args]
    return [sys.executable, "-m", "raftkv.cli.server", *args]


def start_cluster(kind: Kind, root: Path, size: int = 3, timeout: float = 60.0) -> Cluster:
    """Start a fresh `size`-member cluster of `kind` under `root`; returns once all serve."""
    root = Path(root) / f"{kind}-{uuid.uuid4().hex[:8]}"
    root.mkdir(parents=True)
    names = [f"m{i}" for i in range(size)]
    peer_urls = {name: f"http://127.0.0.1:{free_port()}" for name in names}
    initial_cluster = ",".join(f"{name}={url}" for name, url in peer_urls.items())
    members = []
    for name in names:
        client_url = f"http://127.0.0.1:{free_port()}"
        data_dir = root / f"{name}.data"
        flags: dict[str, str | int] = {
            "name": name,
            "data-dir": str(data_dir),
            "listen-client-urls": client_url,
            "advertise-client-urls": client_url,
            "listen-peer-urls": peer_urls[name],
            "initial-advertise-peer-urls": peer_urls[name],
            "initial-cluster": initial_cluster,
            "initial-cluster-token": f"bench-{root.name}",
            "initial-cluster-state": "new",
            "heartbeat-interval": HEARTBEAT_MS,
            "election-timeout": ELECTION_MS,
        }
        if kind is Kind.ETCD:
            flags |= {"logger": "zap", "log-outputs": "stderr", "log-level": "warn"}
        members.append(
            Member(
                name=name,
                client_url=client_url,
                peer_url=peer_urls[name],
                data_dir=data_dir,
                log_path=root / f"{name}.log",
                argv=_argv(kind, flags),
            )
        )
    cluster = Cluster(kind=kind, root=root, members=members)
    # ETCD_* variables are read as flags by both systems; only the flags above may count.
    env_flags = sorted(k for k in os.environ if k.startswith("ETCD_"))
    if env_flags:
        raise RuntimeError(f"ETCD_* variables would change the members: {env_flags}")
    try:
        for member in members:
            member.start()
        deadline = time.monotonic() + timeout
        for member in members:
            wait_serving(member, max(1.0, deadline - time.monotonic()))
    except BaseException:
        cluster.stop()
        raise
    return cluster
