"""Watches on a real 3-member raftkv cluster, through gRPC and through etcdctl 3.4."""

from __future__ import annotations

import contextlib
import queue
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from raftkv.node.raft_node import SNAPSHOT_CATCH_UP_ENTRIES
from raftkv.pb.etcdserverpb import rpc_pb2 as pb
from raftkv.pb.etcdserverpb import rpc_pb2_grpc as rpc
from raftkv.pb.mvccpb import kv_pb2

from tests.support.etcd import ETCDCTL_BIN, _ctl_env, etcdctl
from tests.support.fixtures import require_etcd
from tests.support.raftkv import RaftKVCluster, RaftKVMember, start_raftkv_cluster

pytestmark = pytest.mark.integration

PUT = kv_pb2.Event.PUT
DELETE = kv_pb2.Event.DELETE
_END = object()


class Stream:
    """A Watch call driven step by step; the whole call has one deadline so nothing hangs."""

    def __init__(self, channel: grpc.Channel, timeout: float = 20.0, metadata: Any = None) -> None:
        self._requests: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._responses = rpc.WatchStub(channel).Watch(
            iter(self._requests.get, _END), timeout=timeout, metadata=metadata
        )

    def send(self, request: pb.WatchRequest) -> None:
        self._requests.put(request)

    def create(self, key: bytes, **fields: Any) -> pb.WatchResponse:
        self.send(pb.WatchRequest(create_request=pb.WatchCreateRequest(key=key, **fields)))
        created = self.recv()
        assert created.created and not created.canceled, created
        return created

    def recv(self) -> pb.WatchResponse:
        return next(self._responses)

    def events(self, count: int) -> list[kv_pb2.Event]:
        events: list[kv_pb2.Event] = []
        while len(events) < count:
            events.extend(self.recv().events)
        assert len(events) == count
        return events

    def close(self) -> None:
        self._requests.put(_END)
        self._responses.cancel()


@contextlib.contextmanager
def watch_stream(member: RaftKVMember, **options: Any) -> Iterator[Stream]:
    with grpc.insecure_channel(member.target) as channel:
        stream = Stream(channel, **options)
        try:
            yield stream
        finally:
            stream.close()


@contextlib.contextmanager
def kv_client(member: RaftKVMember) -> Iterator[rpc.KVStub]:
    with grpc.insecure_channel(member.target) as channel:
        yield rpc.KVStub(channel)


def a_follower(cluster: RaftKVCluster) -> tuple[RaftKVMember, RaftKVMember]:
    leader = cluster.leader()
    return leader, next(m for m in cluster.members if m is not leader)


def event_tuple(event: kv_pb2.Event) -> tuple[int, bytes, bytes, int, bytes | None]:
    prev = event.prev_kv.value if event.HasField("prev_kv") else None
    return event.type, event.kv.key, event.kv.value, event.kv.mod_revision, prev


def test_follower_replays_history_then_follows_writes_made_through_the_leader(
    cluster3: RaftKVCluster,
) -> None:
    leader, follower = a_follower(cluster3)
    with kv_client(leader) as kv:
        r1 = kv.Put(pb.PutRequest(key=b"/w/a", value=b"1")).header.revision
        r2 = kv.Put(pb.PutRequest(key=b"/w/b", value=b"2")).header.revision
        kv.Put(pb.PutRequest(key=b"/x", value=b"outside"))
        r3 = kv.Put(pb.PutRequest(key=b"/w/a", value=b"3")).header.revision
        r4 = kv.DeleteRange(pb.DeleteRangeRequest(key=b"/w/b")).header.revision
        with watch_stream(follower) as stream:
            stream.create(b"/w/", range_end=b"/w0", start_revision=r1, prev_kv=True)
            assert [event_tuple(e) for e in stream.events(4)] == [
                (PUT, b"/w/a", b"1", r1, None),
                (PUT, b"/w/b", b"2", r2, None),
                (PUT, b"/w/a", b"3", r3, b"1"),
                (DELETE, b"/w/b", b"", r4, b"2"),
            ]
            r5 = kv.Put(pb.PutRequest(key=b"/w/c", value=b"4")).header.revision
            live = stream.recv()
            assert live.header.revision == r5
            assert [event_tuple(e) for e in live.events] == [(PUT, b"/w/c", b"4", r5, None)]
            # One revision deleting two keys arrives whole, in key order.
            r6 = kv.DeleteRange(pb.DeleteRangeRequest(key=b"/w/", range_end=b"/w0")).header.revision
            both = stream.recv()
            assert [event_tuple(e) for e in both.events] == [
                (DELETE, b"/w/a", b"", r6, b"3"),
                (DELETE, b"/w/c", b"", r6, b"4"),
            ]


