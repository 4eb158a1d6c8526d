"""Our .proto files speak etcd 3.4's wire format: proven against a real etcd server.

Every service is called through raftkv's generated stubs (`raftkv.pb.*`) on a real etcd 3.4
and the answers are checked field by field against values the test can predict (revisions it
caused, keys and values it wrote, lease ids it chose, member names and URLs it configured).
A wrong field number or type in our protos decodes to a default or a garbled value and fails
these assertions. The expected behaviour noted here (error codes and texts, ids, TTL floors)
is also what raftkv must reproduce.

Tests share one single-member cluster per module, so each works under its own key prefix and
only reads revisions it created itself.
"""

from __future__ import annotations

import base64
import hashlib
import json
import queue
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from raftkv.pb.authpb import auth_pb2
from raftkv.pb.etcdserverpb import rpc_pb2 as pb
from raftkv.pb.etcdserverpb import rpc_pb2_grpc as rpc
from raftkv.pb.mvccpb import kv_pb2
from raftkv.pb.v3electionpb import v3election_pb2 as epb
from raftkv.pb.v3electionpb import v3election_pb2_grpc as election_rpc
from raftkv.pb.v3lockpb import v3lock_pb2 as lpb
from raftkv.pb.v3lockpb import v3lock_pb2_grpc as lock_rpc

from tests.support.etcd import EtcdCluster, free_port, start_etcd_cluster
from tests.support.fixtures import require_etcd

pytestmark = pytest.mark.integration

PUT = kv_pb2.Event.PUT
DELETE = kv_pb2.Event.DELETE
_END = object()


class BidiStream:
    """A bidirectional gRPC stream driven step by step: send() requests, recv() responses.

    The whole stream has one deadline, so a missing response fails the test instead of hanging.
    """

    def __init__(self, method: Callable[..., Any], timeout: float = 10.0) -> None:
        self._requests: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._responses = method(iter(self._requests.get, _END), timeout=timeout)

    def send(self, request: Any) -> None:
        self._requests.put(request)

    def recv(self) -> Any:
        return next(self._responses)

    def close(self) -> None:
        self._requests.put(_END)
        self._responses.cancel()


def rpc_error(call: Callable[[], Any]) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value


@pytest.fixture(scope="module")
def channel(etcd_cluster: EtcdCluster) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(etcd_cluster.grpc_targets[0]) as ch:
        grpc.channel_ready_future(ch).result(timeout=10)
        yield ch


@pytest.fixture(scope="module")
def kv(channel: grpc.Channel) -> rpc.KVStub:
    return rpc.KVStub(channel)


@pytest.fixture(scope="module")
def lease(channel: grpc.Channel) -> rpc.LeaseStub:
    return rpc.LeaseStub(channel)


@pytest.fixture(scope="module")
def maintenance(channel: grpc.Channel) -> rpc.MaintenanceStub:
    return rpc.MaintenanceStub(channel)


@pytest.fixture(scope="module")
def cluster(channel: grpc.Channel) -> rpc.ClusterStub:
    return rpc.ClusterStub(channel)


@pytest.fixture(scope="module")
def member(cluster: rpc.ClusterStub) -> pb.Member:
    (only,) = cluster.MemberList(pb.MemberListRequest()).members
    return only


# --- KV ---------------------------------------------------------------------------------------


def test_response_header_names_cluster_member_and_term(
    kv: rpc.KVStub, cluster: rpc.ClusterStub, member: pb.Member
) -> None:
    header = kv.Range(pb.RangeRequest(key=b"hdr/none")).header
    assert header.member_id == member.ID != 0
    assert header.cluster_id == cluster.MemberList(pb.MemberListRequest()).header.cluster_id != 0
    assert header.revision >= 1
    assert header.raft_term >= 2  # term 1 ends with the first election


