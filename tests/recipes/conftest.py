"""Fixtures for the recipe tests: real 3-member raftkv clusters and an asyncio test runner.

Most tests share one cluster for the whole folder (starting one costs seconds) and keep to
their own key names (`name`); tests that kill members start their own cluster. Coroutine tests
run in a fresh event loop under a deadline, so a recipe that hangs fails its test instead of the
run.
"""

from __future__ import annotations

import asyncio
import inspect
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.raftkv import RaftKVCluster, RaftKVMember, start_raftkv_cluster

_TEST_DEADLINE_S = 60.0

pytestmark = pytest.mark.integration


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    if not inspect.iscoroutinefunction(pyfuncitem.obj):
        return None
    kwargs = {name: pyfuncitem.funcargs[name] for name in pyfuncitem._fixtureinfo.argnames}
    asyncio.run(asyncio.wait_for(pyfuncitem.obj(**kwargs), _TEST_DEADLINE_S))
    return True


@pytest.fixture(scope="package")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RaftKVCluster]:
    """A 3-member cluster shared by the recipe tests that kill nothing."""
    with start_raftkv_cluster(tmp_path_factory.mktemp("recipes"), size=3) as started:
        yield started


@pytest.fixture
def fresh_cluster(tmp_path: Path) -> Iterator[RaftKVCluster]:
    """A private 3-member cluster for a test that kills members."""
    with start_raftkv_cluster(tmp_path, size=3) as started:
        yield started


@pytest.fixture
def name(request: pytest.FixtureRequest) -> str:
    """A key name private to the running test."""
    return "/test/" + re.sub(r"[^A-Za-z0-9_-]", "_", request.node.name)


def follower(cluster: RaftKVCluster) -> RaftKVMember:
    leader = cluster.leader()
    return next(m for m in cluster.members if m is not leader and m.alive)
