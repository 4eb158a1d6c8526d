"""Fixtures of the etcdctl comparison suites.

`compat_pair` starts a real etcd 3.4 cluster and a raftkv cluster (3 members each) once per test
module; a module may set `COMPAT_CLUSTER_FLAGS = {"max_request_bytes": 65536, ...}` to start
both with the same extra flags. `compat` is the per-test `Case`: aligned revisions and a fresh
key prefix. Without etcd installed the tests are skipped, never failed.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.compat.harness import Case, Pair, start_pair
from tests.support.fixtures import require_etcd


@pytest.fixture(scope="module")
def compat_pair(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Pair]:
    require_etcd()
    flags = getattr(request.module, "COMPAT_CLUSTER_FLAGS", {})
    pair = start_pair(tmp_path_factory.mktemp("compat"), **flags)
    try:
        yield pair
    finally:
        pair.stop()


@pytest.fixture
def compat(compat_pair: Pair, request: pytest.FixtureRequest) -> Case:
    return compat_pair.case(request.node.name)
