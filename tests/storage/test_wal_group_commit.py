"""Group commit: concurrent asyncio callers share fdatasyncs, stay in call order, and resume only
once their records are durable; a failed fdatasync fails every waiting caller and the WAL.

Failures are injected by monkeypatching os.fdatasync (which the WAL calls from its worker
thread); elsewhere the real fdatasync runs, wrapped only to observe it.
"""

import asyncio
import errno
import os
import random
import threading
from pathlib import Path

import pytest
from raftkv.pb.raftpb.raft_pb2 import Entry, HardState
from raftkv.storage.errors import WALClosedError, WALFailedError
from raftkv.storage.wal import WAL, FlushStats, GroupCommitWAL


def ent(index: int, term: int = 1) -> Entry:
    return Entry(term=term, index=index, data=f"e{index}".encode())


def test_concurrent_saves_share_fsyncs_are_ordered_and_durable_on_return(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    wal = WAL.create(tmp_path, b"m", segment_bytes=4096)  # rotations happen mid-group too
    durable_through = [0]
    real = os.fdatasync

    def observed(fd: int) -> None:
        real(fd)
        durable_through[0] = wal.last_index  # every record written so far is now durable

    monkeypatch.setattr(os, "fdatasync", observed)
    rng = random.Random(7)
    flushes: list[FlushStats] = []
    gc = GroupCommitWAL(wal, on_flush=flushes.append)
    next_index = [0]
    n_writers = 300

    async def writer(delay: int) -> None:
        for _ in range(delay):
            await asyncio.sleep(0)
        next_index[0] += 1
        index = next_index[0]  # taken at call time: indexes follow the order of the calls
        await gc.save(HardState(term=1, commit=index - 1), [ent(index)])
        assert durable_through[0] >= index, "save returned before its record was durable"

    async def main() -> None:
        await asyncio.gather(*(writer(rng.randrange(0, 30)) for _ in range(n_writers)))
        await gc.close()

    asyncio.run(main())
    assert gc.calls == n_writers and gc.entries_written == n_writers
    assert gc.fsync_count < n_writers / 5, f"{gc.fsync_count} fsyncs for {n_writers} calls"
    assert gc.mean_entries_per_fsync > 5
    assert sum(f.calls for f in flushes) == n_writers
    assert gc.max_group_calls == max(f.calls for f in flushes) > 1
    assert len(wal.segment_paths) > 1
    _, got = WAL.open(tmp_path)
    assert [e.index for e in got.entries] == list(range(1, n_writers + 1))
    assert got.hard_state.commit == n_writers - 1


def test_fsync_failure_fails_every_waiting_caller_and_all_later_calls(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    wal = WAL.create(tmp_path, b"m")
    gc = GroupCommitWAL(wal)
    in_fsync, release = threading.Event(), threading.Event()

    def failing(fd: int) -> None:  # injected: blocks, then reports an I/O error
        in_fsync.set()
        release.wait(10)
        raise OSError(errno.EIO, "injected I/O error")

    async def main() -> list[object]:
        await gc.save(None, [ent(1)])  # durable: the real fdatasync
        monkeypatch.setattr(os, "fdatasync", failing)
        first = asyncio.create_task(gc.save(None, [ent(2)]))
        await asyncio.to_thread(in_fsync.wait, 10)
        # these queue while the failing fsync runs: they are never written
        queued = [asyncio.create_task(gc.save(None, [ent(i)])) for i in range(3, 10)]
        queued.append(asyncio.create_task(gc.save_snapshot(1, 1)))
        await asyncio.sleep(0)
        release.set()
        results = await asyncio.gather(first, *queued, return_exceptions=True)
        for call in (gc.save(None, [ent(10)]), gc.save_snapshot(1, 1), gc.release_before(1)):
            with pytest.raises(WALFailedError):
                await call
        await gc.close()
        return results

    results = asyncio.run(main())
    assert len(results) == 9
    for r in results:
        assert isinstance(r, WALFailedError)
        assert isinstance(r.__cause__, OSError) and r.__cause__.errno == errno.EIO
    with pytest.raises(WALFailedError):
        wal.save(None, [ent(10)])  # the WAL itself is poisoned too


def test_an_invalid_call_fails_alone(tmp_path: Path) -> None:
    gc = GroupCommitWAL(WAL.create(tmp_path, b"m"))

    async def main() -> list[object]:
        results = await asyncio.gather(
            gc.save(None, [ent(1)]),
            gc.save(None, [ent(5)]),  # a gap
            gc.save(None, [ent(2)]),
            return_exceptions=True,
        )
        await gc.close()
        return results

    ok1, bad, ok2 = asyncio.run(main())
    assert ok1 is None and ok2 is None
    assert isinstance(bad, ValueError) and "gap" in str(bad)
    _, got = WAL.open(tmp_path)
    assert [e.index for e in got.entries] == [1, 2]


def test_snapshot_and_release_keep_their_place_in_the_order(tmp_path: Path) -> None:
    gc = GroupCommitWAL(WAL.create(tmp_path, b"m", segment_bytes=300))

    async def main() -> None:
        await asyncio.gather(*(gc.save(None, [ent(i)]) for i in range(1, 41)))
        # one group: the marker, then the release (which syncs the marker before deleting)
        await asyncio.gather(
            gc.save(None, [ent(41)]),
            gc.save_snapshot(35, 1),
            gc.release_before(35),
            gc.save(None, [ent(42)]),
        )
        await gc.close()

    asyncio.run(main())
    first_left = gc.wal.segment_paths[0]
    assert int(first_left.name[17:33], 16) <= 36, "released the segment holding entry 36"
    _, got = WAL.open(tmp_path)
    assert got.snapshot_index == 35
    assert [e.index for e in got.entries] == list(range(36, 43))
    assert not (tmp_path / "0000000000000001-0000000000000001.wal").exists()


def test_a_cancelled_caller_does_not_withdraw_its_records(tmp_path: Path) -> None:
    gc = GroupCommitWAL(WAL.create(tmp_path, b"m"))

    async def main() -> None:
        task = asyncio.create_task(gc.save(None, [ent(1)]))
        await asyncio.sleep(0)  # queued
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await gc.save(None, [ent(2)])  # follows entry 1: it was written all the same
        await gc.close()

    asyncio.run(main())
    _, got = WAL.open(tmp_path)
    assert [e.index for e in got.entries] == [1, 2]


def test_close_waits_for_queued_calls_then_refuses_more(tmp_path: Path) -> None:
    gc = GroupCommitWAL(WAL.create(tmp_path, b"m"))

    async def main() -> None:
        tasks = [asyncio.create_task(gc.save(None, [ent(i)])) for i in range(1, 21)]
        await asyncio.sleep(0)
        await gc.close()
        assert all(t.done() and t.exception() is None for t in tasks)
        with pytest.raises(WALClosedError):
            await gc.save(None, [ent(21)])

    asyncio.run(main())
    _, got = WAL.open(tmp_path)
    assert len(got.entries) == 20


def test_commit_only_saves_skip_the_fsync_and_the_next_synced_save_covers_them(
    tmp_path: Path,
) -> None:
    """Raft's must_sync is false when only the commit index moved: no fdatasync is owed."""

    async def scenario() -> tuple[int, int, int]:
        group = GroupCommitWAL(WAL.create(tmp_path / "wal", b"meta"))
        await group.save(HardState(term=1, vote=1, commit=0), [ent(1), ent(2)])
        synced = group.wal.fsync_count
        await group.save(HardState(term=1, vote=1, commit=2), [], sync=False)
        after_commit_only = group.wal.fsync_count
        await group.save(None, [ent(3)])
        after_next = group.wal.fsync_count
        await group.close()
        return synced, after_commit_only, after_next

    synced, after_commit_only, after_next = asyncio.run(scenario())
    assert after_commit_only == synced
    assert after_next == synced + 1
    _, contents = WAL.open(tmp_path / "wal")
    assert contents.hard_state.commit == 2
    assert [e.index for e in contents.entries] == [1, 2, 3]
