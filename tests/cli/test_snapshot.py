"""`raftkvctl snapshot` against real members: `etcdctl snapshot save` and `raftkvctl snapshot save`
both work, `status` describes the file, and `restore` run once per member builds a new 3-member
cluster holding the source's keyspace at the snapshot's revision. Damaged files are refused."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from raftkv.pb.etcdserverpb import rpc_pb2 as pb
from raftkv.pb.etcdserverpb import rpc_pb2_grpc as rpc

from tests.support.etcd import etcd_installed, etcdctl
from tests.support.raftkv import plan_raftkv_cluster, start_raftkv_cluster

ALL_KEYS = pb.RangeRequest(key=b"\0", range_end=b"\0", count_only=True)


def raftkvctl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "raftkv.cli.ctl", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin"},
        check=False,
    )


def status_json(path: Path) -> dict[str, int]:
    out = raftkvctl("-w", "json", "snapshot", "status", str(path))
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


@dataclass(frozen=True)
class Source:
    snapshot: Path
    revision: int
    hash_kv: int
    compact_revision: int
    key_count: int
    member_ids: frozenset[int]
    cluster_id: int


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Source]:
    """Snapshots of a written-to 3-member cluster, and what the cluster held when they were taken;
    the cluster is gone before the tests run."""
    if not etcd_installed():
        pytest.skip("etcdctl (etcd 3.4) not installed")
    root = tmp_path_factory.mktemp("snapshot")
    with start_raftkv_cluster(root, size=3) as cluster:
        eps = cluster.endpoints
        for i in range(40):
            etcdctl(eps, "put", f"k/{i % 30:02d}", f"v{i}")
        etcdctl(eps, "del", "k/07")
        compact_at = json.loads(etcdctl(eps, "get", "k/00", "-w", "json").stdout)["header"]
        etcdctl(eps, "compact", str(compact_at["revision"]))

        first = root / "first.db"
        saved = etcdctl(cluster.members[0].client_url, "snapshot", "save", str(first))
        assert saved.returncode == 0, saved.stderr
        assert saved.stdout == f"Snapshot saved at {first}\n"
        before = status_json(first)

        for i in range(5):
            etcdctl(eps, "put", f"new/{i}", "x")
        second = root / "second.db"
        saved = raftkvctl(
            f"--endpoints={cluster.members[1].client_url}", "snapshot", "save", str(second)
        )
        assert saved.returncode == 0, saved.stderr
        assert saved.stdout == f"Snapshot saved at {second}\n"
        assert not second.with_name("second.db.part").exists()
        after = status_json(second)
        # Five new keys: five more revisions, five more rows.
        assert after["revision"] == before["revision"] + 5
        assert after["totalKey"] == before["totalKey"] + 5

        with grpc.insecure_channel(cluster.members[2].target) as channel:
            kv = rpc.KVStub(channel)
            count = kv.Range(ALL_KEYS, timeout=5)
            hashed = rpc.MaintenanceStub(channel).HashKV(
                pb.HashKVRequest(revision=after["revision"]), timeout=5
            )
            members = rpc.ClusterStub(channel).MemberList(pb.MemberListRequest(), timeout=5)
        assert count.header.revision == after["revision"]
        yield Source(
            snapshot=second,
            revision=after["revision"],
            hash_kv=hashed.hash,
            compact_revision=hashed.compact_revision,
            key_count=count.count,
            member_ids=frozenset(m.ID for m in members.members),
            cluster_id=members.header.cluster_id,
        )


def test_restore_builds_a_new_cluster_with_the_snapshots_keyspace(
    source: Source, tmp_path: Path
) -> None:
    cluster = plan_raftkv_cluster(tmp_path, size=3)
    for member in cluster.members:
        restored = raftkvctl(
            "snapshot",
            "restore",
            str(source.snapshot),
            f"--name={member.name}",
            f"--data-dir={member.data_dir}",
            f"--initial-cluster={cluster.initial_cluster}",
            f"--initial-cluster-token={cluster.initial_cluster_token}",
            f"--initial-advertise-peer-urls={member.peer_url}",
        )
        assert restored.returncode == 0, restored.stderr
    cluster.start()
    with cluster:
        member_ids = set()
        for member in cluster.members:
            with grpc.insecure_channel(member.target) as channel:
                count = rpc.KVStub(channel).Range(ALL_KEYS, timeout=5)
                hashed = rpc.MaintenanceStub(channel).HashKV(
                    pb.HashKVRequest(revision=source.revision), timeout=5
                )
                members = rpc.ClusterStub(channel).MemberList(pb.MemberListRequest(), timeout=5)
            assert (count.count, count.header.revision) == (source.key_count, source.revision)
            assert (hashed.hash, hashed.compact_revision) == (
                source.hash_kv,
                source.compact_revision,
            )
            assert sorted(m.name for m in members.members) == ["m0", "m1", "m2"]
            assert members.header.cluster_id != source.cluster_id
            member_ids |= {m.ID for m in members.members}
        assert len(member_ids) == 3
        assert member_ids.isdisjoint(source.member_ids)

        put = etcdctl(cluster.endpoints, "put", "after/restore", "1", "-w", "json")
        assert json.loads(put.stdout)["header"]["revision"] == source.revision + 1
        got = etcdctl(cluster.endpoints, "get", "k/00", "--print-value-only")
        assert got.stdout == "v30\n"


def restore_into(snapshot: Path, data_dir: Path) -> subprocess.CompletedProcess[str]:
    return raftkvctl("snapshot", "restore", str(snapshot), f"--data-dir={data_dir}")


def test_a_damaged_or_truncated_snapshot_is_refused(source: Source, tmp_path: Path) -> None:
    data = source.snapshot.read_bytes()
    flipped = tmp_path / "flipped.db"
    flipped.write_bytes(data[:8192] + bytes([data[8192] ^ 0x01]) + data[8193:])
    out = restore_into(flipped, tmp_path / "flipped.raftkv")
    assert out.returncode == 1
    assert out.stderr.startswith("Error: expected sha256 ")
    assert not (tmp_path / "flipped.raftkv").exists()

    truncated = tmp_path / "truncated.db"
    truncated.write_bytes(data[: len(data) // 2 + 100])
    out = restore_into(truncated, tmp_path / "truncated.raftkv")
    assert out.returncode == 1
    assert out.stderr.startswith("Error: snapshot missing hash but --skip-hash-check=false")
    assert not (tmp_path / "truncated.raftkv").exists()

    # The intact file restores (a single-member cluster with the defaults).
    out = restore_into(source.snapshot, tmp_path / "intact.raftkv")
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "intact.raftkv" / "member" / "snap" / "db").is_file()
    again = restore_into(source.snapshot, tmp_path / "intact.raftkv")
    assert (again.returncode, again.stderr) == (
        1,
        f'Error: data-dir "{tmp_path / "intact.raftkv"}" exists\n',
    )


def test_status_formats(source: Source) -> None:
    status = status_json(source.snapshot)
    simple = raftkvctl("snapshot", "status", str(source.snapshot))
    assert simple.stdout.startswith(
        f"{status['hash']:x}, {source.revision}, {status['totalKey']}, "
    )
    table = raftkvctl("-w", "table", "snapshot", "status", str(source.snapshot)).stdout
    lines = table.splitlines()
    assert [cell.strip() for cell in lines[1].split("|")[1:-1]] == [
        "HASH",
        "REVISION",
        "TOTAL KEYS",
        "TOTAL SIZE",
    ]
    assert lines[3].split("|")[1:3] == [f" {status['hash']:x} ", f" {source.revision:>8} "]
    missing = raftkvctl("snapshot", "status", "/nonexistent.db")
    assert (missing.returncode, missing.stderr) == (
        1,
        "Error: stat /nonexistent.db: no such file or directory\n",
    )
