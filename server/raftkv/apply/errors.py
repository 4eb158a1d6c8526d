"""Domain errors of applying etcd KV requests, carrying etcd's exact message strings.

raftkv.api.errors maps each class to etcd's gRPC status code; the messages are etcd's
(rpctypes), which clients compare byte for byte.
"""

from __future__ import annotations


class ApplyError(Exception):
    """Base class of the errors a request fails with, at validation or when applied."""

    message = "etcdserver: request failed"

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or self.message)


class EmptyKeyError(ApplyError):
    message = "etcdserver: key is not provided"


class KeyNotFoundError(ApplyError):
    """ignore_value/ignore_lease on a missing key, or an empty op in a txn (as etcd reports)."""

    message = "etcdserver: key not found"


class ValueProvidedError(ApplyError):
    message = "etcdserver: value is provided"


class LeaseProvidedError(ApplyError):
    message = "etcdserver: lease is provided"


class TooManyOpsError(ApplyError):
    message = "etcdserver: too many operations in txn request"


class DuplicateKeyError(ApplyError):
    message = "etcdserver: duplicate key given in txn request"


class LeaseNotFoundError(ApplyError):
    message = "etcdserver: requested lease not found"
