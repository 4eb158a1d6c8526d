"""The RaftKVCluster's status: what `kubectl get raftkvcluster` and the conditions show.

Built from the observation and the planned step, so it always says what the operator saw and
what it is doing about it. Conditions keep their lastTransitionTime while their status does not
change, as Kubernetes conventions ask.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from raftkv_operator import planner
from raftkv_operator.model import Names

SCALING = frozenset(
    {"ScaleUp", "ScaleDown", "Promote", "RemoveLearner", "LearnerCatchingUp", "StaleVolume"}
)
UPGRADING = frozenset({"Upgrade", "UpgradeHalted"})


def image_version(image: str) -> str:
    """The tag of an image reference ("" for a digest or an untagged name)."""
    last = image.rsplit("/", 1)[-1]
    if "@" in last or ":" not in last:
        return ""
    return last.rsplit(":", 1)[1]


def _condition(
    kind: str,
    status: bool,
    reason: str,
    message: str,
    previous: Sequence[Mapping[str, Any]],
    now: str,
) -> dict[str, Any]:
    value = "True" if status else "False"
    old = next((c for c in previous if c.get("type") == kind), None)
    since = old["lastTransitionTime"] if old and old.get("status") == value else now
    return {
        "type": kind,
        "status": value,
        "reason": reason,
        "message": message,
        "lastTransitionTime": since,
    }


def build(
    *,
    names: Names,
    observed: planner.Observed,
    step: planner.Step,
    generation: int,
    previous: Mapping[str, Any],
    now: str,
    version: str,
) -> dict[str, Any]:
    members = observed.members
    old_conditions = previous.get("conditions") or []
    if members is None:
        ready = 0
        healthy_voters = 0
        voters = 0
        member_status: list[dict[str, Any]] = []
        leader = ""
    else:
        voter_list = [m for m in members if not m.learner]
        voters = len(voter_list)
        healthy_voters = sum(1 for m in voter_list if observed.healthy(m))
        ready = sum(1 for m in members if observed.healthy(m))
        member_status = []
        leader = ""
        for m in sorted(members, key=lambda m: (m.ordinal is None, m.ordinal or 0, m.id)):
            name = names.pod(m.ordinal) if m.ordinal is not None else f"{m.id:x}"
            pod = observed.pods.get(m.ordinal) if m.ordinal is not None else None
            member_status.append(
                {
                    "name": name,
                    "id": f"{m.id:x}",
                    "leader": m.leader,
                    "learner": m.learner,
                    "ready": observed.healthy(m),
                    "version": image_version(pod.image) if pod else "",
                }
            )
            if m.leader:
                leader = name
    available = members is not None and voters > 0 and healthy_voters >= planner.quorum(voters)
    degraded = isinstance(step, planner.Wait) and step.degraded
    converged = isinstance(step, planner.Converged)
    if not observed.bootstrapped and members is None:
        phase = "Creating"
    elif degraded:
        phase = "Degraded"
    elif step.reason in SCALING or (members is not None and step.reason == "Sync"):
        phase = "Scaling"
    elif step.reason in UPGRADING or (
        step.reason == "MoveLeader" and observed.pods and _mixed(observed)
    ):
        phase = "Upgrading"
    else:
        phase = "Running"
    versions = sorted({v["version"] for v in member_status if v["version"]})
    status: dict[str, Any] = {
        "phase": phase,
        "observedGeneration": generation,
        "size": len(members) if members is not None else 0,
        "readyMembers": ready,
        "leader": leader,
        "version": ",".join(versions) if versions else version,
        "selector": names.selector_string(),
        "members": member_status,
        "conditions": [
            _condition(
                "Available",
                available,
                "QuorumHealthy" if available else "QuorumUnavailable",
                f"{healthy_voters} of {voters} voters healthy",
                old_conditions,
                now,
            ),
            _condition(
                "Progressing",
                not converged and not degraded,
                "Converged" if converged else step.reason,
                step.message,
                old_conditions,
                now,
            ),
            _condition(
                "Degraded",
                degraded,
                step.reason if degraded else "Healthy",
                step.message if degraded else "no step is blocked",
                old_conditions,
                now,
            ),
        ],
    }
    if observed.cluster_id:
        status["clusterID"] = f"{observed.cluster_id:x}"
    elif previous.get("clusterID"):
        status["clusterID"] = previous["clusterID"]
    if previous.get("initialSize"):
        status["initialSize"] = previous["initialSize"]
    return status


def _mixed(observed: planner.Observed) -> bool:
    return any(p.image != observed.image for p in observed.pods.values())