def test_put_range_and_delete_fields(kv: rpc.KVStub) -> None:
    r1 = kv.Put(pb.PutRequest(key=b"kv/a", value=b"1")).header.revision
    r2 = kv.Put(pb.PutRequest(key=b"kv/b", value=b"2")).header.revision
    r3 = kv.Put(pb.PutRequest(key=b"kv/c", value=b"3")).header.revision
    again = kv.Put(pb.PutRequest(key=b"kv/a", value=b"1b", prev_kv=True))
    r4 = again.header.revision
    assert (r2, r3, r4) == (r1 + 1, r1 + 2, r1 + 3)
    assert again.prev_kv == kv_pb2.KeyValue(
        key=b"kv/a", value=b"1", create_revision=r1, mod_revision=r1, version=1
    )

    got = kv.Range(pb.RangeRequest(key=b"kv/a"))
    assert list(got.kvs) == [
        kv_pb2.KeyValue(key=b"kv/a", value=b"1b", create_revision=r1, mod_revision=r4, version=2)
    ]
    assert (got.count, got.more, got.header.revision) == (1, False, r4)

    def keys(**fields: Any) -> list[bytes]:
        resp = kv.Range(pb.RangeRequest(key=b"kv/", range_end=b"kv0", **fields))
        return [item.key for item in resp.kvs]

    page = kv.Range(
        pb.RangeRequest(
            key=b"kv/",
            range_end=b"kv0",
            limit=2,
            sort_order=pb.RangeRequest.DESCEND,
            sort_target=pb.RangeRequest.KEY,
        )
    )
    assert [item.key for item in page.kvs] == [b"kv/c", b"kv/b"]
    assert (page.more, page.count) == (True, 3)
    assert keys(sort_order=pb.RangeRequest.DESCEND, sort_target=pb.RangeRequest.MOD) == [
        b"kv/a",
        b"kv/c",
        b"kv/b",
    ]
    assert keys(sort_order=pb.RangeRequest.DESCEND, sort_target=pb.RangeRequest.VALUE) == [
        b"kv/c",
        b"kv/b",
        b"kv/a",
    ]
    assert keys(min_mod_revision=r4) == [b"kv/a"]
    assert keys(max_mod_revision=r3) == [b"kv/b", b"kv/c"]
    assert keys(min_create_revision=r2) == [b"kv/b", b"kv/c"]
    assert keys(max_create_revision=r1) == [b"kv/a"]

    only_keys = kv.Range(pb.RangeRequest(key=b"kv/", range_end=b"kv0", keys_only=True))
    assert [(i.key, i.value, i.mod_revision) for i in only_keys.kvs] == [
        (b"kv/a", b"", r4),
        (b"kv/b", b"", r2),
        (b"kv/c", b"", r3),
    ]
    counted = kv.Range(pb.RangeRequest(key=b"kv/", range_end=b"kv0", count_only=True))
    assert (len(counted.kvs), counted.count) == (0, 3)
    past = kv.Range(pb.RangeRequest(key=b"kv/a", revision=r1, serializable=True))
    assert [i.value for i in past.kvs] == [b"1"]

    kept = kv.Put(pb.PutRequest(key=b"kv/b", ignore_value=True, prev_kv=True))
    assert kept.prev_kv.value == b"2"
    assert kv.Range(pb.RangeRequest(key=b"kv/b")).kvs[0].value == b"2"
    missing = rpc_error(lambda: kv.Put(pb.PutRequest(key=b"kv/none", ignore_lease=True)))
    assert missing.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert missing.details() == "etcdserver: key not found"

    deleted = kv.DeleteRange(pb.DeleteRangeRequest(key=b"kv/", range_end=b"kv0", prev_kv=True))
    assert deleted.deleted == 3
    assert [(i.key, i.value) for i in deleted.prev_kvs] == [
        (b"kv/a", b"1b"),
        (b"kv/b", b"2"),
        (b"kv/c", b"3"),
    ]
    assert kv.Range(pb.RangeRequest(key=b"kv/", range_end=b"kv0")).count == 0


