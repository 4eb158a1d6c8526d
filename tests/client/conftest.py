"""Fixtures and the async test runner for the client tests.

The client is asyncio-first, so most tests are `async def`. Rather than depend on a pytest plugin,
the hook below runs each coroutine test in a fresh event loop with `asyncio.run`, under a deadline
so a hung stream fails the test instead of stalling the run. Real etcd clusters come from
`tests.support.fixtures` (module-scoped); tests that kill members start their own clusters.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from raftkv.client import AsyncClient

from tests.support.etcd import EtcdCluster, start_etcd_cluster
from tests.support.fixtures import etcd_cluster, etcd_cluster3, require_etcd

__all__ = ["etcd_cluster", "etcd_cluster3"]

_TEST_DEADLINE_S = 60.0

# Short raft timers so that a 3-member cluster elects a new leader quickly after a kill.
FAST_ELECTION = {"heartbeat_interval": 50, "election_timeout": 500}


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    if not inspect.iscoroutinefunction(pyfuncitem.obj):
        return None
    names = pyfuncitem._fixtureinfo.argnames
    kwargs = {name: pyfuncitem.funcargs[name] for name in names}
    asyncio.run(asyncio.wait_for(pyfuncitem.obj(**kwargs), _TEST_DEADLINE_S))
    return True


@pytest.fixture
def key(request: pytest.FixtureRequest) -> Callable[[str], bytes]:
    """Key names private to the running test, since tests of a module share a cluster."""
    prefix = f"/{request.node.name}/"

    def make(suffix: str = "") -> bytes:
        return (prefix + suffix).encode()

    return make


@pytest.fixture
def client_for(etcd_cluster: EtcdCluster) -> Callable[..., AsyncClient]:
    """A factory of AsyncClients on the module's single-member cluster (closed by the test)."""

    def make(**options: object) -> AsyncClient:
        return AsyncClient(etcd_cluster.grpc_targets, **options)  # type: ignore[arg-type]

    return make


@pytest.fixture
def cluster3_fresh(tmp_path: Path) -> Iterator[EtcdCluster]:
    """A private 3-member cluster with fast elections, for tests that kill members."""
    require_etcd()
    with start_etcd_cluster(tmp_path, size=3, **FAST_ELECTION) as cluster:
        yield cluster
