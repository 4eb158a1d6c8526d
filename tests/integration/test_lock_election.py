"""The v3lock and v3election services on a real 3-member raftkv cluster, through the generated
stubs, compared with a real etcd 3.4.

The two scenario tests run the same calls against etcd and against a raftkv *follower* and
require the same transcript: every response and error (code and text) in order, with lease IDs
replaced by names and revisions counted from the scenario's start (cluster, member and term
dropped). The other tests check properties on raftkv alone: fairness across members, and the
one deliberate difference from etcd 3.4, a waiter whose lease ends fails ("session expired")
where etcd 3.4 keeps waiting and later reports a lock whose key no longer exists.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import text_format
from google.protobuf.message import Message
from raftkv.pb.etcdserverpb import rpc_pb2 as pb
from raftkv.pb.etcdserverpb import rpc_pb2_grpc as rpc
from raftkv.pb.v3electionpb import v3election_pb2 as epb
from raftkv.pb.v3electionpb import v3election_pb2_grpc as election_rpc
from raftkv.pb.v3lockpb import v3lock_pb2 as lpb
from raftkv.pb.v3lockpb import v3lock_pb2_grpc as lock_rpc

from tests.support.etcd import EtcdCluster, start_etcd_cluster
from tests.support.fixtures import require_etcd
from tests.support.raftkv import RaftKVCluster, start_raftkv_cluster

pytestmark = pytest.mark.integration

_HEADER_IDENTITY = re.compile(r"\b(cluster_id|member_id|raft_term): \d+ ?")
_REVISION = re.compile(r"\b(revision|create_revision|mod_revision|rev): (\d+)")


class Stubs:
    def __init__(self, channel: grpc.Channel) -> None:
        self.kv = rpc.KVStub(channel)
        self.lease = rpc.LeaseStub(channel)
        self.lock = lock_rpc.LockStub(channel)
        self.election = election_rpc.ElectionStub(channel)

    def keys(self, prefix: bytes) -> list[bytes]:
        end = prefix[:-1] + bytes([prefix[-1] + 1])
        return [kv.key for kv in self.kv.Range(pb.RangeRequest(key=prefix, range_end=end)).kvs]

    def wait_keys(self, prefix: bytes, count: int) -> None:
        """Wait until `count` contenders are queued under `prefix`."""
        deadline = time.monotonic() + 10
        while len(self.keys(prefix)) != count:
            assert time.monotonic() < deadline, f"{prefix!r} never had {count} keys"
            time.sleep(0.02)

    def grant(self, ttl: int = 60) -> int:
        lease_id: int = self.lease.LeaseGrant(pb.LeaseGrantRequest(TTL=ttl)).ID
        return lease_id


class Transcript:
    """What a scenario saw, in a form two clusters can agree on."""

    def __init__(self, stubs: Stubs) -> None:
        self.base = stubs.kv.Range(pb.RangeRequest(key=b"-")).header.revision
        self.leases: dict[int, str] = {}
        self.lines: list[str] = []

    def name(self, lease_id: int, name: str) -> int:
        self.leases[lease_id] = name
        return lease_id

    def text(self, value: Any) -> str:
        if isinstance(value, Message):
            value = text_format.MessageToString(value, as_one_line=True)
        text = _HEADER_IDENTITY.sub("", str(value))
        text = _REVISION.sub(lambda m: f"{m[1]}: +{int(m[2]) - self.base}", text)
        for lease_id, name in self.leases.items():
            text = text.replace(str(lease_id), name).replace(f"{lease_id:x}", name)
        return text

    def add(self, label: str, value: Any) -> None:
        self.lines.append(f"{label}: {self.text(value)}")

    def call(self, label: str, call: Callable[[], Any]) -> Any:
        """Record the call's response or its error; return the response (None on error)."""
        try:
            response = call()
        except grpc.RpcError as error:
            self.add(label, f"error {error.code().name} {error.details()!r}")
            return None
        self.add(label, response)
        return response


