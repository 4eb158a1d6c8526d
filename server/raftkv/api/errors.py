"""The one table mapping domain errors to etcd's gRPC status codes and messages.

Clients (etcdctl, clientv3, other libraries) match etcd's error text byte for byte, so each entry
carries etcd's exact message; the domain exception's own text is used only where it already is
etcd's message. `tests/api/test_errors.py` checks every domain error class is mapped here.
"""

from __future__ import annotations

from dataclasses import dataclass

import grpc

from raftkv.api import concurrency
from raftkv.apply import alarms
from raftkv.apply import errors as apply_errors
from raftkv.auth import errors as auth_errors
from raftkv.lease import errors as lease_errors
from raftkv.membership import errors as membership_errors
from raftkv.mvcc import errors as mvcc_errors
from raftkv.node import errors as node_errors


@dataclass(frozen=True)
class EtcdError:
    code: grpc.StatusCode
    message: str


# etcd's client-visible errors (etcdserver/api/v3rpc/rpctypes), by the names etcd gives them.
EMPTY_KEY = EtcdError(grpc.StatusCode.INVALID_ARGUMENT, "etcdserver: key is not provided")
KEY_NOT_FOUND = EtcdError(grpc.StatusCode.INVALID_ARGUMENT, "etcdserver: key not found")
VALUE_PROVIDED = EtcdError(grpc.StatusCode.INVALID_ARGUMENT, "etcdserver: value is provided")
LEASE_PROVIDED = EtcdError(grpc.StatusCode.INVALID_ARGUMENT, "etcdserver: lease is provided")
TOO_MANY_OPS = EtcdError(
    grpc.StatusCode.INVALID_ARGUMENT, "etcdserver: too many operations in txn request"
)
DUPLICATE_KEY = EtcdError(
    grpc.StatusCode.INVALID_ARGUMENT, "etcdserver: duplicate key given in txn request"
)
COMPACTED = EtcdError(
    grpc.StatusCode.OUT_OF_RANGE, "etcdserver: mvcc: required revision has been compacted"
)
FUTURE_REV = EtcdError(
    grpc.StatusCode.OUT_OF_RANGE, "etcdserver: mvcc: required revision is a future revision"
)
NO_SPACE = EtcdError(
    grpc.StatusCode.RESOURCE_EXHAUSTED, "etcdserver: mvcc: database space exceeded"
)
CORRUPT = EtcdError(grpc.StatusCode.DATA_LOSS, "etcdserver: corrupt cluster")
LEASE_NOT_FOUND = EtcdError(grpc.StatusCode.NOT_FOUND, "etcdserver: requested lease not found")
LEASE_EXIST = EtcdError(grpc.StatusCode.FAILED_PRECONDITION, "etcdserver: lease already exists")
LEASE_TTL_TOO_LARGE = EtcdError(grpc.StatusCode.OUT_OF_RANGE, "etcdserver: too large lease TTL")
MEMBER_EXIST = EtcdError(grpc.StatusCode.FAILED_PRECONDITION, "etcdserver: member ID already exist")
PEER_URL_EXIST = EtcdError(
    grpc.StatusCode.FAILED_PRECONDITION, "etcdserver: Peer URLs already exists"
)
MEMBER_NOT_FOUND = EtcdError(grpc.StatusCode.NOT_FOUND, "etcdserver: member not found")
MEMBER_BAD_URLS = EtcdError(
    grpc.StatusCode.INVALID_ARGUMENT, "etcdserver: given member URLs are invalid"
)
MEMBER_NOT_LEARNER = EtcdError(
    grpc.StatusCode.FAILED_PRECONDITION, "etcdserver: can only promote a learner member"
)
LEARNER_NOT_READY = EtcdError(
    grpc.StatusCode.FAILED_PRECONDITION,
    "etcdserver: can only promote a learner member which is in sync with leader",
)
TOO_MANY_LEARNERS = EtcdError(
    grpc.StatusCode.FAILED_PRECONDITION, "etcdserver: too many learner members in cluster"
)
# etcd 3.4 has no gRPC code for these two: its clients see Unknown (observed on etcd 3.4.23).
NOT_ENOUGH_STARTED = EtcdError(
    grpc.StatusCode.UNKNOWN,
    "etcdserver: re-configuration failed due to not enough started members",
)
LEADER_TRANSFER_TIMEOUT = EtcdError(
    grpc.StatusCode.UNKNOWN, "etcdserver: request timed out, leader transfer took too long"
)
UNHEALTHY = EtcdError(grpc.StatusCode.UNAVAILABLE, "etcdserver: unhealthy cluster")
NOT_SUPPORTED_FOR_LEARNER = EtcdError(
    grpc.StatusCode.UNAVAILABLE, "etcdserver: rpc not supported for learner"
)
BAD_LEADER_TRANSFEREE = EtcdError(
    grpc.StatusCode.FAILED_PRECONDITION, "etcdserver: bad leader transferee"
)
REQUEST_TOO_LARGE = EtcdError(grpc.StatusCode.INVALID_ARGUMENT, "etcdserver: request is too large")
NOT_LEADER = EtcdError(grpc.StatusCode.FAILED_PRECONDITION, "etcdserver: not leader")
NO_LEADER = EtcdError(grpc.StatusCode.UNAVAILABLE, "etcdserver: no leader")
TIMEOUT = EtcdError(grpc.StatusCode.UNAVAILABLE, "etcdserver: request timed out")
STOPPED = EtcdError(grpc.StatusCode.UNAVAILABLE, "etcdserver: server stopped")
NOT_CAPABLE = EtcdError(grpc.StatusCode.UNAVAILABLE, "etcdserver: not capable")
# The lock and election recipes' own errors: plain errors in etcd, so Unknown on the wire.
ELECTION_NO_LEADER = EtcdError(grpc.StatusCode.UNKNOWN, "election: no leader")
ELECTION_NOT_LEADER = EtcdError(grpc.StatusCode.UNKNOWN, "election: not leader")
MISSING_LEADER_KEY = EtcdError(grpc.StatusCode.UNKNOWN, '"leader" field must be provided')
SESSION_EXPIRED = EtcdError(grpc.StatusCode.UNKNOWN, "session expired")
ROOT_USER_NOT_EXIST = EtcdError(
    grpc.StatusCode.FAILED_PRECONDITION, "etcdserver: root user does not exist"
)
ROOT_ROLE_NOT_EXIST = EtcdError(
    grpc.StatusCode.FAILED_PRECONDITION, "etcdserver: root user does not have root role"
)
USER_EXIST = EtcdError(grpc.StatusCode.FAILED_PRECONDITION, "etcdserver: user name already exists")
USER_EMPTY = EtcdError(grpc.StatusCode.INVALID_ARGUMENT, "etcdserver: user name is empty")
USER_NOT_FOUND = EtcdError(grpc.StatusCode.FAILED_PRECONDITION, "etcdserver: user name not found")
ROLE_EXIST = EtcdError(grpc.StatusCode.FAILED_PRECONDITION, "etcdserver: role name already exists")
ROLE_NOT_FOUND = EtcdError(grpc.StatusCode.FAILED_PRECONDITION, "etcdserver: role name not found")
ROLE_EMPTY = EtcdError(grpc.StatusCode.INVALID_ARGUMENT, "etcdserver: role name is empty")
AUTH_FAILED = EtcdError(
    grpc.StatusCode.INVALID_ARGUMENT,
    "etcdserver: authentication failed, invalid user ID or password",
)
PERMISSION_NOT_GIVEN = EtcdError(
    grpc.StatusCode.INVALID_ARGUMENT, "etcdserver: permission not given"
)
PERMISSION_DENIED = EtcdError(grpc.StatusCode.PERMISSION_DENIED, "etcdserver: permission denied")
ROLE_NOT_GRANTED = EtcdError(
    grpc.StatusCode.FAILED_PRECONDITION, "etcdserver: role is not granted to the user"
)
PERMISSION_NOT_GRANTED = EtcdError(
    grpc.StatusCode.FAILED_PRECONDITION, "etcdserver: permission is not granted to the role"
)
AUTH_NOT_ENABLED = EtcdError(
    grpc.StatusCode.FAILED_PRECONDITION, "etcdserver: authentication is not enabled"
)
INVALID_AUTH_TOKEN = EtcdError(grpc.StatusCode.UNAUTHENTICATED, "etcdserver: invalid auth token")
INVALID_AUTH_MGMT = EtcdError(
    grpc.StatusCode.INVALID_ARGUMENT, "etcdserver: invalid auth management"
)
AUTH_OLD_REVISION = EtcdError(
    grpc.StatusCode.INVALID_ARGUMENT, "etcdserver: revision of auth store is old"
)
# etcd 3.4 has no translation for these two: clients see Unknown and the internal text.
NO_PASSWORD_USER = EtcdError(grpc.StatusCode.UNKNOWN, auth_errors.NoPasswordUserError.message)
VERIFY_ONLY = EtcdError(grpc.StatusCode.UNKNOWN, auth_errors.VerifyOnlyError.message)

