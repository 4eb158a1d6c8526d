"""Members dying behind the proxy are invisible to its clients, except as latency.

A 5-member cluster behind one proxy; through the proxy, with plain gRPC (no client library
that could retry or resume and hide an error): a writer, a reader, a watcher and a lease
keep-alive stream. Then the member serving the proxy's upstream watch is SIGKILLed, and after
it the leader (two of five: the cluster keeps its quorum). Every client call must succeed and
the watcher must see every write exactly once, in order, without a cancel.

One thing cannot be hidden by anyone, and is excluded by construction: a write that is on its
way to the member at the instant it dies may or may not have been applied, so the proxy
(like etcd's client) returns the error instead of sending it twice. The writer therefore
holds a lock around each Put and the test takes it to kill; between writes nothing is in
flight, and every write after the kill has to find a live member (and a new leader) through
the proxy.
"""

from __future__ import annotations

import queue
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from raftkv.pb.etcdserverpb import rpc_pb2 as pb
from raftkv.pb.etcdserverpb import rpc_pb2_grpc as rpc

from tests.proxy.support import ProxyProcess, start_proxy
from tests.support.raftkv import RaftKVCluster, RaftKVMember, start_raftkv_cluster

pytestmark = pytest.mark.integration

WAIT_S = 60.0
CALL_TIMEOUT_S = 60.0


def wait_until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.05)


def watchers_on(member: RaftKVMember) -> int:
    with urllib.request.urlopen(f"{member.client_url}/metrics", timeout=10) as response:
        for line in response.read().decode().splitlines():
            if line.startswith("etcd_debugging_mvcc_watcher_total "):
                return int(float(line.split()[1]))
    return 0


