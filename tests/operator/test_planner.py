"""The planner's decisions, as pure functions of an observed cluster (no Kubernetes, no members).

Each test builds what the operator would observe and checks the one step it plans: bootstrap,
scaling in both directions (numeric ordinal order), pod loss, stale and lost data dirs, the
upgrade order (leader last) and the halts that keep quorum.
"""

from __future__ import annotations

from dataclasses import replace

from raftkv_operator import planner
from raftkv_operator.planner import MemberView, Observed, PodView, VolumeView

OLD, NEW = "raftkv:0.1.0", "raftkv:0.2.0"


def member(
    ordinal: int, *, leader: bool = False, learner: bool = False, **kw: object
) -> MemberView:
    defaults: dict[str, object] = {
        "id": 0x100 + ordinal,
        "ordinal": ordinal,
        "started": True,
        "learner": learner,
        "reachable": True,
        "applied_index": 50,
        "leader": leader,
    }
    defaults.update(kw)
    return MemberView(**defaults)  # type: ignore[arg-type]


def pod(ordinal: int, image: str = OLD, **kw: object) -> PodView:
    defaults: dict[str, object] = {"ordinal": ordinal, "ready": True, "image": image}
    defaults.update(kw)
    return PodView(**defaults)  # type: ignore[arg-type]


def cluster(
    n: int,
    *,
    size: int | None = None,
    image: str = OLD,
    leader: int = 0,
    members: tuple[MemberView, ...] | None = None,
    pods: dict[int, PodView] | None = None,
    volumes: dict[int, VolumeView] | None = None,
    reclaim_delete: bool = True,
) -> Observed:
    """`n` healthy voters on OLD, ordinals 0..n-1, every volume marked with its member."""
    ms = members if members is not None else tuple(member(i, leader=i == leader) for i in range(n))
    ordinals = [m.ordinal for m in ms if m.ordinal is not None]
    return Observed(
        size=n if size is None else size,
        initial_size=3,
        image=image,
        reclaim_delete=reclaim_delete,
        replicas=max(ordinals) + 1 if ordinals else 0,
        bootstrapped=True,
        members=ms,
        cluster_id=0xC1,
        leader_index=60,
        pods=pods if pods is not None else {o: pod(o) for o in ordinals},
        volumes=volumes
        if volumes is not None
        else {m.ordinal: VolumeView(m.ordinal, m.id, 0xC1) for m in ms if m.ordinal is not None},
    )


def step(o: Observed) -> planner.Step:
    return planner.plan(o).step


# ---- bootstrap --------------------------------------------------------------------------------


def test_bootstrap_creates_the_founding_members_from_the_initial_size() -> None:
    o = Observed(
        size=5,
        initial_size=3,
        image=OLD,
        reclaim_delete=True,
        replicas=None,
        bootstrapped=False,
        members=None,
    )
    s = step(o)
    assert isinstance(s, planner.ApplyResources)
    assert (s.replicas, s.members, s.state) == (3, (0, 1, 2), "new")


def test_bootstrap_waits_for_quorum_once_the_pods_exist() -> None:
    o = Observed(
        size=3,
        initial_size=3,
        image=OLD,
        reclaim_delete=True,
        replicas=3,
        bootstrapped=False,
        members=None,
    )
    s = step(o)
    assert isinstance(s, planner.Wait) and s.reason == "Bootstrapping" and not s.degraded


def test_a_formed_cluster_without_an_answering_member_is_degraded() -> None:
    o = replace(cluster(3), members=None)
    s = step(o)
    assert isinstance(s, planner.Wait) and s.degraded and s.reason == "NoQuorum"


def test_a_healthy_cluster_of_the_right_size_and_image_is_converged() -> None:
    assert isinstance(step(cluster(3)), planner.Converged)


# ---- scale up ---------------------------------------------------------------------------------


def test_scale_up_adds_one_learner_for_the_next_ordinal() -> None:
    s = step(cluster(3, size=5))
    assert isinstance(s, planner.AddLearner) and s.ordinal == 3


def test_the_statefulset_grows_to_the_new_learner_before_anything_else() -> None:
    o = cluster(3, size=5)
    o = replace(
        o, members=(*(o.members or ()), member(3, learner=True, started=False, reachable=False))
    )
    s = step(o)
    assert isinstance(s, planner.ApplyResources)
    assert (s.replicas, s.members, s.state) == (4, (0, 1, 2, 3), "existing")


