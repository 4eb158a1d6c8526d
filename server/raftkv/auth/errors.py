"""Domain errors of authentication and authorization.

Each error's own text is etcd's internal one ("auth: permission denied"); `raftkv.api.errors`
maps each class to etcd's gRPC status, whose message is the client-facing form ("etcdserver:
permission denied"). Both forms matter: etcd 3.4's Maintenance service returns the internal text
untranslated (code Unknown) for Hash, HashKV, Defragment, Snapshot and Alarm, and one error
(`NoPasswordUserError`) has no gRPC translation at all. `UntranslatedAuthError` carries an auth
error to the client in that raw form.
"""

from __future__ import annotations


class AuthError(Exception):
    """Base class of every error the auth package raises on purpose."""

    message = "auth: error"

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or self.message)


class RootUserNotExistError(AuthError):
    message = "auth: root user does not exist"


class RootRoleNotExistError(AuthError):
    message = "auth: root user does not have root role"


class UserExistsError(AuthError):
    message = "auth: user already exists"


class UserEmptyError(AuthError):
    message = "auth: user name is empty"


class UserNotFoundError(AuthError):
    message = "auth: user not found"


class RoleExistsError(AuthError):
    message = "auth: role already exists"


class RoleNotFoundError(AuthError):
    message = "auth: role not found"


class RoleEmptyError(AuthError):
    message = "auth: role name is empty"


class AuthFailedError(AuthError):
    message = "auth: authentication failed, invalid user ID or password"


class NoPasswordUserError(AuthError):
    """A user added with `--no-password` cannot authenticate with a password."""

    message = "auth: authentication failed, password was given for no password user"


class PermissionNotGivenError(AuthError):
    message = "auth: permission not given"


class PermissionDeniedError(AuthError):
    message = "auth: permission denied"


class RoleNotGrantedError(AuthError):
    message = "auth: role is not granted to the user"


class PermissionNotGrantedError(AuthError):
    message = "auth: permission is not granted to the role"


class AuthNotEnabledError(AuthError):
    message = "auth: authentication is not enabled"


class AuthOldRevisionError(AuthError):
    """The caller was authorized against an auth state that has changed since."""

    message = "auth: revision in header is old"


class InvalidAuthTokenError(AuthError):
    message = "auth: invalid auth token"


class InvalidAuthMgmtError(AuthError):
    """Changes that would lock everyone out while auth is enabled (deleting root, ...)."""

    message = "auth: invalid auth management"


class VerifyOnlyError(AuthError):
    """JWT tokens configured with a public key only can be checked but not issued."""

    message = "auth: token signing attempted with verify-only key"


class UntranslatedAuthError(Exception):
    """An auth error sent with code Unknown and its internal text, as some etcd paths do."""

    def __init__(self, cause: AuthError) -> None:
        super().__init__(str(cause))
        self.cause = cause
