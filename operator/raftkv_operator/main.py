"""kopf handler registration for RaftKVCluster, and nothing else.

All decisions live in `planner`, all actions in `reconciler`; here each cluster gets a kopf
daemon that runs reconcile passes in a loop (woken early by spec changes) and writes the status
each pass returns. Daemons are stopped while kopf peering makes this replica the passive one. A
per-object lock keeps a pass and the backup/recovery timers of the same cluster apart.

Configuration (environment, set by the Helm chart):
  RAFTKV_IMAGE             image repository for clusters whose spec.image is empty
  RAFTKV_CLUSTER_DOMAIN    the cluster DNS domain (cluster.local)
  RAFTKV_OPERATOR_METRICS_PORT   port of /metrics (8080; 0 disables it)
  RAFTKV_OPERATOR_METRICS_ADDR   address it binds (0.0.0.0; the chart gives the pod IP)
  RAFTKV_OPERATOR_PEERING  name of the KopfPeering object; unset runs standalone
  RAFTKV_CLIENT_TLS_DIR    ca.crt, tls.crt, tls.key for talking to members with client TLS
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
import os
import random
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import kopf
from prometheus_client import CollectorRegistry, start_http_server
from raftkv.client import TLSConfig

from raftkv_operator import backups, defrag, recovery
from raftkv_operator.kube import KubeClient, load_config
from raftkv_operator.metrics import OperatorMetrics
from raftkv_operator.model import CLIENT_PORT, GROUP, PLURAL, VERSION, InvalidSpec, Names
from raftkv_operator.reconciler import AFTER_STEP_S, Outcome, Reconciler

log = logging.getLogger(__name__)

DRIFT_INTERVAL_S = 15.0
ERROR_RETRY_S = 10.0
BACKUP_INTERVAL_S = 30.0
RECOVERY_INTERVAL_S = 15.0
DEFRAG_INTERVAL_S = 30.0
_locks: dict[str, asyncio.Lock] = {}
_wakeups: dict[str, asyncio.Event] = {}


def _client_tls() -> TLSConfig | None:
    directory = os.environ.get("RAFTKV_CLIENT_TLS_DIR")
    if not directory:
        return None
    base = Path(directory)
    return TLSConfig(ca_file=base / "ca.crt", cert_file=base / "tls.crt", key_file=base / "tls.key")


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    # Log lines stay logs; only warnings become Kubernetes Events (steps post their own).
    settings.posting.level = logging.WARNING
    # Serve exactly the namespaces given and the CRD installed at start: no cluster-wide watch
    # of namespaces and CRDs, so a namespaced install needs no cluster-wide permission.
    settings.scanning.disabled = True
    # The liveness probe's access log would be one line every few seconds.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(
        prefix="operator.raftkv.io"
    )
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix="operator.raftkv.io"
    )
    peering = os.environ.get("RAFTKV_OPERATOR_PEERING")
    if peering:
        # Equal priorities make every replica freeze; a random one elects a single active one.
        settings.peering.name = peering
        settings.peering.mandatory = True
        settings.peering.priority = random.SystemRandom().randint(1, 2**30)
    else:
        settings.peering.standalone = True
    registry = CollectorRegistry()
    metrics = OperatorMetrics(registry)
    port = int(os.environ.get("RAFTKV_OPERATOR_METRICS_PORT", "8080"))
    if port:
        addr = os.environ.get("RAFTKV_OPERATOR_METRICS_ADDR", "0.0.0.0")
        start_http_server(port, addr=addr, registry=registry)
    load_config()
    memo.reconciler = Reconciler(
        kube=KubeClient(),
        default_image=os.environ.get("RAFTKV_IMAGE", "raftkv"),
        cluster_domain=os.environ.get("RAFTKV_CLUSTER_DOMAIN", "cluster.local"),
        client_tls=_client_tls(),
        metrics=metrics,
    )
    memo.metrics = metrics
    memo.backup_metrics = backups.BackupMetrics(registry)
    memo.backup_runner = backups.BackupRunner()
    memo.recovery = recovery.Recovery(
        kube=memo.reconciler.kube,
        client_tls=memo.reconciler.client_tls,
        default_image=memo.reconciler.default_image,
        cluster_domain=memo.reconciler.cluster_domain,
    )


def _post(body: kopf.Body) -> backups.EventSink:
    def post(kind: str, reason: str, message: str) -> None:
        kopf.event(body, type=kind, reason=reason, message=message)

    return post


async def _pass(body: Mapping[str, Any], memo: kopf.Memo) -> Outcome:
    """One reconcile pass of `body` (a snapshot), its status written through the API."""
    reconciler: Reconciler = memo.reconciler
    metrics: OperatorMetrics = memo.metrics
    meta = body["metadata"]
    namespace, name, uid = meta["namespace"], meta["name"], meta.get("uid") or ""
    previous = body.get("status") or {}

    def post(kind: str, reason: str, message: str) -> None:
        kopf.event(body, type=kind, reason=reason, message=message)

    lock = _locks.setdefault(uid, asyncio.Lock())
    async with lock:
        with metrics.reconcile_duration.time():
            try:
                outcome = await reconciler.run(body, post)
            except InvalidSpec as error:
                metrics.reconciles.labels("error").inc()
                metrics.reconcile_errors.labels("InvalidSpec").inc()
                if previous.get("phase") != "Failed":
                    post("Warning", "InvalidSpec", str(error))
                    await reconciler.kube.patch_cluster_status(namespace, name, {"phase": "Failed"})
                raise
            except Exception as error:
                metrics.reconciles.labels("error").inc()
                metrics.reconcile_errors.labels(type(error).__name__).inc()
                raise
        status = dict(outcome.status)
        # Conditions other handlers own (BackupSucceeded) stay as they are.
        own = {c["type"] for c in status.get("conditions", ())}
        kept = [c for c in previous.get("conditions") or () if c.get("type") not in own]
        status["conditions"] = [*status.get("conditions", ()), *kept]
        await reconciler.kube.patch_cluster_status(namespace, name, status)
    if outcome.converged:
        metrics.reconciles.labels("converged").inc()
    elif outcome.retry_after <= AFTER_STEP_S:
        metrics.reconciles.labels("progressing").inc()
    else:
        metrics.reconciles.labels("waiting").inc()
    return outcome


@kopf.daemon(GROUP, VERSION, PLURAL, cancellation_timeout=30.0)
async def run_cluster(
    body: kopf.Body, stopped: kopf.DaemonStopped, memo: kopf.Memo, **_: Any
) -> None:
    """One loop per cluster, for as long as it exists and this replica is the active one: a
    pass, then a pause (short while a step is under way, longer once converged, to notice a
    lost pod, a lost data dir or a new leader), cut short by a spec change. Waiting is not an
    error here, so it is neither logged as one nor posted as an Event (kopf's TemporaryError
    retries would be both)."""
    wake = _wakeups.setdefault(body.metadata.uid or "", asyncio.Event())
    while not stopped:
        wake.clear()
        # `body` follows the object live; a pass works on one consistent copy.
        snapshot = copy.deepcopy(dict(body))
        try:
            outcome = await _pass(snapshot, memo)
            delay = DRIFT_INTERVAL_S if outcome.converged else outcome.retry_after
        except InvalidSpec:
            delay = DRIFT_INTERVAL_S
        except Exception as error:
            log.warning(
                "reconcile of %s/%s failed: %s", body.metadata.namespace, body.metadata.name, error
            )
            delay = ERROR_RETRY_S
        await _pause(delay, wake, stopped)


async def _pause(seconds: float, wake: asyncio.Event, stopped: kopf.DaemonStopped) -> None:
    deadline = time.monotonic() + seconds
    while not stopped and not wake.is_set():
        left = deadline - time.monotonic()
        if left <= 0:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(wake.wait(), timeout=min(left, 1.0))


@kopf.on.update(GROUP, VERSION, PLURAL, field="spec")
def spec_changed(body: kopf.Body, **_: Any) -> None:
    """Start the cluster's next pass now rather than after its pause."""
    wake = _wakeups.get(body.metadata.uid or "")
    if wake is not None:
        wake.set()


