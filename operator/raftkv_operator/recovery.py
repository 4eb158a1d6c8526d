"""Disaster recovery: bring back a cluster that lost quorum for good, per `spec.recovery.policy`.

Quorum lost *permanently* means no member knows a leader and a majority of the voters either lost
their data (their claim is gone, or it was recreated empty: it no longer carries the member-id
annotation the operator puts on claims of healthy members) or has been down longer than
`spec.recovery.gracePeriodSeconds`. A brief loss (pods restarting, a slow election, a node
reboot) stays below the grace and is left to Raft. `assess` decides this as a pure function.

Policies:
- `manual` (default): report it (status.recovery, a Warning event) and do nothing. Automatic
  recovery drops whatever the lost majority acknowledged and the survivor did not apply, so it
  is opt-in.
- `fromSurvivor`: the surviving member with the highest applied index (lowest ordinal on a tie)
  restarts as the only member of a new cluster holding everything it applied (the init step in
  `restore`); the ordinary scale-up then adds the others back empty, as learners.
- `fromBackup`: everything is deleted (pods, claims, StatefulSet) and the cluster is bootstrapped
  again from the newest backup under `spec.backup.s3` (the `restore` init step).

While a recovery runs, `status.recovery` says which one ({id, policy, phase, survivor,
startedAt, finishedAt, message}); `restore.pod_init` reads it to put the init step in the pod
template. The actions are idempotent: a pass cut off anywhere is finished by the next.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from raftkv.client import AsyncClient, TLSConfig, errors

from raftkv_operator import resources, restore
from raftkv_operator.kube import Kube
from raftkv_operator.model import CLIENT_PORT, ClusterSpec, InvalidSpec, Names

POLICIES = ("manual", "fromSurvivor", "fromBackup")
DEFAULT_GRACE_S = 300
RECOVERING = "Recovering"
SUCCEEDED = "Succeeded"
QUORUM_LOST = "QuorumLost"
STATUS_TIMEOUT_S = 2.0


@dataclass(frozen=True)
class RecoverySpec:
    policy: str = "manual"
    grace_s: float = DEFAULT_GRACE_S

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any]) -> RecoverySpec:
        raw = spec.get("recovery") or {}
        policy = str(raw.get("policy") or "manual")
        if policy not in POLICIES:
            raise InvalidSpec(f"spec.recovery.policy must be one of {', '.join(POLICIES)}")
        if policy == "fromBackup" and not spec.get("backup"):
            raise InvalidSpec("spec.recovery.policy fromBackup needs spec.backup (the bucket)")
        grace = float(raw.get("gracePeriodSeconds", DEFAULT_GRACE_S))
        if grace < 0:
            raise InvalidSpec("spec.recovery.gracePeriodSeconds must not be negative")
        return cls(policy, grace)


# ---- deciding -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class VoterView:
    """One voter of the last known membership, as Kubernetes and its own Status show it."""

    ordinal: int
    has_data: bool  # its claim exists and still carries the member-id annotation
    ready: bool
    unready_for_s: float
    answered: bool = False  # answered Status on its pod IP
    applied_index: int = 0
    knows_leader: bool = False


@dataclass(frozen=True)
class Assessment:
    lost: bool  # quorum lost permanently
    reason: str
    survivor: int | None = None  # the ordinal fromSurvivor would restart


def quorum(voters: int) -> int:
    return voters // 2 + 1


def choose_survivor(voters: Sequence[VoterView]) -> int | None:
    """The member with data that answered with the highest applied index (lowest ordinal on a
    tie): the one that loses the fewest writes."""
    candidates = [v for v in voters if v.has_data and v.answered]
    if not candidates:
        return None
    return max(candidates, key=lambda v: (v.applied_index, -v.ordinal)).ordinal


def assess(voters: Sequence[VoterView], grace_s: float) -> Assessment:
    if not voters:
        return Assessment(False, "no known membership")
    if any(v.knows_leader for v in voters):
        return Assessment(False, "a member knows a leader")
    gone = [v for v in voters if not v.has_data]
    down = [v for v in voters if v.has_data and not v.answered and v.unready_for_s >= grace_s]
    needed = quorum(len(voters))
    survivor = choose_survivor(voters)
    if len(gone) >= needed:
        return Assessment(
            True,
            f"{len(gone)} of {len(voters)} voters lost their data "
            f"({', '.join(str(v.ordinal) for v in gone)})",
            survivor,
        )
    if len(gone) + len(down) >= needed:
        return Assessment(
            True,
            f"{len(gone)} of {len(voters)} voters lost their data and {len(down)} have been down "
            f"for more than {grace_s:g} s",
            survivor,
        )
    return Assessment(False, "no leader, but not for long enough to act (within the grace)")


# ---- observing ----------------------------------------------------------------------------------


def _parse_time(value: str | None) -> datetime | None:
    if not value:
        return None
    return datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)


def _format_time(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


async def member_status(ip: str, tls: TLSConfig | None) -> tuple[int, bool] | None:
    """(applied index, whether it knows a leader) of the member at the pod IP `ip`, None when
    it does not answer. Status is served by the member alone, without a quorum."""
    scheme = "https" if tls else "http"
    url = f"{scheme}://{ip}:{CLIENT_PORT}"
    try:
        async with AsyncClient([url], timeout=STATUS_TIMEOUT_S, dial_timeout=1.0, tls=tls) as c:
            status = await c.status(url, timeout=STATUS_TIMEOUT_S)
    except errors.EtcdError:
        return None
    return status.raft_applied_index, bool(status.leader)


def voter_views(
    names: Names,
    voters: Sequence[int],
    pods: Sequence[Mapping[str, Any]],
    claims: Sequence[Mapping[str, Any]],
    statuses: Mapping[int, tuple[int, bool] | None],
    now: datetime,
) -> list[VoterView]:
    """The voters (ordinals) as their pods, claims and Status answers (by ordinal) show them."""
    by_pod = {names.ordinal_of_pod(p["metadata"]["name"]): p for p in pods}
    by_claim = {names.ordinal_of_volume(c["metadata"]["name"]): c for c in claims}
    views = []
    for ordinal in voters:
        pod, claim = by_pod.get(ordinal), by_claim.get(ordinal)
        notes = (claim or {}).get("metadata", {}).get("annotations") or {}
        has_data = (
            claim is not None
            and not claim["metadata"].get("deletionTimestamp")
            and bool(notes.get(resources.MEMBER_ID_ANNOTATION))
        )
        ready, since = False, None
        if pod is not None:
            cond = next(
                (
                    c
                    for c in (pod.get("status") or {}).get("conditions") or ()
                    if c.get("type") == "Ready"
                ),
                {},
            )
            ready = cond.get("status") == "True"
            since = _parse_time(cond.get("lastTransitionTime")) or _parse_time(
                pod["metadata"].get("creationTimestamp")
            )
        # A missing pod counts as down since forever: its claim decides whether data is left.
        unready = 0.0 if ready else (now - since).total_seconds() if since else float("inf")
        answer = statuses.get(ordinal)
        views.append(
            VoterView(
                ordinal=ordinal,
                has_data=has_data,
                ready=ready,
                unready_for_s=unready,
                answered=answer is not None,
                applied_index=answer[0] if answer else 0,
                knows_leader=bool(answer and answer[1]),
            )
        )
    return views


def known_voters(names: Names, status: Mapping[str, Any]) -> list[int]:
    """The voters' ordinals of the membership last recorded in status."""
    found = []
    for member in status.get("members") or ():
        ordinal = names.ordinal_of_pod(str(member.get("name") or ""))
        if ordinal is not None and not member.get("learner"):
            found.append(ordinal)
    return sorted(found)


