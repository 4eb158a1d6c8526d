"""The auth store's state transitions and errors, as etcd 3.4 answers them.

Where a case is marked "observed", the expected behaviour was seen on etcd 3.4.23.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from raftkv.auth import (
    AuthFailedError,
    AuthInfo,
    AuthNotEnabledError,
    AuthOldRevisionError,
    AuthStore,
    InvalidAuthMgmtError,
    NoPasswordUserError,
    PermissionDeniedError,
    PermissionNotGrantedError,
    RoleEmptyError,
    RoleExistsError,
    RoleNotFoundError,
    RoleNotGrantedError,
    RootRoleNotExistError,
    RootUserNotExistError,
    SimpleTokens,
    UserEmptyError,
    UserExistsError,
    UserNotFoundError,
    password_matches,
)
from raftkv.pb.authpb.auth_pb2 import Permission, UserAddOptions
from raftkv.storage.backend import Backend

from tests.auth.conftest import add_root, hashed

R, W, RW = Permission.READ, Permission.WRITE, Permission.READWRITE


def grants(store: AuthStore, role: str) -> list[tuple[bytes, bytes, int]]:
    return [(p.key, p.range_end, p.permType) for p in store.role_permissions(role)]


def test_a_fresh_store_is_disabled_at_revision_1(store: AuthStore) -> None:
    assert not store.enabled
    assert store.revision == 1
    assert store.user_names() == [] and store.role_names() == []


def test_users_are_added_listed_and_deleted(store: AuthStore) -> None:
    store.user_add("bob", hashed("pw"), None)
    store.user_add("alice", hashed("pw"), None)
    assert store.user_names() == ["alice", "bob"]
    with pytest.raises(UserExistsError):
        store.user_add("alice", hashed("other"), None)
    with pytest.raises(UserEmptyError):
        store.user_add("", hashed("pw"), None)
    store.user_delete("bob")
    assert store.user_names() == ["alice"]
    with pytest.raises(UserNotFoundError):
        store.user_delete("bob")
    with pytest.raises(UserNotFoundError):
        store.user_roles("bob")


def test_password_change_replaces_the_hash(store: AuthStore) -> None:
    store.user_add("alice", hashed("old"), None)
    store.user_change_password("alice", hashed("new"))
    add_root(store)
    store.enable()
    stored, _ = store.password_hash("alice")
    assert password_matches("new", stored) and not password_matches("old", stored)
    with pytest.raises(UserNotFoundError):
        store.user_change_password("nobody", hashed("x"))


def test_roles_are_granted_sorted_once_and_revoked(store: AuthStore) -> None:
    store.user_add("alice", hashed("pw"), None)
    for role in ("writer", "reader"):
        store.role_add(role)
        store.user_grant_role("alice", role)
    assert store.user_roles("alice") == ["reader", "writer"]
    revision = store.revision
    store.user_grant_role("alice", "reader")  # observed: quietly ignored, no revision bump
    assert store.revision == revision
    with pytest.raises(RoleNotFoundError):
        store.user_grant_role("alice", "nope")
    with pytest.raises(UserNotFoundError):
        store.user_grant_role("nobody", "reader")
    store.user_revoke_role("alice", "writer")
    assert store.user_roles("alice") == ["reader"]
    with pytest.raises(RoleNotGrantedError):
        store.user_revoke_role("alice", "writer")
    with pytest.raises(UserNotFoundError):
        store.user_revoke_role("nobody", "reader")


def test_the_root_role_can_be_granted_without_being_added(store: AuthStore) -> None:
    add_root(store)
    assert store.user_roles("root") == ["root"]
    assert store.role_names() == []  # observed: not listed until added
    with pytest.raises(RoleNotFoundError):
        store.role_permissions("root")


def test_roles_are_added_and_deletion_strips_them_from_users(store: AuthStore) -> None:
    store.role_add("reader")
    with pytest.raises(RoleExistsError):
        store.role_add("reader")
    with pytest.raises(RoleEmptyError):
        store.role_add("")
    store.user_add("alice", hashed("pw"), None)
    store.user_add("bob", hashed("pw"), None)
    store.user_grant_role("alice", "reader")
    store.role_delete("reader")
    assert store.role_names() == [] and store.user_roles("alice") == []
    with pytest.raises(RoleNotFoundError):
        store.role_delete("reader")


def test_grant_order_and_replacement_follow_etcd(store: AuthStore) -> None:
    """The sequences and results observed on etcd 3.4.23 (`role get` after each grant)."""
    store.role_add("r")
    steps = [
        ((b"x", b"", R), [(b"x", b"", R)]),
        ((b"x", b"y", W), [(b"x", b"", R), (b"x", b"y", W)]),
        ((b"a", b"", RW), [(b"a", b"", RW), (b"x", b"", R), (b"x", b"y", W)]),
        ((b"x", b"", W), [(b"a", b"", RW), (b"x", b"", W), (b"x", b"y", W)]),
        ((b"m", b"n", R), [(b"a", b"", RW), (b"m", b"n", R), (b"x", b"", W), (b"x", b"y", W)]),
        # etcd compares only the first grant at key x: (x, y) is not replaced but added again
        (
            (b"x", b"y", R),
            [(b"a", b"", RW), (b"m", b"n", R), (b"x", b"", W), (b"x", b"y", W), (b"x", b"y", R)],
        ),
    ]
    for (key, end, perm_type), expected in steps:
        store.role_grant_permission("r", Permission(permType=perm_type, key=key, range_end=end))
        assert grants(store, "r") == expected
    store.role_revoke_permission("r", b"x", b"y")  # removes every (x, y)
    assert grants(store, "r") == [(b"a", b"", RW), (b"m", b"n", R), (b"x", b"", W)]
    with pytest.raises(PermissionNotGrantedError):
        store.role_revoke_permission("r", b"x", b"y")
    with pytest.raises(RoleNotFoundError):
        store.role_grant_permission("nope", Permission(key=b"k"))


def test_every_change_bumps_the_revision_but_enable(store: AuthStore) -> None:
    changes = [
        lambda: store.user_add("root", hashed("pw"), None),
        lambda: store.user_grant_role("root", "root"),
        lambda: store.role_add("r"),
        lambda: store.role_grant_permission("r", Permission(key=b"k")),
        lambda: store.role_revoke_permission("r", b"k", b""),
        lambda: store.user_add("alice", hashed("pw"), None),
        lambda: store.user_grant_role("alice", "r"),
        lambda: store.user_revoke_role("alice", "r"),
        lambda: store.user_change_password("alice", hashed("pw2")),
        lambda: store.role_delete("r"),
        lambda: store.user_delete("alice"),
    ]
    for number, change in enumerate(changes, start=2):
        change()
        assert store.revision == number
    store.enable()
    assert store.revision == len(changes) + 1  # observed: a JWT issued after enable says 7
    store.disable()
    assert store.revision == len(changes) + 2


def test_enable_needs_root_with_the_root_role(store: AuthStore) -> None:
    with pytest.raises(RootUserNotExistError):
        store.enable()
    store.user_add("root", hashed("pw"), None)
    with pytest.raises(RootRoleNotExistError):
        store.enable()
    store.user_grant_role("root", "root")
    store.enable()
    store.enable()  # already enabled: ignored
    assert store.enabled


def test_root_is_protected_while_auth_is_enabled(store: AuthStore) -> None:
    add_root(store)
    store.role_add("root")
    store.enable()
    for change in (
        lambda: store.user_delete("root"),
        lambda: store.role_delete("root"),
        lambda: store.user_revoke_role("root", "root"),
    ):
        with pytest.raises(InvalidAuthMgmtError):
            change()
    store.disable()
    store.user_revoke_role("root", "root")
    store.role_delete("root")
    store.user_delete("root")


def test_password_hash_lookup_follows_etcds_order(store: AuthStore) -> None:
    store.user_add("nopw", b"", UserAddOptions(no_password=True))
    with pytest.raises(AuthNotEnabledError):
        store.password_hash("nopw")
    add_root(store)
    store.enable()
    with pytest.raises(NoPasswordUserError):
        store.password_hash("nopw")
    with pytest.raises(AuthFailedError):
        store.password_hash("nobody")
    with pytest.raises(AuthFailedError):
        store.password_hash("")
    stored, revision = store.password_hash("root")
    assert password_matches("rootpw", stored) and revision == store.revision


def test_authenticate_issues_a_token_only_when_enabled_and_for_password_users(
    store: AuthStore, tokens: SimpleTokens
) -> None:
    add_root(store)
    with pytest.raises(AuthNotEnabledError):
        store.authenticate("root", "abc", 10)
    store.enable()
    token = store.authenticate("root", "abc", 10)
    assert token == "abc.10"
    assert tokens.info(token, store.revision) == AuthInfo("root", store.revision)
    store.user_add("nopw", b"", UserAddOptions(no_password=True))
    for name in ("nopw", "nobody"):
        with pytest.raises(AuthFailedError):
            store.authenticate(name, "abc", 11)


def test_deleting_a_user_or_changing_its_password_ends_its_tokens(
    store: AuthStore, tokens: SimpleTokens
) -> None:
    add_root(store)
    store.user_add("alice", hashed("pw"), None)
    store.user_add("bob", hashed("pw"), None)
    store.enable()
    alice = store.authenticate("alice", "a", 1)
    bob = store.authenticate("bob", "b", 2)
    root = store.authenticate("root", "r", 3)
    store.user_change_password("alice", hashed("new"))
    store.user_delete("bob")
    assert tokens.info(alice, 1) is None and tokens.info(bob, 1) is None
    assert tokens.info(root, 1) is not None
    store.disable()
    assert tokens.info(root, 1) is None


# ---- checks -----------------------------------------------------------------------------------


@pytest.fixture
def enabled(store: AuthStore) -> AuthStore:
    """root, and alice who may read /app/ and write /w/."""
    add_root(store)
    store.user_add("alice", hashed("pw"), None)
    store.role_add("reader")
    store.role_grant_permission("reader", Permission(permType=R, key=b"/app/", range_end=b"/app0"))
    store.role_grant_permission("reader", Permission(permType=W, key=b"/w/", range_end=b"/w0"))
    store.user_grant_role("alice", "reader")
    store.enable()
    return store


def test_checks_do_nothing_while_disabled(store: AuthStore) -> None:
    store.is_range_permitted(None, b"any", b"")
    store.is_put_permitted(None, b"any")
    store.is_admin_permitted(None)


def test_key_checks_follow_the_users_grants(enabled: AuthStore) -> None:
    alice = AuthInfo("alice", enabled.revision)
    enabled.is_range_permitted(alice, b"/app/x", b"")
    enabled.is_range_permitted(alice, b"/app/", b"/app0")
    enabled.is_put_permitted(alice, b"/w/x")
    enabled.is_delete_range_permitted(alice, b"/w/", b"/w0")
    for check in (
        lambda: enabled.is_range_permitted(alice, b"/secret", b""),
        lambda: enabled.is_put_permitted(alice, b"/app/x"),
        lambda: enabled.is_range_permitted(alice, b"/w/x", b""),
        lambda: enabled.is_delete_range_permitted(alice, b"/w/", b"/x"),
    ):
        with pytest.raises(PermissionDeniedError):
            check()
    enabled.is_put_permitted(AuthInfo("root", enabled.revision), b"/anything")


def test_key_checks_refuse_anonymous_old_and_unknown_callers(enabled: AuthStore) -> None:
    with pytest.raises(UserEmptyError):
        enabled.is_range_permitted(None, b"/app/x", b"")
    with pytest.raises(UserEmptyError):
        enabled.is_range_permitted(AuthInfo("", 0), b"/app/x", b"")
    with pytest.raises(AuthOldRevisionError):
        enabled.is_range_permitted(AuthInfo("alice", enabled.revision - 1), b"/app/x", b"")
    with pytest.raises(PermissionDeniedError):
        enabled.is_range_permitted(AuthInfo("ghost", enabled.revision), b"/app/x", b"")


def test_grants_changes_take_effect_at_once(enabled: AuthStore) -> None:
    enabled.role_revoke_permission("reader", b"/app/", b"/app0")
    with pytest.raises(PermissionDeniedError):
        enabled.is_range_permitted(AuthInfo("alice", enabled.revision), b"/app/x", b"")
    enabled.role_grant_permission("reader", Permission(permType=RW, key=b"/app/", range_end=b"\0"))
    enabled.is_put_permitted(AuthInfo("alice", enabled.revision), b"/zzz")


def test_admin_checks(enabled: AuthStore) -> None:
    enabled.is_admin_permitted(AuthInfo("root", 1))  # the revision does not matter here
    with pytest.raises(UserEmptyError):
        enabled.is_admin_permitted(None)
    with pytest.raises(UserEmptyError):
        enabled.is_admin_permitted(AuthInfo("", 0))
    with pytest.raises(PermissionDeniedError):
        enabled.is_admin_permitted(AuthInfo("alice", enabled.revision))
    with pytest.raises(UserNotFoundError):
        enabled.is_admin_permitted(AuthInfo("ghost", enabled.revision))
    assert enabled.has_role("alice", "reader") and not enabled.has_role("alice", "root")


def test_state_survives_reopening_the_backend(
    tmp_path: Path, backend: Backend, enabled: AuthStore
) -> None:
    revision = enabled.revision
    backend.commit()
    again = Backend(tmp_path / "db")
    reopened = AuthStore(again, SimpleTokens())
    assert reopened.enabled and reopened.revision == revision
    assert reopened.user_names() == ["alice", "root"]
    assert grants(reopened, "reader") == [(b"/app/", b"/app0", R), (b"/w/", b"/w0", W)]
    with pytest.raises(PermissionDeniedError):
        reopened.is_put_permitted(AuthInfo("alice", revision), b"/app/x")
    again.close()
