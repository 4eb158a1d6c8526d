"""`raftkvctl lock|elect|register|discover|queue` as separate processes on a real 3-member
raftkv cluster: what a shell script relying on them would notice, also while a member dies."""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.raftkv import RaftKVCluster, RaftKVMember, start_raftkv_cluster

pytestmark = pytest.mark.integration


class Ctl:
    """A raftkvctl process in its own process group; stdout goes to a file read as it grows."""

    def __init__(self, out_dir: Path, endpoints: str, *args: str) -> None:
        self.out = out_dir / f"ctl-{uuid.uuid4().hex[:8]}.out"
        env = {k: v for k, v in os.environ.items() if not k.startswith("ETCDCTL_")}
        env["ETCDCTL_ENDPOINTS"] = endpoints
        with self.out.open("wb") as out, self.out.with_suffix(".err").open("wb") as err:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "raftkv.cli.ctl", *args],
                stdout=out,
                stderr=err,
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,
            )

    @property
    def output(self) -> str:
        return self.out.read_text()

    @property
    def errors(self) -> str:
        return self.out.with_suffix(".err").read_text()

    def wait(self, timeout: float = 30) -> int:
        return self.process.wait(timeout=timeout)

    def signal(self, sig: int) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, sig)


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 15.0) -> float:
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < timeout, f"timed out waiting for {what}"
        time.sleep(0.05)
    return time.monotonic() - started


