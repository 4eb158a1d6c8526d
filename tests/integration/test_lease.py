"""Leases on a real 3-member raftkv cluster: expiry, keep-alive (also through followers),
revoke, time-to-live, listing, etcd's errors, and etcdctl's lease commands.

Most tests share one cluster per module, each under its own keys; the tests that kill members
start their own. The members run with 50 ms heartbeats and a 500 ms election timeout, so the
minimum lease TTL is 1 s and a new leader extends leases by 0.5 s.
"""

from __future__ import annotations

import re
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from raftkv.pb.etcdserverpb import rpc_pb2 as pb
from raftkv.pb.etcdserverpb import rpc_pb2_grpc as rpc

from tests.support.etcd import etcd_installed, etcdctl
from tests.support.raftkv import (
    RaftKVCluster,
    RaftKVMember,
    start_raftkv_cluster,
    wait_serving,
)


def rpc_error(call: Callable[[], object]) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value


def wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.05)


def count_everywhere(cluster: RaftKVCluster, key: bytes) -> list[int]:
    """How many of `key` each live member holds (serializable reads: each member's own state)."""
    counts = []
    for member in cluster.members:
        if member.alive:
            with grpc.insecure_channel(member.target) as channel:
                request = pb.RangeRequest(key=key, serializable=True)
                counts.append(rpc.KVStub(channel).Range(request, timeout=5).count)
    return counts


class KeepAliver:
    """A client that keeps a lease alive over one LeaseKeepAlive stream, as clientv3 does,
    opening a new stream when one fails."""

    def __init__(
        self, target: str, lease_id: int, every: float, metadata: tuple[tuple[str, str], ...] = ()
    ) -> None:
        self.target = target
        self.lease_id = lease_id
        self.every = every
        self.metadata = metadata
        self.responses: list[pb.LeaseKeepAliveResponse] = []
        self.errors: list[grpc.RpcError] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _requests(self) -> Iterator[pb.LeaseKeepAliveRequest]:
        while not self._stop.is_set():
            yield pb.LeaseKeepAliveRequest(ID=self.lease_id)
            self._stop.wait(self.every)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                with grpc.insecure_channel(self.target) as channel:
                    stub = rpc.LeaseStub(channel)
                    for response in stub.LeaseKeepAlive(self._requests(), metadata=self.metadata):
                        self.responses.append(response)
            except grpc.RpcError as error:
                self.errors.append(error)
                self._stop.wait(0.2)

    def __enter__(self) -> KeepAliver:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RaftKVCluster]:
    with start_raftkv_cluster(Path(tmp_path_factory.mktemp("lease"))) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def follower(cluster: RaftKVCluster) -> RaftKVMember:
    leader = cluster.leader()
    return next(m for m in cluster.members if m is not leader)


def stubs(member: RaftKVMember) -> tuple[rpc.LeaseStub, rpc.KVStub]:
    channel = grpc.insecure_channel(member.target)
    return rpc.LeaseStub(channel), rpc.KVStub(channel)


def test_key_disappears_once_its_lease_expires_without_keep_alive(
    cluster: RaftKVCluster, follower: RaftKVMember
) -> None:
    lease, kv = stubs(follower)
    granted = lease.LeaseGrant(pb.LeaseGrantRequest(TTL=2))
    start = time.monotonic()
    assert granted.TTL == 2
    kv.Put(pb.PutRequest(key=b"expire/k", value=b"v", lease=granted.ID))
    while kv.Range(pb.RangeRequest(key=b"expire/k")).count == 1:
        assert time.monotonic() - start < 2 + 1.5, "the key outlived its lease"
        time.sleep(0.05)
    assert time.monotonic() - start >= 2 - 0.25, "the lease expired early"
    wait_until(lambda: count_everywhere(cluster, b"expire/k") == [0, 0, 0])
    gone = lease.LeaseTimeToLive(pb.LeaseTimeToLiveRequest(ID=granted.ID))
    assert (gone.ID, gone.TTL) == (granted.ID, -1)


