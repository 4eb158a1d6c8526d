"""Manifests of the objects a RaftKVCluster owns, as plain dicts (server-side applied).

Pure functions of the spec and of the membership the planner decided, so a test can read exactly
what the operator will send. Choices that matter for Raft:

- **Parallel pod management**: founding members must start together (an ordered start would wait
  for pod 0 to become ready, which needs a quorum of pods that were never created).
- **OnDelete updates**: the operator changes the pod template whenever membership changes (the
  `--initial-cluster` a joining member needs), and must never let the StatefulSet controller
  restart members on its own. Upgrades delete pods one at a time in an order the planner picks.
- **The peer Service publishes not-ready addresses**, because members must reach each other
  before any of them is ready.
- The container carries its full command (no entrypoint script), with the pod's name, IP and
  namespace from the downward API.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from raftkv_operator.model import (
    CLIENT_PORT,
    DATA_DIR,
    DATA_MOUNT,
    PEER_PORT,
    TLS_MOUNT,
    VOLUME_CLAIM,
    ClusterSpec,
    Names,
)

Manifest = dict[str, Any]

RUN_AS = 10001
# Annotations the operator reads back from the objects it owns.
STATE_ANNOTATION = "raftkv.io/initial-cluster-state"
MEMBER_ID_ANNOTATION = "raftkv.io/member-id"
CLUSTER_ID_ANNOTATION = "raftkv.io/cluster-id"
REMOVED_ANNOTATION = "raftkv.io/removed"


def _meta(name: str, names: Names, owner: Mapping[str, Any] | None, **extra: Any) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": names.namespace, "labels": names.labels()}
    if owner is not None:
        meta["ownerReferences"] = [dict(owner)]
    meta.update(extra)
    return meta


def owner_reference(body: Mapping[str, Any]) -> dict[str, Any]:
    """An ownerReference to the RaftKVCluster, so deleting it garbage-collects its objects."""
    return {
        "apiVersion": body["apiVersion"],
        "kind": body["kind"],
        "name": body["metadata"]["name"],
        "uid": body["metadata"]["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def peer_service(names: Names, owner: Mapping[str, Any] | None) -> Manifest:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(names.peer_service, names, owner),
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,
            "selector": names.selector(),
            "ports": [
                {"name": "peer", "port": PEER_PORT, "targetPort": PEER_PORT},
                {"name": "client", "port": CLIENT_PORT, "targetPort": CLIENT_PORT},
            ],
        },
    }


def client_service(names: Names, owner: Mapping[str, Any] | None) -> Manifest:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(names.client_service, names, owner),
        "spec": {
            "type": "ClusterIP",
            "selector": names.selector(),
            "ports": [{"name": "client", "port": CLIENT_PORT, "targetPort": CLIENT_PORT}],
        },
    }


def pod_disruption_budget(names: Names, owner: Mapping[str, Any] | None) -> Manifest:
    """At most one member voluntarily down at a time (below that a 3-member cluster loses quorum
    at the second eviction)."""
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": _meta(names.pdb, names, owner),
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": names.selector()}},
    }


def initial_cluster(names: Names, ordinals: Sequence[int], *, tls: bool) -> str:
    return ",".join(f"{names.pod(o)}={names.peer_url(o, tls=tls)}" for o in sorted(ordinals))


def member_command(
    spec: ClusterSpec,
    names: Names,
    *,
    members: Sequence[int],
    state: str,
    token: str,
) -> list[str]:
    """The member's command line; `members` are the ordinals `--initial-cluster` lists."""
    client_scheme = "https" if spec.tls.client else "http"
    peer_scheme = "https" if spec.tls.peer else "http"
    own_host = f"$(POD_NAME).{names.peer_service}.$(POD_NAMESPACE).svc.{names.cluster_domain}"
    command = [
        "raftkv",
        "--name",
        "$(POD_NAME)",
        "--data-dir",
        DATA_DIR,
        "--listen-peer-urls",
        f"{peer_scheme}://$(POD_IP):{PEER_PORT}",
        "--listen-client-urls",
        f"{client_scheme}://$(POD_IP):{CLIENT_PORT}",
        "--advertise-client-urls",
        f"{client_scheme}://{own_host}:{CLIENT_PORT}",
        "--initial-advertise-peer-urls",
        f"{peer_scheme}://{own_host}:{PEER_PORT}",
        "--initial-cluster",
        initial_cluster(names, members, tls=spec.tls.peer),
        "--initial-cluster-state",
        state,
        "--initial-cluster-token",
        token,
    ]
    if spec.tls.client:
        base = f"{TLS_MOUNT}/client"
        command += [
            "--cert-file",
            f"{base}/tls.crt",
            "--key-file",
            f"{base}/tls.key",
            "--trusted-ca-file",
            f"{base}/ca.crt",
        ]
        if spec.tls.client_cert_auth:
            command += ["--client-cert-auth"]
    if spec.tls.peer:
        base = f"{TLS_MOUNT}/peer"
        command += [
            "--peer-cert-file",
            f"{base}/tls.crt",
            "--peer-key-file",
            f"{base}/tls.key",
            "--peer-trusted-ca-file",
            f"{base}/ca.crt",
        ]
        if spec.tls.peer_client_cert_auth:
            command += ["--peer-client-cert-auth"]
    for flag, value in sorted(spec.options.items()):
        command.append(f"--{flag}={value}")
    return command


