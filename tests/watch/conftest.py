"""Fixtures for the watch tests: a real KVStore over a sqlite backend in a temp dir."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from raftkv.mvcc import KVStore
from raftkv.storage.backend import Backend


@pytest.fixture
def store(tmp_path: Path) -> Iterator[KVStore]:
    backend = Backend(tmp_path / "db")
    yield KVStore(backend)
    backend.close()
