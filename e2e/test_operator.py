"""The operator's scenarios from issue #7, in the order a user lives them, on one cluster:
install; create a 3-member RaftKVCluster and write; scale 3→5→3 under writes; lose a member pod;
rolling upgrade under writes; delete the resource and see everything go.

The chart is installed with the Helm binary in `E2E_HELM` (extra flags in `E2E_HELM_ARGS`), its
operator Deployment runs with the chart's ServiceAccount (on the local tier the node agent runs
the pod with a projected token, so the real API server enforces the chart's RBAC). The tests
share one RaftKVCluster (bootstrapping costs a minute on a loaded machine) and each first waits
for the state it starts from.
"""

from __future__ import annotations

import os
import shlex
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from e2e.kubeapi import Kube, ns_path, wait_for
from e2e.support import (
    ContinuousWriter,
    MemberAccess,
    assert_no_acknowledged_write_lost,
    client_for,
    pod_ready,
    pods,
)

REPO = Path(__file__).resolve().parents[1]
# E2E_CHART: another chart directory or package (e.g. the one a release pipeline built).
CHART = Path(os.environ.get("E2E_CHART", REPO / "charts" / "raftkv"))
RELEASE = "raftkv"
RELEASE_NS = "raftkv-system"
GROUP, VERSION, PLURAL = "raftkv.io", "v1alpha1", "raftkvclusters"
CLUSTER = "e2e"
SELECTOR = f"app.kubernetes.io/name=raftkv,app.kubernetes.io/instance={CLUSTER}"
FIRST_VERSION = os.environ.get("E2E_VERSION", "e2e")
NEXT_VERSION = os.environ.get("E2E_NEXT_VERSION", "e2e-next")
IMAGE = os.environ.get("E2E_IMAGE_REPOSITORY", "raftkv")


def helm(*args: str) -> str:
    binary = os.environ.get("E2E_HELM", "helm")
    extra = shlex.split(os.environ.get("E2E_HELM_ARGS", ""))
    done = subprocess.run(
        [binary, *args, *extra], capture_output=True, text=True, check=False, timeout=300
    )
    if done.returncode != 0:
        raise RuntimeError(f"helm {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")
    return done.stdout


def cluster_path(namespace: str, name: str = "", sub: str = "") -> str:
    path = ns_path(namespace, PLURAL, name, group=GROUP, version=VERSION)
    return f"{path}/{sub}" if sub else path


def deployments_available(kube: Kube) -> bool:
    found = kube.list(ns_path(RELEASE_NS, "deployments", group="apps"))
    return bool(found) and all(
        any(
            c["type"] == "Available" and c["status"] == "True"
            for c in d.get("status", {}).get("conditions", [])
        )
        for d in found
    )


@pytest.fixture(scope="module")
def installed(kube: Kube) -> Iterator[None]:
    """`helm install` of charts/raftkv; uninstalled after the module."""
    if not (CHART / "Chart.yaml").exists() and not CHART.is_file():
        pytest.skip(
            "charts/raftkv/Chart.yaml missing: the chart (operator Deployment, RBAC) has not landed"
        )
    # A previous module's uninstall may still be deleting the release namespace.
    wait_for(
        f"namespace {RELEASE_NS} not terminating",
        lambda: (
            (kube.find(f"/api/v1/namespaces/{RELEASE_NS}") or {}).get("status", {}).get("phase")
            != "Terminating"
        ),
        timeout=300,
    )
    helm(
        "upgrade", "--install", RELEASE, str(CHART), "--namespace", RELEASE_NS, "--create-namespace"
    )
    try:
        wait_for(
            "the operator Deployment to be available",
            lambda: deployments_available(kube),
            timeout=300,
        )
        yield
    finally:
        subprocess.run(
            [os.environ.get("E2E_HELM", "helm"), "uninstall", RELEASE, "--namespace", RELEASE_NS],
            capture_output=True,
            check=False,
        )
        kube.delete(f"/api/v1/namespaces/{RELEASE_NS}")


@pytest.fixture(scope="module")
def cluster_ns(installed: None) -> str:
    """The chart's default watches only its release namespace (namespaced RBAC), so the
    cluster lives there."""
    return RELEASE_NS


@pytest.fixture(scope="module")
def access(kube: Kube) -> Iterator[MemberAccess]:
    access = MemberAccess(kube)
    try:
        yield access
    finally:
        access.close()


def resource(kube: Kube, namespace: str) -> dict[str, Any]:
    found = kube.find(cluster_path(namespace, CLUSTER))
    assert found is not None, "the RaftKVCluster exists"
    return found


def wait_cluster_ready(kube: Kube, namespace: str, size: int, timeout: float = 420) -> dict:
    """The resource reports `size` ready members and as many ready pods exist."""

    def ready() -> dict[str, Any] | None:
        body = resource(kube, namespace)
        status = body.get("status", {})
        if status.get("readyMembers") != size or len(status.get("members", [])) != size:
            return None
        found = pods(kube, namespace, SELECTOR)
        if len(found) != size or not all(pod_ready(p) for p in found):
            return None
        return body

    return wait_for(f"RaftKVCluster {CLUSTER} with {size} ready members", ready, timeout=timeout)


def endpoints_of(kube: Kube, access: MemberAccess, namespace: str) -> list[str]:
    return access.endpoints(namespace, SELECTOR)


def member_ids(access: MemberAccess, namespace: str) -> dict[str, int]:
    with client_for(access.endpoints(namespace, SELECTOR)) as client:
        return {m.name: m.id for m in client.member_list(timeout=10).members}