def test_a_learner_is_promoted_only_once_healthy_and_caught_up() -> None:
    base = cluster(3, size=5)
    joining = member(3, learner=True, applied_index=0)
    o = replace(
        base,
        members=(*(base.members or ()), joining),
        replicas=4,
        pods={**base.pods, 3: pod(3, ready=False)},
    )
    assert step(o).reason == "LearnerCatchingUp"
    o = replace(o, pods={**base.pods, 3: pod(3)})  # ready, but far behind the leader's log
    o = replace(o, leader_index=joining.applied_index + planner.MAX_LAG + 1)
    assert step(o).reason == "LearnerCatchingUp"
    o = replace(
        o, leader_index=60, members=(*(base.members or ()), replace(joining, applied_index=60))
    )
    s = step(o)
    assert isinstance(s, planner.Promote) and s.member_id == joining.id


def test_scale_up_waits_while_a_voter_is_unhealthy_and_reports_degraded_after_the_grace() -> None:
    o = cluster(3, size=5)
    o = replace(o, pods={**o.pods, 1: pod(1, ready=False, unready_for_s=5)})
    s = step(o)
    assert isinstance(s, planner.Wait) and s.reason == "ScaleUpHalted" and not s.degraded
    o = replace(o, pods={**o.pods, 1: pod(1, ready=False, unready_for_s=600)})
    s = step(o)
    assert isinstance(s, planner.Wait) and s.degraded


def test_an_old_claim_for_the_next_ordinal_is_deleted_before_the_member_is_added() -> None:
    o = cluster(3, size=4)
    o = replace(o, volumes={**o.volumes, 3: VolumeView(3, 0x999, 0xC1, removed=True)})
    s = step(o)
    assert isinstance(s, planner.DeleteVolume) and s.ordinal == 3


def test_a_learner_no_longer_wanted_is_removed() -> None:
    base = cluster(3)
    o = replace(
        base,
        members=(*(base.members or ()), member(3, learner=True)),
        replicas=4,
        pods={**base.pods, 3: pod(3)},
    )
    s = step(o)
    assert isinstance(s, planner.RemoveMember) and s.member_id == 0x103


# ---- scale down -------------------------------------------------------------------------------


def test_scale_down_removes_the_highest_ordinal_in_numeric_order() -> None:
    s = step(cluster(11, size=9))  # ordinals 0..10 as text would put "9" after "10"
    assert isinstance(s, planner.RemoveMember) and s.ordinal == 10
    o = cluster(11, size=9)
    o = replace(o, members=tuple(m for m in o.members or () if m.ordinal != 10), replicas=10)
    s = step(o)
    assert isinstance(s, planner.RemoveMember) and s.ordinal == 9


def test_the_statefulset_shrinks_after_the_member_is_removed() -> None:
    o = cluster(5, size=3)
    o = replace(o, members=(o.members or ())[:4])
    s = step(o)
    assert isinstance(s, planner.ApplyResources) and s.replicas == 4


def test_leadership_moves_away_from_a_leaving_leader_first() -> None:
    s = step(cluster(5, size=4, leader=4))
    assert isinstance(s, planner.MoveLeader)
    assert s.target_id in {0x100, 0x101, 0x102, 0x103}


def test_scale_down_halts_when_the_remaining_voters_would_lack_quorum() -> None:
    o = cluster(3, size=2)
    o = replace(o, pods={**o.pods, 1: pod(1, ready=False)})
    s = step(o)
    assert isinstance(s, planner.Wait) and s.reason == "QuorumAtRisk" and s.degraded


def test_removed_members_claims_follow_the_reclaim_policy() -> None:
    o = cluster(3, volumes=None)
    o = replace(o, volumes={**o.volumes, 3: VolumeView(3, 0x103, 0xC1)})
    chores = planner.plan(o).housekeeping
    assert [type(c) for c in chores] == [planner.DeleteVolume]
    kept = planner.plan(replace(o, reclaim_delete=False)).housekeeping
    assert len(kept) == 1 and isinstance(kept[0], planner.MarkVolume) and kept[0].removed


def test_a_claim_is_marked_with_the_member_once_it_runs_healthy_on_it() -> None:
    o = cluster(3)
    o = replace(o, volumes={**o.volumes, 2: VolumeView(2, None, None)})
    chores = planner.plan(o).housekeeping
    assert chores == (
        planner.MarkVolume("VolumeInUse", "claim of 2 holds member 102", 2, 0x102, 0xC1),
    )


# ---- pod loss and data dirs -------------------------------------------------------------------


def test_a_lost_pod_with_its_claim_is_left_to_rejoin_with_its_member_id() -> None:
    o = cluster(3)
    pods = dict(o.pods)
    del pods[1]  # deleted; the StatefulSet recreates it on the same claim
    s = step(replace(o, pods=pods))
    assert isinstance(s, planner.Wait) and s.reason == "MemberUnhealthy"
    restarted = replace(
        o,
        pods={**o.pods, 1: pod(1, ready=False, restarts=1)},
        members=tuple(replace(m, reachable=m.ordinal != 1) for m in o.members or ()),
    )
    s = step(restarted)
    assert isinstance(s, planner.Wait) and not isinstance(s, planner.RecreateVolume)