def test_txn_compares_every_target_and_nests(kv: rpc.KVStub, lease: rpc.LeaseStub) -> None:
    lease_id = lease.LeaseGrant(pb.LeaseGrantRequest(TTL=60)).ID
    ra = kv.Put(pb.PutRequest(key=b"txn/a", value=b"va", lease=lease_id)).header.revision
    rb = kv.Put(pb.PutRequest(key=b"txn/b", value=b"vb")).header.revision
    C = pb.Compare
    compares = [
        C(key=b"txn/a", target=C.VALUE, result=C.EQUAL, value=b"va"),
        C(key=b"txn/a", target=C.VERSION, result=C.EQUAL, version=1),
        C(key=b"txn/a", target=C.CREATE, result=C.EQUAL, create_revision=ra),
        C(key=b"txn/a", target=C.MOD, result=C.LESS, mod_revision=rb),
        C(key=b"txn/a", target=C.LEASE, result=C.EQUAL, lease=lease_id),
        C(key=b"txn/b", target=C.VALUE, result=C.NOT_EQUAL, value=b"va"),
        # Holds only over the range: the key "txn/" alone does not exist (version 0).
        C(key=b"txn/", range_end=b"txn0", target=C.VERSION, result=C.GREATER, version=0),
    ]
    # A nested txn's compares see the store as it was before the outer txn; its ops see the
    # outer ops that ran before it.
    nested = pb.TxnRequest(
        compare=[C(key=b"txn/b", target=C.VALUE, result=C.EQUAL, value=b"vb")],
        success=[
            pb.RequestOp(request_range=pb.RangeRequest(key=b"txn/c")),
            pb.RequestOp(request_range=pb.RangeRequest(key=b"txn/b")),
        ],
    )
    resp = kv.Txn(
        pb.TxnRequest(
            compare=compares,
            success=[
                pb.RequestOp(request_range=pb.RangeRequest(key=b"txn/a")),
                pb.RequestOp(request_put=pb.PutRequest(key=b"txn/c", value=b"vc")),
                pb.RequestOp(
                    request_delete_range=pb.DeleteRangeRequest(key=b"txn/b", prev_kv=True)
                ),
                pb.RequestOp(request_txn=nested),
            ],
            failure=[pb.RequestOp(request_put=pb.PutRequest(key=b"txn/failed", value=b"x"))],
        )
    )
    assert resp.succeeded is True
    assert resp.header.revision == rb + 1  # one revision for the whole transaction
    assert [r.WhichOneof("response") for r in resp.responses] == [
        "response_range",
        "response_put",
        "response_delete_range",
        "response_txn",
    ]
    assert [(i.key, i.value, i.lease) for i in resp.responses[0].response_range.kvs] == [
        (b"txn/a", b"va", lease_id)
    ]
    # Headers inside a txn carry only the revision.
    assert resp.responses[1].response_put.header == pb.ResponseHeader(revision=rb + 1)
    removed = resp.responses[2].response_delete_range
    assert (removed.deleted, [i.value for i in removed.prev_kvs]) == (1, [b"vb"])
    inner = resp.responses[3].response_txn
    assert inner.succeeded is True
    seen = inner.responses[0].response_range.kvs
    assert [(i.key, i.value, i.mod_revision) for i in seen] == [(b"txn/c", b"vc", rb + 1)]
    assert inner.responses[1].response_range.count == 0

    older = C(key=b"txn/", range_end=b"txn0", target=C.CREATE, result=C.LESS, create_revision=ra)
    failed = kv.Txn(
        pb.TxnRequest(
            compare=[older],
            success=[pb.RequestOp(request_put=pb.PutRequest(key=b"txn/ok", value=b"x"))],
            failure=[pb.RequestOp(request_range=pb.RangeRequest(key=b"txn/", range_end=b"txn0"))],
        )
    )
    assert failed.succeeded is False
    assert [i.key for i in failed.responses[0].response_range.kvs] == [b"txn/a", b"txn/c"]
    assert failed.header.revision == rb + 1  # a read-only branch does not advance the revision
    lease.LeaseRevoke(pb.LeaseRevokeRequest(ID=lease_id))


def test_compaction_hashkv_and_compacted_watch(
    channel: grpc.Channel, kv: rpc.KVStub, maintenance: rpc.MaintenanceStub
) -> None:
    first = kv.Put(pb.PutRequest(key=b"cmp/k", value=b"1")).header.revision
    rev = kv.Put(pb.PutRequest(key=b"cmp/k", value=b"2")).header.revision
    kv.Compact(pb.CompactionRequest(revision=rev, physical=True))

    err = rpc_error(lambda: kv.Range(pb.RangeRequest(key=b"cmp/k", revision=first)))
    assert err.code() == grpc.StatusCode.OUT_OF_RANGE
    assert err.details() == "etcdserver: mvcc: required revision has been compacted"

    latest = maintenance.HashKV(pb.HashKVRequest())
    assert (latest.compact_revision, latest.header.revision) == (rev, rev)
    assert latest.hash != 0
    # Hashing at the compacted revision itself is refused like a read below it.
    err = rpc_error(lambda: maintenance.HashKV(pb.HashKVRequest(revision=rev)))
    assert err.code() == grpc.StatusCode.OUT_OF_RANGE
    after = kv.Put(pb.PutRequest(key=b"cmp/k", value=b"3")).header.revision
    pinned = maintenance.HashKV(pb.HashKVRequest(revision=after))
    assert (pinned.compact_revision, pinned.header.revision) == (rev, after)
    assert pinned.hash != latest.hash
    kv.Put(pb.PutRequest(key=b"cmp/other", value=b"4"))
    assert maintenance.HashKV(pb.HashKVRequest(revision=after)).hash == pinned.hash

    stream = BidiStream(rpc.WatchStub(channel).Watch)
    try:
        stream.send(
            pb.WatchRequest(
                create_request=pb.WatchCreateRequest(key=b"cmp/k", start_revision=first)
            )
        )
        created = stream.recv()
        assert created.created is True
        canceled = stream.recv()
        assert canceled.watch_id == created.watch_id
        assert (canceled.canceled, canceled.compact_revision) == (True, rev)
    finally:
        stream.close()


