"""Start `raftkv grpc-proxy start` as a real process on 127.0.0.1 for the integration tests.

Like `tests.support.raftkv`: fresh loopback ports, handed out only once the proxy forwards a
linearizable read, killed (also on a failed start) by `stop()`. `metrics()` reads the proxy's
/metrics endpoint into a dict of series -> value.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from prometheus_client.parser import text_string_to_metric_families
from raftkv.pb.etcdserverpb import rpc_pb2, rpc_pb2_grpc

from tests.support.etcd import free_port

_READY_TIMEOUT_S = 30.0


@dataclass
class ProxyProcess:
    target: str
    metrics_url: str
    log_path: Path
    args: list[str]
    process: subprocess.Popen[bytes] | None = field(default=None)
    # TLS towards the proxy (it was started with --cert-file/--key-file); None: plain.
    credentials: grpc.ChannelCredentials | None = None

    def channel(self) -> grpc.Channel:
        if self.credentials is None:
            return grpc.insecure_channel(self.target)
        return grpc.secure_channel(self.target, self.credentials)

    @property
    def url(self) -> str:
        return f"http://{self.target}"

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "raftkv.cli.server", "grpc-proxy", "start", *self.args],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def wait_serving(self, timeout: float = _READY_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            if not self.alive:
                raise RuntimeError(f"proxy exited:\n{self.log_tail()}")
            try:
                with self.channel() as channel:
                    rpc_pb2_grpc.KVStub(channel).Range(rpc_pb2.RangeRequest(key=b"x"), timeout=5)
                return
            except grpc.RpcError as error:
                last = error
                time.sleep(0.1)
        raise TimeoutError(f"proxy not serving: {last}\n{self.log_tail()}")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.alive:
            assert self.process is not None
            self.process.send_signal(sig)
            self.process.wait(timeout=30)

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def metrics(self) -> dict[str, float]:
        """Every sample of /metrics by name, labels folded in: `name{a="b"}` -> value."""
        with urllib.request.urlopen(self.metrics_url, timeout=10) as response:
            text = response.read().decode()
        samples: dict[str, float] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
                samples[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
        return samples


def start_proxy(
    root: Path,
    endpoints: str,
    *extra: str,
    credentials: grpc.ChannelCredentials | None = None,
) -> ProxyProcess:
    """A proxy in front of `endpoints`, serving; extra flags as `--name=value` strings
    (`credentials` to reach one that serves TLS)."""
    port, metrics_port = free_port(), free_port()
    target = f"127.0.0.1:{port}"
    args = [
        f"--endpoints={endpoints}",
        f"--listen-addr={target}",
        f"--advertise-client-url={target}",
        f"--metrics-addr=127.0.0.1:{metrics_port}",
        *extra,
    ]
    proxy = ProxyProcess(
        target,
        f"http://127.0.0.1:{metrics_port}/metrics",
        root / f"proxy-{port}.log",
        args,
        credentials=credentials,
    )
    proxy.start()
    try:
        proxy.wait_serving()
    except BaseException:
        proxy.kill()
        raise
    return proxy
