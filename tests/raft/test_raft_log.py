"""RaftLog: the stable + unstable log with its commit and apply cursors."""

from __future__ import annotations

import pytest
from raftkv.pb.raftpb import raft_pb2 as pb
from raftkv.raft import CompactedError, MemoryStorage, RaftError
from raftkv.raft.log import RaftLog


def ents(*pairs: tuple[int, int]) -> list[pb.Entry]:
    return [pb.Entry(index=i, term=t) for i, t in pairs]


def terms(log: RaftLog) -> list[tuple[int, int]]:
    return [(e.index, e.term) for e in log.slice(log.first_index(), log.last_index() + 1, None)]


def log_with(stable: list[tuple[int, int]], unstable: list[tuple[int, int]] = ()) -> RaftLog:
    st = MemoryStorage()
    st.append(ents(*stable))
    log = RaftLog(st)
    if unstable:
        log.append(ents(*unstable))
    return log


def test_entries_span_storage_and_unstable() -> None:
    log = log_with([(1, 1), (2, 1)], [(3, 2), (4, 2)])
    assert terms(log) == [(1, 1), (2, 1), (3, 2), (4, 2)]
    assert [e.index for e in log.slice(2, 4, None)] == [2, 3]
    assert [e.index for e in log.unstable_entries()] == [3, 4]
    assert log.term(3) == 2 and log.term(0) == 0
    assert log.term(9) == 0  # past the end
    one = pb.Entry(index=1, term=1).ByteSize()
    assert len(log.slice(1, 5, one)) == 1  # the size limit applies across the boundary


def test_compacted_indexes_raise() -> None:
    st = MemoryStorage()
    st.append(ents((1, 1), (2, 1), (3, 2)))
    st.compact(2)
    log = RaftLog(st)
    assert log.first_index() == 3
    assert log.term(2) == 1  # the compaction point's term is kept for matching
    with pytest.raises(CompactedError):
        log.term(1)
    with pytest.raises(CompactedError):
        log.slice(2, 3, None)
    assert not log.match_term(1, 1)


def test_maybe_append_appends_only_when_the_previous_entry_matches() -> None:
    log = log_with([(1, 1), (2, 2), (3, 2)])
    assert log.maybe_append(3, 1, 3, ents((4, 3))) == -1  # wrong term at 3
    assert log.maybe_append(5, 2, 3, ents((6, 3))) == -1  # gap
    assert log.maybe_append(3, 2, 3, ents((4, 3), (5, 3))) == 5
    assert terms(log)[-2:] == [(4, 3), (5, 3)]
    assert log.committed == 3


def test_maybe_append_commits_no_further_than_the_new_entries() -> None:
    log = log_with([(1, 1), (2, 1), (3, 1)])
    assert log.maybe_append(1, 1, 10, []) == 1
    assert log.committed == 1  # the leader's commit is 10, but we only know up to 1 matches


def test_maybe_append_truncates_a_conflicting_suffix_but_ignores_duplicates() -> None:
    log = log_with([(1, 1)], [(2, 1), (3, 1), (4, 1)])
    assert log.maybe_append(1, 1, 0, ents((2, 1), (3, 1))) == 3
    assert terms(log) == [(1, 1), (2, 1), (3, 1), (4, 1)]  # a stale duplicate truncates nothing
    assert log.maybe_append(2, 1, 0, ents((3, 2))) == 3
    assert terms(log) == [(1, 1), (2, 1), (3, 2)]


def test_a_conflict_with_a_committed_entry_is_a_bug() -> None:
    log = log_with([(1, 1), (2, 1)])
    log.commit_to(2)
    with pytest.raises(RaftError):
        log.maybe_append(1, 1, 2, ents((2, 2)))


def test_find_conflict_by_term_skips_whole_terms() -> None:
    log = log_with([(1, 1), (2, 1), (3, 2), (4, 2), (5, 2), (6, 4), (7, 4)])
    assert log.find_conflict_by_term(7, 4) == (7, 4)
    assert log.find_conflict_by_term(7, 3) == (5, 2)
    assert log.find_conflict_by_term(7, 2) == (5, 2)
    assert log.find_conflict_by_term(7, 1) == (2, 1)
    assert log.find_conflict_by_term(4, 1) == (2, 1)
    assert log.find_conflict_by_term(99, 5) == (7, 4)  # clamped to the last index
    assert log.find_conflict_by_term(7, 0) == (0, 0)


def test_find_conflict_by_term_on_a_compacted_log() -> None:
    st = MemoryStorage()
    st.append(ents((1, 1), (2, 2), (3, 3), (4, 3)))
    st.compact(2)
    log = RaftLog(st)
    assert log.find_conflict_by_term(4, 2) == (2, 2)
    assert log.find_conflict_by_term(1, 1) == (1, 0)  # compacted: unknown term
    assert log.find_conflict_by_term(4, 1) == (1, 0)  # even the snapshot is newer


def test_commit_and_apply_cursors() -> None:
    log = log_with([(1, 1), (2, 1)], [(3, 2)])
    assert not log.maybe_commit(3, 1)  # entry 3 is not of term 1
    assert log.maybe_commit(3, 2)
    assert log.committed == 3
    with pytest.raises(RaftError):
        log.commit_to(4)  # beyond the log
    log.commit_to(1)
    assert log.committed == 3  # never moves back
    assert [e.index for e in log.next_committed_entries()] == [1, 2, 3]
    log.applied_to(2)
    assert [e.index for e in log.next_committed_entries()] == [3]
    assert log.has_next_committed_entries()
    log.applied_to(3)
    assert not log.has_next_committed_entries()
    with pytest.raises(RaftError):
        log.applied_to(2)


def test_committed_entries_are_cut_by_the_apply_size_limit() -> None:
    st = MemoryStorage()
    st.append([pb.Entry(index=i, term=1, data=b"x" * 50) for i in range(1, 6)])
    log = RaftLog(st, max_applying_size=120)
    log.commit_to(5)
    assert [e.index for e in log.next_committed_entries()] == [1, 2]


def test_stable_to_ignores_a_replaced_entry() -> None:
    log = log_with([(1, 1)], [(2, 1), (3, 1)])
    log.append(ents((3, 2)))  # replaced while the old 3 was being persisted
    log.stable_to(3, 1)
    assert [e.index for e in log.unstable_entries()] == [2, 3]
    log.stable_to(2, 1)
    assert [(e.index, e.term) for e in log.unstable_entries()] == [(3, 2)]


def test_restore_from_a_snapshot() -> None:
    log = log_with([(1, 1), (2, 1)], [(3, 1)])
    snap = pb.Snapshot()
    snap.metadata.index, snap.metadata.term = 10, 3
    log.restore(snap)
    assert (log.first_index(), log.last_index(), log.committed) == (11, 10, 10)
    assert log.term(10) == 3
    assert log.snapshot() is snap
    assert log.next_committed_entries() == []
    log.stable_snap_to(10)
    assert log.unstable.snapshot is None


def test_up_to_date_compares_last_term_then_length() -> None:
    log = log_with([(1, 1), (2, 2)])
    assert log.is_up_to_date(1, 3)
    assert log.is_up_to_date(2, 2)
    assert log.is_up_to_date(5, 2)
    assert not log.is_up_to_date(1, 2)
    assert not log.is_up_to_date(9, 1)
