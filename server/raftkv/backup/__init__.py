"""Backups of a raftkv (or etcd v3) cluster to S3-compatible object storage, and restores.

    from raftkv.backup import BackupRepository, MemberSpec
    from raftkv.client import SyncClient

    repo = BackupRepository("s3://bucket/cluster-a", endpoint_url="http://127.0.0.1:9000")
    with SyncClient("127.0.0.1:2379") as client:
        full = repo.save_full(client)              # Maintenance.Snapshot -> multipart upload
        later = repo.save_incremental(client)      # the watch history since the last backup
    repo.restore(MemberSpec(...), revision=full.revision)   # once per member of a new cluster
    repo.prune(keep_last=3)

Layout and chains: `raftkv.backup.catalog`; the engine: `raftkv.backup.engine`; the
incremental format: `raftkv.backup.events`; object storage: `raftkv.backup.s3`.
"""

from raftkv.backup.catalog import FULL, INCREMENTAL, BackupInfo, RestorePlan, RetentionPlan
from raftkv.backup.engine import (
    BackupRepository,
    Listing,
    MemberSpec,
    RestoreOutcome,
    VerifyReport,
)
from raftkv.backup.errors import (
    BackupError,
    ChainError,
    CorruptBackupError,
    FullBackupNeededError,
)
from raftkv.backup.s3 import S3Location, make_client

__all__ = [
    "FULL",
    "INCREMENTAL",
    "BackupError",
    "BackupInfo",
    "BackupRepository",
    "ChainError",
    "CorruptBackupError",
    "FullBackupNeededError",
    "Listing",
    "MemberSpec",
    "RestoreOutcome",
    "RestorePlan",
    "RetentionPlan",
    "S3Location",
    "VerifyReport",
    "make_client",
]