# --- Watch ------------------------------------------------------------------------------------


def test_watch_filters_prev_kv_progress_cancel_and_replay(
    channel: grpc.Channel, kv: rpc.KVStub
) -> None:
    watch = rpc.WatchStub(channel)
    stream = BidiStream(watch.Watch)
    try:
        start = kv.Range(pb.RangeRequest(key=b"w/")).header.revision
        stream.send(
            pb.WatchRequest(
                create_request=pb.WatchCreateRequest(
                    key=b"w/", range_end=b"w0", prev_kv=True, watch_id=7
                )
            )
        )
        created = stream.recv()
        assert (created.created, created.watch_id, created.header.revision) == (True, 7, start)
        stream.send(
            pb.WatchRequest(
                create_request=pb.WatchCreateRequest(
                    key=b"w/", range_end=b"w0", filters=[pb.WatchCreateRequest.NODELETE]
                )
            )
        )
        no_delete = stream.recv()
        assert no_delete.created is True
        assert no_delete.watch_id != 7

        r1 = kv.Put(pb.PutRequest(key=b"w/k", value=b"1")).header.revision
        r2 = kv.Put(pb.PutRequest(key=b"w/k", value=b"2")).header.revision
        r3 = kv.DeleteRange(pb.DeleteRangeRequest(key=b"w/k")).header.revision

        events: dict[int, list[kv_pb2.Event]] = {7: [], no_delete.watch_id: []}
        while len(events[7]) < 3:
            resp = stream.recv()
            events[resp.watch_id].extend(resp.events)
        put1, put2, gone = events[7]
        assert (put1.type, put1.kv) == (
            PUT,
            kv_pb2.KeyValue(key=b"w/k", value=b"1", create_revision=r1, mod_revision=r1, version=1),
        )
        assert not put1.HasField("prev_kv")
        assert (put2.type, put2.kv.value, put2.prev_kv.value) == (PUT, b"2", b"1")
        assert (gone.type, gone.kv.key, gone.kv.mod_revision) == (DELETE, b"w/k", r3)
        assert gone.prev_kv.value == b"2"
        assert [(e.type, e.kv.mod_revision) for e in events[no_delete.watch_id]] == [
            (PUT, r1),
            (PUT, r2),
        ]

        # etcd 3.4 answers a progress request once per stream, with watch_id -1.
        stream.send(pb.WatchRequest(progress_request=pb.WatchProgressRequest()))
        progress = stream.recv()
        assert (progress.watch_id, progress.header.revision, len(progress.events)) == (-1, r3, 0)

        stream.send(pb.WatchRequest(cancel_request=pb.WatchCancelRequest(watch_id=7)))
        canceled = stream.recv()
        assert (canceled.watch_id, canceled.canceled) == (7, True)
        r4 = kv.Put(pb.PutRequest(key=b"w/k", value=b"4")).header.revision
        after_cancel = stream.recv()
        assert after_cancel.watch_id == no_delete.watch_id
        assert [(e.kv.value, e.kv.mod_revision) for e in after_cancel.events] == [(b"4", r4)]

        stream.send(
            pb.WatchRequest(
                create_request=pb.WatchCreateRequest(key=b"w/k", start_revision=r1, watch_id=9)
            )
        )
        assert stream.recv().created is True
        replayed: list[kv_pb2.Event] = []
        while len(replayed) < 4:
            resp = stream.recv()
            if resp.watch_id == 9:
                replayed.extend(resp.events)
        assert [(e.type, e.kv.mod_revision) for e in replayed] == [
            (PUT, r1),
            (PUT, r2),
            (DELETE, r3),
            (PUT, r4),
        ]
    finally:
        stream.close()