class Clients:
    """The writer, reader, watcher and keep-alive threads, all talking to the proxy."""

    def __init__(self, target: str, lease_id: int) -> None:
        self.channel = grpc.insecure_channel(target)
        self.kv = rpc.KVStub(self.channel)
        self.write_lock = threading.Lock()
        self.written: list[tuple[bytes, int]] = []
        self.seen: list[tuple[bytes, int]] = []
        self.errors: list[str] = []
        self.watch_responses: list[pb.WatchResponse] = []
        self.stop = threading.Event()
        self._watch_requests: queue.Queue[pb.WatchRequest | None] = queue.Queue()
        self._keep_alive_requests: queue.Queue[pb.LeaseKeepAliveRequest | None] = queue.Queue()
        self.renewals = 0
        self._lease_id = lease_id
        self.threads = [
            threading.Thread(target=self._guard(f), daemon=True)
            for f in (self._write, self._read, self._watch, self._keep_alive)
        ]

    def _guard(self, body: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            try:
                body()
            except Exception as error:  # any failure a client would have seen
                self.errors.append(f"{body.__name__}: {error!r}")

        return run

    def start(self) -> None:
        """The watcher first: it watches from "now", so it must exist before the first write."""
        writer, reader, watcher, keep_alive = self.threads
        watcher.start()
        wait_until(
            lambda: any(r.created for r in self.watch_responses) or bool(self.errors),
            "the watch",
        )
        for thread in (writer, reader, keep_alive):
            thread.start()

    @staticmethod
    def _join(thread: threading.Thread) -> None:
        if thread.ident is not None:  # started
            thread.join(timeout=CALL_TIMEOUT_S)

    def stop_writing(self) -> None:
        self.stop.set()
        self._join(self.threads[0])

    def close(self) -> None:
        self.stop.set()
        self._join(self.threads[1])  # the reader ends its last call
        self._watch_requests.put(None)
        self._keep_alive_requests.put(None)
        self.channel.close()
        for thread in self.threads:
            self._join(thread)

    def _write(self) -> None:
        n = 0
        while not self.stop.is_set():
            value = str(n).encode()
            with self.write_lock:
                response = self.kv.Put(
                    pb.PutRequest(key=b"f/k", value=value), timeout=CALL_TIMEOUT_S
                )
            self.written.append((value, response.header.revision))
            n += 1

    def _read(self) -> None:
        while not self.stop.is_set():
            self.kv.Range(pb.RangeRequest(key=b"f/k"), timeout=CALL_TIMEOUT_S)

    def _requests(self, source: queue.Queue[object]) -> Iterator[object]:
        while (item := source.get()) is not None:
            yield item

    def _watch(self) -> None:
        self._watch_requests.put(
            pb.WatchRequest(create_request=pb.WatchCreateRequest(key=b"f/", range_end=b"f0"))
        )
        stream = rpc.WatchStub(self.channel).Watch(self._requests(self._watch_requests))
        try:
            for response in stream:
                self.watch_responses.append(response)
                self.seen.extend((e.kv.value, e.kv.mod_revision) for e in response.events)
                if response.canceled:
                    raise AssertionError(f"the watch was canceled: {response}")
        except grpc.RpcError:
            if not self.stop.is_set():
                raise  # only closing the channel at the end may end the watch

    def _keep_alive(self) -> None:
        stream = rpc.LeaseStub(self.channel).LeaseKeepAlive(
            self._requests(self._keep_alive_requests)
        )
        while not self.stop.is_set():
            self._keep_alive_requests.put(pb.LeaseKeepAliveRequest(ID=self._lease_id))
            try:
                response = next(stream)
            except grpc.RpcError:
                if self.stop.is_set():
                    return  # the channel closed at the end
                raise
            assert response.TTL > 0, "the lease expired"
            self.renewals += 1
            self.stop.wait(1.0)
        stream.cancel()


@pytest.fixture
def cluster5(tmp_path: Path) -> Iterator[RaftKVCluster]:
    with start_raftkv_cluster(tmp_path, size=5) as cluster:
        yield cluster


@pytest.fixture
def proxy(tmp_path: Path, cluster5: RaftKVCluster) -> Iterator[ProxyProcess]:
    proxy = start_proxy(tmp_path, cluster5.endpoints)
    try:
        yield proxy
    finally:
        proxy.kill()


def test_killing_the_watched_member_and_the_leader_is_invisible_to_clients(
    cluster5: RaftKVCluster, proxy: ProxyProcess
) -> None:
    with grpc.insecure_channel(proxy.target) as channel:
        lease = rpc.LeaseStub(channel).LeaseGrant(pb.LeaseGrantRequest(TTL=5), timeout=30)
    clients = Clients(proxy.target, lease.ID)
    try:
        clients.start()

        def progress(count: int) -> None:
            target = len(clients.written) + count
            wait_until(lambda: len(clients.written) >= target or bool(clients.errors), "writes")
            assert not clients.errors, clients.errors

        progress(20)
        watched = [m for m in cluster5.members if watchers_on(m) > 0]
        assert len(watched) == 1, "the proxy holds one upstream watch"
        with clients.write_lock:
            watched[0].kill()
        progress(20)

        leader = cluster5.leader()
        with clients.write_lock:
            leader.kill()
        progress(20)
        renewals = clients.renewals
        wait_until(lambda: clients.renewals > renewals + 1, "keep-alives after the kills")

        clients.stop_writing()
        written = len(clients.written)
        try:
            wait_until(lambda: len(clients.seen) >= written or bool(clients.errors), "events")
        except TimeoutError as timeout:
            missing = sorted(set(clients.written) - set(clients.seen))[:5]
            raise AssertionError(
                f"{len(clients.seen)} of {written} writes seen; missing {missing}; "
                f"errors {clients.errors}\nproxy log:\n{proxy.log_tail()}"
            ) from timeout
    finally:
        clients.close()

    assert not clients.errors, clients.errors
    # Every write was seen once, in order; the watch was created once and never canceled.
    assert clients.seen == clients.written
    created = [r for r in clients.watch_responses if r.created]
    assert len(created) == 1
    assert not any(r.canceled for r in clients.watch_responses)