def run_ctl(endpoints: str, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ETCDCTL_")}
    return subprocess.run(
        [sys.executable, "-m", "raftkv.cli.ctl", f"--endpoints={endpoints}", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
        check=False,
    )


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RaftKVCluster]:
    with start_raftkv_cluster(tmp_path_factory.mktemp("ctl-recipes"), size=3) as started:
        yield started


@pytest.fixture
def spawn(tmp_path: Path, cluster: RaftKVCluster) -> Iterator[Callable[..., Ctl]]:
    started: list[Ctl] = []

    def start(*args: str) -> Ctl:
        ctl = Ctl(tmp_path, cluster.endpoints, *args)
        started.append(ctl)
        return ctl

    yield start
    for ctl in started:
        ctl.signal(signal.SIGKILL)
        ctl.process.wait(timeout=10)


@pytest.fixture(params=["all members up", "a member killed mid-test"])
def kill_a_member(
    request: pytest.FixtureRequest, cluster: RaftKVCluster
) -> Iterator[Callable[[], None]]:
    """Called mid-test: SIGKILLs the first follower when the test runs in its "member killed"
    variant; restarts it afterwards."""
    killed: list[RaftKVMember] = []

    def kill() -> None:
        if request.param == "all members up":
            return
        leader = cluster.leader()
        victim = next(m for m in cluster.members if m is not leader)
        victim.kill(signal.SIGKILL)
        killed.append(victim)

    yield kill
    for victim in killed:
        cluster.restart(victim)


def test_six_lock_holders_never_overlap_even_when_a_follower_is_killed(
    cluster: RaftKVCluster, spawn: Callable[..., Ctl], tmp_path: Path
) -> None:
    marks = tmp_path / "marks"
    marks.mkdir()
    script = (
        'echo "$(date +%s%N) $ETCD_LOCK_REV" > "$0/$1.start"; sleep 0.3; date +%s%N > "$0/$1.end"'
    )
    holders = [
        spawn("lock", "--ttl", "5", "/ctl/lk", "--", "sh", "-c", script, str(marks), str(i))
        for i in range(6)
    ]
    wait_until(lambda: any(marks.glob("*.start")), "a first holder")
    leader = cluster.leader()
    victim = next(m for m in cluster.members if m is not leader)
    victim.kill(signal.SIGKILL)
    try:
        codes = [h.wait(timeout=40) for h in holders]
        assert codes == [0] * 6, [h.errors for h in holders]
    finally:
        cluster.restart(victim)

    spans = []
    for i in range(6):
        start, token = (marks / f"{i}.start").read_text().split()
        spans.append((int(start), int((marks / f"{i}.end").read_text()), int(token)))
    spans.sort()
    for (_, end, token), (start, _, next_token) in itertools.pairwise(spans):
        assert end <= start, "two holders ran at the same time"
        assert next_token > token, "fencing tokens grow with each holder"
    assert run_ctl(cluster.endpoints, "get", "/ctl/lk/", "--prefix").stdout == ""


def test_lock_exits_with_the_commands_code_and_releases(cluster: RaftKVCluster) -> None:
    done = run_ctl(cluster.endpoints, "lock", "/ctl/code", "--", "sh", "-c", "exit 7")
    assert done.returncode == 7
    assert run_ctl(cluster.endpoints, "get", "/ctl/code/", "--prefix").stdout == ""
    missing = run_ctl(cluster.endpoints, "lock", "/ctl/code", "--", "/no/such/program")
    assert missing.returncode == 1 and "cannot run /no/such/program" in missing.stderr


def test_a_killed_registration_vanishes_from_discover_within_its_ttl(
    cluster: RaftKVCluster, spawn: Callable[..., Ctl], kill_a_member: Callable[[], None]
) -> None:
    ttl = 2
    register = spawn("register", "api", "api-1", "127.0.0.1:8001", "--ttl", str(ttl))
    stays = spawn("register", "api", "api-2", "127.0.0.1:8002", "--ttl", str(ttl))
    wait_until(lambda: "registered" in register.output and "registered" in stays.output, "both")
    watcher = spawn("discover", "api", "--watch")
    listed = run_ctl(cluster.endpoints, "discover", "api")
    assert listed.stdout == "api-1 127.0.0.1:8001\napi-2 127.0.0.1:8002\n"
    wait_until(lambda: "api-2" in watcher.output, "the watcher's list")
    kill_a_member()

    register.signal(signal.SIGKILL)
    killed = time.monotonic()
    wait_until(
        lambda: "api-1" not in run_ctl(cluster.endpoints, "discover", "api").stdout,
        "api-1 to vanish",
        timeout=ttl + 3,
    )
    assert time.monotonic() - killed < ttl + 3
    wait_until(lambda: "removed api-1 127.0.0.1:8001" in watcher.output, "the watcher", 3)
    assert "api-2" in run_ctl(cluster.endpoints, "discover", "api").stdout  # still alive

    stays.signal(signal.SIGTERM)  # a clean stop deregisters at once
    assert stays.wait(timeout=10) == 0
    assert run_ctl(cluster.endpoints, "discover", "api").stdout == ""
    wait_until(lambda: "removed api-2" in watcher.output, "the watcher", 3)


def test_queue_is_fifo_across_processes(
    cluster: RaftKVCluster, spawn: Callable[..., Ctl], kill_a_member: Callable[[], None]
) -> None:
    items = [f"job-{i}" for i in range(4)]
    for n, item in enumerate(items):  # each push is its own process
        if n == 2:
            kill_a_member()
        assert run_ctl(cluster.endpoints, "queue", "push", "/ctl/q", item).stdout == "OK\n"
    assert run_ctl(cluster.endpoints, "queue", "list", "/ctl/q").stdout.split() == items
    popped = [run_ctl(cluster.endpoints, "queue", "pop", "/ctl/q").stdout.strip() for _ in items]
    assert popped == items

    # Poppers waiting on an empty queue each get one item, none twice, none lost.
    poppers = [spawn("queue", "pop", "/ctl/q") for _ in range(3)]
    time.sleep(1.0)
    assert all(p.process.poll() is None for p in poppers), "pop waits for an item"
    for item in ("a", "b", "c"):
        run_ctl(cluster.endpoints, "queue", "push", "/ctl/q", item)
    assert [p.wait(timeout=15) for p in poppers] == [0, 0, 0]
    assert sorted(p.output.strip() for p in poppers) == ["a", "b", "c"]
    empty = run_ctl(cluster.endpoints, "queue", "pop", "/ctl/q", "--timeout", "0.3")
    assert empty.returncode == 1 and "stayed empty" in empty.stderr


def test_the_second_campaigner_wins_only_after_the_first_exits(
    cluster: RaftKVCluster, spawn: Callable[..., Ctl], kill_a_member: Callable[[], None]
) -> None:
    first = spawn("elect", "/ctl/el", "p1")
    wait_until(lambda: first.output.endswith("p1\n"), "p1 to lead")
    assert first.output.startswith("/ctl/el/")
    second = spawn("elect", "/ctl/el", "p2")
    kill_a_member()
    time.sleep(1.5)
    assert second.output == "", "p2 must not lead while p1 does"
    first.signal(signal.SIGTERM)
    assert first.wait(timeout=10) == 0
    waited = wait_until(lambda: second.output.endswith("p2\n"), "p2 to lead", 5)
    assert waited < 3
    observer = spawn("elect", "-l", "/ctl/el")
    wait_until(lambda: observer.output.endswith("p2\n"), "the observer")
    second.signal(signal.SIGINT)
    assert second.wait(timeout=10) == 0
    assert run_ctl(cluster.endpoints, "get", "/ctl/el/", "--prefix").stdout == ""
