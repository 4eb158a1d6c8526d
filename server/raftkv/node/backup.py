"""Backend snapshot files: check them, describe them, and restore a member's data dir from one.

A snapshot file is what the Maintenance `Snapshot` stream delivers and `etcdctl snapshot save`
stores: the backend database (one sqlite file) followed by the SHA-256 of the database bytes.
As in etcd, the trailer is recognised by the file size: a database is a whole number of pages,
so `size % 512 == 32` means "database + hash"; a file without it (a copy of `member/snap/db`)
is accepted only with `skip_hash_check`.

`restore_member` is the inverse of `MemberServer._restart`: it builds a data dir that a member
restarts from as a member of a NEW cluster holding the snapshot's keyspace and revision, like
`etcdctl snapshot restore`. Run once per member, with the same cluster arguments each time:

- `member/snap/db`: the database with the old cluster's identity replaced: the member list is
  the new initial cluster (etcd's member/cluster ID formulas, so every member computes the same
  IDs alone), and what belonged to the old cluster's members or log is dropped (removed IDs,
  refused conf-change indexes, member-scoped alarms). Its consistent index is n, the number of
  members: the entries 1..n below are "already applied".
- `member/wal/`: metadata (member ID, cluster ID), the n ADD_NODE conf-change entries at term 1
  that founded the new cluster, hard state (term 1, commit n), and a snapshot marker at n.
- `member/snap/*.snap`: a Raft snapshot at (n, term 1) whose conf state lists the n voters, so
  Raft knows the configuration on restart without replaying anything.

The data dir is built beside its final path and renamed into place at the end, so a failed
restore leaves nothing a member could mistake for a data dir.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sqlite3
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path

from raftkv.apply.alarms import ALARM_BUCKET
from raftkv.membership import Member, Membership, compute_cluster_id, compute_member_id
from raftkv.membership.members import MEMBERS_BUCKET, REFUSED_BUCKET, REMOVED_BUCKET
from raftkv.mvcc import KVStore, Revision
from raftkv.mvcc.store import KEY_BUCKET, META_BUCKET
from raftkv.pb.raftpb import raft_pb2 as raftpb
from raftkv.pb.serverpb import internal_pb2 as serverpb
from raftkv.storage import fileutil
from raftkv.storage.backend import TO_END, Backend
from raftkv.storage.snapshotter import Snapshotter
from raftkv.storage.wal import WAL

SHA256_BYTES = 32
_TABLE_PREFIX = "bucket_"
_COPY_CHUNK = 1 << 20

# Buckets tied to the old cluster's members or log; a restored cluster starts them empty.
_OLD_CLUSTER_BUCKETS = (MEMBERS_BUCKET, REMOVED_BUCKET, REFUSED_BUCKET, ALARM_BUCKET)


class SnapshotFileError(Exception):
    """The file is not a usable snapshot (damaged, truncated, not a raftkv database)."""


class RestoreError(Exception):
    """The restore cannot proceed (bad arguments, existing data dir, unusable snapshot)."""


def _sha256_prefix(path: Path, length: int) -> bytes:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        remaining = length
        while remaining > 0:
            chunk = f.read(min(_COPY_CHUNK, remaining))
            if not chunk:
                break
            digest.update(chunk)
            remaining -= len(chunk)
    return digest.digest()


def verify_snapshot_file(path: Path, *, skip_hash_check: bool = False) -> int:
    """Check the SHA-256 trailer; returns the length of the database part of the file."""
    size = path.stat().st_size
    if size % 512 == SHA256_BYTES:
        db_bytes = size - SHA256_BYTES
        if not skip_hash_check:
            with path.open("rb") as f:
                f.seek(db_bytes)
                expected = f.read(SHA256_BYTES)
            actual = _sha256_prefix(path, db_bytes)
            if actual != expected:
                raise SnapshotFileError(
                    f"expected sha256 {expected.hex()}, got {actual.hex()}: "
                    f"{path} is damaged or incomplete"
                )
        return db_bytes
    if not skip_hash_check:
        raise SnapshotFileError(
            f"snapshot missing hash but --skip-hash-check=false: {path} is truncated, or not "
            "a snapshot saved from a member"
        )
    return size


@contextmanager
def _read_only(path: Path) -> Iterator[sqlite3.Connection]:
    """The database in `path` opened without writing anything next to it."""
    with closing(sqlite3.connect(f"{path.resolve().as_uri()}?immutable=1", uri=True)) as conn:
        yield conn


def _check_database(conn: sqlite3.Connection, path: Path) -> list[str]:
    """Integrity-check a raftkv backend; returns its bucket names (sorted)."""
    try:
        problems = [row[0] for row in conn.execute("PRAGMA integrity_check")]
        tables = [
            row[0]
            for row in conn.execute(
                "SELECT name FROM sqlite_schema WHERE type = 'table' ORDER BY name"
            )
        ]
    except sqlite3.DatabaseError as error:
        raise SnapshotFileError(f"{path} is not a raftkv backend database: {error}") from None
    if problems != ["ok"]:
        raise SnapshotFileError(
            f"snapshot file integrity check failed. {len(problems)} errors found.\n"
            + "\n".join(problems)
        )
    buckets = sorted(t[len(_TABLE_PREFIX) :] for t in tables if t.startswith(_TABLE_PREFIX))
    if KEY_BUCKET not in buckets or META_BUCKET not in buckets:
        raise SnapshotFileError(f"{path} is not a raftkv backend database (no key bucket)")
    return buckets


@dataclass(frozen=True)
class SnapshotStatus:
    """etcdctl's `snapshot status`: `total_key` counts the rows of every bucket, as etcd does."""

    hash: int
    revision: int
    total_key: int
    total_size: int