def test_watch_fragments_and_progress_notify(tmp_path: Path) -> None:
    require_etcd()
    # etcd fragments a watch response above max-request-bytes plus 512 KiB of gRPC overhead.
    with (
        start_etcd_cluster(
            tmp_path,
            max_request_bytes=65536,
            experimental_watch_progress_notify_interval="300ms",
        ) as etcd,
        grpc.insecure_channel(etcd.grpc_targets[0]) as ch,
    ):
        kv = rpc.KVStub(ch)
        revs = [
            kv.Put(pb.PutRequest(key=b"f/%02d" % i, value=b"x" * 60000)).header.revision
            for i in range(12)
        ]
        stream = BidiStream(rpc.WatchStub(ch).Watch)
        try:
            stream.send(
                pb.WatchRequest(
                    create_request=pb.WatchCreateRequest(
                        key=b"f/", range_end=b"f0", start_revision=revs[0], fragment=True
                    )
                )
            )
            fragmented_id = stream.recv().watch_id
            stream.send(
                pb.WatchRequest(
                    create_request=pb.WatchCreateRequest(
                        key=b"f/", range_end=b"f0", start_revision=revs[0], watch_id=50
                    )
                )
            )
            by_watch: dict[int, list[pb.WatchResponse]] = {fragmented_id: [], 50: []}
            while sum(len(r.events) for r in by_watch[fragmented_id]) < 12 or not by_watch[50]:
                resp = stream.recv()
                if not resp.created:
                    by_watch[resp.watch_id].append(resp)
            flags = [r.fragment for r in by_watch[fragmented_id]]
            assert len(flags) >= 2
            assert all(flags[:-1]) and not flags[-1]
            merged = [e.kv.mod_revision for r in by_watch[fragmented_id] for e in r.events]
            assert merged == revs
            # Without the fragment option the same batch comes whole.
            (whole,) = by_watch[50]
            assert (whole.fragment, [e.kv.mod_revision for e in whole.events]) == (False, revs)

            stream.send(
                pb.WatchRequest(
                    create_request=pb.WatchCreateRequest(
                        key=b"quiet", progress_notify=True, watch_id=60
                    )
                )
            )
            assert stream.recv().created is True
            notify = stream.recv()
            assert (notify.watch_id, len(notify.events)) == (60, 0)
            assert notify.header.revision == revs[-1]
        finally:
            stream.close()


# --- Lease ------------------------------------------------------------------------------------


def test_lease_grant_keepalive_ttl_list_revoke(kv: rpc.KVStub, lease: rpc.LeaseStub) -> None:
    granted = lease.LeaseGrant(pb.LeaseGrantRequest(TTL=60))
    assert granted.ID > 0
    assert (granted.TTL, granted.error) == (60, "")
    chosen = lease.LeaseGrant(pb.LeaseGrantRequest(TTL=30, ID=0x7E57))
    assert (chosen.ID, chosen.TTL) == (0x7E57, 30)
    # The minimum TTL is 1.5 election timeouts (1 s by default), rounded up to whole seconds.
    short = lease.LeaseGrant(pb.LeaseGrantRequest(TTL=1))
    assert short.TTL == 2

    kv.Put(pb.PutRequest(key=b"lease/k", value=b"v", lease=granted.ID))
    ttl = lease.LeaseTimeToLive(pb.LeaseTimeToLiveRequest(ID=granted.ID, keys=True))
    assert ttl.ID == granted.ID
    assert 55 <= ttl.TTL <= 60
    assert (ttl.grantedTTL, list(ttl.keys)) == (60, [b"lease/k"])

    stream = BidiStream(lease.LeaseKeepAlive)
    try:
        for _ in range(2):
            stream.send(pb.LeaseKeepAliveRequest(ID=granted.ID))
            renewed = stream.recv()
            assert (renewed.ID, renewed.TTL) == (granted.ID, 60)
            assert renewed.header.revision > 0

        listed = {s.ID for s in lease.LeaseLeases(pb.LeaseLeasesRequest()).leases}
        assert {granted.ID, chosen.ID, short.ID} <= listed

        revoked = lease.LeaseRevoke(pb.LeaseRevokeRequest(ID=granted.ID))
        assert kv.Range(pb.RangeRequest(key=b"lease/k")).count == 0
        assert kv.Range(pb.RangeRequest(key=b"lease/k")).header.revision == revoked.header.revision
        gone = lease.LeaseTimeToLive(pb.LeaseTimeToLiveRequest(ID=granted.ID))
        assert (gone.ID, gone.TTL) == (granted.ID, -1)
        # A keep-alive for an unknown lease is answered with TTL 0, not an error.
        stream.send(pb.LeaseKeepAliveRequest(ID=granted.ID))
        dead = stream.recv()
        assert (dead.ID, dead.TTL) == (granted.ID, 0)
    finally:
        stream.close()

    err = rpc_error(lambda: lease.LeaseRevoke(pb.LeaseRevokeRequest(ID=granted.ID)))
    assert err.code() == grpc.StatusCode.NOT_FOUND
    assert err.details() == "etcdserver: requested lease not found"
    for lid in (chosen.ID, short.ID):
        lease.LeaseRevoke(pb.LeaseRevokeRequest(ID=lid))


