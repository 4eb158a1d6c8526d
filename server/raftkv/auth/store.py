"""The replicated auth state: users, roles, their grants, the enabled flag and the auth revision.

It lives in three backend buckets named as etcd names them (`auth`, `authUsers`, `authRoles`),
written in the same batch as everything else an entry changes, so it is in every snapshot and
backup and survives restarts with the rest of the state. Users and roles are stored as etcd's
`authpb.User` / `authpb.Role` messages; a user's `password` is its bcrypt hash.

Changes are made only by applying Raft entries (the `user_*`, `role_*`, `enable`, `disable` and
`authenticate` methods), so every member holds the same state; each change of users, roles or
grants bumps the auth revision (a fresh store starts at 1, as etcd's does; enabling does not bump
it, disabling does). Every rule, error and odd corner follows etcd 3.4's auth store: granting a
role twice is quietly ignored, root can be neither deleted nor stripped of the root role while
auth is enabled, the root role need not exist to be granted, a grant replaces one with the same
key and range end only when it is the first grant at that key (etcd's search), and grants stay
sorted by key.

The checks (`is_*_permitted`) answer the question for a resolved caller and raise etcd's error;
they do nothing while auth is disabled. What each user may access (its merged grants) is cached
until the next change, so a check costs no backend read.
"""

from __future__ import annotations

import bisect
from typing import Protocol

from raftkv.auth.errors import (
    AuthFailedError,
    AuthNotEnabledError,
    AuthOldRevisionError,
    InvalidAuthMgmtError,
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
    UserEmptyError,
    UserExistsError,
    UserNotFoundError,
)
from raftkv.auth.identity import AuthInfo
from raftkv.auth.ranges import READ, WRITE, RangePermissions
from raftkv.auth.tokens import TokenProvider
from raftkv.pb.authpb import auth_pb2

AUTH_BUCKET = "auth"
USERS_BUCKET = "authUsers"
ROLES_BUCKET = "authRoles"
_ENABLED_KEY = b"authEnabled"
_REVISION_KEY = b"authRevision"
_ENABLED, _DISABLED = b"\x01", b"\x00"

ROOT_USER = "root"
ROOT_ROLE = "root"
# The access of a user holding the root role: everything.
_ALL = RangePermissions()


class AuthBackend(Protocol):
    """The part of `storage.Backend` the auth store uses."""

    def create_bucket(self, name: str) -> None: ...
    def get(self, bucket: str, key: bytes) -> bytes | None: ...
    def put(self, bucket: str, key: bytes, value: bytes) -> None: ...
    def delete(self, bucket: str, key: bytes) -> None: ...
    def range(
        self, bucket: str, start: bytes, end: bytes | None = None, limit: int = 0
    ) -> list[tuple[bytes, bytes]]: ...


