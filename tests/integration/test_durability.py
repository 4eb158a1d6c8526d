"""A crash at any instant loses no acknowledged write (WAL fsync before ack)."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

import grpc
from raftkv.pb.etcdserverpb import rpc_pb2, rpc_pb2_grpc

from tests.support.raftkv import RaftKVCluster, start_raftkv_cluster, wait_serving


def put(target: str, key: bytes, value: bytes, timeout: float = 5.0) -> int:
    with grpc.insecure_channel(target) as channel:
        response = rpc_pb2_grpc.KVStub(channel).Put(
            rpc_pb2.PutRequest(key=key, value=value), timeout=timeout
        )
        return response.header.revision


def get_prefix(target: str, prefix: bytes, serializable: bool = False) -> dict[bytes, bytes]:
    end = prefix[:-1] + bytes([prefix[-1] + 1])
    with grpc.insecure_channel(target) as channel:
        response = rpc_pb2_grpc.KVStub(channel).Range(
            rpc_pb2.RangeRequest(key=prefix, range_end=end, serializable=serializable), timeout=10
        )
    return {kv.key: kv.value for kv in response.kvs}


def test_single_member_sigkill_keeps_every_acknowledged_write(tmp_path: Path) -> None:
    # A small snapshot count makes the restart go through snapshot + WAL replay too.
    with start_raftkv_cluster(tmp_path, size=1, snapshot_count=40) as cluster:
        member = cluster.members[0]
        written = {}
        with grpc.insecure_channel(member.target) as channel:
            kv = rpc_pb2_grpc.KVStub(channel)
            for i in range(150):
                key, value = f"/durable/{i:04d}".encode(), f"value-{i}".encode()
                kv.Put(rpc_pb2.PutRequest(key=key, value=value), timeout=5)
                written[key] = value
        revision_before = member.status().header.revision
        member.kill(signal.SIGKILL)
        cluster.restart(member)
        assert get_prefix(member.target, b"/durable/") == written
        assert member.status().header.revision == revision_before


def test_leader_sigkill_under_writes_loses_nothing_and_recovers(cluster3: RaftKVCluster) -> None:
    acknowledged: dict[bytes, bytes] = {}
    outage_end = threading.Event()
    stop = threading.Event()
    killed_at: list[float] = []
    recovered_at: list[float] = []
    targets = cluster3.grpc_targets

    def writer() -> None:
        i = 0
        while not stop.is_set():
            key, value = f"/w/{i:05d}".encode(), f"v{i}".encode()
            for target in targets:
                try:
                    put(target, key, value, timeout=2)
                except grpc.RpcError:
                    continue
                acknowledged[key] = value
                if killed_at and not recovered_at:
                    recovered_at.append(time.monotonic())
                    outage_end.set()
                break
            i += 1

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    while len(acknowledged) < 100:
        time.sleep(0.05)
    leader = cluster3.leader()
    killed_at.append(time.monotonic())
    leader.kill(signal.SIGKILL)
    assert outage_end.wait(timeout=20), "writes did not resume after the leader died"
    while len(acknowledged) < 300:
        time.sleep(0.05)
    stop.set()
    thread.join(timeout=10)
    assert recovered_at[0] - killed_at[0] < 10

    cluster3.restart(leader)
    for member in cluster3.members:
        wait_serving(member)
        # Linearizable read through each member: everything acknowledged is there.
        assert get_prefix(member.target, b"/w/").items() >= acknowledged.items()


def test_whole_cluster_restart_without_snapshot_elects_a_leader(tmp_path: Path) -> None:
    """Raft's configuration is rebuilt from the replayed log when there is no snapshot."""
    with start_raftkv_cluster(tmp_path, size=3) as cluster:
        put(cluster.grpc_targets[0], b"/restart/before", b"1")
        for member in cluster.members:
            member.kill(signal.SIGKILL)
        for member in cluster.members:
            member.start()
        for member in cluster.members:
            wait_serving(member)
        put(cluster.grpc_targets[1], b"/restart/after", b"2")
        leader = cluster.leader()
        leader.kill(signal.SIGKILL)
        survivor = next(m for m in cluster.members if m.alive)
        wait_serving(survivor)
        assert get_prefix(survivor.target, b"/restart/") == {
            b"/restart/before": b"1",
            b"/restart/after": b"2",
        }