# --- Cluster ----------------------------------------------------------------------------------


def test_member_list_add_learner_promote_update_remove(
    etcd_cluster: EtcdCluster, cluster: rpc.ClusterStub, member: pb.Member
) -> None:
    assert member == pb.Member(
        ID=member.ID,
        name="m0",
        peerURLs=etcd_cluster.peer_urls,
        clientURLs=etcd_cluster.client_urls,
        isLearner=False,
    )
    peer = f"http://127.0.0.1:{free_port()}"
    added = cluster.MemberAdd(pb.MemberAddRequest(peerURLs=[peer], isLearner=True))
    try:
        # A member that never started has no name and no client URLs yet.
        assert added.member == pb.Member(ID=added.member.ID, peerURLs=[peer], isLearner=True)
        assert {m.ID for m in added.members} == {member.ID, added.member.ID}

        err = rpc_error(lambda: cluster.MemberPromote(pb.MemberPromoteRequest(ID=added.member.ID)))
        assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert err.details() == (
            "etcdserver: can only promote a learner member which is in sync with leader"
        )

        moved = f"http://127.0.0.1:{free_port()}"
        updated = cluster.MemberUpdate(pb.MemberUpdateRequest(ID=added.member.ID, peerURLs=[moved]))
        assert [list(m.peerURLs) for m in updated.members if m.ID == added.member.ID] == [[moved]]
    finally:
        removed = cluster.MemberRemove(pb.MemberRemoveRequest(ID=added.member.ID))
    assert [m.ID for m in removed.members] == [member.ID]


def test_three_members_agree_on_leader_and_move_leader(etcd_cluster3: EtcdCluster) -> None:
    channels = [grpc.insecure_channel(t) for t in etcd_cluster3.grpc_targets]
    try:
        listed = rpc.ClusterStub(channels[0]).MemberList(pb.MemberListRequest()).members
        assert sorted((m.name, tuple(m.peerURLs), tuple(m.clientURLs)) for m in listed) == [
            (m.name, (m.peer_url,), (m.client_url,)) for m in etcd_cluster3.members
        ]
        statuses = [rpc.MaintenanceStub(ch).Status(pb.StatusRequest()) for ch in channels]
        leaders = {s.leader for s in statuses}
        assert len(leaders) == 1
        assert leaders <= {m.ID for m in listed}
        assert sorted(s.header.member_id for s in statuses) == sorted(m.ID for m in listed)

        (leader_at,) = [i for i, s in enumerate(statuses) if s.header.member_id in leaders]
        target = next(s.header.member_id for s in statuses if s.header.member_id not in leaders)
        leader_maintenance = rpc.MaintenanceStub(channels[leader_at])
        leader_maintenance.MoveLeader(pb.MoveLeaderRequest(targetID=target), timeout=10)
        assert leader_maintenance.Status(pb.StatusRequest()).leader == target
    finally:
        for ch in channels:
            ch.close()


# --- Maintenance ------------------------------------------------------------------------------


def test_status_hash_defragment_and_snapshot(
    kv: rpc.KVStub, maintenance: rpc.MaintenanceStub, member: pb.Member
) -> None:
    kv.Put(pb.PutRequest(key=b"mnt/k", value=b"v"))
    status = maintenance.Status(pb.StatusRequest())
    assert status.version.startswith("3.4.")
    assert status.leader == status.header.member_id == member.ID
    assert status.raftTerm == status.header.raft_term >= 2
    assert status.raftIndex >= status.raftAppliedIndex > 0
    assert 0 < status.dbSizeInUse <= status.dbSize
    assert (status.isLearner, list(status.errors)) == (False, [])

    assert maintenance.Hash(pb.HashRequest()).hash != 0
    before = maintenance.Status(pb.StatusRequest()).dbSize
    # etcd 3.4 answers Defragment without a header.
    assert not maintenance.Defragment(pb.DefragmentRequest()).HasField("header")
    assert maintenance.Status(pb.StatusRequest()).dbSize <= before

    chunks = list(maintenance.Snapshot(pb.SnapshotRequest(), timeout=30))
    blob = b"".join(c.blob for c in chunks)
    remaining = [c.remaining_bytes for c in chunks]
    assert remaining[-1] == 0
    assert remaining == sorted(remaining, reverse=True)
    # A bbolt file (meta page magic 0xED0CDAED) followed by its SHA-256.
    assert blob[16:20] == (0xED0CDAED).to_bytes(4, "little")
    assert hashlib.sha256(blob[:-32]).digest() == blob[-32:]
    assert len(blob) == maintenance.Status(pb.StatusRequest()).dbSize + 32


