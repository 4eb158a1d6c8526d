"""The decisions made from the bucket's metadata alone: metadata parsing, which backups a restore
to a revision or a time uses, which backup an incremental continues, and what retention keeps."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from raftkv.backup.catalog import (
    FULL,
    INCREMENTAL,
    BackupInfo,
    chains,
    data_key,
    latest_of_cluster,
    plan_restore,
    plan_retention,
)
from raftkv.backup.errors import ChainError, CorruptBackupError

T0 = datetime(2026, 1, 1, tzinfo=UTC)
CLUSTER = 0xABC


def full(revision: int, hour: int, cluster: int = CLUSTER) -> BackupInfo:
    when = T0 + timedelta(hours=hour)
    return BackupInfo(
        kind=FULL,
        key=data_key("p/", FULL, when),
        cluster_id=cluster,
        member_id=1,
        revision=revision,
        raft_index=revision + 10,
        raft_term=2,
        time=when,
        size=4128,
        sha256="ab" * 32,
    )


def incremental(parent: BackupInfo, revision: int, hour: int, **changes: object) -> BackupInfo:
    when = T0 + timedelta(hours=hour)
    fields = {
        "kind": INCREMENTAL,
        "key": data_key("p/", INCREMENTAL, when),
        "cluster_id": parent.cluster_id,
        "member_id": 1,
        "revision": revision,
        "raft_index": revision + 10,
        "raft_term": 2,
        "time": when,
        "size": 100,
        "sha256": "cd" * 32,
        "base_revision": parent.revision,
        "parent": parent.key,
        "events": revision - parent.revision,
    }
    fields.update(changes)
    return BackupInfo(**fields)  # type: ignore[arg-type]


# -- metadata -----------------------------------------------------------------------------------


def test_metadata_round_trips_through_json() -> None:
    f = full(10, 0)
    i = incremental(f, 15, 1)
    for info in (f, i):
        assert BackupInfo.from_json(info.to_json(), info.metadata_key) == info
    stored = json.loads(f.to_json())
    assert stored["cluster_id"] == "abc" and stored["time"] == "2026-01-01T00:00:00.000000Z"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d.update(sha256="xyz"), "sha256"),
        (lambda d: d.update(kind="partial"), "unknown kind"),
        (lambda d: d.update(format=99), "unknown format"),
        (lambda d: d.pop("revision"), "revision"),
        (lambda d: d.update(revision="12"), "revision must be an integer"),
        (lambda d: d.update(parent="p/other"), "a full backup has no parent"),
        (lambda d: d.update(key="p/elsewhere-full.db"), "describes p/elsewhere-full.db"),
    ],
)
def test_damaged_metadata_is_refused_with_the_reason(change: object, message: str) -> None:
    info = full(10, 0)
    fields = json.loads(info.to_json())
    change(fields)  # type: ignore[operator]
    with pytest.raises(CorruptBackupError, match=message):
        BackupInfo.from_json(json.dumps(fields).encode(), info.metadata_key)


def test_metadata_that_is_not_json_is_refused() -> None:
    with pytest.raises(CorruptBackupError, match="unreadable"):
        BackupInfo.from_json(b"\x00garbage", "p/x.json")


def test_data_keys_sort_chronologically() -> None:
    order = [(0, FULL), (1, INCREMENTAL), (10, FULL)]
    keys = [data_key("p/", kind, T0 + timedelta(seconds=s)) for s, kind in order]
    assert keys == sorted(keys)
    assert keys[0] == "p/20260101T000000.000000Z-full.db"


# -- restore plans ------------------------------------------------------------------------------


def test_restore_defaults_to_the_newest_revision_through_the_whole_chain() -> None:
    f = full(10, 0)
    i1 = incremental(f, 20, 1)
    i2 = incremental(i1, 30, 2)
    plan = plan_restore([f, i1, i2])
    assert (plan.full, plan.incrementals, plan.revision) == (f, (i1, i2), 30)


def test_restore_to_a_revision_inside_an_incremental_stops_there() -> None:
    f = full(10, 0)
    i1 = incremental(f, 20, 1)
    i2 = incremental(i1, 30, 2)
    plan = plan_restore([f, i1, i2], revision=25)
    assert (plan.full, plan.incrementals, plan.revision) == (f, (i1, i2), 25)
    assert plan_restore([f, i1, i2], revision=10).incrementals == ()


def test_restore_prefers_the_newest_full_that_reaches_the_revision() -> None:
    f1 = full(10, 0)
    i1 = incremental(f1, 20, 1)
    f2 = full(20, 2)
    i2 = incremental(f2, 30, 3)
    assert plan_restore([f1, i1, f2, i2], revision=20).full == f2
    assert plan_restore([f1, i1, f2, i2], revision=15).full == f1
    assert plan_restore([f1, i1, f2, i2]).incrementals == (i2,)


def test_restore_to_a_time_takes_the_newest_backup_taken_by_then() -> None:
    f = full(10, 0)
    i1 = incremental(f, 20, 1)
    i2 = incremental(i1, 30, 2)
    plan = plan_restore([f, i1, i2], at=T0 + timedelta(hours=1, minutes=59))
    assert plan.revision == 20
    with pytest.raises(ChainError, match="no backup was taken at or before"):
        plan_restore([f, i1, i2], at=T0 - timedelta(seconds=1))


def test_a_missing_incremental_is_a_gap_that_refuses_the_restore() -> None:
    f = full(10, 0)
    i1 = incremental(f, 20, 1)
    i2 = incremental(i1, 30, 2)
    with pytest.raises(ChainError, match=f"continues {i1.key}, which is missing"):
        plan_restore([f, i2])
    assert plan_restore([f, i2], revision=10).full == f


def test_a_chain_with_a_revision_gap_or_another_cluster_is_refused() -> None:
    f = full(10, 0)
    skipping = incremental(f, 30, 1, base_revision=12)
    with pytest.raises(ChainError, match="gap in the backup chain"):
        plan_restore([f, skipping])
    foreign = incremental(f, 30, 1, cluster_id=0xDEF)
    with pytest.raises(ChainError, match="of another cluster"):
        plan_restore([f, foreign])


def test_revisions_outside_the_backups_are_refused() -> None:
    f = full(10, 0)
    i1 = incremental(f, 20, 1)
    with pytest.raises(ChainError, match="newer than the newest backup"):
        plan_restore([f, i1], revision=21)
    with pytest.raises(ChainError, match="older than the oldest full backup"):
        plan_restore([f, i1], revision=9)
    with pytest.raises(ChainError, match="no backup under this prefix"):
        plan_restore([])


def test_an_incremental_continues_the_newest_backup_of_its_own_cluster() -> None:
    f = full(10, 0)
    i1 = incremental(f, 20, 1)
    f2 = full(20, 2)
    other = full(50, 3, cluster=0xDEF)
    assert latest_of_cluster([f, i1, f2, other], CLUSTER) == f2
    assert latest_of_cluster([f, i1], CLUSTER) == i1
    assert latest_of_cluster([other], CLUSTER) is None


# -- retention ----------------------------------------------------------------------------------


def three_chains() -> list[BackupInfo]:
    f1 = full(10, 0)
    i1 = incremental(f1, 15, 1)
    i1b = incremental(i1, 18, 2)
    f2 = full(20, 24)
    i2 = incremental(f2, 25, 25)
    f3 = full(30, 48)
    return [f1, i1, i1b, f2, i2, f3]


def test_keep_last_deletes_whole_older_chains_newest_first() -> None:
    f1, i1, i1b, f2, i2, f3 = three_chains()
    plan = plan_retention([f1, i1, i1b, f2, i2, f3], keep_last=2, now=T0 + timedelta(days=3))
    assert set(plan.keep) == {f2, i2, f3}
    assert plan.delete == (i1b, i1, f1)


def test_max_age_keeps_every_chain_with_a_recent_backup() -> None:
    backups = three_chains()
    f1, i1, i1b, f2, i2, f3 = backups
    plan = plan_retention(backups, max_age=timedelta(hours=24), now=T0 + timedelta(hours=49))
    assert set(plan.keep) == {f2, i2, f3}  # i2 (25 h) is younger than 24 h at 49 h
    assert plan.delete == (i1b, i1, f1)
    # A rule that keeps nothing still keeps the newest chain.
    plan = plan_retention(backups, max_age=timedelta(hours=1), now=T0 + timedelta(days=30))
    assert set(plan.keep) == {f3}


def test_a_chain_is_kept_if_any_rule_keeps_it() -> None:
    backups = three_chains()
    plan = plan_retention(
        backups, keep_last=1, max_age=timedelta(hours=30), now=T0 + timedelta(hours=49)
    )
    assert {b.revision for b in plan.keep} == {20, 25, 30}


def test_retention_never_strands_an_incremental_from_its_full() -> None:
    backups = three_chains()
    for keep_last in (1, 2, 3):
        plan = plan_retention(backups, keep_last=keep_last, now=T0 + timedelta(days=9))
        kept = {b.key for b in plan.keep}
        for info in plan.keep:
            if not info.is_full:
                assert info.parent in kept
            assert plan_restore(list(plan.keep), revision=info.revision)


def test_incrementals_without_a_full_are_reported_and_left_alone() -> None:
    f1 = full(10, 0)
    i1 = incremental(f1, 15, 1)
    orphan = incremental(i1, 18, 2)
    f2 = full(20, 3)
    plan = plan_retention([orphan, f2], keep_last=1, now=T0 + timedelta(days=1))
    assert plan.broken == (orphan,) and plan.delete == () and plan.keep == (f2,)
    all_chains, broken = chains([f1, i1, orphan, f2])
    assert [c.full for c in all_chains] == [f1, f2] and broken == []


def test_retention_needs_a_rule() -> None:
    with pytest.raises(ValueError, match="keep_last"):
        plan_retention([], now=T0)
    with pytest.raises(ValueError, match="at least 1"):
        plan_retention([], keep_last=0, now=T0)