def test_keep_alive_through_a_follower_keeps_the_lease_for_many_ttls(
    cluster: RaftKVCluster, follower: RaftKVMember
) -> None:
    lease, kv = stubs(cluster.leader())
    granted = lease.LeaseGrant(pb.LeaseGrantRequest(TTL=1))
    kv.Put(pb.PutRequest(key=b"kept/k", value=b"v", lease=granted.ID))
    with KeepAliver(follower.target, granted.ID, every=0.3) as keeper:
        time.sleep(5)  # five TTLs
        assert kv.Range(pb.RangeRequest(key=b"kept/k")).count == 1
        assert keeper.errors == []
        assert len(keeper.responses) >= 10
        assert {(r.ID, r.TTL) for r in keeper.responses} == {(granted.ID, 1)}
        # Answered by the follower (its header), renewed on the leader.
        assert {r.header.member_id for r in keeper.responses} == {
            follower.status().header.member_id
        }
    wait_until(lambda: count_everywhere(cluster, b"kept/k") == [0, 0, 0], timeout=1 + 1.5)


def test_revoke_deletes_every_attached_key_in_one_revision(
    cluster: RaftKVCluster, follower: RaftKVMember
) -> None:
    lease, kv = stubs(follower)
    doomed = lease.LeaseGrant(pb.LeaseGrantRequest(TTL=60)).ID
    kept = lease.LeaseGrant(pb.LeaseGrantRequest(TTL=60)).ID
    for key in (b"revoke/a", b"revoke/b", b"revoke/c"):
        kv.Put(pb.PutRequest(key=key, value=b"v", lease=doomed))
    kv.Put(pb.PutRequest(key=b"revoke/moved", value=b"v", lease=doomed))
    kv.Put(pb.PutRequest(key=b"revoke/moved", value=b"v2", lease=kept))  # re-attached
    kv.Put(pb.PutRequest(key=b"revoke/plain", value=b"v"))
    before = kv.Range(pb.RangeRequest(key=b"revoke/")).header.revision

    revoked = lease.LeaseRevoke(pb.LeaseRevokeRequest(ID=doomed))

    assert revoked.header.revision == before + 1
    left = kv.Range(pb.RangeRequest(key=b"revoke/", range_end=b"revoke0"))
    assert [i.key for i in left.kvs] == [b"revoke/moved", b"revoke/plain"]
    assert left.header.revision == before + 1
    # The three deletions share that one revision: all there just before it, none at it.
    doomed_range = pb.RangeRequest(key=b"revoke/", range_end=b"revoke/d", revision=before)
    assert kv.Range(doomed_range).count == 3
    doomed_range.revision = before + 1
    assert kv.Range(doomed_range).count == 0
    ttl = lease.LeaseTimeToLive(pb.LeaseTimeToLiveRequest(ID=kept, keys=True))
    assert list(ttl.keys) == [b"revoke/moved"]
    lease.LeaseRevoke(pb.LeaseRevokeRequest(ID=kept))
    assert kv.Range(pb.RangeRequest(key=b"revoke/moved")).count == 0


def test_time_to_live_with_keys_and_the_lease_list(
    cluster: RaftKVCluster, follower: RaftKVMember
) -> None:
    lease, kv = stubs(follower)
    granted = lease.LeaseGrant(pb.LeaseGrantRequest(TTL=30))
    chosen = lease.LeaseGrant(pb.LeaseGrantRequest(TTL=20, ID=0x7E57))
    assert (chosen.ID, chosen.TTL) == (0x7E57, 20)
    for key in (b"ttl/b", b"ttl/a"):
        kv.Put(pb.PutRequest(key=key, value=b"v", lease=granted.ID))

    for member in cluster.members:  # the leader answers; followers forward to it
        member_lease, _ = stubs(member)
        ttl = member_lease.LeaseTimeToLive(pb.LeaseTimeToLiveRequest(ID=granted.ID, keys=True))
        assert (ttl.ID, ttl.grantedTTL, sorted(ttl.keys)) == (granted.ID, 30, [b"ttl/a", b"ttl/b"])
        assert 25 <= ttl.TTL <= 30
        without_keys = member_lease.LeaseTimeToLive(pb.LeaseTimeToLiveRequest(ID=granted.ID))
        assert list(without_keys.keys) == []
        listed = {s.ID for s in member_lease.LeaseLeases(pb.LeaseLeasesRequest()).leases}
        assert {granted.ID, chosen.ID} <= listed
    for lease_id in (granted.ID, chosen.ID):
        lease.LeaseRevoke(pb.LeaseRevokeRequest(ID=lease_id))
    listed = {s.ID for s in lease.LeaseLeases(pb.LeaseLeasesRequest()).leases}
    assert not {granted.ID, chosen.ID} & listed