def test_alarm_activate_list_and_deactivate(
    kv: rpc.KVStub, maintenance: rpc.MaintenanceStub, member: pb.Member
) -> None:
    listed = maintenance.Alarm(pb.AlarmRequest(action=pb.AlarmRequest.GET))
    assert list(listed.alarms) == []
    nospace = pb.AlarmRequest(action=pb.AlarmRequest.ACTIVATE, memberID=member.ID, alarm=pb.NOSPACE)
    activated = maintenance.Alarm(nospace)
    try:
        assert list(activated.alarms) == [pb.AlarmMember(memberID=member.ID, alarm=pb.NOSPACE)]
        listed = maintenance.Alarm(pb.AlarmRequest(action=pb.AlarmRequest.GET))
        assert [(a.memberID, a.alarm) for a in listed.alarms] == [(member.ID, pb.NOSPACE)]
        errors = list(maintenance.Status(pb.StatusRequest()).errors)
        assert errors == [f"memberID:{member.ID} alarm:NOSPACE "]
        err = rpc_error(lambda: kv.Put(pb.PutRequest(key=b"alarm/k", value=b"v")))
        assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert err.details() == "etcdserver: mvcc: database space exceeded"
    finally:
        maintenance.Alarm(
            pb.AlarmRequest(action=pb.AlarmRequest.DEACTIVATE, memberID=member.ID, alarm=pb.NOSPACE)
        )
    assert list(maintenance.Alarm(pb.AlarmRequest(action=pb.AlarmRequest.GET)).alarms) == []
    assert kv.Put(pb.PutRequest(key=b"alarm/k", value=b"v")).header.revision > 0


# --- Auth -------------------------------------------------------------------------------------


def test_auth_users_roles_permissions_and_enable(channel: grpc.Channel) -> None:
    auth = rpc.AuthStub(channel)
    Perm = auth_pb2.Permission
    try:
        auth.RoleAdd(pb.AuthRoleAddRequest(name="reader"))
        ranged = Perm(permType=Perm.READ, key=b"a", range_end=b"b")
        single = Perm(permType=Perm.READWRITE, key=b"x")
        for perm in (ranged, single):
            auth.RoleGrantPermission(pb.AuthRoleGrantPermissionRequest(name="reader", perm=perm))
        assert list(auth.RoleGet(pb.AuthRoleGetRequest(role="reader")).perm) == [ranged, single]

        auth.UserAdd(pb.AuthUserAddRequest(name="alice", password="pw1"))
        auth.UserAdd(
            pb.AuthUserAddRequest(name="bob", options=auth_pb2.UserAddOptions(no_password=True))
        )
        auth.UserGrantRole(pb.AuthUserGrantRoleRequest(user="alice", role="reader"))
        assert list(auth.UserGet(pb.AuthUserGetRequest(name="alice")).roles) == ["reader"]
        assert list(auth.UserList(pb.AuthUserListRequest()).users) == ["alice", "bob"]
        assert list(auth.RoleList(pb.AuthRoleListRequest()).roles) == ["reader"]
        auth.UserChangePassword(pb.AuthUserChangePasswordRequest(name="alice", password="pw2"))

        auth.UserRevokeRole(pb.AuthUserRevokeRoleRequest(name="alice", role="reader"))
        assert list(auth.UserGet(pb.AuthUserGetRequest(name="alice")).roles) == []
        auth.RoleRevokePermission(pb.AuthRoleRevokePermissionRequest(role="reader", key=b"x"))
        assert list(auth.RoleGet(pb.AuthRoleGetRequest(role="reader")).perm) == [ranged]

        missing = rpc_error(lambda: auth.UserGet(pb.AuthUserGetRequest(name="nobody")))
        assert missing.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert missing.details() == "etcdserver: user name not found"
        # AuthStatus arrived in etcd 3.5; 3.4 does not know the method.
        status = rpc_error(lambda: auth.AuthStatus(pb.AuthStatusRequest()))
        assert status.code() == grpc.StatusCode.UNIMPLEMENTED
        disabled = rpc_error(
            lambda: auth.Authenticate(pb.AuthenticateRequest(name="alice", password="pw2"))
        )
        assert disabled.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert disabled.details() == "etcdserver: authentication is not enabled"

        auth.UserAdd(pb.AuthUserAddRequest(name="root", password="rootpw"))
        auth.UserGrantRole(pb.AuthUserGrantRoleRequest(user="root", role="root"))
        auth.AuthEnable(pb.AuthEnableRequest())
        token = ""
        try:
            token = auth.Authenticate(pb.AuthenticateRequest(name="root", password="rootpw")).token
            assert token
            as_alice = auth.Authenticate(pb.AuthenticateRequest(name="alice", password="pw2"))
            assert as_alice.token and as_alice.token != token
        finally:
            auth.AuthDisable(pb.AuthDisableRequest(), metadata=[("token", token)])
    finally:
        for user in ("alice", "bob", "root"):
            try_call(lambda u=user: auth.UserDelete(pb.AuthUserDeleteRequest(name=u)))
        try_call(lambda: auth.RoleDelete(pb.AuthRoleDeleteRequest(role="reader")))
    assert list(auth.UserList(pb.AuthUserListRequest()).users) == []


