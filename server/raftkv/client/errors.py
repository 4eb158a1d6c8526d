"""Typed exceptions for the errors an etcd-compatible server returns.

etcd tells its errors apart only by gRPC status code plus an exact message text ("etcdserver: key
not found" and "etcdserver: duplicate key given in txn request" are both INVALID_ARGUMENT), so the
mapping here is a table keyed by message, with the status code as a fallback for texts it does not
know. Every class carries etcd's message and code as defaults, so the client can also raise them
itself (a deadline that expired locally is a `TimeoutError` like the server's "request timed out").

The hierarchy groups errors by what a caller does about them:

- `UnavailableError` (and its `NoLeaderError`, `LeaderChangedError`, …): the cluster cannot
  answer right now; retrying later, perhaps on another member, may succeed.
- `TimeoutError`: a deadline passed; also a subclass of the built-in `TimeoutError`. The
  server's own "request timed out" (`RequestTimeoutError`) is both a timeout and unavailable.
- `RevisionError` (`CompactedError`, `FutureRevisionError`): the requested revision is gone or not
  there yet.
- `InvalidRequestError`: the request itself is wrong (too many ops, duplicate key, …).
- `AuthError`, `LeaseError`, `MemberError`, `ElectionError`: per-area errors.
"""

from __future__ import annotations

import builtins
import re

import grpc

__all__ = [
    "AuthError",
    "AuthFailedError",
    "AuthNotEnabledError",
    "AuthOldRevisionError",
    "BadLeaderTransfereeError",
    "CompactedError",
    "CorruptError",
    "DuplicateKeyError",
    "ElectionError",
    "ElectionNoLeaderError",
    "ElectionNotLeaderError",
    "EmptyKeyError",
    "EtcdError",
    "FutureRevisionError",
    "InvalidAuthMgmtError",
    "InvalidAuthTokenError",
    "InvalidRequestError",
    "KeyNotFoundError",
    "LeaderChangedError",
    "LearnerNotReadyError",
    "LeaseError",
    "LeaseExistsError",
    "LeaseNotFoundError",
    "LeaseProvidedError",
    "LeaseTTLTooLargeError",
    "MemberBadURLsError",
    "MemberError",
    "MemberExistsError",
    "MemberNotEnoughStartedError",
    "MemberNotFoundError",
    "MemberNotLearnerError",
    "MemberRemovedError",
    "NoLeaderError",
    "NoSpaceError",
    "NotCapableError",
    "NotLeaderError",
    "NotSupportedForLearnerError",
    "PeerURLExistsError",
    "PermissionDeniedError",
    "PermissionNotGrantedError",
    "RequestTimeoutError",
    "RequestTooLargeError",
    "RevisionError",
    "RoleEmptyError",
    "RoleExistsError",
    "RoleNotFoundError",
    "RoleNotGrantedError",
    "RootRoleNotExistError",
    "RootUserNotExistError",
    "ServerStoppedError",
    "TimeoutError",
    "TooManyLearnersError",
    "TooManyOpsError",
    "TooManyRequestsError",
    "UnavailableError",
    "UnhealthyClusterError",
    "UserEmptyError",
    "UserExistsError",
    "UserNotFoundError",
    "ValueProvidedError",
    "from_reason",
    "from_rpc_error",
    "from_status",
]

_S = grpc.StatusCode


class EtcdError(Exception):
    """Base of every error this client raises for a failed request.

    `code` is the gRPC status code and `message` etcd's error text (exactly as the server sent it
    when it came from the server).
    """

    CODE: grpc.StatusCode = _S.UNKNOWN
    MESSAGE: str = "etcdserver: unknown error"

    def __init__(self, message: str | None = None, *, code: grpc.StatusCode | None = None) -> None:
        self.message = self.MESSAGE if message is None else message
        self.code = self.CODE if code is None else code
        super().__init__(self.message)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r}, code={self.code.name})"


# -- availability ---------------------------------------------------------------------------------


class UnavailableError(EtcdError):
    """No member could serve the request now (connection failure, no leader, server stopping)."""

    CODE = _S.UNAVAILABLE
    MESSAGE = "no endpoint available"


