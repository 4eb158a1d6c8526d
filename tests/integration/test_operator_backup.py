"""The operator's backup, restore and recovery code against real raftkv clusters and MinIO,
without Kubernetes: the functions kopf's handlers call, fed what the API would give them.

- a scheduled backup, then an on-demand one, land in the bucket with the status payload
  (`lastBackup`, the BackupSucceeded condition, events) and retention applied;
- the restore init step, run once per member as each pod would, builds a new 3-member cluster
  holding the source's keyspace (HashKV equal at the backed-up revision);
- defragmentation goes follower by follower and moves leadership before the leader;
- fromSurvivor: 2 of 3 members killed and their data dirs deleted; the decision functions call
  it permanent loss and pick the survivor, whose init step rebuilds it as a one-member cluster
  with its data; the others are added back empty as learners (the operator's member
  operations) and the 3-member cluster serves the survivor's keyspace.
"""

from __future__ import annotations

import asyncio
import base64
import shutil
import signal
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from raftkv.client import SyncClient
from raftkv_operator import backups, defrag, restore
from raftkv_operator.backups import BACKUP_NOW_ANNOTATION, BackupRunner
from raftkv_operator.members import LearnerNotReady, Members
from raftkv_operator.recovery import VoterView, assess

from tests.support.raftkv import (
    RaftKVCluster,
    RaftKVMember,
    plan_raftkv_cluster,
    start_raftkv_cluster,
    wait_serving,
)
from tests.support.s3 import S3Server, s3_server

__all__ = ["s3_server"]  # the fixture, imported for this module's tests

pytestmark = pytest.mark.integration

REGION = "us-east-1"


@pytest.fixture
def source(tmp_path: Path) -> Iterator[RaftKVCluster]:
    with start_raftkv_cluster(tmp_path / "source", size=3) as cluster:
        yield cluster


def write_keys(client: SyncClient, prefix: str, count: int) -> int:
    for i in range(count):
        client.put(f"{prefix}/key{i:03d}", f"value-{i}" * (1 + i % 7))
    client.delete(f"{prefix}/key00", prefix=True)  # key000..key009
    return client.put(f"{prefix}/last", "x").header.revision


def keyspace(client: SyncClient) -> dict[bytes, tuple[bytes, int, int, int]]:
    result = client.get(b"\0", from_key=True, timeout=30)
    return {
        kv.key: (kv.value, kv.create_revision, kv.mod_revision, kv.version) for kv in result.kvs
    }


def cluster_body(bucket: str, s3: S3Server, **status: Any) -> dict[str, Any]:
    created = datetime.now(UTC) - timedelta(hours=1)
    return {
        "metadata": {
            "name": "kv",
            "namespace": "ns",
            "creationTimestamp": created.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "annotations": {},
        },
        "spec": {
            "backup": {
                "schedule": "*/5 * * * *",
                "s3": {
                    "bucket": bucket,
                    "prefix": "clusters/kv",
                    "endpoint": s3.endpoint_url,
                    "region": REGION,
                    "credentialsSecret": "backup-creds",
                },
                "retention": {"maxBackups": 1},
            }
        },
        "status": {"clusterID": "1", **status},
    }


