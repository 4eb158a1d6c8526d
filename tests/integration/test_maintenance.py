"""The Maintenance service on real raftkv members: Status, Hash/HashKV agreement across members,
Defragment, alarms, and the periodic corruption check raising CORRUPT."""

from __future__ import annotations

import hashlib
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from raftkv.pb.etcdserverpb import rpc_pb2 as pb
from raftkv.pb.etcdserverpb import rpc_pb2_grpc as rpc
from raftkv.pb.mvccpb.kv_pb2 import KeyValue
from raftkv.storage.backend import Backend

from tests.support.etcd import etcdctl
from tests.support.raftkv import RaftKVCluster, RaftKVMember, start_raftkv_cluster

A = pb.AlarmRequest


def rpc_error(call: Callable[[], object]) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value


def wait_until(condition: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.1)


class Stubs:
    def __init__(self, member: RaftKVMember) -> None:
        self.channel = grpc.insecure_channel(member.target)
        self.kv = rpc.KVStub(self.channel)
        self.maintenance = rpc.MaintenanceStub(self.channel)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RaftKVCluster]:
    with start_raftkv_cluster(tmp_path_factory.mktemp("maintenance"), size=3) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def stubs(cluster: RaftKVCluster) -> Iterator[list[Stubs]]:
    all_stubs = [Stubs(m) for m in cluster.members]
    yield all_stubs
    for s in all_stubs:
        s.channel.close()


def test_hashkv_is_equal_on_every_member_after_writes_and_a_compaction(
    stubs: list[Stubs],
) -> None:
    kv = stubs[0].kv
    for i in range(30):
        kv.Put(pb.PutRequest(key=f"hash/{i % 7}".encode(), value=f"v{i}".encode()), timeout=5)
    kv.DeleteRange(pb.DeleteRangeRequest(key=b"hash/3"), timeout=5)
    compact_at = kv.Put(pb.PutRequest(key=b"hash/x", value=b"1"), timeout=5).header.revision
    kv.Compact(pb.CompactionRequest(revision=compact_at), timeout=5)
    kv.Put(pb.PutRequest(key=b"hash/y", value=b"1"), timeout=5)
    last = kv.Put(pb.PutRequest(key=b"hash/y", value=b"2"), timeout=5).header.revision
    for s in stubs:  # a linearizable read: each member has applied everything up to `last`
        s.kv.Range(pb.RangeRequest(key=b"hash/y"), timeout=5)

    answers = [s.maintenance.HashKV(pb.HashKVRequest(revision=last), timeout=5) for s in stubs]
    assert len({a.hash for a in answers}) == 1
    assert {a.compact_revision for a in answers} == {compact_at}
    assert {a.header.revision for a in answers} == {last}
    older = [s.maintenance.HashKV(pb.HashKVRequest(revision=last - 1)) for s in stubs]
    assert len({a.hash for a in older}) == 1
    assert older[0].hash != answers[0].hash
    assert all(s.maintenance.Hash(pb.HashRequest()).hash != 0 for s in stubs)

    # At or below the compacted revision, or past the newest, HashKV fails like a read.
    err = rpc_error(lambda: stubs[1].maintenance.HashKV(pb.HashKVRequest(revision=compact_at)))
    assert (err.code(), err.details()) == (
        grpc.StatusCode.OUT_OF_RANGE,
        "etcdserver: mvcc: required revision has been compacted",
    )
    err = rpc_error(lambda: stubs[2].maintenance.HashKV(pb.HashKVRequest(revision=last + 100)))
    assert err.details() == "etcdserver: mvcc: required revision is a future revision"


def test_etcdctl_endpoint_hashkv_agrees_across_members(cluster: RaftKVCluster) -> None:
    etcdctl(cluster.endpoints, "put", "hashkv/k", "v")
    for m in cluster.members:
        etcdctl(m.client_url, "get", "hashkv/k")  # every member has applied the put
    out = etcdctl(cluster.endpoints, "endpoint", "hashkv")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert [line.split(", ")[0] for line in lines] == [m.client_url for m in cluster.members]
    assert len({line.split(", ")[1] for line in lines}) == 1


