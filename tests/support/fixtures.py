"""Pytest fixtures around `tests.support.etcd`; import them into a conftest.py to use them.

The clusters are module-scoped because starting etcd costs about a second: tests in one module
share a cluster and must use their own key prefixes. Without etcd installed the tests are
skipped with the reason, never failed; `make test` installs it.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.etcd import (
    ETCD_BIN,
    ETCDCTL_BIN,
    EtcdCluster,
    etcd_installed,
    start_etcd_cluster,
)

_NOT_INSTALLED = (
    f"real etcd 3.4 not installed ({ETCD_BIN}, {ETCDCTL_BIN}); "
    "`make test` installs it (Debian packages etcd-server, etcd-client)"
)


def require_etcd() -> None:
    """Skip the calling test when the reference etcd binaries are missing."""
    if not etcd_installed():
        pytest.skip(_NOT_INSTALLED)


@pytest.fixture(scope="module")
def etcd_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdCluster]:
    """A fresh single-member real etcd cluster shared by the tests of one module."""
    require_etcd()
    with start_etcd_cluster(tmp_path_factory.mktemp("etcd1")) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def etcd_cluster3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdCluster]:
    """A fresh three-member real etcd cluster shared by the tests of one module."""
    require_etcd()
    with start_etcd_cluster(tmp_path_factory.mktemp("etcd3"), size=3) as cluster:
        yield cluster
