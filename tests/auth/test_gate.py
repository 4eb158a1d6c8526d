"""The member's auth gate: resolving callers from their credentials, and the local checks."""

from __future__ import annotations

import asyncio

import pytest
from raftkv.auth import (
    ANONYMOUS,
    ROOT,
    AuthGate,
    AuthInfo,
    AuthStore,
    Credentials,
    InvalidAuthTokenError,
    PermissionDeniedError,
    SimpleTokens,
    UserEmptyError,
    identity,
)
from raftkv.pb.authpb.auth_pb2 import Permission
from raftkv.pb.etcdserverpb import rpc_pb2 as pb
from raftkv.pb.serverpb import internal_pb2 as serverpb

from tests.auth.conftest import add_root, hashed


class Applied:
    """A stand-in for the node's applied index, with `wait_applied` as the node offers it."""

    def __init__(self, index: int) -> None:
        self.index = index
        self._changed = asyncio.Event()

    def advance(self, index: int) -> None:
        self.index = index
        self._changed.set()

    async def wait_applied(self, index: int) -> None:
        while self.index < index:
            self._changed.clear()
            await self._changed.wait()


@pytest.fixture
def enabled(store: AuthStore) -> AuthStore:
    add_root(store)
    store.user_add("alice", hashed("pw"), None)
    store.role_add("reader")
    perm = Permission(permType=Permission.READ, key=b"/app/", range_end=b"/app0")
    store.role_grant_permission("reader", perm)
    store.user_grant_role("alice", "reader")
    store.enable()
    return store


def gate_for(store: AuthStore, applied: Applied, *, client_cert_auth: bool = False) -> AuthGate:
    return AuthGate(
        lambda: store,
        applied.wait_applied,
        lambda lease: [],
        index_wait=0.2,
        client_cert_auth=client_cert_auth,
    )


async def test_a_token_resolves_to_its_user_at_the_current_revision(enabled: AuthStore) -> None:
    gate = gate_for(enabled, Applied(10))
    token = enabled.authenticate("alice", "abc", 10)
    assert await gate.resolve(Credentials(token=token)) == AuthInfo("alice", enabled.revision)
    assert await gate.resolve(ANONYMOUS) is None
    assert await gate.resolve(ROOT) == AuthInfo("root", enabled.revision)
    for bad in ("", "nope", "abc.9"):
        with pytest.raises(InvalidAuthTokenError):
            await gate.resolve(Credentials(token=bad))


async def test_a_token_from_a_later_entry_waits_for_it(enabled: AuthStore) -> None:
    applied = Applied(5)
    gate = gate_for(enabled, applied)
    token = enabled.authenticate("alice", "abc", 8)
    waiting = asyncio.create_task(gate.resolve(Credentials(token=token)))
    await asyncio.sleep(0.05)
    assert not waiting.done()
    applied.advance(8)
    assert await waiting == AuthInfo("alice", enabled.revision)
    # Never applied in time: invalid.
    with pytest.raises(InvalidAuthTokenError):
        await gate.resolve(Credentials(token="abc.99"))


async def test_checks_use_the_caller_bound_to_the_task(enabled: AuthStore) -> None:
    gate = gate_for(enabled, Applied(10))
    token = enabled.authenticate("alice", "abc", 10)
    with identity.bound(Credentials(token=token)):
        await gate.check_range(b"/app/x", b"")
        await gate.check_txn(pb.TxnRequest(compare=[pb.Compare(key=b"/app/x")]))
        with pytest.raises(PermissionDeniedError):
            await gate.check_range(b"/secret", b"")
        with pytest.raises(PermissionDeniedError):
            await gate.require_admin()
        await gate.check_user_get("alice")
        await gate.check_role_get("reader")
        with pytest.raises(PermissionDeniedError):
            await gate.check_user_get("root")
        header = serverpb.RequestHeader()
        await gate.stamp(header)
        assert (header.username, header.auth_revision) == ("alice", enabled.revision)

        async def in_a_task_it_started() -> None:
            await gate.check_range(b"/app/y", b"")

        await asyncio.create_task(in_a_task_it_started())
    with pytest.raises(UserEmptyError):
        await gate.check_range(b"/app/x", b"")  # unbound again: anonymous
    header = serverpb.RequestHeader()
    await gate.stamp(header)
    assert header == serverpb.RequestHeader()


async def test_a_watch_of_the_whole_keyspace_or_from_a_key_needs_it_all(
    enabled: AuthStore,
) -> None:
    gate = gate_for(enabled, Applied(10))
    alice = Credentials(token=enabled.authenticate("alice", "abc", 10))
    await gate.check_watch(b"/app/", b"/app0", alice)
    for key, end in [(b"/app/", b"\0"), (b"", b"\0"), (b"", b"")]:
        with pytest.raises(PermissionDeniedError):
            await gate.check_watch(key, end, alice)


async def test_client_certificate_names_the_user_only_with_client_cert_auth(
    enabled: AuthStore,
) -> None:
    by_cert = Credentials(common_name="alice")
    assert await gate_for(enabled, Applied(1)).resolve(by_cert) is None
    gate = gate_for(enabled, Applied(1), client_cert_auth=True)
    assert await gate.resolve(by_cert) == AuthInfo("alice", enabled.revision)
    # A token wins over the certificate, as in etcd.
    token = enabled.authenticate("root", "r", 1)
    both = Credentials(token=token, common_name="alice")
    assert await gate.resolve(both) == AuthInfo("root", enabled.revision)


async def test_nothing_is_refused_while_auth_is_disabled(store: AuthStore) -> None:
    gate = gate_for(store, Applied(1))
    await gate.check_range(b"/any", b"\0")
    await gate.require_admin()
    with pytest.raises(InvalidAuthTokenError):  # a token is still resolved, as in etcd
        await gate.resolve(Credentials(token="abc.1"))


def test_tokens_are_kept_by_the_provider(store: AuthStore) -> None:
    assert isinstance(store.tokens, SimpleTokens)