def _etcdctl_watch(endpoint: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [str(ETCDCTL_BIN), f"--endpoints={endpoint}", "watch", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_ctl_env(),
    )


def _read_lines(process: subprocess.Popen[str], count: int, timeout: float = 15.0) -> list[str]:
    """The next `count` lines etcdctl prints (it never exits by itself)."""
    stdout = process.stdout
    assert stdout is not None
    lines: list[str] = []

    def read() -> None:
        for _ in range(count):
            lines.append(stdout.readline().rstrip("\n"))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(timeout)
    return lines


def test_etcdctl_watch_rev_prefix_prints_history_and_live_writes(cluster3: RaftKVCluster) -> None:
    require_etcd()
    leader, follower = a_follower(cluster3)
    with kv_client(leader) as kv:
        first = kv.Put(pb.PutRequest(key=b"/ctl/a", value=b"1")).header.revision
        kv.Put(pb.PutRequest(key=b"/ctl/b", value=b"2"))
        kv.Put(pb.PutRequest(key=b"/other", value=b"x"))
        kv.Put(pb.PutRequest(key=b"/ctl/a", value=b"3"))
        kv.DeleteRange(pb.DeleteRangeRequest(key=b"/ctl/b"))
        process = _etcdctl_watch(
            follower.client_url, f"--rev={first}", "--prefix", "--prev-kv", "/ctl/"
        )
        try:
            # etcdctl's simple format: the type, then (with --prev-kv, when there is one) the
            # previous key and value, then the key and value (empty for a delete).
            assert _read_lines(process, 16) == [
                "PUT", "/ctl/a", "1",
                "PUT", "/ctl/b", "2",
                "PUT", "/ctl/a", "1", "/ctl/a", "3",
                "DELETE", "/ctl/b", "2", "/ctl/b", "",
            ]  # fmt: skip
            kv.Put(pb.PutRequest(key=b"/ctl/c", value=b"live"))
            assert _read_lines(process, 3) == ["PUT", "/ctl/c", "live"]
        finally:
            process.kill()
            process.communicate()


def test_progress_request_reports_the_current_revision(cluster3: RaftKVCluster) -> None:
    leader, follower = a_follower(cluster3)
    with kv_client(leader) as kv, watch_stream(follower) as stream:
        created = stream.create(b"/p/k", watch_id=4)
        assert created.watch_id == 4
        rev = kv.Put(pb.PutRequest(key=b"/p/k", value=b"v")).header.revision
        assert [e.kv.mod_revision for e in stream.events(1)] == [rev]
        stream.send(pb.WatchRequest(progress_request=pb.WatchProgressRequest()))
        progress = stream.recv()
        assert (progress.watch_id, progress.header.revision, len(progress.events)) == (-1, rev, 0)
        assert progress.header.member_id == follower.status().header.member_id


def test_watch_from_a_compacted_revision_is_created_then_canceled(
    cluster3: RaftKVCluster,
) -> None:
    leader, follower = a_follower(cluster3)
    with kv_client(leader) as kv:
        first = kv.Put(pb.PutRequest(key=b"/c/k", value=b"1")).header.revision
        rev = kv.Put(pb.PutRequest(key=b"/c/k", value=b"2")).header.revision
        kv.Compact(pb.CompactionRequest(revision=rev, physical=True))
    with kv_client(follower) as kv:
        kv.Range(pb.RangeRequest(key=b"/c/k"))  # linearizable: the follower applied the compaction
    with watch_stream(follower) as stream:
        created = stream.create(b"/c/k", start_revision=first)
        canceled = stream.recv()
        assert (canceled.watch_id, canceled.canceled) == (created.watch_id, True)
        assert (canceled.compact_revision, canceled.header.revision) == (rev, 0)
    if ETCDCTL_BIN.exists():
        result = etcdctl(follower.client_url, "watch", f"--rev={first}", "/c/k", timeout=15)
        assert result.returncode != 0
        assert result.stderr.startswith(
            "watch was canceled (etcdserver: mvcc: required revision has been compacted)"
        )


def _expect_error(call: Callable[[], Any]) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value


def test_hasleader_watch_ends_when_its_member_loses_the_leader(cluster3: RaftKVCluster) -> None:
    _, follower = a_follower(cluster3)
    with watch_stream(follower, metadata=(("hasleader", "true"),), timeout=30) as bound:
        bound.create(b"/l/k")
        for member in cluster3.members:
            if member is not follower:
                member.kill()
        lost_at = time.monotonic()
        error = _expect_error(bound.recv)
        assert (error.code(), error.details()) == (  # type: ignore[attr-defined]
            grpc.StatusCode.UNAVAILABLE,
            "etcdserver: no leader",
        )
        assert time.monotonic() - lost_at < 20
    # A new hasleader watch on the leaderless member fails at once.
    with watch_stream(follower, metadata=(("hasleader", "true"),), timeout=10) as again:
        again.send(pb.WatchRequest(create_request=pb.WatchCreateRequest(key=b"/l/k")))
        error = _expect_error(again.recv)
        assert error.details() == "etcdserver: no leader"  # type: ignore[attr-defined]


def test_a_watcher_on_a_member_that_installs_a_snapshot_misses_nothing(tmp_path: Path) -> None:
    # The leader keeps SNAPSHOT_CATCH_UP_ENTRIES entries after each snapshot; a follower that
    # sleeps through more than that (and a snapshot) can only catch up by installing one.
    writes = SNAPSHOT_CATCH_UP_ENTRIES + 300
    with start_raftkv_cluster(tmp_path, size=3, snapshot_count=100) as cluster:
        leader, follower = a_follower(cluster)
        with kv_client(leader) as kv, watch_stream(follower, timeout=60) as stream:
            stream.create(b"/snap/", range_end=b"/snap0", watch_id=1)
            stream.create(b"/snap/7", prev_kv=True, watch_id=2)
            before = kv.Put(pb.PutRequest(key=b"/snap/7", value=b"before")).header.revision
            assert [e.kv.mod_revision for e in stream.events(2)] == [before, before]
            follower.kill(signal.SIGSTOP)
            try:
                written = []
                for chunk in range(0, writes, 1000):
                    futures = [
                        kv.Put.future(pb.PutRequest(key=b"/snap/%d" % (i % 10), value=b"%d" % i))
                        for i in range(chunk, min(chunk + 1000, writes))
                    ]
                    written.extend(f.result(timeout=30).header.revision for f in futures)
                written.sort()
            finally:
                follower.kill(signal.SIGCONT)
            by_watch: dict[int, list[kv_pb2.Event]] = {1: [], 2: []}
            while len(by_watch[1]) < writes:
                response = stream.recv()
                by_watch[response.watch_id].extend(response.events)
            assert [e.kv.mod_revision for e in by_watch[1]] == written
            sevens = [e for e in by_watch[1] if e.kv.key == b"/snap/7"]
            while len(by_watch[2]) < len(sevens):
                by_watch[2].extend(stream.recv().events)
            assert [e.kv.mod_revision for e in by_watch[2]] == [e.kv.mod_revision for e in sevens]
            previous = [b"before"] + [e.kv.value for e in sevens[:-1]]
            assert [e.prev_kv.value for e in by_watch[2]] == previous
