"""End to end: a stale read really served by a partitioned member is caught by the checker.

A follower is cut off by the proxy, the majority acknowledges a newer value, and the follower
answers a *serializable* read with the old one. Recorded as if it were a linearizable read,
it must make the history fail, with an explanation naming the read; without it the same
history passes. A linearizable read sent to the cut-off follower meanwhile must not return
the old value (it fails or waits), which the same checker verifies.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path

import grpc
import pytest
from raftkv.pb.etcdserverpb import rpc_pb2

from tests.robustness.harness import Harness
from tests.robustness.history import Call, Kind, Op, Result
from tests.robustness.linearizability import Verdict, check_history
from tests.robustness.workload import Endpoint

pytestmark = pytest.mark.integration


async def _get(ep: Endpoint, key: bytes, *, serializable: bool) -> Call:
    call = time.monotonic()
    resp = await ep.kv.Range(rpc_pb2.RangeRequest(key=key, serializable=serializable), timeout=5)
    kv = resp.kvs[0] if resp.kvs else None
    result = Result(
        resp.header.revision,
        kv.value.decode() if kv else None,
        kv.mod_revision if kv else 0,
    )
    return Call(1, Op(Kind.GET, key.decode()), call, time.monotonic(), result)


async def _put(ep: Endpoint, key: bytes, value: str) -> Call:
    call = time.monotonic()
    resp = await ep.kv.Put(rpc_pb2.PutRequest(key=key, value=value.encode()), timeout=10)
    return Call(
        0, Op(Kind.PUT, key.decode(), value), call, time.monotonic(), Result(resp.header.revision)
    )


def _returned(call: Call, value: str) -> bool:
    return call.result is not None and call.result.value == value


async def _scenario(tmp_path: Path) -> tuple[list[Call], Call]:
    with Harness.running(tmp_path, size=3, seed=7) as h:
        leader, follower = await h.leader(), await h.follower()
        to_leader, to_follower = (
            Endpoint(leader.name, leader.target),
            Endpoint(follower.name, follower.target),
        )
        try:
            key = b"stale"
            history = [await _put(to_leader, key, "v1")]
            deadline = time.monotonic() + 30
            while not _returned(await _get(to_follower, key, serializable=True), "v1"):
                assert time.monotonic() < deadline, "the follower never applied v1"
                await asyncio.sleep(0.1)
            h.proxy.isolate(follower.name)
            history.append(await _put(to_leader, key, "v2"))
            # A linearizable read cannot be served from the minority side: failing is fine.
            with contextlib.suppress(grpc.aio.AioRpcError):
                history.append(await _get(to_follower, key, serializable=False))
            stale = await _get(to_follower, key, serializable=True)
            h.proxy.heal()
            return history, stale
        finally:
            await to_leader.close()
            await to_follower.close()


def test_injected_stale_read_is_flagged(tmp_path: Path) -> None:
    history, stale = asyncio.run(_scenario(tmp_path))
    assert _returned(stale, "v1"), stale
    honest = check_history(history)
    assert honest.ok, honest.explain()
    report = check_history([*history, stale])
    assert report.verdict is Verdict.ILLEGAL
    explanation = report.explain()
    assert "value=v1" in explanation and "get(stale)" in explanation, explanation
    assert report.revision_violations, "the read also went back in revision"
