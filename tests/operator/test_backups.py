"""Backup scheduling decisions: the cron parser, when a backup is due, on-demand requests, and
the status a finished attempt leaves; plus one timer tick against fakes."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import pytest
from raftkv_operator.backups import (
    BACKUP_NOW_ANNOTATION,
    BackupFailed,
    BackupResult,
    BackupRunner,
    CronSchedule,
    S3Target,
    backup_due,
    credentials_env,
    member_endpoints,
    requested_backup,
    status_after,
    tick,
)
from raftkv_operator.model import InvalidSpec


def t(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%d %H:%M").replace(tzinfo=UTC)


@pytest.mark.parametrize(
    ("expression", "after", "expected"),
    [
        ("0 * * * *", "2026-01-01 10:00", "2026-01-01 11:00"),
        ("0 * * * *", "2026-01-01 10:59", "2026-01-01 11:00"),
        ("*/15 * * * *", "2026-01-01 10:07", "2026-01-01 10:15"),
        ("30 2 * * *", "2026-01-01 03:00", "2026-01-02 02:30"),
        ("0 0 1 * *", "2026-01-15 00:00", "2026-02-01 00:00"),
        ("0 0 29 2 *", "2026-03-01 00:00", "2028-02-29 00:00"),
        # 2026-01-04 is a Sunday; 7 is Sunday too.
        ("0 12 * * 0", "2026-01-01 00:00", "2026-01-04 12:00"),
        ("0 12 * * 7", "2026-01-01 00:00", "2026-01-04 12:00"),
        ("0 9 * * 1-5", "2026-01-02 10:00", "2026-01-05 09:00"),  # Friday -> Monday
        # Both day fields restricted: either matches (the 10th, or a Sunday).
        ("0 0 10 * 0", "2026-01-01 00:00", "2026-01-04 00:00"),
        ("5,35 1-2 * * *", "2026-01-01 01:35", "2026-01-01 02:05"),
        ("10-50/20 * * * *", "2026-01-01 00:30", "2026-01-01 00:50"),
        ("@daily", "2026-01-01 00:00", "2026-01-02 00:00"),
    ],
)
def test_cron_next_run(expression: str, after: str, expected: str) -> None:
    assert CronSchedule.parse(expression).next_after(t(after)) == t(expected)


@pytest.mark.parametrize(
    "expression", ["* * * *", "60 * * * *", "* 24 * * *", "0 0 0 * *", "a * * * *", "*/0 * * * *"]
)
def test_cron_refuses_bad_expressions(expression: str) -> None:
    with pytest.raises(InvalidSpec):
        CronSchedule.parse(expression)


def test_cron_refuses_a_date_that_never_comes() -> None:
    with pytest.raises(InvalidSpec, match="never"):
        CronSchedule.parse("0 0 31 2 *").next_after(t("2026-01-01 00:00"))


def test_first_backup_is_due_at_the_first_slot_after_creation() -> None:
    hourly = CronSchedule.parse("0 * * * *")
    created = t("2026-01-01 10:20")
    assert backup_due(hourly, None, created, t("2026-01-01 10:59")) is None
    assert backup_due(hourly, None, created, t("2026-01-01 11:00")) == t("2026-01-01 11:00")


def test_handled_slot_is_not_due_again_and_missed_slots_make_one_backup() -> None:
    hourly = CronSchedule.parse("0 * * * *")
    created = t("2026-01-01 00:00")
    assert backup_due(hourly, t("2026-01-01 11:00"), created, t("2026-01-01 11:30")) is None
    # The operator was down from 11:30 to 15:10: one backup, for the newest slot.
    assert backup_due(hourly, t("2026-01-01 11:00"), created, t("2026-01-01 15:10")) == t(
        "2026-01-01 15:00"
    )


def test_on_demand_request_is_served_once_per_value() -> None:
    assert requested_backup({}, {}) is None
    assert requested_backup({BACKUP_NOW_ANNOTATION: "1"}, {}) == "1"
    assert requested_backup({BACKUP_NOW_ANNOTATION: "1"}, {"lastBackupRequest": "1"}) is None
    assert requested_backup({BACKUP_NOW_ANNOTATION: "2"}, {"lastBackupRequest": "1"}) == "2"


INFO = {"kind": "full", "key": "c/20260101T110000.000000Z-full.db", "revision": 42, "size": 8192}


def test_status_after_success_and_failure() -> None:
    ok = BackupResult(t("2026-01-01 11:00"), info={**INFO, "time": "2026-01-01T11:00:00Z"})
    previous = {"conditions": [{"type": "Available", "status": "True"}]}
    patch = status_after(ok, bucket="b", status=previous, slot=t("2026-01-01 11:00"), request=None)
    assert patch["lastBackup"] == {
        "time": "2026-01-01T11:00:00Z",
        "object": "s3://b/c/20260101T110000.000000Z-full.db",
        "revision": 42,
        "size": 8192,
        "kind": "full",
    }
    assert patch["lastScheduledBackup"] == "2026-01-01T11:00:00Z"
    types = {c["type"]: c for c in patch["conditions"]}
    assert types["Available"]["status"] == "True"  # other conditions are kept
    assert types["BackupSucceeded"]["status"] == "True"
    assert types["BackupSucceeded"]["lastTransitionTime"] == "2026-01-01T11:00:00Z"

    failed = BackupResult(t("2026-01-01 12:00"), error="cannot list s3://b/c/: NoSuchBucket")
    after = status_after(failed, bucket="b", status=patch, slot=None, request="r1")
    assert "lastBackup" not in after  # the previous success stays in status
    cond = next(c for c in after["conditions"] if c["type"] == "BackupSucceeded")
    assert (cond["status"], cond["reason"]) == ("False", "BackupFailed")
    assert "NoSuchBucket" in cond["message"]
    assert cond["lastTransitionTime"] == "2026-01-01T12:00:00Z"
    assert after["lastBackupRequest"] == "r1"


def test_credentials_come_from_the_secret_data() -> None:
    data = {
        "AWS_ACCESS_KEY_ID": base64.b64encode(b"id").decode(),
        "AWS_SECRET_ACCESS_KEY": base64.b64encode(b"secret").decode(),
    }
    assert credentials_env({"data": data}, "s") == {
        "AWS_ACCESS_KEY_ID": "id",
        "AWS_SECRET_ACCESS_KEY": "secret",
    }
    with pytest.raises(BackupFailed, match="does not exist"):
        credentials_env(None, "s")
    with pytest.raises(BackupFailed, match="lacks AWS_SECRET_ACCESS_KEY"):
        credentials_env({"data": {"AWS_ACCESS_KEY_ID": data["AWS_ACCESS_KEY_ID"]}}, "s")


def _body(**status: Any) -> dict[str, Any]:
    return {
        "metadata": {
            "name": "c",
            "namespace": "ns",
            "creationTimestamp": "2026-01-01T10:20:00Z",
            "annotations": {},
        },
        "spec": {
            "backup": {
                "schedule": "0 * * * *",
                "s3": {"bucket": "b", "prefix": "c/", "credentialsSecret": "creds"},
                "retention": {"maxBackups": 3},
            }
        },
        "status": {"clusterID": "abc", **status},
    }


def test_tick_runs_save_then_prune_with_the_secret_credentials() -> None:
    calls: list[tuple[list[str], dict[str, str]]] = []

    async def ctl(args: Sequence[str], env: Mapping[str, str]) -> str:
        calls.append((list(args), dict(env)))
        return json.dumps(INFO) if "save" in args else "kept 1 backups, deleted 0"

    async def secrets(namespace: str, name: str) -> dict[str, Any]:
        assert (namespace, name) == ("ns", "creds")
        return {
            "data": {
                "AWS_ACCESS_KEY_ID": base64.b64encode(b"id").decode(),
                "AWS_SECRET_ACCESS_KEY": base64.b64encode(b"sk").decode(),
            }
        }

    async def endpoints() -> list[str]:
        return member_endpoints(
            [
                {"metadata": {"name": "c-1"}, "status": {"podIP": "10.0.0.2"}},
                {"metadata": {"name": "c-0"}, "status": {"podIP": "10.0.0.1"}},
                {"metadata": {"name": "c-2"}, "status": {}},  # no address yet
            ],
            2379,
        )

    events: list[tuple[str, str, str]] = []
    runner = BackupRunner(ctl=ctl, clock=lambda: t("2026-01-01 11:00"))

    def run(body: dict[str, Any]) -> dict[str, Any] | None:
        return asyncio.run(
            tick(
                body,
                runner=runner,
                secrets=secrets,
                endpoints=endpoints,
                events=lambda *e: events.append(e),
            )
        )

    patch = run(_body())
    assert patch is not None and patch["lastBackup"]["revision"] == 42
    save, prune = calls
    assert save[0][:2] == ["--endpoints", "10.0.0.1:2379,10.0.0.2:2379"]
    assert save[0][-4:] == ["backup", "save", "s3://b/c", "--full"]
    assert save[1]["AWS_ACCESS_KEY_ID"] == "id" and save[1]["AWS_SECRET_ACCESS_KEY"] == "sk"
    assert prune[0][:3] == ["backup", "prune", "s3://b/c"] and "--keep-last" in prune[0]
    assert events == [
        (
            "Normal",
            "BackupSucceeded",
            "scheduled backup at revision 42 (8192 bytes) stored as "
            "s3://b/c/20260101T110000.000000Z-full.db",
        )
    ]
    # The same slot handled: nothing runs until the next one or a request.
    calls.clear()
    assert run(_body(lastScheduledBackup="2026-01-01T11:00:00Z")) is None
    assert calls == []


def test_tick_reports_a_missing_secret_as_a_failed_backup() -> None:
    async def ctl(args: Sequence[str], env: Mapping[str, str]) -> str:
        raise AssertionError("no backup without credentials")

    async def secrets(namespace: str, name: str) -> None:
        return None

    async def endpoints() -> list[str]:
        return []

    events: list[tuple[str, str, str]] = []
    body = _body(lastScheduledBackup="2026-01-01T11:00:00Z")
    body["metadata"]["annotations"] = {BACKUP_NOW_ANNOTATION: "now-1"}
    patch = asyncio.run(
        tick(
            body,
            runner=BackupRunner(ctl=ctl, clock=lambda: t("2026-01-01 11:10")),
            secrets=secrets,
            endpoints=endpoints,
            events=lambda *e: events.append(e),
        )
    )
    assert patch is not None and patch["lastBackupRequest"] == "now-1"
    assert "lastScheduledBackup" not in patch
    assert events[0][:2] == ("Warning", "BackupFailed")
    assert "'creds' does not exist" in events[0][2]


def test_a_failed_prune_does_not_hide_the_stored_backup() -> None:
    async def ctl(args: Sequence[str], env: Mapping[str, str]) -> str:
        if "prune" in args:
            raise BackupFailed("cannot delete from s3://b/c/: AccessDenied")
        return json.dumps(INFO)

    runner = BackupRunner(ctl=ctl, clock=lambda: t("2026-01-01 11:00"))
    target = S3Target("b", "c", credentials_secret="creds")
    result = asyncio.run(runner.backup(target, {}, ["10.0.0.1:2379"], keep_last=1))
    assert result.ok and result.info is not None and result.info["revision"] == 42
    assert "AccessDenied" in result.error