@pytest.fixture(scope="module")
def raftkv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RaftKVCluster]:
    with start_raftkv_cluster(Path(tmp_path_factory.mktemp("lock"))) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdCluster]:
    require_etcd()
    with start_etcd_cluster(tmp_path_factory.mktemp("etcd-lock")) as cluster:
        yield cluster


def follower_target(cluster: RaftKVCluster) -> str:
    leader = cluster.leader()
    return next(m.target for m in cluster.members if m is not leader)


def on_both(
    etcd: EtcdCluster, raftkv: RaftKVCluster, scenario: Callable[[Stubs], list[str]]
) -> tuple[list[str], list[str]]:
    results = []
    for target in (etcd.grpc_targets[0], follower_target(raftkv)):
        with grpc.insecure_channel(target) as channel:
            results.append(scenario(Stubs(channel)))
    return results[0], results[1]


def lock_scenario(s: Stubs) -> list[str]:
    t = Transcript(s)
    a, b, c = (t.name(s.grant(), name) for name in ("A", "B", "C"))
    held = t.call("lock A", lambda: s.lock.Lock(lpb.LockRequest(name=b"q", lease=a)))
    t.call("lock A again", lambda: s.lock.Lock(lpb.LockRequest(name=b"q", lease=a)))
    second = s.lock.Lock.future(lpb.LockRequest(name=b"q", lease=b), timeout=10)
    s.wait_keys(b"q/", 2)
    third = s.lock.Lock.future(lpb.LockRequest(name=b"q", lease=c), timeout=10)
    s.wait_keys(b"q/", 3)
    t.add("B and C wait", (second.done(), third.done()))
    t.call("unlock A", lambda: s.lock.Unlock(lpb.UnlockRequest(key=held.key)))
    t.add("B acquires", second.result())
    t.add("C still waits", not third.done())
    t.call("unlock B", lambda: s.lock.Unlock(lpb.UnlockRequest(key=second.result().key)))
    t.add("C acquires", third.result())
    t.call("unlock C", lambda: s.lock.Unlock(lpb.UnlockRequest(key=third.result().key)))

    # A waiter that gives up (cancel, deadline) takes its key out of the queue.
    s.lock.Lock(lpb.LockRequest(name=b"g", lease=a))
    abandoned = s.lock.Lock.future(lpb.LockRequest(name=b"g", lease=b), timeout=10)
    s.wait_keys(b"g/", 2)
    abandoned.cancel()
    s.wait_keys(b"g/", 1)
    t.add("after cancel", s.keys(b"g/"))
    t.call("deadline", lambda: s.lock.Lock(lpb.LockRequest(name=b"g", lease=c), timeout=0.5))
    s.wait_keys(b"g/", 1)
    t.add("after deadline", s.keys(b"g/"))

    t.call("unlock empty", lambda: s.lock.Unlock(lpb.UnlockRequest(key=b"")))
    t.call("unlock missing", lambda: s.lock.Unlock(lpb.UnlockRequest(key=b"g/missing")))
    t.call("lock unknown lease", lambda: s.lock.Lock(lpb.LockRequest(name=b"u", lease=0x5EED)))
    # Lease 0: a 60 s session lease is granted for the key.
    session = s.lock.Lock(lpb.LockRequest(name=b"s", lease=0))
    (owned,) = s.kv.Range(pb.RangeRequest(key=session.key)).kvs
    t.name(owned.lease, "S")
    t.add("lock without lease", session)
    ttl = s.lease.LeaseTimeToLive(pb.LeaseTimeToLiveRequest(ID=owned.lease))
    t.add("session lease", (ttl.grantedTTL, 58 <= ttl.TTL <= 60))
    for lease_id in (a, b, c, owned.lease):
        s.lease.LeaseRevoke(pb.LeaseRevokeRequest(ID=lease_id))
    return t.lines


def test_lock_transcript_matches_etcd(etcd: EtcdCluster, raftkv: RaftKVCluster) -> None:
    on_etcd, on_raftkv = on_both(etcd, raftkv, lock_scenario)
    assert on_raftkv == on_etcd
    # The transcript says what it should: a sanity check on the scenario itself.
    assert 'lock A: header { revision: +1 } key: "q/A"' in on_etcd
    # B's header is that of the read that found A gone: the fencing revision of B's hold.
    assert on_etcd[3:5] == [
        "unlock A: header { revision: +4 }",
        'B acquires: header { revision: +4 } key: "q/B"',
    ]


