"""The same etcdctl membership session against real etcd 3.4 and raftkv prints the same thing.

Every command runs against both 3-member clusters; outputs are compared after IDs and URLs are
replaced by names (`<m0>`, `<new>`, `<cluster>`, `<new-peer>`...), since those differ by
construction. Errors are compared by etcdctl's `Error:` line. The session covers each refusal
of MemberAdd/Promote/Update/Remove and MoveLeader, and the success outputs around them.
"""

from __future__ import annotations

import copy
import json
import re
import time
from pathlib import Path

import grpc
import pytest
from raftkv.pb.etcdserverpb import rpc_pb2 as pb
from raftkv.pb.etcdserverpb import rpc_pb2_grpc as rpc

from tests.support.etcd import EtcdCluster, etcdctl, free_port, start_etcd_cluster
from tests.support.fixtures import require_etcd
from tests.support.raftkv import RaftKVCluster, start_raftkv_cluster

pytestmark = pytest.mark.integration

# etcd refuses changes until every voter has been connected for 5 s (HealthInterval).
ETCD_HEALTH_INTERVAL = 5.0


class Session:
    """Runs etcdctl against one cluster and records outputs with identities replaced."""

    def __init__(self, cluster: EtcdCluster | RaftKVCluster) -> None:
        self.endpoints = cluster.endpoints
        urls = {m.name: (m.peer_url, m.client_url) for m in cluster.members}
        self.names: dict[str, str] = {}  # text to replace -> placeholder
        self.id_names: dict[str, str] = {}  # hex ID -> placeholder
        listing = json.loads(self.raw("member", "list", "-w", "json"))
        self.cluster_id = listing["header"]["cluster_id"]
        self.ids = {m["name"]: m["ID"] for m in listing["members"]}
        self.name_id(self.cluster_id, "cluster")
        for name, member_id in self.ids.items():
            self.name_id(member_id, name)
        for name, (peer_url, client_url) in urls.items():
            self.names[peer_url] = f"<{name}-peer>"
            self.names[client_url] = f"<{name}-client>"
        self.transcript: list[str] = []

    def name_id(self, member_id: int, name: str) -> None:
        self.id_names[f"{member_id:x}"] = f"<{name}>"

    def names_of(self, placeholder: str) -> str:
        """The real text behind a placeholder such as `m1-peer`."""
        return next(k for k, v in self.names.items() if v == f"<{placeholder}>")

    def raw(self, *args: str) -> str:
        """Output of a command that only reads (not part of the transcript)."""
        result = etcdctl(self.endpoints, "--command-timeout=15s", *args)
        assert result.returncode == 0, f"etcdctl {' '.join(args)}: {result.stderr}"
        return result.stdout

    def normalize(self, text: str) -> str:
        for key, placeholder in self.names.items():
            text = text.replace(key, placeholder)
        # etcdctl pads some IDs to 16 columns ("Member %16x ..."): padding goes with the ID.
        for hex_id, placeholder in self.id_names.items():
            text = re.sub(rf" +{hex_id}\b", f" {placeholder}", text)
            text = re.sub(rf"\b{hex_id}\b", placeholder, text)
        return text

    def run(self, *args: str, sort_lines: bool = False) -> str:
        result = etcdctl(self.endpoints, *args)
        if result.returncode == 0:
            text = result.stdout
        else:
            errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
            text = errors[-1] if errors else result.stderr
        text = self.normalize(text)
        if sort_lines:
            text = "\n".join(sorted(text.splitlines()))
        self.transcript.append(f"$ etcdctl {self.normalize(' '.join(args))}\n{text}")
        return result.stdout

    def at(self, endpoints: str) -> Session:
        """The same names and transcript, with commands sent to `endpoints` only."""
        other = copy.copy(self)
        other.endpoints = endpoints
        return other

    def leader(self) -> int:
        statuses = json.loads(self.raw("endpoint", "status", "-w", "json"))
        return statuses[0]["Status"]["leader"]


