"""Domain errors of the storage package.

They carry the facts an operator needs to act (which file, which byte offset) as attributes and
in the message, because a corrupt WAL or snapshot is never repaired silently: the member refuses
to start and a human decides (restore from a peer, or remove the member and re-add it).
"""

from pathlib import Path


class StorageError(Exception):
    """Base class of every error raised by raftkv.storage."""


class CorruptWALError(StorageError):
    """A WAL segment holds bytes that are not a valid record, before its torn tail (if any)."""

    def __init__(self, path: Path, offset: int, reason: str) -> None:
        super().__init__(f"corrupt WAL segment {path} at byte offset {offset}: {reason}")
        self.path = path
        self.offset = offset
        self.reason = reason


class CorruptSnapshotError(StorageError):
    """A snapshot file is truncated, fails its checksum or does not match its name."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"corrupt snapshot file {path}: {reason}")
        self.path = path
        self.reason = reason


class WALExistsError(StorageError):
    """WAL.create was asked to create a WAL in a directory that already holds one."""


class WALClosedError(StorageError):
    """The WAL was closed; it accepts no more writes."""


class WALFailedError(StorageError):
    """An earlier write or fsync failed; the WAL refuses all further writes.

    After a failed fsync the kernel may have dropped the dirty pages, so what is on disk is unknown;
    the only safe continuation is to restart the member and recover from what the disk holds.
    The original OSError is the ``__cause__``.
    """