def test_scheduled_and_requested_backups_land_in_the_bucket(
    source: RaftKVCluster, s3_server: S3Server
) -> None:
    bucket = s3_server.new_bucket()
    s3 = s3_server.client()
    with SyncClient(source.endpoints, timeout=30) as client:
        revision = write_keys(client, "data", 40)

    async def secrets(namespace: str, name: str) -> dict[str, Any]:
        assert (namespace, name) == ("ns", "backup-creds")
        return {
            "data": {
                "AWS_ACCESS_KEY_ID": base64.b64encode(s3_server.access_key.encode()).decode(),
                "AWS_SECRET_ACCESS_KEY": base64.b64encode(s3_server.secret_key.encode()).decode(),
            }
        }

    async def endpoints() -> list[str]:
        return [m.target for m in source.members]

    events: list[tuple[str, str, str]] = []

    def tick(body: dict[str, Any]) -> dict[str, Any] | None:
        return asyncio.run(
            backups.tick(
                body,
                runner=BackupRunner(),
                secrets=secrets,
                endpoints=endpoints,
                events=lambda *e: events.append(e),
            )
        )

    body = cluster_body(bucket, s3_server)
    first = tick(body)
    assert first is not None, "a slot passed since creation: the backup is due"
    last = first["lastBackup"]
    assert last["revision"] == revision and last["kind"] == "full"
    key = last["object"].removeprefix(f"s3://{bucket}/")
    assert key.startswith("clusters/kv/")
    assert s3.head_object(Bucket=bucket, Key=key)["ContentLength"] == last["size"]
    cond = next(c for c in first["conditions"] if c["type"] == "BackupSucceeded")
    assert cond["status"] == "True"
    assert events[-1][:2] == ("Normal", "BackupSucceeded")
    assert "lastScheduledBackup" in first

    # The slot is handled: nothing until a request comes.
    body["status"].update(first)
    assert tick(body) is None
    with SyncClient(source.endpoints, timeout=30) as client:
        newer = client.put("data/after-first", "y").header.revision
    body["metadata"]["annotations"][BACKUP_NOW_ANNOTATION] = "please-1"
    second = tick(body)
    assert second is not None and second["lastBackupRequest"] == "please-1"
    assert second["lastBackup"]["revision"] == newer
    # Retention (maxBackups 1) left only the newest backup and its metadata.
    listed = s3.list_objects_v2(Bucket=bucket, Prefix="clusters/kv/").get("Contents", [])
    keys = sorted(o["Key"] for o in listed)
    newest = second["lastBackup"]["object"].removeprefix(f"s3://{bucket}/")
    assert keys == [newest, newest + ".json"]


def test_restore_init_step_builds_a_new_cluster_with_the_source_data(
    source: RaftKVCluster,
    s3_server: S3Server,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    bucket = s3_server.new_bucket()
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)  # what the init container's secretKeyRef env gives
    location = f"s3://{bucket}/restore-src"
    runner = BackupRunner()
    target = backups.S3Target(bucket, "restore-src", s3_server.endpoint_url, REGION, "creds")
    with SyncClient(source.endpoints, timeout=30) as client:
        revision = write_keys(client, "restore", 50)
        expected = keyspace(client)
        want_hash = client.hash_kv(source.members[0].client_url, revision, timeout=30).hash
    result = asyncio.run(
        runner.backup(
            target,
            {
                "AWS_ACCESS_KEY_ID": s3_server.access_key,
                "AWS_SECRET_ACCESS_KEY": s3_server.secret_key,
            },
            [m.target for m in source.members],
        )
    )
    assert result.ok, result.error

    new = plan_raftkv_cluster(tmp_path / "restored", size=3)
    try:
        for member in new.members:
            args = [
                "--data-dir",
                str(member.data_dir),
                "--name",
                member.name,
                "--initial-cluster",
                new.initial_cluster,
                "--initial-cluster-state",
                "new",
                "--initial-cluster-token",
                new.initial_cluster_token,
                "--initial-advertise-peer-urls",
                member.peer_url,
                "backup",
                location,
                "--s3-endpoint",
                s3_server.endpoint_url,
            ]
            assert restore.main(args) == 0
            assert member.data_dir.is_dir()
            # A restarted pod runs the step again: its data dir is kept as it is.
            marker = member.data_dir / "kept"
            marker.write_text("")
            assert restore.main(args) == 0 and marker.exists()
            marker.unlink()
        new.start()
        with SyncClient(new.endpoints, timeout=30) as client:
            assert keyspace(client) == expected
            for member in new.members:
                answer = client.hash_kv(member.client_url, revision, timeout=30)
                assert answer.hash == want_hash, f"{member.name}: HashKV differs from the source"
            assert client.put("restored/write", "ok").header.revision == revision + 1
    finally:
        new.stop()


def _rejoin_args(member: RaftKVMember, initial_cluster: str) -> list[str]:
    """`member`'s flags for joining an existing cluster listing `initial_cluster`."""
    args = [
        a
        for a in member.args
        if not a.startswith(("--initial-cluster=", "--initial-cluster-state="))
    ]
    return [*args, f"--initial-cluster={initial_cluster}", "--initial-cluster-state=existing"]


