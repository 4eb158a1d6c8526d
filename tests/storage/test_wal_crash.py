"""Crash and corruption recovery of the WAL.

A crash is simulated on a copy of the segment files taken after save() returned: the last
segment is cut at many seeded byte offsets (a torn write), or one byte is flipped (bit rot).
Recovery must return exactly the records that ended before the cut, truncate a damaged last
record, and raise CorruptWALError naming the file and the record's offset for anything earlier.
"""

import logging
import random
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
from raftkv.pb.raftpb.raft_pb2 import Entry, HardState
from raftkv.storage.errors import CorruptWALError
from raftkv.storage.wal import WAL

SEED = 20240611


@dataclass
class Written:
    """One save() call that returned: where its single record starts and ends in the file."""

    start: int
    end: int
    entry: Entry | None
    hard_state: HardState | None


@dataclass
class History:
    directory: Path
    preamble_end: int
    calls: list[Written]

    @property
    def segment(self) -> Path:
        (path,) = self.directory.glob("*.wal")
        return path

    def expected(self, cut: int) -> tuple[list[tuple[int, bytes]], HardState]:
        """What recovery must return when the file holds only its first `cut` bytes."""
        entries, hs = [], HardState()
        for c in self.calls:
            if c.end <= cut:
                if c.entry is not None:
                    entries.append((c.entry.index, c.entry.data))
                if c.hard_state is not None:
                    hs = c.hard_state
        return entries, hs

    def record_starting_before(self, offset: int) -> int:
        return max(c.start for c in self.calls if c.start <= offset)


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory) -> History:
    """One segment: 40 acknowledged saves, each writing exactly one record."""
    rng = random.Random(SEED)
    d = tmp_path_factory.mktemp("wal-history")
    wal = WAL.create(d, b"member=1")
    seg = wal.segment_paths[0]
    preamble_end = seg.stat().st_size
    calls, index = [], 0
    for n in range(40):
        start = seg.stat().st_size
        if n % 7 == 3:
            hs = HardState(term=1, vote=1, commit=index)
            wal.save(hs, [])
            calls.append(Written(start, seg.stat().st_size, None, hs))
        else:
            index += 1
            e = Entry(term=1, index=index, data=rng.randbytes(rng.randrange(0, 120)))
            wal.save(None, [e])
            calls.append(Written(start, seg.stat().st_size, e, None))
    wal.close()
    return History(d, preamble_end, calls)


def crashed_copy(history: History, dest: Path) -> Path:
    shutil.copytree(history.directory, dest)
    (path,) = dest.glob("*.wal")
    return path


def recovered(directory: Path) -> tuple[list[tuple[int, bytes]], HardState]:
    wal, got = WAL.open(directory)
    wal.close()
    return [(e.index, e.data) for e in got.entries], got.hard_state


def test_cut_at_any_offset_recovers_exactly_the_records_before_it(
    history: History, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    rng = random.Random(SEED + 1)
    size = history.calls[-1].end
    boundaries = {c.end + d for c in history.calls for d in (-1, 0, 1)}
    cuts = sorted(
        {k for k in boundaries if history.preamble_end <= k <= size}
        | set(rng.sample(range(history.preamble_end, size + 1), 80))
    )
    for n, cut in enumerate(cuts):
        path = crashed_copy(history, tmp_path / f"cut{n}")
        with open(path, "r+b") as f:
            f.truncate(cut)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="raftkv.storage.wal"):
            got = recovered(path.parent)
        assert got == history.expected(cut), f"cut at {cut}"
        valid_end = max([c.end for c in history.calls if c.end <= cut] + [history.preamble_end])
        assert path.stat().st_size == valid_end, "the torn tail must be truncated away"
        if cut != valid_end:
            assert f"{path}" in caplog.text and f"offset {valid_end}" in caplog.text
        else:
            assert not caplog.text


def test_after_a_torn_tail_is_truncated_new_writes_recover(
    history: History, tmp_path: Path
) -> None:
    path = crashed_copy(history, tmp_path / "w")
    last = history.calls[-1]
    with open(path, "r+b") as f:
        f.truncate(last.start + 5)
    wal, got = WAL.open(path.parent)
    next_index = got.entries[-1].index + 1
    wal.save(HardState(term=2, vote=1), [Entry(term=2, index=next_index, data=b"after")])
    wal.close()
    entries, hs = recovered(path.parent)
    assert entries[-1] == (next_index, b"after")
    assert entries[:-1] == history.expected(last.start)[0]
    assert hs == HardState(term=2, vote=1)


