"""`raftkvctl backup save|list|verify|restore|prune`: backups in S3-compatible object storage.

Thin commands over `raftkv.backup.BackupRepository`; every decision lives there. Each takes
the location as `s3://BUCKET/PREFIX` and `--s3-endpoint URL` for MinIO and other S3-compatible
servers; credentials and region come from boto3's default chain (`AWS_ACCESS_KEY_ID`,
`AWS_SECRET_ACCESS_KEY`, `AWS_PROFILE`, `~/.aws/credentials`, ...). Long transfers draw a
progress bar on stderr when it is a terminal, as `snapshot save` does.
"""

from __future__ import annotations

import argparse
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from raftkv.cli.ctl import EXIT_BAD_ARGS, CommandError, Context, humanize_bytes
from raftkv.cli.ctl_snapshot import ProgressBar
from raftkv.client import SyncClient
from raftkv.node.config import (
    DEFAULT_CLUSTER_TOKEN,
    DEFAULT_PEER_URL,
    ConfigError,
    parse_duration_seconds,
    parse_initial_cluster,
    parse_urls,
)

if TYPE_CHECKING:
    from raftkv.backup import BackupInfo, BackupRepository

_BAR_WIDTH = 30
# raftkv.backup (and boto3 with it, 0.2 s) is imported by the handlers that use it, so every
# other raftkvctl command starts without it; hence the kinds spelled out here.
FULL = "full"
INCREMENTAL = "incremental"


def register(commands: Any) -> None:
    backup = commands.add_parser("backup", help="backups in S3-compatible object storage")
    sub = backup.add_subparsers(title="backup commands", metavar="COMMAND")

    save = _with_location(sub.add_parser("save", help="back the cluster up into the bucket"))
    kind = save.add_mutually_exclusive_group()
    kind.add_argument(
        "--full", dest="kind", action="store_const", const=FULL, help="a snapshot (default)"
    )
    kind.add_argument(
        "--incremental",
        dest="kind",
        action="store_const",
        const=INCREMENTAL,
        help="the changes since the newest backup of this cluster",
    )
    save.set_defaults(handler=save_command, kind=FULL)

    listing = _with_location(sub.add_parser("list", help="one line per backup"))
    listing.set_defaults(handler=list_command)

    verify = _with_location(
        sub.add_parser("verify", help="read every backup back and check it is restorable")
    )
    verify.add_argument(
        "--object",
        dest="objects",
        action="append",
        default=[],
        help="only this data object (key or s3:// URL as listed); repeatable",
    )
    verify.set_defaults(handler=verify_command)

    restore = _with_location(
        sub.add_parser("restore", help="build a member's data dir from the backups")
    )
    target = restore.add_mutually_exclusive_group()
    target.add_argument(
        "--revision", type=int, default=0, help="the revision to restore (default: newest)"
    )
    target.add_argument(
        "--time", default="", help="restore the newest backup taken at or before this time"
    )
    restore.add_argument("--name", required=True, help="the member's name")
    restore.add_argument("--data-dir", required=True, help="directory to create")
    restore.add_argument(
        "--initial-cluster", default="", help="the new cluster's members, name=peer-url,..."
    )
    restore.add_argument(
        "--initial-cluster-token",
        default=DEFAULT_CLUSTER_TOKEN,
        help="the new cluster's token (give each restored cluster its own)",
    )
    restore.add_argument(
        "--initial-advertise-peer-urls", default=DEFAULT_PEER_URL, help="this member's peer URLs"
    )
    restore.set_defaults(handler=restore_command)

    prune = _with_location(
        sub.add_parser("prune", help="delete backups no retention rule keeps (whole chains)")
    )
    prune.add_argument("--keep-last", type=int, default=None, help="keep the newest N fulls")
    prune.add_argument(
        "--max-age", default="", help="also keep every chain with a backup younger than this"
    )
    prune.add_argument("--dry-run", action="store_true", help="only print what would go")
    prune.set_defaults(handler=prune_command)


