"""WAL behaviour a member relies on: round trips, Raft truncation, snapshot markers, rotation,
release, durability of the vote, and refusal to write after a failure. Real fdatasync, tmp dirs."""

import errno
import os
import shutil
from pathlib import Path

import pytest
from raftkv.pb.raftpb.raft_pb2 import Entry, HardState
from raftkv.storage.errors import WALClosedError, WALExistsError, WALFailedError
from raftkv.storage.wal import WAL


def ent(index: int, term: int = 1, data: bytes | None = None) -> Entry:
    return Entry(term=term, index=index, data=f"e{index}t{term}".encode() if data is None else data)


def shape(entries: list[Entry]) -> list[tuple[int, int, bytes]]:
    return [(e.index, e.term, e.data) for e in entries]


@pytest.fixture
def fdatasyncs(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts real os.fdatasync calls (the test wraps the real one, it still syncs)."""
    calls: list[int] = []
    real = os.fdatasync

    def counting(fd: int) -> None:
        calls.append(fd)
        real(fd)

    monkeypatch.setattr(os, "fdatasync", counting)
    return calls


def test_create_then_open_round_trips(tmp_path: Path) -> None:
    d = tmp_path / "member" / "wal"
    assert not WAL.exists(d)
    wal = WAL.create(d, b"\x00cluster=7;member=3")
    assert WAL.exists(d)
    wal.save(HardState(term=2, vote=3, commit=1), [ent(1, 1), ent(2, 2, b"")])
    wal.save(None, [ent(3, 2)])
    wal.close()

    wal, got = WAL.open(d)
    assert got.metadata == b"\x00cluster=7;member=3"
    assert got.hard_state == HardState(term=2, vote=3, commit=1)
    assert (got.snapshot_index, got.snapshot_term) == (0, 0)
    assert shape(got.entries) == shape([ent(1, 1), ent(2, 2, b""), ent(3, 2)])
    wal.save(None, [ent(4, 2)])  # appends after reopening
    wal.close()
    _, got = WAL.open(d)
    assert [e.index for e in got.entries] == [1, 2, 3, 4]


def test_create_refuses_an_existing_wal_and_open_needs_one(tmp_path: Path) -> None:
    WAL.create(tmp_path, b"m").close()
    with pytest.raises(WALExistsError):
        WAL.create(tmp_path, b"other")
    with pytest.raises(FileNotFoundError):
        WAL.open(tmp_path / "elsewhere")


def test_one_fdatasync_per_save_and_none_when_nothing_new(
    tmp_path: Path, fdatasyncs: list[int]
) -> None:
    wal = WAL.create(tmp_path, b"m")
    wal.save(HardState(term=1, vote=1), [ent(i) for i in range(1, 50)])
    assert len(fdatasyncs) == 1
    size = wal.segment_paths[-1].stat().st_size
    wal.save(None, [])
    wal.save(HardState(term=1, vote=1), [])  # unchanged hard state: nothing new
    assert len(fdatasyncs) == 1
    assert wal.segment_paths[-1].stat().st_size == size
    wal.save_snapshot(10, 1)
    assert len(fdatasyncs) == 2
    assert wal.fsync_count == 2
    assert wal.entries_written == 49
    wal.close()


def test_counters_report_what_was_written(tmp_path: Path) -> None:
    wal = WAL.create(tmp_path, b"m")
    before = wal.segment_paths[-1].stat().st_size
    wal.save(HardState(term=1), [ent(1), ent(2)])
    wal.save(None, [ent(3)])
    assert wal.entries_written == 3
    assert wal.fsync_count == 2
    assert wal.bytes_written == wal.segment_paths[-1].stat().st_size - before
    assert wal.last_fsync_seconds > 0


def test_vote_survives_a_crash(tmp_path: Path) -> None:
    wal = WAL.create(tmp_path / "wal", b"m")
    wal.save(HardState(term=5, vote=2, commit=0), [])
    # Crash: the process dies right after save returned; nothing is closed or flushed again.
    shutil.copytree(tmp_path / "wal", tmp_path / "after-crash")
    _, got = WAL.open(tmp_path / "after-crash")
    assert (got.hard_state.term, got.hard_state.vote) == (5, 2)
    wal.close()


def test_a_later_entry_truncates_the_log_there(tmp_path: Path) -> None:
    wal = WAL.create(tmp_path, b"m")
    wal.save(None, [ent(i, 1) for i in range(1, 11)])
    wal.save(None, [ent(6, 2), ent(7, 2)])  # a new leader overwrote 6.. (uncommitted)
    assert wal.last_index == 7
    wal.save(None, [ent(8, 2)])
    wal.close()
    wal, got = WAL.open(tmp_path)
    assert [(e.index, e.term) for e in got.entries] == [(i, 1) for i in range(1, 6)] + [
        (6, 2),
        (7, 2),
        (8, 2),
    ]
    wal.close()


def test_invalid_saves_are_refused_and_write_nothing(tmp_path: Path) -> None:
    wal = WAL.create(tmp_path, b"m")
    wal.save(None, [ent(1), ent(2), ent(3)])
    wal.save_snapshot(2, 1)
    size = wal.segment_paths[-1].stat().st_size
    with pytest.raises(ValueError, match="gap"):
        wal.save(None, [ent(5)])
    with pytest.raises(ValueError, match="snapshot"):
        wal.save(None, [ent(2, 2)])
    with pytest.raises(ValueError, match="contiguous"):
        wal.save(None, [ent(4), ent(6)])
    with pytest.raises(ValueError, match="below the previous marker"):
        wal.save_snapshot(1, 1)
    with pytest.raises(ValueError, match="term"):
        wal.save_snapshot(2, 9)
    assert wal.segment_paths[-1].stat().st_size == size
    wal.save(None, [ent(4)])  # still usable
    wal.close()
    _, got = WAL.open(tmp_path)
    assert [e.index for e in got.entries] == [3, 4]


def test_snapshot_marker_keeps_the_entries_after_it_when_terms_match(tmp_path: Path) -> None:
    wal = WAL.create(tmp_path, b"m")
    wal.save(None, [ent(i, 1) for i in range(1, 6)] + [ent(i, 2) for i in range(6, 11)])
    wal.save_snapshot(7, 2)
    wal.close()
    _, got = WAL.open(tmp_path)
    assert (got.snapshot_index, got.snapshot_term) == (7, 2)
    assert [e.index for e in got.entries] == [8, 9, 10]


def test_snapshot_marker_that_does_not_match_discards_the_log(tmp_path: Path) -> None:
    # A follower restoring a leader's snapshot whose entry at 7 differs: Raft drops its log.
    wal = WAL.create(tmp_path, b"m")
    wal.save(None, [ent(i, 1) for i in range(1, 11)])
    wal.save_snapshot(7, 3)
    assert wal.last_index == 7
    wal.save(None, [ent(8, 3)])
    wal.save_snapshot(20, 4)  # beyond the log: also discards it
    wal.close()
    _, got = WAL.open(tmp_path)
    assert (got.snapshot_index, got.snapshot_term, got.entries) == (20, 4, [])


def test_segments_rotate_with_evident_order_and_first_index(tmp_path: Path) -> None:
    wal = WAL.create(tmp_path, b"m", segment_bytes=1024)
    for i in range(1, 101):
        wal.save(HardState(term=1, commit=i - 1), [ent(i, data=bytes(40))])
    names = [p.name for p in wal.segment_paths]
    assert len(names) > 4
    assert names[0] == "0000000000000001-0000000000000001.wal"
    for seq, name in enumerate(names, start=1):
        assert int(name[:16], 16) == seq
    # each segment was cut when it reached segment_bytes, and starts at the next entry
    firsts = [int(n[17:33], 16) for n in names]
    assert firsts == sorted(firsts) and len(set(firsts)) == len(firsts)
    for p in wal.segment_paths[:-1]:
        assert 1024 <= p.stat().st_size < 1024 + 200
    wal.close()
    _, got = WAL.open(tmp_path, segment_bytes=1024)
    assert [e.index for e in got.entries] == list(range(1, 101))
    assert got.hard_state.commit == 99


def test_each_segment_is_self_describing(tmp_path: Path) -> None:
    # The metadata and the hard state are written once, in segment 1; the snapshot marker in a
    # middle one. After releasing everything but the last segment they must all still be known.
    wal = WAL.create(tmp_path, b"meta", segment_bytes=512)
    wal.save(HardState(term=4, vote=9, commit=2), [ent(1, 4), ent(2, 4)])
    for i in range(3, 40):
        wal.save(None, [ent(i, 4, bytes(30))])
    wal.save_snapshot(39, 4)
    for i in range(40, 80):
        wal.save(None, [ent(i, 4, bytes(30))])
    last = wal.segment_paths[-1]
    wal.save_snapshot(79, 4)
    released = wal.release_before(79)
    assert wal.segment_paths == [last]
    assert len(released) > 3 and not any(p.exists() for p in released)
    wal.close()
    _, got = WAL.open(tmp_path)
    assert got.metadata == b"meta"
    assert got.hard_state == HardState(term=4, vote=9, commit=2)
    assert (got.snapshot_index, got.snapshot_term, got.entries) == (79, 4, [])


def test_release_keeps_every_entry_after_the_snapshot(tmp_path: Path) -> None:
    wal = WAL.create(tmp_path, b"m", segment_bytes=600)
    for i in range(1, 61):
        wal.save(HardState(term=1, commit=i), [ent(i, data=bytes(20))])
    wal.save_snapshot(37, 1)
    before = wal.segment_paths
    released = wal.release_before(37)
    assert released and released == before[: len(released)]
    # the segment holding entry 38 is kept
    holders = [p for p in wal.segment_paths if int(p.name[17:33], 16) <= 38]
    assert holders, "the segment holding the snapshot's successor was released"
    wal.save(None, [ent(61)])
    wal.close()
    wal, got = WAL.open(tmp_path)
    assert got.snapshot_index == 37
    assert [e.index for e in got.entries] == list(range(38, 62))
    assert got.hard_state.commit == 60
    with pytest.raises(ValueError, match="beyond the latest snapshot"):
        wal.release_before(40)
    wal.close()


def test_truncation_into_a_released_range_replays_correctly(tmp_path: Path) -> None:
    # Entries 1..30 (term 1), one per segment; a new leader then rewrites from 25, in a segment
    # cut at 31. Once a snapshot at 33 releases segments 1..30, that segment is the first one
    # left: it starts with a rewrite of entries whose predecessors are gone.
    wal = WAL.create(tmp_path, b"m", segment_bytes=400)
    for i in range(1, 31):
        wal.save(None, [ent(i, 1, bytes(450))])
    wal.save(None, [ent(25, 2), ent(26, 2), ent(27, 2)])
    wal.save(None, [ent(i, 2) for i in range(28, 36)])
    wal.save_snapshot(33, 2)
    assert len(wal.release_before(33)) == 30
    assert [p.name for p in wal.segment_paths] == ["000000000000001f-000000000000001f.wal"]
    wal.close()
    _, got = WAL.open(tmp_path)
    assert (got.snapshot_index, got.snapshot_term) == (33, 2)
    assert [(e.index, e.term) for e in got.entries] == [(34, 2), (35, 2)]


def test_stray_temp_segment_is_removed_on_open(tmp_path: Path) -> None:
    WAL.create(tmp_path, b"m").close()
    stray = tmp_path / "0000000000000002-0000000000000001.wal.tmp"
    stray.write_bytes(b"half a segment")
    wal, _ = WAL.open(tmp_path)
    assert not stray.exists()
    assert len(wal.segment_paths) == 1
    wal.close()


def test_closed_wal_refuses_writes(tmp_path: Path) -> None:
    wal = WAL.create(tmp_path, b"m")
    wal.close()
    wal.close()
    with pytest.raises(WALClosedError):
        wal.save(None, [ent(1)])


def test_failed_fdatasync_poisons_the_wal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    wal = WAL.create(tmp_path, b"m")
    wal.save(None, [ent(1)])

    def failing(fd: int) -> None:  # injected: the disk reports an I/O error
        raise OSError(errno.EIO, "injected I/O error")

    monkeypatch.setattr(os, "fdatasync", failing)
    with pytest.raises(WALFailedError) as info:
        wal.save(None, [ent(2)])
    assert isinstance(info.value.__cause__, OSError)
    assert info.value.__cause__.errno == errno.EIO
    monkeypatch.undo()
    with pytest.raises(WALFailedError):
        wal.save(None, [ent(3)])  # even though fdatasync works again
    with pytest.raises(WALFailedError):
        wal.save_snapshot(1, 1)
    wal.close()
