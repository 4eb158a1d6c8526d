"""The operator's member operations against a real 3-member raftkv cluster (127.0.0.1).

What the reconciler relies on, end to end through `raftkv.client`: adding a learner (twice is
once), a fourth member joining from the flags the operator would give its pod, promotion refused
until caught up and then done, leadership moved, the member removed (twice is once), and the
observation the planner reads (member list, statuses, leader).
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from raftkv_operator.members import LearnerNotReady, Members

from tests.support.etcd import free_port
from tests.support.raftkv import RaftKVCluster, RaftKVMember, start_raftkv_cluster, wait_serving

pytestmark = pytest.mark.integration

DEADLINE_S = 60.0


def joining_member(cluster: RaftKVCluster, peer_url: str) -> RaftKVMember:
    """The fourth member, started as the operator's pod template starts a joining member."""
    client_url = f"http://127.0.0.1:{free_port()}"
    data_dir = cluster.root / "m3.raftkv"
    initial = f"{cluster.initial_cluster},m3={peer_url}"
    args = [
        "--name=m3",
        f"--data-dir={data_dir}",
        f"--listen-client-urls={client_url}",
        f"--advertise-client-urls={client_url}",
        f"--listen-peer-urls={peer_url}",
        f"--initial-advertise-peer-urls={peer_url}",
        f"--initial-cluster={initial}",
        "--initial-cluster-state=existing",
        "--heartbeat-interval=50",
        "--election-timeout=500",
    ]
    return RaftKVMember("m3", client_url, peer_url, data_dir, cluster.root / "m3.log", args)


async def promote_when_ready(members: Members, member_id: int) -> int:
    """Promote, retrying while the leader says the learner is behind; returns the refusals."""
    refused = 0
    deadline = time.monotonic() + DEADLINE_S
    while True:
        try:
            await members.promote(member_id)
            return refused
        except LearnerNotReady:
            refused += 1
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)


async def wait_leader(members: Members, leader_id: int) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while (await members.observe()).leader_id != leader_id:
        assert time.monotonic() < deadline, f"leader never became {leader_id:x}"
        await asyncio.sleep(0.1)


def test_add_learner_join_promote_move_leader_and_remove(tmp_path: Path) -> None:
    with start_raftkv_cluster(tmp_path, size=3) as cluster:
        endpoints = {i: m.client_url for i, m in enumerate(cluster.members)}
        members = Members(endpoints)
        peer_url = f"http://127.0.0.1:{free_port()}"
        fourth = joining_member(cluster, peer_url)
        try:
            asyncio.run(scenario(cluster, members, fourth, peer_url))
        finally:
            fourth.kill()


async def scenario(
    cluster: RaftKVCluster, members: Members, fourth: RaftKVMember, peer_url: str
) -> None:
    state = await members.observe()
    assert len(state.members) == 3 and len(state.statuses) == 3
    assert state.leader_id in {m.id for m in state.members}
    assert state.leader_index > 0
    assert {s.cluster_id for s in state.statuses.values()} == {state.cluster_id}

    learner = await members.add_learner(peer_url)
    assert learner.is_learner and not learner.name  # not started yet
    again = await members.add_learner(peer_url)
    assert again.id == learner.id  # a repeated add (operator restarted) finds the same member

    fourth.start()
    wait_serving(fourth)
    await promote_when_ready(members, learner.id)
    await members.promote(learner.id)  # promoting a voter again is a no-op
    state = await members.observe()
    promoted = next(m for m in state.members if m.id == learner.id)
    assert not promoted.is_learner and promoted.name == "m3"

    with_fourth = Members({**members_endpoints(cluster), 3: fourth.client_url})
    await with_fourth.move_leader(learner.id)
    await wait_leader(with_fourth, learner.id)
    original = next(m.id for m in state.members if m.name == "m0")
    await with_fourth.move_leader(original)
    await wait_leader(with_fourth, original)

    await members.remove(learner.id)
    await members.remove(learner.id)  # already gone: done
    state = await members.observe()
    assert learner.id not in {m.id for m in state.members}
    deadline = time.monotonic() + DEADLINE_S
    while fourth.alive:  # a removed member stops by itself
        assert time.monotonic() < deadline, "the removed member kept running"
        await asyncio.sleep(0.2)


def members_endpoints(cluster: RaftKVCluster) -> dict[int, str]:
    return {i: m.client_url for i, m in enumerate(cluster.members)}