def _with_location(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("location", help="s3://BUCKET/PREFIX")
    parser.add_argument("--s3-endpoint", default=None, help="URL of an S3-compatible server")
    parser.add_argument("--s3-region", default=None, help="region (default: AWS's chain)")
    return parser


def _repository(args: argparse.Namespace) -> BackupRepository:
    from raftkv.backup import BackupError, BackupRepository

    try:
        return BackupRepository(args.location, endpoint_url=args.s3_endpoint, region=args.s3_region)
    except BackupError as error:
        raise CommandError(str(error), EXIT_BAD_ARGS) from None


def _sync_client(ctx: Context) -> SyncClient:
    username, password = ctx.user, ctx.password
    if username and not password:
        username, _, password = username.partition(":")
    return SyncClient(
        list(ctx.endpoints),
        timeout=ctx.command_timeout,
        dial_timeout=ctx.dial_timeout,
        username=username or None,
        password=password or None,
        tls=ctx.tls,
    )


class _RevisionBar:
    """The progress bar of an incremental backup: revisions copied out of the history."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._drawn = False

    def update(self, done: int, remaining: int) -> None:
        total = max(done + remaining, 1)
        filled = int(done / total * _BAR_WIDTH)
        bar = "#" * filled + "-" * (_BAR_WIDTH - filled)
        self._stream.write(f"\r[{bar}] {done / total:4.0%} {done} / {total} revisions")
        self._stream.flush()
        self._drawn = True

    def close(self) -> None:
        if self._drawn:
            self._stream.write("\n")
            self._stream.flush()


def _describe(info: BackupInfo, bucket: str) -> str:
    text = (
        f"{info.kind} backup s3://{bucket}/{info.key} at revision {info.revision} "
        f"({humanize_bytes(info.size)})"
    )
    if info.parent:
        text += f", {info.events} events after revision {info.base_revision}"
    return text


def save_command(ctx: Context, args: argparse.Namespace) -> None:
    from raftkv.backup import BackupError

    repo = _repository(args)
    tty = ctx.stderr.isatty()
    bar: ProgressBar | _RevisionBar | None = None
    if tty:
        bar = ProgressBar(ctx.stderr) if args.kind == FULL else _RevisionBar(ctx.stderr)
    try:
        with _sync_client(ctx) as client:
            info = repo.save(client, kind=args.kind, progress=bar.update if bar else None)
    except BackupError as error:
        raise CommandError(str(error)) from None
    finally:
        if bar is not None:
            bar.close()
    if ctx.write_out == "json":
        ctx.print(info.to_json().decode())
        return
    ctx.print("Backup saved: " + _describe(info, repo.location.bucket))


def list_command(ctx: Context, args: argparse.Namespace) -> None:
    from raftkv.backup import BackupError
    from raftkv.backup.catalog import format_time

    repo = _repository(args)
    try:
        listing = repo.list()
    except BackupError as error:
        raise CommandError(str(error)) from None
    for key, problem in listing.unreadable.items():
        print(f"warning: {key}: {problem}", file=ctx.stderr)
    rows = [
        (b.kind, b.revision, format_time(b.time), b.size, f"s3://{repo.location.bucket}/{b.key}")
        for b in listing.backups
    ]
    if ctx.write_out == "json":
        ctx.print_json(
            [
                {
                    "kind": b.kind,
                    "revision": b.revision,
                    "base_revision": b.base_revision,
                    "time": format_time(b.time),
                    "size": b.size,
                    "object": f"s3://{repo.location.bucket}/{b.key}",
                    "cluster_id": f"{b.cluster_id:x}",
                }
                for b in listing.backups
            ]
        )
    elif ctx.write_out == "table":
        ctx.print_table(
            ("KIND", "REVISION", "TIME", "SIZE", "OBJECT"),
            [(k, r, t, humanize_bytes(s), o) for k, r, t, s, o in rows],
        )
    else:
        for kind, revision, when, size, obj in rows:
            ctx.print(f"{kind}, {revision}, {when}, {size}, {obj}")


def verify_command(ctx: Context, args: argparse.Namespace) -> None:
    from raftkv.backup import BackupError

    repo = _repository(args)
    try:
        bucket_url = f"s3://{repo.location.bucket}/"
        reports = repo.verify([o.removeprefix(bucket_url) for o in args.objects])
    except BackupError as error:
        raise CommandError(str(error)) from None
    if not reports:
        raise CommandError(f"there is no backup under {repo.location}")
    failed = [r for r in reports if not r.ok]
    for report in reports:
        where = f"s3://{repo.location.bucket}/{report.key}"
        ctx.print(f"OK {where}" if report.ok else f"FAILED {where}: {report.problem}")
    if failed:
        raise CommandError(f"{len(failed)} of {len(reports)} backups failed verification")


def _parse_time(text: str) -> datetime:
    from raftkv.backup.catalog import parse_time

    try:
        return parse_time(text)
    except ValueError:
        raise CommandError(
            f"invalid --time {text!r} (ISO 8601, e.g. 2026-01-31T12:00:00Z)", EXIT_BAD_ARGS
        ) from None


def restore_command(ctx: Context, args: argparse.Namespace) -> None:
    from raftkv.backup import BackupError, MemberSpec

    try:
        advertised = [str(u) for u in parse_urls(args.initial_advertise_peer_urls)]
        cluster = (
            {
                name: [str(u) for u in urls]
                for name, urls in parse_initial_cluster(args.initial_cluster).items()
            }
            if args.initial_cluster
            else {args.name: advertised}
        )
    except ConfigError as error:
        raise CommandError(str(error), EXIT_BAD_ARGS) from None
    at = _parse_time(args.time) if args.time else None
    repo = _repository(args)
    member = MemberSpec(
        name=args.name,
        data_dir=Path(args.data_dir),
        initial_cluster=cluster,
        initial_cluster_token=args.initial_cluster_token,
        initial_advertise_peer_urls=advertised,
    )
    bar = ProgressBar(ctx.stderr) if ctx.stderr.isatty() else None
    try:
        outcome = repo.restore(
            member, revision=args.revision, at=at, progress=bar.update if bar else None
        )
    except BackupError as error:
        raise CommandError(str(error)) from None
    finally:
        if bar is not None:
            bar.close()
    plan, result = outcome.plan, outcome.result
    print(
        f"restored {member.data_dir} at revision {result.revision} from "
        f"s3://{repo.location.bucket}/{plan.full.key} and {len(plan.incrementals)} incremental "
        f"backup(s): member {result.member_id:x} ({member.name}) of new cluster "
        f"{result.cluster_id:x}",
        file=ctx.stderr,
    )


def _max_age(text: str) -> timedelta:
    if text.endswith("d") and text[:-1].isdigit():
        return timedelta(days=int(text[:-1]))
    try:
        return timedelta(seconds=parse_duration_seconds(text))
    except ConfigError:
        raise CommandError(
            f"invalid --max-age {text!r} (e.g. 7d, 36h, 90m)", EXIT_BAD_ARGS
        ) from None


def prune_command(ctx: Context, args: argparse.Namespace) -> None:
    from raftkv.backup import BackupError

    if args.keep_last is None and not args.max_age:
        raise CommandError("prune needs --keep-last N, --max-age D or both", EXIT_BAD_ARGS)
    if args.keep_last is not None and args.keep_last < 1:
        raise CommandError("--keep-last must be at least 1", EXIT_BAD_ARGS)
    max_age = _max_age(args.max_age) if args.max_age else None
    repo = _repository(args)
    try:
        plan = repo.prune(keep_last=args.keep_last, max_age=max_age, dry_run=args.dry_run)
    except BackupError as error:
        raise CommandError(str(error)) from None
    verb = "would delete" if args.dry_run else "deleted"
    for info in plan.delete:
        ctx.print(f"{verb} {info.kind} s3://{repo.location.bucket}/{info.key}")
    for info in plan.broken:
        print(
            f"warning: s3://{repo.location.bucket}/{info.key} does not lead back to a full "
            "backup; left in place",
            file=ctx.stderr,
        )
    ctx.print(f"kept {len(plan.keep)} backups, {verb} {len(plan.delete)}")
