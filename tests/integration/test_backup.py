"""Backups of a loaded 3-member cluster into MinIO, restored into new 3-member clusters.

One source cluster per module: a full backup, two incrementals with writes between them
(multi-key transactions, deletes, a lease), then restores to the newest and to an earlier
revision, each into a new cluster whose keyspace must equal the source's at that revision
(HashKV, key count, every key-value with its revisions and version). Last, a compaction past
the newest backup makes the next incremental fail with the "take a full backup" error.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from raftkv.backup import BackupInfo, BackupRepository, FullBackupNeededError, MemberSpec
from raftkv.backup.s3 import DEFAULT_PART_SIZE
from raftkv.client import SyncClient, ops

from tests.support.raftkv import RaftKVCluster, plan_raftkv_cluster, start_raftkv_cluster
from tests.support.s3 import S3Server, s3_server

__all__ = ["s3_server"]  # the fixture, imported for this module's tests

pytestmark = pytest.mark.integration

Snapshot = dict[bytes, tuple[bytes, int, int, int, int]]


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RaftKVCluster]:
    with start_raftkv_cluster(tmp_path_factory.mktemp("backup-source"), size=3) as cluster:
        yield cluster


def keyspace(client: SyncClient, revision: int = 0) -> Snapshot:
    """Every key-value at `revision` (0: now) with its revisions, version and lease."""
    result = client.get(b"\0", from_key=True, revision=revision, timeout=30)
    return {
        kv.key: (kv.value, kv.create_revision, kv.mod_revision, kv.version, kv.lease)
        for kv in result.kvs
    }


def load(client: SyncClient, round_: int, lease_id: int = 0) -> int:
    """Puts, overwrites, deletes and multi-key transactions; returns the last revision."""
    for i in range(60):
        client.put(f"round{round_}/key{i:03d}", f"value-{round_}-{i}" * (1 + i % 5))
    for i in range(0, 60, 7):
        client.put(f"round{round_}/key{i:03d}", f"overwritten-{round_}-{i}")
    client.delete(f"round{round_}/key01", prefix=True)  # key010..key019
    client.put("shared/counter", str(round_))
    if lease_id:
        client.put(f"round{round_}/leased", "alive", lease=lease_id)
    result = (
        client.txn()
        .then(
            ops.put(f"round{round_}/txn-a", "a"),
            ops.put(f"round{round_}/txn-b", "b"),
            ops.delete(f"round{round_}/key000"),
        )
        .commit()
    )
    return result.header.revision


def restore_cluster(
    repo: BackupRepository, root: Path, revision: int = 0
) -> tuple[RaftKVCluster, list[int]]:
    """A new 3-member cluster restored from the bucket; returns it and the restored revisions."""
    cluster = plan_raftkv_cluster(root, size=3)
    revisions = []
    try:
        for member in cluster.members:
            outcome = repo.restore(
                MemberSpec(
                    name=member.name,
                    data_dir=member.data_dir,
                    initial_cluster={m.name: [m.peer_url] for m in cluster.members},
                    initial_cluster_token=cluster.initial_cluster_token,
                    initial_advertise_peer_urls=[member.peer_url],
                ),
                revision=revision,
            )
            revisions.append(outcome.result.revision)
        cluster.start()
    except BaseException:
        cluster.stop()
        raise
    return cluster, revisions


def assert_same_keyspace(
    source: SyncClient,
    source_endpoint: str,
    restored: RaftKVCluster,
    revision: int,
    expected: Snapshot,
) -> None:
    want_hash = source.hash_kv(source_endpoint, revision, timeout=30).hash
    with SyncClient(restored.endpoints, timeout=30) as client:
        got = keyspace(client)
        assert client.get(b"\0", from_key=True, count_only=True).count == len(expected)
        for member in restored.members:
            answer = client.hash_kv(member.client_url, revision, timeout=30)
            assert answer.header.revision == revision
            assert answer.hash == want_hash, f"{member.name}: HashKV differs from the source"
        assert client.get(b"\0", from_key=True, count_only=True).header.revision == revision
        # The restored cluster is a working cluster: it takes writes after the restored ones.
        assert client.put("after/restore", "ok").header.revision == revision + 1
    assert got == expected


def test_full_and_incremental_backups_restore_to_latest_and_earlier_revisions(
    source: RaftKVCluster, s3_server: S3Server, tmp_path: Path
) -> None:
    repo = BackupRepository(f"s3://{s3_server.new_bucket()}/clusters/a", s3=s3_server.client())
    endpoint = source.members[0].client_url
    with SyncClient(source.endpoints, timeout=30) as client:
        lease = client.lease_grant(3600).id
        for i in range(90):  # 9 MB of values: the snapshot is uploaded in two 8 MiB parts
            client.put(f"bulk/{i:03d}", bytes([i]) * 100_000)
        load(client, 0, lease)
        full = repo.save_full(client)
        assert full.kind == "full" and full.revision == keyspace_revision(client)
        assert full.size > DEFAULT_PART_SIZE

        middle = load(client, 1, lease)
        at_middle = keyspace(client, middle)
        load(client, 2)
        first = repo.save_incremental(client)
        assert (first.base_revision, first.parent) == (full.revision, full.key)

        newest = load(client, 3, lease)
        at_newest = keyspace(client, newest)
        second = repo.save_incremental(client)
        assert (second.base_revision, second.revision) == (first.revision, newest)
        assert second.events > 0

        assert [b.key for b in repo.list().backups] == [full.key, first.key, second.key]
        assert all(report.ok for report in repo.verify())

        latest, revisions = restore_cluster(repo, tmp_path / "latest")
        with latest:
            assert revisions == [newest] * 3
            assert_same_keyspace(client, endpoint, latest, newest, at_newest)
            # The lease comes from the full backup; keys put with it later are attached again.
            with SyncClient(latest.endpoints, timeout=30) as restored:
                attached = restored.lease_time_to_live(lease, keys=True)
            assert attached.granted_ttl == 3600
            assert set(attached.keys) == {b"round0/leased", b"round1/leased", b"round3/leased"}

        # `middle` lies inside the first incremental: its events are replayed up to there.
        assert full.revision < middle < first.revision
        earlier, revisions = restore_cluster(repo, tmp_path / "earlier", middle)
        with earlier:
            assert revisions == [middle] * 3
            assert_same_keyspace(client, endpoint, earlier, middle, at_middle)


def keyspace_revision(client: SyncClient) -> int:
    return client.get(b"\0", from_key=True, count_only=True).header.revision


def test_incremental_after_compaction_past_the_last_backup_asks_for_a_full_backup(
    source: RaftKVCluster, s3_server: S3Server
) -> None:
    repo = BackupRepository(f"s3://{s3_server.new_bucket()}/b", s3=s3_server.client())
    with SyncClient(source.endpoints, timeout=30) as client:
        full: BackupInfo = repo.save_full(client)
        client.put("compaction/k", "1")
        client.put("compaction/k", "2")
        client.compact(keyspace_revision(client))
        with pytest.raises(FullBackupNeededError) as caught:
            repo.save_incremental(client)
        message = str(caught.value)
        assert "compacted" in message and "take a full backup" in message
        assert f"revision {full.revision}" in message
        # Nothing half-written stays behind, and a full backup then restarts the chain.
        assert [b.key for b in repo.list().backups] == [full.key]
        again = repo.save_full(client)
        unchanged = repo.save_incremental(client)
        assert (unchanged.events, unchanged.base_revision) == (0, again.revision)
        assert unchanged.revision == again.revision
        client.put("compaction/k", "3")
        after = repo.save_incremental(client)
        # A full backup and an incremental at the same revision: the chain goes on from the
        # full, the shorter way back.
        assert after.parent == again.key and after.events == 1
        assert repo.plan().incrementals == (after,)
        assert all(report.ok for report in repo.verify())
        # Retention drops the first chain (one full) and keeps the one restores now need.
        pruned = repo.prune(keep_last=1)
        assert [b.key for b in pruned.delete] == [full.key]
        assert [b.key for b in repo.list().backups] == [again.key, unchanged.key, after.key]
        assert repo.plan().revision == after.revision
        assert all(report.ok for report in repo.verify())
