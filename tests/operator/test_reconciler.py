"""Reconcile passes against a FAKE Kubernetes API and FAKE members.

Why fakes: these tests check what one pass sends (objects applied, pods and claims deleted,
member calls made, status and Events reported) for a given observed state, deterministically
and in milliseconds. The fakes hold plain dicts exactly as the API server returns them; the real
API server and real members are exercised by tests/operator/test_members_cluster.py (members)
and the e2e tier (e2e/, a real kube-apiserver and controller manager).
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pytest
from raftkv.client import TLSConfig
from raftkv.client.types import Member
from raftkv_operator import resources
from raftkv_operator.members import ClusterState, LearnerNotReady, MemberStatus, NoMemberAnswers
from raftkv_operator.model import InvalidSpec, Names
from raftkv_operator.reconciler import Outcome, Reconciler

NOW = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
NAMES = Names("kv", "ns")
CLUSTER_ID = 0xC1


class FakeKube:
    """Objects by (kind, namespace, name); apply replaces, as server-side apply of the whole
    object the operator owns would."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.deleted: list[tuple[str, str]] = []

    async def apply(self, manifest: Mapping[str, Any]) -> dict[str, Any]:
        meta = manifest["metadata"]
        self.objects[(manifest["kind"], meta["namespace"], meta["name"])] = copy.deepcopy(
            dict(manifest)
        )
        return dict(manifest)

    async def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        return copy.deepcopy(self.objects.get((kind, namespace, name)))

    async def list(self, kind: str, namespace: str, selector: str) -> list[dict[str, Any]]:
        wanted = dict(pair.split("=") for pair in selector.split(","))
        return [
            copy.deepcopy(o)
            for (k, ns, _), o in sorted(self.objects.items())
            if k == kind
            and ns == namespace
            and wanted.items() <= (o["metadata"].get("labels") or {}).items()
        ]

    async def delete(self, kind: str, namespace: str, name: str) -> None:
        if self.objects.pop((kind, namespace, name), None) is not None:
            self.deleted.append((kind, name))

    async def annotate(
        self, kind: str, namespace: str, name: str, annotations: Mapping[str, str | None]
    ) -> None:
        notes = self.objects[(kind, namespace, name)]["metadata"].setdefault("annotations", {})
        for key, value in annotations.items():
            if value is None:
                notes.pop(key, None)
            else:
                notes[key] = value

    async def patch_cluster_status(
        self, namespace: str, name: str, status: Mapping[str, Any]
    ) -> None:
        raise AssertionError("a pass returns its status; the handler writes it")

    # Test helpers: what the StatefulSet controller and the kubelet would create.
    def add_pod(self, ordinal: int, image: str, *, ready: bool = True) -> None:
        self.objects[("Pod", "ns", NAMES.pod(ordinal))] = {
            "metadata": {
                "name": NAMES.pod(ordinal),
                "namespace": "ns",
                "labels": NAMES.labels(),
                "creationTimestamp": "2026-01-01T11:00:00Z",
            },
            "spec": {"containers": [{"name": "raftkv", "image": image}]},
            "status": {
                "podIP": f"127.0.0.{10 + ordinal}",
                "conditions": [
                    {
                        "type": "Ready",
                        "status": "True" if ready else "False",
                        "lastTransitionTime": "2026-01-01T11:59:50Z",
                    }
                ],
                "containerStatuses": [{"name": "raftkv", "restartCount": 0}],
            },
        }
        self.objects[("PersistentVolumeClaim", "ns", NAMES.volume(ordinal))] = {
            "metadata": {
                "name": NAMES.volume(ordinal),
                "namespace": "ns",
                "labels": NAMES.labels(),
            },
        }