@kopf.on.delete(GROUP, VERSION, PLURAL, optional=True)
def forget(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """Owned objects go with the resource (ownerReferences); drop its gauges and lock."""
    memo.metrics.cluster_deleted(body.metadata.namespace or "", body.metadata.name or "")
    memo.backup_metrics.cluster_deleted(body.metadata.namespace or "", body.metadata.name or "")
    _locks.pop(body.metadata.uid or "", None)
    _wakeups.pop(body.metadata.uid or "", None)


@kopf.timer(
    GROUP,
    VERSION,
    PLURAL,
    interval=BACKUP_INTERVAL_S,
    initial_delay=BACKUP_INTERVAL_S,
    when=lambda spec, **_: bool(spec.get("backup")),
)
async def backup(body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, **_: Any) -> None:
    """A backup when `spec.backup.schedule` says so or `raftkv.io/backup-now` asks for one."""
    namespace, name = body.metadata.namespace or "", body.metadata.name or ""
    names = Names(name, namespace, memo.reconciler.cluster_domain)
    tls = _client_tls() if (body.spec.get("tls") or {}).get("client") else None

    async def endpoints() -> list[str]:
        pods = await memo.reconciler.kube.list("Pod", namespace, names.selector_string())
        return backups.member_endpoints(pods, CLIENT_PORT)

    def count(result: backups.BackupResult) -> None:
        memo.metrics.backup_finished(ok=result.ok)
        if result.ok:
            memo.backup_metrics.succeeded(namespace, name, result.finished)

    try:
        fields = await backups.tick(
            body,
            runner=memo.backup_runner,
            secrets=backups.read_secret,
            endpoints=endpoints,
            events=_post(body),
            tls=backups.ClientTLS(str(tls.ca_file), str(tls.cert_file), str(tls.key_file))
            if tls is not None and tls.ca_file and tls.cert_file and tls.key_file
            else None,
            on_result=count,
        )
    except InvalidSpec as error:
        log.warning("backup of %s/%s: %s", namespace, name, error)
        return
    for key, value in (fields or {}).items():
        patch.status[key] = value


@kopf.timer(GROUP, VERSION, PLURAL, interval=RECOVERY_INTERVAL_S, initial_delay=DRIFT_INTERVAL_S)
async def recover(body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, **_: Any) -> None:
    """Disaster recovery when quorum is lost for good (see `recovery`), between reconcile
    passes of the same cluster, never during one."""
    lock = _locks.setdefault(body.metadata.uid or "", asyncio.Lock())
    async with lock:
        try:
            fields = await memo.recovery.check(body, _post(body))
        except InvalidSpec as error:
            log.warning("recovery check of %s: %s", body.metadata.name, error)
            return
    for key, value in (fields or {}).items():
        patch.status[key] = value


@kopf.timer(
    GROUP,
    VERSION,
    PLURAL,
    interval=DEFRAG_INTERVAL_S,
    initial_delay=DEFRAG_INTERVAL_S,
    when=lambda spec, **_: bool((spec.get("maintenance") or {}).get("defragSchedule")),
)
async def defragment(body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, **_: Any) -> None:
    """Scheduled defragmentation, followers first and the leader last (see `defrag`); it moves
    leadership, so never during a reconcile pass of the same cluster."""
    namespace, name = body.metadata.namespace or "", body.metadata.name or ""
    names = Names(name, namespace, memo.reconciler.cluster_domain)
    client_tls = (body.spec.get("tls") or {}).get("client")
    scheme = "https" if client_tls else "http"

    async def endpoints() -> list[str]:
        pods = await memo.reconciler.kube.list("Pod", namespace, names.selector_string())
        return [f"{scheme}://{e}" for e in backups.member_endpoints(pods, CLIENT_PORT)]

    lock = _locks.setdefault(body.metadata.uid or "", asyncio.Lock())
    async with lock:
        try:
            fields = await defrag.tick(
                body,
                calls=lambda members: defrag.ClientCalls(
                    members, memo.reconciler.client_tls if client_tls else None
                ),
                endpoints=endpoints,
                events=_post(body),
            )
        except InvalidSpec as error:
            log.warning("defragmentation of %s/%s: %s", namespace, name, error)
            return
    for key, value in (fields or {}).items():
        patch.status[key] = value
