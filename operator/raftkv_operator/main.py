"""kopf handler registration for RaftKVCluster, and nothing else.

All decisions live in `planner`, all actions in `reconciler`; the handlers here only wire kopf's
events to one reconcile pass and turn its outcome into kopf's retry (TemporaryError) or failure
(PermanentError). A per-object lock keeps the change handlers and the drift timer from running
two passes of the same cluster at once.

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
import logging
import os
import random
from pathlib import Path
from typing import Any

import kopf
from prometheus_client import CollectorRegistry, start_http_server
from raftkv.client import TLSConfig

from raftkv_operator import backups, recovery
from raftkv_operator.kube import KubeClient, load_config
from raftkv_operator.metrics import OperatorMetrics
from raftkv_operator.model import CLIENT_PORT, GROUP, PLURAL, VERSION, InvalidSpec, Names
from raftkv_operator.reconciler import Outcome, Reconciler

log = logging.getLogger(__name__)

DRIFT_INTERVAL_S = 15.0
BACKUP_INTERVAL_S = 30.0
RECOVERY_INTERVAL_S = 15.0
_locks: dict[str, asyncio.Lock] = {}


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


async def _pass(body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo) -> Outcome:
    reconciler: Reconciler = memo.reconciler
    metrics: OperatorMetrics = memo.metrics

    def post(kind: str, reason: str, message: str) -> None:
        kopf.event(body, type=kind, reason=reason, message=message)

    lock = _locks.setdefault(body.metadata.uid or "", asyncio.Lock())
    async with lock:
        with metrics.reconcile_duration.time():
            try:
                outcome = await reconciler.run(body, post)
            except InvalidSpec as error:
                metrics.reconciles.labels("error").inc()
                metrics.reconcile_errors.labels("InvalidSpec").inc()
                patch.status["phase"] = "Failed"
                post("Warning", "InvalidSpec", str(error))
                raise kopf.PermanentError(str(error)) from error
            except Exception as error:
                metrics.reconciles.labels("error").inc()
                metrics.reconcile_errors.labels(type(error).__name__).inc()
                raise
    for key, value in outcome.status.items():
        patch.status[key] = value
    # Conditions other handlers own (BackupSucceeded) stay as they are.
    own = {c["type"] for c in outcome.status.get("conditions", ())}
    kept = [c for c in (body.status or {}).get("conditions") or () if c.get("type") not in own]
    if kept:
        patch.status["conditions"] = [*outcome.status.get("conditions", ()), *kept]
    if outcome.converged:
        metrics.reconciles.labels("converged").inc()
    elif outcome.retry_after <= 2.0:
        metrics.reconciles.labels("progressing").inc()
    else:
        metrics.reconciles.labels("waiting").inc()
    return outcome


@kopf.on.resume(GROUP, VERSION, PLURAL)
@kopf.on.create(GROUP, VERSION, PLURAL)
@kopf.on.update(GROUP, VERSION, PLURAL, field="spec")
async def reconcile(body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, **_: Any) -> None:
    """Reconcile until converged: kopf calls again after each TemporaryError's delay."""
    try:
        outcome = await _pass(body, patch, memo)
    except kopf.PermanentError:
        raise
    except Exception as error:
        raise kopf.TemporaryError(f"reconcile failed: {error}", delay=10) from error
    if not outcome.converged:
        raise kopf.TemporaryError(outcome.message, delay=outcome.retry_after)


@kopf.timer(GROUP, VERSION, PLURAL, interval=DRIFT_INTERVAL_S, initial_delay=DRIFT_INTERVAL_S)
async def watch_drift(body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, **_: Any) -> None:
    """Notice what no resource change announces: a lost pod, a lost data dir, a new leader."""
    try:
        await _pass(body, patch, memo)
    except kopf.PermanentError:
        pass  # already reported by the change handler
    except Exception as error:
        log.warning("drift check of %s failed: %s", body.metadata.name, error)


@kopf.on.delete(GROUP, VERSION, PLURAL, optional=True)
def forget(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """Owned objects go with the resource (ownerReferences); drop its gauges and lock."""
    memo.metrics.cluster_deleted(body.metadata.namespace or "", body.metadata.name or "")
    memo.backup_metrics.cluster_deleted(body.metadata.namespace or "", body.metadata.name or "")
    _locks.pop(body.metadata.uid or "", None)


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
