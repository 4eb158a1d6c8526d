"""raftkvctl's etcdctl commands against a real 3-member raftkv cluster: the output a script
parses (compared with etcdctl 3.4's where it is installed), errors and exit codes."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator

import pytest
from raftkv.cli.ctl import Context, main
from raftkv.cli.ctl_common import colour

from tests.support.etcd import etcd_installed, etcdctl
from tests.support.raftkv import RaftKVCluster, start_raftkv_cluster

pytestmark = pytest.mark.integration

Run = Callable[..., tuple[int, str, str]]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RaftKVCluster]:
    with start_raftkv_cluster(tmp_path_factory.mktemp("ctl-commands"), size=3) as started:
        yield started


@pytest.fixture
def ctl(cluster: RaftKVCluster, monkeypatch: pytest.MonkeyPatch) -> Run:
    def run(*argv: str, stdin: str = "") -> tuple[int, str, str]:
        monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
        out, err = io.StringIO(), io.StringIO()
        env = {"ETCDCTL_ENDPOINTS": cluster.endpoints}
        code = main(list(argv), environ=env, stdout=out, stderr=err)
        return code, out.getvalue(), err.getvalue()

    return run


def test_put_get_del_print_what_etcdctl_prints(ctl: Run, cluster: RaftKVCluster) -> None:
    assert ctl("put", "/kv/a", "1") == (0, "OK\n", "")
    assert ctl("put", "/kv/a", "2", "--prev-kv") == (0, "OK\n/kv/a\n1\n", "")
    assert ctl("put", "/kv/b", stdin="from stdin")[0] == 0
    assert ctl("get", "/kv/", "--prefix")[1] == "/kv/a\n2\n/kv/b\nfrom stdin\n"
    assert ctl("get", "/kv/", "--prefix", "--keys-only")[1] == "/kv/a\n\n/kv/b\n\n"
    assert ctl("get", "/kv/a", "--print-value-only")[1] == "2\n"
    assert (
        ctl("get", "/kv/", "--prefix", "--sort-by=MODIFY", "--order=DESCEND", "--limit=1")[1]
        == "/kv/b\nfrom stdin\n"
    )
    body = json.loads(ctl("get", "/kv/a", "-w", "json")[1])
    assert body["kvs"][0]["key"] == "L2t2L2E=" and body["count"] == 1
    assert set(body["header"]) == {"cluster_id", "member_id", "revision", "raft_term"}
    if etcd_installed():
        for args in (["get", "/kv/", "--prefix"], ["get", "/kv/a", "-w", "json"]):
            theirs = etcdctl(cluster.endpoints, *args, "--consistency=s").stdout
            ours = ctl(*args, "--consistency=s")[1]
            if "json" in args:  # the answering member differs between the two calls
                theirs, ours = (json.loads(t)["kvs"] for t in (theirs, ours))
            assert ours == theirs
    assert ctl("del", "/kv/", "--prefix", "--prev-kv")[1] == "2\n/kv/a\n2\n/kv/b\nfrom stdin\n"
    assert ctl("del", "/kv/none") == (0, "0\n", "")


def test_usage_errors_and_server_errors_exit_non_zero(ctl: Run) -> None:
    code, _, err = ctl("get")
    assert (code, err) == (
        128,
        "Error: get command needs one argument as key and an optional argument as range_end\n",
    )
    assert ctl("put", "k", "v", "-w", "table")[0] == 4
    assert ctl("put", "k", "v", "--lease=zz")[0] == 128
    code, _, err = ctl("get", "k", "--rev=100000")
    assert (code, err) == (1, "Error: etcdserver: mvcc: required revision is a future revision\n")
    code, out, err = ctl("--endpoints=127.0.0.1:1", "--command-timeout=1s", "endpoint", "health")
    assert out.startswith("127.0.0.1:1 is unhealthy: failed to commit proposal: ")
    assert (code, err) == (1, "Error: unhealthy cluster\n")


def test_txn_from_flags_and_from_etcdctls_stdin_format(ctl: Run) -> None:
    swap = (
        "txn",
        "--compare",
        'version("/tx/k") = "0"',
        "--then",
        "put /tx/k v1",
        "--then",
        "get /tx/k",
        "--else",
        "get /tx/k",
    )
    assert ctl(*swap) == (0, "SUCCESS\n\nOK\n\n/tx/k\nv1\n", "")
    assert ctl(*swap) == (0, "FAILURE\n\n/tx/k\nv1\n", "")
    stdin = 'value("/tx/k") = "v1"\nmod("/tx/k") > "0"\n\ndel /tx/k --prev-kv\n\nget /tx/k\n\n'
    code, out, _ = ctl("txn", "-w", "json", stdin=stdin)
    body = json.loads(out)
    assert code == 0 and body["succeeded"] is True
    assert body["responses"][0]["Response"]["ResponseDeleteRange"]["deleted"] == 1
    assert ctl("txn", "-i", stdin="\n\n\n")[1].startswith("compares:\n")
    assert ctl("txn", "--compare", "bogus")[0] == 3
    assert ctl("txn", "--then", "frob /x")[0] == 3


def test_lease_commands(ctl: Run) -> None:
    code, out, _ = ctl("lease", "grant", "60")
    assert code == 0 and out.startswith("lease ") and out.endswith(" granted with TTL(60s)\n")
    lease = out.split()[1]
    assert ctl("put", "/lease/k", "v", f"--lease={lease}")[0] == 0
    out = ctl("lease", "timetolive", lease, "--keys")[1]
    assert out.startswith(f"lease {lease} granted with TTL(60s), remaining(")
    assert out.endswith("attached keys([/lease/k])\n")
    assert lease in ctl("lease", "list")[1].split()
    assert (
        ctl("lease", "keep-alive", "--once", lease)[1] == f"lease {lease} keepalived with TTL(60)\n"
    )
    assert ctl("lease", "revoke", lease) == (0, f"lease {lease} revoked\n", "")
    assert ctl("get", "/lease/k")[1] == ""
    assert ctl("lease", "timetolive", lease)[1] == f"lease {lease} already expired\n"
    code, _, err = ctl("lease", "revoke", lease)
    assert (code, err) == (
        1,
        "Error: failed to revoke lease (etcdserver: requested lease not found)\n",
    )


def test_member_and_endpoint_commands(ctl: Run, cluster: RaftKVCluster) -> None:
    members = ctl("member", "list")[1].splitlines()
    assert len(members) == 3 and all(line.endswith(", false") for line in members)
    table = ctl("member", "list", "-w", "table")[1].splitlines()
    assert [c.strip() for c in table[1].split("|")[1:-1]] == [
        "ID",
        "STATUS",
        "NAME",
        "PEER ADDRS",
        "CLIENT ADDRS",
        "IS LEARNER",
    ]
    if etcd_installed():
        assert ctl("member", "list")[1] == etcdctl(cluster.endpoints, "member", "list").stdout
    first_id, _, _, peer = members[0].split(", ")[:4]
    assert ctl("member", "update", first_id, f"--peer-urls={peer}")[1].startswith(
        f"Member {first_id} updated in cluster "
    )
    assert ctl("member", "remove", "abc")[0] == 1

    status = ctl("endpoint", "status", "-w", "json")[1]
    leaders = {row["Status"]["leader"] for row in json.loads(status)}
    assert len(leaders) == 1 and 0 not in leaders
    hashes = {
        line.split(", ")[1] for line in ctl("endpoint", "hashkv", "--cluster")[1].splitlines()
    }
    assert len(hashes) == 1  # every member holds the same keyspace
    health = ctl("endpoint", "health")[1].splitlines()
    assert len(health) == 3 and all(
        " is healthy: successfully committed proposal" in h for h in health
    )
    assert ctl("defrag")[1].count("Finished defragmenting etcd member[") == 3
    assert ctl("alarm", "list") == (0, "", "")
    revision = json.loads(ctl("put", "/c/k", "v", "-w", "json")[1])["header"]["revision"]
    assert ctl("compaction", str(revision)) == (0, f"compacted revision {revision}\n", "")
    assert ctl("get", "/c/k", f"--rev={revision - 1}")[0] == 1


def test_watch_prints_changes_until_stopped(cluster: RaftKVCluster, ctl: Run) -> None:
    first = json.loads(ctl("put", "/w/a", "1", "-w", "json")[1])["header"]["revision"]
    ctl("put", "/w/a", "2")
    ctl("del", "/w/a")
    env = {**os.environ, "ETCDCTL_ENDPOINTS": cluster.endpoints}
    watch = subprocess.Popen(
        [sys.executable, "-m", "raftkv.cli.ctl", "watch", "/w/", "--prefix", f"--rev={first}"],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert watch.stdout is not None
    lines = [watch.stdout.readline() for _ in range(9)]
    watch.send_signal(signal.SIGTERM)
    assert watch.wait(timeout=10) == 0
    assert "".join(lines) == "PUT\n/w/a\n1\nPUT\n/w/a\n2\nDELETE\n/w/a\n\n"


def test_colours_only_on_a_terminal() -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    plain = Context(endpoints=("x",), write_out="simple", dial_timeout=1, command_timeout=1)
    plain.stdout = io.StringIO()
    assert colour(plain, "PUT", "green") == "PUT"
    tty = Context(endpoints=("x",), write_out="simple", dial_timeout=1, command_timeout=1)
    tty.stdout = Terminal()
    assert colour(tty, "PUT", "green") == (
        "PUT" if "NO_COLOR" in os.environ else "\033[32mPUT\033[0m"
    )
