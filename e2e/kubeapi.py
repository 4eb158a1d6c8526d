"""A small JSON-in, JSON-out wrapper over the `kubernetes` client's authenticated transport.

The e2e tests and the node agent work with plain dicts as the API server sends them (the generated
model classes drop unknown fields and make custom resources awkward); the `kubernetes` package
still does the kubeconfig parsing, TLS and auth. `KUBECONFIG` selects the cluster, so the same code
runs against the local tier and kind.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any, TypeVar

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

T = TypeVar("T")
Obj = dict[str, Any]

MERGE_PATCH = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"


class Kube:
    """Raw REST calls with dict bodies; errors are `ApiException` (`.status` is the HTTP code)."""

    def __init__(self, kubeconfig: str | None = None) -> None:
        configuration = client.Configuration()
        config.load_kube_config(config_file=kubeconfig, client_configuration=configuration)
        self.api_client = client.ApiClient(configuration)
        self.host = configuration.host

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        query: dict[str, Any] | None = None,
        content_type: str = "application/json",
        timeout: float = 30.0,
    ) -> Obj:
        response = self.api_client.call_api(
            path,
            method,
            query_params=list((query or {}).items()),
            header_params={"Content-Type": content_type, "Accept": "application/json"},
            body=body,
            auth_settings=["BearerToken"],
            _preload_content=False,
            _return_http_data_only=True,
            _request_timeout=timeout,
        )
        data = response.data
        return json.loads(data) if data else {}

    def get(self, path: str, **query: Any) -> Obj:
        return self.request("GET", path, query=query)

    def find(self, path: str) -> Obj | None:
        """The object at `path`, or None when it does not exist."""
        try:
            return self.get(path)
        except ApiException as error:
            if error.status == 404:
                return None
            raise

    def list(self, path: str, **query: Any) -> list[Obj]:
        return list(self.get(path, **query).get("items", []))

    def create(self, path: str, body: Obj) -> Obj:
        return self.request("POST", path, body)

    def apply(self, path: str, body: Obj) -> Obj:
        """Create `body` under the collection `path`, or merge-patch it when it exists."""
        try:
            return self.create(path, body)
        except ApiException as error:
            if error.status != 409:
                raise
        return self.patch(f"{path}/{body['metadata']['name']}", body)

    def patch(self, path: str, body: Any, content_type: str = MERGE_PATCH) -> Obj:
        return self.request("PATCH", path, body, content_type=content_type)

    def delete(self, path: str, body: Obj | None = None, missing_ok: bool = True) -> Obj:
        try:
            return self.request("DELETE", path, body)
        except ApiException as error:
            if missing_ok and error.status == 404:
                return {}
            raise


def ns_path(
    namespace: str, plural: str, name: str = "", group: str = "", version: str = "v1"
) -> str:
    """The REST path of a namespaced collection or object (core group when `group` is empty)."""
    base = f"/api/{version}" if not group else f"/apis/{group}/{version}"
    path = f"{base}/namespaces/{namespace}/{plural}"
    return f"{path}/{name}" if name else path


def wait_for(
    what: str,
    probe: Callable[[], T | None],
    timeout: float = 120.0,
    interval: float = 0.5,
) -> T:
    """Poll `probe` until it returns something truthy; its last exception (or value) is reported
    on timeout. Generous deadlines: the tier runs on a loaded 2-core machine."""
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        try:
            value = probe()
            if value:
                return value
            last = value
        except (ApiException, OSError, RuntimeError, KeyError) as error:
            last = error
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}: {last!r}")
        time.sleep(interval)
