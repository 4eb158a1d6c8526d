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