class AuthStore:
    """Auth state over one backend; `tokens` is the member's token provider, which outlives it."""

    def __init__(self, backend: AuthBackend, tokens: TokenProvider) -> None:
        self._backend = backend
        self._tokens = tokens
        for bucket in (AUTH_BUCKET, USERS_BUCKET, ROLES_BUCKET):
            backend.create_bucket(bucket)
        stored = backend.get(AUTH_BUCKET, _REVISION_KEY)
        if stored is None:
            self._revision = 1
            backend.put(AUTH_BUCKET, _REVISION_KEY, self._revision.to_bytes(8, "big"))
        else:
            self._revision = int.from_bytes(stored, "big")
        self._enabled = backend.get(AUTH_BUCKET, _ENABLED_KEY) == _ENABLED
        # Per user, what `_load_access` found; valid until the next change.
        self._access: dict[str, RangePermissions | None] = {}
        if self._enabled:
            tokens.enable()
        else:
            tokens.disable()

    @property
    def enabled(self) -> bool:
        return self._enabled

    @property
    def revision(self) -> int:
        return self._revision

    @property
    def tokens(self) -> TokenProvider:
        return self._tokens

    # ---- reading -----------------------------------------------------------------------------

    def get_user(self, name: str) -> auth_pb2.User | None:
        raw = self._backend.get(USERS_BUCKET, name.encode())
        return None if raw is None else auth_pb2.User.FromString(raw)

    def get_role(self, name: str) -> auth_pb2.Role | None:
        raw = self._backend.get(ROLES_BUCKET, name.encode())
        return None if raw is None else auth_pb2.Role.FromString(raw)

    def user_names(self) -> list[str]:
        return [k.decode() for k, _ in self._backend.range(USERS_BUCKET, b"\0", b"\0")]

    def role_names(self) -> list[str]:
        return [k.decode() for k, _ in self._backend.range(ROLES_BUCKET, b"\0", b"\0")]

    def user_roles(self, name: str) -> list[str]:
        return list(self._require_user(name).roles)

    def role_permissions(self, name: str) -> list[auth_pb2.Permission]:
        return list(self._require_role(name).keyPermission)

    def has_role(self, username: str, role: str) -> bool:
        user = self.get_user(username)
        return user is not None and role in user.roles

    def password_hash(self, name: str) -> tuple[bytes, int]:
        """The stored hash to check a password against, and the revision it was read at."""
        if not self._enabled:
            raise AuthNotEnabledError()
        user = self.get_user(name)
        if user is None:
            raise AuthFailedError()
        if user.options.no_password:
            raise NoPasswordUserError()
        return user.password, self._revision

    # ---- checks ------------------------------------------------------------------------------

    def is_admin_permitted(self, info: AuthInfo | None) -> None:
        """Only users with the root role may manage auth and membership."""
        if not self._enabled:
            return
        if info is None or not info.username:
            raise UserEmptyError()
        user = self.get_user(info.username)
        if user is None:
            raise UserNotFoundError()
        if ROOT_ROLE not in user.roles:
            raise PermissionDeniedError()

    def is_range_permitted(self, info: AuthInfo | None, key: bytes, range_end: bytes) -> None:
        self._is_permitted(info, READ, key, range_end)

    def is_put_permitted(self, info: AuthInfo | None, key: bytes) -> None:
        self._is_permitted(info, WRITE, key, b"")

    def is_delete_range_permitted(
        self, info: AuthInfo | None, key: bytes, range_end: bytes
    ) -> None:
        self._is_permitted(info, WRITE, key, range_end)

    def _is_permitted(
        self, info: AuthInfo | None, perm_type: int, key: bytes, range_end: bytes
    ) -> None:
        if not self._enabled:
            return
        if info is None or info.revision == 0:
            raise UserEmptyError()
        if info.revision < self._revision:
            raise AuthOldRevisionError()
        if info.username not in self._access:
            self._access[info.username] = self._load_access(info.username)
        access = self._access[info.username]
        if access is None:  # no such user
            raise PermissionDeniedError()
        if access is _ALL:
            return
        if not access.allows(perm_type, key, range_end):
            raise PermissionDeniedError()

    def _load_access(self, username: str) -> RangePermissions | None:
        """What `username` may touch: None (no such user), _ALL (root role), or its grants."""
        user = self.get_user(username)
        if user is None:
            return None
        if ROOT_ROLE in user.roles:
            return _ALL
        roles = (self.get_role(name) for name in user.roles)
        return RangePermissions.merge(p for role in roles if role for p in role.keyPermission)

    # ---- changes (applied entries only) ------------------------------------------------------

    def enable(self) -> None:
        if self._enabled:
            return
        root = self.get_user(ROOT_USER)
        if root is None:
            raise RootUserNotExistError()
        if ROOT_ROLE not in root.roles:
            raise RootRoleNotExistError()
        self._backend.put(AUTH_BUCKET, _ENABLED_KEY, _ENABLED)
        self._enabled = True
        self._access.clear()
        self._tokens.enable()

    def disable(self) -> None:
        if not self._enabled:
            return
        self._backend.put(AUTH_BUCKET, _ENABLED_KEY, _DISABLED)
        self._bump_revision()
        self._enabled = False
        self._tokens.disable()

    def authenticate(self, name: str, prefix: str, index: int) -> str:
        """Issue a token for `name` (its password was checked before the entry was proposed)."""
        if not self._enabled:
            raise AuthNotEnabledError()
        user = self.get_user(name)
        if user is None or user.options.no_password:
            raise AuthFailedError()
        return self._tokens.assign(name, self._revision, prefix, index)

    def user_add(
        self, name: str, hashed_password: bytes, options: auth_pb2.UserAddOptions | None
    ) -> None:
        if not name:
            raise UserEmptyError()
        if self.get_user(name) is not None:
            raise UserExistsError()
        user = auth_pb2.User(name=name.encode(), password=hashed_password)
        user.options.CopyFrom(options or auth_pb2.UserAddOptions())
        self._put_user(user)
        self._bump_revision()

    def user_delete(self, name: str) -> None:
        if self._enabled and name == ROOT_USER:
            raise InvalidAuthMgmtError()
        self._require_user(name)
        self._backend.delete(USERS_BUCKET, name.encode())
        self._bump_revision()
        self._tokens.invalidate_user(name)

    def user_change_password(self, name: str, hashed_password: bytes) -> None:
        user = self._require_user(name)
        user.password = hashed_password
        self._put_user(user)
        self._bump_revision()
        self._tokens.invalidate_user(name)

    def user_grant_role(self, name: str, role: str) -> None:
        user = self._require_user(name)
        if role != ROOT_ROLE:
            self._require_role(role)
        if role in user.roles:
            return  # etcd ignores a repeated grant, without bumping the revision
        roles = sorted([*user.roles, role])
        del user.roles[:]
        user.roles.extend(roles)
        self._put_user(user)
        self._bump_revision()

    def user_revoke_role(self, name: str, role: str) -> None:
        if self._enabled and name == ROOT_USER and role == ROOT_ROLE:
            raise InvalidAuthMgmtError()
        user = self._require_user(name)
        if role not in user.roles:
            raise RoleNotGrantedError()
        kept = [r for r in user.roles if r != role]
        del user.roles[:]
        user.roles.extend(kept)
        self._put_user(user)
        self._bump_revision()

    def role_add(self, name: str) -> None:
        if not name:
            raise RoleEmptyError()
        if self.get_role(name) is not None:
            raise RoleExistsError()
        self._put_role(auth_pb2.Role(name=name.encode()))
        self._bump_revision()

    def role_delete(self, name: str) -> None:
        if self._enabled and name == ROOT_ROLE:
            raise InvalidAuthMgmtError()
        self._require_role(name)
        self._backend.delete(ROLES_BUCKET, name.encode())
        for username in self.user_names():
            user = self.get_user(username)
            if user is not None and name in user.roles:
                kept = [r for r in user.roles if r != name]
                del user.roles[:]
                user.roles.extend(kept)
                self._put_user(user)
        self._bump_revision()

    def role_grant_permission(self, name: str, perm: auth_pb2.Permission | None) -> None:
        role = self._require_role(name)
        if perm is None:  # etcd 3.4 crashes here; later versions refuse it so
            raise PermissionNotGivenError()
        grants = [_copy(g) for g in role.keyPermission]
        # etcd looks only at the first grant whose key is >= the new one's.
        at = bisect.bisect_left([g.key for g in grants], perm.key)
        if at < len(grants) and (grants[at].key, grants[at].range_end) == (
            perm.key,
            perm.range_end,
        ):
            grants[at].permType = perm.permType
        else:
            grants.append(_copy(perm))
            grants.sort(key=lambda g: g.key)
        del role.keyPermission[:]
        role.keyPermission.extend(grants)
        self._put_role(role)
        self._bump_revision()

    def role_revoke_permission(self, name: str, key: bytes, range_end: bytes) -> None:
        role = self._require_role(name)
        kept = [_copy(g) for g in role.keyPermission if (g.key, g.range_end) != (key, range_end)]
        if len(kept) == len(role.keyPermission):
            raise PermissionNotGrantedError()
        del role.keyPermission[:]
        role.keyPermission.extend(kept)
        self._put_role(role)
        self._bump_revision()

    # ---- helpers -----------------------------------------------------------------------------

    def _require_user(self, name: str) -> auth_pb2.User:
        user = self.get_user(name)
        if user is None:
            raise UserNotFoundError()
        return user

    def _require_role(self, name: str) -> auth_pb2.Role:
        role = self.get_role(name)
        if role is None:
            raise RoleNotFoundError()
        return role

    def _put_user(self, user: auth_pb2.User) -> None:
        self._backend.put(USERS_BUCKET, user.name, user.SerializeToString(deterministic=True))

    def _put_role(self, role: auth_pb2.Role) -> None:
        self._backend.put(ROLES_BUCKET, role.name, role.SerializeToString(deterministic=True))

    def _bump_revision(self) -> None:
        self._revision += 1
        self._backend.put(AUTH_BUCKET, _REVISION_KEY, self._revision.to_bytes(8, "big"))
        self._access.clear()


def _copy(perm: auth_pb2.Permission) -> auth_pb2.Permission:
    return auth_pb2.Permission(permType=perm.permType, key=perm.key, range_end=perm.range_end)
