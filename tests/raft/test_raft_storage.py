"""MemoryStorage: the in-memory image of the persisted log that the Raft core reads."""

from __future__ import annotations

import pytest
from raftkv.pb.raftpb import raft_pb2 as pb
from raftkv.raft import (
    CompactedError,
    MemoryStorage,
    SnapshotOutOfDateError,
    UnavailableError,
)
from raftkv.raft.storage import limit_size


def ents(*pairs: tuple[int, int], data: bytes = b"") -> list[pb.Entry]:
    return [pb.Entry(index=i, term=t, data=data) for i, t in pairs]


def stored(st: MemoryStorage) -> list[tuple[int, int]]:
    return [(e.index, e.term) for e in st.entries(st.first_index(), st.last_index() + 1, None)]


@pytest.fixture
def st() -> MemoryStorage:
    s = MemoryStorage()
    s.append(ents((1, 1), (2, 1), (3, 2), (4, 3), (5, 3)))
    return s


def test_empty_storage_has_no_entries() -> None:
    s = MemoryStorage()
    assert (s.first_index(), s.last_index()) == (1, 0)
    assert s.term(0) == 0
    with pytest.raises(UnavailableError):
        s.term(1)
    hs, cs = s.initial_state()
    assert (hs.term, hs.vote, hs.commit) == (0, 0, 0)
    assert list(cs.voters) == []


def test_append_and_read(st: MemoryStorage) -> None:
    assert (st.first_index(), st.last_index()) == (1, 5)
    assert [st.term(i) for i in range(0, 6)] == [0, 1, 1, 2, 3, 3]
    assert [(e.index, e.term) for e in st.entries(2, 5, None)] == [(2, 1), (3, 2), (4, 3)]
    with pytest.raises(UnavailableError):
        st.entries(4, 7, None)


def test_append_truncates_a_conflicting_suffix(st: MemoryStorage) -> None:
    st.append(ents((3, 4), (4, 4)))
    assert stored(st) == [(1, 1), (2, 1), (3, 4), (4, 4)]


def test_append_refuses_a_gap(st: MemoryStorage) -> None:
    with pytest.raises(UnavailableError):
        st.append(ents((7, 3)))


def test_append_skips_compacted_entries(st: MemoryStorage) -> None:
    st.compact(3)
    st.append(ents((2, 1), (3, 2), (4, 5)))
    assert stored(st) == [(4, 5)]
    assert st.term(3) == 2


def test_compact_keeps_the_term_of_the_compaction_point(st: MemoryStorage) -> None:
    st.compact(3)
    assert (st.first_index(), st.last_index()) == (4, 5)
    assert st.term(3) == 2
    with pytest.raises(CompactedError):
        st.term(2)
    with pytest.raises(CompactedError):
        st.entries(3, 5, None)
    with pytest.raises(CompactedError):
        st.compact(2)
    with pytest.raises(UnavailableError):
        st.compact(9)


def test_create_snapshot_records_index_term_conf_and_data(st: MemoryStorage) -> None:
    cs = pb.ConfState(voters=[1, 2, 3], learners=[4])
    snap = st.create_snapshot(4, cs, b"state")
    assert (snap.metadata.index, snap.metadata.term) == (4, 3)
    assert list(snap.metadata.conf_state.voters) == [1, 2, 3]
    assert list(snap.metadata.conf_state.learners) == [4]
    assert st.snapshot().data == b"state"
    assert st.last_index() == 5  # the log is kept until compact()
    with pytest.raises(SnapshotOutOfDateError):
        st.create_snapshot(3, cs, b"older")
    with pytest.raises(UnavailableError):
        st.create_snapshot(9, cs, b"future")


def test_apply_snapshot_replaces_the_log(st: MemoryStorage) -> None:
    snap = pb.Snapshot(data=b"x")
    snap.metadata.index, snap.metadata.term = 10, 4
    snap.metadata.conf_state.voters.extend([1, 2])
    st.apply_snapshot(snap)
    assert (st.first_index(), st.last_index()) == (11, 10)
    assert st.term(10) == 4
    assert list(st.initial_state()[1].voters) == [1, 2]
    st.append(ents((11, 4)))
    assert stored(st) == [(11, 4)]
    with pytest.raises(SnapshotOutOfDateError):
        st.apply_snapshot(snap)


def test_hard_state_is_copied(st: MemoryStorage) -> None:
    hs = pb.HardState(term=3, vote=2, commit=4)
    st.set_hard_state(hs)
    hs.term = 99
    assert st.initial_state()[0].term == 3


def test_size_limit_keeps_at_least_one_entry() -> None:
    es = ents((1, 1), (2, 1), (3, 1), data=b"x" * 100)
    one = es[0].ByteSize()
    assert limit_size(es, None) == es
    assert len(limit_size(es, 0)) == 1
    assert len(limit_size(es, one)) == 1
    assert len(limit_size(es, 2 * one)) == 2
    assert len(limit_size(es, 10 * one)) == 3
    st = MemoryStorage()
    st.append(es)
    assert len(st.entries(1, 4, 2 * one + 1)) == 2