class NoLeaderError(UnavailableError):
    MESSAGE = "etcdserver: no leader"


class LeaderChangedError(UnavailableError):
    MESSAGE = "etcdserver: leader changed"


class NotCapableError(UnavailableError):
    MESSAGE = "etcdserver: not capable"


class ServerStoppedError(UnavailableError):
    MESSAGE = "etcdserver: server stopped"


class UnhealthyClusterError(UnavailableError):
    MESSAGE = "etcdserver: unhealthy cluster"


class NotSupportedForLearnerError(UnavailableError):
    MESSAGE = "etcdserver: rpc not supported for learner"


class TimeoutError(EtcdError, builtins.TimeoutError):
    """A deadline passed: the call's own deadline, or the server's (`RequestTimeoutError`)."""

    CODE = _S.DEADLINE_EXCEEDED
    MESSAGE = "context deadline exceeded"


class RequestTimeoutError(TimeoutError, UnavailableError):
    """The server gave up waiting for its proposal to commit ("etcdserver: request timed out").

    A write that timed out this way may still be applied later.
    """

    CODE = _S.UNAVAILABLE
    MESSAGE = "etcdserver: request timed out"


class TooManyRequestsError(EtcdError):
    CODE = _S.RESOURCE_EXHAUSTED
    MESSAGE = "etcdserver: too many requests"


class NoSpaceError(EtcdError):
    """The NOSPACE alarm is raised: only reads and deletes are accepted until it is disarmed."""

    CODE = _S.RESOURCE_EXHAUSTED
    MESSAGE = "etcdserver: mvcc: database space exceeded"


class CorruptError(EtcdError):
    CODE = _S.DATA_LOSS
    MESSAGE = "etcdserver: corrupt cluster"


class NotLeaderError(EtcdError):
    CODE = _S.FAILED_PRECONDITION
    MESSAGE = "etcdserver: not leader"


class BadLeaderTransfereeError(EtcdError):
    CODE = _S.FAILED_PRECONDITION
    MESSAGE = "etcdserver: bad leader transferee"


# -- revisions ------------------------------------------------------------------------------------


class RevisionError(EtcdError):
    CODE = _S.OUT_OF_RANGE


class CompactedError(RevisionError):
    """The requested revision was compacted away.

    `compact_revision` is the oldest revision still available when the server said so (watches
    report it; unary calls do not, and leave it 0).
    """

    MESSAGE = "etcdserver: mvcc: required revision has been compacted"

    def __init__(
        self,
        message: str | None = None,
        *,
        code: grpc.StatusCode | None = None,
        compact_revision: int = 0,
    ) -> None:
        super().__init__(message, code=code)
        self.compact_revision = compact_revision


class FutureRevisionError(RevisionError):
    MESSAGE = "etcdserver: mvcc: required revision is a future revision"


# -- malformed requests ---------------------------------------------------------------------------


class InvalidRequestError(EtcdError):
    CODE = _S.INVALID_ARGUMENT
    MESSAGE = "invalid request"


class EmptyKeyError(InvalidRequestError):
    MESSAGE = "etcdserver: key is not provided"


class KeyNotFoundError(InvalidRequestError):
    """A put with ignore_value/ignore_lease named a key that does not exist."""

    MESSAGE = "etcdserver: key not found"


class ValueProvidedError(InvalidRequestError):
    MESSAGE = "etcdserver: value is provided"


class LeaseProvidedError(InvalidRequestError):
    MESSAGE = "etcdserver: lease is provided"


class TooManyOpsError(InvalidRequestError):
    MESSAGE = "etcdserver: too many operations in txn request"


class DuplicateKeyError(InvalidRequestError):
    MESSAGE = "etcdserver: duplicate key given in txn request"


class RequestTooLargeError(InvalidRequestError):
    MESSAGE = "etcdserver: request is too large"


# -- leases ---------------------------------------------------------------------------------------


class LeaseError(EtcdError):
    pass


class LeaseNotFoundError(LeaseError):
    CODE = _S.NOT_FOUND
    MESSAGE = "etcdserver: requested lease not found"


class LeaseExistsError(LeaseError):
    CODE = _S.FAILED_PRECONDITION
    MESSAGE = "etcdserver: lease already exists"


