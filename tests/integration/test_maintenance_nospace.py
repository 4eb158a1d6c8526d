"""NOSPACE end to end with etcdctl: a cluster with a small `--quota-backend-bytes` fills up, refuses
writes with etcd's error, and recovers by the documented procedure (compact, defragment every
member, disarm) without losing data. The same etcdctl session against real etcd 3.4 gives the
same output, once endpoints and numbers are normalised."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.support.etcd import etcd_installed, etcdctl, start_etcd_cluster
from tests.support.raftkv import start_raftkv_cluster

QUOTA = 4 * 1024 * 1024
BIG = "x" * 256 * 1024
NOSPACE_ERROR = "Error: etcdserver: mvcc: database space exceeded"


def fill_until_refused(endpoints: str, limit: int = 60) -> tuple[int, str]:
    """Overwrite one key with big values until a put fails; returns (exit code, last line)."""
    for _ in range(limit):
        put = etcdctl(endpoints, "put", "big", input=BIG)
        if put.returncode != 0:
            return put.returncode, put.stderr.splitlines()[-1]
    raise AssertionError(f"{limit} puts of {len(BIG)} bytes never reached the quota")


def revision(endpoints: str) -> int:
    out = etcdctl(endpoints, "get", "keep/0", "-w", "json")
    return int(json.loads(out.stdout)["header"]["revision"])


def test_nospace_refuses_writes_until_compact_defrag_disarm_and_loses_nothing(
    tmp_path: Path,
) -> None:
    with start_raftkv_cluster(tmp_path, size=3, quota_backend_bytes=QUOTA) as cluster:
        eps = cluster.endpoints
        for i in range(20):
            assert etcdctl(eps, "put", f"keep/{i}", f"v{i}").returncode == 0

        assert fill_until_refused(eps) == (1, NOSPACE_ERROR)
        assert re.fullmatch(r"memberID:\d+ alarm:NOSPACE \n", etcdctl(eps, "alarm", "list").stdout)

        # The alarm is the cluster's: every member refuses growth, even one with room left.
        for member in cluster.members:
            put = etcdctl(member.client_url, "put", "small", "v")
            assert (put.returncode, put.stderr.splitlines()[-1]) == (1, NOSPACE_ERROR)
        # Members past the quota themselves have raised their own alarms meanwhile.
        alarms = etcdctl(eps, "alarm", "list").stdout.splitlines()
        assert all(re.fullmatch(r"memberID:\d+ alarm:NOSPACE ", a) for a in alarms)
        for member in cluster.members:
            status = json.loads(
                etcdctl(member.client_url, "endpoint", "status", "-w", "json").stdout
            )
            assert sorted(status[0]["Status"]["errors"]) == sorted(alarms)
        lease = etcdctl(eps, "lease", "grant", "60")
        assert lease.stderr.splitlines()[-1] == (
            "Error: failed to grant lease (etcdserver: mvcc: database space exceeded)"
        )
        # Reads and deletes still work.
        keep = etcdctl(eps, "get", "keep/", "--prefix", "--keys-only").stdout.split()
        assert len(keep) == 20
        assert etcdctl(eps, "del", "keep/19").stdout == "1\n"

        compacted = etcdctl(eps, "compact", str(revision(eps)), "--physical")
        assert compacted.returncode == 0, compacted.stderr
        defrag = etcdctl(eps, "defrag")
        assert defrag.stdout.splitlines() == [
            f"Finished defragmenting etcd member[{m.client_url}]" for m in cluster.members
        ]
        # Defragmenting alone does not lift the alarm.
        assert etcdctl(eps, "put", "small", "v").returncode == 1
        disarmed = etcdctl(eps, "alarm", "disarm").stdout.splitlines()
        assert sorted(disarmed) == sorted(alarms)
        assert etcdctl(eps, "alarm", "list").stdout == ""

        assert etcdctl(eps, "put", "small", "v").stdout == "OK\n"
        assert etcdctl(eps, "put", "big", input=BIG).stdout == "OK\n"
        values = etcdctl(eps, "get", "keep/", "--prefix", "--print-value-only").stdout.split()
        assert values == [f"v{i}" for i in sorted(range(19), key=lambda i: f"keep/{i}")]
        for member in cluster.members:
            status = json.loads(
                etcdctl(member.client_url, "endpoint", "status", "-w", "json").stdout
            )
            assert status[0]["Status"]["dbSize"] < QUOTA


def _normalise(text: str, endpoint: str) -> str:
    text = text.replace(endpoint, "<endpoint>")
    text = re.sub(r"\{\"level\".*\n", "", text)  # clientv3's retry log lines
    text = re.sub(r"\d+", "<n>", text)
    # Table columns are as wide as their widest value (a hash has 9 or 10 digits).
    text = re.sub(r"-{2,}", "--", text)
    return re.sub(r" {2,}", " ", text)


def nospace_session(endpoint: str) -> list[tuple[str, int, str, str]]:
    """The etcdctl commands of the documented NOSPACE recovery, and what each printed."""
    transcript: list[tuple[str, int, str, str]] = []

    def run(*args: str, input: str | None = None) -> None:
        out = etcdctl(endpoint, *args, input=input)
        transcript.append(
            (
                _normalise(" ".join(args), endpoint),
                out.returncode,
                _normalise(out.stdout, endpoint),
                _normalise(out.stderr, endpoint),
            )
        )

    run("put", "keep/0", "kept")
    code, line = fill_until_refused(endpoint)
    transcript.append(("put big (until refused)", code, "", line))
    for _ in range(2):
        run("alarm", "list")
        run("-w", "json", "alarm", "list")
        run("put", "other", "x")
        run("get", "keep/0")
        run("endpoint", "hashkv")
        run("-w", "table", "endpoint", "hashkv")
        run("compact", str(revision(endpoint)), "--physical")
        run("defrag")
        run("alarm", "list")
    run("alarm", "disarm")
    run("alarm", "list")
    run("put", "other", "x")
    run("get", "other", "--print-value-only")
    return transcript


@pytest.mark.skipif(not etcd_installed(), reason="real etcd 3.4 not installed")
def test_etcdctl_sees_the_same_nospace_session_as_with_etcd(tmp_path: Path) -> None:
    quota = 2 * 1024 * 1024
    with start_etcd_cluster(tmp_path / "etcd", quota_backend_bytes=quota) as etcd:
        expected = nospace_session(etcd.endpoints)
    with start_raftkv_cluster(tmp_path / "raftkv", size=1, quota_backend_bytes=quota) as raftkv:
        actual = nospace_session(raftkv.endpoints)
    assert actual == expected
