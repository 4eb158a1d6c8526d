"""Membership errors, each carrying etcd's message (mapped to gRPC status in api/errors.py)."""


class MembershipError(Exception):
    """Base class of membership errors."""


class MemberExistsError(MembershipError):
    def __init__(self) -> None:
        super().__init__("etcdserver: member ID already exist")


class MemberNotFoundError(MembershipError):
    def __init__(self) -> None:
        super().__init__("etcdserver: member not found")


class IDRemovedError(MembershipError):
    def __init__(self) -> None:
        super().__init__("etcdserver: ID removed")


class PeerURLExistsError(MembershipError):
    def __init__(self) -> None:
        super().__init__("etcdserver: Peer URLs already exists")


class MemberNotLearnerError(MembershipError):
    def __init__(self) -> None:
        super().__init__("etcdserver: can only promote a learner member")


class TooManyLearnersError(MembershipError):
    def __init__(self) -> None:
        super().__init__("etcdserver: too many learner members in cluster")


class InvalidPeerURLsError(MembershipError):
    """Peer URLs that etcd's URL rules refuse; `reason` says which rule, for the log."""

    def __init__(self, reason: str) -> None:
        super().__init__("etcdserver: given member URLs are invalid")
        self.reason = reason


class LearnerNotReadyError(MembershipError):
    def __init__(self) -> None:
        super().__init__(
            "etcdserver: can only promote a learner member which is in sync with leader"
        )


class NotEnoughStartedMembersError(MembershipError):
    """The change would leave fewer started voters than the new quorum (strict reconfig)."""

    def __init__(self) -> None:
        super().__init__("etcdserver: re-configuration failed due to not enough started members")


class UnhealthyClusterError(MembershipError):
    """A voter the change depends on is not connected to this member (strict reconfig)."""

    def __init__(self) -> None:
        super().__init__("etcdserver: unhealthy cluster")