class LeaseTTLTooLargeError(LeaseError):
    CODE = _S.OUT_OF_RANGE
    MESSAGE = "etcdserver: too large lease TTL"


# -- membership -----------------------------------------------------------------------------------


class MemberError(EtcdError):
    CODE = _S.FAILED_PRECONDITION


class MemberExistsError(MemberError):
    MESSAGE = "etcdserver: member ID already exist"


class PeerURLExistsError(MemberError):
    MESSAGE = "etcdserver: Peer URLs already exists"


class MemberNotEnoughStartedError(MemberError):
    MESSAGE = "etcdserver: re-configuration failed due to not enough started members"


class MemberBadURLsError(MemberError):
    CODE = _S.INVALID_ARGUMENT
    MESSAGE = "etcdserver: given member URLs are invalid"


class MemberNotFoundError(MemberError):
    CODE = _S.NOT_FOUND
    MESSAGE = "etcdserver: member not found"


class MemberRemovedError(MemberError):
    MESSAGE = "etcdserver: ID removed"


class MemberNotLearnerError(MemberError):
    MESSAGE = "etcdserver: can only promote a learner member"


class LearnerNotReadyError(MemberError):
    MESSAGE = "etcdserver: can only promote a learner member which is in sync with leader"


class TooManyLearnersError(MemberError):
    MESSAGE = "etcdserver: too many learner members in cluster"


# -- auth -----------------------------------------------------------------------------------------


class AuthError(EtcdError):
    CODE = _S.FAILED_PRECONDITION


class AuthFailedError(AuthError):
    CODE = _S.INVALID_ARGUMENT
    MESSAGE = "etcdserver: authentication failed, invalid user ID or password"


class InvalidAuthTokenError(AuthError):
    CODE = _S.UNAUTHENTICATED
    MESSAGE = "etcdserver: invalid auth token"


class AuthOldRevisionError(AuthError):
    CODE = _S.INVALID_ARGUMENT
    MESSAGE = "etcdserver: revision of auth store is old"


class InvalidAuthMgmtError(AuthError):
    CODE = _S.INVALID_ARGUMENT
    MESSAGE = "etcdserver: invalid auth management"


class PermissionDeniedError(AuthError):
    CODE = _S.PERMISSION_DENIED
    MESSAGE = "etcdserver: permission denied"


class AuthNotEnabledError(AuthError):
    MESSAGE = "etcdserver: authentication is not enabled"


class RootUserNotExistError(AuthError):
    MESSAGE = "etcdserver: root user does not exist"


class RootRoleNotExistError(AuthError):
    MESSAGE = "etcdserver: root user does not have root role"


class UserExistsError(AuthError):
    MESSAGE = "etcdserver: user name already exists"


class UserEmptyError(AuthError):
    """A request reached an auth-enabled cluster without a token (or named no user)."""

    CODE = _S.INVALID_ARGUMENT
    MESSAGE = "etcdserver: user name is empty"


class UserNotFoundError(AuthError):
    MESSAGE = "etcdserver: user name not found"


class RoleExistsError(AuthError):
    MESSAGE = "etcdserver: role name already exists"


class RoleNotFoundError(AuthError):
    MESSAGE = "etcdserver: role name not found"


class RoleEmptyError(AuthError):
    CODE = _S.INVALID_ARGUMENT
    MESSAGE = "etcdserver: role name is empty"


class RoleNotGrantedError(AuthError):
    MESSAGE = "etcdserver: role is not granted to the user"


class PermissionNotGrantedError(AuthError):
    MESSAGE = "etcdserver: permission is not granted to the role"


# -- election (v3electionpb) ----------------------------------------------------------------------


class ElectionError(EtcdError):
    pass


class ElectionNoLeaderError(ElectionError):
    CODE = _S.UNKNOWN
    MESSAGE = "election: no leader"


class ElectionNotLeaderError(ElectionError):
    CODE = _S.UNKNOWN
    MESSAGE = "election: not leader"


