"""The manifests the operator sends, validated against Kubernetes' schemas, and the spec rules.

These are what a member pod runs: the full command line (no entrypoint in the image), the
downward-API environment it refers to, and the settings Raft depends on (parallel start,
OnDelete updates, peer DNS before readiness).
"""

from __future__ import annotations

from typing import Any

import pytest
from raftkv_operator import resources
from raftkv_operator.model import ClusterSpec, InvalidSpec, Names

from tests.chart import k8s_schema

NAMES = Names("kv", "prod")
OWNER = {
    "apiVersion": "raftkv.io/v1alpha1",
    "kind": "RaftKVCluster",
    "name": "kv",
    "uid": "0c0ffee0-0000-4000-8000-000000000000",
    "controller": True,
    "blockOwnerDeletion": True,
}


def spec(**extra: Any) -> ClusterSpec:
    return ClusterSpec.from_dict({"size": 3, "version": "0.1.0", **extra}, default_image="raftkv")


def sts(s: ClusterSpec, members: tuple[int, ...] = (0, 1, 2), state: str = "new") -> dict:
    return resources.statefulset(
        s, NAMES, OWNER, replicas=len(members), members=members, state=state, token="prod-kv-1"
    )


def flag(command: list[str], name: str) -> str:
    return command[command.index(name) + 1]


def test_every_manifest_is_a_valid_kubernetes_object() -> None:
    full = spec(
        tls={"client": {"secretName": "c", "clientCertAuth": True}, "peer": {"secretName": "p"}},
        resources={"requests": {"cpu": "500m", "memory": "1Gi"}},
        affinity={"podAntiAffinity": {}},
        tolerations=[{"key": "k", "operator": "Exists"}],
        nodeSelector={"disk": "ssd"},
        topologySpreadConstraints=[
            {"maxSkew": 1, "topologyKey": "zone", "whenUnsatisfiable": "DoNotSchedule"}
        ],
        storage={"size": "5Gi", "storageClassName": "fast", "reclaimPolicy": "Retain"},
        podAnnotations={"a": "b"},
        options={"snapshot-count": "100"},
    )
    for manifest in (
        sts(spec()),
        sts(full),
        resources.peer_service(NAMES, OWNER),
        resources.client_service(NAMES, OWNER),
        resources.pod_disruption_budget(NAMES, OWNER),
    ):
        k8s_schema.validate(manifest)


def test_member_pods_carry_their_full_command_with_downward_api_variables() -> None:
    pod = sts(spec())["spec"]["template"]["spec"]
    container = pod["containers"][0]
    command = container["command"]
    assert command[:3] == ["raftkv", "--name", "$(POD_NAME)"]
    assert flag(command, "--listen-peer-urls") == "http://$(POD_IP):2380"
    assert flag(command, "--listen-client-urls") == "http://$(POD_IP):2379"
    assert flag(command, "--initial-advertise-peer-urls") == (
        "http://$(POD_NAME).kv-peer.$(POD_NAMESPACE).svc.cluster.local:2380"
    )
    assert flag(command, "--initial-cluster") == ",".join(
        f"kv-{i}=http://kv-{i}.kv-peer.prod.svc.cluster.local:2380" for i in range(3)
    )
    assert flag(command, "--initial-cluster-state") == "new"
    env = {e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"] for e in container["env"]}
    assert env == {
        "POD_NAME": "metadata.name",
        "POD_NAMESPACE": "metadata.namespace",
        "POD_IP": "status.podIP",
    }
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/livez"


def test_pods_start_together_and_are_only_restarted_by_the_operator() -> None:
    s = sts(spec())["spec"]
    assert s["podManagementPolicy"] == "Parallel"
    assert s["updateStrategy"] == {"type": "OnDelete"}
    assert resources.peer_service(NAMES, OWNER)["spec"]["publishNotReadyAddresses"] is True
    assert resources.pod_disruption_budget(NAMES, OWNER)["spec"]["maxUnavailable"] == 1


def test_a_joining_member_lists_the_current_membership_as_existing() -> None:
    command = sts(spec(), members=(0, 1, 2, 3), state="existing")["spec"]["template"]["spec"][
        "containers"
    ][0]["command"]
    assert flag(command, "--initial-cluster-state") == "existing"
    assert flag(command, "--initial-cluster").count("=") == 4


def test_member_pods_run_unprivileged_with_a_read_only_root() -> None:
    pod = sts(spec())["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["containers"][0]["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod["containers"][0]["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert pod["automountServiceAccountToken"] is False


def test_tls_secrets_are_mounted_and_passed_with_etcds_flags() -> None:
    s = spec(
        tls={
            "client": {"secretName": "kv-client", "clientCertAuth": True},
            "peer": {"secretName": "kv-peer-tls"},
        }
    )
    pod = sts(s)["spec"]["template"]["spec"]
    command = pod["containers"][0]["command"]
    assert flag(command, "--listen-peer-urls").startswith("https://")
    assert flag(command, "--cert-file") == "/etc/raftkv/tls/client/tls.crt"
    assert flag(command, "--peer-trusted-ca-file") == "/etc/raftkv/tls/peer/ca.crt"
    assert "--client-cert-auth" in command and "--peer-client-cert-auth" not in command
    secrets = {v["secret"]["secretName"] for v in pod["volumes"] if "secret" in v}
    assert secrets == {"kv-client", "kv-peer-tls"}
    mounts = {m["mountPath"] for m in pod["containers"][0]["volumeMounts"]}
    assert {"/etc/raftkv/tls/client", "/etc/raftkv/tls/peer"} <= mounts
    assert pod["containers"][0]["readinessProbe"]["httpGet"]["scheme"] == "HTTPS"


def test_options_become_flags_and_operator_flags_cannot_be_overridden() -> None:
    command = sts(spec(options={"snapshot-count": "100"}))["spec"]["template"]["spec"][
        "containers"
    ][0]["command"]
    assert command[-1] == "--snapshot-count=100"
    with pytest.raises(InvalidSpec, match="initial-cluster"):
        spec(options={"initial-cluster": "x=http://y"})
    with pytest.raises(InvalidSpec):
        spec(options={"--snapshot-count": "1"})


def test_the_image_is_repository_and_version_unless_pinned_by_digest() -> None:
    assert spec(image="reg/raftkv").full_image == "reg/raftkv:0.1.0"
    pinned = "reg/raftkv@sha256:" + "0" * 64
    assert spec(image=pinned).full_image == pinned
    assert spec().full_image == "raftkv:0.1.0"
    with pytest.raises(InvalidSpec):
        ClusterSpec.from_dict({"size": 3}, default_image="raftkv")


def test_ordinals_are_numbers_not_text() -> None:
    assert NAMES.ordinal_of_pod("kv-10") == 10
    assert NAMES.ordinal_of_pod("kv-010") is None
    assert NAMES.ordinal_of_pod("kvx-1") is None
    assert NAMES.ordinal_of_peer_url(NAMES.peer_url(12)) == 12
    assert NAMES.ordinal_of_peer_url("http://kv-1.kv-peer.other.svc.cluster.local:2380") is None
    assert NAMES.ordinal_of_volume("data-kv-3") == 3
