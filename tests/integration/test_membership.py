"""Runtime membership on real raftkv processes, driven with etcdctl as an operator would.

A learner joins from `etcdctl member add`'s printed flags, catches up from a snapshot (the
leader's log no longer reaches back to the start), serves serializable reads, is promoted
through a follower's endpoint; dead members make changes "unhealthy"; followers and the leader
are removed (writes go on), removed members stop and refuse to come back; leadership moves
on request.
"""

from __future__ import annotations

import base64
import json
import re
import signal
import time
from pathlib import Path

import grpc
import pytest
from raftkv.pb.etcdserverpb import rpc_pb2, rpc_pb2_grpc

from tests.membership.support import (
    ctl_error,
    ctl_ok,
    ctl_ok_once_healthy,
    leader_of,
    member_ids,
    start_joining_member,
    statuses,
    wait_exit,
    wait_for,
)
from tests.support.etcd import etcd_installed, etcdctl, free_port
from tests.support.raftkv import RaftKVCluster, RaftKVMember, start_raftkv_cluster

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not etcd_installed(), reason="etcdctl 3.4 is installed by make test"),
]


def put_many(target: str, prefix: str, count: int) -> dict[str, str]:
    written = {}
    with grpc.insecure_channel(target) as channel:
        kv = rpc_pb2_grpc.KVStub(channel)
        for i in range(count):
            key, value = f"{prefix}{i:03d}", f"value-{i}"
            kv.Put(rpc_pb2.PutRequest(key=key.encode(), value=value.encode()), timeout=5)
            written[key] = value
    return written


def serializable_get_prefix(endpoint: str, prefix: str) -> dict[str, str]:
    result = etcdctl(endpoint, "get", "--prefix", prefix, "--consistency=s", "-w", "json")
    if result.returncode != 0:
        return {}
    kvs = json.loads(result.stdout).get("kvs", [])
    return {_text(kv["key"]): _text(kv["value"]) for kv in kvs}


def _text(b64: str) -> str:
    return base64.b64decode(b64).decode()


def learner_refusal(
    member: RaftKVMember, request: rpc_pb2.PutRequest | rpc_pb2.RangeRequest
) -> tuple[grpc.StatusCode, str] | None:
    with grpc.insecure_channel(member.target) as channel:
        kv = rpc_pb2_grpc.KVStub(channel)
        method = kv.Put if isinstance(request, rpc_pb2.PutRequest) else kv.Range
        try:
            method(request, timeout=5)
        except grpc.RpcError as error:
            return error.code(), error.details()
    return None


def kill_and_settle(member: RaftKVMember) -> None:
    """SIGKILL a member and give its peers a moment to see its streams break."""
    member.kill(signal.SIGKILL)
    time.sleep(1.0)


