"""The Helm chart: lint, render, and validate every rendered object against Kubernetes' schemas.

Helm and the OpenAPI document come from `make chart-tools` (pinned Go module builds in .tools/),
which `make test` runs first; a missing tool fails the test instead of skipping it.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from raftkv_operator.model import ClusterSpec

from tests.chart import k8s_schema

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "raftkv"
HELM = ROOT / ".tools" / "bin" / "helm"
KUBE_VERSION = "1.33.0"
MONITORING = ("--api-versions", "monitoring.coreos.com/v1")


def helm(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    assert HELM.exists(), f"{HELM} is missing: run `make chart-tools`"
    return subprocess.run(
        [str(HELM), *args], capture_output=True, text=True, check=check, timeout=120
    )


def render(*args: str, namespace: str = "raftkv-system") -> list[dict[str, Any]]:
    out = helm(
        "template",
        "rel",
        str(CHART),
        "--namespace",
        namespace,
        "--kube-version",
        KUBE_VERSION,
        *args,
    ).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def of_kind(docs: Sequence[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def test_helm_lint_is_clean() -> None:
    result = helm("lint", "--strict", str(CHART), "--kube-version", KUBE_VERSION)
    assert "0 chart(s) failed" in result.stdout
    assert "[WARNING]" not in result.stdout and "[ERROR]" not in result.stdout


@pytest.mark.parametrize(
    "args",
    [
        (),
        (*MONITORING, "--set", "cluster.create=true", "--include-crds"),
        ("--set", "watch.allNamespaces=true", "--set", "operator.clientTLSSecret=op-tls"),
        ("--set", "watch.namespaces={a,b}", "--set", "peering.enabled=false"),
    ],
    ids=["defaults", "everything", "cluster-wide", "two-namespaces"],
)
def test_every_rendered_object_is_valid_for_kubernetes(args: tuple[str, ...]) -> None:
    docs = render(*args)
    assert docs
    for doc in docs:
        if doc["apiVersion"].startswith("monitoring.coreos.com/"):
            continue  # no schema without the Prometheus Operator's CRDs; checked below
        k8s_schema.validate(doc)


def test_an_invalid_field_fails_validation() -> None:
    deployment = of_kind(render(), "Deployment")[0]
    deployment["spec"]["template"]["spec"]["containers"][0]["comand"] = ["x"]
    with pytest.raises(jsonschema.ValidationError):
        k8s_schema.validate(deployment)


def test_rbac_is_namespaced_and_reads_secrets_only_by_name() -> None:
    docs = render()
    roles = of_kind(docs, "Role")
    assert [r["metadata"]["namespace"] for r in roles] == ["raftkv-system"]
    assert not of_kind(docs, "ClusterRole") and not of_kind(docs, "ClusterRoleBinding")
    for role in roles:
        for rule in role["rules"]:
            assert "*" not in rule["resources"] and "*" not in rule["verbs"]
            if "secrets" in rule["resources"]:  # backup credentials: read one by name
                assert rule["resources"] == ["secrets"] and rule["verbs"] == ["get"]
    no_secrets = render("--set", "rbac.backupSecrets=false")
    assert not any(
        "secrets" in r["resources"] for x in of_kind(no_secrets, "Role") for r in x["rules"]
    )
    args = of_kind(docs, "Deployment")[0]["spec"]["template"]["spec"]["containers"][0]["command"]
    assert "--namespace=raftkv-system" in args and "--all-namespaces" not in args


def test_watched_namespaces_each_get_a_role_and_a_peering() -> None:
    docs = render("--set", "watch.namespaces={team-a,team-b}")
    assert sorted(r["metadata"]["namespace"] for r in of_kind(docs, "Role")) == [
        "team-a",
        "team-b",
    ]
    assert sorted(p["metadata"]["namespace"] for p in of_kind(docs, "KopfPeering")) == [
        "team-a",
        "team-b",
    ]
    command = of_kind(docs, "Deployment")[0]["spec"]["template"]["spec"]["containers"][0]["command"]
    assert "--namespace=team-a" in command and "--namespace=team-b" in command


def test_cluster_wide_watch_uses_a_cluster_role_and_cluster_peering() -> None:
    docs = render("--set", "watch.allNamespaces=true")
    assert not of_kind(docs, "Role")
    assert of_kind(docs, "ClusterKopfPeering")
    (role,) = of_kind(docs, "ClusterRole")
    resources = {res for rule in role["rules"] for res in rule["resources"]}
    assert {"raftkvclusters", "statefulsets", "clusterkopfpeerings"} <= resources
    assert "secrets" not in resources  # never cluster-wide
    command = of_kind(docs, "Deployment")[0]["spec"]["template"]["spec"]["containers"][0]["command"]
    assert "--all-namespaces" in command


def test_operator_pods_run_unprivileged_and_replicated() -> None:
    deployment = of_kind(render("--set", "operator.replicas=3"), "Deployment")[0]
    spec = deployment["spec"]["template"]["spec"]
    assert deployment["spec"]["replicas"] == 3
    assert spec["securityContext"]["runAsNonRoot"] is True
    container = spec["containers"][0]
    assert container["command"][0] == "raftkv-operator"
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
    }
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["RAFTKV_OPERATOR_PEERING"] == "raftkv-operator"
    assert env["RAFTKV_IMAGE"] == "raftkv"


def test_monitoring_objects_only_with_the_prometheus_operator_api() -> None:
    assert not [d for d in render() if d["apiVersion"].startswith("monitoring.coreos.com/")]
    docs = render(*MONITORING)
    monitors = of_kind(docs, "PodMonitor")
    assert {m["metadata"]["name"] for m in monitors} == {
        "rel-raftkv-operator",
        "rel-raftkv-members",
    }
    members = next(m for m in monitors if m["metadata"]["name"].endswith("members"))
    targets = {r["targetLabel"] for r in members["spec"]["podMetricsEndpoints"][0]["relabelings"]}
    assert targets == {"cluster", "instance"}  # what the dashboards and alerts group by


def test_prometheus_rule_carries_the_alert_files_unchanged() -> None:
    rule = of_kind(render(*MONITORING), "PrometheusRule")[0]
    expected = [
        g
        for p in sorted((CHART / "alerts").glob("*.yaml"))
        for g in yaml.safe_load(p.read_text())["groups"]
    ]
    assert rule["spec"]["groups"] == expected
    assert "{{ $labels.instance }}" in json.dumps(rule)  # Prometheus templates, not Helm's


def test_dashboards_configmap_holds_every_dashboard_for_the_grafana_sidecar() -> None:
    cm = of_kind(render(), "ConfigMap")[0]
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    files = sorted(p.name for p in (CHART / "dashboards").glob("*.json"))
    assert sorted(cm["data"]) == files and "raftkv-operator.json" in files
    for name in files:
        assert json.loads(cm["data"][name]) == json.loads((CHART / "dashboards" / name).read_text())


def test_values_schema_refuses_bad_values() -> None:
    for bad in ("operator.replicas=two", "operator.replcas=2", "cluster.storage.size=lots"):
        result = helm(
            "template",
            "rel",
            str(CHART),
            "--kube-version",
            KUBE_VERSION,
            "--set",
            bad,
            check=False,
        )
        assert result.returncode != 0 and "schema" in result.stderr, bad


def test_example_clusters_are_valid_resources_the_operator_accepts() -> None:
    example = yaml.safe_load((CHART / "examples" / "raftkvcluster.yaml").read_text())
    created = of_kind(render("--set", "cluster.create=true"), "RaftKVCluster")[0]
    for cluster in (example, created):
        k8s_schema.validate(cluster)
        ClusterSpec.from_dict(cluster["spec"], default_image="raftkv")
    assert (
        created["spec"]["version"]
        == yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"]
    )


def test_the_crd_schema_refuses_what_the_operator_cannot_run() -> None:
    good = {
        "apiVersion": "raftkv.io/v1alpha1",
        "kind": "RaftKVCluster",
        "metadata": {"name": "x"},
        "spec": {"size": 3, "version": "0.1.0"},
    }
    k8s_schema.validate(good)
    for spec in (
        {"size": 0, "version": "0.1.0"},
        {"size": 3},
        {"size": 3, "version": "0.1.0", "sise": 3},
        {"size": 3, "version": "0.1.0", "storage": {"reclaimPolicy": "Recycle"}},
        {"size": 3, "version": "0.1.0", "tls": {"client": {}}},
    ):
        with pytest.raises(jsonschema.ValidationError):
            k8s_schema.validate({**good, "spec": spec})


def test_the_crd_has_scale_status_and_printer_columns() -> None:
    crd = yaml.safe_load((CHART / "crds" / "raftkv.io_raftkvclusters.yaml").read_text())
    version = crd["spec"]["versions"][0]
    assert version["subresources"]["scale"] == {
        "specReplicasPath": ".spec.size",
        "statusReplicasPath": ".status.size",
        "labelSelectorPath": ".status.selector",
    }
    assert "status" in version["subresources"]
    columns = [c["name"] for c in version["additionalPrinterColumns"]]
    assert [c for c in columns if c != "Phase"] == ["Size", "Ready", "Leader", "Version", "Age"]


class _UniqueKeyLoader(yaml.SafeLoader):
    """Refuses a mapping with a key twice (PyYAML keeps the last one silently; so do Helm and
    the API server, so a duplicated schema property would lose the first copy unnoticed)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        keys = [self.construct_object(k, deep=deep) for k, _ in node.value]
        duplicates = {k for k in keys if keys.count(k) > 1}
        assert not duplicates, f"duplicate keys {duplicates} at line {node.start_mark.line + 1}"
        return super().construct_mapping(node, deep=deep)


def test_chart_yaml_files_have_no_duplicate_keys() -> None:
    files = [
        *sorted((CHART / "crds").glob("*.yaml")),
        *sorted((CHART / "examples").glob("*.yaml")),
        *sorted((CHART / "alerts").glob("*.yaml")),
        CHART / "values.yaml",
        CHART / "Chart.yaml",
    ]
    for path in files:
        list(yaml.load_all(path.read_text(), Loader=_UniqueKeyLoader))
