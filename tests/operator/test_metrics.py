"""The operator's metrics and its Grafana dashboard agree, and the series panels read exist
from the first scrape (a panel shows 0, not "no data", before anything happened)."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest
from raftkv_operator.backups import BackupMetrics
from raftkv_operator.metrics import OperatorMetrics

DASHBOARD = Path(__file__).resolve().parents[2] / "charts/raftkv/dashboards/raftkv-operator.json"


def exposed(registry: CollectorRegistry) -> str:
    return generate_latest(registry).decode()


def test_counters_exist_at_zero_before_any_event() -> None:
    text = exposed(_registry())
    for line in (
        'raftkv_operator_reconciles_total{result="converged"} 0.0',
        'raftkv_operator_reconciles_total{result="error"} 0.0',
        'raftkv_operator_member_changes_total{action="add"} 0.0',
        'raftkv_operator_member_changes_total{action="restart"} 0.0',
        'raftkv_operator_backups_total{result="failure"} 0.0',
    ):
        assert line in text, line
    assert "raftkv_operator_reconcile_duration_seconds_bucket" in text


def test_every_metric_the_dashboard_queries_is_exported() -> None:
    registry = _registry()
    text = exposed(registry)
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel.get("targets", ())] + [
        v["definition"] for v in dashboard["templating"]["list"] if "definition" in v
    ]
    queried = {m for e in exprs for m in re.findall(r"raftkv_operator_[a-z_]+", e)}
    assert queried
    names = set(re.findall(r"^(raftkv_operator_[a-z_]+)", text, flags=re.MULTILINE))
    assert queried <= names, queried - names


def test_cluster_gauges_follow_the_cluster_and_go_with_it() -> None:
    registry = CollectorRegistry()
    metrics = OperatorMetrics(registry)
    metrics.cluster_observed("ns", "kv", desired=5, members=4, ready=3, degraded=True)
    text = exposed(registry)
    ready = (
        'raftkv_operator_cluster_members{cluster_name="kv",cluster_namespace="ns",state="ready"}'
    )
    assert f"{ready} 3.0" in text
    assert 'raftkv_operator_cluster_degraded{cluster_name="kv",cluster_namespace="ns"} 1.0' in text
    metrics.cluster_deleted("ns", "kv")
    metrics.cluster_deleted("ns", "kv")  # twice is fine
    assert 'cluster_name="kv"' not in exposed(registry)


def _registry() -> CollectorRegistry:
    """Everything `main.configure` registers, with one cluster observed and backed up (the
    per-cluster series appear then)."""
    registry = CollectorRegistry()
    metrics = OperatorMetrics(registry)
    metrics.cluster_observed("ns", "kv", desired=3, members=3, ready=3, degraded=False)
    BackupMetrics(registry).succeeded("ns", "kv", datetime.now(UTC))
    return registry