def test_status_reports_the_member_and_no_errors(
    cluster: RaftKVCluster, stubs: list[Stubs]
) -> None:
    statuses = [s.maintenance.Status(pb.StatusRequest(), timeout=5) for s in stubs]
    assert len({s.header.member_id for s in statuses}) == 3
    assert len({s.leader for s in statuses}) == 1
    for status in statuses:
        assert status.version.startswith("3.4.")
        assert list(status.errors) == []
        assert 0 < status.dbSizeInUse <= status.dbSize


def test_alarms_are_replicated_and_block_writes_until_disarmed(stubs: list[Stubs]) -> None:
    member_id = stubs[1].maintenance.Status(pb.StatusRequest()).header.member_id
    nospace = A(action=A.ACTIVATE, memberID=member_id, alarm=pb.NOSPACE)
    activated = stubs[1].maintenance.Alarm(nospace, timeout=5)
    try:
        assert [(a.memberID, a.alarm) for a in activated.alarms] == [(member_id, pb.NOSPACE)]
        for s in stubs:
            listed = s.maintenance.Alarm(A(action=A.GET), timeout=5)
            assert [(a.memberID, a.alarm) for a in listed.alarms] == [(member_id, pb.NOSPACE)]
            errors = list(s.maintenance.Status(pb.StatusRequest()).errors)
            assert errors == [f"memberID:{member_id} alarm:NOSPACE "]
            err = rpc_error(lambda s=s: s.kv.Put(pb.PutRequest(key=b"alarm/k", value=b"v")))
            assert (err.code(), err.details()) == (
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                "etcdserver: mvcc: database space exceeded",
            )
        # Deleting still works: it is how space is reclaimed.
        stubs[0].kv.DeleteRange(pb.DeleteRangeRequest(key=b"alarm/k"), timeout=5)
    finally:
        off = A(action=A.DEACTIVATE, memberID=member_id, alarm=pb.NOSPACE)
        stubs[2].maintenance.Alarm(off, timeout=5)
    assert list(stubs[0].maintenance.Alarm(A(action=A.GET)).alarms) == []
    assert stubs[0].kv.Put(pb.PutRequest(key=b"alarm/k", value=b"v")).header.revision > 0


def test_snapshot_streams_the_database_then_its_sha256_and_leaves_no_copy(
    cluster: RaftKVCluster, stubs: list[Stubs]
) -> None:
    put = stubs[0].kv.Put(pb.PutRequest(key=b"snap/k", value=b"v" * 100_000), timeout=5)
    written = put.header.revision
    chunks = list(stubs[0].maintenance.Snapshot(pb.SnapshotRequest(), timeout=30))
    blob = b"".join(c.blob for c in chunks)
    remaining = [c.remaining_bytes for c in chunks]
    assert len(chunks) > 2
    assert remaining == sorted(remaining, reverse=True)
    assert remaining[-2:] == [0, 0]
    assert [len(blob) - 32 - sum(len(c.blob) for c in chunks[: i + 1]) for i in range(3)] == (
        remaining[:3]
    )
    assert hashlib.sha256(blob[:-32]).digest() == blob[-32:]
    assert blob.startswith(b"SQLite format 3\0")
    me = stubs[0].maintenance.Status(pb.StatusRequest()).header.member_id
    assert (chunks[0].header.member_id, chunks[0].header.revision >= written) == (me, True)
    assert not chunks[1].HasField("header")

    # A client that goes away mid-stream leaves nothing behind either.
    stream = stubs[0].maintenance.Snapshot(pb.SnapshotRequest(), timeout=30)
    next(stream)
    stream.cancel()
    snap_dir = cluster.members[0].data_dir / "member" / "snap"
    wait_until(lambda: not list(snap_dir.glob("client-snapshot-*")), timeout=5)


