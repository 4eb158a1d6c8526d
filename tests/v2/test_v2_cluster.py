"""v2 data is ordinary replicated, durable v3 data: written through one member it reads the
same on every member, and a member killed with SIGKILL and restarted still has it (and what
was written while it was down). Without `--enable-v2` the path does not exist, as in etcd."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests.support.raftkv import RaftKVMember, start_raftkv_cluster

pytestmark = pytest.mark.integration

DEADLINE_S = 60.0


def call(member: RaftKVMember, method: str, path: str, **form: str) -> tuple[int, Any]:
    data = "&".join(f"{k}={v}" for k, v in form.items()).encode() if form else None
    request = urllib.request.Request(
        f"{member.client_url}/v2/keys{path}",
        data=data,
        method=method,
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        body = error.read()
        try:
            return error.code, json.loads(body)
        except ValueError:
            return error.code, body.decode()


def without_ttl(node: dict[str, Any]) -> dict[str, Any]:
    """The node as every member stores it (the remaining TTL depends on when one asks)."""
    out = {k: v for k, v in node.items() if k != "ttl"}
    if "nodes" in node:
        out["nodes"] = [without_ttl(n) for n in node["nodes"]]
    return out


def listing(member: RaftKVMember) -> Any:
    status, body = call(member, "GET", "/svc?recursive=true&sorted=true")
    assert status == 200, body
    return body["node"]


def eventually_same(members: list[RaftKVMember], expected: Any) -> None:
    deadline = time.monotonic() + DEADLINE_S
    for member in members:
        while True:
            try:
                if without_ttl(listing(member)) == without_ttl(expected):
                    break
            except (OSError, AssertionError):
                pass
            assert time.monotonic() < deadline, f"{member.name} never listed {expected}"
            time.sleep(0.2)


def test_v2_data_is_replicated_and_survives_a_restart(tmp_path: Path) -> None:
    with start_raftkv_cluster(tmp_path, size=3, enable_v2="true") as cluster:
        first, second, third = cluster.members
        assert call(first, "PUT", "/svc/a", value="1")[0] == 201
        assert call(second, "PUT", "/svc/dir/b", value="2")[0] == 201
        assert call(third, "POST", "/svc/queue", value="job1")[0] == 201
        assert call(first, "PUT", "/svc/ttl", value="x", ttl="600")[0] == 201
        expected = listing(first)
        names = [n["key"] for n in expected["nodes"]]
        assert names == ["/svc/a", "/svc/dir", "/svc/queue", "/svc/ttl"]
        eventually_same(cluster.members, expected)

        third.kill()
        assert call(first, "POST", "/svc/queue", value="job2")[0] == 201
        status, body = call(second, "PUT", "/svc/a?prevValue=1", value="3")
        assert (status, body["action"]) == (200, "compareAndSwap")
        expected = listing(first)
        cluster.restart(third)
        eventually_same(cluster.members, expected)
        queue = next(n for n in listing(third)["nodes"] if n["key"] == "/svc/queue")
        assert [n["value"] for n in queue["nodes"]] == ["job1", "job2"]
        assert next(n for n in listing(third)["nodes"] if n["key"] == "/svc/ttl")["ttl"] > 500
        concurrent_writers_through_every_member(cluster.members)


def increment(member: RaftKVMember, times: int) -> None:
    """Compare-and-swap increments of /counter, retried when another writer got in first."""
    done = 0
    while done < times:
        status, body = call(member, "GET", "/counter")
        assert status == 200, body
        value, index = int(body["node"]["value"]), body["node"]["modifiedIndex"]
        status, body = call(member, "PUT", f"/counter?prevIndex={index}", value=str(value + 1))
        if status == 200:
            done += 1
        else:
            assert body["errorCode"] == 101, body


def concurrent_writers_through_every_member(members: list[RaftKVMember]) -> None:
    per_writer = 5
    assert call(members[0], "PUT", "/counter", value="0")[0] == 201
    with ThreadPoolExecutor(len(members) * 2) as pool:
        increments = [pool.submit(increment, m, per_writer) for m in members]
        posts = [
            pool.submit(call, m, "POST", "/jobs", value=f"{m.name}-{i}")
            for i in range(per_writer)
            for m in members
        ]
        for future in increments:
            future.result()
        created = [future.result() for future in posts]
    # no increment was lost: each compare-and-swap was atomic
    assert call(members[1], "GET", "/counter")[1]["node"]["value"] == str(per_writer * 3)
    # every POST made its own key, and the queue lists them in creation order
    assert {status for status, _ in created} == {201}
    keys = [body["node"]["key"] for _, body in created]
    listed = call(members[2], "GET", "/jobs?sorted=true")[1]["node"]["nodes"]
    assert sorted(keys) == [n["key"] for n in listed]
    by_index = sorted(listed, key=lambda n: n["createdIndex"])
    assert by_index == listed


def test_without_enable_v2_the_keys_path_is_not_found(tmp_path: Path) -> None:
    with start_raftkv_cluster(tmp_path, size=1) as cluster:
        member = cluster.members[0]
        assert call(member, "GET", "/a") == (404, "404 page not found\n")
        assert call(member, "PUT", "/a", value="1") == (404, "404 page not found\n")
