"""Revision encoding and the key index: generations, lookups at old revisions, compaction."""

from __future__ import annotations

import pytest
from raftkv.mvcc.key_index import KeyIndexTree
from raftkv.mvcc.revision import Revision, is_tombstone


def test_revision_encoding_is_17_bytes_and_orders_like_revisions() -> None:
    revs = [Revision(1, 0), Revision(1, 1), Revision(2, 0), Revision(256, 3), Revision(2**40, 0)]
    encoded = [r.to_bytes() for r in revs]
    assert all(len(e) == 17 and e[8:9] == b"_" for e in encoded)
    assert sorted(encoded) == encoded
    assert [Revision.from_bytes(e) for e in encoded] == revs
    tomb = Revision(5, 2).to_bytes(tombstone=True)
    assert len(tomb) == 18 and tomb.endswith(b"t") and is_tombstone(tomb)
    assert Revision.from_bytes(tomb) == Revision(5, 2)
    assert not is_tombstone(Revision(5, 2).to_bytes())
    # A tombstone sorts right after the live row of the same revision, before the next one.
    assert Revision(5, 2).to_bytes() < tomb < Revision(5, 3).to_bytes()
    with pytest.raises(ValueError):
        Revision.from_bytes(b"short")


def test_get_across_generations() -> None:
    tree = KeyIndexTree()
    tree.put(b"k", Revision(2))
    tree.put(b"k", Revision(4))
    tree.tombstone(b"k", Revision(6))
    tree.put(b"k", Revision(8))
    assert tree.get(b"k", 1) is None
    assert tree.get(b"k", 2) == (Revision(2), Revision(2), 1)
    assert tree.get(b"k", 5) == (Revision(4), Revision(2), 2)
    assert tree.get(b"k", 6) is None  # deleted at 6
    assert tree.get(b"k", 7) is None
    assert tree.get(b"k", 9) == (Revision(8), Revision(8), 1)  # version reset after delete
    assert tree.live_count == 1


def test_range_in_key_order_at_a_revision() -> None:
    tree = KeyIndexTree()
    for i, k in enumerate([b"b", b"a", b"c", b"d"]):
        tree.put(k, Revision(i + 2))
    tree.tombstone(b"c", Revision(6))
    assert tree.range(b"a", b"d", 6) == [(b"a", Revision(3)), (b"b", Revision(2))]
    assert [k for k, _ in tree.range(b"a", b"d", 5)] == [b"a", b"b", b"c"]
    assert [k for k, _ in tree.range(b"b", b"\0", 6)] == [b"b", b"d"]
    assert tree.range(b"c", b"", 6) == []
    assert tree.range(b"c", b"", 4) == [(b"c", Revision(4))]


def test_compaction_keeps_the_newest_revision_per_key_and_reports_the_rest() -> None:
    tree = KeyIndexTree()
    tree.put(b"a", Revision(2))
    tree.put(b"a", Revision(3))
    tree.put(b"b", Revision(4))
    tree.tombstone(b"b", Revision(5))
    tree.put(b"a", Revision(6))
    removed = tree.compact(5)
    # a@3 is what a shows at 5; b's generation ended at 5, so only its tombstone is kept.
    assert sorted(removed) == [Revision(2).to_bytes(), Revision(4).to_bytes()]
    assert tree.get(b"a", 5) == (Revision(3), Revision(2), 2)
    assert tree.get(b"a", 6) == (Revision(6), Revision(2), 3)
    assert tree.get(b"b", 5) is None
    assert len(tree) == 2  # b stays until its tombstone is compacted past
    removed = tree.compact(6)
    assert sorted(removed) == [Revision(3).to_bytes(), Revision(5).to_bytes(tombstone=True)]
    assert len(tree) == 1
    assert tree.compact(7) == []


def test_restored_tombstone_is_compacted_later() -> None:
    tree = KeyIndexTree()
    tree.restore_row(b"gone", Revision(5), True, 0, 0)
    tree.restore_row(b"kept", Revision(6), False, 3, 2)
    assert tree.get(b"gone", 6) is None
    assert tree.get(b"kept", 6) == (Revision(6), Revision(3), 2)
    assert tree.compact(6) == [Revision(5).to_bytes(tombstone=True)]
    assert len(tree) == 1
