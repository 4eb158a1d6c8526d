"""Scheduled and on-demand backups of a RaftKVCluster to S3-compatible object storage.

The decisions are pure functions (`CronSchedule.next_after`, `backup_due`, `requested_backup`,
`status_after`), so they are tested without a cluster; `BackupRunner` carries them out.

Why the engine runs as `raftkvctl` in a subprocess instead of in the operator's process: the
engine (`raftkv.backup`) builds data dirs with the server's storage modules, and the operator may
import nothing of the server but `raftkv.client` (import-linter contract). The image ships
`raftkvctl`, whose `-w json` output is the engine's own metadata, so nothing is lost; the
blocking boto3 work and its memory stay out of the operator's event loop as a bonus.
Credentials come from `spec.backup.s3.credentialsSecret` (read through the API, never mounted
into the operator) and reach the subprocess as the AWS variables boto3's default chain reads.

Scheduling: `status.lastScheduledBackup` is the schedule slot last handled. A slot that passes
while the operator is down is caught up by one backup, not one per missed slot. On-demand: set
the annotation `raftkv.io/backup-now` to any new value; `status.lastBackupRequest` records the
value served, so each value triggers exactly one backup.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import sys
import tempfile
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException
from prometheus_client import CollectorRegistry, Gauge

from raftkv_operator.model import InvalidSpec

BACKUP_NOW_ANNOTATION = "raftkv.io/backup-now"
CONDITION = "BackupSucceeded"
CREDENTIAL_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
OPTIONAL_CREDENTIAL_KEYS = ("AWS_SESSION_TOKEN",)
# A full backup of a large cluster takes a while; a hung one must not block the timer forever.
BACKUP_TIMEOUT_S = 3600.0
TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


# ---- cron ---------------------------------------------------------------------------------------

_FIELDS = (("minute", 0, 59), ("hour", 0, 23), ("day of month", 1, 31), ("month", 1, 12))
_ALIASES = {
    "@hourly": "0 * * * *",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@weekly": "0 0 * * 0",
    "@monthly": "0 0 1 * *",
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
}


def _parse_field(text: str, name: str, low: int, high: int) -> frozenset[int]:
    values: set[int] = set()
    for part in text.split(","):
        body, _, step_text = part.partition("/")
        try:
            step = int(step_text) if step_text else 1
            if body == "*":
                start, end = low, high
            elif "-" in body:
                first, _, last = body.partition("-")
                start, end = int(first), int(last)
            else:
                start = int(body)
                end = high if step_text else start
        except ValueError:
            raise InvalidSpec(f"cron {name} field {text!r}: not a number, range or step") from None
        if step < 1 or not low <= start <= end <= high:
            raise InvalidSpec(f"cron {name} field {text!r}: outside {low}-{high}")
        values.update(range(start, end + 1, step))
    return frozenset(values)


@dataclass(frozen=True)
class CronSchedule:
    """A five-field cron expression (minute hour day-of-month month day-of-week, UTC), with
    `*`, lists, ranges, steps and the @hourly/@daily/... aliases; day of week 0-7 (0 and 7 are
    Sunday). As in cron, when both day fields are restricted a day matching either one runs."""

    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]  # 0 = Sunday
    any_day: bool  # day of month is *
    any_weekday: bool  # day of week is *

    @classmethod
    def parse(cls, text: str) -> CronSchedule:
        expression = _ALIASES.get(text.strip(), text.strip())
        parts = expression.split()
        if len(parts) != 5:
            raise InvalidSpec(f"cron schedule {text!r} must have five fields")
        minutes, hours, days, months = (
            _parse_field(part, name, low, high)
            for part, (name, low, high) in zip(parts, _FIELDS, strict=False)
        )
        weekdays = frozenset(d % 7 for d in _parse_field(parts[4], "day of week", 0, 7))
        return cls(minutes, hours, days, months, weekdays, parts[2] == "*", parts[4] == "*")

    def _day_matches(self, when: datetime) -> bool:
        if when.month not in self.months:
            return False
        by_day = when.day in self.days
        by_weekday = (when.isoweekday() % 7) in self.weekdays
        if self.any_day or self.any_weekday:
            return by_day and by_weekday
        return by_day or by_weekday

    def next_after(self, when: datetime) -> datetime:
        """The first scheduled minute strictly after `when` (UTC)."""
        t = when.astimezone(UTC).replace(second=0, microsecond=0) + timedelta(minutes=1)
        limit = t + timedelta(days=366 * 5)  # covers Feb 29 schedules
        while t < limit:
            if not self._day_matches(t):
                t = (t + timedelta(days=1)).replace(hour=0, minute=0)
            elif t.hour not in self.hours:
                t = (t + timedelta(hours=1)).replace(minute=0)
            elif t.minute not in self.minutes:
                t += timedelta(minutes=1)
            else:
                return t
        raise InvalidSpec("cron schedule never runs (no such date)")


# ---- the spec -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class S3Target:
    """`spec.backup.s3` / `spec.restore.s3`: where the backups are and how to reach them."""

    bucket: str
    prefix: str = ""
    endpoint: str | None = None
    region: str | None = None
    credentials_secret: str = ""
    force_path_style: bool = False

    @property
    def location(self) -> str:
        return f"s3://{self.bucket}/{self.prefix.strip('/')}"

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any], where: str) -> S3Target:
        bucket = str(raw.get("bucket") or "")
        secret = str(raw.get("credentialsSecret") or "")
        if not bucket or not secret:
            raise InvalidSpec(f"{where}.s3 needs bucket and credentialsSecret")
        return cls(
            bucket=bucket,
            prefix=str(raw.get("prefix") or ""),
            endpoint=raw.get("endpoint") or None,
            region=raw.get("region") or None,
            credentials_secret=secret,
            force_path_style=bool(raw.get("forcePathStyle", False)),
        )

    @property
    def needs_path_style(self) -> bool:
        """forcePathStyle that raftkvctl does not apply by itself: with an endpoint it always
        uses path-style addressing; without one (AWS) only a boto3 config file changes it."""
        return self.force_path_style and not self.endpoint

    def ctl_flags(self) -> list[str]:
        """The location flags of a `raftkvctl backup` command."""
        flags = [self.location]
        if self.endpoint:
            flags += ["--s3-endpoint", self.endpoint]
        if self.region:
            flags += ["--s3-region", self.region]
        return flags


@dataclass(frozen=True)
class BackupSpec:
    schedule: CronSchedule
    s3: S3Target
    keep_last: int | None = None
    max_age: str | None = None  # "72h", "30d"

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any]) -> BackupSpec | None:
        raw = spec.get("backup")
        if not raw:
            return None
        retention = raw.get("retention") or {}
        max_age = retention.get("maxAge")
        if max_age is not None and not (
            str(max_age)[:-1].isdigit() and str(max_age)[-1:] in ("h", "d")
        ):
            raise InvalidSpec(f"spec.backup.retention.maxAge {max_age!r}: use e.g. 72h or 30d")
        keep = retention.get("maxBackups")
        return cls(
            schedule=CronSchedule.parse(str(raw.get("schedule") or "")),
            s3=S3Target.from_dict(raw.get("s3") or {}, "spec.backup"),
            keep_last=int(keep) if keep is not None else None,
            max_age=str(max_age) if max_age is not None else None,
        )


# ---- decisions ----------------------------------------------------------------------------------


def parse_time(text: str | None) -> datetime | None:
    if not text:
        return None
    return datetime.strptime(text, TIME_FORMAT).replace(tzinfo=UTC)


def format_time(when: datetime) -> str:
    return when.astimezone(UTC).strftime(TIME_FORMAT)


def backup_due(
    schedule: CronSchedule, last_slot: datetime | None, created: datetime, now: datetime
) -> datetime | None:
    """The schedule slot to back up for now, or None: the newest slot after the last one
    handled (or after the resource's creation) that is not in the future."""
    slot = schedule.next_after(last_slot or created)
    if slot > now:
        return None
    # Several missed slots are caught up by a single backup: report the newest one.
    while (following := schedule.next_after(slot)) <= now:
        slot = following
    return slot


def requested_backup(annotations: Mapping[str, str], status: Mapping[str, Any]) -> str | None:
    """The on-demand request to serve: the annotation's value when it was not served yet."""
    value = annotations.get(BACKUP_NOW_ANNOTATION)
    if not value or value == status.get("lastBackupRequest"):
        return None
    return value


@dataclass(frozen=True)
class BackupResult:
    """One finished attempt: `info` is the engine's metadata on success, `error` says why it
    failed (or, next to `info`, why the retention rules could not be applied after it)."""

    finished: datetime
    info: Mapping[str, Any] | None = None
    error: str = ""

    @property
    def ok(self) -> bool:
        return self.info is not None


def last_backup_status(result: BackupResult, bucket: str) -> dict[str, Any]:
    """`status.lastBackup` of a successful backup: time, object, revision, size (and kind)."""
    assert result.info is not None
    info = result.info
    return {
        "time": str(info.get("time") or format_time(result.finished)),
        "object": f"s3://{bucket}/{info['key']}",
        "revision": int(info["revision"]),
        "size": int(info["size"]),
        "kind": str(info.get("kind") or "full"),
    }


def condition(
    result: BackupResult, previous: Sequence[Mapping[str, Any]], now: str
) -> dict[str, Any]:
    """The BackupSucceeded condition after `result` (its transition time kept while unchanged)."""
    value = "True" if result.ok else "False"
    old = next((c for c in previous if c.get("type") == CONDITION), None)
    if result.ok:
        assert result.info is not None
        message = f"backup at revision {result.info['revision']} stored as {result.info['key']}"
    else:
        message = result.error
    return {
        "type": CONDITION,
        "status": value,
        "reason": "BackupSucceeded" if result.ok else "BackupFailed",
        "message": message,
        "lastTransitionTime": (
            old["lastTransitionTime"] if old and old.get("status") == value else now
        ),
    }


def with_condition(
    conditions: Sequence[Mapping[str, Any]], new: Mapping[str, Any]
) -> list[dict[str, Any]]:
    """`conditions` with the one of `new`'s type replaced (or added)."""
    kept = [dict(c) for c in conditions if c.get("type") != new["type"]]
    return [*kept, dict(new)]


def status_after(
    result: BackupResult,
    *,
    bucket: str,
    status: Mapping[str, Any],
    slot: datetime | None,
    request: str | None,
) -> dict[str, Any]:
    """The status fields to patch after an attempt. The slot and the request count as handled
    even when the backup failed: the condition and the event say so, and the next slot (or a new
    annotation value) tries again instead of a retry storm against a broken bucket."""
    patch: dict[str, Any] = {
        "conditions": with_condition(
            status.get("conditions") or (),
            condition(result, status.get("conditions") or (), format_time(result.finished)),
        )
    }
    if result.ok:
        patch["lastBackup"] = last_backup_status(result, bucket)
    if slot is not None:
        patch["lastScheduledBackup"] = format_time(slot)
    if request is not None:
        patch["lastBackupRequest"] = request
    return patch


# ---- carrying it out ----------------------------------------------------------------------------


class BackupFailed(Exception):
    """A backup could not be taken; the message is a complete sentence for status and events."""


def credentials_env(secret: Mapping[str, Any] | None, name: str) -> dict[str, str]:
    """The AWS variables from a Secret's data (base64, as the API returns it)."""
    if secret is None:
        raise BackupFailed(f"credentials Secret {name!r} does not exist")
    data = secret.get("data") or {}
    missing = [k for k in CREDENTIAL_KEYS if k not in data]
    if missing:
        raise BackupFailed(f"credentials Secret {name!r} lacks {', '.join(missing)}")
    return {
        key: base64.b64decode(data[key]).decode()
        for key in (*CREDENTIAL_KEYS, *OPTIONAL_CREDENTIAL_KEYS)
        if key in data
    }


CtlRunner = Callable[[Sequence[str], Mapping[str, str]], Awaitable[str]]


async def run_ctl(args: Sequence[str], env: Mapping[str, str]) -> str:
    """`raftkvctl ARGS` with `env` added to a clean AWS environment; its stdout, or BackupFailed
    with its last error line."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "raftkv.cli.ctl",
        *args,
        env={**_base_env(), **env},
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(), BACKUP_TIMEOUT_S)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        await process.wait()
        raise BackupFailed(f"raftkvctl {args[0]} {args[1]} timed out") from None
    if process.returncode != 0:
        lines = [line for line in err.decode(errors="replace").splitlines() if line.strip()]
        raise BackupFailed(lines[-1] if lines else f"raftkvctl exited with {process.returncode}")
    return out.decode()


def _base_env() -> dict[str, str]:
    """The operator's environment without AWS settings of its own: a cluster's backups use its
    Secret's credentials and nothing else (no profile or instance role leaking in)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env["AWS_SHARED_CREDENTIALS_FILE"] = os.devnull
    env["AWS_CONFIG_FILE"] = os.devnull
    return env


@dataclass(frozen=True)
class ClientTLS:
    """Files of the operator's client certificate, for clusters serving clients over TLS."""

    ca_file: str
    cert_file: str
    key_file: str


@dataclass
class BackupRunner:
    ctl: CtlRunner = run_ctl
    clock: Callable[[], datetime] = lambda: datetime.now(UTC)

    async def backup(
        self,
        target: S3Target,
        credentials: Mapping[str, str],
        endpoints: Sequence[str],
        *,
        tls: ClientTLS | None = None,
        keep_last: int | None = None,
        max_age: str | None = None,
    ) -> BackupResult:
        """A full backup of the members at `endpoints` (host:port or URLs), then the retention
        rules; never raises for a failed backup (see `BackupResult.error`)."""
        try:
            with path_style_config(target.needs_path_style) as extra_env:
                env = {**credentials, **extra_env}
                if target.region:
                    env["AWS_DEFAULT_REGION"] = target.region
                info = await self._save(target, env, endpoints, tls)
                if keep_last is not None or max_age is not None:
                    prune = ["backup", "prune", *target.ctl_flags()]
                    if keep_last is not None:
                        prune += ["--keep-last", str(keep_last)]
                    if max_age is not None:
                        prune += ["--max-age", max_age]
                    try:
                        await self.ctl(prune, env)
                    except BackupFailed as error:
                        # The backup itself is stored and complete: report it as such.
                        return BackupResult(self.clock(), info=info, error=str(error))
        except BackupFailed as error:
            return BackupResult(self.clock(), error=str(error))
        return BackupResult(self.clock(), info=info)

    async def _save(
        self,
        target: S3Target,
        env: Mapping[str, str],
        endpoints: Sequence[str],
        tls: ClientTLS | None,
    ) -> dict[str, Any]:
        if not endpoints:
            raise BackupFailed("no member pod has an address to back up from")
        args = ["--endpoints", ",".join(endpoints), "-w", "json", "--command-timeout", "30s"]
        if tls is not None:
            args += ["--cacert", tls.ca_file, "--cert", tls.cert_file, "--key", tls.key_file]
        out = await self.ctl([*args, "backup", "save", *target.ctl_flags(), "--full"], env)
        try:
            info = json.loads(out)
            int(info["revision"]), int(info["size"]), str(info["key"])
        except (ValueError, KeyError, TypeError):
            raise BackupFailed(
                f"raftkvctl backup save printed no backup metadata: {out!r}"
            ) from None
        return dict(info)


@contextlib.contextmanager
def path_style_config(wanted: bool) -> Iterator[dict[str, str]]:
    """The env a `raftkvctl` command needs for path-style addressing (`S3Target.needs_path_style`):
    boto3 reads the addressing style from its config file only, so one is written for the
    duration of the command."""
    if not wanted:
        yield {}
        return
    with tempfile.NamedTemporaryFile("w", suffix=".aws-config") as config:
        config.write("[default]\ns3 =\n    addressing_style = path\n")
        config.flush()
        yield {"AWS_CONFIG_FILE": config.name}


class BackupMetrics:
    """The last-success timestamp per cluster (the counter is `OperatorMetrics.backups`)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.last_success = Gauge(
            "raftkv_operator_backup_last_success_timestamp_seconds",
            "Unix time of each managed cluster's last successful backup.",
            ["cluster_namespace", "cluster_name"],
            registry=registry,
        )

    def succeeded(self, namespace: str, cluster: str, when: datetime) -> None:
        self.last_success.labels(namespace, cluster).set(when.timestamp())

    def cluster_deleted(self, namespace: str, cluster: str) -> None:
        with contextlib.suppress(KeyError):
            self.last_success.remove(namespace, cluster)


# ---- one timer tick -----------------------------------------------------------------------------

SecretReader = Callable[[str, str], Awaitable[Mapping[str, Any] | None]]
EventSink = Callable[[str, str, str], None]  # (type, reason, message)
EndpointLister = Callable[[], Awaitable[Sequence[str]]]


async def read_secret(namespace: str, name: str) -> dict[str, Any] | None:
    """The Secret through the API (`get` on secrets in the cluster's namespace only)."""

    def read() -> dict[str, Any] | None:
        try:
            secret = k8s.CoreV1Api().read_namespaced_secret(name, namespace)
        except ApiException as error:
            if error.status == 404:
                return None
            if error.status == 403:
                raise BackupFailed(
                    f"the operator may not read Secret {name!r} in {namespace} "
                    "(the chart grants it per watched namespace: rbac.backupSecrets)"
                ) from None
            raise
        return {"data": dict(secret.data or {})}

    return await asyncio.to_thread(read)


def member_endpoints(pods: Sequence[Mapping[str, Any]], port: int) -> list[str]:
    """Client endpoints (pod IP:port) of the running, not terminating pods, in name order."""
    found = []
    for pod in sorted(pods, key=lambda p: p["metadata"]["name"]):
        ip = (pod.get("status") or {}).get("podIP")
        if ip and not pod["metadata"].get("deletionTimestamp"):
            found.append(f"{ip}:{port}")
    return found


async def tick(
    body: Mapping[str, Any],
    *,
    runner: BackupRunner,
    secrets: SecretReader,
    endpoints: EndpointLister,
    events: EventSink,
    tls: ClientTLS | None = None,
    on_result: Callable[[BackupResult], None] = lambda _: None,
) -> dict[str, Any] | None:
    """Back the cluster up when a slot is due or a backup was requested; the status fields to
    patch, or None when nothing was due."""
    spec = BackupSpec.from_spec(body.get("spec") or {})
    if spec is None:
        return None
    meta, status = body["metadata"], body.get("status") or {}
    now = runner.clock()
    created = parse_time(meta.get("creationTimestamp")) or now
    slot = backup_due(spec.schedule, parse_time(status.get("lastScheduledBackup")), created, now)
    request = requested_backup(meta.get("annotations") or {}, status)
    if slot is None and request is None:
        return None
    if not status.get("clusterID"):
        return None  # not formed yet: nothing to back up; the slot stays due
    try:
        secret = await secrets(meta["namespace"], spec.s3.credentials_secret)
        credentials = credentials_env(secret, spec.s3.credentials_secret)
    except BackupFailed as error:
        result = BackupResult(runner.clock(), error=str(error))
    else:
        result = await runner.backup(
            spec.s3,
            credentials,
            await endpoints(),
            tls=tls,
            keep_last=spec.keep_last,
            max_age=spec.max_age,
        )
    on_result(result)
    why = "requested" if request is not None and slot is None else "scheduled"
    if result.ok:
        done = last_backup_status(result, spec.s3.bucket)
        events(
            "Normal",
            "BackupSucceeded",
            f"{why} backup at revision {done['revision']} ({done['size']} bytes) "
            f"stored as {done['object']}",
        )
        if result.error:
            events("Warning", "RetentionFailed", f"old backups not pruned: {result.error}")
    else:
        events("Warning", "BackupFailed", f"{why} backup failed: {result.error}")
    return status_after(result, bucket=spec.s3.bucket, status=status, slot=slot, request=request)
