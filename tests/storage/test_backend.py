"""Backend: bucketed ordered storage, batching until commit, durability helpers, copies, hashes."""

from __future__ import annotations

from pathlib import Path

import pytest
from raftkv.storage.backend import Backend


@pytest.fixture
def backend(tmp_path: Path) -> Backend:
    b = Backend(tmp_path / "db")
    b.create_bucket("kv")
    return b


def test_put_get_delete(backend: Backend) -> None:
    backend.put("kv", b"a", b"1")
    assert backend.get("kv", b"a") == b"1"
    backend.put("kv", b"a", b"2")
    assert backend.get("kv", b"a") == b"2"
    backend.delete("kv", b"a")
    assert backend.get("kv", b"a") is None


def test_range_forms_are_ordered_and_limited(backend: Backend) -> None:
    backend.put_many("kv", [(k, k.upper()) for k in (b"c", b"a", b"b", b"d", b"\xff")])
    assert backend.range("kv", b"b") == [(b"b", b"B")]
    assert backend.range("kv", b"zz") == []
    assert backend.range("kv", b"a", b"c") == [(b"a", b"A"), (b"b", b"B")]
    assert [k for k, _ in backend.range("kv", b"b", b"\0")] == [b"b", b"c", b"d", b"\xff"]
    assert [k for k, _ in backend.range("kv", b"a", b"\0", limit=2)] == [b"a", b"b"]
    assert [k for k, _ in backend.iter_range("kv", b"a", batch=2)] == [
        b"a",
        b"b",
        b"c",
        b"d",
        b"\xff",
    ]


def test_delete_range_and_count(backend: Backend) -> None:
    backend.put_many("kv", [(bytes([c]), b"") for c in range(ord("a"), ord("h"))])
    assert backend.delete_range("kv", b"b", b"d") == 2
    assert backend.delete_range("kv", b"f", b"\0") == 2
    backend.delete_many("kv", [b"a", b"zz"])
    assert [k for k, _ in backend.range("kv", b"\0", b"\0")] == [b"d", b"e"]
    assert backend.count("kv") == 2


def test_unknown_bucket_is_an_error(backend: Backend) -> None:
    with pytest.raises(KeyError, match="nope"):
        backend.put("nope", b"a", b"1")
    with pytest.raises(ValueError):
        backend.create_bucket('bad"name')


def test_only_committed_batches_survive_a_reopen(tmp_path: Path) -> None:
    b = Backend(tmp_path / "db")
    b.create_bucket("kv")
    b.put("kv", b"kept", b"1")
    b.commit()
    b.put("kv", b"lost", b"2")
    assert b.get("kv", b"lost") == b"2"  # the open batch is visible to reads
    b.close()
    b = Backend(tmp_path / "db")
    assert b.buckets() == ["kv"]
    assert b.get("kv", b"kept") == b"1"
    assert b.get("kv", b"lost") is None
    b.close()


def test_pre_commit_hook_writes_in_the_committed_batch(tmp_path: Path) -> None:
    b = Backend(tmp_path / "db")
    b.create_bucket("meta")
    calls: list[int] = []

    def hook() -> None:
        calls.append(1)
        b.put("meta", b"index", str(len(calls)).encode())

    b.add_pre_commit_hook(hook)
    b.commit()
    b.commit()
    b.close()
    b = Backend(tmp_path / "db")
    assert b.get("meta", b"index") == b"2"
    b.close()


def test_force_commit_durable_empties_the_sqlite_wal(tmp_path: Path) -> None:
    b = Backend(tmp_path / "db")
    b.create_bucket("kv")
    b.put_many("kv", [(i.to_bytes(4, "big"), b"x" * 100) for i in range(1000)])
    b.commit()
    wal = tmp_path / "db-wal"
    assert wal.stat().st_size > 0
    b.force_commit_durable()
    assert wal.stat().st_size == 0
    assert b.size() == (tmp_path / "db").stat().st_size
    b.close()


def test_defragment_shrinks_the_file_after_deletes(tmp_path: Path) -> None:
    b = Backend(tmp_path / "db")
    b.create_bucket("kv")
    b.put_many("kv", [(i.to_bytes(4, "big"), b"x" * 1000) for i in range(2000)])
    b.force_commit_durable()
    full = b.size()
    b.delete_range("kv", b"\0", b"\0")
    b.force_commit_durable()
    assert b.size_in_use() < full // 10
    assert b.size() >= full  # freed pages stay in the file until defragmented
    b.defragment()
    assert b.size() < full // 10
    assert b.count("kv") == 0
    b.close()


def test_snapshot_is_a_consistent_single_file_copy(tmp_path: Path) -> None:
    b = Backend(tmp_path / "db")
    b.create_bucket("kv")
    b.create_bucket("meta")
    b.put_many("kv", [(bytes([i]), bytes([i]) * 3) for i in range(50)])
    b.put("meta", b"index", b"7")  # uncommitted: snapshot_to commits first
    target = tmp_path / "snap" / "copy.db"
    target.parent.mkdir()
    b.snapshot_to(target)
    assert sorted(p.name for p in target.parent.iterdir()) == ["copy.db"]
    copy = Backend(target)
    assert copy.hash() == b.hash()
    assert copy.get("meta", b"index") == b"7"
    copy.close()
    b.close()


def test_hash_depends_on_content_not_on_write_order(tmp_path: Path) -> None:
    one = Backend(tmp_path / "one")
    two = Backend(tmp_path / "two")
    for b in (one, two):
        b.create_bucket("a")
        b.create_bucket("b")
    one.put("a", b"k1", b"v1")
    one.put("b", b"k2", b"v2")
    two.put("b", b"k2", b"v2")
    two.put("a", b"k1", b"v1")
    assert one.hash() == two.hash()
    two.put("a", b"k1", b"changed")
    assert one.hash() != two.hash()
    one.close()
    two.close()
