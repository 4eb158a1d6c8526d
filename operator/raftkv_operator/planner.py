"""What to do next, given what the operator observed: pure decisions, no I/O, no clock.

The reconciler observes the cluster (members over the etcd API, pods and claims from Kubernetes),
asks `plan()` for the next step, performs it, and observes again. Only one membership change or
pod deletion is planned at a time, and each waits until the cluster is healthy again, so a plan
never puts more than one member at risk. Bookkeeping steps (annotating or deleting claims that no
member uses) come with the plan because they cannot hurt the cluster.

Quorum arithmetic, used everywhere below: `n` voters need `n // 2 + 1` of them healthy.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

# A started member's pod that restarted this often without becoming healthy, on a claim the
# operator never saw it use, lost its data dir; an unstarted member's, holds someone else's.
CRASH_RESTARTS = 3
# How long a voter may stay unhealthy before the cluster is reported Degraded.
UNHEALTHY_GRACE_S = 60.0
# A member is caught up when its applied index is at most this far behind the leader's log.
MAX_LAG = 1000


def quorum(voters: int) -> int:
    return voters // 2 + 1


@dataclass(frozen=True)
class MemberView:
    """One member as the member list and its own Status call show it."""

    id: int
    ordinal: int | None  # None: its peer URL is not one of this cluster's pods
    started: bool  # it has published its name (it ran at least once)
    learner: bool
    reachable: bool = False  # answered Status on its pod's client URL
    applied_index: int = 0
    leader: bool = False


@dataclass(frozen=True)
class PodView:
    ordinal: int
    ready: bool
    image: str
    restarts: int = 0
    terminating: bool = False
    unready_for_s: float = 0.0  # since the Ready condition last changed to False


@dataclass(frozen=True)
class VolumeView:
    ordinal: int
    member_id: int | None  # the member the operator saw using it
    cluster_id: int | None
    removed: bool = False  # marked when its member was removed (Retain policy)
    terminating: bool = False


@dataclass(frozen=True)
class Observed:
    size: int  # spec.size
    initial_size: int  # the founding members' count (spec.size when the resource was created)
    image: str  # the image every member should run
    reclaim_delete: bool
    replicas: int | None  # the StatefulSet's, None when it does not exist yet
    bootstrapped: bool  # the cluster has formed once (recorded in status)
    members: tuple[MemberView, ...] | None  # None: no member answered MemberList
    cluster_id: int = 0
    leader_index: int = 0  # the leader's raft index
    pods: dict[int, PodView] = field(default_factory=dict)
    volumes: dict[int, VolumeView] = field(default_factory=dict)

    def member_at(self, ordinal: int) -> MemberView | None:
        return next((m for m in self.members or () if m.ordinal == ordinal), None)

    def healthy(self, member: MemberView) -> bool:
        """Answering, its pod ready (/readyz: leader known, applied caught up), and not behind."""
        pod = self.pods.get(member.ordinal) if member.ordinal is not None else None
        return (
            member.reachable
            and pod is not None
            and pod.ready
            and not pod.terminating
            and member.applied_index + MAX_LAG >= self.leader_index
        )


# ---- steps ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Step:
    """Base of every planned step; `reason` is the Event reason, `message` says why."""

    reason: str
    message: str


@dataclass(frozen=True)
class Wait(Step):
    """Nothing safe to do now; look again later. `degraded` halts with a Degraded condition."""

    degraded: bool = False


@dataclass(frozen=True)
class Converged(Step):
    pass


@dataclass(frozen=True)
class ApplyResources(Step):
    """Create or update the Services, PDB and StatefulSet for these member ordinals."""

    replicas: int
    members: tuple[int, ...]
    state: str  # "new" while bootstrapping, then "existing"


@dataclass(frozen=True)
class AddLearner(Step):
    ordinal: int


@dataclass(frozen=True)
class Promote(Step):
    member_id: int


@dataclass(frozen=True)
class MoveLeader(Step):
    target_id: int


@dataclass(frozen=True)
class RemoveMember(Step):
    member_id: int
    ordinal: int | None


@dataclass(frozen=True)
class ReplaceMember(Step):
    """Remove a started member whose data dir is gone and add it again as a learner."""

    member_id: int
    ordinal: int


@dataclass(frozen=True)
class DeletePod(Step):
    ordinal: int


@dataclass(frozen=True)
class RecreateVolume(Step):
    """Delete a claim holding another member's data dir, and its pod, so both come back empty."""

    ordinal: int


@dataclass(frozen=True)
class DeleteVolume(Step):
    ordinal: int


@dataclass(frozen=True)
class MarkVolume(Step):
    """Record on the claim which member uses it (or that its member was removed)."""

    ordinal: int
    member_id: int | None
    cluster_id: int | None
    removed: bool = False


@dataclass(frozen=True)
class Plan:
    step: Step
    housekeeping: tuple[Step, ...] = ()


