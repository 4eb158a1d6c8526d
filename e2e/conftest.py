"""Fixtures of the e2e tests: the cluster from KUBECONFIG, a fresh namespace per test, member
access from the test process. Without KUBECONFIG every e2e test is skipped with the reason
(`make e2e-local` or `make e2e-kind` provide one)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest

from e2e.kubeapi import Kube
from e2e.support import MemberAccess


@pytest.fixture(scope="session")
def kube() -> Kube:
    if not os.environ.get("KUBECONFIG"):
        pytest.skip("KUBECONFIG not set: run `make e2e-local` (or `make e2e-kind`)")
    return Kube(os.environ["KUBECONFIG"])


@pytest.fixture
def namespace(kube: Kube) -> Iterator[str]:
    """A fresh namespace, deleted (with everything in it) after the test."""
    name = f"e2e-{uuid.uuid4().hex[:6]}"
    kube.create("/api/v1/namespaces", {"metadata": {"name": name}})
    try:
        yield name
    finally:
        kube.delete(f"/api/v1/namespaces/{name}")


@pytest.fixture
def access(kube: Kube) -> Iterator[MemberAccess]:
    members = MemberAccess(kube)
    try:
        yield members
    finally:
        members.close()
