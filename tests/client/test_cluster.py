"""Cluster, maintenance, lock and election calls on a real 3-member etcd.

Answers are checked against what the test knows about the cluster it started (member names,
URLs, which member each endpoint is) and, for the snapshot, by etcdctl reading the file back.
"""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from raftkv.client import AsyncClient, errors

from tests.support.etcd import EtcdCluster, etcdctl, free_port, start_etcd_cluster
from tests.support.fixtures import require_etcd

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def etcd_cluster3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdCluster]:
    """Three members; without etcd 3.4's rule that membership changes wait until the leader has
    been connected to every peer for 5 s, which would only slow the test down."""
    require_etcd()
    with start_etcd_cluster(
        tmp_path_factory.mktemp("etcd3"), size=3, strict_reconfig_check=False
    ) as cluster:
        yield cluster


async def test_member_list_matches_the_cluster(etcd_cluster3: EtcdCluster) -> None:
    async with AsyncClient(etcd_cluster3.endpoints) as client:
        members = (await client.member_list()).members
    by_name = {m.name: m for m in members}
    assert sorted(by_name) == ["m0", "m1", "m2"]
    for m in etcd_cluster3.members:
        assert by_name[m.name].peer_urls == (m.peer_url,)
        assert by_name[m.name].client_urls == (m.client_url,)
        assert not by_name[m.name].is_learner


async def test_status_hash_and_defragment_address_one_member_each(
    etcd_cluster3: EtcdCluster,
) -> None:
    async with AsyncClient(etcd_cluster3.endpoints) as client:
        members = {m.id: m.name for m in (await client.member_list()).members}
        put = await client.put("/cluster/k", "v")
        statuses = [await client.status(url) for url in etcd_cluster3.client_urls]
        hashes = [
            await client.hash_kv(url, put.header.revision) for url in etcd_cluster3.client_urls
        ]
        await client.defragment(etcd_cluster3.client_urls[1])
        with pytest.raises(errors.UnavailableError):
            # A call aimed at one member never moves to another one.
            await client.defragment(f"127.0.0.1:{free_port()}", timeout=1.0)
        alarms = await client.alarm_list()
        disarmed = await client.alarm_disarm()

    # Each endpoint answered for itself, and all agree on one leader.
    assert [members[s.header.member_id] for s in statuses] == ["m0", "m1", "m2"]
    assert len({s.leader for s in statuses}) == 1 and statuses[0].leader in members
    assert all(s.version.startswith("3.4.") and s.db_size > 0 for s in statuses)
    assert len({h.hash for h in hashes}) == 1
    assert alarms == () and disarmed == ()


async def test_snapshot_streams_a_file_etcdctl_can_read(
    etcd_cluster3: EtcdCluster, tmp_path: Path
) -> None:
    progress: list[tuple[int, int]] = []
    buffer = io.BytesIO()
    async with AsyncClient(etcd_cluster3.endpoints) as client:
        await client.put("/snapshot/k", "v")
        result = await client.snapshot(
            buffer,
            endpoint=etcd_cluster3.client_urls[0],
            progress=lambda got, left: progress.append((got, left)),
        )
    path = tmp_path / "snap.db"
    path.write_bytes(buffer.getvalue())
    status = etcdctl(etcd_cluster3.endpoints, "snapshot", "status", str(path), "-w", "json")

    assert result.size == len(buffer.getvalue()) > 0
    assert progress[-1] == (result.size, 0)
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["totalKey"] >= 1


async def test_learner_membership_changes(etcd_cluster3: EtcdCluster) -> None:
    peer = f"http://127.0.0.1:{free_port()}"
    moved = f"http://127.0.0.1:{free_port()}"
    async with AsyncClient(etcd_cluster3.endpoints) as client:
        added = await client.member_add([peer], is_learner=True)
        try:
            # A learner that never started cannot be in sync with the leader.
            with pytest.raises(errors.LearnerNotReadyError):
                await client.member_promote(added.member.id)
            updated = await client.member_update(added.member.id, [moved])
        finally:
            removed = await client.member_remove(added.member.id)
        with pytest.raises(errors.MemberNotFoundError):
            await client.member_remove(added.member.id)

    assert added.member.is_learner and added.member.peer_urls == (peer,)
    assert added.member.name == ""  # not started yet
    assert len(added.members) == 4
    learner = next(m for m in updated.members if m.id == added.member.id)
    assert learner.peer_urls == (moved,)
    assert added.member.id not in {m.id for m in removed.members}


async def test_move_leader_hands_leadership_to_the_target(etcd_cluster3: EtcdCluster) -> None:
    async with AsyncClient(etcd_cluster3.endpoints) as client:
        before = (await client.status()).leader
        target = next(m.id for m in (await client.member_list()).members if m.id != before)
        await client.move_leader(target)
        after = {(await client.status(url)).leader for url in etcd_cluster3.client_urls}
    assert after == {target}


async def test_lock_waits_for_the_holder_to_unlock(etcd_cluster3: EtcdCluster) -> None:
    async with (
        AsyncClient(etcd_cluster3.endpoints) as a,
        AsyncClient(etcd_cluster3.endpoints) as b,
        a.lease(10) as lease_a,
        b.lease(10) as lease_b,
    ):
        held = await a.lock("/locks/job", lease_a)
        waiting = asyncio.ensure_future(b.lock("/locks/job", lease_b.id))
        await asyncio.sleep(0.3)
        assert not waiting.done()
        await a.unlock(held.key)
        second = await asyncio.wait_for(waiting, 5)
        await b.unlock(second.key)
    assert held.key.startswith(b"/locks/job/") and second.key != held.key


async def test_election_campaign_proclaim_observe_resign(etcd_cluster3: EtcdCluster) -> None:
    async with AsyncClient(etcd_cluster3.endpoints) as client, client.lease(10) as lease:
        leader = await client.campaign("/elections/e", lease, "first")
        observed = client.observe("/elections/e")
        initially = await asyncio.wait_for(anext(observed), 5)
        await client.proclaim(leader, "second")
        changed = await asyncio.wait_for(anext(observed), 5)
        await observed.aclose()
        current = await client.leader("/elections/e")
        await client.resign(leader)
        with pytest.raises(errors.ElectionNoLeaderError):
            await client.leader("/elections/e")
        with pytest.raises(errors.ElectionNotLeaderError):
            await client.proclaim(leader, "too late")

    assert leader.name == b"/elections/e" and leader.lease == lease.id
    assert initially.value == b"first" and changed.value == b"second"
    assert current.key == leader.key and current.value == b"second"
