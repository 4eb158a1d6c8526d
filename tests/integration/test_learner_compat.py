"""A learner's whole life, driven by real etcdctl, prints the same on raftkv as on etcd 3.4.

Both 3-member clusters go through the same session: `member add --learner`, starting the fourth
member from the flags etcdctl printed, serializable reads served by it (and the calls a learner
refuses), `member promote`, `move-leader` to the promoted member, `endpoint status`/`hashkv`
over the whole cluster, `snapshot save`, `defrag --cluster`, `alarm list`, `member remove` of
the new member (which then stops). Outputs are compared after identities (IDs, URLs, paths) are
replaced by names, and the columns that differ by construction (version patch, db size, raft
term and indexes, hash values) by placeholders; hashes are checked equal within each cluster.
"""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.integration.test_membership_compat import ETCD_HEALTH_INTERVAL, Session
from tests.membership.support import added_member_env, start_joining_member, wait_for
from tests.support.etcd import (
    ETCD_BIN,
    EtcdCluster,
    EtcdMember,
    etcdctl,
    free_port,
    start_etcd_cluster,
)
from tests.support.fixtures import require_etcd
from tests.support.raftkv import RaftKVCluster, start_raftkv_cluster

pytestmark = pytest.mark.integration

# Starts the member `etcdctl member add` printed; returns its client URL and its process.
MemberStarter = Callable[[str], tuple[str, subprocess.Popen[bytes]]]

# `endpoint status -w table` columns that differ by construction between two clusters.
_VARYING_STATUS_COLUMNS = {"VERSION", "DB SIZE", "RAFT TERM", "RAFT INDEX", "RAFT APPLIED INDEX"}


def start_etcd_member(cluster: EtcdCluster) -> MemberStarter:
    def start(add_output: str) -> tuple[str, subprocess.Popen[bytes]]:
        env = added_member_env(add_output)
        name = env["ETCD_NAME"]
        member = EtcdMember(
            name=name,
            client_url=f"http://127.0.0.1:{free_port()}",
            peer_url=env["ETCD_INITIAL_ADVERTISE_PEER_URLS"],
            data_dir=cluster.root / f"{name}.etcd",
            log_path=cluster.root / f"{name}.log",
        )
        flags = [
            f"--name={name}",
            f"--data-dir={member.data_dir}",
            f"--listen-client-urls={member.client_url}",
            f"--advertise-client-urls={member.client_url}",
            f"--listen-peer-urls={member.peer_url}",
            f"--initial-advertise-peer-urls={member.peer_url}",
            f"--initial-cluster={env['ETCD_INITIAL_CLUSTER']}",
            f"--initial-cluster-state={env['ETCD_INITIAL_CLUSTER_STATE']}",
        ]
        with member.log_path.open("wb") as log:
            member.process = subprocess.Popen(
                [str(ETCD_BIN), *flags], stdout=log, stderr=subprocess.STDOUT
            )
        cluster.members.append(member)  # the cluster's stop() ends it
        return member.client_url, member.process

    return start


def start_raftkv_member(cluster: RaftKVCluster) -> MemberStarter:
    def start(add_output: str) -> tuple[str, subprocess.Popen[bytes]]:
        member = start_joining_member(cluster, add_output)
        assert member.process is not None
        return member.client_url, member.process

    return start


def normalize_status_table(text: str) -> str:
    """An `endpoint status -w table` as rows of cells, the varying columns blanked."""
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in text.splitlines()]
    rows = [row for row in rows if len(row) > 1]
    if not rows:
        return text
    header, body = rows[0], rows[1:]
    varying = {i for i, name in enumerate(header) if name in _VARYING_STATUS_COLUMNS}
    cells = [[f"<{header[i]}>" if i in varying else c for i, c in enumerate(r)] for r in body]
    return "\n".join([" | ".join(header), *(" | ".join(r) for r in cells)])


def hashes(text: str) -> set[str]:
    return set(re.findall(r", (\d+)$", text, flags=re.MULTILINE))


