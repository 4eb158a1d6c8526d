"""Helpers for membership tests against real processes: etcdctl calls, joining members."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import TypeVar

from tests.support.etcd import etcdctl, free_port
from tests.support.raftkv import RaftKVCluster, RaftKVMember

T = TypeVar("T")


def ctl_ok(endpoints: str, *args: str) -> str:
    """etcdctl's stdout; the command must succeed."""
    result = etcdctl(endpoints, *args)
    assert result.returncode == 0, f"etcdctl {' '.join(args)}: {result.stderr}"
    return result.stdout


def ctl_ok_once_healthy(endpoints: str, *args: str, timeout: float = 15.0) -> str:
    """Like ctl_ok for a membership change, retried while the strict reconfiguration check
    answers "unhealthy cluster" (peer streams still coming up after a restart), as an operator
    would retry it."""
    deadline = time.monotonic() + timeout
    while True:
        result = etcdctl(endpoints, *args)
        unhealthy = "etcdserver: unhealthy cluster" in result.stderr
        if result.returncode == 0 or not unhealthy or time.monotonic() > deadline:
            assert result.returncode == 0, f"etcdctl {' '.join(args)}: {result.stderr}"
            return result.stdout
        time.sleep(0.5)


def ctl_error(endpoints: str, *args: str) -> str:
    """etcdctl's `Error: ...` line; the command must fail."""
    result = etcdctl(endpoints, *args)
    assert result.returncode != 0, f"etcdctl {' '.join(args)} succeeded: {result.stdout}"
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert errors, result.stderr
    return errors[-1]


def added_member_env(add_output: str) -> dict[str, str]:
    """The ETCD_* variables `etcdctl member add` printed for the new member."""
    env = {}
    for line in add_output.splitlines():
        if line.startswith("ETCD_"):
            key, _, value = line.partition("=")
            env[key] = value.strip('"')
    return env


def start_joining_member(
    cluster: RaftKVCluster, add_output: str, **extra_flags: str | int
) -> RaftKVMember:
    """Start the member `etcdctl member add` printed, with its flags as printed.

    The member joins `cluster.members` so that the cluster's cleanup stops it.
    """
    env = added_member_env(add_output)
    name = env["ETCD_NAME"]
    peer_url = env["ETCD_INITIAL_ADVERTISE_PEER_URLS"]
    client_url = f"http://127.0.0.1:{free_port()}"
    data_dir = cluster.root / f"{name}.raftkv"
    flags: dict[str, str | int] = {
        "name": name,
        "data-dir": str(data_dir),
        "listen-client-urls": client_url,
        "advertise-client-urls": client_url,
        "listen-peer-urls": peer_url,
        "initial-advertise-peer-urls": peer_url,
        "initial-cluster": env["ETCD_INITIAL_CLUSTER"],
        "initial-cluster-state": env["ETCD_INITIAL_CLUSTER_STATE"],
        "heartbeat-interval": 50,
        "election-timeout": 500,
        **{k.replace("_", "-"): v for k, v in extra_flags.items()},
    }
    member = RaftKVMember(
        name,
        client_url,
        peer_url,
        data_dir,
        cluster.root / f"{name}.log",
        [f"--{k}={v}" for k, v in flags.items()],
    )
    cluster.members.append(member)
    member.start()
    return member


def wait_for(probe: Callable[[], T | None], timeout: float = 20.0, what: str = "") -> T:
    """Poll `probe` until it returns something other than None (or a false value)."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or probe}")
        time.sleep(0.1)


def wait_exit(member: RaftKVMember, timeout: float = 15.0) -> int:
    """The exit status of a member that must stop by itself."""
    assert member.process is not None
    return member.process.wait(timeout=timeout)


def statuses(endpoints: str) -> list[dict]:
    """`etcdctl endpoint status -w json`, one entry per endpoint."""
    return json.loads(ctl_ok(endpoints, "endpoint", "status", "-w", "json"))


def leader_of(endpoints: str) -> int:
    leaders = {s["Status"]["leader"] for s in statuses(endpoints)}
    assert len(leaders) == 1, leaders
    return leaders.pop()


def member_ids(endpoints: str) -> dict[str, int]:
    """Member name -> ID, from `etcdctl member list -w json`."""
    listing = json.loads(ctl_ok(endpoints, "member", "list", "-w", "json"))
    return {m.get("name", ""): m["ID"] for m in listing["members"]}