def _probe(path: str, scheme: str, **timing: int) -> dict[str, Any]:
    return {"httpGet": {"path": path, "port": CLIENT_PORT, "scheme": scheme}, **timing}


def _downward(name: str, path: str) -> dict[str, Any]:
    return {"name": name, "valueFrom": {"fieldRef": {"fieldPath": path}}}


def statefulset(
    spec: ClusterSpec,
    names: Names,
    owner: Mapping[str, Any] | None,
    *,
    replicas: int,
    members: Sequence[int],
    state: str,
    token: str,
    init_containers: Sequence[Mapping[str, Any]] = (),
) -> Manifest:
    """The members' StatefulSet: `replicas` pods, `--initial-cluster` from `members`;
    `init_containers` run before the member (the restore and recovery steps)."""
    scheme = "HTTPS" if spec.tls.client else "HTTP"
    volumes: list[dict[str, Any]] = [{"name": "tmp", "emptyDir": {"medium": "Memory"}}]
    mounts: list[dict[str, Any]] = [
        {"name": VOLUME_CLAIM, "mountPath": DATA_MOUNT},
        {"name": "tmp", "mountPath": "/tmp"},
    ]
    for side, secret in (("client", spec.tls.client_secret), ("peer", spec.tls.peer_secret)):
        if secret is not None:
            volumes.append(
                {"name": f"tls-{side}", "secret": {"secretName": secret, "defaultMode": 0o440}}
            )
            mounts.append(
                {"name": f"tls-{side}", "mountPath": f"{TLS_MOUNT}/{side}", "readOnly": True}
            )
    container: dict[str, Any] = {
        "name": "raftkv",
        "image": spec.full_image,
        "imagePullPolicy": spec.image_pull_policy,
        "command": member_command(spec, names, members=members, state=state, token=token),
        "env": [
            _downward("POD_NAME", "metadata.name"),
            _downward("POD_NAMESPACE", "metadata.namespace"),
            _downward("POD_IP", "status.podIP"),
        ],
        "ports": [
            {"name": "client", "containerPort": CLIENT_PORT},
            {"name": "peer", "containerPort": PEER_PORT},
        ],
        "readinessProbe": _probe("/readyz", scheme, periodSeconds=5, failureThreshold=3),
        "livenessProbe": _probe(
            "/livez", scheme, initialDelaySeconds=30, periodSeconds=10, failureThreshold=6
        ),
        "volumeMounts": mounts,
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
            "capabilities": {"drop": ["ALL"]},
        },
    }
    if spec.resources:
        container["resources"] = dict(spec.resources)
    pod_spec: dict[str, Any] = {
        "containers": [container],
        "volumes": volumes,
        "terminationGracePeriodSeconds": 30,
        "enableServiceLinks": False,
        "automountServiceAccountToken": False,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": RUN_AS,
            "runAsGroup": RUN_AS,
            "fsGroup": RUN_AS,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
    }
    if init_containers:
        pod_spec["initContainers"] = [dict(c) for c in init_containers]
    if spec.affinity:
        pod_spec["affinity"] = dict(spec.affinity)
    if spec.tolerations:
        pod_spec["tolerations"] = [dict(t) for t in spec.tolerations]
    if spec.node_selector:
        pod_spec["nodeSelector"] = dict(spec.node_selector)
    if spec.topology_spread:
        pod_spec["topologySpreadConstraints"] = [dict(t) for t in spec.topology_spread]
    claim_spec: dict[str, Any] = {
        "accessModes": ["ReadWriteOnce"],
        "resources": {"requests": {"storage": spec.storage_size}},
    }
    if spec.storage_class:
        claim_spec["storageClassName"] = spec.storage_class
    template_meta: dict[str, Any] = {"labels": names.labels()}
    if spec.pod_annotations:
        template_meta["annotations"] = dict(spec.pod_annotations)
    return {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": _meta(names.statefulset, names, owner, annotations={STATE_ANNOTATION: state}),
        "spec": {
            "replicas": replicas,
            "serviceName": names.peer_service,
            "podManagementPolicy": "Parallel",
            "updateStrategy": {"type": "OnDelete"},
            # Scaled-away claims are the operator's business (after the member is removed);
            # deleting the StatefulSet deletes them only under the Delete reclaim policy.
            "persistentVolumeClaimRetentionPolicy": {
                "whenDeleted": spec.reclaim_policy,
                "whenScaled": "Retain",
            },
            "selector": {"matchLabels": names.selector()},
            "template": {"metadata": template_meta, "spec": pod_spec},
            "volumeClaimTemplates": [
                {
                    "apiVersion": "v1",
                    "kind": "PersistentVolumeClaim",
                    "metadata": {"name": VOLUME_CLAIM, "labels": names.labels()},
                    "spec": claim_spec,
                }
            ],
        },
    }
