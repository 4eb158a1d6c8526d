"""Validate manifests against Kubernetes' own OpenAPI document, strictly, the way kubeconform does.

The document is `api/openapi-spec/swagger.json` of the k8s.io/kubernetes Go module, which
`make chart-tools` copies to .tools/k8s-openapi/<version>/ (no network in the tests). Each
object definition gets `additionalProperties: false`, so a misspelt or misplaced field fails
as it would with `kubectl apply --validate=strict`; the two string-typed special cases
(IntOrString, Quantity) also accept numbers, as the API server does. Custom resources are
checked against the openAPIV3Schema of their CRD, with the same strictness except where the
schema preserves unknown fields.
"""

from __future__ import annotations

import copy
import functools
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import jsonschema
import yaml

ROOT = Path(__file__).resolve().parents[2]
KUBE_SCHEMA_VERSION = "v1.33.13"  # Makefile: KUBE_SCHEMA_VERSION
SWAGGER = ROOT / ".tools" / "k8s-openapi" / KUBE_SCHEMA_VERSION / "swagger.json"
CRDS = ROOT / "charts" / "raftkv" / "crds"

_NUMBER_OR_STRING = {"anyOf": [{"type": "string"}, {"type": "integer"}, {"type": "number"}]}
_LOOSE = {
    "io.k8s.apimachinery.pkg.util.intstr.IntOrString": _NUMBER_OR_STRING,
    "io.k8s.apimachinery.pkg.api.resource.Quantity": _NUMBER_OR_STRING,
}


class SchemaMissing(RuntimeError):
    pass


def _strict(definition: dict[str, Any]) -> dict[str, Any]:
    if "properties" in definition and "additionalProperties" not in definition:
        definition["additionalProperties"] = False
    return definition


@functools.cache
def _kubernetes() -> tuple[dict[str, Any], dict[tuple[str, str], str]]:
    if not SWAGGER.exists():
        raise SchemaMissing(f"{SWAGGER} is missing: run `make chart-tools`")
    document = json.loads(SWAGGER.read_text())
    definitions = {
        name: _LOOSE.get(name) or _strict(copy.deepcopy(d))
        for name, d in document["definitions"].items()
    }
    kinds: dict[tuple[str, str], str] = {}
    for name, d in document["definitions"].items():
        for gvk in d.get("x-kubernetes-group-version-kind", ()):
            group, version = gvk["group"], gvk["version"]
            api_version = f"{group}/{version}" if group else version
            kinds[(api_version, gvk["kind"])] = name
    return definitions, kinds


def _structural(schema: Any) -> Any:
    """A CRD schema as JSON Schema: x-kubernetes-* keys dropped, unknown fields refused unless
    the schema preserves them."""
    if isinstance(schema, list):
        return [_structural(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _structural(v) for k, v in schema.items() if not k.startswith("x-kubernetes-")}
    if schema.get("x-kubernetes-int-or-string"):
        out = {"anyOf": [{"type": "string"}, {"type": "integer"}]}
    if (
        "properties" in schema
        and "additionalProperties" not in schema
        and not schema.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    if "properties" in out:
        out["properties"] = {k: _structural(v) for k, v in schema["properties"].items()}
    return out


def crd_schemas(documents: Iterable[Mapping[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    schemas = {}
    for crd in documents:
        if crd.get("kind") != "CustomResourceDefinition":
            continue
        group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
        for version in crd["spec"]["versions"]:
            schema = _structural(version["schema"]["openAPIV3Schema"])
            schema.setdefault("properties", {}).update(
                apiVersion={"type": "string"}, kind={"type": "string"}, metadata={"type": "object"}
            )
            schemas[(f"{group}/{version['name']}", kind)] = schema
    return schemas


@functools.cache
def chart_crd_schemas() -> dict[tuple[str, str], dict[str, Any]]:
    docs = [d for p in sorted(CRDS.glob("*.yaml")) for d in yaml.safe_load_all(p.read_text()) if d]
    return crd_schemas(docs)


def validate(manifest: Mapping[str, Any]) -> None:
    """Raise jsonschema.ValidationError (or KeyError for an unknown kind) when invalid."""
    key = (manifest["apiVersion"], manifest["kind"])
    custom = chart_crd_schemas()
    if key in custom:
        jsonschema.Draft7Validator(custom[key]).validate(manifest)
        return
    definitions, kinds = _kubernetes()
    schema = {"$ref": f"#/definitions/{kinds[key]}", "definitions": definitions}
    jsonschema.Draft4Validator(schema).validate(manifest)
