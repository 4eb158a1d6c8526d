"""Start real etcd 3.4 clusters on 127.0.0.1 for tests that compare raftkv with the reference.

Comparison and wire-compatibility tests need the real thing, so this module runs the Debian
`etcd` binary as child processes and the real `etcdctl` as a client. It is shaped around a
few promises that keep such tests reliable:

- Ports come from below the kernel's ephemeral range, so an outgoing connection cannot grab
  one between choosing it and etcd binding it, and no port is handed out twice per process.
  If another process still wins the race, the whole cluster start is retried on new ports.
- `start_etcd_cluster` returns only once every member answers `/health` (a leader exists).
- `EtcdCluster.stop()` (also run by the context manager and on failed starts) kills every
  process it started, waits for it, and removes the data directories.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

ETCD_BIN = Path("/usr/bin/etcd")
ETCDCTL_BIN = Path("/usr/bin/etcdctl")

# Ports handed out by free_port() in this process; never reused, even after release.
_handed_out: set[int] = set()
_PORT_FLOOR = 20000
_START_ATTEMPTS = 3
_HEALTH_TIMEOUT_S = 30.0
_STOP_GRACE_S = 5.0


def etcd_installed() -> bool:
    """True when both the etcd server and etcdctl binaries are present and executable."""
    return all(os.access(b, os.X_OK) for b in (ETCD_BIN, ETCDCTL_BIN))


def _ephemeral_floor() -> int:
    try:
        low = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0]
        return int(low)
    except (OSError, ValueError, IndexError):
        return 32768


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now and was not returned before by this process."""
    ceiling = _ephemeral_floor()
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


def _ctl_env() -> dict[str, str]:
    # Drop any ETCDCTL_* settings of the caller so only the arguments given here count.
    env = {k: v for k, v in os.environ.items() if not k.startswith("ETCDCTL_")}
    env["ETCDCTL_API"] = "3"
    return env


def etcdctl(
    endpoints: str, *args: str, input: str | None = None, timeout: float = 30.0
) -> subprocess.CompletedProcess[str]:
    """Run `/usr/bin/etcdctl --endpoints=<endpoints> <args>` (API v3) and capture its output.

    The exit status is not checked: comparison tests assert on failures as well.
    """
    return subprocess.run(
        [str(ETCDCTL_BIN), f"--endpoints={endpoints}", *args],
        input=input,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=_ctl_env(),
        check=False,
    )


@dataclass
class EtcdMember:
    """One etcd process and the directory it owns."""

    name: str
    client_url: str
    peer_url: str
    data_dir: Path
    log_path: Path
    process: subprocess.Popen[bytes] | None = None

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "<no log>"


