"""Fixtures for the KV applier tests: a KVApplier over a KVStore over a temp sqlite backend."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from raftkv.apply.kv import KVApplier
from raftkv.mvcc import KVStore
from raftkv.storage.backend import Backend

# Leases the tests' lease checker knows; any other id is "not found".
KNOWN_LEASES = {7, 8}


@pytest.fixture
def store(tmp_path: Path) -> Iterator[KVStore]:
    backend = Backend(tmp_path / "db")
    yield KVStore(backend)
    backend.close()


@pytest.fixture
def kv(store: KVStore) -> KVApplier:
    return KVApplier(store, max_txn_ops=8, lease_checker=KNOWN_LEASES.__contains__)
