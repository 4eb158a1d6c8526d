"""Disaster-recovery decisions: when quorum counts as lost for good, which survivor restarts,
what each policy does, and the init steps the pods get while a recovery runs."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from raftkv_operator import recovery, resources, restore
from raftkv_operator.model import InvalidSpec, Names
from raftkv_operator.recovery import Recovery, RecoverySpec, VoterView, assess, choose_survivor

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
NAMES = Names("kv", "ns")


def voter(ordinal: int, **fields: Any) -> VoterView:
    defaults: dict[str, Any] = {
        "has_data": True,
        "ready": False,
        "unready_for_s": 0.0,
        "answered": True,
        "applied_index": 100,
        "knows_leader": False,
    }
    return VoterView(ordinal=ordinal, **{**defaults, **fields})


def test_a_cluster_with_a_leader_is_never_recovered() -> None:
    views = [voter(0, knows_leader=True), voter(1, has_data=False), voter(2, has_data=False)]
    assert not assess(views, grace_s=0).lost


def test_majority_of_data_gone_is_permanent_loss_at_once() -> None:
    views = [
        voter(0, applied_index=90),
        voter(1, has_data=False, answered=False),
        voter(2, has_data=False, answered=False),
    ]
    verdict = assess(views, grace_s=300)
    assert verdict.lost and verdict.survivor == 0
    assert "2 of 3 voters lost their data" in verdict.reason


def test_a_brief_loss_is_left_to_raft() -> None:
    # Two members down for a minute with their data: restarting pods, a slow election.
    views = [
        voter(0),
        voter(1, answered=False, unready_for_s=60),
        voter(2, answered=False, unready_for_s=60),
    ]
    assert not assess(views, grace_s=300).lost
    # One lost its data, one is only restarting: still within the grace.
    views[1] = voter(1, has_data=False, answered=False)
    assert not assess(views, grace_s=300).lost


def test_members_down_longer_than_the_grace_count_as_lost() -> None:
    views = [
        voter(0),
        voter(1, has_data=False, answered=False),
        voter(2, answered=False, unready_for_s=301),
    ]
    verdict = assess(views, grace_s=300)
    assert verdict.lost and "1 have been down for more than 300 s" in verdict.reason


def test_one_lost_member_of_five_is_not_quorum_loss() -> None:
    views = [voter(i) for i in range(3)] + [
        voter(3, has_data=False, answered=False),
        voter(4, has_data=False, answered=False),
    ]
    assert not assess(views, grace_s=0).lost  # 3 of 5 still have their data and answer


def test_survivor_is_the_most_caught_up_member_with_data() -> None:
    views = [
        voter(0, applied_index=50),
        voter(1, applied_index=70),
        voter(2, applied_index=70),
        voter(3, applied_index=99, has_data=False),  # an empty new pod: not a survivor
        voter(4, applied_index=0, answered=False),
    ]
    assert choose_survivor(views) == 1
    assert choose_survivor([voter(0, answered=False)]) is None


def test_recovery_spec_defaults_and_validation() -> None:
    assert RecoverySpec.from_spec({}) == RecoverySpec("manual", 300)
    assert RecoverySpec.from_spec({"recovery": {"policy": "fromSurvivor"}}).policy == (
        "fromSurvivor"
    )
    with pytest.raises(InvalidSpec, match=r"needs spec\.backup"):
        RecoverySpec.from_spec({"recovery": {"policy": "fromBackup"}})
    with pytest.raises(InvalidSpec, match="one of"):
        RecoverySpec.from_spec({"recovery": {"policy": "always"}})


def _pod(ordinal: int, *, ready: bool, since: datetime, ip: str | None = None) -> dict[str, Any]:
    return {
        "metadata": {"name": NAMES.pod(ordinal), "creationTimestamp": "2026-01-01T00:00:00Z"},
        "spec": {"containers": [{"image": "raftkv:1"}]},
        "status": {
            "podIP": ip or f"10.0.0.{ordinal + 1}",
            "conditions": [
                {
                    "type": "Ready",
                    "status": "True" if ready else "False",
                    "lastTransitionTime": since.strftime("%Y-%m-%dT%H:%M:%SZ"),
                }
            ],
        },
    }


def _claim(ordinal: int, *, marked: bool) -> dict[str, Any]:
    notes = {resources.MEMBER_ID_ANNOTATION: f"{ordinal + 10:x}"} if marked else {}
    return {"metadata": {"name": NAMES.volume(ordinal), "annotations": notes}}


def test_voter_views_from_pods_claims_and_statuses() -> None:
    pods = [_pod(0, ready=False, since=NOW - timedelta(seconds=30)), _pod(1, ready=True, since=NOW)]
    claims = [_claim(0, marked=True), _claim(1, marked=False)]  # 1 was recreated empty
    views = recovery.voter_views(NAMES, [0, 1, 2], pods, claims, {0: (42, False)}, NOW)
    v0, v1, v2 = views
    assert (v0.has_data, v0.answered, v0.applied_index, v0.unready_for_s) == (True, True, 42, 30)
    assert (v1.has_data, v1.ready) == (False, True)
    assert (v2.has_data, v2.answered, v2.unready_for_s) == (False, False, float("inf"))


class FakeKube:
    def __init__(self, objects: Mapping[str, list[dict[str, Any]]]) -> None:
        self.objects = {kind: list(items) for kind, items in objects.items()}
        self.deleted: list[tuple[str, str]] = []
        self.applied: list[dict[str, Any]] = []

    async def list(self, kind: str, namespace: str, selector: str) -> list[dict[str, Any]]:
        return list(self.objects.get(kind, []))

    async def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        return next((o for o in self.objects.get(kind, []) if o["metadata"]["name"] == name), None)

    async def delete(self, kind: str, namespace: str, name: str) -> None:
        self.deleted.append((kind, name))
        self.objects[kind] = [
            o for o in self.objects.get(kind, []) if o["metadata"]["name"] != name
        ]

    async def apply(self, manifest: Mapping[str, Any]) -> dict[str, Any]:
        self.applied.append(dict(manifest))
        return dict(manifest)

    async def annotate(self, *args: Any) -> None:
        raise AssertionError("recovery annotates nothing")


def _body(policy: str, **status: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {"size": 3, "version": "1", "recovery": {"policy": policy}}
    if policy == "fromBackup":
        spec["backup"] = {
            "schedule": "0 * * * *",
            "s3": {"bucket": "b", "prefix": "kv", "credentialsSecret": "creds"},
        }
    return {
        "apiVersion": "raftkv.io/v1alpha1",
        "kind": "RaftKVCluster",
        "metadata": {"name": "kv", "namespace": "ns", "uid": "0123456789"},
        "spec": spec,
        "status": {
            "clusterID": "abc",
            "members": [{"name": NAMES.pod(i), "id": f"{i:x}"} for i in range(3)],
            **status,
        },
    }


def _lost_cluster() -> FakeKube:
    # Members 1 and 2 lost their pods and claims; 0 runs without a leader.
    return FakeKube(
        {
            "Pod": [_pod(0, ready=False, since=NOW - timedelta(seconds=20))],
            "PersistentVolumeClaim": [_claim(0, marked=True)],
        }
    )


def _recovery(kube: FakeKube, answers: Mapping[str, tuple[int, bool] | None]) -> Recovery:
    async def probe(ip: str, tls: Any) -> tuple[int, bool] | None:
        return answers.get(ip)

    return Recovery(kube=kube, probe=probe, clock=lambda: NOW)


def test_manual_policy_reports_and_does_nothing() -> None:
    kube = _lost_cluster()
    events: list[tuple[str, str, str]] = []
    patch = asyncio.run(
        _recovery(kube, {"10.0.0.1": (42, False)}).check(
            _body("manual"), lambda *e: events.append(e)
        )
    )
    assert patch is not None and patch["recovery"]["phase"] == "QuorumLost"
    assert kube.deleted == [] and kube.applied == []
    assert events[0][:2] == ("Warning", "QuorumLost") and "policy is manual" in events[0][2]
    # Said once: the same verdict again posts nothing new.
    again = _body("manual", recovery=patch["recovery"])
    assert asyncio.run(_recovery(kube, {"10.0.0.1": (42, False)}).check(again, print)) is None


def test_from_survivor_picks_the_survivor_then_restarts_it_with_the_step() -> None:
    kube = _lost_cluster()
    events: list[tuple[str, str, str]] = []
    run = _recovery(kube, {"10.0.0.1": (42, False)})
    patch = asyncio.run(run.check(_body("fromSurvivor"), lambda *e: events.append(e)))
    assert patch is not None
    record = patch["recovery"]
    assert (record["phase"], record["policy"], record["survivor"]) == (
        "Recovering",
        "fromSurvivor",
        "kv-0",
    )
    assert events[0][1] == "RecoveryStarted"
    body = _body("fromSurvivor", recovery=record)
    # The pods' init step follows status.recovery.
    step = restore.pod_init(body)
    assert step == restore.SurvivorRecovery("kv-0", record["id"])
    # Until the StatefulSet's template carries the step, nothing is restarted.
    assert asyncio.run(run.check(body, print)) is None and kube.deleted == []
    template_init = [{"name": "restore", "command": ["python", "--recovery-id", record["id"]]}]
    kube.objects["StatefulSet"] = [
        {
            "metadata": {"name": "kv"},
            "spec": {"template": {"spec": {"initContainers": template_init}}},
        }
    ]
    assert asyncio.run(run.check(body, print)) is None
    assert kube.deleted == [("Pod", "kv-0")]  # restarted to run the step
    # Recreated with the step and leading a cluster of one: done.
    pod = _pod(0, ready=True, since=NOW, ip="10.0.0.9")
    pod["spec"]["initContainers"] = template_init
    kube.objects["Pod"] = [pod]
    done_events: list[tuple[str, str, str]] = []
    finished = asyncio.run(
        _recovery(kube, {"10.0.0.9": (5, True)}).check(body, lambda *e: done_events.append(e))
    )
    assert finished is not None and finished["recovery"]["phase"] == "Succeeded"
    assert done_events[0][1] == "RecoverySucceeded"
    assert restore.pod_init(_body("fromSurvivor", recovery=finished["recovery"])) is None


def test_from_backup_deletes_everything_then_bootstraps_restoring_members() -> None:
    kube = _lost_cluster()
    run = _recovery(kube, {"10.0.0.1": (42, False)})
    patch = asyncio.run(run.check(_body("fromBackup"), print))
    assert patch is not None and patch["recovery"]["step"] == "Deleting"
    assert ("StatefulSet", "kv") in kube.deleted
    assert ("PersistentVolumeClaim", NAMES.volume(0)) in kube.deleted
    body = _body("fromBackup", recovery=patch["recovery"])
    restoring = asyncio.run(run.check(body, print))
    assert restoring is not None and restoring["recovery"]["step"] == "Restoring"
    (sts,) = kube.applied
    assert sts["spec"]["replicas"] == 3
    (init,) = sts["spec"]["template"]["spec"]["initContainers"]
    command = init["command"]
    assert command[command.index("--initial-cluster-state") + 1] == "new"
    assert command[command.index("backup") + 1] == "s3://b/kv"
    secret_keys = {
        e["valueFrom"]["secretKeyRef"]["key"]
        for e in init["env"]
        if "secretKeyRef" in e.get("valueFrom", {})
    }
    assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= secret_keys


def test_no_recovery_for_a_cluster_that_never_formed() -> None:
    body = _body("fromSurvivor")
    del body["status"]["clusterID"]
    assert asyncio.run(_recovery(_lost_cluster(), {}).check(body, print)) is None


# ---- the init steps ------------------------------------------------------------------------


def test_spec_restore_becomes_the_pods_init_step() -> None:
    s3 = {"bucket": "bkt", "prefix": "a/b", "endpoint": "http://s3", "credentialsSecret": "c"}
    body = {"spec": {"restore": {"s3": s3, "revision": 42}}, "status": {}}
    step = restore.pod_init(body)
    assert isinstance(step, restore.RestoreSource)
    assert step.args() == [
        "backup",
        "s3://bkt/a/b",
        "--s3-endpoint",
        "http://s3",
        "--revision",
        "42",
    ]
    with pytest.raises(InvalidSpec, match="not both"):
        restore.pod_init(
            {"spec": {"restore": {"s3": s3, "revision": 1, "time": "2026-01-01T00:00:00Z"}}}
        )
    assert restore.pod_init({"spec": {}, "status": {}}) is None


def _init_args(tmp_path: Path, state: str, *step: str) -> list[str]:
    return [
        "--data-dir",
        str(tmp_path / "data"),
        "--name",
        "kv-1",
        "--initial-cluster",
        "kv-0=http://a:2380,kv-1=http://b:2380",
        "--initial-cluster-state",
        state,
        "--initial-cluster-token",
        "t",
        "--initial-advertise-peer-urls",
        "http://b:2380",
        *step,
    ]


def test_init_steps_do_nothing_where_they_do_not_apply(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[list[str]] = []
    monkeypatch.setattr(restore, "_ctl", lambda args, env=None: calls.append(list(args)) or 0)
    backup = ["backup", "s3://b/p"]
    # A member added later joins empty; it never restores.
    assert restore.main(_init_args(tmp_path, "existing", *backup)) == 0
    assert calls == []
    # A founding member restores into its missing data dir...
    assert restore.main(_init_args(tmp_path, "new", *backup)) == 0
    assert calls[0][:3] == ["backup", "restore", "s3://b/p"]
    assert calls[0][calls[0].index("--name") + 1] == "kv-1"
    # ...but keeps the one it has.
    (tmp_path / "data").mkdir()
    assert restore.main(_init_args(tmp_path, "new", *backup)) == 0
    assert len(calls) == 1
    # The survivor step runs on the survivor only.
    survivor = ["survivor", "--survivor", "kv-0", "--recovery-id", "r1"]
    assert restore.main(_init_args(tmp_path, "existing", *survivor)) == 0
    assert len(calls) == 1


def test_force_path_style_reaches_the_restore_on_aws(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    s3 = {"bucket": "bkt", "credentialsSecret": "c", "forcePathStyle": True}
    step = restore.pod_init({"spec": {"restore": {"s3": s3}}})
    assert step is not None and step.args()[-1] == "--force-path-style"
    seen: list[str] = []

    def ctl(args: list[str], env: Mapping[str, str] | None = None) -> int:
        seen.append(Path((env or {})["AWS_CONFIG_FILE"]).read_text())
        return 0

    monkeypatch.setattr(restore, "_ctl", ctl)
    assert restore.main(_init_args(tmp_path, "new", *step.args())) == 0
    assert "addressing_style = path" in seen[0]


def test_backend_copy_folds_in_the_write_ahead_file(tmp_path: Path) -> None:
    database = tmp_path / "db"
    writer = sqlite3.connect(database)
    writer.execute("PRAGMA journal_mode=WAL")
    writer.execute("PRAGMA wal_autocheckpoint=0")
    writer.execute("CREATE TABLE kv (k TEXT PRIMARY KEY, v TEXT)")
    writer.executemany("INSERT INTO kv VALUES (?, ?)", [(f"k{i}", "v") for i in range(100)])
    writer.commit()  # committed, but only in db-wal while the writer stays open
    assert (tmp_path / "db-wal").stat().st_size > 0
    out = tmp_path / "out"
    out.mkdir()
    copy = restore.self_contained_copy(database, out)
    writer.close()
    assert not (out / "db-wal").exists() or (out / "db-wal").stat().st_size == 0
    with sqlite3.connect(copy) as reader:
        assert reader.execute("SELECT count(*) FROM kv").fetchone() == (100,)
