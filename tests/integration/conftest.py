"""Integration tests start real raftkv processes on 127.0.0.1."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.raftkv import RaftKVCluster, start_raftkv_cluster


@pytest.fixture
def cluster3(tmp_path: Path) -> Iterator[RaftKVCluster]:
    with start_raftkv_cluster(tmp_path, size=3) as cluster:
        yield cluster