def test_grant_picks_distinct_positive_ids_and_raises_short_ttls(
    cluster: RaftKVCluster,
) -> None:
    granted = []
    for member in cluster.members:
        lease, _ = stubs(member)
        granted += [lease.LeaseGrant(pb.LeaseGrantRequest(TTL=0)) for _ in range(3)]
    assert all(g.ID > 0 for g in granted)
    assert len({g.ID for g in granted}) == len(granted)
    assert {g.TTL for g in granted} == {1}  # the minimum TTL with these timings
    lease, _ = stubs(cluster.members[0])
    for g in granted:
        lease.LeaseRevoke(pb.LeaseRevokeRequest(ID=g.ID))


def test_etcd_errors_for_unknown_duplicate_and_oversized_leases(
    cluster: RaftKVCluster, follower: RaftKVMember
) -> None:
    lease, kv = stubs(follower)
    missing = 0x5EED
    err = rpc_error(lambda: lease.LeaseRevoke(pb.LeaseRevokeRequest(ID=missing)))
    assert (err.code(), err.details()) == (
        grpc.StatusCode.NOT_FOUND,
        "etcdserver: requested lease not found",
    )
    err = rpc_error(lambda: kv.Put(pb.PutRequest(key=b"err/k", value=b"v", lease=missing)))
    assert (err.code(), err.details()) == (
        grpc.StatusCode.NOT_FOUND,
        "etcdserver: requested lease not found",
    )
    err = rpc_error(lambda: lease.LeaseGrant(pb.LeaseGrantRequest(TTL=9_000_000_001)))
    assert (err.code(), err.details()) == (
        grpc.StatusCode.OUT_OF_RANGE,
        "etcdserver: too large lease TTL",
    )
    existing = lease.LeaseGrant(pb.LeaseGrantRequest(TTL=30)).ID
    err = rpc_error(lambda: lease.LeaseGrant(pb.LeaseGrantRequest(TTL=30, ID=existing)))
    assert (err.code(), err.details()) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "etcdserver: lease already exists",
    )
    # Unknown leases are no errors for TimeToLive (TTL -1) and KeepAlive (TTL 0).
    ttl = lease.LeaseTimeToLive(pb.LeaseTimeToLiveRequest(ID=missing, keys=True))
    assert (ttl.ID, ttl.TTL, list(ttl.keys)) == (missing, -1, [])
    answers = list(lease.LeaseKeepAlive(iter([pb.LeaseKeepAliveRequest(ID=missing)])))
    assert [(a.ID, a.TTL) for a in answers] == [(missing, 0)]
    lease.LeaseRevoke(pb.LeaseRevokeRequest(ID=existing))


@pytest.mark.skipif(not etcd_installed(), reason="etcdctl 3.4 is not installed")
def test_etcdctl_lease_commands(cluster: RaftKVCluster) -> None:
    def ctl(*args: str) -> str:
        done = etcdctl(cluster.endpoints, *args)
        assert done.returncode == 0, done.stderr
        return done.stdout

    granted = re.fullmatch(
        r"lease ([0-9a-f]{16}) granted with TTL\(60s\)\n", ctl("lease", "grant", "60")
    )
    assert granted is not None
    lease_hex = granted.group(1)
    ctl("put", "ctl/a", "1", f"--lease={lease_hex}")
    ctl("put", "ctl/b", "2", f"--lease={lease_hex}")

    ttl = ctl("lease", "timetolive", "--keys", lease_hex)
    found = re.fullmatch(
        rf"lease {lease_hex} granted with TTL\(60s\), remaining\((\d+)s\), "
        r"attached keys\(\[ctl/a ctl/b\]\)\n",
        ttl,
    )
    assert found is not None and 55 <= int(found.group(1)) <= 60, ttl
    assert ctl("lease", "keep-alive", "--once", lease_hex) == (
        f"lease {lease_hex} keepalived with TTL(60)\n"
    )
    listed = ctl("lease", "list").splitlines()
    assert listed[0] == f"found {len(listed) - 1} leases"
    assert lease_hex in listed[1:]
    assert ctl("lease", "revoke", lease_hex) == f"lease {lease_hex} revoked\n"
    assert ctl("get", "--prefix", "ctl/") == ""
    assert ctl("lease", "timetolive", lease_hex) == f"lease {lease_hex} already expired\n"

    again = etcdctl(cluster.endpoints, "lease", "revoke", lease_hex)
    assert again.returncode == 1
    assert again.stderr.endswith(
        "Error: failed to revoke lease (etcdserver: requested lease not found)\n"
    )
    once = etcdctl(cluster.endpoints, "lease", "keep-alive", "--once", lease_hex)
    assert once.returncode != 0
    assert once.stderr == "Error: etcdserver: requested lease not found\n"