def test_a_zero_filled_tail_is_a_torn_write(history: History, tmp_path: Path) -> None:
    path = crashed_copy(history, tmp_path / "z")
    with open(path, "ab") as f:
        f.write(bytes(4096))  # the file was extended but its data never reached the disk
    assert recovered(path.parent) == history.expected(history.calls[-1].end)
    assert path.stat().st_size == history.calls[-1].end


def test_a_cut_inside_the_segment_preamble_is_corruption(history: History, tmp_path: Path) -> None:
    # Segments are created whole (temp file, fsync, rename): a short preamble is not a torn write.
    rng = random.Random(SEED + 2)
    for n, cut in enumerate(rng.sample(range(0, history.preamble_end), 10)):
        path = crashed_copy(history, tmp_path / f"p{n}")
        with open(path, "r+b") as f:
            f.truncate(cut)
        with pytest.raises(CorruptWALError) as info:
            WAL.open(path.parent)
        assert info.value.path == path and str(path) in str(info.value)


def test_a_flipped_byte_truncates_the_last_record_and_is_corruption_anywhere_earlier(
    history: History, tmp_path: Path
) -> None:
    rng = random.Random(SEED + 3)
    size = history.calls[-1].end
    last = history.calls[-1]
    offsets = sorted(
        set(rng.sample(range(0, size), 120)) | {0, last.start - 1, last.start, size - 1}
    )
    for n, at in enumerate(offsets):
        path = crashed_copy(history, tmp_path / f"f{n}")
        with open(path, "r+b") as f:
            f.seek(at)
            byte = f.read(1)[0]
            f.seek(at)
            f.write(bytes([byte ^ rng.randrange(1, 256)]))
        if at >= last.start:
            assert recovered(path.parent) == history.expected(last.start), f"flip at {at}"
            assert path.stat().st_size == last.start
            continue
        with pytest.raises(CorruptWALError) as info:
            WAL.open(path.parent)
        err = info.value
        assert err.path == path
        assert str(path) in str(err) and f"offset {err.offset}" in str(err)
        if at >= history.preamble_end:
            assert err.offset == history.record_starting_before(at), f"flip at {at}"
        else:
            assert err.offset <= at
        assert path.stat().st_size == size, "a corrupt WAL must be left as it was found"


def multi_segment(tmp_path: Path) -> tuple[Path, list[Path]]:
    wal = WAL.create(tmp_path / "wal", b"m", segment_bytes=512)
    for i in range(1, 61):
        wal.save(HardState(term=1, commit=i - 1), [Entry(term=1, index=i, data=bytes(30))])
    paths = wal.segment_paths
    wal.close()
    assert len(paths) >= 4
    return tmp_path / "wal", paths


def test_damage_to_an_earlier_segment_is_corruption_even_at_its_end(tmp_path: Path) -> None:
    directory, paths = multi_segment(tmp_path)
    victim = paths[1]
    size = victim.stat().st_size
    with open(victim, "r+b") as f:
        f.seek(size - 2)
        f.write(b"\xff\xff")
    with pytest.raises(CorruptWALError) as info:
        WAL.open(directory)
    assert info.value.path == victim and str(victim) in str(info.value)


def test_a_truncated_earlier_segment_is_corruption(tmp_path: Path) -> None:
    directory, paths = multi_segment(tmp_path)
    victim = paths[2]
    with open(victim, "r+b") as f:
        f.truncate(victim.stat().st_size - 3)
    with pytest.raises(CorruptWALError) as info:
        WAL.open(directory)
    assert info.value.path == victim


def test_a_missing_segment_is_corruption(tmp_path: Path) -> None:
    directory, paths = multi_segment(tmp_path)
    paths[2].unlink()
    with pytest.raises(CorruptWALError, match="missing") as info:
        WAL.open(directory)
    assert info.value.path == paths[3]


def test_a_replaced_segment_is_corruption(tmp_path: Path) -> None:
    # A segment from another WAL (valid records, wrong place) breaks the log's continuity.
    directory, paths = multi_segment(tmp_path)
    _, other_paths = multi_segment(tmp_path / "other")
    shutil.copy(other_paths[0], paths[2])
    with pytest.raises(CorruptWALError) as info:
        WAL.open(directory)
    assert info.value.path == paths[2]


def test_a_torn_last_segment_after_rotation_recovers(tmp_path: Path) -> None:
    directory, paths = multi_segment(tmp_path)
    last = paths[-1]
    with open(last, "r+b") as f:
        f.truncate(last.stat().st_size - 10)
    wal, got = WAL.open(directory)
    wal.close()
    # save() writes the entries before the hard state: the cut lost only the last hard state
    assert [e.index for e in got.entries] == list(range(1, 61))
    assert got.hard_state.commit == 58