class Observer:
    """Reads an Observe stream in a thread."""

    def __init__(self, s: Stubs, name: bytes) -> None:
        self.responses: list[epb.LeaderResponse] = []
        self._call = s.election.Observe(epb.LeaderRequest(name=name), timeout=30)
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            for response in self._call:
                self.responses.append(response)
        except grpc.RpcError:
            pass

    def wait(self, count: int) -> None:
        deadline = time.monotonic() + 10
        while len(self.responses) < count:
            assert time.monotonic() < deadline, f"observed {self.responses}"
            time.sleep(0.02)

    def stop(self) -> list[epb.LeaderResponse]:
        self._call.cancel()
        self._thread.join(timeout=5)
        return self.responses


def election_scenario(s: Stubs) -> list[str]:
    t = Transcript(s)
    el = s.election
    t.call("no leader", lambda: el.Leader(epb.LeaderRequest(name=b"e")))
    t.call("proclaim nothing", lambda: el.Proclaim(epb.ProclaimRequest(value=b"x")))
    t.call("resign nothing", lambda: el.Resign(epb.ResignRequest()))
    a, b = (t.name(s.grant(), name) for name in ("A", "B"))
    won = t.call(
        "A campaigns", lambda: el.Campaign(epb.CampaignRequest(name=b"e", lease=a, value=b"v1"))
    )
    t.call("leader", lambda: el.Leader(epb.LeaderRequest(name=b"e")))
    t.call("proclaim v2", lambda: el.Proclaim(epb.ProclaimRequest(leader=won.leader, value=b"v2")))
    stale = epb.LeaderKey()
    stale.CopyFrom(won.leader)
    stale.rev += 100
    t.call("stale proclaim", lambda: el.Proclaim(epb.ProclaimRequest(leader=stale, value=b"x")))
    t.call("stale resign", lambda: el.Resign(epb.ResignRequest(leader=stale)))
    t.call(
        "A campaigns again",
        lambda: el.Campaign(epb.CampaignRequest(name=b"e", lease=a, value=b"v3")),
    )

    observer = Observer(s, b"e")
    observer.wait(1)
    contender = el.Campaign.future(epb.CampaignRequest(name=b"e", lease=b, value=b"vb"), timeout=10)
    s.wait_keys(b"e/", 2)
    t.call("proclaim v4", lambda: el.Proclaim(epb.ProclaimRequest(leader=won.leader, value=b"v4")))
    t.add("B waits", not contender.done())
    t.call("A resigns", lambda: el.Resign(epb.ResignRequest(leader=won.leader)))
    t.add("B wins", contender.result())
    observer.wait(3)
    t.call("B resigns", lambda: el.Resign(epb.ResignRequest(leader=contender.result().leader)))
    t.call("no leader again", lambda: el.Leader(epb.LeaderRequest(name=b"e")))
    t.call("A returns", lambda: el.Campaign(epb.CampaignRequest(name=b"e", lease=a, value=b"v5")))
    observer.wait(4)
    for response in observer.stop():
        t.add("observed", response)

    # A campaigner that gives up resigns.
    el.Campaign(epb.CampaignRequest(name=b"g", lease=a, value=b"x"))
    abandoned = el.Campaign.future(epb.CampaignRequest(name=b"g", lease=b, value=b"y"), timeout=10)
    s.wait_keys(b"g/", 2)
    abandoned.cancel()
    s.wait_keys(b"g/", 1)
    t.add("after cancel", s.keys(b"g/"))
    for lease_id in (a, b):
        s.lease.LeaseRevoke(pb.LeaseRevokeRequest(ID=lease_id))
    return t.lines