def snapshot_status(path: Path) -> SnapshotStatus:
    """Describe a snapshot file (with or without its trailer); it is only read.

    The hash is the one `Backend.hash` (the Maintenance `Hash` RPC) computes over the same
    database, so it can be compared with a live member's.
    """
    if not path.is_file():
        raise SnapshotFileError(f"{path}: no such file")
    with _read_only(path) as conn:
        buckets = _check_database(conn, path)
        crc = 0
        total = 0
        revision = 0
        for name in buckets:
            crc = zlib.crc32(name.encode(), crc)
            last_key = b""
            for k, v in conn.execute(f'SELECT k, v FROM "{_TABLE_PREFIX}{name}" ORDER BY k'):
                crc = zlib.crc32(v, zlib.crc32(k, crc))
                total += 1
                last_key = k
            if name == KEY_BUCKET and last_key:
                revision = Revision.from_bytes(last_key).main
        page_count = conn.execute("PRAGMA page_count").fetchone()[0]
        page_size = conn.execute("PRAGMA page_size").fetchone()[0]
    return SnapshotStatus(crc, revision, total, page_count * page_size)


@dataclass(frozen=True)
class RestoreSpec:
    """etcdctl snapshot restore's arguments; URLs as text (`http://host:port`)."""

    snapshot: Path
    name: str
    data_dir: Path
    initial_cluster: Mapping[str, Sequence[str]]
    initial_cluster_token: str
    initial_advertise_peer_urls: Sequence[str]
    skip_hash_check: bool = False
    # Called with the restored store (at the snapshot's revision) before the backend is sealed,
    # to apply later changes: point-in-time restores replay backed-up events here.
    replay: Callable[[KVStore], object] | None = None


@dataclass(frozen=True)
class RestoreResult:
    member_id: int
    cluster_id: int
    members: tuple[Member, ...]
    revision: int
    # The Raft index the restored member starts from (its snapshot and consistent index).
    index: int


def new_cluster_members(initial_cluster: Mapping[str, Sequence[str]], token: str) -> list[Member]:
    """The founding members of a new cluster, sorted by ID, with etcd's member IDs."""
    members = [
        Member(
            id=compute_member_id(urls, token),
            name=name,
            peer_urls=tuple(sorted(urls)),
        )
        for name, urls in initial_cluster.items()
    ]
    return sorted(members, key=lambda m: m.id)


def _check_spec(spec: RestoreSpec) -> None:
    own = spec.initial_cluster.get(spec.name)
    if own is None:
        raise RestoreError(
            f'couldn\'t find local name "{spec.name}" in the initial cluster configuration'
        )
    if sorted(own) != sorted(spec.initial_advertise_peer_urls):
        raise RestoreError(
            f"--initial-cluster has {spec.name}={','.join(sorted(own))} but missing from "
            f"--initial-advertise-peer-urls={','.join(sorted(spec.initial_advertise_peer_urls))}"
        )
    if spec.data_dir.exists():
        raise RestoreError(f'data-dir "{spec.data_dir}" exists')