# ---- deciding ---------------------------------------------------------------------------------


def plan(o: Observed) -> Plan:
    if o.members is None:
        if not o.bootstrapped:
            founding = tuple(range(o.initial_size))
            if o.replicas is None:
                return Plan(
                    ApplyResources(
                        "Bootstrap",
                        f"creating a {o.initial_size}-member cluster",
                        replicas=o.initial_size,
                        members=founding,
                        state="new",
                    )
                )
            return Plan(Wait("Bootstrapping", "waiting for the founding members to form a quorum"))
        return Plan(
            Wait("NoQuorum", "no member answers the member list: quorum lost?", degraded=True)
        )
    housekeeping = _housekeeping(o)
    return Plan(_next_step(o), housekeeping)


def desired_resources(o: Observed) -> ApplyResources:
    """The StatefulSet that matches the current membership: one pod per member ordinal."""
    ordinals = tuple(sorted(m.ordinal for m in o.members or () if m.ordinal is not None))
    replicas = max(ordinals) + 1 if ordinals else 0
    return ApplyResources(
        "Sync", "pods follow the membership", replicas=replicas, members=ordinals, state="existing"
    )


def _next_step(o: Observed) -> Step:
    assert o.members is not None
    members = o.members
    voters = [m for m in members if not m.learner]
    learners = [m for m in members if m.learner]
    healthy_voters = [m for m in voters if o.healthy(m)]
    unhealthy = [m for m in voters if not o.healthy(m)]
    foreign = [m for m in members if m.ordinal is None]

    # 1. Member pods follow the membership (also completes a step interrupted halfway).
    resources = desired_resources(o)
    if o.replicas != resources.replicas:
        return resources

    # 2. Members whose pods cannot start because of what is on their claim.
    for m in members:
        if m.ordinal is None or o.healthy(m):
            continue
        volume, pod = o.volumes.get(m.ordinal), o.pods.get(m.ordinal)
        if volume is None or volume.terminating or pod is None:
            continue
        foreign_data = volume.member_id is not None and (
            volume.member_id != m.id or (volume.cluster_id not in (None, o.cluster_id))
        )
        crashing = pod.restarts >= CRASH_RESTARTS and not pod.ready
        if not m.started and (
            foreign_data or volume.removed or (crashing and not volume.member_id)
        ):
            return RecreateVolume(
                "StaleVolume",
                f"claim of {m.ordinal} holds another member's data dir; recreating it empty",
                ordinal=m.ordinal,
            )
        if m.started and crashing and volume.member_id is None:
            if not m.learner and len(healthy_voters) < quorum(len(voters) - 1):
                return Wait(
                    "QuorumAtRisk",
                    f"member {m.id:x} ({m.ordinal}) lost its data dir, but removing it would "
                    "leave too few healthy voters",
                    degraded=True,
                )
            return ReplaceMember(
                "DataDirLost",
                f"member {m.id:x} ({m.ordinal}) lost its data dir; adding it again as a learner",
                member_id=m.id,
                ordinal=m.ordinal,
            )

    # 3. A learner is promoted once healthy, or dropped if no longer wanted.
    for m in learners:
        if m.ordinal is None or m.ordinal >= o.size:
            return RemoveMember(
                "RemoveLearner",
                f"learner {m.id:x} is not wanted",
                member_id=m.id,
                ordinal=m.ordinal,
            )
        if o.healthy(m):
            return Promote("Promote", f"promoting learner {m.id:x} ({m.ordinal})", member_id=m.id)
        return Wait("LearnerCatchingUp", f"waiting for learner {m.id:x} ({m.ordinal}) to catch up")

    # 4. Scale down: highest ordinal first, in numeric order; leadership moves away first.
    wanted = set(range(o.size))
    leaving = sorted(
        (m for m in voters if m.ordinal is None or m.ordinal not in wanted),
        key=lambda m: (m.ordinal is not None, m.ordinal or 0),
        reverse=True,
    )
    if leaving:
        target = leaving[0]
        remaining = [m for m in healthy_voters if m.id != target.id]
        if len(voters) > 1 and len(remaining) < quorum(len(voters) - 1):
            return Wait(
                "QuorumAtRisk",
                f"removing {target.id:x} would leave {len(remaining)} healthy of "
                f"{len(voters) - 1} voters",
                degraded=True,
            )
        if target.leader:
            successor = _successor(o, remaining)
            if successor is None:
                return Wait("NoSuccessor", "no healthy voter to hand leadership to", degraded=True)
            return MoveLeader(
                "MoveLeader",
                f"moving leadership away from leaving member {target.id:x}",
                target_id=successor.id,
            )
        return RemoveMember(
            "ScaleDown",
            f"removing member {target.id:x} ({target.ordinal})",
            member_id=target.id,
            ordinal=target.ordinal,
        )

    # 5. Scale up: one learner at a time, only while every voter is healthy.
    present = {m.ordinal for m in members}
    missing = sorted(wanted - present)
    if missing:
        if unhealthy:
            return _blocked(o, unhealthy, "ScaleUpHalted", "scale up")
        if missing[0] in o.volumes:
            # No member uses it, so it holds a removed member's data dir: never reuse one.
            return DeleteVolume(
                "StaleVolume",
                f"deleting the old claim of {missing[0]} before adding it",
                missing[0],
            )
        return AddLearner("ScaleUp", f"adding member {missing[0]} as a learner", ordinal=missing[0])

    # 6. Rolling upgrade: followers first, the leader last after handing leadership over.
    outdated = [m for m in voters if m.ordinal in o.pods and o.pods[m.ordinal].image != o.image]
    if outdated:
        if unhealthy:
            return _blocked(o, unhealthy, "UpgradeHalted", "upgrade")
        if len(voters) > 1 and len(healthy_voters) - 1 < quorum(len(voters)):
            return Wait(
                "QuorumAtRisk",
                f"restarting a member would leave {len(healthy_voters) - 1} healthy of "
                f"{len(voters)} voters; upgrade halted",
                degraded=True,
            )
        followers = sorted((m for m in outdated if not m.leader), key=lambda m: m.ordinal or 0)
        if followers:
            m = followers[-1]
            return DeletePod(
                "Upgrade", f"restarting {m.ordinal} on {o.image}", ordinal=m.ordinal or 0
            )
        leader = outdated[0]
        upgraded = [m for m in healthy_voters if m.id != leader.id and m not in outdated]
        successor = _successor(o, upgraded)
        if successor is not None:
            return MoveLeader(
                "MoveLeader",
                f"moving leadership to upgraded member {successor.id:x} before upgrading"
                " the leader",
                target_id=successor.id,
            )
        return DeletePod(
            "Upgrade", f"restarting {leader.ordinal} on {o.image}", ordinal=leader.ordinal or 0
        )

    if foreign:
        return Wait(
            "ForeignMember",
            "members outside this cluster's pods: " + ", ".join(f"{m.id:x}" for m in foreign),
            degraded=True,
        )
    if unhealthy:
        return _blocked(o, unhealthy, "MemberUnhealthy", "")
    return Converged("Converged", f"{len(voters)} healthy members on {o.image}")