def membership_session(session: Session, new_peer: str, spare_peer: str) -> list[str]:
    session.names[new_peer] = "<new-peer>"
    session.names[spare_peer] = "<spare-peer>"
    m0, m1 = session.ids["m0"], session.ids["m1"]
    session.run("member", "add", "dup", f"--peer-urls={session.names_of('m1-peer')}")
    added = session.run("member", "add", "new", "--learner", f"--peer-urls={new_peer}")
    new = int(re.search(r"Member +([0-9a-f]+) added", added)[1], 16)  # type: ignore[index]
    session.name_id(new, "new")
    # Each line of the printed ETCD_INITIAL_CLUSTER order follows the IDs: compare as a set.
    session.transcript[-1] = _sorted_cluster_line(session.normalize(session.transcript[-1]))
    session.run("member", "list", sort_lines=True)
    session.run("member", "add", "new2", "--learner", f"--peer-urls={spare_peer}")
    session.run("member", "promote", f"{new:x}")
    session.run("member", "promote", f"{m0:x}")
    session.run("member", "promote", "1234")
    session.run("move-leader", f"{new:x}")
    session.run("move-leader", "1234")
    session.run("member", "update", "1234", f"--peer-urls={spare_peer}")
    session.run("member", "update", f"{new:x}", f"--peer-urls={session.names_of('m0-peer')}")
    session.run("member", "update", f"{new:x}", f"--peer-urls={spare_peer}")
    # Not compared: etcd 3.4 then lists the learner as a voter (its update replaces the whole
    # raft attributes, learner flag included) while Raft still treats it as a learner; raftkv
    # keeps the flag.
    session.run("member", "remove", f"{new:x}")
    session.run("member", "remove", f"{new:x}")
    session.run("member", "remove", "1234")
    leader = session.leader()
    target = m1 if leader != m1 else m0
    session.name_id(leader, "leader")
    session.name_id(target, "target")
    session.run("move-leader", f"{target:x}")
    return session.transcript


def grpc_refusals(cluster: EtcdCluster | RaftKVCluster) -> list[tuple[str, str]]:
    """(status code, message) of refused Cluster/MoveLeader calls, made without etcdctl."""
    targets = cluster.grpc_targets
    ids = []
    for target in targets:
        with grpc.insecure_channel(target) as channel:
            status = rpc.MaintenanceStub(channel).Status(pb.StatusRequest(), timeout=5)
            ids.append(status.header.member_id)
    leader = status.leader
    on_leader = targets[ids.index(leader)]
    on_follower = next(t for t in targets if t != on_leader)
    calls = [
        (on_follower, rpc.ClusterStub, "MemberAdd", pb.MemberAddRequest(peerURLs=["foo"])),
        (on_follower, rpc.ClusterStub, "MemberAdd", pb.MemberAddRequest()),
        (on_follower, rpc.ClusterStub, "MemberPromote", pb.MemberPromoteRequest(ID=leader)),
        (on_follower, rpc.ClusterStub, "MemberPromote", pb.MemberPromoteRequest(ID=0x1234)),
        (on_follower, rpc.ClusterStub, "MemberRemove", pb.MemberRemoveRequest(ID=0x1234)),
        (on_follower, rpc.MaintenanceStub, "MoveLeader", pb.MoveLeaderRequest(targetID=leader)),
        (on_leader, rpc.MaintenanceStub, "MoveLeader", pb.MoveLeaderRequest(targetID=0x1234)),
    ]
    refusals = []
    for target, stub, method, request in calls:
        with grpc.insecure_channel(target) as channel:
            try:
                getattr(stub(channel), method)(request, timeout=5)
            except grpc.RpcError as error:
                refusals.append((error.code().name, error.details()))
            else:
                refusals.append(("OK", ""))
    return refusals


def _sorted_cluster_line(entry: str) -> str:
    def sort_value(match: re.Match[str]) -> str:
        return f'ETCD_INITIAL_CLUSTER="{",".join(sorted(match[1].split(",")))}"'

    return re.sub(r'ETCD_INITIAL_CLUSTER="([^"]*)"', sort_value, entry)


def test_membership_session_prints_what_etcd_prints(tmp_path: Path) -> None:
    require_etcd()
    with start_etcd_cluster(tmp_path / "etcd", size=3) as etcd:
        etcd_started = time.monotonic()
        with start_raftkv_cluster(tmp_path / "raftkv", size=3) as raftkv:
            our_refusals = grpc_refusals(raftkv)
            ours = membership_session(
                Session(raftkv),
                f"http://127.0.0.1:{free_port()}",
                f"http://127.0.0.1:{free_port()}",
            )
        time.sleep(max(0.0, etcd_started + ETCD_HEALTH_INTERVAL + 1 - time.monotonic()))
        their_refusals = grpc_refusals(etcd)
        theirs = membership_session(
            Session(etcd),
            f"http://127.0.0.1:{free_port()}",
            f"http://127.0.0.1:{free_port()}",
        )
    assert our_refusals == their_refusals
    assert ours == theirs
