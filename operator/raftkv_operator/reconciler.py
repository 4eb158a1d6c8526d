"""One reconcile pass: observe, plan one step, take it, report the status.

The kopf handlers call `Reconciler.run` whenever the resource changes and on a timer; a pass
takes at most one step that changes membership or restarts a member (plus harmless claim
bookkeeping), then returns. The handler retries soon while the cluster is not converged, and
every pass starts again from what it observes, so a pass cut off anywhere (operator restart,
failover to another replica) is finished by the next one. Kubernetes calls go through
`kube.Kube`, member calls through `members.Members`; both are injected so tests can fake them.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from raftkv.client import TLSConfig
from raftkv.client.types import Member

from raftkv_operator import planner, resources, restore, status
from raftkv_operator.kube import Kube
from raftkv_operator.members import ClusterState, LearnerNotReady, Members, NoMemberAnswers
from raftkv_operator.metrics import OperatorMetrics
from raftkv_operator.model import CLIENT_PORT, ClusterSpec, Names

log = logging.getLogger(__name__)

# Seconds until the next pass: soon after acting, later while waiting.
AFTER_STEP_S = 2.0
WHILE_WAITING_S = 5.0


class MemberApi(Protocol):
    async def observe(self) -> ClusterState: ...
    async def add_learner(self, peer_url: str) -> Member: ...
    async def promote(self, member_id: int) -> None: ...
    async def remove(self, member_id: int) -> None: ...
    async def move_leader(self, target_id: int) -> None: ...


EventSink = Callable[[str, str, str], None]  # (type, reason, message)
MembersFactory = Callable[[Mapping[int, str], TLSConfig | None], MemberApi]


@dataclass(frozen=True)
class Outcome:
    status: dict[str, Any]
    converged: bool
    retry_after: float
    message: str


def _default_members(endpoints: Mapping[int, str], tls: TLSConfig | None) -> MemberApi:
    return Members(endpoints, tls=tls)


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse_time(value: str | None) -> datetime | None:
    if not value:
        return None
    return datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)


@dataclass
class Reconciler:
    kube: Kube
    default_image: str
    cluster_domain: str = "cluster.local"
    client_tls: TLSConfig | None = None
    metrics: OperatorMetrics | None = None
    members_factory: MembersFactory = _default_members
    clock: Callable[[], datetime] = lambda: datetime.now(UTC)

    async def run(self, body: Mapping[str, Any], events: EventSink) -> Outcome:
        meta, previous = body["metadata"], dict(body.get("status") or {})
        names = Names(meta["name"], meta["namespace"], self.cluster_domain)
        spec = ClusterSpec.from_dict(body.get("spec") or {}, default_image=self.default_image)
        owner = resources.owner_reference(body)
        token = f"{names.namespace}-{names.cluster}-{meta['uid'][:8]}"
        init = restore.pod_init(body)
        # The founding size is fixed once chosen: a size change before the cluster formed
        # must not change the --initial-cluster of pods that already exist.
        previous.setdefault("initialSize", spec.size)

        await self.kube.apply(resources.peer_service(names, owner))
        await self.kube.apply(resources.client_service(names, owner))
        if spec.pdb_enabled:
            await self.kube.apply(resources.pod_disruption_budget(names, owner))
        else:
            await self.kube.delete("PodDisruptionBudget", names.namespace, names.pdb)

        sts = await self.kube.get("StatefulSet", names.namespace, names.statefulset)
        pods = await self.kube.list("Pod", names.namespace, names.selector_string())
        claims = await self.kube.list(
            "PersistentVolumeClaim", names.namespace, names.selector_string()
        )
        endpoints = self._endpoints(names, spec, pods)
        api = self.members_factory(endpoints, self.client_tls if spec.tls.client else None)
        try:
            state: ClusterState | None = await api.observe()
        except NoMemberAnswers as error:
            log.info("%s/%s: no member list: %s", names.namespace, names.cluster, error)
            state = None
        observed = self._observed(names, spec, previous, sts, pods, claims, state)
        if state is not None:
            previous.setdefault("clusterID", f"{state.cluster_id:x}")

        if observed.members is not None:
            # Pods always follow the membership (idempotent; OnDelete restarts nothing), before
            # planning, so a step cut off between a member change and the resize is completed.
            wanted = planner.desired_resources(observed)
            await self._apply_statefulset(names, spec, owner, token, sts, wanted, init)
            observed = dataclasses.replace(observed, replicas=wanted.replicas)
        decided = planner.plan(observed)
        step = decided.step
        for chore in decided.housekeeping:
            await self._take(chore, names, spec, owner, token, sts, api, events, init)
        acted = await self._take(step, names, spec, owner, token, sts, api, events, init)

        new_status = status.build(
            names=names,
            observed=observed,
            step=step,
            generation=int(meta.get("generation") or 0),
            previous=previous,
            now=_now(),
            version=spec.version,
        )
        self._report(names, spec, observed, step, previous, new_status, events)
        converged = isinstance(step, planner.Converged)
        retry = AFTER_STEP_S if acted else WHILE_WAITING_S
        return Outcome(new_status, converged, retry, step.message)

    # ---- observing ----------------------------------------------------------------------------

    @staticmethod
    def _endpoints(names: Names, spec: ClusterSpec, pods: list[dict[str, Any]]) -> dict[int, str]:
        scheme = "https" if spec.tls.client else "http"
        endpoints: dict[int, str] = {}
        for pod in pods:
            ordinal = names.ordinal_of_pod(pod["metadata"]["name"])
            ip = (pod.get("status") or {}).get("podIP")
            if ordinal is not None and ip and not pod["metadata"].get("deletionTimestamp"):
                endpoints[ordinal] = f"{scheme}://{ip}:{CLIENT_PORT}"
        return endpoints

    def _observed(
        self,
        names: Names,
        spec: ClusterSpec,
        previous: Mapping[str, Any],
        sts: Mapping[str, Any] | None,
        pods: list[dict[str, Any]],
        claims: list[dict[str, Any]],
        state: ClusterState | None,
    ) -> planner.Observed:
        now = self.clock()
        pod_views: dict[int, planner.PodView] = {}
        for pod in pods:
            ordinal = names.ordinal_of_pod(pod["metadata"]["name"])
            if ordinal is None:
                continue
            pod_status = pod.get("status") or {}
            ready_cond = next(
                (c for c in pod_status.get("conditions") or () if c.get("type") == "Ready"), {}
            )
            ready = ready_cond.get("status") == "True"
            since = _parse_time(ready_cond.get("lastTransitionTime")) or _parse_time(
                pod["metadata"].get("creationTimestamp")
            )
            containers = pod_status.get("containerStatuses") or []
            pod_views[ordinal] = planner.PodView(
                ordinal=ordinal,
                ready=ready,
                image=pod["spec"]["containers"][0]["image"],
                restarts=sum(int(c.get("restartCount") or 0) for c in containers),
                terminating=bool(pod["metadata"].get("deletionTimestamp")),
                unready_for_s=0.0 if ready or since is None else (now - since).total_seconds(),
            )
        volumes: dict[int, planner.VolumeView] = {}
        for claim in claims:
            ordinal = names.ordinal_of_volume(claim["metadata"]["name"])
            if ordinal is None:
                continue
            notes = claim["metadata"].get("annotations") or {}
            member_id = notes.get(resources.MEMBER_ID_ANNOTATION)
            cluster_id = notes.get(resources.CLUSTER_ID_ANNOTATION)
            volumes[ordinal] = planner.VolumeView(
                ordinal=ordinal,
                member_id=int(member_id, 16) if member_id else None,
                cluster_id=int(cluster_id, 16) if cluster_id else None,
                removed=notes.get(resources.REMOVED_ANNOTATION) == "true",
                terminating=bool(claim["metadata"].get("deletionTimestamp")),
            )
        members: tuple[planner.MemberView, ...] | None = None
        if state is not None:
            by_id = {s.member_id: s for s in state.statuses.values()}
            views = []
            for m in state.members:
                ordinal = next(
                    (o for o in map(names.ordinal_of_peer_url, m.peer_urls) if o is not None), None
                )
                answered = by_id.get(m.id)
                views.append(
                    planner.MemberView(
                        id=m.id,
                        ordinal=ordinal,
                        started=bool(m.name),
                        learner=m.is_learner,
                        reachable=answered is not None,
                        applied_index=answered.applied_index if answered else 0,
                        leader=m.id == state.leader_id,
                    )
                )
            members = tuple(views)
        replicas = None if sts is None else int((sts.get("spec") or {}).get("replicas") or 0)
        return planner.Observed(
            size=spec.size,
            initial_size=int(previous.get("initialSize") or spec.size),
            image=spec.full_image,
            reclaim_delete=spec.reclaim_policy == "Delete",
            replicas=replicas,
            bootstrapped=bool(previous.get("clusterID")) or state is not None,
            members=members,
            cluster_id=state.cluster_id if state else int(previous.get("clusterID") or "0", 16),
            leader_index=state.leader_index if state else 0,
            pods=pod_views,
            volumes=volumes,
        )

    # ---- acting -------------------------------------------------------------------------------

    async def _apply_statefulset(
        self,
        names: Names,
        spec: ClusterSpec,
        owner: Mapping[str, Any],
        token: str,
        live: Mapping[str, Any] | None,
        wanted: planner.ApplyResources,
        init: restore.InitStep | None = None,
    ) -> None:
        initial = resources.initial_cluster(names, wanted.members, tls=spec.tls.peer)
        manifest = resources.statefulset(
            spec,
            names,
            owner,
            replicas=wanted.replicas,
            members=wanted.members,
            state=wanted.state,
            token=token,
            init_containers=[
                restore.init_container(
                    spec, names, init, initial_cluster=initial, state=wanted.state, token=token
                )
            ]
            if init is not None
            else (),
        )
        if live is not None:
            # Claim templates cannot change once created; keep the live ones.
            manifest["spec"]["volumeClaimTemplates"] = live["spec"].get("volumeClaimTemplates")
        await self.kube.apply(manifest)

    async def _take(
        self,
        step: planner.Step,
        names: Names,
        spec: ClusterSpec,
        owner: Mapping[str, Any],
        token: str,
        sts: Mapping[str, Any] | None,
        api: MemberApi,
        events: EventSink,
        init: restore.InitStep | None = None,
    ) -> bool:
        """Take `step`; True when something changed."""
        ns = names.namespace
        match step:
            case planner.ApplyResources():
                await self._apply_statefulset(names, spec, owner, token, sts, step, init)
            case planner.AddLearner(ordinal=ordinal):
                member = await api.add_learner(names.peer_url(ordinal, tls=spec.tls.peer))
                log.info("added learner %x for %s", member.id, names.pod(ordinal))
                self._count("add")
            case planner.Promote(member_id=member_id):
                try:
                    await api.promote(member_id)
                except LearnerNotReady as error:
                    log.info("learner %x not ready yet: %s", member_id, error)
                    return False
                self._count("promote")
            case planner.MoveLeader(target_id=target):
                await api.move_leader(target)
                self._count("move_leader")
            case planner.RemoveMember(member_id=member_id):
                await api.remove(member_id)
                self._count("remove")
            case planner.ReplaceMember(member_id=member_id, ordinal=ordinal):
                await api.remove(member_id)
                await api.add_learner(names.peer_url(ordinal, tls=spec.tls.peer))
                self._count("replace")
            case planner.DeletePod(ordinal=ordinal):
                await self.kube.delete("Pod", ns, names.pod(ordinal))
                self._count("restart")
            case planner.RecreateVolume(ordinal=ordinal):
                await self.kube.delete("PersistentVolumeClaim", ns, names.volume(ordinal))
                await self.kube.delete("Pod", ns, names.pod(ordinal))
            case planner.DeleteVolume(ordinal=ordinal):
                await self.kube.delete("PersistentVolumeClaim", ns, names.volume(ordinal))
            case planner.MarkVolume():
                await self.kube.annotate(
                    "PersistentVolumeClaim",
                    ns,
                    names.volume(step.ordinal),
                    {
                        resources.MEMBER_ID_ANNOTATION: (
                            f"{step.member_id:x}" if step.member_id is not None else None
                        ),
                        resources.CLUSTER_ID_ANNOTATION: (
                            f"{step.cluster_id:x}" if step.cluster_id else None
                        ),
                        resources.REMOVED_ANNOTATION: "true" if step.removed else None,
                    },
                )
            case _:
                return False
        events("Normal", step.reason, step.message)
        return True

    def _count(self, action: str) -> None:
        if self.metrics is not None:
            self.metrics.member_changes.labels(action).inc()

    def _report(
        self,
        names: Names,
        spec: ClusterSpec,
        observed: planner.Observed,
        step: planner.Step,
        previous: Mapping[str, Any],
        new_status: Mapping[str, Any],
        events: EventSink,
    ) -> None:
        """A Warning event when a step becomes blocked (not on every pass), and the gauges."""
        degraded = isinstance(step, planner.Wait) and step.degraded
        old = next((c for c in previous.get("conditions") or () if c.get("type") == "Degraded"), {})
        if degraded and (old.get("status") != "True" or old.get("reason") != step.reason):
            events("Warning", step.reason, step.message)
        if self.metrics is not None:
            self.metrics.cluster_observed(
                names.namespace,
                names.cluster,
                desired=spec.size,
                members=int(new_status["size"]),
                ready=int(new_status["readyMembers"]),
                degraded=degraded,
            )