def test_election_transcript_matches_etcd(etcd: EtcdCluster, raftkv: RaftKVCluster) -> None:
    on_etcd, on_raftkv = on_both(etcd, raftkv, election_scenario)
    assert on_raftkv == on_etcd
    observed = [line for line in on_etcd if line.startswith("observed")]
    assert [re.search(r'value: "(\w+)"', line)[1] for line in observed] == [  # type: ignore[index]
        "v3",
        "v4",
        "vb",
        "v5",
    ]


def test_waiters_on_different_members_acquire_in_queue_order(raftkv: RaftKVCluster) -> None:
    channels = [grpc.insecure_channel(m.target) for m in raftkv.members]
    try:
        members = [Stubs(channel) for channel in channels]
        holder = members[0]
        first = holder.lock.Lock(lpb.LockRequest(name=b"fair", lease=holder.grant()))
        waiters: list[Future[Any]] = []
        for i in range(4):
            s = members[(i + 1) % 3]
            waiters.append(
                s.lock.Lock.future(lpb.LockRequest(name=b"fair", lease=s.grant()), timeout=20)
            )
            holder.wait_keys(b"fair/", i + 2)
        key = first.key
        for i, call in enumerate(waiters):
            time.sleep(0.2)  # a waiter out of turn would have acquired by now
            assert not any(later.done() for later in waiters[i:])
            released = holder.lock.Unlock(lpb.UnlockRequest(key=key))
            acquired = call.result(timeout=10)
            # Acquired by the read that saw the release: a fencing revision past it.
            assert acquired.header.revision >= released.header.revision
            key = acquired.key
        holder.lock.Unlock(lpb.UnlockRequest(key=key))
        assert holder.keys(b"fair/") == []
    finally:
        for channel in channels:
            channel.close()


def test_a_waiter_whose_lease_ends_fails_while_the_owner_keeps_the_lock(
    raftkv: RaftKVCluster,
) -> None:
    with grpc.insecure_channel(follower_target(raftkv)) as channel:
        s = Stubs(channel)
        owner = s.grant()
        held = s.lock.Lock(lpb.LockRequest(name=b"lost", lease=owner))
        revoked = s.grant()
        expiring = s.grant(ttl=1)
        waiting = s.lock.Lock.future(lpb.LockRequest(name=b"lost", lease=revoked), timeout=10)
        campaign = s.election.Campaign.future(
            epb.CampaignRequest(name=b"lost", lease=expiring, value=b"x"), timeout=10
        )
        s.wait_keys(b"lost/", 3)
        s.lease.LeaseRevoke(pb.LeaseRevokeRequest(ID=revoked))
        for call in (waiting, campaign):  # the lock and the election queue share the prefix
            error = call.exception(timeout=5)
            assert isinstance(error, grpc.RpcError)
            assert (error.code(), error.details()) == (grpc.StatusCode.UNKNOWN, "session expired")
        assert s.keys(b"lost/") == [held.key]
        s.lock.Unlock(lpb.UnlockRequest(key=held.key))
        s.lease.LeaseRevoke(pb.LeaseRevokeRequest(ID=owner))


def test_hasleader_calls_and_observe_work_on_every_member(raftkv: RaftKVCluster) -> None:
    hasleader = (("hasleader", "true"),)
    with grpc.insecure_channel(raftkv.members[0].target) as channel:
        s = Stubs(channel)
        lease = s.grant()
        won = s.election.Campaign(
            epb.CampaignRequest(name=b"every", lease=lease, value=b"v"), metadata=hasleader
        )
        for member in raftkv.members:
            with grpc.insecure_channel(member.target) as other:
                stub = election_rpc.ElectionStub(other)
                leader = stub.Leader(epb.LeaderRequest(name=b"every"), metadata=hasleader).kv
                assert (leader.key, leader.value) == (won.leader.key, b"v")
                stream = stub.Observe(
                    epb.LeaderRequest(name=b"every"), metadata=hasleader, timeout=10
                )
                assert next(stream).kv == leader
                stream.cancel()
        s.election.Resign(epb.ResignRequest(leader=won.leader))
        s.lease.LeaseRevoke(pb.LeaseRevokeRequest(ID=lease))