def _blocked(o: Observed, unhealthy: Sequence[MemberView], reason: str, what: str) -> Wait:
    """Wait for unhealthy voters; Degraded once one has been down longer than the grace."""
    names = ", ".join(str(m.ordinal) if m.ordinal is not None else f"{m.id:x}" for m in unhealthy)
    # A missing pod is being recreated by the StatefulSet: not "long down" yet.
    long_down = any(
        m.ordinal is None
        or (m.ordinal in o.pods and o.pods[m.ordinal].unready_for_s >= UNHEALTHY_GRACE_S)
        for m in unhealthy
    )
    verb = f"{what} waits for" if what else "waiting for"
    return Wait(reason, f"{verb} unhealthy members: {names}", degraded=long_down)


def _successor(o: Observed, candidates: Sequence[MemberView]) -> MemberView | None:
    """The most caught-up healthy voter (lowest ordinal on ties): the cheapest hand-over."""
    eligible = [m for m in candidates if not m.learner and not m.leader and o.healthy(m)]
    if not eligible:
        return None
    return max(eligible, key=lambda m: (m.applied_index, -(m.ordinal or 0)))


def _housekeeping(o: Observed) -> tuple[Step, ...]:
    steps: list[Step] = []
    members = o.members or ()
    by_ordinal = {m.ordinal: m for m in members if m.ordinal is not None}
    for ordinal, volume in sorted(o.volumes.items()):
        if volume.terminating:
            continue
        member = by_ordinal.get(ordinal)
        if member is not None:
            # Record which member a claim holds once that member runs on it healthily.
            if o.healthy(member) and (
                volume.member_id != member.id or volume.cluster_id != o.cluster_id
            ):
                steps.append(
                    MarkVolume(
                        "VolumeInUse",
                        f"claim of {ordinal} holds member {member.id:x}",
                        ordinal=ordinal,
                        member_id=member.id,
                        cluster_id=o.cluster_id,
                    )
                )
            continue
        if (o.replicas is not None and ordinal < o.replicas) or ordinal in o.pods:
            continue
        if o.reclaim_delete:
            steps.append(
                DeleteVolume("VolumeDeleted", f"deleting claim of removed {ordinal}", ordinal)
            )
        elif not volume.removed:
            steps.append(
                MarkVolume(
                    "VolumeRetained",
                    f"keeping claim of removed {ordinal} (reclaimPolicy Retain)",
                    ordinal=ordinal,
                    member_id=volume.member_id,
                    cluster_id=volume.cluster_id,
                    removed=True,
                )
            )
    return tuple(steps)
