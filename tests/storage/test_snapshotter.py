"""Snapshot files: round trip, newest wins, and damage of any kind is CorruptSnapshotError, never
a wrong snapshot (truncation and byte flips at seeded offsets, misnamed files)."""

import random
from pathlib import Path

import pytest
from raftkv.pb.raftpb.raft_pb2 import ConfState, Snapshot, SnapshotMetadata
from raftkv.storage.errors import CorruptSnapshotError
from raftkv.storage.snapshotter import Snapshotter

SEED = 99


def snap(index: int, term: int, data: bytes = b"") -> Snapshot:
    return Snapshot(
        metadata=SnapshotMetadata(
            index=index, term=term, conf_state=ConfState(voters=[1, 2, 3], learners=[4])
        ),
        data=data or f"state@{index}".encode() * 20,
    )


def test_save_and_load_newest_round_trip(tmp_path: Path) -> None:
    s = Snapshotter(tmp_path / "snap")
    assert s.load_newest() is None
    path = s.save(snap(0x2A, 3))
    assert path.name == "0000000000000003-000000000000002a.snap"
    assert not list(s.directory.glob("*.tmp"))
    assert Snapshotter(tmp_path / "snap").load_newest() == snap(0x2A, 3)


def test_newest_is_the_highest_index(tmp_path: Path) -> None:
    s = Snapshotter(tmp_path)
    for index, term in [(10, 1), (300, 2), (25, 2)]:
        s.save(snap(index, term))
    newest = s.load_newest()
    assert newest is not None and newest.metadata.index == 300


def test_refuses_an_empty_snapshot(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        Snapshotter(tmp_path).save(Snapshot())


def damage(path: Path, rng: random.Random, how: str) -> int:
    raw = bytearray(path.read_bytes())
    at = rng.randrange(0, len(raw))
    if how == "truncate":
        del raw[at:]
    else:
        raw[at] ^= rng.randrange(1, 256)
    path.write_bytes(bytes(raw))
    return at


@pytest.mark.parametrize("how", ["truncate", "flip"])
def test_damage_anywhere_is_detected_and_never_yields_a_snapshot(tmp_path: Path, how: str) -> None:
    rng = random.Random(f"{SEED}-{how}")
    for n in range(150):
        s = Snapshotter(tmp_path / f"{how}{n}")
        s.save(snap(5, 1))  # an older, valid one: not used unless fallback is allowed
        original = snap(9, 2, rng.randbytes(rng.randrange(1, 200)))
        path = s.save(original)
        assert s.load_newest() == original
        at = damage(path, rng, how)
        with pytest.raises(CorruptSnapshotError) as info:
            s.load_newest()
        assert info.value.path == path and str(path) in str(info.value), f"{how} at {at}"


def test_fallback_only_when_allowed_and_the_bad_file_is_kept_aside(tmp_path: Path) -> None:
    s = Snapshotter(tmp_path)
    s.save(snap(5, 1))
    path = s.save(snap(9, 2))
    path.write_bytes(path.read_bytes()[:-1])
    with pytest.raises(CorruptSnapshotError):
        s.load_newest()
    assert s.load_newest(allow_fallback=True) == snap(5, 1)
    assert not path.exists()
    assert path.with_name(path.name + ".broken").exists()


def test_a_misnamed_file_is_corrupt(tmp_path: Path) -> None:
    s = Snapshotter(tmp_path)
    good = s.save(snap(9, 2))
    wrong = tmp_path / "0000000000000002-0000000000000010.snap"
    good.rename(wrong)
    with pytest.raises(CorruptSnapshotError, match="not what its name says"):
        s.load_newest()


def test_stray_temp_files_are_removed_on_open(tmp_path: Path) -> None:
    s = Snapshotter(tmp_path)
    s.save(snap(3, 1))
    stray = tmp_path / "0000000000000001-0000000000000007.snap.tmp"
    stray.write_bytes(b"half")
    unrelated = tmp_path / "notes.txt"
    unrelated.write_text("keep me")
    s = Snapshotter(tmp_path)
    assert not stray.exists() and unrelated.exists()
    assert s.load_newest() == snap(3, 1)


def test_purge_keeps_the_newest(tmp_path: Path) -> None:
    s = Snapshotter(tmp_path)
    for i in range(1, 9):
        s.save(snap(i * 10, 1))
    removed = s.purge(keep=3)
    assert len(removed) == 5
    assert [p.name[-9:-5] for p in s.paths()] == ["0050", "0046", "003c"]
    newest = s.load_newest()
    assert newest is not None and newest.metadata.index == 80
    with pytest.raises(ValueError):
        s.purge(keep=0)
