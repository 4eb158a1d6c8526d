"""Leases on a real etcd: the unary calls, automatic keep-alive, and loss detection.

etcd's shortest lease is 2 s with its default timers, so the keep-alive tests wait a little
longer than one TTL and check that keys outlived it; loss is provoked by revoking the lease from
another client and by killing the only member.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest
from raftkv.client import AsyncClient, errors

from tests.support.etcd import start_etcd_cluster
from tests.support.fixtures import require_etcd

pytestmark = pytest.mark.integration

Key = Callable[[str], bytes]
ClientFor = Callable[..., AsyncClient]


async def test_grant_inspect_renew_and_revoke(client_for: ClientFor, key: Key) -> None:
    async with client_for() as client:
        granted = await client.lease_grant(30)
        await client.put(key("a"), "1", lease=granted.id)
        await client.put(key("b"), "2", lease=granted.id)
        ttl = await client.lease_time_to_live(granted.id, keys=True)
        listed = await client.lease_leases()
        renewed = await client.lease_keep_alive_once(granted.id)
        await client.lease_revoke(granted.id)
        after = await client.get(key(""), prefix=True)
        gone = await client.lease_time_to_live(granted.id)
        with pytest.raises(errors.LeaseNotFoundError):
            await client.lease_keep_alive_once(granted.id)

    assert granted.ttl == 30
    assert ttl.id == granted.id and ttl.granted_ttl == 30 and 0 < ttl.ttl <= 30
    assert sorted(ttl.keys) == [key("a"), key("b")]
    assert granted.id in listed.ids
    assert renewed.id == granted.id and renewed.ttl == 30
    assert after.count == 0
    assert gone.ttl == -1


async def test_keep_alive_holds_keys_beyond_their_ttl(client_for: ClientFor, key: Key) -> None:
    async with client_for() as client:
        existing = await client.lease_grant(2)
        async with client.lease(2) as lease, client.keep_alive(existing.id) as kept:
            await client.put(key("session"), "x", lease=lease.id)
            await client.put(key("existing"), "y", lease=existing.id)
            await asyncio.sleep(3.5)
            both = await client.get(key(""), prefix=True)
            assert not lease.lost.is_set() and not kept.lost.is_set()
            assert lease.remaining() > 0
        after_exit = await client.get(key(""), prefix=True)
        existing_ttl = await client.lease_time_to_live(existing.id)
        await client.lease_revoke(existing.id)

    assert lease.ttl == 2 and kept.ttl == 2
    assert [kv.key for kv in both.kvs] == [key("existing"), key("session")]
    # Leaving `client.lease` revoked that lease; `keep_alive` left the existing one alone.
    assert [kv.key for kv in after_exit.kvs] == [key("existing")]
    assert existing_ttl.ttl > 0


async def test_lost_is_set_when_the_lease_is_revoked_elsewhere(
    client_for: ClientFor, key: Key
) -> None:
    async with client_for() as client, client_for() as other:
        async with client.lease(2) as lease:
            await client.put(key("k"), "v", lease=lease.id)
            await other.lease_revoke(lease.id)
            await asyncio.wait_for(lease.lost.wait(), 3.0)
        with pytest.raises(errors.LeaseNotFoundError):
            async with client.keep_alive(lease.id):
                pass


async def test_closing_the_client_stops_its_watches_and_keep_alives(
    client_for: ClientFor, key: Key
) -> None:
    client = client_for()
    watch = await client.watch(key("k")).start()
    lease = await client.lease(5).start()
    await client.close()
    leftover = [t for t in asyncio.all_tasks() if t.get_name().startswith("raftkv-")]
    assert [batch async for batch in watch] == []
    assert lease.lost.is_set()
    assert leftover == []


async def test_lost_is_set_when_the_lease_cannot_be_renewed_before_expiry(
    tmp_path: Path,
) -> None:
    require_etcd()
    with start_etcd_cluster(tmp_path) as cluster:
        async with AsyncClient(cluster.grpc_targets, dial_timeout=0.2) as client:
            lease = await client.lease(2, revoke_on_close=False).start()
            await asyncio.sleep(0.5)
            member = cluster.members[0]
            assert member.process is not None
            member.process.kill()
            member.process.wait()
            loop = asyncio.get_running_loop()
            killed_at = loop.time()
            await asyncio.sleep(0.3)
            assert not lease.lost.is_set()  # the last renewal still covers this moment
            await asyncio.wait_for(lease.lost.wait(), 3.0)
            lost_after = loop.time() - killed_at
            await lease.close()
    assert lost_after <= 2.0 + 0.5
