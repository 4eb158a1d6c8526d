"""`raftkvctl snapshot save|status|restore`: etcdctl's snapshot commands for raftkv.

- `save FILE` streams one member's backend into `FILE.part` (with a progress bar when stderr is
  a terminal), checks the stream's SHA-256 trailer, fsyncs and renames it to FILE. The file keeps
  the trailer, so `restore` (ours or etcdctl's) can verify it later.
- `status FILE` reads the database in the file without changing it: hash, revision, total
  keys (rows of every bucket, as etcdctl counts them) and size.
- `restore FILE` builds a new data dir for one member of a new cluster (see
  `raftkv.node.backup`); run it once per member with the same cluster flags.

Messages and exit codes are etcdctl 3.4's where it has them.
"""

from __future__ import annotations

import argparse
import hashlib
import os
from pathlib import Path
from typing import Any, TextIO

from raftkv.cli.ctl import (
    EXIT_BAD_ARGS,
    EXIT_INTERRUPTED,
    CommandError,
    Context,
    humanize_bytes,
)
from raftkv.client import AsyncClient
from raftkv.node.backup import (
    SHA256_BYTES,
    RestoreError,
    RestoreSpec,
    SnapshotFileError,
    restore_member,
    snapshot_status,
)
from raftkv.node.config import (
    DEFAULT_CLUSTER_TOKEN,
    DEFAULT_NAME,
    DEFAULT_PEER_URL,
    ConfigError,
    parse_initial_cluster,
    parse_urls,
)

_BAR_WIDTH = 30


def register(commands: Any) -> None:
    snapshot = commands.add_parser("snapshot", help="manage backend snapshots")
    sub = snapshot.add_subparsers(title="snapshot commands", metavar="COMMAND")

    save = sub.add_parser("save", help="stream a snapshot of one member's backend into a file")
    save.add_argument("filename", nargs="*", help="where to store the snapshot")
    save.set_defaults(handler=save_command)

    status = sub.add_parser("status", help="describe a snapshot file")
    status.add_argument("filename", nargs="*")
    status.set_defaults(handler=status_command)

    restore = sub.add_parser("restore", help="build a member's data dir from a snapshot file")
    restore.add_argument("filename", nargs="*")
    restore.add_argument("--name", default=DEFAULT_NAME, help="the member's name")
    restore.add_argument(
        "--data-dir", default="", help="directory to create (default: '<name>.raftkv')"
    )
    restore.add_argument(
        "--initial-cluster",
        default="",
        help="the new cluster's members, name=peer-url,... (default: '<name>=<peer urls>')",
    )
    restore.add_argument(
        "--initial-cluster-token",
        default=DEFAULT_CLUSTER_TOKEN,
        help="the new cluster's token (give each restored cluster its own)",
    )
    restore.add_argument(
        "--initial-advertise-peer-urls",
        default=DEFAULT_PEER_URL,
        help="this member's peer URLs",
    )
    restore.add_argument(
        "--skip-hash-check",
        action="store_true",
        help="accept a file without the SHA-256 trailer (a copy of member/snap/db)",
    )
    restore.set_defaults(handler=restore_command)


def _one_file(args: argparse.Namespace, what: str) -> Path:
    if len(args.filename) != 1:
        raise CommandError(f"snapshot {what}", EXIT_BAD_ARGS)
    return Path(args.filename[0])


# -- save ------------------------------------------------------------------------------------------


class ProgressBar:
    """A one-line progress bar redrawn in place on a terminal."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._drawn = False

    def update(self, received: int, remaining: int) -> None:
        total = max(received + remaining, 1)
        done = min(received / total, 1.0)
        filled = int(done * _BAR_WIDTH)
        bar = "#" * filled + "-" * (_BAR_WIDTH - filled)
        self._stream.write(
            f"\r[{bar}] {done:4.0%} {humanize_bytes(received)} / {humanize_bytes(total)}"
        )
        self._stream.flush()
        self._drawn = True

    def close(self) -> None:
        if self._drawn:
            self._stream.write("\n")
            self._stream.flush()


def _check_trailer(path: Path) -> None:
    """The stream ends with the SHA-256 of everything before it."""
    size = path.stat().st_size
    if size < SHA256_BYTES:
        raise CommandError(f"snapshot stream ended after {size} bytes")
    digest = hashlib.sha256()
    with path.open("rb") as f:
        remaining = size - SHA256_BYTES
        while remaining > 0:
            chunk = f.read(min(remaining, 1 << 20))
            digest.update(chunk)
            remaining -= len(chunk)
        trailer = f.read()
    if digest.digest() != trailer:
        raise CommandError("snapshot stream is damaged: its SHA-256 does not match the data")


def save_command(ctx: Context, args: argparse.Namespace) -> None:
    path = _one_file(args, "save expects one argument")
    if len(ctx.endpoints) != 1:
        raise CommandError(
            "snapshot must be requested to one selected node, not multiple "
            f"[{' '.join(ctx.endpoints)}]",
            EXIT_INTERRUPTED,
        )
    part = path.with_name(path.name + ".part")
    bar = ProgressBar(ctx.stderr) if ctx.stderr.isatty() else None
    try:
        with part.open("wb") as out:

            async def stream(client: AsyncClient) -> None:
                await client.snapshot(
                    out, endpoint=ctx.endpoints[0], progress=bar.update if bar else None
                )

            try:
                ctx.call(stream)
            finally:
                if bar is not None:
                    bar.close()
            out.flush()
            os.fsync(out.fileno())
        _check_trailer(part)
        os.replace(part, path)
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    ctx.print(f"Snapshot saved at {path}")


# -- status ----------------------------------------------------------------------------------------


def status_command(ctx: Context, args: argparse.Namespace) -> None:
    path = _one_file(args, "status requires exactly one argument")
    if not path.exists():
        raise CommandError(f"stat {path}: no such file or directory")
    try:
        status = snapshot_status(path)
    except SnapshotFileError as error:
        raise CommandError(str(error)) from None
    if ctx.write_out == "json":
        ctx.print_json(
            {
                "hash": status.hash,
                "revision": status.revision,
                "totalKey": status.total_key,
                "totalSize": status.total_size,
            }
        )
    elif ctx.write_out == "table":
        ctx.print_table(
            ("HASH", "REVISION", "TOTAL KEYS", "TOTAL SIZE"),
            [
                (
                    f"{status.hash:x}",
                    status.revision,
                    status.total_key,
                    humanize_bytes(status.total_size),
                )
            ],
        )
    else:
        ctx.print(
            f"{status.hash:x}, {status.revision}, {status.total_key}, "
            f"{humanize_bytes(status.total_size)}"
        )


# -- restore ---------------------------------------------------------------------------------------


def restore_command(ctx: Context, args: argparse.Namespace) -> None:
    path = _one_file(args, "restore requires exactly one argument")
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
    spec = RestoreSpec(
        snapshot=path,
        name=args.name,
        data_dir=Path(args.data_dir or f"{args.name}.raftkv"),
        initial_cluster=cluster,
        initial_cluster_token=args.initial_cluster_token,
        initial_advertise_peer_urls=advertised,
        skip_hash_check=args.skip_hash_check,
    )
    if not path.exists():
        raise CommandError(f"open {path}: no such file or directory")
    try:
        result = restore_member(spec)
    except (RestoreError, SnapshotFileError) as error:
        raise CommandError(str(error)) from None
    print(
        f"restored snapshot {path} into {spec.data_dir}: member {result.member_id:x} "
        f"({spec.name}) of new cluster {result.cluster_id:x}, revision {result.revision}",
        file=ctx.stderr,
    )
