"""Independent etcd client libraries from PyPI work against raftkv unchanged.

Each library ships its own copy of etcd's protos, which would clash with raftkv's in one
process's protobuf registry, so each scenario runs in a child process that imports only the
library. The scenario prints "OK" after asserting what it read back.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import textwrap

import pytest

from tests.support.raftkv import RaftKVCluster

AETCD_SCENARIO = """
import asyncio, sys
import aetcd

async def main(host, port):
    async with aetcd.Client(host=host, port=int(port)) as client:
        await client.put(b"/aetcd/a", b"1")
        await client.put(b"/aetcd/b", b"2")
        got = await client.get(b"/aetcd/a")
        assert got.value == b"1", got
        listed = await client.get_prefix(b"/aetcd/")
        assert [kv.value for kv in listed] == [b"1", b"2"], listed
        ok = await client.transaction(
            compare=[client.transactions.value(b"/aetcd/a") == b"1"],
            success=[client.transactions.put(b"/aetcd/a", b"swapped")],
            failure=[],
        )
        assert ok[0] is True, ok
        assert (await client.get(b"/aetcd/a")).value == b"swapped"
        await client.delete(b"/aetcd/b")
        assert await client.get(b"/aetcd/b") is None
        members = [member async for member in client.members()]
        assert len(members) == 3, members
    print("OK")

asyncio.run(main(*sys.argv[1].split(":")))
"""

ETCD3AIO_SCENARIO = """
import asyncio, sys
from etcd3aio import Etcd3Client, prefix_range_end

async def main(endpoints):
    async with Etcd3Client(endpoints) as client:
        put = await client.kv.put("/e3/a", "1")
        await client.kv.put("/e3/b", "2", prev_kv=True)
        got = await client.kv.get("/e3/a")
        assert got.kvs[0].value == b"1" and got.kvs[0].mod_revision == put.header.revision
        listed = await client.kv.get("/e3/", range_end=prefix_range_end("/e3/"))
        assert [kv.value for kv in listed.kvs] == [b"1", b"2"]
        deleted = await client.kv.delete("/e3/", range_end=prefix_range_end("/e3/"))
        assert deleted.deleted == 2
        status = await client.maintenance.status()
        assert status.version.startswith("3.4"), status.version
    print("OK")

asyncio.run(main(sys.argv[1].split(",")))
"""


def run_scenario(script: str, argument: str) -> None:
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script), argument],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0 and result.stdout.strip().endswith("OK"), (
        result.stdout + result.stderr
    )


def installed(library: str) -> bool:
    # find_spec, not import: importing the library here would clash with raftkv's protos.
    return importlib.util.find_spec(library) is not None


@pytest.mark.skipif(not installed("aetcd"), reason="aetcd is a dev dependency")
def test_aetcd_kv_txn_and_members(cluster3: RaftKVCluster) -> None:
    run_scenario(AETCD_SCENARIO, cluster3.grpc_targets[1])


@pytest.mark.skipif(not installed("etcd3aio"), reason="etcd3aio is a dev dependency")
def test_etcd3aio_kv_and_status(cluster3: RaftKVCluster) -> None:
    run_scenario(ETCD3AIO_SCENARIO, ",".join(cluster3.grpc_targets))
