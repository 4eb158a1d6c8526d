"""The RaftKVCluster spec as typed values, and the names derived from it.

Everything else in the operator works from `ClusterSpec` and `Names` instead of raw dicts, so the
defaults and the validation the CRD schema cannot express live in one place. The CRD schema
(charts/raftkv/crds/) applies the same defaults; repeating them here keeps the operator correct
against objects written before a default existed.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

GROUP = "raftkv.io"
VERSION = "v1alpha1"
PLURAL = "raftkvclusters"
KIND = "RaftKVCluster"

CLIENT_PORT = 2379
PEER_PORT = 2380
DATA_MOUNT = "/var/lib/raftkv"
DATA_DIR = f"{DATA_MOUNT}/data"
TLS_MOUNT = "/etc/raftkv/tls"
VOLUME_CLAIM = "data"

# Flags the operator sets itself; `spec.options` may not override them.
OWNED_FLAGS = frozenset(
    {
        "name",
        "data-dir",
        "listen-peer-urls",
        "listen-client-urls",
        "advertise-client-urls",
        "initial-advertise-peer-urls",
        "initial-cluster",
        "initial-cluster-state",
        "initial-cluster-token",
        "cert-file",
        "key-file",
        "trusted-ca-file",
        "client-cert-auth",
        "peer-cert-file",
        "peer-key-file",
        "peer-trusted-ca-file",
        "peer-client-cert-auth",
    }
)
_FLAG = re.compile(r"^[a-z0-9][a-z0-9-]*$")


class InvalidSpec(ValueError):
    """The resource asks for something the operator refuses to do (a permanent error)."""


@dataclass(frozen=True)
class TLSSpec:
    """Secrets of type kubernetes.io/tls (tls.crt, tls.key, ca.crt) for each side."""

    client_secret: str | None = None
    peer_secret: str | None = None
    client_cert_auth: bool = False
    peer_client_cert_auth: bool = False

    @property
    def client(self) -> bool:
        return self.client_secret is not None

    @property
    def peer(self) -> bool:
        return self.peer_secret is not None


@dataclass(frozen=True)
class ClusterSpec:
    size: int
    image: str
    version: str
    image_pull_policy: str = "IfNotPresent"
    storage_size: str = "1Gi"
    storage_class: str | None = None
    reclaim_policy: str = "Delete"
    resources: Mapping[str, Any] = field(default_factory=dict)
    affinity: Mapping[str, Any] | None = None
    tolerations: tuple[Mapping[str, Any], ...] = ()
    node_selector: Mapping[str, str] = field(default_factory=dict)
    topology_spread: tuple[Mapping[str, Any], ...] = ()
    pdb_enabled: bool = True
    tls: TLSSpec = field(default_factory=TLSSpec)
    options: Mapping[str, str] = field(default_factory=dict)
    pod_annotations: Mapping[str, str] = field(default_factory=dict)

    @property
    def full_image(self) -> str:
        """`image` with `version` as its tag (an image given by digest is used as is)."""
        return self.image if "@" in self.image else f"{self.image}:{self.version}"

    @classmethod
    def from_dict(cls, spec: Mapping[str, Any], *, default_image: str) -> ClusterSpec:
        size = int(spec.get("size", 3))
        if size < 1:
            raise InvalidSpec(f"spec.size must be at least 1, not {size}")
        version = str(spec.get("version") or "").strip()
        if not version:
            raise InvalidSpec("spec.version is required (the image tag to run)")
        storage = spec.get("storage") or {}
        reclaim = str(storage.get("reclaimPolicy", "Delete"))
        if reclaim not in ("Delete", "Retain"):
            raise InvalidSpec(f"spec.storage.reclaimPolicy must be Delete or Retain, not {reclaim}")
        tls = spec.get("tls") or {}
        options = {str(k): str(v) for k, v in (spec.get("options") or {}).items()}
        for flag in options:
            if not _FLAG.match(flag):
                raise InvalidSpec(f"spec.options: {flag!r} is not a flag name (without the --)")
            if flag in OWNED_FLAGS:
                raise InvalidSpec(f"spec.options: --{flag} is set by the operator")
        pdb = spec.get("podDisruptionBudget") or {}
        return cls(
            size=size,
            image=str(spec.get("image") or default_image),
            version=version,
            image_pull_policy=str(spec.get("imagePullPolicy", "IfNotPresent")),
            storage_size=str(storage.get("size", "1Gi")),
            storage_class=storage.get("storageClassName"),
            reclaim_policy=reclaim,
            resources=dict(spec.get("resources") or {}),
            affinity=spec.get("affinity"),
            tolerations=tuple(spec.get("tolerations") or ()),
            node_selector=dict(spec.get("nodeSelector") or {}),
            topology_spread=tuple(spec.get("topologySpreadConstraints") or ()),
            pdb_enabled=bool(pdb.get("enabled", True)),
            tls=TLSSpec(
                client_secret=(tls.get("client") or {}).get("secretName"),
                peer_secret=(tls.get("peer") or {}).get("secretName"),
                client_cert_auth=bool((tls.get("client") or {}).get("clientCertAuth", False)),
                peer_client_cert_auth=bool((tls.get("peer") or {}).get("clientCertAuth", False)),
            ),
            options=options,
            pod_annotations=dict(spec.get("podAnnotations") or {}),
        )


@dataclass(frozen=True)
class Names:
    """Names of the objects and URLs of one cluster. Pod `<cluster>-<ordinal>` is member
    `<cluster>-<ordinal>`; its peer URL uses the headless peer Service's DNS name, which stays
    the same when the pod is recreated with another IP."""

    cluster: str
    namespace: str
    cluster_domain: str = "cluster.local"

    @property
    def statefulset(self) -> str:
        return self.cluster

    @property
    def peer_service(self) -> str:
        return f"{self.cluster}-peer"

    @property
    def client_service(self) -> str:
        return f"{self.cluster}-client"

    @property
    def pdb(self) -> str:
        return self.cluster

    def pod(self, ordinal: int) -> str:
        return f"{self.cluster}-{ordinal}"

    def volume(self, ordinal: int) -> str:
        return f"{VOLUME_CLAIM}-{self.pod(ordinal)}"

    def host(self, ordinal: int) -> str:
        return f"{self.pod(ordinal)}.{self.peer_service}.{self.namespace}.svc.{self.cluster_domain}"

    def peer_url(self, ordinal: int, *, tls: bool = False) -> str:
        return f"{'https' if tls else 'http'}://{self.host(ordinal)}:{PEER_PORT}"

    def ordinal_of_pod(self, pod_name: str) -> int | None:
        """The ordinal of `<cluster>-<n>`, None for any other name (numbers, not text: 10 > 9)."""
        prefix = f"{self.cluster}-"
        rest = pod_name[len(prefix) :] if pod_name.startswith(prefix) else ""
        return int(rest) if rest.isdigit() and str(int(rest)) == rest else None

    def ordinal_of_peer_url(self, url: str) -> int | None:
        """The ordinal a member's peer URL points at, None when it is not one of this cluster's."""
        host = url.split("://", 1)[-1].rsplit(":", 1)[0]
        pod, _, domain = host.partition(".")
        expected = f"{self.peer_service}.{self.namespace}.svc"
        if domain != expected and not domain.startswith(expected + "."):
            return None
        return self.ordinal_of_pod(pod)

    def ordinal_of_volume(self, claim: str) -> int | None:
        prefix = f"{VOLUME_CLAIM}-"
        return self.ordinal_of_pod(claim[len(prefix) :]) if claim.startswith(prefix) else None

    def labels(self) -> dict[str, str]:
        return {
            "app.kubernetes.io/name": "raftkv",
            "app.kubernetes.io/instance": self.cluster,
            "app.kubernetes.io/managed-by": "raftkv-operator",
        }

    def selector(self) -> dict[str, str]:
        return {
            "app.kubernetes.io/name": "raftkv",
            "app.kubernetes.io/instance": self.cluster,
        }

    def selector_string(self) -> str:
        return ",".join(f"{k}={v}" for k, v in self.selector().items())
