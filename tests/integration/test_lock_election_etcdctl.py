"""`etcdctl lock` and `etcdctl elect` against a 3-member raftkv cluster, compared with etcd 3.4.

etcdctl runs the lock and election recipes in the client (over KV, Lease and Watch); these
tests check that they behave on raftkv as on etcd: the same output (lease IDs in keys
normalised, revisions aligned by the comparison harness), mutual exclusion and queue order
between concurrent `etcdctl lock` processes (timestamps written by the commands they run), and
release of a lock whose holder dies, also when the member it talked to is SIGKILLed, and the
end of a `hasleader` Observe stream once its member has lost the leader.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from raftkv.pb.etcdserverpb import rpc_pb2 as pb
from raftkv.pb.etcdserverpb import rpc_pb2_grpc as rpc
from raftkv.pb.v3electionpb import v3election_pb2 as epb
from raftkv.pb.v3electionpb import v3election_pb2_grpc as election_rpc
from raftkv.pb.v3lockpb import v3lock_pb2 as lpb
from raftkv.pb.v3lockpb import v3lock_pb2_grpc as lock_rpc

from tests.compat.harness import CtlResult, Pair, System, start_pair
from tests.support.etcd import ETCDCTL_BIN, etcdctl
from tests.support.fixtures import require_etcd
from tests.support.raftkv import start_raftkv_cluster

pytestmark = pytest.mark.integration

# etcdctl's lock and election keys end in the session's lease ID, which differs per cluster.
_LEASE_SUFFIX = re.compile(r"/(lk|el)/[0-9a-f]{1,16}\b")


def _lease_free(text: str) -> str:
    return _LEASE_SUFFIX.sub(r"/\1/<lease>", text)


class Ctl:
    """A background etcdctl process (in its own process group) whose stdout is read as it
    comes; its stderr (client log lines) goes to a file beside it."""

    def __init__(self, out_dir: Path, endpoints: str, *args: str) -> None:
        self.out_path = out_dir / f"ctl-{uuid.uuid4().hex[:8]}.out"
        env = {k: v for k, v in os.environ.items() if not k.startswith("ETCDCTL_")}
        env["ETCDCTL_API"] = "3"
        with self.out_path.open("wb") as out, self.out_path.with_suffix(".err").open("wb") as err:
            self.process = subprocess.Popen(
                [str(ETCDCTL_BIN), f"--endpoints={endpoints}", *args],
                stdout=out,
                stderr=err,
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,
            )

    @property
    def output(self) -> str:
        return self.out_path.read_text()

    def wait_lines(self, count: int) -> None:
        wait_until(lambda: len(self.output.splitlines()) >= count, f"{count} lines")

    def interrupt(self) -> int:
        """SIGINT, as a user's Ctrl-C: etcdctl resigns or unlocks, then exits."""
        self.process.send_signal(signal.SIGINT)
        return self.process.wait(timeout=10)

    def kill(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def count_keys(target: str, prefix: bytes) -> int:
    end = prefix[:-1] + bytes([prefix[-1] + 1])
    with grpc.insecure_channel(target) as channel:
        request = pb.RangeRequest(key=prefix, range_end=end, count_only=True)
        count: int = rpc.KVStub(channel).Range(request, timeout=5).count
        return count


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    require_etcd()
    started = start_pair(tmp_path_factory.mktemp("lock-ctl"))
    try:
        yield started
    finally:
        started.stop()


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Callable[..., Ctl]]:
    """Start background etcdctl processes; every one still running is killed afterwards."""
    started: list[Ctl] = []

    def start(endpoints: str, *args: str) -> Ctl:
        ctl = Ctl(tmp_path, endpoints, *args)
        started.append(ctl)
        return ctl

    yield start
    for ctl in started:
        ctl.kill()


def test_lock_runs_the_command_while_holding_the_lock(pair: Pair) -> None:
    case = pair.case("lock-command")
    name = case.key("lk")
    show = 'echo "$ETCD_LOCK_KEY $ETCD_LOCK_REV"'
    held = case.check("lock", name, "--", "sh", "-c", show, rules=[_lease_free])
    assert (held.code, held.stdout) == (0, f"{name}/<lease> {case.rev(1)}\n")
    failed = case.check("lock", name, "--", "sh", "-c", "exit 3", rules=[_lease_free])
    assert failed.code != 0
    # Both commands released the lock when they ended.
    assert case.check("get", "--prefix", name + "/").stdout == ""


def _elect_transcript(system: System, name: str, spawn: Callable[..., Ctl]) -> list[str]:
    endpoints = system.endpoints()
    target = endpoints.split(",")[0].removeprefix("http://")
    observer = spawn(endpoints, "elect", "-l", name)
    first = spawn(endpoints, "elect", name, "p1")
    first.wait_lines(2)
    observer.wait_lines(2)
    second = spawn(endpoints, "elect", name, "p2")
    wait_until(lambda: count_keys(target, (name + "/").encode()) == 2, "p2 to queue")
    time.sleep(0.3)
    queued_output = second.output  # nothing while p1 leads
    codes = [first.interrupt()]
    second.wait_lines(2)
    observer.wait_lines(4)
    codes += [second.interrupt(), observer.interrupt()]
    outputs = [queued_output, first.output, second.output, observer.output]
    normalized = [
        system.normalize(CtlResult(o.encode(), b"", 0), rules=[_lease_free]).stdout for o in outputs
    ]
    return [*normalized, str(codes)]


