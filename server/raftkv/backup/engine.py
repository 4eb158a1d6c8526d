"""The backup engine: save, list, verify, restore and prune the backups under one S3 prefix.

`BackupRepository` is the whole API; `raftkvctl backup ...` and the operator both drive it. It
is blocking (boto3 is): async callers run it in a worker thread (`asyncio.to_thread`). The
cluster is reached through a `raftkv.client.SyncClient` the caller owns.

- **Full**: `Maintenance.Snapshot` from the most up-to-date healthy voter (a follower on a
  tie, to spare the leader) streams straight into a multipart upload; the etcd trailer (the
  SHA-256 of the database) is checked as the bytes pass, the object is checked by HEAD after
  upload, and only then is the metadata written.
- **Incremental**: the changes since the newest backup of the same cluster, read from the watch
  history (a watch over the whole keyspace from that backup's revision + 1, with prev_kv) up
  to the revision observed when the backup starts. A watch response never splits a revision,
  so the backup ends on a whole revision. A history compacted past the last backup cannot be
  read: `FullBackupNeededError`.
- **Restore** downloads the chain beside the data dir (verifying sizes and SHA-256s against
  the metadata before anything is built), restores the full snapshot with
  `raftkv.node.backup.restore_member` (new cluster identity, the given membership) and replays
  the incrementals' events into the restored store up to the target revision.
- **Prune** applies `catalog.plan_retention` and deletes metadata before data, so a backup
  disappears from listings before any of its bytes do.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from raftkv.backup.catalog import (
    FULL,
    INCREMENTAL,
    METADATA_SUFFIX,
    BackupInfo,
    RestorePlan,
    RetentionPlan,
    chain_to_full,
    data_key,
    latest_of_cluster,
    plan_restore,
    plan_retention,
)
from raftkv.backup.errors import (
    BackupError,
    ChainError,
    CorruptBackupError,
    FullBackupNeededError,
)
from raftkv.backup.events import MAGIC, encode_record, read_events, replay
from raftkv.backup.s3 import (
    DEFAULT_PART_SIZE,
    S3_ERRORS,
    MultipartUpload,
    Progress,
    S3Location,
    describe,
    download,
    iter_object,
    make_client,
    verify_upload,
)
from raftkv.client import Event, StatusResult, SyncClient, errors
from raftkv.mvcc import KVStore
from raftkv.node.backup import (
    SHA256_BYTES,
    RestoreError,
    RestoreResult,
    RestoreSpec,
    SnapshotFileError,
    restore_member,
    verify_snapshot_file,
)
from raftkv.pb.mvccpb import kv_pb2

# How long an incremental backup waits for the next watch response before giving up.
DEFAULT_EVENT_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class MemberSpec:
    """The member of the new cluster a restore builds (`etcdctl snapshot restore`'s flags)."""

    name: str
    data_dir: Path
    initial_cluster: Mapping[str, Sequence[str]]
    initial_cluster_token: str
    initial_advertise_peer_urls: Sequence[str]


@dataclass(frozen=True)
class RestoreOutcome:
    plan: RestorePlan
    result: RestoreResult


@dataclass(frozen=True)
class Listing:
    """The backups under the prefix (oldest first) and the metadata objects that could not be
    read, by key, with the reason."""

    backups: tuple[BackupInfo, ...]
    unreadable: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class VerifyReport:
    """One backup checked; `problem` is empty when it is intact and restorable."""

    key: str
    info: BackupInfo | None
    problem: str

    @property
    def ok(self) -> bool:
        return not self.problem


class _TrailerCheck:
    """A sink for a snapshot stream that checks, as bytes pass (and are forwarded to `out`),
    that the last 32 are the SHA-256 of all before them (what `etcdctl snapshot save` checks)."""

    def __init__(self, out: MultipartUpload | None = None) -> None:
        self._out = out
        self._digest = hashlib.sha256()
        self._tail = b""

    def write(self, data: bytes) -> int:
        if self._out is not None:
            self._out.write(data)
        joined = self._tail + data
        cut = max(len(joined) - SHA256_BYTES, 0)
        self._digest.update(joined[:cut])
        self._tail = joined[cut:]
        return len(data)

    @property
    def intact(self) -> bool:
        return len(self._tail) == SHA256_BYTES and self._digest.digest() == self._tail

    def finish(self) -> None:
        if not self.intact:
            raise CorruptBackupError(
                "the snapshot stream is damaged or cut short: it does not end with the SHA-256 "
                "of its data"
            )


def _event_pb(event: Event) -> kv_pb2.Event:
    def kv(value: Any) -> kv_pb2.KeyValue:
        return kv_pb2.KeyValue(
            key=value.key,
            value=value.value,
            create_revision=value.create_revision,
            mod_revision=value.mod_revision,
            version=value.version,
            lease=value.lease,
        )

    out = kv_pb2.Event(type=event.type.value, kv=kv(event.kv))
    if event.prev_kv is not None:
        out.prev_kv.CopyFrom(kv(event.prev_kv))
    return out


def choose_member(answers: Sequence[tuple[str, StatusResult | str]]) -> tuple[str, StatusResult]:
    """The member a full backup streams from, given each endpoint's Status (or the error it
    gave): a voter that knows a leader and reports no error, the highest applied index first
    (the freshest snapshot), a follower on a tie (a snapshot costs its member CPU and I/O)."""
    candidates: list[tuple[str, StatusResult]] = []
    problems: list[str] = []
    for endpoint, status in answers:
        if isinstance(status, str):
            problems.append(f"{endpoint}: {status}")
        elif status.is_learner:
            problems.append(f"{endpoint}: a learner")
        elif not status.leader:
            problems.append(f"{endpoint}: no leader")
        elif status.errors:
            problems.append(f"{endpoint}: {'; '.join(status.errors)}")
        else:
            candidates.append((endpoint, status))
    if not candidates:
        raise BackupError("no healthy member to back up from: " + ", ".join(problems))
    return max(
        candidates,
        key=lambda c: (c[1].raft_applied_index, c[1].leader != c[1].header.member_id),
    )


class BackupRepository:
    """The backups under `s3://BUCKET/PREFIX`; see the module docstring.

    `s3` is a boto3 S3 client (default: one from boto3's credential chain for `endpoint_url`
    and `region`). `clock` gives the current UTC time (backup times, retention ages)."""

    def __init__(
        self,
        location: S3Location | str,
        s3: Any | None = None,
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        part_size: int = DEFAULT_PART_SIZE,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.location = S3Location.parse(location) if isinstance(location, str) else location
        self.s3 = s3 if s3 is not None else make_client(endpoint_url, region=region)
        self._part_size = part_size
        self._clock = clock

    @property
    def _bucket(self) -> str:
        return self.location.bucket

    def _url(self, key: str) -> str:
        return f"s3://{self._bucket}/{key}"

    # -- listing --------------------------------------------------------------------------------

    def list(self) -> Listing:
        """Every backup whose metadata is readable, oldest first."""
        backups: list[BackupInfo] = []
        unreadable: dict[str, str] = {}
        try:
            pages = self.s3.get_paginator("list_objects_v2").paginate(
                Bucket=self._bucket, Prefix=self.location.prefix, Delimiter="/"
            )
            keys = [
                obj["Key"]
                for page in pages
                for obj in page.get("Contents", [])
                if obj["Key"].endswith(METADATA_SUFFIX)
            ]
            for key in keys:
                raw = self.s3.get_object(Bucket=self._bucket, Key=key)["Body"].read()
                try:
                    backups.append(BackupInfo.from_json(raw, key))
                except CorruptBackupError as error:
                    unreadable[key] = str(error)
        except S3_ERRORS as error:
            raise BackupError(f"cannot list {self.location}: {describe(error)}") from None
        backups.sort(key=lambda b: (b.time, b.revision))
        return Listing(tuple(backups), unreadable)

    # -- saving ---------------------------------------------------------------------------------

    def save(
        self,
        client: SyncClient,
        *,
        kind: str = FULL,
        progress: Progress | None = None,
    ) -> BackupInfo:
        """A `full` or `incremental` backup of the cluster `client` reaches."""
        if kind == FULL:
            return self.save_full(client, progress=progress)
        if kind == INCREMENTAL:
            return self.save_incremental(client, progress=progress)
        raise ValueError(f"kind must be {FULL!r} or {INCREMENTAL!r}, not {kind!r}")

    def _pick_member(self, client: SyncClient) -> tuple[str, StatusResult]:
        answers: list[tuple[str, StatusResult | str]] = []
        for endpoint in client.endpoints:
            try:
                answers.append((endpoint, client.status(endpoint)))
            except errors.EtcdError as error:
                answers.append((endpoint, error.message))
        return choose_member(answers)

    def _finish(self, upload: MultipartUpload, info: BackupInfo) -> BackupInfo:
        """Check the uploaded data object, then write the metadata that makes it a backup; on
        failure remove the data object."""
        try:
            verify_upload(self.s3, upload)
            self.s3.put_object(
                Bucket=self._bucket,
                Key=info.metadata_key,
                Body=info.to_json(),
                ContentType="application/json",
            )
        except BaseException:
            with contextlib.suppress(*S3_ERRORS):
                self.s3.delete_object(Bucket=self._bucket, Key=upload.key)
            raise
        return info

    def save_full(self, client: SyncClient, *, progress: Progress | None = None) -> BackupInfo:
        """Stream a snapshot of one healthy member into the bucket; returns its metadata."""
        endpoint, status = self._pick_member(client)
        when = self._clock()
        key = data_key(self.location.prefix, FULL, when)
        try:
            with MultipartUpload(self.s3, self._bucket, key, part_size=self._part_size) as upload:
                check = _TrailerCheck(upload)
                snap = client.snapshot(check, endpoint=endpoint, progress=progress, timeout=None)
                check.finish()
                if snap.header.revision < 1:
                    raise BackupError("the member sent its snapshot without a revision header")
                upload.complete()
        except S3_ERRORS as error:
            raise BackupError(f"cannot upload {self._url(key)}: {describe(error)}") from None
        info = BackupInfo(
            kind=FULL,
            key=key,
            cluster_id=snap.header.cluster_id,
            member_id=snap.header.member_id,
            revision=snap.header.revision,
            raft_index=status.raft_index,
            raft_term=snap.header.raft_term,
            time=when,
            size=upload.size,
            sha256=upload.sha256,
        )
        try:
            return self._finish(upload, info)
        except S3_ERRORS as error:
            raise BackupError(f"cannot store {self._url(key)}: {describe(error)}") from None

    def save_incremental(
        self,
        client: SyncClient,
        *,
        progress: Progress | None = None,
        event_timeout: float = DEFAULT_EVENT_TIMEOUT_S,
    ) -> BackupInfo:
        """Store the changes since the newest backup of this cluster; returns its metadata.

        `progress(revisions_done, revisions_left)`. Raises FullBackupNeededError when there is
        no backup of this cluster to continue or its revision was compacted away."""
        head = client.get(b"\0", from_key=True, count_only=True)
        cluster_id, until = head.header.cluster_id, head.header.revision
        listing = self.list()
        parent = latest_of_cluster(listing.backups, cluster_id)
        if parent is None:
            raise FullBackupNeededError(
                f"there is no backup of cluster {cluster_id:x} under {self.location} for an "
                "incremental backup to continue: take a full backup first"
            )
        if parent.revision > until:
            raise ChainError(
                f"the newest backup of cluster {cluster_id:x} ({parent.key}) is at revision "
                f"{parent.revision}, ahead of the cluster's revision {until}"
            )
        status = client.status()
        when = self._clock()
        key = data_key(self.location.prefix, INCREMENTAL, when)
        try:
            with MultipartUpload(self.s3, self._bucket, key, part_size=self._part_size) as upload:
                upload.write(MAGIC)
                count = self._copy_history(client, parent, until, upload, progress, event_timeout)
                upload.complete()
        except S3_ERRORS as error:
            raise BackupError(f"cannot upload {self._url(key)}: {describe(error)}") from None
        info = BackupInfo(
            kind=INCREMENTAL,
            key=key,
            cluster_id=cluster_id,
            member_id=head.header.member_id,
            revision=until,
            raft_index=status.raft_index,
            raft_term=head.header.raft_term,
            time=when,
            size=upload.size,
            sha256=upload.sha256,
            base_revision=parent.revision,
            parent=parent.key,
            events=count,
        )
        try:
            return self._finish(upload, info)
        except S3_ERRORS as error:
            raise BackupError(f"cannot store {self._url(key)}: {describe(error)}") from None

    def _copy_history(
        self,
        client: SyncClient,
        parent: BackupInfo,
        until: int,
        out: MultipartUpload,
        progress: Progress | None,
        event_timeout: float,
    ) -> int:
        """Write the events of revisions (parent.revision, until] to `out`; returns how many."""
        after = parent.revision
        if until == after:
            return 0
        count = 0
        last = after
        try:
            with client.watch(
                b"\0", from_key=True, start_revision=after + 1, prev_kv=True
            ) as watch:
                while last < until:
                    try:
                        batch = watch.next(timeout=event_timeout)
                    except TimeoutError:
                        raise BackupError(
                            f"the watch history stopped at revision {last} for "
                            f"{event_timeout:.0f} s before reaching revision {until}"
                        ) from None
                    for event in batch.events:
                        if event.revision > last + 1:
                            raise BackupError(
                                f"the watch history jumped from revision {last} to "
                                f"{event.revision}: an incremental backup would have a gap"
                            )
                        if event.revision > until:
                            break
                        out.write(encode_record(_event_pb(event)))
                        last = event.revision
                        count += 1
                    if progress is not None:
                        progress(last - after, until - last)
        except errors.CompactedError as error:
            compacted = f" at revision {error.compact_revision}" if error.compact_revision else ""
            raise FullBackupNeededError(
                f"the cluster's history was compacted{compacted}, past revision {after + 1} "
                f"that the last backup ({parent.key}, revision {after}) needs next: an "
                "incremental backup cannot reach back; take a full backup"
            ) from None
        except StopIteration:
            raise BackupError(f"the watch ended at revision {last} before {until}") from None
        return count

    # -- verification ---------------------------------------------------------------------------

    def verify(self, keys: Sequence[str] = ()) -> list[VerifyReport]:
        """Read back every backup (or those whose data key is in `keys`): size and SHA-256 as
        in the metadata, a full's snapshot trailer, an incremental's events (decodable, in its
        revision range, without gaps) and its chain back to a full backup."""
        listing = self.list()
        reports = [VerifyReport(k, None, problem) for k, problem in listing.unreadable.items()]
        by_key = {b.key: b for b in listing.backups}
        for info in listing.backups:
            if keys and info.key not in keys:
                continue
            problem = ""
            try:
                self._verify_data(info)
                chain_to_full(info, by_key)
            except (BackupError, *S3_ERRORS) as error:
                problem = describe(error) if isinstance(error, S3_ERRORS) else str(error)
            reports.append(VerifyReport(info.key, info, problem))
        missing = set(keys) - {r.key for r in reports}
        reports.extend(VerifyReport(k, None, "no such backup") for k in sorted(missing))
        return reports

    def _verify_data(self, info: BackupInfo) -> None:
        name = self._url(info.key)
        raw = _HashingStream(iter_object(self.s3, self._bucket, info.key))
        stream = io.BufferedReader(raw, buffer_size=1 << 20)
        trailer_ok = True
        if info.is_full:
            trailer = _TrailerCheck()
            while chunk := stream.read(1 << 20):
                trailer.write(chunk)
            trailer_ok = trailer.intact
        else:
            last = info.base_revision
            for event in read_events(stream, name):
                revision = event.kv.mod_revision
                if not (last <= revision <= last + 1 and revision <= info.revision):
                    raise CorruptBackupError(
                        f"{name} has revision {revision} after {last}, outside "
                        f"({info.base_revision}, {info.revision}] or with a gap"
                    )
                last = revision
            if last != info.revision:
                raise CorruptBackupError(
                    f"{name} ends at revision {last}, its metadata says {info.revision}: truncated"
                )
        if raw.size != info.size:
            raise CorruptBackupError(f"{name} has {raw.size} bytes, its metadata says {info.size}")
        if raw.digest.hexdigest() != info.sha256:
            raise CorruptBackupError(f"{name} does not match the SHA-256 in its metadata: damaged")
        if not trailer_ok:
            raise CorruptBackupError(
                f"{name}: the snapshot's SHA-256 trailer does not match its data"
            )

    # -- restore --------------------------------------------------------------------------------

    def plan(self, *, revision: int = 0, at: datetime | None = None) -> RestorePlan:
        """The backups a restore to `revision` (0: newest) or to time `at` would use."""
        listing = self.list()
        try:
            return plan_restore(listing.backups, revision=revision, at=at)
        except ChainError as error:
            if listing.unreadable:
                raise ChainError(
                    f"{error} (unreadable metadata: {', '.join(sorted(listing.unreadable))})"
                ) from None
            raise

    def restore(
        self,
        member: MemberSpec,
        *,
        revision: int = 0,
        at: datetime | None = None,
        progress: Progress | None = None,
    ) -> RestoreOutcome:
        """Build `member.data_dir` for one member of a new cluster holding the keyspace at
        `revision` (0: the newest backed-up one) or as of the newest backup at or before `at`.
        Run once per member with the same cluster arguments. `progress(bytes_done, left)`
        follows the downloads."""
        plan = self.plan(revision=revision, at=at)
        data_dir = member.data_dir.absolute()
        if data_dir.exists():
            raise BackupError(f'data-dir "{member.data_dir}" exists')
        data_dir.parent.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=f".{data_dir.name}.download-", dir=data_dir.parent))
        try:
            files = self._download_chain(plan, work, progress)
            spec = RestoreSpec(
                snapshot=files[0],
                name=member.name,
                data_dir=data_dir,
                initial_cluster=member.initial_cluster,
                initial_cluster_token=member.initial_cluster_token,
                initial_advertise_peer_urls=member.initial_advertise_peer_urls,
                replay=lambda store: self._replay(store, plan, files[1:]),
            )
            try:
                result = restore_member(spec)
            except (RestoreError, SnapshotFileError) as error:
                raise BackupError(str(error)) from None
        finally:
            shutil.rmtree(work, ignore_errors=True)
        return RestoreOutcome(plan, result)

    def _download_chain(
        self, plan: RestorePlan, work: Path, progress: Progress | None
    ) -> list[Path]:
        chain = (plan.full, *plan.incrementals)
        total = sum(b.size for b in chain)
        done = 0
        files = []
        for position, info in enumerate(chain):
            path = work / f"{position:04d}-{info.kind}"
            report = None
            if progress is not None:
                base = done

                def report(got: int, _left: int, base: int = base) -> None:
                    progress(base + got, total - base - got)

            try:
                download(
                    self.s3,
                    self._bucket,
                    info.key,
                    path,
                    size=info.size,
                    sha256=info.sha256,
                    progress=report,
                )
            except S3_ERRORS as error:
                raise BackupError(f"cannot read {self._url(info.key)}: {describe(error)}") from None
            done += info.size
            files.append(path)
        try:
            verify_snapshot_file(files[0])
        except SnapshotFileError:
            raise CorruptBackupError(
                f"{self._url(plan.full.key)} is not a snapshot with a valid SHA-256 trailer"
            ) from None
        return files

    def _replay(self, store: KVStore, plan: RestorePlan, files: Sequence[Path]) -> None:
        if store.current_revision != plan.full.revision:
            raise CorruptBackupError(
                f"{self._url(plan.full.key)} holds the keyspace at revision "
                f"{store.current_revision}, its metadata says {plan.full.revision}"
            )
        for info, path in zip(plan.incrementals, files, strict=True):
            name = self._url(info.key)
            with path.open("rb") as stream:
                reached = replay(store, read_events(stream, name), until=plan.revision, name=name)
            if reached != min(info.revision, plan.revision):
                raise CorruptBackupError(
                    f"{name} ends at revision {reached}, its metadata says {info.revision}"
                )

    # -- retention ------------------------------------------------------------------------------

    def prune(
        self,
        *,
        keep_last: int | None = None,
        max_age: timedelta | None = None,
        dry_run: bool = False,
    ) -> RetentionPlan:
        """Delete the chains no retention rule keeps (see `catalog.plan_retention`); returns
        the plan, carried out unless `dry_run`."""
        listing = self.list()
        plan = plan_retention(
            listing.backups, keep_last=keep_last, max_age=max_age, now=self._clock()
        )
        if dry_run:
            return plan
        try:
            for info in plan.delete:
                self.s3.delete_object(Bucket=self._bucket, Key=info.metadata_key)
                self.s3.delete_object(Bucket=self._bucket, Key=info.key)
        except S3_ERRORS as error:
            raise BackupError(f"cannot delete from {self.location}: {describe(error)}") from None
        return plan


class _HashingStream(io.RawIOBase):
    """Object chunks as a readable raw stream that hashes and counts every byte read."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._pending = memoryview(b"")
        self.digest = hashlib.sha256()
        self.size = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while not self._pending:
            chunk = next(self._chunks, None)
            if chunk is None:
                return 0
            self.digest.update(chunk)
            self.size += len(chunk)
            self._pending = memoryview(chunk)
        n = min(len(buffer), len(self._pending))
        buffer[:n] = self._pending[:n]
        self._pending = self._pending[n:]
        return n


__all__ = [
    "BackupRepository",
    "Listing",
    "MemberSpec",
    "RestoreOutcome",
    "VerifyReport",
]
