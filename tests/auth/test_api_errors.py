"""Auth errors reach clients with etcd 3.4's gRPC codes and texts (rpctypes), byte for byte."""

from __future__ import annotations

import inspect

import grpc
import pytest
from raftkv.api import errors
from raftkv.api.auth import go_status_text, watch_refusal
from raftkv.auth import errors as auth_errors

C = grpc.StatusCode
EXPECTED = {
    auth_errors.RootUserNotExistError: (C.FAILED_PRECONDITION, "root user does not exist"),
    auth_errors.RootRoleNotExistError: (C.FAILED_PRECONDITION, "root user does not have root role"),
    auth_errors.UserExistsError: (C.FAILED_PRECONDITION, "user name already exists"),
    auth_errors.UserEmptyError: (C.INVALID_ARGUMENT, "user name is empty"),
    auth_errors.UserNotFoundError: (C.FAILED_PRECONDITION, "user name not found"),
    auth_errors.RoleExistsError: (C.FAILED_PRECONDITION, "role name already exists"),
    auth_errors.RoleNotFoundError: (C.FAILED_PRECONDITION, "role name not found"),
    auth_errors.RoleEmptyError: (C.INVALID_ARGUMENT, "role name is empty"),
    auth_errors.AuthFailedError: (
        C.INVALID_ARGUMENT,
        "authentication failed, invalid user ID or password",
    ),
    auth_errors.PermissionNotGivenError: (C.INVALID_ARGUMENT, "permission not given"),
    auth_errors.PermissionDeniedError: (C.PERMISSION_DENIED, "permission denied"),
    auth_errors.RoleNotGrantedError: (C.FAILED_PRECONDITION, "role is not granted to the user"),
    auth_errors.PermissionNotGrantedError: (
        C.FAILED_PRECONDITION,
        "permission is not granted to the role",
    ),
    auth_errors.AuthNotEnabledError: (C.FAILED_PRECONDITION, "authentication is not enabled"),
    auth_errors.InvalidAuthTokenError: (C.UNAUTHENTICATED, "invalid auth token"),
    auth_errors.InvalidAuthMgmtError: (C.INVALID_ARGUMENT, "invalid auth management"),
    auth_errors.AuthOldRevisionError: (C.INVALID_ARGUMENT, "revision of auth store is old"),
}
# Observed on etcd 3.4.23: no translation, so Unknown with the internal text.
UNTRANSLATED = {
    auth_errors.NoPasswordUserError: (
        "auth: authentication failed, password was given for no password user"
    ),
    auth_errors.VerifyOnlyError: "auth: token signing attempted with verify-only key",
}


def auth_error_classes() -> list[type[auth_errors.AuthError]]:
    return [
        cls
        for _, cls in inspect.getmembers(auth_errors, inspect.isclass)
        if issubclass(cls, auth_errors.AuthError) and cls is not auth_errors.AuthError
    ]


def test_every_auth_error_is_mapped() -> None:
    assert set(auth_error_classes()) == set(EXPECTED) | set(UNTRANSLATED)
    assert set(auth_error_classes()) <= errors.mapped_types()


@pytest.mark.parametrize("cls", list(EXPECTED))
def test_auth_errors_carry_etcds_status(cls: type[auth_errors.AuthError]) -> None:
    code, text = EXPECTED[cls]
    assert errors.lookup(cls()) == errors.EtcdError(code, f"etcdserver: {text}")


@pytest.mark.parametrize("cls", list(UNTRANSLATED))
def test_untranslatable_auth_errors_are_unknown(cls: type[auth_errors.AuthError]) -> None:
    assert errors.lookup(cls()) == errors.EtcdError(C.UNKNOWN, UNTRANSLATED[cls])


def test_maintenance_sends_auth_errors_untranslated() -> None:
    """Observed: Hash, HashKV, Defragment, Snapshot and Alarm answer so in etcd 3.4."""
    for cls, text in [
        (auth_errors.UserEmptyError, "auth: user name is empty"),
        (auth_errors.PermissionDeniedError, "auth: permission denied"),
        (auth_errors.InvalidAuthTokenError, "auth: invalid auth token"),
    ]:
        wrapped = auth_errors.UntranslatedAuthError(cls())
        assert errors.lookup(wrapped) == errors.EtcdError(C.UNKNOWN, text)


def test_a_refused_watch_says_why_as_go_prints_a_status() -> None:
    refusal = watch_refusal(auth_errors.PermissionDeniedError(), 9)
    assert (refusal.watch_id, refusal.created, refusal.canceled, refusal.header.revision) == (
        -1,
        True,
        True,
        9,
    )
    assert refusal.cancel_reason == (
        "rpc error: code = PermissionDenied desc = etcdserver: permission denied"
    )
    assert go_status_text(errors.USER_EMPTY) == (
        "rpc error: code = InvalidArgument desc = etcdserver: user name is empty"
    )
    assert (
        go_status_text(errors.EtcdError(C.CANCELLED, "x")) == "rpc error: code = Canceled desc = x"
    )
