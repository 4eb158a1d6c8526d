"""Domain errors of the MVCC store, carrying etcd's message strings.

The API layer maps each class to its gRPC status (raftkv.api.errors); etcd's server prefixes the
mvcc messages with "etcdserver: " on the wire, which that table does.
"""

from __future__ import annotations


class MVCCError(Exception):
    """Base class of every error the MVCC store raises on purpose."""

    message = "mvcc: error"

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or self.message)


class CompactedError(MVCCError):
    """The requested revision is older than the compaction revision."""

    message = "mvcc: required revision has been compacted"


class FutureRevisionError(MVCCError):
    """The requested revision is newer than the store's current revision."""

    message = "mvcc: required revision is a future revision"


class EmptyKeyError(MVCCError):
    """A write named the empty key, which etcd does not allow."""

    message = "etcdserver: key is not provided"
