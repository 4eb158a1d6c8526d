"""What the e2e scenarios share: reaching members, waiting for pods, a continuous writer.

Members are reached by pod, not by Service: on the local tier a pod's IP (127.0.x.y) is directly
reachable; on kind (`E2E_ACCESS=port-forward`) each pod's client port is forwarded with
`kubectl port-forward`. Endpoints are looked up again after pods are recreated (new IPs).
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from raftkv.client import SyncClient

from e2e.kubeapi import Kube, Obj, ns_path, wait_for

CLIENT_PORT = 2379


def pod_ready(pod: Obj) -> bool:
    conditions = pod.get("status", {}).get("conditions", [])
    return pod["metadata"].get("deletionTimestamp") is None and any(
        c["type"] == "Ready" and c["status"] == "True" for c in conditions
    )


def pods(kube: Kube, namespace: str, selector: str) -> list[Obj]:
    """The pods matching `selector`, in ordinal order (numeric, not text)."""
    found = kube.list(ns_path(namespace, "pods"), labelSelector=selector)

    def ordinal(pod: Obj) -> tuple[int, str]:
        match = re.search(r"-(\d+)$", pod["metadata"]["name"])
        return (int(match.group(1)) if match else -1, pod["metadata"]["name"])

    return sorted(found, key=ordinal)


def wait_pods_ready(
    kube: Kube, namespace: str, selector: str, count: int, timeout: float = 300
) -> list[Obj]:
    def ready() -> list[Obj] | None:
        found = pods(kube, namespace, selector)
        ok = [p for p in found if pod_ready(p)]
        return found if len(ok) == count == len(found) else None

    return wait_for(f"{count} ready pods {selector!r} in {namespace}", ready, timeout=timeout)


class MemberAccess:
    """Client endpoints of member pods from the test process (see module docstring)."""

    def __init__(self, kube: Kube) -> None:
        self.kube = kube
        self.port_forward = os.environ.get("E2E_ACCESS", "direct") == "port-forward"
        self._forwards: dict[str, tuple[str, subprocess.Popen[str]]] = {}

    def endpoint(self, pod: Obj) -> str:
        if not self.port_forward:
            return f"{pod['status']['podIP']}:{CLIENT_PORT}"
        key = f"{pod['metadata']['namespace']}/{pod['metadata']['name']}/{pod['metadata']['uid']}"
        if key not in self._forwards:
            self._forwards[key] = self._forward(pod)
        return self._forwards[key][0]

    def _forward(self, pod: Obj) -> tuple[str, subprocess.Popen[str]]:
        meta = pod["metadata"]
        process = subprocess.Popen(
            [
                "kubectl",
                "port-forward",
                "-n",
                meta["namespace"],
                f"pod/{meta['name']}",
                f":{CLIENT_PORT}",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        assert process.stdout is not None
        line = process.stdout.readline()
        match = re.search(r"127\.0\.0\.1:(\d+)", line)
        if not match:
            process.kill()
            raise RuntimeError(f"kubectl port-forward said {line!r}")
        return f"127.0.0.1:{match.group(1)}", process

    def endpoints(self, namespace: str, selector: str) -> list[str]:
        return [
            self.endpoint(p)
            for p in pods(self.kube, namespace, selector)
            if p.get("status", {}).get("podIP") and pod_ready(p)
        ]

    def close(self) -> None:
        for _, process in self._forwards.values():
            process.kill()
            process.wait()
        self._forwards.clear()


@contextlib.contextmanager
def client_for(endpoints: list[str], timeout: float = 5.0) -> Iterator[SyncClient]:
    client = SyncClient(endpoints, timeout=timeout)
    try:
        yield client
    finally:
        client.close()


@dataclass
class WriteLog:
    """What a `ContinuousWriter` saw: acknowledged writes and the longest gap between them."""

    acknowledged: dict[str, str] = field(default_factory=dict)
    failures: int = 0
    longest_outage_s: float = 0.0
    last_error: str = ""
    errors: dict[str, int] = field(default_factory=dict)

    def summary(self) -> str:
        return (
            f"{len(self.acknowledged)} acknowledged writes, {self.failures} failed {self.errors}, "
            f"longest write outage {self.longest_outage_s:.2f} s"
        )


class ContinuousWriter:
    """Writes `prefix/<n>` keys in a loop from a thread until stopped, recording each write the
    cluster acknowledged. A write that failed or timed out is ambiguous and never counted as
    acknowledged. The client is rebuilt with fresh endpoints after a failure, because pods come
    back with new IPs."""

    def __init__(self, endpoints: Callable[[], list[str]], prefix: str) -> None:
        self.endpoints = endpoints
        self.prefix = prefix
        self.log = WriteLog()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="e2e-writer", daemon=True)

    def __enter__(self) -> ContinuousWriter:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> WriteLog:
        self._stop.set()
        self._thread.join(timeout=60)
        return self.log

    def wait_for_writes(self, count: int, timeout: float = 120) -> None:
        start = len(self.log.acknowledged)
        wait_for(
            f"{count} more acknowledged writes (last error: {self.log.last_error})",
            lambda: len(self.log.acknowledged) >= start + count,
            timeout=timeout,
        )

    def _run(self) -> None:
        n = 0
        last_ok = time.monotonic()
        client: SyncClient | None = None
        while not self._stop.is_set():
            if client is None:
                try:
                    endpoints = self.endpoints()
                except Exception as error:  # the API server may be busy; try again
                    self.log.last_error = f"endpoints: {error}"
                    endpoints = []
                if not endpoints:
                    self._stop.wait(0.5)
                    continue
                client = SyncClient(endpoints, timeout=2.0, dial_timeout=1.0)
            key, value = f"{self.prefix}/{n:08d}", f"v{n}"
            try:
                client.put(key, value)
            except Exception as error:  # any failure leaves the write ambiguous
                self.log.failures += 1
                self.log.last_error = repr(error)
                self.log.errors[type(error).__name__] = (
                    self.log.errors.get(type(error).__name__, 0) + 1
                )
                # Pods come back with new IPs: look the endpoints up again before retrying.
                client.close()
                client = None
                self._stop.wait(0.2)
            else:
                now = time.monotonic()
                self.log.longest_outage_s = max(self.log.longest_outage_s, now - last_ok)
                last_ok = now
                self.log.acknowledged[key] = value
            n += 1
            self._stop.wait(0.02)
        if client is not None:
            client.close()


def assert_no_acknowledged_write_lost(client: SyncClient, log: WriteLog, prefix: str) -> None:
    """Every acknowledged write is readable with its value (a linearizable read)."""
    stored = {
        kv.key.decode(): kv.value.decode()
        for kv in client.get(prefix + "/", prefix=True, timeout=30).kvs
    }
    lost = sorted(k for k, v in log.acknowledged.items() if stored.get(k) != v)
    assert not lost, f"{len(lost)} acknowledged writes lost, e.g. {lost[:5]}"