def _copy_prefix(source: Path, dest: Path, length: int) -> None:
    with source.open("rb") as src, dest.open("xb") as out:
        remaining = length
        while remaining > 0:
            chunk = src.read(min(_COPY_CHUNK, remaining))
            if not chunk:
                raise SnapshotFileError(f"{source} ended {remaining} bytes early")
            out.write(chunk)
            remaining -= len(chunk)
        out.flush()
        os.fsync(out.fileno())


def _rewrite_backend(
    db: Path,
    members: Sequence[Member],
    cluster_id: int,
    replay: Callable[[KVStore], object] | None = None,
) -> int:
    """Give the database the new cluster's identity (and `replay`'s changes); returns its
    current revision."""
    backend = Backend(db)
    try:
        for bucket in _OLD_CLUSTER_BUCKETS:
            backend.create_bucket(bucket)
            backend.delete_range(bucket, b"", TO_END)
        membership = Membership.load(backend)
        for member in members:
            membership.apply(
                raftpb.ConfChange(
                    type=raftpb.CONF_CHANGE_ADD_NODE, node_id=member.id, context=member.to_json()
                )
            )
        membership.set_cluster_id(cluster_id)
        store = KVStore(backend)
        store.finish_compaction()
        if replay is not None:
            replay(store)
        store.set_consistent_index(len(members))
        backend.force_commit_durable()
        return store.current_revision
    finally:
        backend.close()


def _write_raft_state(
    member_dir: Path, me: Member, members: Sequence[Member], cluster_id: int
) -> None:
    n = len(members)
    metadata = serverpb.WALMetadata(member_id=me.id, cluster_id=cluster_id)
    wal = WAL.create(member_dir / "wal", metadata.SerializeToString())
    try:
        entries = [
            raftpb.Entry(
                term=1,
                index=i,
                type=raftpb.ENTRY_CONF_CHANGE,
                data=raftpb.ConfChange(
                    type=raftpb.CONF_CHANGE_ADD_NODE, node_id=m.id, context=m.to_json()
                ).SerializeToString(),
            )
            for i, m in enumerate(members, start=1)
        ]
        wal.save(raftpb.HardState(term=1, commit=n), entries)
        snapshot = raftpb.Snapshot(
            data=serverpb.SnapshotPayloadInfo(cluster_id=cluster_id).SerializeToString()
        )
        snapshot.metadata.index = n
        snapshot.metadata.term = 1
        snapshot.metadata.conf_state.voters.extend(m.id for m in members)
        # The snapshot file first: the WAL's marker must never point at nothing.
        Snapshotter(member_dir / "snap").save(snapshot)
        wal.save_snapshot(n, 1)
    finally:
        wal.close()


def restore_member(spec: RestoreSpec) -> RestoreResult:
    """Build `spec.data_dir` for member `spec.name` of a new cluster from a snapshot file."""
    _check_spec(spec)
    db_bytes = verify_snapshot_file(spec.snapshot, skip_hash_check=spec.skip_hash_check)
    members = new_cluster_members(spec.initial_cluster, spec.initial_cluster_token)
    me = next(m for m in members if m.name == spec.name)
    cluster_id = compute_cluster_id(m.id for m in members)

    data_dir = spec.data_dir.absolute()
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    building = data_dir.with_name(f".{data_dir.name}.restoring")
    shutil.rmtree(building, ignore_errors=True)
    try:
        snap_dir = building / "member" / "snap"
        snap_dir.mkdir(parents=True)
        db = snap_dir / "db"
        _copy_prefix(spec.snapshot, db, db_bytes)
        with _read_only(db) as conn:
            _check_database(conn, spec.snapshot)
        revision = _rewrite_backend(db, members, cluster_id, spec.replay)
        _write_raft_state(building / "member", me, members, cluster_id)
        os.rename(building, data_dir)
        fileutil.fsync_dir(data_dir.parent)
    except BaseException:
        shutil.rmtree(building, ignore_errors=True)
        raise
    return RestoreResult(me.id, cluster_id, tuple(members), revision, len(members))