def test_learner_joins_from_a_snapshot_serves_reads_and_is_promoted(tmp_path: Path) -> None:
    with start_raftkv_cluster(tmp_path, size=3, snapshot_count=20) as cluster:
        old = put_many(cluster.members[0].target, "/old/", 80)
        # After a restart every member's log starts at its last snapshot: a member that joins
        # now can only catch up from a snapshot.
        for member in cluster.members:
            member.kill(signal.SIGTERM)
            cluster.restart(member)
        endpoints = cluster.endpoints
        cluster_id = statuses(endpoints)[0]["Status"]["header"]["cluster_id"]

        peer_url = f"http://127.0.0.1:{free_port()}"
        added = ctl_ok_once_healthy(
            endpoints, "member", "add", "m3", "--learner", f"--peer-urls={peer_url}"
        )
        match = re.fullmatch(
            r"Member +([0-9a-f]+) added to cluster +([0-9a-f]+)\n\n"
            r'ETCD_NAME="m3"\nETCD_INITIAL_CLUSTER="(.*)"\n'
            r'ETCD_INITIAL_ADVERTISE_PEER_URLS="(.*)"\nETCD_INITIAL_CLUSTER_STATE="existing"\n',
            added,
        )
        assert match is not None, added
        learner_id = int(match[1], 16)
        assert int(match[2], 16) == cluster_id
        assert sorted(match[3].split(",")) == sorted(
            [f"m3={peer_url}", *(f"{m.name}={m.peer_url}" for m in cluster.members)]
        )
        assert match[4] == peer_url
        # Not started yet: no name, no client URLs, a learner.
        assert f"{learner_id:x}, unstarted, , {peer_url}, , true" in ctl_ok(
            endpoints, "member", "list"
        )
        # Far behind (it has nothing): promotion is refused, and leadership cannot go to it.
        follower = next(
            m for m in cluster.members if m.status().header.member_id != leader_of(endpoints)
        )
        assert ctl_error(follower.client_url, "member", "promote", f"{learner_id:x}") == (
            "Error: etcdserver: can only promote a learner member which is in sync with leader"
        )
        assert ctl_error(endpoints, "move-leader", f"{learner_id:x}") == (
            "Error: etcdserver: bad leader transferee"
        )
        second = "--peer-urls=http://127.0.0.1:9"
        assert ctl_error(endpoints, "member", "add", "m4", "--learner", second) == (
            "Error: etcdserver: too many learner members in cluster"
        )

        learner = start_joining_member(cluster, added, snapshot_count=20)
        newer = put_many(cluster.members[0].target, "/new/", 10)
        got = wait_for(
            lambda: serializable_get_prefix(learner.client_url, "/") == {**old, **newer} or None,
            what="the learner to serve every key",
        )
        assert got
        assert "received snapshot" in learner.log_path.read_text()
        (status,) = statuses(learner.client_url)
        assert status["Status"]["isLearner"] is True
        assert status["Status"]["header"]["member_id"] == learner_id
        # Like etcd, a learner serves Status and serializable reads only.
        assert learner_refusal(learner, rpc_pb2.PutRequest(key=b"k", value=b"v")) == (
            grpc.StatusCode.UNAVAILABLE,
            "etcdserver: rpc not supported for learner",
        )
        assert learner_refusal(learner, rpc_pb2.RangeRequest(key=b"k")) is not None

        # Caught up: promotion through a follower's endpoint is forwarded to the leader.
        assert ctl_ok(follower.client_url, "member", "promote", f"{learner_id:x}") == (
            f"Member {learner_id:16x} promoted in cluster {cluster_id:16x}\n"
        )
        listed = ctl_ok(endpoints, "member", "list")
        assert f"{learner_id:x}, started, m3, {peer_url}, {learner.client_url}, false" in listed
        assert ctl_error(endpoints, "member", "promote", f"{learner_id:x}") == (
            "Error: etcdserver: can only promote a learner member"
        )
        (status,) = statuses(learner.client_url)
        assert "isLearner" not in status["Status"]
        assert learner_refusal(learner, rpc_pb2.PutRequest(key=b"k", value=b"v")) is None

        # With a voter down, adding a member is refused; the dead one may be removed.
        dead = cluster.members[1]
        dead_id = dead.status().header.member_id
        kill_and_settle(dead)
        live = ",".join(m.client_url for m in cluster.members if m.alive)
        spare = f"--peer-urls=http://127.0.0.1:{free_port()}"
        assert ctl_error(live, "member", "add", "m5", spare) == (
            "Error: etcdserver: unhealthy cluster"
        )
        ctl_ok(live, "member", "remove", f"{dead_id:x}")
        assert dead_id not in member_ids(live).values()
        # Three voters, one of them down: removing a live one would leave no quorum up.
        kill_and_settle(cluster.members[2])
        live = ",".join(m.client_url for m in cluster.members if m.alive)
        assert ctl_error(live, "member", "remove", f"{learner_id:x}") == (
            "Error: etcdserver: unhealthy cluster"
        )


def data_files(data_dir: Path) -> dict[str, bytes]:
    files = (p for p in data_dir.rglob("*") if p.is_file())
    return {str(p.relative_to(data_dir)): p.read_bytes() for p in files}


def refuse_foreign_data_dir(tmp_path: Path, cluster: RaftKVCluster) -> None:
    """A member of another cluster pointed at `cluster` with its old data dir is refused."""
    with start_raftkv_cluster(tmp_path / "other", size=1) as other:
        stranger = other.members[0]
        stranger.kill(signal.SIGTERM)
        before = data_files(stranger.data_dir)
        target = cluster.members[0]
        args = [a for a in stranger.args if not a.startswith("--initial-cluster")]
        stranger.args = [
            *args,
            f"--initial-cluster={stranger.name}={stranger.peer_url},"
            f"{target.name}x={target.peer_url}",
            "--initial-cluster-state=existing",
        ]
        stranger.start()
        assert wait_exit(stranger) != 0
        log = stranger.log_path.read_text()
        assert "belongs to cluster" in log and "refusing to start" in log, log[-2000:]
        assert data_files(stranger.data_dir) == before


