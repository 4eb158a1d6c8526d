"""Auth at apply time: who may apply an entry, and the entries that change auth state.

etcd authorizes every write where it is applied, against the state every member has at that
point in the log, so all members agree and a permission revoked after a request was accepted but
before it applied is respected. The entry's header names the caller (`username`) and the auth
revision it was accepted at (`auth_revision`); a key access accepted at an older revision than
the current one fails with "revision of auth store is old" (the client authenticates again and
retries), and an anonymous one with "user name is empty". Which check applies is etcd's
(authApplierV3):

- auth changes need the root role (while auth is enabled);
- Put needs write access to the key, write access to every key already attached to its lease,
  and read access to the key if it asks for the previous value; DeleteRange needs write access
  to its range, and read access if it asks for the previous values;
- Txn needs read access to every compared range and, for each op in both branches, what the op
  alone would need; LeaseRevoke needs write access to every key attached to the lease.

Two checks are stricter than etcd 3.4, which skips them: the ops of a nested Txn are checked,
and a Put inside a Txn needs the same lease and previous-value access as a plain Put (3.4 lets a
write-only user read values through them).

Compaction, lease grants, lease checkpoints, alarms and member attributes are not checked, as
in etcd 3.4.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from raftkv.auth.identity import AuthInfo
from raftkv.auth.store import AuthStore
from raftkv.pb.etcdserverpb import rpc_pb2 as pb
from raftkv.pb.serverpb import internal_pb2 as serverpb

LeaseKeys = Callable[[int], Sequence[bytes]]

# InternalRequest kinds that change auth state; all but `authenticate` need the root role.
AUTH_KINDS = frozenset(
    {
        "auth_enable",
        "auth_disable",
        "authenticate",
        "auth_user_add",
        "auth_user_delete",
        "auth_user_change_password",
        "auth_user_grant_role",
        "auth_user_revoke_role",
        "auth_role_add",
        "auth_role_delete",
        "auth_role_grant_permission",
        "auth_role_revoke_permission",
    }
)
_ADMIN_KINDS = AUTH_KINDS - {"authenticate"}


def caller_of(header: serverpb.RequestHeader) -> AuthInfo:
    return AuthInfo(header.username, header.auth_revision)


def check_txn(
    store: AuthStore, info: AuthInfo | None, txn: pb.TxnRequest, leases: LeaseKeys
) -> None:
    """Whether `info` may run `txn` (compares, both branches, nested txns)."""
    for compare in txn.compare:
        store.is_range_permitted(info, compare.key, compare.range_end)
    for op in (*txn.success, *txn.failure):
        kind = op.WhichOneof("request")
        if kind == "request_range":
            store.is_range_permitted(info, op.request_range.key, op.request_range.range_end)
        elif kind == "request_put":
            check_put(store, info, op.request_put, leases)
        elif kind == "request_delete_range":
            check_delete_range(store, info, op.request_delete_range)
        elif kind == "request_txn":
            check_txn(store, info, op.request_txn, leases)


def check_put(
    store: AuthStore, info: AuthInfo | None, put: pb.PutRequest, leases: LeaseKeys
) -> None:
    store.is_put_permitted(info, put.key)
    check_lease(store, info, put.lease, leases)
    if put.prev_kv:
        store.is_range_permitted(info, put.key, b"")


def check_delete_range(
    store: AuthStore, info: AuthInfo | None, delete: pb.DeleteRangeRequest
) -> None:
    if delete.prev_kv:
        store.is_range_permitted(info, delete.key, delete.range_end)
    store.is_delete_range_permitted(info, delete.key, delete.range_end)


def check_lease(store: AuthStore, info: AuthInfo | None, lease: int, leases: LeaseKeys) -> None:
    """Write access to every key attached to `lease` (none: an unknown or empty lease)."""
    if lease:
        for key in leases(lease):
            store.is_put_permitted(info, key)


class AuthApplier:
    """Authorizes entries and applies the auth ones, over the member's current auth store."""

    def __init__(self, store: AuthStore, lease_keys: LeaseKeys) -> None:
        self.store = store
        self._lease_keys = lease_keys

    def authorize(self, header: serverpb.RequestHeader, kind: str | None, body: Any) -> None:
        """Raise etcd's error if the entry's caller may not apply it."""
        store = self.store
        if not store.enabled:
            return
        info = caller_of(header)
        if kind in _ADMIN_KINDS:
            store.is_admin_permitted(info)
        elif kind == "put":
            check_put(store, info, body, self._lease_keys)
        elif kind == "delete_range":
            check_delete_range(store, info, body)
        elif kind == "txn":
            check_txn(store, info, body, self._lease_keys)
        elif kind == "lease_revoke":
            check_lease(store, info, body.ID, self._lease_keys)

    def apply(self, kind: str, body: Any, index: int) -> Any:
        """Apply an auth entry (a kind in AUTH_KINDS) at Raft index `index`."""
        store = self.store
        if kind == "auth_enable":
            store.enable()
            return pb.AuthEnableResponse()
        if kind == "auth_disable":
            store.disable()
            return pb.AuthDisableResponse()
        if kind == "authenticate":
            token = store.authenticate(body.name, body.simple_token, index)
            return pb.AuthenticateResponse(token=token)
        if kind == "auth_user_add":
            options = body.options if body.HasField("options") else None
            store.user_add(body.name, body.hashed_password, options)
            return pb.AuthUserAddResponse()
        if kind == "auth_user_delete":
            store.user_delete(body.name)
            return pb.AuthUserDeleteResponse()
        if kind == "auth_user_change_password":
            store.user_change_password(body.name, body.hashed_password)
            return pb.AuthUserChangePasswordResponse()
        if kind == "auth_user_grant_role":
            store.user_grant_role(body.user, body.role)
            return pb.AuthUserGrantRoleResponse()
        if kind == "auth_user_revoke_role":
            store.user_revoke_role(body.name, body.role)
            return pb.AuthUserRevokeRoleResponse()
        if kind == "auth_role_add":
            store.role_add(body.name)
            return pb.AuthRoleAddResponse()
        if kind == "auth_role_delete":
            store.role_delete(body.role)
            return pb.AuthRoleDeleteResponse()
        if kind == "auth_role_grant_permission":
            store.role_grant_permission(body.name, body.perm if body.HasField("perm") else None)
            return pb.AuthRoleGrantPermissionResponse()
        if kind == "auth_role_revoke_permission":
            store.role_revoke_permission(body.role, body.key, body.range_end)
            return pb.AuthRoleRevokePermissionResponse()
        raise ValueError(f"not an auth request: {kind!r}")
