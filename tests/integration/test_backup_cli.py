"""`raftkvctl backup ...` as a user runs it: credentials only from AWS_* variables, MinIO as the
S3-compatible endpoint, a real single-member cluster as the source and another one restored
from the bucket. Damage shows in `verify` and stops `restore`; a compaction past the last backup
makes `save --incremental` say a full backup is needed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from raftkv.client import SyncClient

from tests.support.raftkv import plan_raftkv_cluster, start_raftkv_cluster
from tests.support.s3 import S3Server, s3_server

__all__ = ["s3_server"]  # the fixture, imported for this module's tests

pytestmark = pytest.mark.integration


def raftkvctl(server: S3Server, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "raftkv.cli.ctl", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": "/usr/bin:/bin", **server.env()},
        check=False,
    )


def test_save_list_verify_restore_prune_with_raftkvctl(s3_server: S3Server, tmp_path: Path) -> None:
    location = f"s3://{s3_server.new_bucket()}/prod/main"
    s3 = ["--s3-endpoint", s3_server.endpoint_url]
    with start_raftkv_cluster(tmp_path / "source", size=1) as source:
        ctl = ["--endpoints", source.endpoints]
        with SyncClient(source.endpoints, timeout=30) as client:
            for i in range(50):
                client.put(f"cli/{i:02d}", f"v{i}")
            saved = raftkvctl(s3_server, *ctl, "backup", "save", location, *s3)
            assert saved.returncode == 0, saved.stderr
            assert saved.stdout.startswith("Backup saved: full backup s3://")

            client.delete("cli/0", prefix=True)
            revision = client.put("cli/last", "x").header.revision
            expected = {kv.key: kv.value for kv in client.get("cli/", prefix=True).kvs}
            saved = raftkvctl(
                s3_server, *ctl, "-w", "json", "backup", "save", location, *s3, "--incremental"
            )
            assert saved.returncode == 0, saved.stderr
            incremental = json.loads(saved.stdout)
            assert (incremental["kind"], incremental["revision"]) == ("incremental", revision)
            assert incremental["events"] == 11

            listed = raftkvctl(s3_server, "backup", "list", location, *s3)
            lines = listed.stdout.splitlines()
            assert [line.split(", ")[0] for line in lines] == ["full", "incremental"]
            assert lines[1].split(", ")[1] == str(revision)
            table = raftkvctl(s3_server, "-w", "table", "backup", "list", location, *s3)
            header = [c.strip() for c in table.stdout.splitlines()[1].strip("|").split("|")]
            assert header == ["KIND", "REVISION", "TIME", "SIZE", "OBJECT"]

            verified = raftkvctl(s3_server, "backup", "verify", location, *s3)
            assert verified.returncode == 0, verified.stdout + verified.stderr
            assert [line.split()[0] for line in verified.stdout.splitlines()] == ["OK", "OK"]

            pruned = raftkvctl(s3_server, "backup", "prune", location, *s3, "--keep-last", "1")
            assert pruned.returncode == 0 and "kept 2 backups, deleted 0" in pruned.stdout

            # A compaction past the newest backup: the history an incremental needs is gone.
            client.put("cli/after", "y")
            client.compact(client.put("cli/after", "z").header.revision)
            refused = raftkvctl(s3_server, *ctl, "backup", "save", location, *s3, "--incremental")
            assert refused.returncode == 1
            assert "compacted" in refused.stderr and "take a full backup" in refused.stderr

    restored = plan_raftkv_cluster(tmp_path / "restored", size=1)
    me = restored.members[0]

    def restore_args(data_dir: Path) -> list[str]:
        return [
            "backup",
            "restore",
            location,
            *s3,
            "--name",
            me.name,
            "--data-dir",
            str(data_dir),
            "--initial-cluster",
            restored.initial_cluster,
            "--initial-advertise-peer-urls",
            me.peer_url,
            "--initial-cluster-token",
            restored.initial_cluster_token,
        ]

    done = raftkvctl(s3_server, *restore_args(me.data_dir))
    assert done.returncode == 0, done.stderr
    assert f"at revision {revision}" in done.stderr and "1 incremental" in done.stderr
    with restored:
        restored.start()
        with SyncClient(restored.endpoints, timeout=30) as client:
            got = client.get("cli/", prefix=True)
            assert {kv.key: kv.value for kv in got.kvs} == expected
            assert got.header.revision == revision

    # Damage the incremental: verify names it, restore refuses and leaves no data dir.
    s3_client = s3_server.client()
    bucket, prefix = location.removeprefix("s3://").split("/", 1)
    key = incremental["key"]
    s3_client.put_object(Bucket=bucket, Key=key, Body=b"RAFTKV-EVENTS-1\n\x05abc")
    verified = raftkvctl(s3_server, "backup", "verify", location, *s3)
    assert verified.returncode == 1
    assert f"FAILED s3://{bucket}/{key}" in verified.stdout
    full_only = raftkvctl(
        s3_server, "backup", "verify", location, *s3, "--object", lines[0].split(", ")[4]
    )
    assert full_only.returncode == 0 and full_only.stdout.startswith("OK ")
    again = tmp_path / "again.raftkv"
    refused = raftkvctl(s3_server, *restore_args(again))
    assert refused.returncode == 1 and "truncated or replaced" in refused.stderr
    assert not again.exists()
    assert prefix == "prod/main"
