"""Smoke test of the tier itself, without the operator: a plain StatefulSet of three raftkv pods
forms a cluster through the stable pod names of its headless Service, keeps its data and its
member ID when a pod is deleted and recreated (same claim, new pod IP), and its claims' storage
goes when the claims are deleted.

It exercises what the operator scenarios rely on: scheduling, downward-API env and `$(VAR)`
expansion, per-pod addresses, pod DNS names, claims bound to persistent storage, readiness from
the pod's probe, graceful deletion, and the StatefulSet and garbage-collector controllers.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from e2e.kubeapi import Kube, ns_path, wait_for
from e2e.support import MemberAccess, client_for, pod_ready, pods, wait_pods_ready

IMAGE = os.environ.get("E2E_IMAGE", "raftkv:e2e")
SELECTOR = "app=smoke"


def smoke_manifests(namespace: str) -> tuple[dict[str, Any], dict[str, Any]]:
    peer = f"smoke-peer.{namespace}.svc"
    initial = ",".join(f"smoke-{i}=http://smoke-{i}.{peer}:2380" for i in range(3))
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "smoke-peer"},
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,
            "selector": {"app": "smoke"},
            "ports": [{"name": "peer", "port": 2380}, {"name": "client", "port": 2379}],
        },
    }
    container = {
        "name": "raftkv",
        "image": IMAGE,
        "command": [
            "raftkv",
            "--name=$(POD_NAME)",
            "--data-dir=/var/lib/raftkv/data",
            "--listen-client-urls=http://$(POD_IP):2379",
            f"--advertise-client-urls=http://$(POD_NAME).{peer}:2379",
            "--listen-peer-urls=http://$(POD_IP):2380",
            f"--initial-advertise-peer-urls=http://$(POD_NAME).{peer}:2380",
            f"--initial-cluster={initial}",
            "--initial-cluster-token=smoke",
            "--initial-cluster-state=new",
        ],
        "env": [
            {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
        ],
        "ports": [{"name": "client", "containerPort": 2379}, {"containerPort": 2380}],
        "readinessProbe": {"httpGet": {"path": "/readyz", "port": "client"}, "periodSeconds": 2},
        "volumeMounts": [{"name": "data", "mountPath": "/var/lib/raftkv"}],
    }
    statefulset = {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": {"name": "smoke"},
        "spec": {
            "replicas": 3,
            "serviceName": "smoke-peer",
            "podManagementPolicy": "Parallel",
            "selector": {"matchLabels": {"app": "smoke"}},
            "template": {
                "metadata": {"labels": {"app": "smoke"}},
                "spec": {"containers": [container], "terminationGracePeriodSeconds": 10},
            },
            "volumeClaimTemplates": [
                {
                    "metadata": {"name": "data"},
                    "spec": {
                        "accessModes": ["ReadWriteOnce"],
                        "resources": {"requests": {"storage": "64Mi"}},
                    },
                }
            ],
        },
    }
    return service, statefulset


def member_ids(access: MemberAccess, namespace: str) -> dict[str, int]:
    with client_for(access.endpoints(namespace, SELECTOR)) as client:
        return {m.name: m.id for m in client.member_list(timeout=10).members}


def test_statefulset_of_raftkv_pods_forms_a_cluster_and_survives_pod_loss(
    kube: Kube, namespace: str, access: MemberAccess
) -> None:
    service, statefulset = smoke_manifests(namespace)
    kube.create(ns_path(namespace, "services"), service)
    kube.create(ns_path(namespace, "statefulsets", group="apps"), statefulset)
    first = wait_pods_ready(kube, namespace, SELECTOR, 3)
    assert len({p["status"]["podIP"] for p in first}) == 3, "each pod has its own address"

    ids = wait_for(
        "3 named members",
        lambda: (m := member_ids(access, namespace)) and len(m) == 3 and all(m) and m,
    )
    assert sorted(ids) == ["smoke-0", "smoke-1", "smoke-2"]
    with client_for(access.endpoints(namespace, SELECTOR)) as client:
        client.put("smoke/greeting", "hello", timeout=10)

    # The pod goes (SIGTERM, grace period), the StatefulSet recreates it with the same claim.
    victim = first[1]
    kube.delete(ns_path(namespace, "pods", victim["metadata"]["name"]))

    def recreated() -> bool:
        found = [p for p in pods(kube, namespace, SELECTOR) if p["metadata"]["name"] == "smoke-1"]
        return (
            bool(found)
            and found[0]["metadata"]["uid"] != victim["metadata"]["uid"]
            and (pod_ready(found[0]))
        )

    wait_for("smoke-1 recreated and ready", recreated, timeout=300)
    assert member_ids(access, namespace) == ids, "the recreated pod kept its member ID"
    smoke1 = next(p for p in pods(kube, namespace, SELECTOR) if p["metadata"]["name"] == "smoke-1")
    with client_for([access.endpoint(smoke1)]) as client:
        value = client.get("smoke/greeting", timeout=10).kvs[0].value
    assert value == b"hello", "the recreated member serves the data written before"

    # Deleting the StatefulSet and its claims releases the storage (local tier: directories).
    claims = kube.list(ns_path(namespace, "persistentvolumeclaims"))
    assert len(claims) == 3 and all(c["status"]["phase"] == "Bound" for c in claims)
    kube.delete(
        ns_path(namespace, "statefulsets", "smoke", group="apps"),
        {"propagationPolicy": "Foreground"},
    )
    wait_for("pods gone", lambda: not pods(kube, namespace, SELECTOR), timeout=180)
    for claim in claims:
        kube.delete(ns_path(namespace, "persistentvolumeclaims", claim["metadata"]["name"]))
    wait_for(
        "claims gone",
        lambda: not kube.list(ns_path(namespace, "persistentvolumeclaims")),
        timeout=120,
    )
    root = os.environ.get("E2E_LOCAL_ROOT")
    if root:
        volumes = Path(root) / "node" / "volumes"
        wait_for(
            "claim directories removed",
            lambda: not any((volumes / c["metadata"]["uid"]).exists() for c in claims),
            timeout=60,
        )
