"""Authentication and role-based access control, as etcd 3.4 does them.

- `store.AuthStore`: the replicated users, roles and grants (backend buckets, auth revision);
- `requests.AuthApplier`: authorization of entries where they are applied, and auth changes;
- `gate.AuthGate`: the member's door: resolves callers, checks what is served without Raft;
- `tokens`: the `simple` and `jwt` token providers (`--auth-token`);
- `identity`: the caller's credentials, bound to the task serving the request;
- `ranges`: key-range grants merged per user, etcd's interval rules;
- `passwords`: bcrypt.
"""

from raftkv.auth.errors import (
    AuthError,
    AuthFailedError,
    AuthNotEnabledError,
    AuthOldRevisionError,
    InvalidAuthMgmtError,
    InvalidAuthTokenError,
    NoPasswordUserError,
    PermissionDeniedError,
    PermissionNotGivenError,
    PermissionNotGrantedError,
    RoleEmptyError,
    RoleExistsError,
    RoleNotFoundError,
    RoleNotGrantedError,
    RootRoleNotExistError,
    RootUserNotExistError,
    UntranslatedAuthError,
    UserEmptyError,
    UserExistsError,
    UserNotFoundError,
    VerifyOnlyError,
)
from raftkv.auth.gate import AuthGate
from raftkv.auth.identity import ANONYMOUS, ROOT, AuthInfo, Credentials
from raftkv.auth.passwords import DEFAULT_COST, MAX_COST, MIN_COST, hash_password, password_matches
from raftkv.auth.requests import AUTH_KINDS, AuthApplier
from raftkv.auth.store import AuthStore
from raftkv.auth.tokens import (
    DEFAULT_SIMPLE_TTL,
    JWTTokens,
    SimpleTokens,
    TokenConfigError,
    TokenProvider,
    TokenSpec,
)

__all__ = [
    "ANONYMOUS",
    "AUTH_KINDS",
    "DEFAULT_COST",
    "DEFAULT_SIMPLE_TTL",
    "MAX_COST",
    "MIN_COST",
    "ROOT",
    "AuthApplier",
    "AuthError",
    "AuthFailedError",
    "AuthGate",
    "AuthInfo",
    "AuthNotEnabledError",
    "AuthOldRevisionError",
    "AuthStore",
    "Credentials",
    "InvalidAuthMgmtError",
    "InvalidAuthTokenError",
    "JWTTokens",
    "NoPasswordUserError",
    "PermissionDeniedError",
    "PermissionNotGivenError",
    "PermissionNotGrantedError",
    "RoleEmptyError",
    "RoleExistsError",
    "RoleNotFoundError",
    "RoleNotGrantedError",
    "RootRoleNotExistError",
    "RootUserNotExistError",
    "SimpleTokens",
    "TokenConfigError",
    "TokenProvider",
    "TokenSpec",
    "UntranslatedAuthError",
    "UserEmptyError",
    "UserExistsError",
    "UserNotFoundError",
    "VerifyOnlyError",
    "hash_password",
    "password_matches",
]
