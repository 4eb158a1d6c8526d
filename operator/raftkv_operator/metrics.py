"""The operator's Prometheus metrics (`raftkv_operator_*`), on a registry passed in.

As for the members (docs/architecture.md, Observability), nothing registers at import: `main`
creates one `OperatorMetrics` on its own registry and serves it; tests make their own. Labelled
series that dashboards read are created at zero up front, so a panel shows 0 rather than "no
data" before the first event. Per-cluster series are labelled `cluster_namespace` and
`cluster_name`, not `namespace`/`cluster`, which scrapes of Kubernetes pods attach as target
labels.
"""

from __future__ import annotations

import contextlib

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

RESULTS = ("converged", "progressing", "waiting", "error")
MEMBER_CHANGES = ("add", "promote", "remove", "replace", "move_leader", "restart")
BACKUP_RESULTS = ("success", "failure")


class OperatorMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.reconciles = Counter(
            "raftkv_operator_reconciles",
            "Reconcile passes by outcome (converged, progressing, waiting, error).",
            ["result"],
            registry=registry,
        )
        self.reconcile_errors = Counter(
            "raftkv_operator_reconcile_errors",
            "Reconcile passes that failed, by the error's class.",
            ["error"],
            registry=registry,
        )
        self.reconcile_duration = Histogram(
            "raftkv_operator_reconcile_duration_seconds",
            "Time of one reconcile pass (observe, plan, act).",
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=registry,
        )
        self.member_changes = Counter(
            "raftkv_operator_member_changes",
            "Membership changes and member restarts the operator made, by action.",
            ["action"],
            registry=registry,
        )
        self.backups = Counter(
            "raftkv_operator_backups",
            "Backups of the managed clusters, by result.",
            ["result"],
            registry=registry,
        )
        self.cluster_members = Gauge(
            "raftkv_operator_cluster_members",
            "Members of each managed cluster as last observed, by state (desired, members, ready).",
            ["cluster_namespace", "cluster_name", "state"],
            registry=registry,
        )
        self.cluster_degraded = Gauge(
            "raftkv_operator_cluster_degraded",
            "1 while a managed cluster's Degraded condition is True.",
            ["cluster_namespace", "cluster_name"],
            registry=registry,
        )
        for result in RESULTS:
            self.reconciles.labels(result)
        for action in MEMBER_CHANGES:
            self.member_changes.labels(action)
        for result in BACKUP_RESULTS:
            self.backups.labels(result)

    def backup_finished(self, *, ok: bool) -> None:
        """For the backup runner: count one finished backup."""
        self.backups.labels("success" if ok else "failure").inc()

    def cluster_observed(
        self,
        namespace: str,
        cluster: str,
        *,
        desired: int,
        members: int,
        ready: int,
        degraded: bool,
    ) -> None:
        for state, value in (("desired", desired), ("members", members), ("ready", ready)):
            self.cluster_members.labels(namespace, cluster, state).set(value)
        self.cluster_degraded.labels(namespace, cluster).set(1 if degraded else 0)

    def cluster_deleted(self, namespace: str, cluster: str) -> None:
        for state in ("desired", "members", "ready"):
            with contextlib.suppress(KeyError):
                self.cluster_members.remove(namespace, cluster, state)
        with contextlib.suppress(KeyError):
            self.cluster_degraded.remove(namespace, cluster)
