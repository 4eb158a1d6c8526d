"""The WAL and snapshot decoders on damaged files: the documented error, or data that was
really written — never another exception, never something that was not there.

The WAL is a fixed history (several segments, truncations, hard states, a snapshot marker).
Its acceptable recoveries are what opening it gives after cutting its last segment at each
record boundary: the states a crash could have left. A damaged copy must open to one of those
(a torn tail dropped) or raise CorruptWALError; the snapshot file must load unchanged or raise
CorruptSnapshotError.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import strategies as st
from raftkv.pb.raftpb.raft_pb2 import ConfState, Entry, HardState, Snapshot, SnapshotMetadata
from raftkv.storage.errors import CorruptSnapshotError, CorruptWALError
from raftkv.storage.snapshotter import Snapshotter
from raftkv.storage.wal import WAL, WALContents

from tests.fuzz.support import fuzz, mutated

Recovered = tuple[bytes, bytes, int, int, tuple[bytes, ...]]


def summary(contents: WALContents) -> Recovered:
    return (
        contents.metadata,
        contents.hard_state.SerializeToString(deterministic=True),
        contents.snapshot_index,
        contents.snapshot_term,
        tuple(entry.SerializeToString(deterministic=True) for entry in contents.entries),
    )


def write_history(directory: Path) -> None:
    wal = WAL.create(directory, b"member-metadata", segment_bytes=300)
    for index in range(1, 13):
        term = 1 + index // 5
        wal.save(
            HardState(term=term, vote=index % 3, commit=index - 1),
            [Entry(index=index, term=term, data=b"entry-%d" % index * 3)],
        )
    # A new leader overwrites the tail, then a snapshot marker moves the start.
    wal.save(HardState(term=9, vote=2, commit=9), [Entry(index=10, term=9, data=b"rewritten")])
    wal.save_snapshot(4, 1)
    wal.save(HardState(term=9, vote=2, commit=11), [Entry(index=11, term=9, data=b"last")])
    wal.close()


def record_boundaries(segment: Path) -> list[int]:
    """Offsets in `segment` where a record ends (after the magic)."""
    data = segment.read_bytes()
    offsets, position = [], 8
    while position + 13 <= len(data):
        length = int.from_bytes(data[position : position + 4], "little")
        position += 13 + length
        offsets.append(position)
    return offsets


@pytest.fixture(scope="module")
def history() -> Iterator[tuple[Path, set[Recovered]]]:
    with tempfile.TemporaryDirectory() as root:
        original = Path(root) / "wal"
        write_history(original)
        segments = sorted(original.glob("*.wal"))
        assert len(segments) >= 3
        acceptable: set[Recovered] = set()
        for cut in record_boundaries(segments[-1]):
            copy = Path(root) / f"cut-{cut}"
            shutil.copytree(original, copy)
            with open(sorted(copy.glob("*.wal"))[-1], "r+b") as f:
                f.truncate(cut)
            try:
                wal, contents = WAL.open(copy)
            except CorruptWALError:
                continue  # a cut inside the preamble
            wal.close()
            acceptable.add(summary(contents))
        yield original, acceptable


def test_a_damaged_wal_opens_to_a_crash_state_or_raises_corrupt_wal_error(
    history: tuple[Path, set[Recovered]],
) -> None:
    original, acceptable = history
    segments = sorted(original.glob("*.wal"))
    with tempfile.TemporaryDirectory() as root:
        scratch = Path(root)

        def body(which: int, edit: st.DataObject) -> None:
            copy = scratch / "wal"
            shutil.rmtree(copy, ignore_errors=True)
            shutil.copytree(original, copy)
            target = copy / segments[which % len(segments)].name
            damaged = edit.draw(mutated(target.read_bytes()))
            target.write_bytes(damaged)
            try:
                wal, contents = WAL.open(copy)
            except CorruptWALError:
                return
            wal.close()
            assert summary(contents) in acceptable, "the damaged WAL recovered unwritten data"

        fuzz(body, st.integers(0, 10), st.data(), examples=200)


def snapshot(index: int, term: int, data: bytes) -> Snapshot:
    return Snapshot(
        data=data,
        metadata=SnapshotMetadata(index=index, term=term, conf_state=ConfState(voters=[1, 2, 3])),
    )


def test_a_damaged_snapshot_loads_unchanged_or_raises_corrupt_snapshot_error() -> None:
    with tempfile.TemporaryDirectory() as root:
        snapshotter = Snapshotter(Path(root))
        older = snapshot(10, 2, b"older state")
        newer = snapshot(20, 3, b"newer state " * 20)
        snapshotter.save(older)
        path = snapshotter.save(newer)
        original = path.read_bytes()

        def body(edit: st.DataObject) -> None:
            path.write_bytes(edit.draw(mutated(original)))
            try:
                loaded = snapshotter.load(path)
            except CorruptSnapshotError:
                # What a restart does with fallback allowed: the older snapshot, intact.
                fallback = Snapshotter(Path(root)).load_newest(allow_fallback=True)
                assert fallback == older
                broken = path.with_name(path.name + ".broken")
                broken.rename(path)
                return
            assert loaded == newer

        fuzz(body, st.data(), examples=150)