def test_install(kube: Kube, installed: None) -> None:
    crd = kube.get(f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{PLURAL}.{GROUP}")
    established = [c for c in crd["status"]["conditions"] if c["type"] == "Established"]
    assert established and established[0]["status"] == "True"
    served = crd["spec"]["versions"][0]
    assert "scale" in served["subresources"] and "status" in served["subresources"]
    operator_pods = kube.list(ns_path(RELEASE_NS, "pods"))
    assert operator_pods and all(pod_ready(p) for p in operator_pods)
    account = operator_pods[0]["spec"]["serviceAccountName"]
    assert account != "default", "the operator runs with the chart's own ServiceAccount"


def test_create_three_members_and_write(kube: Kube, cluster_ns: str, access: MemberAccess) -> None:
    body = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "RaftKVCluster",
        "metadata": {"name": CLUSTER},
        "spec": {
            "size": 3,
            "image": IMAGE,
            "version": FIRST_VERSION,
            "storage": {"size": "128Mi"},
        },
    }
    kube.create(cluster_path(cluster_ns), body)
    ready = wait_cluster_ready(kube, cluster_ns, 3)
    assert ready["status"].get("leader"), "the status names a leader"
    with client_for(endpoints_of(kube, access, cluster_ns)) as client:
        client.put("e2e/hello", "world", timeout=10)
        assert client.get("e2e/hello", timeout=10).kvs[0].value == b"world"
        assert len(client.member_list(timeout=10).members) == 3


def _scale(kube: Kube, namespace: str, size: int) -> None:
    kube.patch(cluster_path(namespace, CLUSTER, "scale"), {"spec": {"replicas": size}})


def test_scale_3_5_3_under_writes(kube: Kube, cluster_ns: str, access: MemberAccess) -> None:
    wait_cluster_ready(kube, cluster_ns, 3)
    prefix = "e2e/scale"
    with ContinuousWriter(lambda: endpoints_of(kube, access, cluster_ns), prefix) as w:
        w.wait_for_writes(20)
        _scale(kube, cluster_ns, 5)
        wait_cluster_ready(kube, cluster_ns, 5, timeout=600)
        w.wait_for_writes(20)
        assert len(member_ids(access, cluster_ns)) == 5
        _scale(kube, cluster_ns, 3)
        wait_cluster_ready(kube, cluster_ns, 3, timeout=600)
        w.wait_for_writes(20)
        log = w.stop()
    names = sorted(member_ids(access, cluster_ns))
    assert names == [f"{CLUSTER}-0", f"{CLUSTER}-1", f"{CLUSTER}-2"], "the highest ordinals went"
    with client_for(endpoints_of(kube, access, cluster_ns)) as client:
        assert_no_acknowledged_write_lost(client, log, prefix)
    print(f"scale 3→5→3: {log.summary()}")


def test_deleted_member_pod_rejoins_with_same_id(
    kube: Kube, cluster_ns: str, access: MemberAccess
) -> None:
    wait_cluster_ready(kube, cluster_ns, 3)
    before = member_ids(access, cluster_ns)
    victim = next(
        p for p in pods(kube, cluster_ns, SELECTOR) if p["metadata"]["name"] == f"{CLUSTER}-1"
    )
    kube.delete(ns_path(cluster_ns, "pods", victim["metadata"]["name"]))

    def replaced() -> bool:
        found = [
            p for p in pods(kube, cluster_ns, SELECTOR) if p["metadata"]["name"] == f"{CLUSTER}-1"
        ]
        return bool(found) and found[0]["metadata"]["uid"] != victim["metadata"]["uid"]

    wait_for(f"{CLUSTER}-1 recreated", replaced, timeout=300)
    wait_cluster_ready(kube, cluster_ns, 3)
    assert member_ids(access, cluster_ns) == before


def test_rolling_upgrade_under_writes(kube: Kube, cluster_ns: str, access: MemberAccess) -> None:
    wait_cluster_ready(kube, cluster_ns, 3)
    prefix = "e2e/upgrade"
    with ContinuousWriter(lambda: endpoints_of(kube, access, cluster_ns), prefix) as w:
        w.wait_for_writes(20)
        kube.patch(cluster_path(cluster_ns, CLUSTER), {"spec": {"version": NEXT_VERSION}})

        def upgraded() -> bool:
            found = pods(kube, cluster_ns, SELECTOR)
            images = {c["image"] for p in found for c in p["spec"]["containers"]}
            return (
                len(found) == 3
                and images == {f"{IMAGE}:{NEXT_VERSION}"}
                and all(pod_ready(p) for p in found)
            )

        wait_for("every member pod on the new version", upgraded, timeout=900)
        wait_cluster_ready(kube, cluster_ns, 3)
        w.wait_for_writes(20)
        log = w.stop()
    with client_for(endpoints_of(kube, access, cluster_ns)) as client:
        assert_no_acknowledged_write_lost(client, log, prefix)
    print(f"rolling upgrade: {log.summary()}")


def test_delete_resource_cleans_up(kube: Kube, cluster_ns: str) -> None:
    kube.delete(cluster_path(cluster_ns, CLUSTER), {"propagationPolicy": "Foreground"})

    def gone() -> bool:
        left = {
            "resource": kube.find(cluster_path(cluster_ns, CLUSTER)),
            "statefulsets": kube.list(ns_path(cluster_ns, "statefulsets", group="apps")),
            "services": kube.list(ns_path(cluster_ns, "services")),
            "pdbs": kube.list(ns_path(cluster_ns, "poddisruptionbudgets", group="policy")),
            "pods": pods(kube, cluster_ns, SELECTOR),
            "claims": kube.list(ns_path(cluster_ns, "persistentvolumeclaims")),
        }
        return not any(left.values())

    wait_for("every object of the cluster deleted", gone, timeout=300)
