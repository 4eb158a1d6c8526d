"""Failover on a real 3-member etcd: SIGKILL the member the client is talking to.

Each test starts its own cluster with fast elections (the kill may take the leader with it) and
checks what a user would notice: reads keep answering, writes either succeed or fail with a clear
error and are never applied twice, a lease stays alive, and a watch delivers every revision
exactly once, in order, across the kill.
"""

from __future__ import annotations

import asyncio
import contextlib

import pytest
from raftkv.client import AsyncClient, errors

from tests.support.etcd import EtcdCluster, EtcdMember

pytestmark = pytest.mark.integration


def kill(member: EtcdMember) -> None:
    assert member.process is not None
    member.process.kill()
    member.process.wait(timeout=10)


async def member_by_id(client: AsyncClient, cluster: EtcdCluster, member_id: int) -> EtcdMember:
    names = {m.id: m.name for m in (await client.member_list()).members}
    return next(m for m in cluster.members if m.name == names[member_id])


def member_by_target(cluster: EtcdCluster, target: str) -> EtcdMember:
    return next(m for m in cluster.members if m.client_url.endswith("//" + target))


async def test_reads_keep_working_and_writes_never_apply_twice_after_a_kill(
    cluster3_fresh: EtcdCluster,
) -> None:
    cluster = cluster3_fresh
    async with AsyncClient(cluster.grpc_targets, timeout=2.0) as client:
        await client.put("/f/k", "v")
        async with client.lease(3) as lease:
            await client.put("/f/leased", "x", lease=lease.id)
            served_by = (await client.get("/f/k")).header.member_id
            victim = await member_by_id(client, cluster, served_by)
            kill(victim)

            answers = [(await client.get("/f/k")).value for _ in range(12)]
            members = await client.member_list()
            outcomes: list[str] = []
            for i in range(12):
                try:
                    await client.put(f"/f/p{i:02}", "x")
                    outcomes.append("ok")
                except (errors.UnavailableError, errors.TimeoutError) as e:
                    # Cut off by the kill, or proposed to a leader that died: outcome unknown.
                    outcomes.append(type(e).__name__)
            written = await client.get("/f/p", prefix=True)
            await asyncio.sleep(lease.ttl)  # a full TTL after the kill: renewals had to move
            alive = await client.get("/f/leased")
            assert not lease.lost.is_set()

    assert answers == [b"v"] * 12
    assert len(members.members) == 3
    assert outcomes.count("ok") >= 6, outcomes  # the two survivors serve the rest
    # Every write that reported success is there, and none was applied twice.
    assert {kv.key for kv in written.kvs} >= {
        f"/f/p{i:02}".encode() for i, o in enumerate(outcomes) if o == "ok"
    }
    assert all(kv.version == 1 for kv in written.kvs)
    assert alive.value == b"x"


async def leader_first(cluster: EtcdCluster) -> list[str]:
    """The cluster's targets with the leader's first, so a new client's first call goes there."""
    async with AsyncClient(cluster.grpc_targets) as probe:
        leader = await member_by_id(probe, cluster, (await probe.status()).leader)
    return sorted(cluster.grpc_targets, key=lambda t: member_by_target(cluster, t) is not leader)


async def test_a_watch_sees_every_revision_once_across_a_kill(
    cluster3_fresh: EtcdCluster,
) -> None:
    cluster = cluster3_fresh
    # The watch goes to the leader: its death also stalls writes until a new leader is elected.
    async with (
        AsyncClient(await leader_first(cluster)) as watcher,
        AsyncClient(cluster.grpc_targets, timeout=2.0) as writer,
    ):
        start = (await writer.put("/w-start", "")).header.revision
        async with watcher.watch("/w/", prefix=True) as watch:
            assert watch.endpoint is not None
            victim = member_by_target(cluster, watch.endpoint.target)
            seen: list[int] = []

            async def consume_until(revision: int) -> None:
                async for batch in watch:
                    seen.extend(e.revision for e in batch.events)
                    if seen and seen[-1] >= revision:
                        return

            acknowledged: list[int] = []
            for i in range(40):
                if i == 12:
                    kill(victim)
                # A write cut off by the kill has an unknown outcome: the final read tells.
                with contextlib.suppress(errors.UnavailableError, errors.TimeoutError):
                    acknowledged.append((await writer.put(f"/w/{i:02}", str(i))).header.revision)
            final = await writer.get("/w/", prefix=True)
            expected = sorted(kv.mod_revision for kv in final.kvs)
            await asyncio.wait_for(consume_until(expected[-1]), 20)

    assert expected[0] > start
    assert seen == expected  # each revision once, in order, none missing
    assert set(acknowledged) <= set(seen)
    assert watch.resumes >= 1
    assert watch.endpoint is not None and watch.endpoint.target not in victim.client_url
