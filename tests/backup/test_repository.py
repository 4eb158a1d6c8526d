"""The repository against a real S3 server (MinIO): restores rebuild the keyspace at any
backed-up revision, and damaged, truncated, mismatched or missing objects are refused with a
clear error, leaving no data dir behind. The "cluster" is a local MVCC store whose backups are
made the way the engine makes them (snapshot + SHA-256 trailer; length-delimited events), so
these tests need no raftkv processes; tests/integration/test_backup*.py drive real clusters."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from raftkv.backup import (
    BackupError,
    BackupInfo,
    BackupRepository,
    ChainError,
    CorruptBackupError,
    MemberSpec,
)
from raftkv.backup.catalog import FULL, INCREMENTAL, data_key
from raftkv.backup.events import MAGIC, encode_record
from raftkv.backup.s3 import MIN_PART_SIZE, MultipartUpload, verify_upload
from raftkv.mvcc import KVStore
from raftkv.storage.backend import Backend

from tests.support.s3 import S3Server

CLUSTER = 0x5EED
T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


class Source:
    """A store standing in for the backed-up cluster, with its backups in the bucket."""

    def __init__(self, path: Path, repo: BackupRepository) -> None:
        self.backend = Backend(path / "source.db")
        self.store = KVStore(self.backend)
        self.repo = repo
        self.path = path

    def write(self, round_: int, keys: int = 30, size: int = 10) -> int:
        for i in range(keys):
            with self.store.write() as txn:
                txn.put(f"k{i:04d}".encode(), f"{round_}-{i}".encode() * size)
        with self.store.write() as txn:
            txn.delete_range(b"k0001", b"k0004")
            txn.put(b"round", str(round_).encode())
        return self.store.current_revision

    def upload(self, kind: str, data: bytes, hour: float, **fields: object) -> BackupInfo:
        when = T0 + timedelta(hours=hour)
        key = data_key(self.repo.location.prefix, kind, when)
        with MultipartUpload(
            self.repo.s3, self.repo.location.bucket, key, part_size=MIN_PART_SIZE
        ) as upload:
            upload.write(data)
            upload.complete()
        defaults: dict[str, object] = {
            "kind": kind,
            "key": key,
            "cluster_id": CLUSTER,
            "member_id": 1,
            "revision": self.store.current_revision,
            "raft_index": 100,
            "raft_term": 2,
            "time": when,
            "size": len(data),
            "sha256": hashlib.sha256(data).hexdigest(),
        }
        info = BackupInfo(**{**defaults, **fields})  # type: ignore[arg-type]
        put_metadata(self.repo, info)
        return info

    def full(self, hour: float) -> BackupInfo:
        snap = self.path / f"snap-{hour}.db"
        self.backend.snapshot_to(snap)
        data = snap.read_bytes()
        return self.upload(FULL, data + hashlib.sha256(data).digest(), hour)

    def incremental(self, parent: BackupInfo, hour: float) -> BackupInfo:
        events = self.store.events_since(parent.revision + 1)
        data = MAGIC + b"".join(encode_record(e) for e in events)
        return self.upload(
            INCREMENTAL,
            data,
            hour,
            base_revision=parent.revision,
            parent=parent.key,
            events=len(events),
        )


def put_metadata(repo: BackupRepository, info: BackupInfo) -> None:
    repo.s3.put_object(Bucket=repo.location.bucket, Key=info.metadata_key, Body=info.to_json())


def replace_object(repo: BackupRepository, key: str, data: bytes) -> None:
    repo.s3.put_object(Bucket=repo.location.bucket, Key=key, Body=data)


def read_object(repo: BackupRepository, key: str) -> bytes:
    return repo.s3.get_object(Bucket=repo.location.bucket, Key=key)["Body"].read()


@pytest.fixture
def source(s3_server: S3Server, tmp_path: Path) -> Iterator[Source]:
    repo = BackupRepository(
        f"s3://{s3_server.new_bucket()}/team/cluster-a/",
        s3=s3_server.client(),
        part_size=MIN_PART_SIZE,
        clock=lambda: T0 + timedelta(days=2),
    )
    src = Source(tmp_path, repo)
    yield src
    src.backend.close()


def member(tmp_path: Path, name: str = "m0") -> MemberSpec:
    return MemberSpec(
        name=name,
        data_dir=tmp_path / "restored" / f"{name}.raftkv",
        initial_cluster={"m0": ["http://127.0.0.1:2380"], "m1": ["http://127.0.0.1:2381"]},
        initial_cluster_token="restored",
        initial_advertise_peer_urls=[f"http://127.0.0.1:{2380 + int(name[1:])}"],
    )


def restored_store(spec: MemberSpec) -> KVStore:
    return KVStore(Backend(spec.data_dir / "member" / "snap" / "db"))


def build_chain(source: Source) -> tuple[BackupInfo, BackupInfo, BackupInfo, int]:
    source.write(0, keys=60, size=30000)  # 60 keys of 90-150 kB: a snapshot of two parts
    full = source.full(0)
    middle = source.write(1)
    first = source.incremental(full, 1)
    source.write(2)
    second = source.incremental(first, 2)
    return full, first, second, middle


def test_restore_rebuilds_the_keyspace_at_the_newest_an_earlier_or_a_timed_revision(
    source: Source, tmp_path: Path
) -> None:
    full, first, second, middle = build_chain(source)
    assert full.size > MIN_PART_SIZE  # the multipart path, several parts
    repo = source.repo
    cases = [
        ({}, second.revision),
        ({"revision": middle}, middle),
        ({"revision": full.revision}, full.revision),
        ({"at": T0 + timedelta(hours=1, minutes=30)}, first.revision),
    ]
    for n, (target, revision) in enumerate(cases):
        spec = member(tmp_path / str(n))
        outcome = repo.restore(spec, **target)  # type: ignore[arg-type]
        assert outcome.result.revision == revision
        store = restored_store(spec)
        assert store.hash_kv()[0] == source.store.hash_kv(revision)[0]
        assert store.range(b"k", b"l").kvs == source.store.range(b"k", b"l", revision=revision).kvs
    assert [r.ok for r in repo.verify()] == [True, True, True]


def test_a_damaged_full_backup_is_refused_and_leaves_nothing_behind(
    source: Source, tmp_path: Path
) -> None:
    full, *_ = build_chain(source)
    data = bytearray(read_object(source.repo, full.key))
    data[5000] ^= 0xFF
    replace_object(source.repo, full.key, bytes(data))
    spec = member(tmp_path)
    with pytest.raises(CorruptBackupError, match=r"SHA-256 .* its metadata says .*: damaged"):
        source.repo.restore(spec)
    assert not spec.data_dir.parent.exists() or list(spec.data_dir.parent.iterdir()) == []
    reports = {r.key: r for r in source.repo.verify()}
    assert "damaged" in reports[full.key].problem
    assert sum(not r.ok for r in reports.values()) == 1


def test_a_full_backup_whose_trailer_does_not_match_is_refused(
    source: Source, tmp_path: Path
) -> None:
    source.write(0)
    full = source.full(0)
    data = bytearray(read_object(source.repo, full.key))
    data[100] ^= 0x01  # damaged before upload: the metadata describes the damaged bytes
    replace_object(source.repo, full.key, bytes(data))
    put_metadata(
        source.repo,
        BackupInfo(**{**full.__dict__, "sha256": hashlib.sha256(data).hexdigest()}),
    )
    with pytest.raises(CorruptBackupError, match="valid SHA-256 trailer"):
        source.repo.restore(member(tmp_path))
    assert "trailer does not match" in source.repo.verify()[0].problem


def test_a_truncated_incremental_is_refused(source: Source, tmp_path: Path) -> None:
    _, first, _, _ = build_chain(source)
    data = read_object(source.repo, first.key)[:-7]
    replace_object(source.repo, first.key, data)
    with pytest.raises(CorruptBackupError, match="truncated or replaced"):
        source.repo.restore(member(tmp_path / "a"))
    # Even with metadata rewritten to match the short object, the events give it away.
    put_metadata(
        source.repo,
        BackupInfo(
            **{**first.__dict__, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        ),
    )
    with pytest.raises(CorruptBackupError, match="truncated"):
        source.repo.restore(member(tmp_path / "b"))
    problems = [r.problem for r in source.repo.verify() if not r.ok]
    assert len(problems) == 1 and "truncated" in problems[0]


def test_metadata_that_does_not_match_the_objects_is_refused(
    source: Source, tmp_path: Path
) -> None:
    full, first, second, _ = build_chain(source)
    put_metadata(source.repo, BackupInfo(**{**full.__dict__, "revision": full.revision - 1}))
    with pytest.raises(ChainError, match="gap in the backup chain"):
        source.repo.restore(member(tmp_path / "a"))
    with pytest.raises(CorruptBackupError, match="holds the keyspace at revision"):
        source.repo.restore(member(tmp_path / "b"), revision=full.revision - 1)
    put_metadata(source.repo, full)
    put_metadata(source.repo, BackupInfo(**{**second.__dict__, "cluster_id": 0xBAD}))
    with pytest.raises(ChainError, match="of another cluster"):
        source.repo.restore(member(tmp_path / "c"))
    assert source.repo.restore(member(tmp_path / "d"), revision=first.revision)


def test_a_missing_incremental_breaks_only_the_revisions_after_it(
    source: Source, tmp_path: Path
) -> None:
    full, first, second, _ = build_chain(source)
    bucket = source.repo.location.bucket
    source.repo.s3.delete_object(Bucket=bucket, Key=first.metadata_key)
    with pytest.raises(ChainError, match=f"continues {first.key}, which is missing"):
        source.repo.restore(member(tmp_path / "a"))
    assert source.repo.restore(member(tmp_path / "b"), revision=full.revision)
    bad = [r for r in source.repo.verify() if not r.ok]
    assert [r.key for r in bad] == [second.key] and "missing" in bad[0].problem


def test_unreadable_metadata_is_reported_not_fatal(source: Source, tmp_path: Path) -> None:
    source.write(0)
    full = source.full(0)
    bucket = source.repo.location.bucket
    source.repo.s3.put_object(Bucket=bucket, Key=f"{source.repo.location.prefix}x.json", Body=b"{")
    listing = source.repo.list()
    assert [b.key for b in listing.backups] == [full.key]
    assert list(listing.unreadable) == [f"{source.repo.location.prefix}x.json"]
    assert source.repo.restore(member(tmp_path)).result.revision == full.revision
    assert [r.ok for r in source.repo.verify()] == [False, True]


def test_prune_keeps_every_backup_a_retained_restore_needs(source: Source, tmp_path: Path) -> None:
    old_full, old_inc, _, _ = build_chain(source)
    source.write(3)
    new_full = source.full(24)
    source.write(4)
    new_inc = source.incremental(new_full, 25)
    repo = source.repo
    plan = repo.prune(keep_last=1, dry_run=True)
    assert len(repo.list().backups) == 5 and len(plan.delete) == 3
    plan = repo.prune(keep_last=1)
    assert [b.key for b in repo.list().backups] == [new_full.key, new_inc.key]
    keys = [o["Key"] for o in repo.s3.list_objects_v2(Bucket=repo.location.bucket)["Contents"]]
    assert not any(k.startswith((old_full.key, old_inc.key)) for k in keys)
    assert repo.restore(member(tmp_path)).result.revision == new_inc.revision
    with pytest.raises(ChainError, match="older than the oldest full backup"):
        repo.plan(revision=old_inc.revision)
    # The clock is two days after T0: an age rule alone keeps the newest chain anyway.
    assert repo.prune(max_age=timedelta(hours=1)).delete == ()


def test_an_upload_that_differs_from_what_was_sent_is_caught(s3_server: S3Server) -> None:
    client = s3_server.client()
    bucket = s3_server.new_bucket()
    with MultipartUpload(client, bucket, "obj", part_size=MIN_PART_SIZE) as upload:
        upload.write(b"x" * 1000)
        upload.complete()
    verify_upload(client, upload)
    client.put_object(Bucket=bucket, Key="obj", Body=b"y" * 1000)
    with pytest.raises(CorruptBackupError, match="ETag"):
        verify_upload(client, upload)
    client.put_object(Bucket=bucket, Key="obj", Body=b"y" * 999)
    with pytest.raises(CorruptBackupError, match="999 bytes"):
        verify_upload(client, upload)


def test_a_failed_upload_leaves_neither_an_object_nor_an_open_multipart_upload(
    s3_server: S3Server,
) -> None:
    client = s3_server.client()
    bucket = s3_server.new_bucket()
    with pytest.raises(RuntimeError), MultipartUpload(client, bucket, "obj") as upload:
        upload.write(b"x" * (MIN_PART_SIZE * 2))  # parts are on the server already
        raise RuntimeError("the snapshot stream broke")
    assert client.list_objects_v2(Bucket=bucket).get("Contents", []) == []
    assert client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


def test_a_restore_refuses_an_existing_data_dir_and_a_bad_location(
    source: Source, tmp_path: Path
) -> None:
    source.write(0)
    source.full(0)
    spec = member(tmp_path)
    spec.data_dir.mkdir(parents=True)
    with pytest.raises(BackupError, match="exists"):
        source.repo.restore(spec)
    with pytest.raises(BackupError, match="not an s3://"):
        BackupRepository("https://bucket/x", s3=source.repo.s3)
    missing = BackupRepository("s3://no-such-bucket-here/x", s3=source.repo.s3)
    with pytest.raises(BackupError, match="NoSuchBucket"):
        missing.list()