def learner_session(
    session: Session, start_member: MemberStarter, snapshot_file: Path
) -> list[str]:
    new_peer = f"http://127.0.0.1:{free_port()}"
    session.names[new_peer] = "<new-peer>"
    session.names[str(snapshot_file)] = "<snapshot-file>"
    session.run("put", "foo", "bar")
    session.run("put", "foo2", "baz")
    added = session.run("member", "add", "new", "--learner", f"--peer-urls={new_peer}")
    new = int(re.search(r"Member +([0-9a-f]+) added", added)[1], 16)  # type: ignore[index]
    session.name_id(new, "new")
    session.transcript[-1] = re.sub(
        r'ETCD_INITIAL_CLUSTER="([^"]*)"',
        lambda m: f'ETCD_INITIAL_CLUSTER="{",".join(sorted(m[1].split(",")))}"',
        session.normalize(session.transcript[-1]),
    )

    new_client, process = start_member(added)
    session.names[new_client] = "<new-client>"
    wait_for(
        lambda: etcdctl(new_client, "get", "foo2", "--consistency=s").stdout == "foo2\nbaz\n",
        timeout=60,
        what="the learner to serve the keys written before it joined",
    )
    at_new = session.at(new_client)
    at_new.run("get", "foo", "--consistency=s")
    at_new.run("get", "--prefix", "foo", "--consistency=s")
    at_new.run("get", "foo")
    at_new.run("put", "x", "y")
    session.run("member", "list", sort_lines=True)

    # Promotion waits for the learner to be in sync with the leader; retried as an operator would.
    deadline = time.monotonic() + 60
    while True:
        promoted = etcdctl(session.endpoints, "member", "promote", f"{new:x}")
        if promoted.returncode == 0 or time.monotonic() > deadline:
            break
        assert "in sync with leader" in promoted.stderr, promoted.stderr
        time.sleep(0.5)
    promoted_text = session.normalize(promoted.stdout or promoted.stderr)
    session.transcript.append(f"$ etcdctl member promote <new>\n{promoted_text}")
    session.run("member", "list", sort_lines=True)
    at_new.run("get", "foo")
    at_new.run("put", "written-at-new", "1")

    session.run("move-leader", f"{new:x}")
    # Which member led before is up to each cluster's election.
    session.transcript[-1] = re.sub(r"from <m\d>", "from <old-leader>", session.transcript[-1])
    session.run("get", "written-at-new")

    status = session.run("endpoint", "status", "--cluster", "-w", "table")
    header, *rows = normalize_status_table(session.normalize(status)).splitlines()
    session.transcript[-1] = "\n".join(
        ["$ etcdctl endpoint status --cluster -w table", header, *sorted(rows)]
    )
    hashkv = session.run("endpoint", "hashkv", "--cluster")
    assert len(hashes(hashkv)) == 1, f"members disagree on the hash: {hashkv}"
    session.transcript[-1] = re.sub(r", \d+$", ", <hash>", session.transcript[-1], flags=re.M)
    session.transcript[-1] = "\n".join(sorted(session.transcript[-1].splitlines()))

    at_new.run("snapshot", "save", str(snapshot_file))
    assert snapshot_file.stat().st_size > 0
    session.run("defrag", "--cluster", sort_lines=True)
    session.run("alarm", "list")
    session.run("member", "remove", f"{new:x}")
    session.run("member", "list", sort_lines=True)
    session.run("get", "--prefix", "foo")
    process.wait(timeout=30)  # a removed member stops by itself
    return session.transcript


def test_learner_lifecycle_prints_what_etcd_prints(tmp_path: Path) -> None:
    require_etcd()
    with start_raftkv_cluster(tmp_path / "raftkv", size=3) as raftkv:
        ours = learner_session(
            Session(raftkv), start_raftkv_member(raftkv), tmp_path / "raftkv.snapshot"
        )
    with start_etcd_cluster_settled(tmp_path / "etcd") as etcd:
        theirs = learner_session(Session(etcd), start_etcd_member(etcd), tmp_path / "etcd.snapshot")
    (tmp_path / "raftkv.transcript").write_text("\n".join(ours))
    (tmp_path / "etcd.transcript").write_text("\n".join(theirs))
    assert "\n".join(ours) == "\n".join(theirs)


def start_etcd_cluster_settled(root: Path) -> EtcdCluster:
    """A 3-member etcd that accepts membership changes (every voter connected for 5 s)."""
    cluster = start_etcd_cluster(root, size=3)
    time.sleep(ETCD_HEALTH_INTERVAL + 1)
    return cluster
