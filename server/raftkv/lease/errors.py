"""Domain errors of the lessor, carrying etcd's message strings.

`raftkv.api.errors` maps each class to etcd's gRPC status. The apply layer hands these back to
the proposer as the result of a failed LeaseGrant / LeaseRevoke entry.
"""

from __future__ import annotations


class LeaseError(Exception):
    """Base class of every error the lessor raises on purpose."""

    message = "lease: error"

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or self.message)


class LeaseNotFoundError(LeaseError):
    message = "etcdserver: requested lease not found"


class LeaseExistsError(LeaseError):
    message = "etcdserver: lease already exists"


class LeaseTTLTooLargeError(LeaseError):
    message = "etcdserver: too large lease TTL"


class NotPrimaryError(LeaseError):
    """Renewals and remaining TTLs are only known by the leader's (the primary) lessor."""

    message = "etcdserver: not leader"