def test_elect_and_listen_show_the_same_leaders_as_etcd(
    pair: Pair, spawn: Callable[..., Ctl]
) -> None:
    case = pair.case("elect")
    name = case.key("el")
    on_etcd, on_raftkv = (_elect_transcript(s, name, spawn) for s in pair.systems)
    assert on_raftkv == on_etcd
    leader1, leader2 = f"{name}/<lease>\np1\n", f"{name}/<lease>\np2\n"
    # p2 printed nothing while queued, and leads only after p1 resigned; the observer saw both.
    assert on_etcd == ["", leader1, leader2, leader1 + leader2, "[0, 0, 0]"]


def test_queued_etcdctl_locks_never_overlap_and_run_in_queue_order(
    pair: Pair, spawn: Callable[..., Ctl], tmp_path: Path
) -> None:
    cluster = pair.raftkv.cluster
    name = pair.case("lock-queue").key("lk")
    target = cluster.members[0].target
    holders = []
    for i in range(4):
        hold = "1.0" if i == 0 else "0.2"  # the first holds while the others queue
        command = (
            f"date +%s%N > {tmp_path}/{i}.start; echo $ETCD_LOCK_REV > {tmp_path}/{i}.rev; "
            f"sleep {hold}; date +%s%N > {tmp_path}/{i}.end"
        )
        member = cluster.members[i % 3]
        holders.append(spawn(member.client_url, "lock", name, "--", "sh", "-c", command))
        wait_until(
            lambda queued=i + 1: count_keys(target, (name + "/").encode()) == queued,
            f"{i} to queue",
        )
    queued_all = time.time_ns()
    for holder in holders:
        assert holder.process.wait(timeout=15) == 0, holder.output

    def read(i: int, what: str) -> int:
        return int((tmp_path / f"{i}.{what}").read_text())

    starts = [read(i, "start") for i in range(4)]
    ends = [read(i, "end") for i in range(4)]
    revisions = [read(i, "rev") for i in range(4)]
    assert ends[0] > queued_all, "the others queued while the first held the lock"
    assert starts == sorted(starts), "the holders ran in the order they queued"
    assert revisions == sorted(revisions)
    for i in range(3):
        assert ends[i] <= starts[i + 1], f"holder {i + 1} started before holder {i} ended"
    assert count_keys(target, (name + "/").encode()) == 0


def test_a_killed_holder_loses_the_lock_when_its_lease_expires(
    pair: Pair, spawn: Callable[..., Ctl]
) -> None:
    cluster = pair.raftkv.cluster
    name = pair.case("lock-killed").key("lk")
    holder = spawn(cluster.endpoints, "lock", "--ttl", "2", name, "--", "sleep", "30")
    target = cluster.members[0].target
    wait_until(lambda: count_keys(target, (name + "/").encode()) == 1, "the holder's key")
    holder.kill()
    killed = time.monotonic()
    acquired = etcdctl(cluster.endpoints, "lock", name, "--", "echo", "acquired", timeout=20)
    waited = time.monotonic() - killed
    assert (acquired.returncode, acquired.stdout) == (0, "acquired\n"), acquired.stderr
    # Not at once: the dead holder's lease (2 s, renewed every 2/3 s) had to expire first.
    assert 0.8 < waited < 2 + 3


def test_members_dying_under_a_lock_holder_a_waiter_and_an_observer(
    tmp_path: Path, spawn: Callable[..., Ctl]
) -> None:
    with start_raftkv_cluster(tmp_path) as cluster:
        leader = cluster.leader()
        follower = next(m for m in cluster.members if m is not leader)
        others = ",".join(m.client_url for m in cluster.members if m is not follower)
        holder = spawn(follower.client_url, "lock", "--ttl", "2", "lk", "--", "sleep", "30")
        wait_until(lambda: count_keys(leader.target, b"lk/") == 1, "the holder's key")
        # A server-side Lock call waiting on the same follower, under a lease nobody renews.
        with grpc.insecure_channel(follower.target) as channel:
            lease = rpc.LeaseStub(channel).LeaseGrant(pb.LeaseGrantRequest(TTL=2)).ID
            waiter = lock_rpc.LockStub(channel).Lock.future(
                lpb.LockRequest(name=b"lk", lease=lease), timeout=20
            )
            wait_until(lambda: count_keys(leader.target, b"lk/") == 2, "the waiter's key")
            follower.kill(signal.SIGKILL)
            error = waiter.exception(timeout=10)
        assert isinstance(error, grpc.RpcError)
        assert error.code() == grpc.StatusCode.UNAVAILABLE
        acquired = etcdctl(others, "lock", "lk", "--", "echo", "acquired", timeout=20)
        assert (acquired.returncode, acquired.stdout) == (0, "acquired\n"), acquired.stderr
        assert count_keys(leader.target, b"lk/") == 0
        holder.kill()

        # Then the leader dies too: an Observe asking for a leader (`hasleader`) through the
        # last member ends with etcd's "no leader" once that member has been leaderless for a
        # few election timeouts.
        last = next(m for m in cluster.members if m.alive and m is not leader)
        with grpc.insecure_channel(last.target) as channel:
            rpc.KVStub(channel).Put(pb.PutRequest(key=b"el/x", value=b"v"))
            stream = election_rpc.ElectionStub(channel).Observe(
                epb.LeaderRequest(name=b"el"), metadata=(("hasleader", "true"),), timeout=20
            )
            assert next(stream).kv.key == b"el/x"
            leader.kill(signal.SIGKILL)
            with pytest.raises(grpc.RpcError) as ended:
                next(stream)
        assert (ended.value.code(), ended.value.details()) == (
            grpc.StatusCode.UNAVAILABLE,
            "etcdserver: no leader",
        )
