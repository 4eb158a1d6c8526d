"""Authentication against a real etcd with auth enabled: users, roles, permissions, tokens.

The cluster runs with `--auth-token-ttl=1`, so a token expires within about two seconds and the
client has to notice "invalid auth token" and log in again on its own.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from raftkv.client import AsyncClient, Permission, PermissionType, errors

from tests.support.etcd import EtcdCluster, start_etcd_cluster
from tests.support.fixtures import require_etcd

pytestmark = pytest.mark.integration

ROOT = ("root", "root-secret")
ALICE = ("alice", "alice-secret")


@pytest.fixture(scope="module")
def auth_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdCluster]:
    """A single member with root, a read-only user alice, and auth enabled."""
    require_etcd()
    with start_etcd_cluster(tmp_path_factory.mktemp("etcd-auth"), auth_token_ttl=1) as cluster:

        async def setup() -> None:
            async with AsyncClient(cluster.grpc_targets) as admin:
                await admin.put("/data/x", "readable")
                await admin.user_add(*ROOT)
                await admin.user_grant_role("root", "root")
                await admin.user_add(*ALICE)
                await admin.role_add("reader")
                read = PermissionType.READ
                await admin.role_grant_permission("reader", "/data/", read, prefix=True)
                await admin.user_grant_role("alice", "reader")
                await admin.auth_enable()

        asyncio.run(setup())
        yield cluster


async def test_admin_calls_report_users_roles_and_permissions(auth_cluster: EtcdCluster) -> None:
    async with AsyncClient(auth_cluster.grpc_targets, username=ROOT[0], password=ROOT[1]) as root:
        users = await root.user_list()
        roles = await root.role_list()
        alice_roles = await root.user_get("alice")
        perms = await root.role_get("reader")
        await root.role_add("temp")
        await root.role_grant_permission("temp", "/t", PermissionType.WRITE)
        granted = await root.role_get("temp")
        await root.role_revoke_permission("temp", "/t")
        revoked = await root.role_get("temp")
        await root.role_delete("temp")
        with pytest.raises(errors.RoleNotFoundError):
            await root.role_get("temp")
        with pytest.raises(errors.UserExistsError):
            await root.user_add(*ALICE)

    assert users == ("alice", "root")
    assert roles == ("reader",)  # the built-in root role is not listed
    assert alice_roles == ("reader",)
    assert perms == (Permission(PermissionType.READ, b"/data/", b"/data0"),)
    assert granted == (Permission(PermissionType.WRITE, b"/t", b""),) and revoked == ()


async def test_permissions_are_enforced_with_typed_errors(auth_cluster: EtcdCluster) -> None:
    targets = auth_cluster.grpc_targets
    async with (
        AsyncClient(targets, username=ALICE[0], password=ALICE[1]) as alice,
        AsyncClient(targets) as anonymous,
        AsyncClient(targets, username=ALICE[0], password="wrong") as impostor,
    ):
        readable = await alice.get("/data/x")
        with pytest.raises(errors.PermissionDeniedError):
            await alice.put("/data/x", "no write access")
        with pytest.raises(errors.PermissionDeniedError):
            await alice.get("/secret")
        with pytest.raises(errors.UserEmptyError):
            await anonymous.get("/data/x")
        with pytest.raises(errors.AuthFailedError):
            await impostor.get("/data/x")
        with pytest.raises(errors.PermissionDeniedError):
            async with alice.watch("/secret"):
                pass
    assert readable.value == b"readable"


async def test_an_expired_token_is_renewed_transparently(auth_cluster: EtcdCluster) -> None:
    async with (
        AsyncClient(auth_cluster.grpc_targets, username=ROOT[0], password=ROOT[1]) as root,
        AsyncClient(auth_cluster.grpc_targets, username=ALICE[0], password=ALICE[1]) as alice,
    ):
        first = await alice.get("/data/x")
        token = alice.transport.token
        async with alice.watch("/data/", prefix=True) as watch:
            await asyncio.sleep(2.5)  # the token expires server-side
            again = await alice.get("/data/x")
            put = await root.put("/data/y", "after expiry")
            batch = await asyncio.wait_for(anext(watch), 5)
    assert first.value == again.value == b"readable"
    assert alice.transport.token not in (None, token)
    assert [e.revision for e in batch.events] == [put.header.revision]
