"""A test node agent: the scheduler and the kubelet of the local tier, running pods as processes.

It registers one Ready Node, binds every unscheduled pod to it, and runs each bound pod's
containers' `command` + `args` as local processes (images cannot run here; the virtualenv's
entry points stand in for the image's, so the pod spec must carry the full command). Per pod:

- a distinct loopback address 127.0.x.y as `status.podIP`; the pod's processes bind to it;
- a private mount namespace (`unshare --mount`, we run as root) in which every volume is
  bind-mounted at its `mountPath`, so the chart's paths (data dir, service-account token at
  /var/run/secrets/kubernetes.io/serviceaccount, TLS files) work unchanged and two pods never
  share a directory. Empty mount points are created on the host file system;
- DNS: there is no DNS server, so the agent keeps a hosts file and bind-mounts it over
  /etc/hosts in every pod. It maps `<hostname>.<subdomain>.<ns>.svc[.cluster.local]` (the
  StatefulSet's stable names) and `<service>.<ns>.svc[.cluster.local]` (to the ready endpoints)
  to pod IPs. libc and gRPC's resolvers read /etc/hosts on each lookup, so updates are seen;
- PVCs become directories keyed by the claim's UID (a recreated pod with the same claim gets the
  same data; a deleted claim's directory is deleted), bound through a PV the agent creates;
- env, `fieldRef` (downward API), configMap/secret refs, `$(VAR)` expansion; emptyDir, secret,
  configMap, downwardAPI and projected (service-account token via TokenRequest) volumes;
- startup/readiness/liveness probes (httpGet, tcpSocket, exec, grpc), restarts per
  restartPolicy with a short back-off, status (phase, conditions, containerStatuses) patched
  through the API, SIGTERM then SIGKILL after the grace period on deletion.

Not modelled: resource limits, affinity and taints (one node takes every pod), image pulls,
ClusterIP routing (clients use pod IPs or the hosts names), preStop hooks, token refresh.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import datetime
import http.client
import ipaddress
import json
import logging
import os
import re
import shlex
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from kubernetes.client.exceptions import ApiException

from e2e.kubeapi import Kube, Obj, ns_path

log = logging.getLogger("nodeagent")

NODE_NAME = "e2e-local-node"
AGENT_LABEL = "e2e.raftkv.io/local-volume"
_LOOP_INTERVAL_S = 0.5
_HEARTBEAT_S = 20.0
_MAX_BACKOFF_S = 10.0
_VAR_REF = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)|\$\$")


def now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes' `$(VAR)` expansion: known names are replaced, `$$` escapes, the rest stays."""

    def repl(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        return env.get(match.group(1), match.group(0))

    return _VAR_REF.sub(repl, text)


def field_value(pod: Obj, path: str, pod_ip: str) -> str:
    """The downward API's `fieldRef.fieldPath` values."""
    meta = pod["metadata"]
    simple = {
        "metadata.name": meta["name"],
        "metadata.namespace": meta["namespace"],
        "metadata.uid": meta["uid"],
        "spec.nodeName": NODE_NAME,
        "spec.serviceAccountName": pod["spec"].get("serviceAccountName", "default"),
        "status.podIP": pod_ip,
        "status.podIPs": pod_ip,
        "status.hostIP": "127.0.0.1",
        "status.hostIPs": "127.0.0.1",
    }
    if path in simple:
        return simple[path]
    match = re.fullmatch(r"metadata\.(labels|annotations)\['(.+)'\]", path)
    if match:
        return str(meta.get(match.group(1), {}).get(match.group(2), ""))
    if path in ("metadata.labels", "metadata.annotations"):
        items = sorted(meta.get(path.split(".")[1], {}).items())
        return "\n".join(f'{k}="{v}"' for k, v in items)
    raise ValueError(f"unsupported fieldRef {path!r}")


@dataclass
class ContainerRun:
    """One container's process and the state its status is computed from."""

    spec: Obj
    process: subprocess.Popen[bytes] | None = None
    restart_count: int = 0
    started_at: str = ""
    last_terminated: Obj | None = None
    terminated: Obj | None = None
    waiting_reason: str = "ContainerCreating"
    waiting_message: str = ""
    ready: bool = False
    started: bool = False  # the startup probe passed (or there is none)
    next_start: float = 0.0
    probe_due: dict[str, float] = field(default_factory=dict)
    probe_runs: dict[str, list[bool]] = field(default_factory=dict)
    start_mono: float = 0.0

    @property
    def name(self) -> str:
        return str(self.spec["name"])

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None


class PodRuntime(threading.Thread):
    """Runs one pod until it is told to stop (deletion) or, without restarts, until it ends."""

    def __init__(self, agent: NodeAgent, pod: Obj, ip: str) -> None:
        super().__init__(name=f"pod-{pod['metadata']['name']}", daemon=True)
        self.agent = agent
        self.kube = agent.kube
        self.pod = pod
        self.ip = ip
        meta = pod["metadata"]
        self.ns, self.pod_name, self.uid = meta["namespace"], meta["name"], meta["uid"]
        self.dir = agent.root / "pods" / f"{self.ns}_{self.pod_name}_{self.uid[:8]}"
        self.containers = [ContainerRun(c) for c in pod["spec"]["containers"]]
        self.init_done = not pod["spec"].get("initContainers")
        self.stop_grace: float | None = None
        self.stop_event = threading.Event()
        self.mounts: dict[str, list[tuple[str, str, bool]]] = {}
        self.env: dict[str, dict[str, str]] = {}
        self.last_status: Obj | None = None
        self.conditions: dict[str, tuple[str, str]] = {}
        self.start_time = now()
        self.finished = False

    # ---------------------------------------------------------------- lifecycle

    def request_stop(self, grace: float) -> None:
        if self.stop_grace is None:
            self.stop_grace = grace
            self.stop_event.set()

    def run(self) -> None:
        try:
            self._run()
        except Exception:
            log.exception("pod %s/%s: runtime failed", self.ns, self.pod_name)
        finally:
            self.finished = True

    def _run(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self._push_status()
        while not self.stop_event.is_set():
            try:
                self._prepare()
                break
            except _NotYet as reason:
                for run in self.containers:
                    run.waiting_reason, run.waiting_message = "ContainerCreating", str(reason)
                self._push_status()
                self.stop_event.wait(1.0)
        if not self.stop_event.is_set() and not self.init_done:
            self._run_init_containers()
        while not self.stop_event.is_set():
            if self.init_done:
                self._supervise()
            self._push_status()
            if self._all_done():
                return
            self.stop_event.wait(0.25)
        self._terminate(self.stop_grace or 0.0)
        self._push_status(best_effort=True)

    def _all_done(self) -> bool:
        policy = self.pod["spec"].get("restartPolicy", "Always")
        if policy == "Always":
            return False
        return all(
            c.terminated is not None
            and (policy == "Never" or c.terminated.get("exitCode") == 0)
            and not c.running
            for c in self.containers
        )

    # ---------------------------------------------------------------- preparation

    def _prepare(self) -> None:
        """Volumes materialised as directories and env resolved; `_NotYet` while a referenced
        claim, Secret or ConfigMap is missing."""
        volumes: dict[str, Path] = {}
        for volume in self.pod["spec"].get("volumes", []):
            volumes[volume["name"]] = self._volume(volume)
        all_containers = self.pod["spec"].get("initContainers", []) + self.pod["spec"]["containers"]
        for spec in all_containers:
            mounts = [("/etc/hosts", str(self.agent.hosts_file), True)]
            for mount in spec.get("volumeMounts", []):
                source = volumes[mount["name"]]
                if mount.get("subPath"):
                    source = source / mount["subPath"]
                    if not source.exists():
                        source.mkdir(parents=True)
                mounts.append((mount["mountPath"], str(source), bool(mount.get("readOnly"))))
            self.mounts[spec["name"]] = mounts
            self.env[spec["name"]] = self._container_env(spec)

    def _volume(self, volume: Obj) -> Path:
        path = self.dir / "volumes" / volume["name"]
        if "persistentVolumeClaim" in volume:
            claim = volume["persistentVolumeClaim"]["claimName"]
            pvc = self.kube.find(ns_path(self.ns, "persistentvolumeclaims", claim))
            if pvc is None or pvc.get("status", {}).get("phase") != "Bound":
                raise _NotYet(f"persistentvolumeclaim {claim!r} not bound")
            target = self.agent.volume_dir(pvc)
            target.mkdir(parents=True, exist_ok=True)
            return target
        path.mkdir(parents=True, exist_ok=True)
        if "emptyDir" in volume or "hostPath" in volume:
            if "hostPath" in volume:
                return Path(volume["hostPath"]["path"])
            return path
        if "secret" in volume:
            self._write_keys(
                path,
                self._keys("secrets", volume["secret"], "secretName"),
                volume["secret"].get("items"),
            )
        elif "configMap" in volume:
            self._write_keys(
                path,
                self._keys("configmaps", volume["configMap"], "name"),
                volume["configMap"].get("items"),
            )
        elif "downwardAPI" in volume:
            self._write_downward(path, volume["downwardAPI"].get("items", []))
        elif "projected" in volume:
            for source in volume["projected"].get("sources", []):
                self._projected(path, source)
        else:
            raise _NotYet(f"unsupported volume type in {volume['name']!r}")
        return path

    def _keys(self, plural: str, ref: Obj, name_key: str) -> dict[str, bytes]:
        obj = self.kube.find(ns_path(self.ns, plural, ref[name_key]))
        if obj is None:
            if ref.get("optional"):
                return {}
            raise _NotYet(f"{plural[:-1]} {ref[name_key]!r} not found")
        if plural == "secrets":
            return {k: base64.b64decode(v) for k, v in obj.get("data", {}).items()}
        data = {k: v.encode() for k, v in obj.get("data", {}).items()}
        data.update({k: base64.b64decode(v) for k, v in obj.get("binaryData", {}).items()})
        return data

    @staticmethod
    def _write_keys(path: Path, data: dict[str, bytes], items: list[Obj] | None) -> None:
        chosen = [(i["key"], i["path"]) for i in items] if items else [(k, k) for k in data]
        for key, rel in chosen:
            if key not in data:
                raise _NotYet(f"key {key!r} missing")
            target = path / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data[key])

    def _write_downward(self, path: Path, items: list[Obj]) -> None:
        for item in items:
            if "fieldRef" not in item:
                raise _NotYet("only fieldRef downwardAPI items are supported")
            target = path / item["path"]
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(field_value(self.pod, item["fieldRef"]["fieldPath"], self.ip))

    def _projected(self, path: Path, source: Obj) -> None:
        if "serviceAccountToken" in source:
            sat = source["serviceAccountToken"]
            account = self.pod["spec"].get("serviceAccountName", "default")
            request = {
                "apiVersion": "authentication.k8s.io/v1",
                "kind": "TokenRequest",
                "spec": {
                    "audiences": [sat["audience"]] if sat.get("audience") else [],
                    "expirationSeconds": max(int(sat.get("expirationSeconds", 3600)), 7200),
                    "boundObjectRef": {
                        "apiVersion": "v1",
                        "kind": "Pod",
                        "name": self.pod_name,
                        "uid": self.uid,
                    },
                },
            }
            answer = self.kube.create(
                ns_path(self.ns, "serviceaccounts", f"{account}/token"), request
            )
            (path / sat["path"]).write_text(answer["status"]["token"])
        elif "configMap" in source:
            ref = source["configMap"]
            self._write_keys(path, self._keys("configmaps", ref, "name"), ref.get("items"))
        elif "secret" in source:
            ref = source["secret"]
            self._write_keys(path, self._keys("secrets", ref, "name"), ref.get("items"))
        elif "downwardAPI" in source:
            self._write_downward(path, source["downwardAPI"].get("items", []))
        else:
            raise _NotYet(f"unsupported projected source {sorted(source)}")

    def _container_env(self, spec: Obj) -> dict[str, str]:
        env: dict[str, str] = {
            "PATH": f"{self.agent.bin_dir}:/usr/local/bin:/usr/bin:/bin",
            "HOME": str(self.dir),
            "HOSTNAME": self.pod["spec"].get("hostname", self.pod_name),
            "LANG": "C.UTF-8",
            # In-cluster clients find the API server here (there is no ClusterIP routing).
            "KUBERNETES_SERVICE_HOST": "127.0.0.1",
            "KUBERNETES_SERVICE_PORT": str(self.agent.apiserver_port),
            "KUBERNETES_SERVICE_PORT_HTTPS": str(self.agent.apiserver_port),
        }
        for source in spec.get("envFrom", []):
            prefix = source.get("prefix", "")
            if "configMapRef" in source:
                data = self._keys("configmaps", source["configMapRef"], "name")
            else:
                data = self._keys("secrets", source["secretRef"], "name")
            env.update({prefix + k: v.decode() for k, v in data.items()})
        for var in spec.get("env", []):
            if "valueFrom" not in var:
                env[var["name"]] = expand(var.get("value", ""), env)
                continue
            source = var["valueFrom"]
            if "fieldRef" in source:
                env[var["name"]] = field_value(self.pod, source["fieldRef"]["fieldPath"], self.ip)
            elif "configMapKeyRef" in source or "secretKeyRef" in source:
                kind = "configMapKeyRef" if "configMapKeyRef" in source else "secretKeyRef"
                ref = source[kind]
                plural = "configmaps" if kind == "configMapKeyRef" else "secrets"
                data = self._keys(plural, ref, "name")
                if ref["key"] in data:
                    env[var["name"]] = data[ref["key"]].decode()
                elif not ref.get("optional"):
                    raise _NotYet(f"key {ref['key']!r} missing in {plural[:-1]} {ref['name']!r}")
            elif "resourceFieldRef" in source:
                resource = source["resourceFieldRef"]["resource"]
                limits = spec.get("resources", {}).get(resource.split(".")[0], {})
                env[var["name"]] = str(limits.get(resource.split(".", 1)[1], "0"))
        return env

    def _argv(self, spec: Obj, command: list[str]) -> list[str]:
        """`command` run in a private mount namespace with the pod's volumes bind-mounted."""
        lines = []
        # Parents before children, as the kubelet mounts them.
        mounts = sorted(self.mounts[spec["name"]], key=lambda m: Path(m[0]).parts)
        for target, source, read_only in mounts:
            quoted_t, quoted_s = shlex.quote(target), shlex.quote(source)
            if Path(source).is_dir():
                lines.append(f"mkdir -p {quoted_t}")
            else:
                lines.append(f"mkdir -p $(dirname {quoted_t}); [ -e {quoted_t} ] || : > {quoted_t}")
            lines.append(f"mount --bind {quoted_s} {quoted_t}")
            if read_only and target != "/etc/hosts":
                lines.append(f"mount -o remount,bind,ro {quoted_t}")
        workdir = spec.get("workingDir") or str(self.dir)
        lines.append(f"mkdir -p {shlex.quote(workdir)} && cd {shlex.quote(workdir)}")
        lines.append('exec "$@"')
        script = "\n".join(lines)
        return [
            "/usr/bin/unshare",
            "--mount",
            "--propagation",
            "private",
            "--",
            "/bin/sh",
            "-ec",
            script,
            "sh",
            *command,
        ]

    def _command(self, spec: Obj) -> list[str]:
        env = self.env[spec["name"]]
        command = [expand(a, env) for a in spec.get("command", [])]
        args = [expand(a, env) for a in spec.get("args", [])]
        if not command:
            raise ValueError(
                f"container {spec['name']!r} has no command: images cannot run on the local "
                "tier, the pod spec must name the entry point"
            )
        return command + args

    # ---------------------------------------------------------------- containers

    def _spawn(self, run: ContainerRun) -> None:
        log_path = self.dir / f"{run.name}.log"
        try:
            argv = self._argv(run.spec, self._command(run.spec))
        except ValueError as error:
            run.waiting_reason, run.waiting_message = "CreateContainerError", str(error)
            run.next_start = time.monotonic() + _MAX_BACKOFF_S
            return
        with log_path.open("ab") as out:
            out.write(f"--- start {now()} {argv[-len(self._command(run.spec)) :]}\n".encode())
            out.flush()
            run.process = subprocess.Popen(
                argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self.env[run.name],
                start_new_session=True,
            )
        with (self.agent.root / "pids").open("a") as pids:
            pids.write(f"{run.process.pid}\n")
        run.started_at, run.start_mono = now(), time.monotonic()
        run.terminated, run.waiting_reason, run.ready = None, "", False
        run.started = "startupProbe" not in run.spec
        run.probe_runs.clear()
        run.probe_due = {
            kind: time.monotonic() + float(run.spec[kind].get("initialDelaySeconds", 0))
            for kind in ("startupProbe", "readinessProbe", "livenessProbe")
            if kind in run.spec
        }

    def _run_init_containers(self) -> None:
        for spec in self.pod["spec"].get("initContainers", []):
            run = ContainerRun(spec)
            attempts = 0
            while not self.stop_event.is_set():
                self._spawn(run)
                if run.process is None:
                    self.stop_event.wait(_MAX_BACKOFF_S)
                    continue
                while run.process.poll() is None and not self.stop_event.is_set():
                    self.stop_event.wait(0.25)
                if self.stop_event.is_set():
                    self._kill(run, 0.0)
                    return
                if run.process.returncode == 0:
                    break
                attempts += 1
                self.stop_event.wait(min(2.0**attempts, _MAX_BACKOFF_S))
        self.init_done = True

    def _supervise(self) -> None:
        policy = self.pod["spec"].get("restartPolicy", "Always")
        for run in self.containers:
            if run.process is None:
                if time.monotonic() >= run.next_start:
                    self._spawn(run)
                continue
            code = run.process.poll()
            if code is None:
                self._probe(run)
                continue
            if run.terminated is None:
                run.terminated = {
                    "exitCode": code,
                    "reason": "Completed" if code == 0 else "Error",
                    "startedAt": run.started_at,
                    "finishedAt": now(),
                }
                run.ready = False
            restart = policy == "Always" or (policy == "OnFailure" and code != 0)
            if restart and run.next_start <= run.start_mono:
                # Back-off doubles per restart up to a few seconds (the kubelet's goes to 5 min).
                delay = min(2.0**run.restart_count, _MAX_BACKOFF_S)
                run.next_start = time.monotonic() + delay
                run.waiting_reason = "CrashLoopBackOff" if code != 0 else ""
            elif restart and time.monotonic() >= run.next_start:
                run.last_terminated = run.terminated
                run.restart_count += 1
                run.process = None
                self._spawn(run)

    def _probe(self, run: ContainerRun) -> None:
        clock = time.monotonic()
        for kind, due in list(run.probe_due.items()):
            if clock < due or (kind != "startupProbe" and not run.started):
                continue
            if kind == "startupProbe" and run.started:
                continue
            probe = run.spec[kind]
            run.probe_due[kind] = clock + float(probe.get("periodSeconds", 10))
            ok = self._check(run, probe)
            history = run.probe_runs.setdefault(kind, [])
            history.append(ok)
            del history[:-10]
            failures = int(probe.get("failureThreshold", 3))
            successes = int(probe.get("successThreshold", 1))
            failed = len(history) >= failures and not any(history[-failures:])
            passed = len(history) >= successes and all(history[-successes:])
            if kind == "readinessProbe":
                if passed:
                    run.ready = True
                elif failed or not ok:
                    run.ready = run.ready and not failed
            elif kind == "startupProbe" and passed:
                run.started = True
            elif failed:
                log.info(
                    "pod %s/%s: %s of %s failed; restarting", self.ns, self.pod_name, kind, run.name
                )
                self._kill(run, float(self.pod["spec"].get("terminationGracePeriodSeconds", 30)))
        if "readinessProbe" not in run.spec and run.started:
            run.ready = True

    def _check(self, run: ContainerRun, probe: Obj) -> bool:
        timeout = float(probe.get("timeoutSeconds", 1))
        try:
            if "httpGet" in probe:
                get = probe["httpGet"]
                port = self._port(run, get["port"])
                host = get.get("host") or self.ip
                if get.get("scheme", "HTTP").upper() == "HTTPS":
                    context = ssl.create_default_context()
                    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
                    conn: http.client.HTTPConnection = http.client.HTTPSConnection(
                        host, port, timeout=timeout, context=context
                    )
                else:
                    conn = http.client.HTTPConnection(host, port, timeout=timeout)
                headers = {h["name"]: h["value"] for h in get.get("httpHeaders", [])}
                try:
                    conn.request("GET", get.get("path", "/"), headers=headers)
                    return 200 <= conn.getresponse().status < 400
                finally:
                    conn.close()
            if "tcpSocket" in probe:
                port = self._port(run, probe["tcpSocket"]["port"])
                with socket.create_connection((self.ip, port), timeout=timeout):
                    return True
            if "grpc" in probe:
                return self._grpc_health(probe["grpc"], timeout)
            if "exec" in probe:
                argv = self._argv(run.spec, list(probe["exec"]["command"]))
                done = subprocess.run(
                    argv,
                    env=self.env[run.name],
                    capture_output=True,
                    timeout=timeout,
                    check=False,
                )
                return done.returncode == 0
        except (OSError, subprocess.TimeoutExpired, http.client.HTTPException, grpc.RpcError):
            return False
        return False

    def _grpc_health(self, spec: Obj, timeout: float) -> bool:
        service = spec.get("service", "")
        encoded = service.encode()
        request = (b"\x0a" + bytes([len(encoded)]) + encoded) if encoded else b""
        with grpc.insecure_channel(f"{self.ip}:{spec['port']}") as channel:
            check = channel.unary_unary("/grpc.health.v1.Health/Check")
            answer = check(request, timeout=timeout)
        return bytes(answer) == b"\x08\x01"  # status: SERVING

    @staticmethod
    def _port(run: ContainerRun, port: int | str) -> int:
        if isinstance(port, int) or str(port).isdigit():
            return int(port)
        for declared in run.spec.get("ports", []):
            if declared.get("name") == port:
                return int(declared["containerPort"])
        raise OSError(f"no container port named {port!r}")

    def _kill(self, run: ContainerRun, grace: float) -> None:
        process = run.process
        if process is None or process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        # Children that left the group's leader behind go too.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)

    def _terminate(self, grace: float) -> None:
        threads = [
            threading.Thread(target=self._kill, args=(run, grace), daemon=True)
            for run in self.containers
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        for run in self.containers:
            if run.process is not None and run.terminated is None:
                code = run.process.returncode
                run.terminated = {
                    "exitCode": code if code is not None and code >= 0 else 128 - (code or 0),
                    "reason": "Completed" if code == 0 else "Error",
                    "startedAt": run.started_at,
                    "finishedAt": now(),
                }
            run.ready = False

    # ---------------------------------------------------------------- status

    def _condition(self, kind: str, value: bool) -> Obj:
        text = "True" if value else "False"
        previous = self.conditions.get(kind)
        if previous is None or previous[0] != text:
            self.conditions[kind] = (text, now())
        return {"type": kind, "status": text, "lastTransitionTime": self.conditions[kind][1]}

    def _container_status(self, run: ContainerRun) -> Obj:
        image = run.spec.get("image", "")
        status: Obj = {
            "name": run.name,
            "image": image,
            "imageID": f"local://{image}",
            "ready": run.ready,
            "restartCount": run.restart_count,
            "started": run.running and run.started,
        }
        if run.running:
            status["state"] = {"running": {"startedAt": run.started_at}}
            status["containerID"] = f"local://{run.process.pid if run.process else 0}"
        elif run.terminated is not None and not run.waiting_reason:
            status["state"] = {"terminated": run.terminated}
        else:
            waiting: Obj = {"reason": run.waiting_reason or "ContainerCreating"}
            if run.waiting_message:
                waiting["message"] = run.waiting_message
            status["state"] = {"waiting": waiting}
        if run.last_terminated is not None:
            status["lastState"] = {"terminated": run.last_terminated}
        return status

    def _phase(self) -> str:
        if all(c.terminated is not None and not c.running for c in self.containers) and (
            self._all_done() or self.stop_event.is_set()
        ):
            ok = all(c.terminated and c.terminated.get("exitCode") == 0 for c in self.containers)
            return "Succeeded" if ok else "Failed"
        if self.init_done and all(c.running or c.restart_count for c in self.containers):
            return "Running"
        return "Pending"

    def _push_status(self, best_effort: bool = False) -> None:
        ready = self.init_done and all(c.ready for c in self.containers)
        status = {
            "phase": self._phase(),
            "hostIP": "127.0.0.1",
            "hostIPs": [{"ip": "127.0.0.1"}],
            "podIP": self.ip,
            "podIPs": [{"ip": self.ip}],
            "startTime": self.start_time,
            "conditions": [
                self._condition("PodScheduled", True),
                self._condition("Initialized", self.init_done),
                self._condition("ContainersReady", ready),
                self._condition("Ready", ready),
            ],
            "containerStatuses": [self._container_status(c) for c in self.containers],
        }
        comparable = json.dumps(status, sort_keys=True)
        if comparable == self.last_status:
            return
        try:
            self.kube.patch(
                ns_path(self.ns, "pods", f"{self.pod_name}/status"),
                {"metadata": {"uid": self.uid}, "status": status},
            )
            self.last_status = comparable  # type: ignore[assignment]
        except ApiException as error:
            if not best_effort and error.status not in (404, 409):
                log.warning(
                    "pod %s/%s: status update failed: %s %s",
                    self.ns,
                    self.pod_name,
                    error.reason,
                    error.body,
                )


class _NotYet(Exception):
    """A pod cannot start yet (a claim not bound, a Secret missing); retried."""


class NodeAgent:
    """Scheduler, kubelet and local-volume provisioner of the local tier (see module docstring)."""

    def __init__(self, kube: Kube, root: Path, apiserver_port: int, bin_dir: Path) -> None:
        self.kube = kube
        self.root = root
        self.apiserver_port = apiserver_port
        self.bin_dir = bin_dir
        self.hosts_file = root / "hosts"
        self.runtimes: dict[str, PodRuntime] = {}
        self.done: set[str] = set()
        self.ips = self._ip_pool()
        self.last_heartbeat = 0.0
        self.stopping = threading.Event()
        self._hosts_text = ""

    @staticmethod
    def _ip_pool() -> Iterator[str]:
        # 127.0.0.0/24 is left to the control plane and tests; pods get 127.0.1.1 onwards.
        for address in ipaddress.ip_network("127.0.0.0/8").hosts():
            text = str(address)
            if address >= ipaddress.ip_address("127.0.1.1") and not text.endswith((".0", ".255")):
                yield text

    def volume_dir(self, pvc: Obj) -> Path:
        return self.root / "volumes" / pvc["metadata"]["uid"]

    # ---------------------------------------------------------------- main loop

    def run(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.hosts_file.write_text("127.0.0.1 localhost\n")
        self._register_node()
        while not self.stopping.is_set():
            try:
                self.sync()
            except (ApiException, OSError) as error:
                log.warning("sync failed: %s", error)
            self.stopping.wait(_LOOP_INTERVAL_S)
        self.shutdown()

    def sync(self) -> None:
        if time.monotonic() - self.last_heartbeat > _HEARTBEAT_S:
            self._heartbeat()
        self._sync_claims()
        pods = self.kube.list("/api/v1/pods")
        seen = set()
        for pod in pods:
            meta, spec = pod["metadata"], pod["spec"]
            uid = meta["uid"]
            seen.add(uid)
            deleting = meta.get("deletionTimestamp") is not None
            if not spec.get("nodeName"):
                if not deleting and spec.get("schedulerName", "default-scheduler") in (
                    "default-scheduler",
                    "",
                ):
                    self._bind(pod)
                continue
            if spec["nodeName"] != NODE_NAME:
                continue
            runtime = self.runtimes.get(uid)
            if deleting:
                if runtime is None:
                    self._finalize(pod)
                elif runtime.finished:
                    del self.runtimes[uid]
                    self._finalize(pod)
                else:
                    runtime.request_stop(float(meta.get("deletionGracePeriodSeconds") or 0))
            elif runtime is None and uid not in self.done:
                phase = pod.get("status", {}).get("phase")
                if phase in ("Succeeded", "Failed"):
                    self.done.add(uid)
                    continue
                runtime = PodRuntime(self, pod, next(self.ips))
                self.runtimes[uid] = runtime
                runtime.start()
            elif runtime is not None:
                runtime.pod = pod
                if runtime.finished:
                    self.done.add(uid)
                    del self.runtimes[uid]
        for uid in list(self.runtimes):
            if uid not in seen:  # force-deleted: nobody waits for a grace period
                runtime = self.runtimes.pop(uid)
                runtime.request_stop(0.0)
                runtime.join(timeout=15)
                shutil.rmtree(runtime.dir, ignore_errors=True)
        self._write_hosts(pods)

    def _bind(self, pod: Obj) -> None:
        meta = pod["metadata"]
        binding = {
            "apiVersion": "v1",
            "kind": "Binding",
            "metadata": {"name": meta["name"], "uid": meta["uid"]},
            "target": {"apiVersion": "v1", "kind": "Node", "name": NODE_NAME},
        }
        try:
            self.kube.create(ns_path(meta["namespace"], "pods", f"{meta['name']}/binding"), binding)
        except ApiException as error:
            if error.status not in (404, 409):
                raise

    def _finalize(self, pod: Obj) -> None:
        meta = pod["metadata"]
        self.kube.delete(
            ns_path(meta["namespace"], "pods", meta["name"]),
            {"gracePeriodSeconds": 0, "preconditions": {"uid": meta["uid"]}},
        )
        runtime_dir = self.root / "pods" / f"{meta['namespace']}_{meta['name']}_{meta['uid'][:8]}"
        shutil.rmtree(runtime_dir, ignore_errors=True)

    # ---------------------------------------------------------------- node

    def _register_node(self) -> None:
        node = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": NODE_NAME,
                "labels": {
                    "kubernetes.io/hostname": NODE_NAME,
                    "kubernetes.io/os": "linux",
                    "kubernetes.io/arch": "amd64",
                },
            },
        }
        with contextlib.suppress(ApiException):
            self.kube.create("/api/v1/nodes", node)
        self._heartbeat()

    def _heartbeat(self) -> None:
        stamp = now()
        capacity = {"cpu": "64", "memory": "256Gi", "pods": "500", "ephemeral-storage": "100Gi"}
        status = {
            "capacity": capacity,
            "allocatable": capacity,
            "addresses": [
                {"type": "InternalIP", "address": "127.0.0.1"},
                {"type": "Hostname", "address": NODE_NAME},
            ],
            "conditions": [
                {
                    "type": "Ready",
                    "status": "True",
                    "reason": "KubeletReady",
                    "message": "e2e node agent",
                    "lastHeartbeatTime": stamp,
                    "lastTransitionTime": stamp,
                }
            ],
            "nodeInfo": {
                "kubeletVersion": "v0.0.0-e2e-agent",
                "operatingSystem": "linux",
                "architecture": "amd64",
                "containerRuntimeVersion": "local://processes",
            },
        }
        self.kube.patch(f"/api/v1/nodes/{NODE_NAME}/status", {"status": status})
        self.last_heartbeat = time.monotonic()

    # ---------------------------------------------------------------- claims

    def _sync_claims(self) -> None:
        claims = self.kube.list("/api/v1/persistentvolumeclaims")
        live = {c["metadata"]["uid"] for c in claims}
        for claim in claims:
            meta = claim["metadata"]
            if claim.get("status", {}).get("phase") == "Bound" or meta.get("deletionTimestamp"):
                continue
            self._bind_claim(claim)
        for volume in self.kube.list("/api/v1/persistentvolumes", labelSelector=AGENT_LABEL):
            uid = volume["spec"].get("claimRef", {}).get("uid")
            if uid in live or volume["metadata"].get("deletionTimestamp"):
                continue
            shutil.rmtree(self.root / "volumes" / str(uid), ignore_errors=True)
            name = volume["metadata"]["name"]
            # pv-protection lets go of a volume that is no longer Bound.
            self.kube.patch(
                f"/api/v1/persistentvolumes/{name}/status", {"status": {"phase": "Released"}}
            )
            self.kube.delete(f"/api/v1/persistentvolumes/{name}")

    def _bind_claim(self, claim: Obj) -> None:
        meta, spec = claim["metadata"], claim["spec"]
        uid, ns, name = meta["uid"], meta["namespace"], meta["name"]
        directory = self.volume_dir(claim)
        directory.mkdir(parents=True, exist_ok=True)
        size = spec.get("resources", {}).get("requests", {}).get("storage", "1Gi")
        modes = spec.get("accessModes") or ["ReadWriteOnce"]
        pv_name = f"local-{uid}"
        volume = {
            "apiVersion": "v1",
            "kind": "PersistentVolume",
            "metadata": {"name": pv_name, "labels": {AGENT_LABEL: "true"}},
            "spec": {
                "capacity": {"storage": size},
                "accessModes": modes,
                "hostPath": {"path": str(directory)},
                "persistentVolumeReclaimPolicy": "Delete",
                "storageClassName": spec.get("storageClassName") or "",
                "claimRef": {
                    "apiVersion": "v1",
                    "kind": "PersistentVolumeClaim",
                    "namespace": ns,
                    "name": name,
                    "uid": uid,
                },
            },
        }
        with contextlib.suppress(ApiException):
            self.kube.create("/api/v1/persistentvolumes", volume)
        self.kube.patch(
            f"/api/v1/persistentvolumes/{pv_name}/status", {"status": {"phase": "Bound"}}
        )
        path = ns_path(ns, "persistentvolumeclaims", name)
        if not spec.get("volumeName"):
            self.kube.patch(path, {"spec": {"volumeName": pv_name}})
        self.kube.patch(
            f"{path}/status",
            {"status": {"phase": "Bound", "accessModes": modes, "capacity": {"storage": size}}},
        )

    # ---------------------------------------------------------------- names

    def _write_hosts(self, pods: list[Obj]) -> None:
        entries: dict[str, list[str]] = {}

        def add(ip: str, *names: str) -> None:
            for name in names:
                entries.setdefault(name, [])
                if ip not in entries[name]:
                    entries[name].append(ip)

        add("127.0.0.1", "localhost")
        add("127.0.0.1", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local")
        ready_ips: dict[str, list[tuple[Obj, str, bool]]] = {}
        for pod in pods:
            runtime = self.runtimes.get(pod["metadata"]["uid"])
            if runtime is None or runtime.finished or pod["metadata"].get("deletionTimestamp"):
                continue
            meta, spec = pod["metadata"], pod["spec"]
            ns = meta["namespace"]
            ready = runtime.init_done and all(c.ready for c in runtime.containers)
            ready_ips.setdefault(ns, []).append((pod, runtime.ip, ready))
            if spec.get("hostname") and spec.get("subdomain"):
                base = f"{spec['hostname']}.{spec['subdomain']}.{ns}"
                add(runtime.ip, f"{base}.svc", f"{base}.svc.cluster.local")
        for service in self.kube.list("/api/v1/services"):
            meta, spec = service["metadata"], service["spec"]
            selector = spec.get("selector")
            if not selector:
                continue
            base = f"{meta['name']}.{meta['namespace']}"
            for pod, ip, ready in ready_ips.get(meta["namespace"], []):
                labels = pod["metadata"].get("labels", {})
                if all(labels.get(k) == v for k, v in selector.items()) and (
                    ready or spec.get("publishNotReadyAddresses")
                ):
                    add(ip, f"{base}.svc", f"{base}.svc.cluster.local")
        lines = [f"{ip} {name}" for name, ips in sorted(entries.items()) for ip in ips]
        text = "\n".join(lines) + "\n"
        if text == self._hosts_text:
            return
        # Rewritten in place (same inode: the pods see it through a bind mount), padded with a
        # comment so a concurrent reader never sees a half-shortened file.
        old = len(self._hosts_text.encode())
        data = text.encode()
        if len(data) < old:
            data += b"#" * (old - len(data) - 1) + b"\n"
        with self.hosts_file.open("r+b") as out:
            out.write(data)
            out.truncate()
        self._hosts_text = data.decode()

    # ---------------------------------------------------------------- shutdown

    def shutdown(self) -> None:
        for runtime in self.runtimes.values():
            runtime.request_stop(2.0)
        for runtime in self.runtimes.values():
            runtime.join(timeout=30)


def kill_leftovers(root: Path) -> None:
    """SIGKILL the process groups of pods the agent started under `root` that still run (the
    agent itself was killed before it could stop them). A pid is only trusted while its
    environment still names `root` (pods' HOME is under it), so a reused pid is left alone."""
    try:
        pids = {int(line) for line in (root / "pids").read_text().split()}
    except OSError:
        return
    marker = str(root).encode()
    for pid in pids:
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes()
        except OSError:
            continue
        if marker in environ:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--kubeconfig", required=True)
    parser.add_argument("--root", required=True, type=Path)
    parser.add_argument("--apiserver-port", required=True, type=int)
    parser.add_argument("--bin-dir", type=Path, default=Path(sys.executable).parent)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    agent = NodeAgent(Kube(args.kubeconfig), args.root, args.apiserver_port, args.bin_dir)
    signal.signal(signal.SIGTERM, lambda *_: agent.stopping.set())
    signal.signal(signal.SIGINT, lambda *_: agent.stopping.set())
    agent.run()


if __name__ == "__main__":
    main()
