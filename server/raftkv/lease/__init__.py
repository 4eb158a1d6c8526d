"""Leases: the lessor (replicated lease state, leader-only deadlines) and the leader's loop."""

from raftkv.lease.errors import (
    LeaseError,
    LeaseExistsError,
    LeaseNotFoundError,
    LeaseTTLTooLargeError,
    NotPrimaryError,
)
from raftkv.lease.keeper import LeaseKeeper
from raftkv.lease.lessor import (
    LEASE_BUCKET,
    MAX_LEASE_TTL,
    NO_LEASE,
    Lease,
    Lessor,
    RangeDeleter,
    min_lease_ttl,
)

__all__ = [
    "LEASE_BUCKET",
    "MAX_LEASE_TTL",
    "NO_LEASE",
    "Lease",
    "LeaseError",
    "LeaseExistsError",
    "LeaseKeeper",
    "LeaseNotFoundError",
    "LeaseTTLTooLargeError",
    "Lessor",
    "NotPrimaryError",
    "RangeDeleter",
    "min_lease_ttl",
]