# ---- acting -------------------------------------------------------------------------------------

EventSink = Callable[[str, str, str], None]


@dataclass
class Recovery:
    """One check of one cluster; returns the status fields to patch (None: nothing to say)."""

    kube: Kube
    client_tls: TLSConfig | None = None
    probe: Callable[[str, TLSConfig | None], Any] = member_status
    clock: Callable[[], datetime] = lambda: datetime.now(UTC)

    default_image: str = "raftkv"
    cluster_domain: str = "cluster.local"

    async def check(self, body: Mapping[str, Any], events: EventSink) -> dict[str, Any] | None:
        meta, spec_raw = body["metadata"], body.get("spec") or {}
        status = body.get("status") or {}
        names = Names(meta["name"], meta["namespace"], self.cluster_domain)
        spec = RecoverySpec.from_spec(spec_raw)
        tls = self.client_tls if (spec_raw.get("tls") or {}).get("client") else None
        current = status.get("recovery") or {}
        if current.get("phase") == RECOVERING:
            return await self._progress(body, names, current, tls, events)
        if not status.get("clusterID"):
            return None  # never formed: nothing to recover
        pods = await self.kube.list("Pod", names.namespace, names.selector_string())
        claims = await self.kube.list(
            "PersistentVolumeClaim", names.namespace, names.selector_string()
        )
        statuses = await self._statuses(names, pods, tls)
        voters = known_voters(names, status)
        views = voter_views(names, voters, pods, claims, statuses, self.clock())
        verdict = assess(views, spec.grace_s)
        if not verdict.lost:
            if current.get("phase") == QUORUM_LOST:
                return {"recovery": {**current, "phase": "Cleared", "message": verdict.reason}}
            return None
        return await self._start(names, spec, verdict, current, events)

    async def _statuses(
        self, names: Names, pods: Sequence[Mapping[str, Any]], tls: TLSConfig | None
    ) -> dict[int, tuple[int, bool] | None]:
        targets = {}
        for pod in pods:
            ordinal = names.ordinal_of_pod(pod["metadata"]["name"])
            ip = (pod.get("status") or {}).get("podIP")
            if ordinal is not None and ip and not pod["metadata"].get("deletionTimestamp"):
                targets[ordinal] = ip
        answers = await asyncio.gather(*(self.probe(ip, tls) for ip in targets.values()))
        return dict(zip(targets, answers, strict=True))

    async def _start(
        self,
        names: Names,
        spec: RecoverySpec,
        verdict: Assessment,
        current: Mapping[str, Any],
        events: EventSink,
    ) -> dict[str, Any] | None:
        if spec.policy == "manual" or (spec.policy == "fromSurvivor" and verdict.survivor is None):
            why = (
                "policy is manual"
                if spec.policy == "manual"
                else "no member with data answers (fromSurvivor needs one running)"
            )
            message = f"quorum lost permanently: {verdict.reason}; not recovering: {why}"
            if current.get("phase") == QUORUM_LOST and current.get("message") == message:
                return None
            events("Warning", QUORUM_LOST, message)
            return {"recovery": {"phase": QUORUM_LOST, "policy": spec.policy, "message": message}}
        recovery_id = uuid.uuid4().hex[:8]
        record: dict[str, Any] = {
            "id": recovery_id,
            "policy": spec.policy,
            "phase": RECOVERING,
            "startedAt": _format_time(self.clock()),
            "reason": verdict.reason,
        }
        if spec.policy == "fromSurvivor":
            assert verdict.survivor is not None
            record["survivor"] = names.pod(verdict.survivor)
            record["message"] = (
                f"restarting {names.pod(verdict.survivor)} (highest applied index) as a new "
                "one-member cluster with its data; the others rejoin empty"
            )
        else:
            record["step"] = "Deleting"
            record["message"] = (
                "deleting the members and their claims, then restoring the newest backup"
            )
            await self._delete_everything(names)
        events(
            "Warning",
            "RecoveryStarted",
            f"quorum lost permanently: {verdict.reason}; {record['message']} "
            f"(recovery {recovery_id})",
        )
        return {"recovery": record}

    async def _delete_everything(self, names: Names) -> None:
        ns = names.namespace
        await self.kube.delete("StatefulSet", ns, names.statefulset)
        for pod in await self.kube.list("Pod", ns, names.selector_string()):
            await self.kube.delete("Pod", ns, pod["metadata"]["name"])
        for claim in await self.kube.list("PersistentVolumeClaim", ns, names.selector_string()):
            await self.kube.delete("PersistentVolumeClaim", ns, claim["metadata"]["name"])

    async def _progress(
        self,
        body: Mapping[str, Any],
        names: Names,
        current: Mapping[str, Any],
        tls: TLSConfig | None,
        events: EventSink,
    ) -> dict[str, Any] | None:
        ns, recovery_id = names.namespace, str(current.get("id"))
        pods = await self.kube.list("Pod", ns, names.selector_string())
        if current.get("policy") == "fromSurvivor":
            survivor = str(current.get("survivor"))
            sts = await self.kube.get("StatefulSet", ns, names.statefulset)
            if not _carries(((sts or {}).get("spec") or {}).get("template") or {}, recovery_id):
                return None  # the next reconcile pass puts the survivor step in the template
            pod = next((p for p in pods if p["metadata"]["name"] == survivor), None)
            if pod is not None and not _carries(pod, recovery_id):
                # Started before the template had the step: restart it (OnDelete updates).
                if not pod["metadata"].get("deletionTimestamp"):
                    await self.kube.delete("Pod", ns, survivor)
                return None
            watched = [p for p in pods if p["metadata"]["name"] == survivor]
        elif current.get("step") == "Deleting":
            claims = await self.kube.list("PersistentVolumeClaim", ns, names.selector_string())
            if pods or claims:
                return None  # still terminating
            await self.kube.apply(self._bootstrap_statefulset(body, names))
            return {"recovery": {**current, "step": "Restoring"}}
        else:
            watched = list(pods)
        for pod in watched:
            ip = (pod.get("status") or {}).get("podIP")
            if not ip or pod["metadata"].get("deletionTimestamp"):
                continue
            answer = await self.probe(ip, tls)
            if answer is not None and answer[1]:
                events(
                    "Normal",
                    "RecoverySucceeded",
                    f"recovery {recovery_id} ({current.get('policy')}): the cluster has a "
                    "leader again",
                )
                done = {**current, "phase": SUCCEEDED, "finishedAt": _format_time(self.clock())}
                done.pop("step", None)
                return {"recovery": done}
        return None

    def _bootstrap_statefulset(self, body: Mapping[str, Any], names: Names) -> dict[str, Any]:
        """The founding StatefulSet of the rebuilt cluster, each pod restoring the newest backup
        first. The reconciler takes over once its members answer."""
        spec = ClusterSpec.from_dict(body.get("spec") or {}, default_image=self.default_image)
        founding = tuple(range(spec.size))
        token = cluster_token(names, body["metadata"]["uid"])
        step = restore.pod_init(body)
        assert step is not None
        init = restore.init_container(
            spec,
            names,
            step,
            initial_cluster=resources.initial_cluster(names, founding, tls=spec.tls.peer),
            state="new",
            token=token,
        )
        return resources.statefulset(
            spec,
            names,
            resources.owner_reference(body),
            replicas=spec.size,
            members=founding,
            state="new",
            token=token,
            init_containers=[init],
        )


def cluster_token(names: Names, uid: str) -> str:
    """The --initial-cluster-token the reconciler gives the cluster (same formula)."""
    return f"{names.namespace}-{names.cluster}-{uid[:8]}"


def _carries(pod_or_template: Mapping[str, Any], recovery_id: str) -> bool:
    """Whether a pod (or pod template) runs the init step of this recovery."""
    init = (pod_or_template.get("spec") or {}).get("initContainers") or ()
    return any(recovery_id in (c.get("command") or ()) for c in init)
