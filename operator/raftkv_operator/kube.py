"""The few Kubernetes calls the reconciler makes, behind a small protocol.

The reconciler needs only: server-side apply, get, list by label, delete, merge-patching
metadata, and writing the RaftKVCluster's status. `Kube` is that protocol, so reconciler tests
can run against an in-memory fake; the real implementation is `KubeClient`, which drives the
official `kubernetes` client's ApiClient with generic paths (one code path for every kind
instead of one generated API class per kind) in a worker thread, keeping the operator's event
loop free.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any, Protocol

from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.client.exceptions import ApiException

from raftkv_operator.model import GROUP, PLURAL, VERSION

FIELD_MANAGER = "raftkv-operator"

# kind → (API path prefix, plural)
KINDS: dict[str, tuple[str, str]] = {
    "Service": ("/api/v1", "services"),
    "Pod": ("/api/v1", "pods"),
    "PersistentVolumeClaim": ("/api/v1", "persistentvolumeclaims"),
    "StatefulSet": ("/apis/apps/v1", "statefulsets"),
    "PodDisruptionBudget": ("/apis/policy/v1", "poddisruptionbudgets"),
}


class Kube(Protocol):
    async def apply(self, manifest: Mapping[str, Any]) -> dict[str, Any]:
        """Create or update `manifest` by server-side apply (the operator owns its fields)."""
        ...

    async def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None: ...

    async def list(self, kind: str, namespace: str, selector: str) -> list[dict[str, Any]]: ...

    async def delete(self, kind: str, namespace: str, name: str) -> None:
        """Delete; an object already gone counts as deleted."""
        ...

    async def annotate(
        self, kind: str, namespace: str, name: str, annotations: Mapping[str, str | None]
    ) -> None:
        """Merge annotations (None removes one)."""
        ...

    async def patch_cluster_status(
        self, namespace: str, name: str, status: Mapping[str, Any]
    ) -> None:
        """Merge `status` into a RaftKVCluster's status subresource (lists are replaced)."""
        ...


def load_config() -> None:
    """In-cluster credentials when running in a pod, else the local kubeconfig."""
    try:
        k8s_config.load_incluster_config()
    except k8s_config.ConfigException:
        k8s_config.load_kube_config()


class KubeClient:
    def __init__(self, api: k8s.ApiClient | None = None) -> None:
        self._api = api or k8s.ApiClient()

    def _path(self, kind: str, namespace: str, name: str | None = None) -> str:
        prefix, plural = KINDS[kind]
        path = f"{prefix}/namespaces/{namespace}/{plural}"
        return f"{path}/{name}" if name else path

    def _call(
        self,
        method: str,
        path: str,
        *,
        query: list[tuple[str, str]] | None = None,
        body: Any = None,
        content_type: str = "application/json",
    ) -> Any:
        return self._api.call_api(
            path,
            method,
            query_params=query or [],
            header_params={"Content-Type": content_type, "Accept": "application/json"},
            body=body,
            response_type="object",
            auth_settings=["BearerToken"],
            _return_http_data_only=True,
        )

    async def apply(self, manifest: Mapping[str, Any]) -> dict[str, Any]:
        meta = manifest["metadata"]
        path = self._path(manifest["kind"], meta["namespace"], meta["name"])
        query = [("fieldManager", FIELD_MANAGER), ("force", "true")]
        return await asyncio.to_thread(
            self._call,
            "PATCH",
            path,
            query=query,
            body=dict(manifest),
            content_type="application/apply-patch+yaml",
        )

    async def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return await asyncio.to_thread(self._call, "GET", self._path(kind, namespace, name))
        except ApiException as error:
            if error.status == 404:
                return None
            raise

    async def list(self, kind: str, namespace: str, selector: str) -> list[dict[str, Any]]:
        result = await asyncio.to_thread(
            self._call, "GET", self._path(kind, namespace), query=[("labelSelector", selector)]
        )
        return list(result.get("items") or [])

    async def delete(self, kind: str, namespace: str, name: str) -> None:
        try:
            await asyncio.to_thread(self._call, "DELETE", self._path(kind, namespace, name))
        except ApiException as error:
            if error.status != 404:
                raise

    async def patch_cluster_status(
        self, namespace: str, name: str, status: Mapping[str, Any]
    ) -> None:
        path = f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{PLURAL}/{name}/status"
        await asyncio.to_thread(
            self._call,
            "PATCH",
            path,
            body={"status": dict(status)},
            content_type="application/merge-patch+json",
        )

    async def annotate(
        self, kind: str, namespace: str, name: str, annotations: Mapping[str, str | None]
    ) -> None:
        await asyncio.to_thread(
            self._call,
            "PATCH",
            self._path(kind, namespace, name),
            body={"metadata": {"annotations": dict(annotations)}},
            content_type="application/merge-patch+json",
        )