def test_leadership_moves_members_are_updated_and_removed_leader_included(
    tmp_path: Path,
) -> None:
    with start_raftkv_cluster(tmp_path, size=3) as cluster:
        refuse_foreign_data_dir(tmp_path, cluster)
        endpoints = cluster.endpoints
        by_id = {m.status().header.member_id: m for m in cluster.members}
        cluster_id = statuses(endpoints)[0]["Status"]["header"]["cluster_id"]
        old_leader = leader_of(endpoints)
        new_leader = next(i for i in by_id if i != old_leader)
        third = next(i for i in by_id if i not in (old_leader, new_leader))

        # Leadership moves only on the leader and only to a voter.
        follower_only = by_id[third].client_url
        assert ctl_error(follower_only, "move-leader", f"{new_leader:x}") == (
            f"Error: no leader endpoint given at [{follower_only}]"
        )
        with (
            grpc.insecure_channel(by_id[third].target) as channel,
            pytest.raises(grpc.RpcError) as refused,
        ):
            rpc_pb2_grpc.MaintenanceStub(channel).MoveLeader(
                rpc_pb2.MoveLeaderRequest(targetID=new_leader), timeout=5
            )
        assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert refused.value.details() == "etcdserver: not leader"
        assert ctl_error(endpoints, "move-leader", "1234") == (
            "Error: etcdserver: bad leader transferee"
        )
        assert ctl_ok(endpoints, "move-leader", f"{new_leader:x}") == (
            f"Leadership transferred from {old_leader:x} to {new_leader:x}\n"
        )
        assert {s["Status"]["leader"] for s in statuses(endpoints)} == {new_leader}

        # Peer URLs change in place; another member's URLs cannot be taken.
        moved = by_id[third]
        extra = f"http://127.0.0.1:{free_port()}"
        assert (
            ctl_ok(
                endpoints, "member", "update", f"{third:x}", f"--peer-urls={moved.peer_url},{extra}"
            )
            == f"Member {third:16x} updated in cluster {cluster_id:16x}\n"
        )
        listing = json.loads(ctl_ok(endpoints, "member", "list", "-w", "json"))["members"]
        (entry,) = [m for m in listing if m["ID"] == third]
        assert entry["peerURLs"] == sorted([moved.peer_url, extra])
        taken = f"--peer-urls={by_id[new_leader].peer_url}"
        assert ctl_error(endpoints, "member", "update", f"{third:x}", taken) == (
            "Error: etcdserver: Peer URLs already exists"
        )
        assert ctl_error(endpoints, "member", "update", "1234", f"--peer-urls={extra}") == (
            "Error: etcdserver: member not found"
        )
        ctl_ok(endpoints, "member", "update", f"{third:x}", f"--peer-urls={moved.peer_url}")

        # A removed follower stops by itself and never comes back with its data dir.
        removed = by_id[old_leader]
        assert ctl_ok(endpoints, "member", "remove", f"{old_leader:x}") == (
            f"Member {old_leader:16x} removed from cluster {cluster_id:16x}\n"
        )
        assert wait_exit(removed) != 0
        assert "has been removed from cluster" in removed.log_path.read_text()
        assert ctl_error(endpoints, "member", "remove", f"{old_leader:x}") == (
            "Error: etcdserver: member not found"
        )
        removed.start()
        assert wait_exit(removed) != 0
        assert "has already been removed from the cluster" in removed.log_tail(5)

        # Removing the leader: it hands over, stops, and writes go on with the last member.
        leader = by_id[new_leader]
        last = by_id[third]
        assert ctl_ok(last.client_url, "member", "remove", f"{new_leader:x}") == (
            f"Member {new_leader:16x} removed from cluster {cluster_id:16x}\n"
        )
        assert wait_exit(leader) != 0
        ctl_ok(last.client_url, "put", "after", "removals")
        assert leader_of(last.client_url) == third
        assert list(member_ids(last.client_url).values()) == [third]
