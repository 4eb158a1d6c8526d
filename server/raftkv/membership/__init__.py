"""Cluster membership: member identities, the member list, and how configuration changes apply."""

from raftkv.membership.errors import (
    IDRemovedError,
    MemberExistsError,
    MemberNotFoundError,
    MembershipError,
    PeerURLExistsError,
)
from raftkv.membership.members import Member, Membership, compute_cluster_id, compute_member_id

__all__ = [
    "IDRemovedError",
    "Member",
    "MemberExistsError",
    "MemberNotFoundError",
    "Membership",
    "MembershipError",
    "PeerURLExistsError",
    "compute_cluster_id",
    "compute_member_id",
]