def _wait(what: str, check: Any, timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.2)
    raise TimeoutError(what)


def test_from_survivor_recovery_brings_back_a_serving_cluster_with_its_data(
    source: RaftKVCluster,
) -> None:
    survivor, lost = source.members[0], source.members[1:]
    with SyncClient(source.endpoints, timeout=30) as client:
        write_keys(client, "survive", 60)
    with SyncClient([survivor.target], timeout=30) as client:
        expected = keyspace(client)  # a linearizable read through the survivor: it applied all
    for member in lost:
        member.kill(signal.SIGKILL)
        shutil.rmtree(member.data_dir)

    def survivor_view() -> VoterView | None:
        with SyncClient([survivor.target], timeout=5) as client:
            status = client.status(survivor.client_url, timeout=5)
        if status.leader:
            return None  # still believes in the old leader
        return VoterView(0, True, False, 0.0, True, status.raft_applied_index, False)

    view = _wait("the survivor to lose its leader", survivor_view)
    gone = [VoterView(i, False, False, float("inf")) for i in (1, 2)]
    verdict = assess([view, *gone], grace_s=300)
    assert verdict.lost and verdict.survivor == 0

    # The operator deletes the survivor's pod (SIGTERM), whose init step then rebuilds it.
    survivor.kill(signal.SIGTERM)
    step = [
        "--data-dir",
        str(survivor.data_dir),
        "--name",
        survivor.name,
        "--initial-cluster",
        source.initial_cluster,
        "--initial-cluster-state",
        "existing",
        "--initial-cluster-token",
        source.initial_cluster_token,
        "--initial-advertise-peer-urls",
        survivor.peer_url,
        "survivor",
        "--survivor",
        survivor.name,
        "--recovery-id",
        "r1",
    ]
    assert restore.main(step) == 0
    assert restore.main(step) == 0  # the next pod start does nothing
    survivor.start()
    wait_serving(survivor)
    with SyncClient([survivor.target], timeout=30) as client:
        assert keyspace(client) == expected
        assert len(client.member_list().members) == 1

    # The others come back empty, one learner at a time, as the planner's scale-up does.
    members = Members({0: survivor.client_url})
    joined = [survivor]
    for member in lost:
        added = asyncio.run(members.add_learner(member.peer_url))
        cluster = ",".join(f"{m.name}={m.peer_url}" for m in [*joined, member])
        member.args = _rejoin_args(member, cluster)
        member.start()

        def promoted(member_id: int = added.id) -> bool:
            try:
                asyncio.run(members.promote(member_id))
            except LearnerNotReady:
                return False
            return True

        _wait(f"{member.name} to be promoted", promoted)
        wait_serving(member)
        joined.append(member)
    with SyncClient(source.endpoints, timeout=30) as client:
        listed = client.member_list().members
        assert len(listed) == 3 and not any(m.is_learner for m in listed)
        revision = client.get("survive/last").header.revision
        hashes = {client.hash_kv(m.client_url, revision, timeout=30).hash for m in source.members}
        assert len(hashes) == 1
        assert keyspace(client) == expected
        client.put("after/recovery", "ok")


def test_defragmentation_moves_leadership_before_the_leader(source: RaftKVCluster) -> None:
    with SyncClient(source.endpoints, timeout=30) as client:
        write_keys(client, "defrag", 80)
        client.delete("defrag/", prefix=True)  # free pages for the defragmentation to drop
    urls = [m.client_url for m in source.members]
    old_leader = source.leader()
    done = asyncio.run(defrag.defragment_cluster(defrag.ClientCalls(urls), urls))
    assert sorted(done) == sorted(urls)
    assert done[-1] == old_leader.client_url  # the old leader went last
    with SyncClient(source.endpoints, timeout=30) as client:
        status = client.status(old_leader.client_url)
        assert status.leader and status.leader != status.header.member_id  # no longer leads
        assert client.put("after/defrag", "ok").header.revision > 0