def try_call(call: Callable[[], Any]) -> None:
    """Clean-up helper: the object may not exist if the test failed before creating it."""
    try:
        call()
    except grpc.RpcError as err:
        if err.code() != grpc.StatusCode.FAILED_PRECONDITION:
            raise


# --- Lock and Election ------------------------------------------------------------------------


def test_lock_holds_a_leased_key_until_unlock(
    channel: grpc.Channel, kv: rpc.KVStub, lease: rpc.LeaseStub
) -> None:
    lease_id = lease.LeaseGrant(pb.LeaseGrantRequest(TTL=60)).ID
    locks = lock_rpc.LockStub(channel)
    held = locks.Lock(lpb.LockRequest(name=b"lk", lease=lease_id), timeout=10)
    assert held.key == b"lk/" + f"{lease_id:x}".encode()
    (owner,) = kv.Range(pb.RangeRequest(key=held.key)).kvs
    assert (owner.lease, owner.create_revision) == (lease_id, held.header.revision)

    released = locks.Unlock(lpb.UnlockRequest(key=held.key))
    assert released.header.revision == held.header.revision + 1
    assert kv.Range(pb.RangeRequest(key=held.key)).count == 0
    lease.LeaseRevoke(pb.LeaseRevokeRequest(ID=lease_id))


def test_election_campaign_leader_proclaim_observe_resign(
    channel: grpc.Channel, lease: rpc.LeaseStub
) -> None:
    lease_id = lease.LeaseGrant(pb.LeaseGrantRequest(TTL=60)).ID
    election = election_rpc.ElectionStub(channel)
    won = election.Campaign(
        epb.CampaignRequest(name=b"el", lease=lease_id, value=b"v1"), timeout=10
    )
    key = b"el/" + f"{lease_id:x}".encode()
    assert won.leader == epb.LeaderKey(name=b"el", key=key, rev=won.header.revision, lease=lease_id)
    current = election.Leader(epb.LeaderRequest(name=b"el")).kv
    assert (current.key, current.value, current.lease) == (key, b"v1", lease_id)

    election.Proclaim(epb.ProclaimRequest(leader=won.leader, value=b"v2"))
    assert election.Leader(epb.LeaderRequest(name=b"el")).kv.value == b"v2"
    observed = election.Observe(epb.LeaderRequest(name=b"el"), timeout=10)
    try:
        first = next(observed).kv
        assert (first.key, first.value, first.version) == (key, b"v2", 2)
    finally:
        observed.cancel()

    election.Resign(epb.ResignRequest(leader=won.leader))
    err = rpc_error(lambda: election.Leader(epb.LeaderRequest(name=b"el")))
    assert (err.code(), err.details()) == (grpc.StatusCode.UNKNOWN, "election: no leader")
    lease.LeaseRevoke(pb.LeaseRevokeRequest(ID=lease_id))


# --- etcdctl ----------------------------------------------------------------------------------


def test_etcdctl_reads_what_the_stubs_write(etcd_cluster: EtcdCluster, kv: rpc.KVStub) -> None:
    put = kv.Put(pb.PutRequest(key=b"ctl/key", value=b"hello"))
    out = etcd_cluster.etcdctl("get", "ctl/key", "-w", "json")
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["header"]["revision"] == put.header.revision
    assert doc["header"]["member_id"] == put.header.member_id
    (item,) = doc["kvs"]
    assert base64.b64decode(item["key"]) == b"ctl/key"
    assert base64.b64decode(item["value"]) == b"hello"
    assert item["create_revision"] == item["mod_revision"] == put.header.revision

    wrote = etcd_cluster.etcdctl("put", "ctl/other", "from-etcdctl")
    assert (wrote.returncode, wrote.stdout.strip()) == (0, "OK")
    (other,) = kv.Range(pb.RangeRequest(key=b"ctl/other")).kvs
    assert (other.value, other.version) == (b"from-etcdctl", 1)