_KNOWN: tuple[type[EtcdError], ...] = (
    NoLeaderError,
    RequestTimeoutError,
    LeaderChangedError,
    NotCapableError,
    ServerStoppedError,
    UnhealthyClusterError,
    NotSupportedForLearnerError,
    TooManyRequestsError,
    NoSpaceError,
    CorruptError,
    NotLeaderError,
    BadLeaderTransfereeError,
    CompactedError,
    FutureRevisionError,
    EmptyKeyError,
    KeyNotFoundError,
    ValueProvidedError,
    LeaseProvidedError,
    TooManyOpsError,
    DuplicateKeyError,
    RequestTooLargeError,
    LeaseNotFoundError,
    LeaseExistsError,
    LeaseTTLTooLargeError,
    MemberExistsError,
    PeerURLExistsError,
    MemberNotEnoughStartedError,
    MemberBadURLsError,
    MemberNotFoundError,
    MemberRemovedError,
    MemberNotLearnerError,
    LearnerNotReadyError,
    TooManyLearnersError,
    AuthFailedError,
    InvalidAuthTokenError,
    AuthOldRevisionError,
    InvalidAuthMgmtError,
    PermissionDeniedError,
    AuthNotEnabledError,
    RootUserNotExistError,
    RootRoleNotExistError,
    UserExistsError,
    UserEmptyError,
    UserNotFoundError,
    RoleExistsError,
    RoleNotFoundError,
    RoleEmptyError,
    RoleNotGrantedError,
    PermissionNotGrantedError,
    ElectionNoLeaderError,
    ElectionNotLeaderError,
)
_BY_MESSAGE: dict[str, type[EtcdError]] = {cls.MESSAGE: cls for cls in _KNOWN}

# etcd's three "request timed out" texts (plain, after a leader failure, after a lost connection)
# share this prefix; all are server-side timeouts sent with UNAVAILABLE.
_TIMED_OUT_PREFIX = "etcdserver: request timed out"

_BY_CODE: dict[grpc.StatusCode, type[EtcdError]] = {
    _S.UNAVAILABLE: UnavailableError,
    _S.DEADLINE_EXCEEDED: TimeoutError,
    _S.PERMISSION_DENIED: PermissionDeniedError,
    _S.UNAUTHENTICATED: InvalidAuthTokenError,
}

# A status rendered as text, as etcd puts it in a watch's cancel_reason.
_RENDERED_STATUS = re.compile(r"^rpc error: code = (\w+) desc = (.*)$", re.DOTALL)


def from_status(code: grpc.StatusCode, message: str) -> EtcdError:
    """The typed error for a gRPC status and etcd's message text."""
    cls = _BY_MESSAGE.get(message)
    if cls is None and message.startswith(_TIMED_OUT_PREFIX):
        cls = RequestTimeoutError
    if cls is None:
        cls = _BY_CODE.get(code, EtcdError)
    return cls(message, code=code)


# grpc-core reports a stream torn down under it (the member died mid-call) as UNKNOWN with this
# text: a connection failure, which callers treat as UNAVAILABLE (watches and keep-alives move
# to another member; a unary write is still not resent, see transport.never_sent).
_TRANSPORT_BROKE = "Stream removed"


def from_rpc_error(error: grpc.RpcError) -> EtcdError:
    """The typed error for a failed gRPC call (sync or asyncio)."""
    code = error.code() if hasattr(error, "code") else _S.UNKNOWN
    details = error.details() if hasattr(error, "details") else None
    if code is _S.UNKNOWN and (details or "").startswith(_TRANSPORT_BROKE):
        code = _S.UNAVAILABLE
    return from_status(code, details or str(code.name))


def from_reason(reason: str) -> EtcdError:
    """The typed error for a text such as a watch's cancel_reason.

    etcd renders a status there as "rpc error: code = PermissionDenied desc = etcdserver: …";
    both that form and a bare message are accepted.
    """
    match = _RENDERED_STATUS.match(reason)
    if match is None:
        return from_status(_S.UNKNOWN, reason)
    code_name, message = match.groups()
    code = _CODE_BY_CAMEL_NAME.get(code_name, _S.UNKNOWN)
    return from_status(code, message)


_CODE_BY_CAMEL_NAME: dict[str, grpc.StatusCode] = {
    "".join(part.capitalize() for part in code.name.split("_")): code for code in grpc.StatusCode
}