@dataclass
class FakeMembers:
    """A cluster's member list and statuses; records the membership calls made."""

    members: list[Member] = field(default_factory=list)
    leader: int = 0
    answering: bool = True
    learner_ready: bool = True
    calls: list[tuple[str, Any]] = field(default_factory=list)

    def factory(self, endpoints: Mapping[int, str], tls: TLSConfig | None) -> FakeMembers:
        self.endpoints = dict(endpoints)
        return self

    async def observe(self) -> ClusterState:
        if not self.answering:
            raise NoMemberAnswers("nobody home")
        statuses = {
            NAMES.ordinal_of_peer_url(m.peer_urls[0]) or 0: MemberStatus(
                m.id, CLUSTER_ID, self.leader, 100, 100, m.is_learner
            )
            for m in self.members
            if m.name
        }
        return ClusterState(CLUSTER_ID, tuple(self.members), statuses)

    async def add_learner(self, peer_url: str) -> Member:
        self.calls.append(("add_learner", peer_url))
        member = Member(0x200 + len(self.members), "", (peer_url,), (), True)
        self.members.append(member)
        return member

    async def promote(self, member_id: int) -> None:
        self.calls.append(("promote", member_id))
        if not self.learner_ready:
            raise LearnerNotReady("can only promote a learner member which is in sync with leader")
        self.members = [
            Member(m.id, m.name, m.peer_urls, m.client_urls, False) if m.id == member_id else m
            for m in self.members
        ]

    async def remove(self, member_id: int) -> None:
        self.calls.append(("remove", member_id))
        self.members = [m for m in self.members if m.id != member_id]

    async def move_leader(self, target_id: int) -> None:
        self.calls.append(("move_leader", target_id))
        self.leader = target_id


def founding(n: int) -> list[Member]:
    return [Member(0x100 + i, NAMES.pod(i), (NAMES.peer_url(i),), (), False) for i in range(n)]


@dataclass
class Harness:
    kube: FakeKube = field(default_factory=FakeKube)
    members: FakeMembers = field(default_factory=FakeMembers)
    events: list[tuple[str, str, str]] = field(default_factory=list)
    body: dict[str, Any] = field(
        default_factory=lambda: {
            "apiVersion": "raftkv.io/v1alpha1",
            "kind": "RaftKVCluster",
            "metadata": {"name": "kv", "namespace": "ns", "uid": "abcdef12-3456", "generation": 1},
            "spec": {"size": 3, "version": "0.1.0"},
        }
    )

    def run(self) -> Outcome:
        reconciler = Reconciler(
            kube=self.kube,
            default_image="raftkv",
            members_factory=self.members.factory,
            clock=lambda: NOW,
        )
        outcome = asyncio.run(reconciler.run(self.body, lambda *event: self.events.append(event)))
        self.body["status"] = outcome.status  # what kopf patches back
        return outcome

    def statefulset(self) -> dict[str, Any]:
        return self.kube.objects[("StatefulSet", "ns", "kv")]

    def command(self) -> list[str]:
        return self.statefulset()["spec"]["template"]["spec"]["containers"][0]["command"]

    def running(self, n: int, image: str = "raftkv:0.1.0") -> None:
        """n founding members up and answering, on pods from the StatefulSet."""
        self.members.members = founding(n)
        self.members.leader = 0x100
        for i in range(n):
            self.kube.add_pod(i, image)


def flag(command: list[str], name: str) -> str:
    return command[command.index(name) + 1]


