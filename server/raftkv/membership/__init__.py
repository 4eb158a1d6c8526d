"""Cluster membership: member identities, the member list, how configuration changes apply, and
the safety checks made before one is proposed."""

from raftkv.membership.errors import (
    IDRemovedError,
    InvalidPeerURLsError,
    LearnerNotReadyError,
    MemberExistsError,
    MemberNotFoundError,
    MemberNotLearnerError,
    MembershipError,
    NotEnoughStartedMembersError,
    PeerURLExistsError,
    TooManyLearnersError,
    UnhealthyClusterError,
)
from raftkv.membership.members import (
    Member,
    Membership,
    compute_cluster_id,
    compute_member_id,
    is_promotion,
    promote_context,
)

__all__ = [
    "IDRemovedError",
    "InvalidPeerURLsError",
    "LearnerNotReadyError",
    "Member",
    "MemberExistsError",
    "MemberNotFoundError",
    "MemberNotLearnerError",
    "Membership",
    "MembershipError",
    "NotEnoughStartedMembersError",
    "PeerURLExistsError",
    "TooManyLearnersError",
    "UnhealthyClusterError",
    "compute_cluster_id",
    "compute_member_id",
    "is_promotion",
    "promote_context",
]
