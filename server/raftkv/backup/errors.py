"""The backup engine's failures, one class per thing a user must do differently.

They carry complete sentences: `raftkvctl` prints them as they are, and the operator puts them in
its status and events.
"""

from __future__ import annotations


class BackupError(Exception):
    """A backup, restore, verification or prune could not be done."""


class CorruptBackupError(BackupError):
    """An object in the bucket is damaged, truncated or does not match its metadata."""


class ChainError(BackupError):
    """The backups needed to reach a revision are missing, from another cluster, or have a gap."""


class FullBackupNeededError(BackupError):
    """An incremental backup is impossible (no previous backup of this cluster, or its history
    was compacted past the last backup's revision): take a full backup."""