def test_a_claim_holding_another_members_data_dir_is_recreated() -> None:
    base = cluster(3, size=4)
    joining = member(3, learner=True, started=False, reachable=False)
    o = replace(
        base,
        members=(*(base.members or ()), joining),
        replicas=4,
        pods={**base.pods, 3: pod(3, ready=False, restarts=1)},
        volumes={**base.volumes, 3: VolumeView(3, 0x999, 0xC1)},
    )
    s = step(o)
    assert isinstance(s, planner.RecreateVolume) and s.ordinal == 3
    other_cluster = replace(o, volumes={**base.volumes, 3: VolumeView(3, joining.id, 0xBAD)})
    assert isinstance(step(other_cluster), planner.RecreateVolume)


def test_an_unmarked_claim_that_keeps_a_new_member_crashing_is_recreated() -> None:
    base = cluster(3, size=4)
    joining = member(3, learner=True, started=False, reachable=False)
    o = replace(
        base,
        members=(*(base.members or ()), joining),
        replicas=4,
        pods={**base.pods, 3: pod(3, ready=False, restarts=1)},
        volumes={**base.volumes, 3: VolumeView(3, None, None)},
    )
    assert step(o).reason == "LearnerCatchingUp"  # a slow start is not a stale claim
    o = replace(o, pods={**base.pods, 3: pod(3, ready=False, restarts=planner.CRASH_RESTARTS)})
    assert isinstance(step(o), planner.RecreateVolume)


def test_a_started_member_whose_data_dir_is_gone_is_replaced_by_a_learner() -> None:
    o = cluster(3)
    down = {m.ordinal: m for m in o.members or ()}
    down[2] = replace(down[2], reachable=False)
    o = replace(
        o,
        members=tuple(down.values()),
        pods={**o.pods, 2: pod(2, ready=False, restarts=planner.CRASH_RESTARTS)},
        volumes={**o.volumes, 2: VolumeView(2, None, None)},
    )  # a new, empty claim
    s = step(o)
    assert isinstance(s, planner.ReplaceMember) and (s.member_id, s.ordinal) == (0x102, 2)


# ---- rolling upgrade --------------------------------------------------------------------------


def upgraded(o: Observed, *ordinals: int) -> Observed:
    return replace(o, pods={**o.pods, **{i: pod(i, NEW) for i in ordinals}})


def test_upgrade_restarts_followers_first_then_moves_leadership_then_the_old_leader() -> None:
    o = cluster(3, image=NEW, leader=0)
    s = step(o)
    assert isinstance(s, planner.DeletePod) and s.ordinal == 2
    s = step(upgraded(o, 2))
    assert isinstance(s, planner.DeletePod) and s.ordinal == 1
    s = step(upgraded(o, 1, 2))
    assert isinstance(s, planner.MoveLeader) and s.target_id in {0x101, 0x102}
    moved = replace(
        upgraded(o, 1, 2),
        members=tuple(replace(m, leader=m.ordinal == 1) for m in o.members or ()),
    )
    s = step(moved)
    assert isinstance(s, planner.DeletePod) and s.ordinal == 0
    assert isinstance(step(upgraded(moved, 0)), planner.Converged)


def test_upgrade_waits_for_the_restarted_member_to_be_healthy_again() -> None:
    o = cluster(3, image=NEW)
    o = replace(o, pods={**o.pods, 2: pod(2, NEW, ready=False, unready_for_s=3)})
    s = step(o)
    assert isinstance(s, planner.Wait) and s.reason == "UpgradeHalted" and not s.degraded


def test_upgrade_halts_degraded_when_restarting_would_risk_quorum() -> None:
    o = cluster(3, image=NEW)
    o = replace(o, pods={**o.pods, 1: pod(1, ready=False, unready_for_s=900)})
    s = step(o)
    assert isinstance(s, planner.Wait) and s.degraded
    two = cluster(2, image=NEW)
    s = step(two)
    assert isinstance(s, planner.Wait) and s.reason == "QuorumAtRisk" and s.degraded


def test_a_single_member_cluster_is_upgraded_in_place() -> None:
    s = step(cluster(1, image=NEW))
    assert isinstance(s, planner.DeletePod) and s.ordinal == 0


def test_a_member_behind_the_leader_is_not_healthy() -> None:
    o = cluster(3, image=NEW)
    lagging = tuple(replace(m, applied_index=1) if m.ordinal == 2 else m for m in o.members or ())
    o = replace(o, members=lagging, leader_index=1 + planner.MAX_LAG + 1)
    assert not o.healthy(lagging[2])
    assert isinstance(step(o), planner.Wait)