def test_first_pass_creates_services_pdb_and_the_founding_statefulset() -> None:
    h = Harness()
    h.members.answering = False
    outcome = h.run()
    kinds = sorted(k for k, _, _ in h.kube.objects)
    assert kinds == ["PodDisruptionBudget", "Service", "Service", "StatefulSet"]
    assert h.statefulset()["spec"]["replicas"] == 3
    assert flag(h.command(), "--initial-cluster-state") == "new"
    assert flag(h.command(), "--initial-cluster-token") == "ns-kv-abcdef12"
    owner = h.statefulset()["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["uid"]) == ("RaftKVCluster", "abcdef12-3456")
    assert not outcome.converged
    assert outcome.status["phase"] == "Creating"
    assert outcome.status["initialSize"] == 3


def test_a_formed_cluster_is_reported_and_its_pods_join_as_existing_from_then_on() -> None:
    h = Harness()
    h.members.answering = False
    h.run()
    h.members.answering = True
    h.running(3)
    outcome = h.run()
    assert outcome.converged
    status = outcome.status
    assert status["phase"] == "Running"
    assert (status["size"], status["readyMembers"], status["leader"]) == (3, 3, "kv-0")
    assert status["clusterID"] == "c1"
    assert status["members"][0] == {
        "name": "kv-0",
        "id": "100",
        "leader": True,
        "learner": False,
        "ready": True,
        "version": "0.1.0",
    }
    conditions = {c["type"]: (c["status"], c["reason"]) for c in status["conditions"]}
    assert conditions == {
        "Available": ("True", "QuorumHealthy"),
        "Progressing": ("False", "Converged"),
        "Degraded": ("False", "Healthy"),
    }
    assert flag(h.command(), "--initial-cluster-state") == "existing"
    # Each claim now records the member that uses it (to recognise a stale one later).
    claim = h.kube.objects[("PersistentVolumeClaim", "ns", "data-kv-1")]
    assert claim["metadata"]["annotations"][resources.MEMBER_ID_ANNOTATION] == "101"


def test_scale_up_adds_a_learner_grows_the_statefulset_and_promotes_it() -> None:
    h = Harness()
    h.running(3)
    h.run()
    h.body["spec"]["size"] = 4
    outcome = h.run()
    assert h.members.calls == [("add_learner", NAMES.peer_url(3))]
    assert ("Normal", "ScaleUp", "adding member 3 as a learner") in h.events
    assert not outcome.converged and outcome.status["phase"] == "Scaling"
    h.run()  # the StatefulSet follows the new member list
    assert h.statefulset()["spec"]["replicas"] == 4
    assert flag(h.command(), "--initial-cluster").count("=") == 4
    # The pod starts and the learner publishes its name and catches up.
    h.kube.add_pod(3, "raftkv:0.1.0")
    learner = h.members.members[3]
    h.members.members[3] = Member(learner.id, "kv-3", learner.peer_urls, (), True)
    h.members.learner_ready = False
    outcome = h.run()
    assert h.members.calls[-1] == ("promote", learner.id) and not outcome.converged
    h.members.learner_ready = True
    h.run()
    assert not h.members.members[3].is_learner
    assert h.run().converged


def test_scale_down_removes_the_member_then_its_pod_then_its_claim() -> None:
    h = Harness()
    h.running(4)
    h.body["spec"]["size"] = 3
    h.run()
    assert h.members.calls == [("remove", 0x103)]
    h.run()
    assert h.statefulset()["spec"]["replicas"] == 3
    del h.kube.objects[("Pod", "ns", "kv-3")]  # the StatefulSet controller deletes the pod
    h.run()
    assert ("PersistentVolumeClaim", "data-kv-3") in h.kube.deleted


def test_upgrade_updates_the_template_then_restarts_one_follower() -> None:
    h = Harness()
    h.running(3)
    h.run()
    h.body["spec"]["version"] = "0.2.0"
    h.run()
    container = h.statefulset()["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == "raftkv:0.2.0"
    assert h.kube.deleted == [("Pod", "kv-2")]
    h.run()  # kv-2 is gone and not back yet: nothing else is restarted
    assert h.kube.deleted == [("Pod", "kv-2")]


def test_a_blocked_step_posts_one_warning_not_one_per_pass() -> None:
    h = Harness()
    h.running(3)
    h.run()
    h.members.answering = False
    for _ in range(3):
        outcome = h.run()
    warnings = [e for e in h.events if e[0] == "Warning"]
    assert warnings == [("Warning", "NoQuorum", "no member answers the member list: quorum lost?")]
    assert outcome.status["phase"] == "Degraded"
    available = next(c for c in outcome.status["conditions"] if c["type"] == "Available")
    assert available["status"] == "False"


def test_an_invalid_spec_is_refused() -> None:
    h = Harness()
    h.body["spec"]["options"] = {"data-dir": "/elsewhere"}
    with pytest.raises(InvalidSpec):
        h.run()
    assert not h.kube.objects
