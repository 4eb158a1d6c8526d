"""Authorization where entries are applied, and deterministic auth entries.

The rules are etcd's authApplierV3 (observed on etcd 3.4.23 where marked), plus two stricter
ones: nested txns and puts inside a txn are checked like top-level requests.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from raftkv.apply.applier import Applier
from raftkv.auth import (
    AuthApplier,
    AuthOldRevisionError,
    AuthStore,
    PermissionDeniedError,
    SimpleTokens,
    UserEmptyError,
    UserNotFoundError,
)
from raftkv.pb.authpb.auth_pb2 import Permission
from raftkv.pb.etcdserverpb import rpc_pb2 as pb
from raftkv.pb.raftpb import raft_pb2 as raftpb
from raftkv.pb.serverpb import internal_pb2 as serverpb

from tests.auth.conftest import add_root, hashed

R, W = Permission.READ, Permission.WRITE
LEASED = {5: [b"/secret/k"], 6: [b"/w/leased"]}


@pytest.fixture
def auth(store: AuthStore) -> AuthApplier:
    """alice reads /app/ and writes /w/ (no read there)."""
    add_root(store)
    store.user_add("alice", hashed("pw"), None)
    store.role_add("reader")
    store.role_grant_permission("reader", Permission(permType=R, key=b"/app/", range_end=b"/app0"))
    store.role_grant_permission("reader", Permission(permType=W, key=b"/w/", range_end=b"/w0"))
    store.user_grant_role("alice", "reader")
    store.enable()
    return AuthApplier(store, lambda lease: LEASED.get(lease, []))


def as_user(auth: AuthApplier, name: str, revision: int = 0) -> serverpb.RequestHeader:
    return serverpb.RequestHeader(username=name, auth_revision=revision or auth.store.revision)


def put(key: bytes, **fields: object) -> pb.PutRequest:
    return pb.PutRequest(key=key, value=b"v", **fields)  # type: ignore[arg-type]


def txn(*ops: pb.RequestOp, compare: list[pb.Compare] | None = None) -> pb.TxnRequest:
    return pb.TxnRequest(compare=compare or [], success=list(ops))


def op_put(key: bytes, **fields: object) -> pb.RequestOp:
    return pb.RequestOp(request_put=put(key, **fields))


def op_range(key: bytes) -> pb.RequestOp:
    return pb.RequestOp(request_range=pb.RangeRequest(key=key))


ALLOWED: list[tuple[str, object]] = [
    ("put", put(b"/w/x")),
    ("put", put(b"/w/x", lease=6)),
    ("delete_range", pb.DeleteRangeRequest(key=b"/w/", range_end=b"/w0")),
    ("txn", txn(op_put(b"/w/x"), op_range(b"/app/a"))),
    ("txn", txn(compare=[pb.Compare(key=b"/app/", range_end=b"/app0")])),
    ("lease_revoke", pb.LeaseRevokeRequest(ID=6)),
    ("lease_revoke", pb.LeaseRevokeRequest(ID=99)),  # unknown: the lessor says "not found"
    ("lease_grant", pb.LeaseGrantRequest(ID=7, TTL=10)),  # not checked in etcd 3.4
    ("compaction", pb.CompactionRequest(revision=1)),  # not checked in etcd 3.4 (observed)
    ("alarm", pb.AlarmRequest()),  # not checked in etcd 3.4 (observed)
    ("authenticate", serverpb.AuthenticateInternalRequest(name="alice")),
]

DENIED: list[tuple[str, object]] = [
    ("put", put(b"/app/x")),
    ("put", put(b"/w/x", lease=5)),  # observed: the lease holds a key alice may not write
    ("put", put(b"/w/x", prev_kv=True)),  # prev_kv needs read access
    ("delete_range", pb.DeleteRangeRequest(key=b"/w/", range_end=b"/x")),
    ("delete_range", pb.DeleteRangeRequest(key=b"/w/a", prev_kv=True)),
    ("txn", txn(op_put(b"/w/x"), op_range(b"/secret"))),
    ("txn", pb.TxnRequest(success=[op_put(b"/w/x")], failure=[op_put(b"/secret")])),  # observed
    ("txn", txn(compare=[pb.Compare(key=b"/secret")])),
    ("txn", txn(pb.RequestOp(request_txn=txn(op_range(b"/secret"))))),  # etcd 3.4 allows it
    ("txn", txn(op_put(b"/w/x", prev_kv=True))),  # etcd 3.4 allows it
    ("lease_revoke", pb.LeaseRevokeRequest(ID=5)),  # observed
    ("auth_user_add", serverpb.AuthUserAddInternalRequest(name="zed")),  # observed
    ("auth_enable", pb.AuthEnableRequest()),  # observed: enabling again needs root
    ("auth_disable", pb.AuthDisableRequest()),  # observed
]


@pytest.mark.parametrize(("kind", "body"), ALLOWED)
def test_alice_may(auth: AuthApplier, kind: str, body: object) -> None:
    auth.authorize(as_user(auth, "alice"), kind, body)


@pytest.mark.parametrize(("kind", "body"), DENIED)
def test_alice_may_not(auth: AuthApplier, kind: str, body: object) -> None:
    with pytest.raises(PermissionDeniedError):
        auth.authorize(as_user(auth, "alice"), kind, body)


@pytest.mark.parametrize(("kind", "body"), DENIED)
def test_root_may_do_anything(auth: AuthApplier, kind: str, body: object) -> None:
    auth.authorize(as_user(auth, "root"), kind, body)


def test_anonymous_entries_are_refused_as_etcd_does(auth: AuthApplier) -> None:
    anonymous = serverpb.RequestHeader()
    for kind, body in [
        ("put", put(b"/w/x")),
        ("auth_user_add", serverpb.AuthUserAddInternalRequest(name="zed")),  # observed
        ("lease_revoke", pb.LeaseRevokeRequest(ID=5)),  # observed
    ]:
        with pytest.raises(UserEmptyError):
            auth.authorize(anonymous, kind, body)
    auth.authorize(anonymous, "lease_revoke", pb.LeaseRevokeRequest(ID=99))  # observed
    auth.authorize(anonymous, "lease_grant", pb.LeaseGrantRequest(ID=7, TTL=5))  # observed


def test_an_entry_accepted_before_an_auth_change_is_refused_as_old(auth: AuthApplier) -> None:
    header = as_user(auth, "alice")
    auth.store.role_add("another")  # applied between the request's acceptance and its entry
    with pytest.raises(AuthOldRevisionError):
        auth.authorize(header, "put", put(b"/w/x"))
    # Admin entries do not look at the revision (observed: an old root token still works).
    root = serverpb.RequestHeader(username="root", auth_revision=1)
    auth.authorize(root, "auth_role_add", pb.AuthRoleAddRequest(name="x"))


def test_a_deleted_users_entries_fail(auth: AuthApplier) -> None:
    header = as_user(auth, "alice")
    auth.store.user_delete("alice")
    with pytest.raises(AuthOldRevisionError):
        auth.authorize(header, "put", put(b"/w/x"))
    with pytest.raises(PermissionDeniedError):
        auth.authorize(as_user(auth, "alice"), "put", put(b"/w/x"))
    with pytest.raises(UserNotFoundError):
        auth.authorize(as_user(auth, "alice"), "auth_role_add", pb.AuthRoleAddRequest(name="x"))


def test_nothing_is_checked_while_auth_is_disabled(tmp_path: Path) -> None:
    from raftkv.storage.backend import Backend

    backend = Backend(tmp_path / "db2")
    auth = AuthApplier(AuthStore(backend, SimpleTokens()), lambda lease: [b"k"])
    for kind, body in DENIED:
        auth.authorize(serverpb.RequestHeader(), kind, body)
    backend.close()


# ---- whole entries through the applier --------------------------------------------------------


def entry(index: int, request: serverpb.InternalRequest, user: str = "") -> raftpb.Entry:
    if user:
        request.header.username = user
        request.header.auth_revision = 10**9  # never "old" in these tests
    request.header.id = index
    return raftpb.Entry(index=index, term=1, data=request.SerializeToString())


def session() -> list[tuple[serverpb.InternalRequest, str]]:
    R_ = serverpb.InternalRequest
    perm = Permission(permType=R, key=b"/app/", range_end=b"/app0")
    return [
        (
            R_(
                auth_user_add=serverpb.AuthUserAddInternalRequest(
                    name="root", hashed_password=hashed("r")
                )
            ),
            "",
        ),
        (R_(auth_user_grant_role=pb.AuthUserGrantRoleRequest(user="root", role="root")), ""),
        (
            R_(
                auth_user_add=serverpb.AuthUserAddInternalRequest(
                    name="alice", hashed_password=hashed("a")
                )
            ),
            "",
        ),
        (R_(auth_role_add=pb.AuthRoleAddRequest(name="reader")), ""),
        (
            R_(
                auth_role_grant_permission=pb.AuthRoleGrantPermissionRequest(
                    name="reader", perm=perm
                )
            ),
            "",
        ),
        (R_(auth_user_grant_role=pb.AuthUserGrantRoleRequest(user="alice", role="reader")), ""),
        (R_(auth_enable=pb.AuthEnableRequest()), ""),
        (
            R_(authenticate=serverpb.AuthenticateInternalRequest(name="alice", simple_token="tok")),
            "",
        ),
        (R_(put=pb.PutRequest(key=b"/app/x", value=b"1")), "alice"),  # denied
        (R_(put=pb.PutRequest(key=b"/app/x", value=b"1")), "root"),
        (R_(auth_role_add=pb.AuthRoleAddRequest(name="other")), "alice"),  # denied
        (R_(auth_user_delete=pb.AuthUserDeleteRequest(name="alice")), "root"),
    ]


# One log for every "member": the password hashes in it were made once, by the proposer.
LOG = [entry(index, request, user) for index, (request, user) in enumerate(session(), start=1)]


def run(tmp_path: Path, name: str) -> tuple[Applier, list[object]]:
    applier = Applier(tmp_path / name / "db", max_txn_ops=128)
    results: list[object] = []
    for log_entry in LOG:
        _, result = applier.apply_normal(log_entry)
        results.append(type(result).__name__ if isinstance(result, Exception) else result)
    applier.commit()
    return applier, results


def test_auth_entries_apply_identically_on_every_member(tmp_path: Path) -> None:
    first, results = run(tmp_path, "m1")
    second, again = run(tmp_path, "m2")
    assert results == again
    assert first.backend.hash() == second.backend.hash()
    assert results[7] == pb.AuthenticateResponse(token="tok.8")  # prefix + entry index
    assert results[8] == "PermissionDeniedError"
    assert results[10] == "PermissionDeniedError"
    assert first.auth.store.user_names() == ["root"]
    assert first.store.range(b"/app/x").kvs[0].value == b"1"
    for applier in (first, second):
        applier.close()


def test_auth_state_survives_a_restart_and_is_in_snapshots(tmp_path: Path) -> None:
    applier, _ = run(tmp_path, "m1")
    revision = applier.auth.store.revision
    copy = tmp_path / "snapshot.db"
    applier.backend.snapshot_to(copy)
    applier.close()
    for path in (tmp_path / "m1" / "db", copy):
        reopened = Applier(path, max_txn_ops=128)
        assert reopened.auth.store.enabled
        assert reopened.auth.store.revision == revision
        assert reopened.auth.store.user_names() == ["root"]
        reopened.close()


def test_a_restore_keeps_the_members_tokens(tmp_path: Path) -> None:
    tokens = SimpleTokens()
    applier = Applier(tmp_path / "db", max_txn_ops=128, tokens=tokens)
    source, _ = run(tmp_path, "source")
    payload = tmp_path / "payload.db"
    source.backend.snapshot_to(payload)
    source.close()
    applier.restore(payload)
    token = applier.auth.store.authenticate("root", "p", 1)
    assert tokens.info(token, 1) is not None
    assert applier.tokens is tokens
    applier.close()
