"""Errors of the member as a whole (mapped to etcd's gRPC errors in api/errors.py)."""


class NodeError(Exception):
    """Base class of node errors."""


class RequestTimeoutError(NodeError):
    def __init__(self) -> None:
        super().__init__("etcdserver: request timed out")


class NoLeaderError(NodeError):
    def __init__(self) -> None:
        super().__init__("etcdserver: no leader")


class ServerStoppedError(NodeError):
    def __init__(self) -> None:
        super().__init__("etcdserver: server stopped")


class RequestTooLargeError(NodeError):
    def __init__(self) -> None:
        super().__init__("etcdserver: request is too large")


class DataDirError(NodeError):
    """The data dir cannot be used (another cluster's, a removed member's, corrupt...)."""


class NotLeaderError(NodeError):
    """The request must be served by the leader, and this member is not it."""

    def __init__(self) -> None:
        super().__init__("etcdserver: not leader")


class BadLeaderTransfereeError(NodeError):
    """Leadership can only move to a voting member."""

    def __init__(self) -> None:
        super().__init__("etcdserver: bad leader transferee")


class LeaderTransferTimeoutError(NodeError):
    def __init__(self) -> None:
        super().__init__("etcdserver: request timed out, leader transfer took too long")


class NotSupportedForLearnerError(NodeError):
    """A learner serves only serializable reads and Status, as in etcd."""

    def __init__(self) -> None:
        super().__init__("etcdserver: rpc not supported for learner")


class JoinError(DataDirError):
    """The member cannot join the existing cluster, so its data dir cannot be created."""