def test_defragment_shrinks_the_database_after_compacting_a_long_history(
    tmp_path: Path,
) -> None:
    with start_raftkv_cluster(tmp_path, size=1) as single:
        s = Stubs(single.members[0])
        try:
            value = b"x" * 32 * 1024
            for i in range(100):
                s.kv.Put(pb.PutRequest(key=b"defrag/k", value=value + bytes([i])), timeout=5)
            s.kv.Put(pb.PutRequest(key=b"defrag/keep", value=b"kept"), timeout=5)
            before = s.maintenance.Status(pb.StatusRequest()).dbSize
            assert before > 3_000_000
            current = s.kv.Range(pb.RangeRequest(key=b"defrag/k")).header.revision
            s.kv.Compact(pb.CompactionRequest(revision=current, physical=True), timeout=10)
            # etcd 3.4 answers Defragment without a header.
            assert not s.maintenance.Defragment(pb.DefragmentRequest(), timeout=30).HasField(
                "header"
            )
            after = s.maintenance.Status(pb.StatusRequest())
            assert after.dbSize < before / 5
            assert after.dbSizeInUse <= after.dbSize
            got = s.kv.Range(pb.RangeRequest(key=b"defrag/", range_end=b"defrag0")).kvs
            assert [(kv.key, kv.value) for kv in got] == [
                (b"defrag/k", value + bytes([99])),
                (b"defrag/keep", b"kept"),
            ]
        finally:
            s.channel.close()


def corrupt_newest_value(data_dir: Path) -> None:
    """Change the newest value in a stopped member's database, behind Raft's back."""
    backend = Backend(data_dir / "member" / "snap" / "db")
    try:
        key, raw = backend.range("key", b"", b"\0")[-1]
        kv = KeyValue.FromString(raw)
        kv.value = b"bit rot"
        backend.put("key", key, kv.SerializeToString())
        backend.commit()
    finally:
        backend.close()


def test_the_corruption_check_raises_corrupt_and_the_cluster_refuses_writes(
    tmp_path: Path,
) -> None:
    with start_raftkv_cluster(tmp_path, size=3, experimental_corrupt_check_time="300ms") as c:
        for i in range(10):
            etcdctl(c.endpoints, "put", f"c/{i}", f"v{i}")
        leader = c.leader()
        victim = next(m for m in c.members if m is not leader)
        victim_id = victim.status().header.member_id
        for m in c.members:
            etcdctl(m.client_url, "get", "c/9")  # applied everywhere before the stop
        time.sleep(1)  # a few clean checks first
        assert etcdctl(c.endpoints, "alarm", "list").stdout == ""

        victim.kill(signal.SIGTERM)
        corrupt_newest_value(victim.data_dir)
        c.restart(victim)

        def alarms() -> str:
            return etcdctl(leader.client_url, "alarm", "list").stdout

        wait_until(lambda: "CORRUPT" in alarms())
        assert alarms() == f"memberID:{victim_id} alarm:CORRUPT \n"
        put = etcdctl(leader.client_url, "put", "c/after", "x")
        assert put.returncode == 1
        assert put.stderr.splitlines()[-1] == "Error: etcdserver: corrupt cluster"
        with grpc.insecure_channel(leader.target) as channel:
            err = rpc_error(
                lambda: rpc.KVStub(channel).Put(pb.PutRequest(key=b"c/x", value=b"v"), timeout=5)
            )
            assert err.code() == grpc.StatusCode.DATA_LOSS
            # Reads still work, and the alarm shows in every member's status.
            assert etcdctl(leader.client_url, "get", "c/0", "--print-value-only").stdout == "v0\n"
        for m in c.members:
            assert list(m.status().errors) == [f"memberID:{victim_id} alarm:CORRUPT "]