_BY_TYPE: dict[type[Exception], EtcdError] = {
    apply_errors.EmptyKeyError: EMPTY_KEY,
    apply_errors.KeyNotFoundError: KEY_NOT_FOUND,
    apply_errors.ValueProvidedError: VALUE_PROVIDED,
    apply_errors.LeaseProvidedError: LEASE_PROVIDED,
    apply_errors.TooManyOpsError: TOO_MANY_OPS,
    apply_errors.DuplicateKeyError: DUPLICATE_KEY,
    apply_errors.LeaseNotFoundError: LEASE_NOT_FOUND,
    alarms.NoSpaceError: NO_SPACE,
    alarms.CorruptClusterError: CORRUPT,
    lease_errors.LeaseNotFoundError: LEASE_NOT_FOUND,
    lease_errors.LeaseExistsError: LEASE_EXIST,
    lease_errors.LeaseTTLTooLargeError: LEASE_TTL_TOO_LARGE,
    lease_errors.NotPrimaryError: NOT_LEADER,
    mvcc_errors.CompactedError: COMPACTED,
    mvcc_errors.FutureRevisionError: FUTURE_REV,
    mvcc_errors.EmptyKeyError: EMPTY_KEY,
    membership_errors.MemberExistsError: MEMBER_EXIST,
    membership_errors.PeerURLExistsError: PEER_URL_EXIST,
    membership_errors.MemberNotFoundError: MEMBER_NOT_FOUND,
    # etcd answers a change to a removed ID with "member not found" (observed on etcd 3.4).
    membership_errors.IDRemovedError: MEMBER_NOT_FOUND,
    membership_errors.InvalidPeerURLsError: MEMBER_BAD_URLS,
    membership_errors.MemberNotLearnerError: MEMBER_NOT_LEARNER,
    membership_errors.LearnerNotReadyError: LEARNER_NOT_READY,
    membership_errors.TooManyLearnersError: TOO_MANY_LEARNERS,
    membership_errors.NotEnoughStartedMembersError: NOT_ENOUGH_STARTED,
    membership_errors.UnhealthyClusterError: UNHEALTHY,
    node_errors.NotLeaderError: NOT_LEADER,
    node_errors.BadLeaderTransfereeError: BAD_LEADER_TRANSFEREE,
    node_errors.NotSupportedForLearnerError: NOT_SUPPORTED_FOR_LEARNER,
    node_errors.LeaderTransferTimeoutError: LEADER_TRANSFER_TIMEOUT,
    node_errors.NoLeaderError: NO_LEADER,
    node_errors.RequestTimeoutError: TIMEOUT,
    node_errors.ServerStoppedError: STOPPED,
    node_errors.RequestTooLargeError: REQUEST_TOO_LARGE,
    concurrency.ElectionNoLeaderError: ELECTION_NO_LEADER,
    concurrency.ElectionNotLeaderError: ELECTION_NOT_LEADER,
    concurrency.MissingLeaderKeyError: MISSING_LEADER_KEY,
    concurrency.SessionExpiredError: SESSION_EXPIRED,
    auth_errors.RootUserNotExistError: ROOT_USER_NOT_EXIST,
    auth_errors.RootRoleNotExistError: ROOT_ROLE_NOT_EXIST,
    auth_errors.UserExistsError: USER_EXIST,
    auth_errors.UserEmptyError: USER_EMPTY,
    auth_errors.UserNotFoundError: USER_NOT_FOUND,
    auth_errors.RoleExistsError: ROLE_EXIST,
    auth_errors.RoleNotFoundError: ROLE_NOT_FOUND,
    auth_errors.RoleEmptyError: ROLE_EMPTY,
    auth_errors.AuthFailedError: AUTH_FAILED,
    auth_errors.NoPasswordUserError: NO_PASSWORD_USER,
    auth_errors.PermissionNotGivenError: PERMISSION_NOT_GIVEN,
    auth_errors.PermissionDeniedError: PERMISSION_DENIED,
    auth_errors.RoleNotGrantedError: ROLE_NOT_GRANTED,
    auth_errors.PermissionNotGrantedError: PERMISSION_NOT_GRANTED,
    auth_errors.AuthNotEnabledError: AUTH_NOT_ENABLED,
    auth_errors.AuthOldRevisionError: AUTH_OLD_REVISION,
    auth_errors.InvalidAuthTokenError: INVALID_AUTH_TOKEN,
    auth_errors.InvalidAuthMgmtError: INVALID_AUTH_MGMT,
    auth_errors.VerifyOnlyError: VERIFY_ONLY,
}


def lookup(error: BaseException) -> EtcdError | None:
    """etcd's status for a domain error, or None if `error` is not a domain error."""
    if isinstance(error, auth_errors.UntranslatedAuthError):
        return EtcdError(grpc.StatusCode.UNKNOWN, str(error))
    for cls in type(error).__mro__:
        found = _BY_TYPE.get(cls)  # type: ignore[arg-type]
        if found is not None:
            return found
    return None


def mapped_types() -> frozenset[type[Exception]]:
    return frozenset({*_BY_TYPE, auth_errors.UntranslatedAuthError})