# ---- leader failure and restarts (own clusters) ------------------------------------------------


def test_lease_kept_alive_through_a_survivor_outlives_a_leader_sigkill(
    tmp_path: Path,
) -> None:
    with start_raftkv_cluster(tmp_path) as cluster:
        old_leader = cluster.leader()
        survivor = next(m for m in cluster.members if m is not old_leader)
        lease, kv = stubs(survivor)
        granted = lease.LeaseGrant(pb.LeaseGrantRequest(TTL=5))
        kv.Put(pb.PutRequest(key=b"failover/k", value=b"v", lease=granted.ID))
        with KeepAliver(survivor.target, granted.ID, every=1.0) as keeper:
            time.sleep(1.5)
            old_leader.kill(signal.SIGKILL)
            new_leader = cluster.leader()
            assert new_leader is not old_leader
            time.sleep(8)  # well past any deadline the old leader had set
            assert count_everywhere(cluster, b"failover/k") == [1, 1]
            assert keeper.errors == []  # the stream to the survivor never broke
            assert keeper.responses[-1].TTL == 5
            assert all(r.TTL == 5 for r in keeper.responses)  # never reported as gone
            ttl = stubs(new_leader)[0].LeaseTimeToLive(pb.LeaseTimeToLiveRequest(ID=granted.ID))
            assert 3 <= ttl.TTL <= 5

        # With no keep-alive, the new leader expires it on its own.
        wait_until(lambda: count_everywhere(cluster, b"failover/k") == [0, 0], timeout=5 + 1.5)

        # One member left: it has no leader, and `hasleader` keep-alives fail at once.
        next(m for m in cluster.members if m.alive and m is not survivor).kill(signal.SIGKILL)
        wait_until(lambda: survivor.status().leader == 0)
        stream = lease.LeaseKeepAlive(
            iter([pb.LeaseKeepAliveRequest(ID=granted.ID)]), metadata=(("hasleader", "true"),)
        )
        err = rpc_error(lambda: list(stream))
        assert (err.code(), err.details()) == (
            grpc.StatusCode.UNAVAILABLE,
            "etcdserver: no leader",
        )


def test_leases_and_attachments_survive_a_full_cluster_restart(tmp_path: Path) -> None:
    # A tiny snapshot count: members restart from a snapshot plus WAL (a restart from the WAL
    # alone, with no snapshot yet, does not elect a leader at the time of writing).
    with start_raftkv_cluster(tmp_path, snapshot_count=4) as cluster:
        lease, kv = stubs(cluster.members[0])
        long_lived = lease.LeaseGrant(pb.LeaseGrantRequest(TTL=600)).ID
        short = lease.LeaseGrant(pb.LeaseGrantRequest(TTL=3)).ID
        kv.Put(pb.PutRequest(key=b"restart/long", value=b"v", lease=long_lived))
        kv.Put(pb.PutRequest(key=b"restart/short", value=b"v", lease=short))
        for member in cluster.members:
            member.kill(signal.SIGKILL)
        for member in cluster.members:
            member.start()
        for member in cluster.members:
            wait_serving(member)
        serving = time.monotonic()  # a leader was elected (and promoted its lessor) before this
        leader = cluster.leader()
        lease, kv = stubs(leader)
        ttl = lease.LeaseTimeToLive(pb.LeaseTimeToLiveRequest(ID=long_lived, keys=True))
        assert (ttl.grantedTTL, list(ttl.keys)) == (600, [b"restart/long"])
        assert ttl.TTL >= 590
        listed = {s.ID for s in lease.LeaseLeases(pb.LeaseLeasesRequest()).leases}
        assert {long_lived, short} <= listed
        # The short lease counts from the new leader's election: its TTL plus the extension.
        wait_until(
            lambda: count_everywhere(cluster, b"restart/short") == [0, 0, 0],
            timeout=3 + 0.5 + 1.5 - (time.monotonic() - serving),
        )
        assert count_everywhere(cluster, b"restart/long") == [1, 1, 1]