@dataclass
class EtcdCluster:
    """A running real-etcd cluster. Members are named m0, m1, ... in start order."""

    members: list[EtcdMember]
    root: Path
    _stopped: bool = field(default=False, repr=False)

    @property
    def client_urls(self) -> list[str]:
        return [m.client_url for m in self.members]

    @property
    def peer_urls(self) -> list[str]:
        return [m.peer_url for m in self.members]

    @property
    def endpoints(self) -> str:
        """Client URLs joined with commas, as etcdctl's --endpoints expects."""
        return ",".join(self.client_urls)

    @property
    def grpc_targets(self) -> list[str]:
        """`host:port` of each member, as grpc.insecure_channel expects."""
        return [url.removeprefix("http://") for url in self.client_urls]

    def etcdctl(
        self, *args: str, input: str | None = None, timeout: float = 30.0
    ) -> subprocess.CompletedProcess[str]:
        """Run etcdctl against every member of this cluster."""
        return etcdctl(self.endpoints, *args, input=input, timeout=timeout)

    def stop(self) -> None:
        """Kill every member process (SIGTERM, then SIGKILL) and delete the cluster's files."""
        if self._stopped:
            return
        self._stopped = True
        # One at a time: a stopping leader hands leadership to a live peer first, and would
        # hang until killed if every peer were stopping too.
        for member in self.members:
            if member.process is None:
                continue
            if member.process.poll() is None:
                member.process.send_signal(signal.SIGTERM)
            try:
                member.process.wait(timeout=_STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                member.process.kill()
                member.process.wait()
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> EtcdCluster:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _flag(name: str, value: str | int | bool) -> str:
    if isinstance(value, bool):
        value = "true" if value else "false"
    return f"--{name.replace('_', '-')}={value}"


def _healthy(client_url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{client_url}/health", timeout=1.0) as resp:
            return json.loads(resp.read()).get("health") == "true"
    except (OSError, urllib.error.URLError, ValueError):
        return False


class _PortLost(Exception):
    """A member could not bind its port: another process took it first."""


def _launch(root: Path, size: int, extra_flags: dict[str, str | int | bool]) -> EtcdCluster:
    members = [
        EtcdMember(
            name=f"m{i}",
            client_url=f"http://127.0.0.1:{free_port()}",
            peer_url=f"http://127.0.0.1:{free_port()}",
            data_dir=root / f"m{i}.etcd",
            log_path=root / f"m{i}.log",
        )
        for i in range(size)
    ]
    cluster = EtcdCluster(members=members, root=root)
    initial_cluster = ",".join(f"{m.name}={m.peer_url}" for m in members)
    token = f"etcd-test-{uuid.uuid4().hex[:12]}"
    try:
        for m in members:
            flags: dict[str, str | int | bool] = {
                "name": m.name,
                "data_dir": str(m.data_dir),
                "listen_client_urls": m.client_url,
                "advertise_client_urls": m.client_url,
                "listen_peer_urls": m.peer_url,
                "initial_advertise_peer_urls": m.peer_url,
                "initial_cluster": initial_cluster,
                "initial_cluster_state": "new",
                "initial_cluster_token": token,
                "logger": "zap",
                "log_outputs": "stderr",
            }
            flags.update(extra_flags)
            with m.log_path.open("wb") as log:
                m.process = subprocess.Popen(
                    [str(ETCD_BIN), *(_flag(k, v) for k, v in flags.items())],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                )
        _wait_healthy(cluster)
    except BaseException:
        cluster.stop()
        raise
    return cluster


def _wait_healthy(cluster: EtcdCluster) -> None:
    deadline = time.monotonic() + _HEALTH_TIMEOUT_S
    pending = list(cluster.members)
    while pending:
        for m in list(pending):
            assert m.process is not None
            if m.process.poll() is not None:
                tail = m.log_tail()
                if "address already in use" in tail:
                    raise _PortLost(m.name)
                raise RuntimeError(f"etcd {m.name} exited with {m.process.returncode}:\n{tail}")
            if _healthy(m.client_url):
                pending.remove(m)
        if not pending:
            return
        if time.monotonic() > deadline:
            tails = "\n".join(f"--- {m.name}\n{m.log_tail()}" for m in pending)
            raise TimeoutError(f"etcd members not healthy after {_HEALTH_TIMEOUT_S}s:\n{tails}")
        time.sleep(0.1)


def start_etcd_cluster(
    tmp_path: Path, size: int = 1, **extra_flags: str | int | bool
) -> EtcdCluster:
    """Start a fresh `size`-member etcd cluster under `tmp_path` and wait until it is healthy.

    `extra_flags` become etcd flags (`max_request_bytes=65536` -> `--max-request-bytes=65536`)
    and override this module's defaults. Use the result as a context manager or call `stop()`.
    """
    if size < 1:
        raise ValueError("a cluster needs at least one member")
    if not etcd_installed():
        raise FileNotFoundError(f"{ETCD_BIN} / {ETCDCTL_BIN} not installed")
    attempts = 0
    while True:
        root = Path(tmp_path) / f"etcd-{uuid.uuid4().hex[:8]}"
        root.mkdir(parents=True)
        try:
            return _launch(root, size, extra_flags)
        except _PortLost:
            attempts += 1
            if attempts == _START_ATTEMPTS:
                raise
