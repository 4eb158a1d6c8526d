"""Building members' data dirs before `raftkv` starts: a new cluster from a backup
(`spec.restore`), or a lost cluster's survivor as a cluster of one (disaster recovery).

Both run as an init container of the member pods, `python -m raftkv_operator.restore ...`
(this module's `main`), in the same image. The init step is a small program rather than a bare
`raftkvctl` command because it runs again on every pod start and must decide each time:

- `backup`: restore only into a pod founding a NEW cluster (`--initial-cluster-state new`) whose
  data dir does not exist. A restarted founding member keeps its data; a member added later
  (state `existing`) joins empty as a learner, as in any cluster. The restore itself is
  `raftkvctl backup restore` with the founding members the operator computed, so every member
  builds the same membership alone (`etcdctl snapshot restore` semantics).
- `survivor`: on the pod named `--survivor` only, once per `--recovery-id` (a marker file on the
  volume), rebuild its data dir as the only member of a new cluster from its own backend
  database, the old data dir kept beside it. Everything the survivor applied is kept; the
  members that are gone are added back empty, as learners, by the ordinary scale-up.

`init_container` builds the container; `resources.statefulset` takes it through its
`init_containers` hook. Credentials reach the init container as `secretKeyRef` env, so the
operator never handles them for a restore. raftkv has no `--force-new-cluster`: the survivor
step gets the same result (membership rewritten to itself alone) from a snapshot restore.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from raftkv_operator.backups import (
    CREDENTIAL_KEYS,
    OPTIONAL_CREDENTIAL_KEYS,
    S3Target,
    path_style_config,
)
from raftkv_operator.model import DATA_DIR, DATA_MOUNT, PEER_PORT, ClusterSpec, InvalidSpec, Names

INIT_CONTAINER = "restore"
BACKEND_DB = Path("member") / "snap" / "db"


@dataclass(frozen=True)
class RestoreSource:
    """`spec.restore`: the backups to start from and the point to restore (newest by default)."""

    s3: S3Target
    revision: int = 0
    time: str = ""  # RFC 3339: the newest backup taken at or before it

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any]) -> RestoreSource | None:
        raw = spec.get("restore")
        if not raw:
            return None
        revision = int(raw.get("revision") or 0)
        time = str(raw.get("time") or "")
        if revision and time:
            raise InvalidSpec("spec.restore: give revision or time, not both")
        if revision < 0:
            raise InvalidSpec("spec.restore.revision must be positive")
        return cls(S3Target.from_dict(raw.get("s3") or {}, "spec.restore"), revision, time)

    def args(self) -> list[str]:
        out = ["backup", *self.s3.ctl_flags()]
        if self.revision:
            out += ["--revision", str(self.revision)]
        if self.time:
            out += ["--time", self.time]
        if self.s3.needs_path_style:
            out.append("--force-path-style")
        return out


@dataclass(frozen=True)
class SurvivorRecovery:
    """Rebuild `survivor`'s data dir as a one-member cluster, once per `recovery_id`."""

    survivor: str
    recovery_id: str

    def args(self) -> list[str]:
        return ["survivor", "--survivor", self.survivor, "--recovery-id", self.recovery_id]


InitStep = RestoreSource | SurvivorRecovery


def pod_init(body: Mapping[str, Any]) -> InitStep | None:
    """The init step the member pods need now: a running recovery's (`status.recovery`), else
    `spec.restore` (which acts only while the cluster is founded)."""
    spec, status = body.get("spec") or {}, body.get("status") or {}
    recovery = status.get("recovery") or {}
    if recovery.get("phase") == "Recovering":
        if recovery.get("policy") == "fromSurvivor":
            return SurvivorRecovery(str(recovery["survivor"]), str(recovery["id"]))
        if recovery.get("policy") == "fromBackup":
            return RestoreSource(S3Target.from_dict(spec["backup"]["s3"], "spec.backup"))
    return RestoreSource.from_spec(spec)


def _own_peer_url(names: Names, *, tls: bool) -> str:
    host = f"$(POD_NAME).{names.peer_service}.$(POD_NAMESPACE).svc.{names.cluster_domain}"
    return f"{'https' if tls else 'http'}://{host}:{PEER_PORT}"


def init_container(
    spec: ClusterSpec,
    names: Names,
    step: InitStep,
    *,
    initial_cluster: str,
    state: str,
    token: str,
) -> dict[str, Any]:
    """The init container that runs `step` in each member pod (a no-op where it does not
    apply), with the same cluster arguments as the member's own command line."""
    env: list[dict[str, Any]] = [
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
    ]
    if isinstance(step, RestoreSource):
        secret = step.s3.credentials_secret
        env += [
            {"name": key, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}}
            for key in CREDENTIAL_KEYS
        ]
        env += [
            {
                "name": key,
                "valueFrom": {"secretKeyRef": {"name": secret, "key": key, "optional": True}},
            }
            for key in OPTIONAL_CREDENTIAL_KEYS
        ]
        if step.s3.region:
            env.append({"name": "AWS_DEFAULT_REGION", "value": step.s3.region})
    container: dict[str, Any] = {
        "name": INIT_CONTAINER,
        "image": spec.full_image,
        "imagePullPolicy": spec.image_pull_policy,
        "command": [
            "python",
            "-m",
            "raftkv_operator.restore",
            "--data-dir",
            DATA_DIR,
            "--name",
            "$(POD_NAME)",
            "--initial-cluster",
            initial_cluster,
            "--initial-cluster-state",
            state,
            "--initial-cluster-token",
            token,
            "--initial-advertise-peer-urls",
            _own_peer_url(names, tls=spec.tls.peer),
            *step.args(),
        ],
        "env": env,
        "volumeMounts": [
            {"name": "data", "mountPath": DATA_MOUNT},
            {"name": "tmp", "mountPath": "/tmp"},
        ],
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
            "capabilities": {"drop": ["ALL"]},
        },
    }
    if spec.resources:
        container["resources"] = dict(spec.resources)
    return container


# ---- the init step ------------------------------------------------------------------------------


def _ctl(args: Sequence[str], env: Mapping[str, str] | None = None) -> int:
    command = [sys.executable, "-m", "raftkv.cli.ctl", *args]
    return subprocess.run(command, env={**os.environ, **(env or {})}, check=False).returncode


def restore_from_backup(args: argparse.Namespace) -> int:
    data_dir = Path(args.data_dir)
    if args.initial_cluster_state != "new":
        print(f"{args.name} joins an existing cluster: nothing to restore")
        return 0
    if data_dir.exists():
        print(f"{data_dir} exists: {args.name} keeps its data")
        return 0
    command = ["backup", "restore", args.location]
    if args.s3_endpoint:
        command += ["--s3-endpoint", args.s3_endpoint]
    if args.s3_region:
        command += ["--s3-region", args.s3_region]
    if args.revision:
        command += ["--revision", str(args.revision)]
    if args.time:
        command += ["--time", args.time]
    with path_style_config(args.force_path_style) as env:
        return _ctl([*command, *_member_flags(args, args.initial_cluster)], env)


def _member_flags(args: argparse.Namespace, initial_cluster: str) -> list[str]:
    return [
        "--name",
        args.name,
        "--data-dir",
        args.data_dir,
        "--initial-cluster",
        initial_cluster,
        "--initial-cluster-token",
        args.initial_cluster_token,
        "--initial-advertise-peer-urls",
        args.initial_advertise_peer_urls,
    ]


def self_contained_copy(database: Path, into: Path) -> Path:
    """A copy of the member's sqlite backend with its write-ahead file folded in: the backend
    runs in WAL mode, so after an unclean stop the newest applied batches may still sit in
    `db-wal`, which a byte copy of `db` alone would lose."""
    copy = into / "db"
    shutil.copyfile(database, copy)
    wal = database.with_name(database.name + "-wal")
    if wal.exists():
        shutil.copyfile(wal, into / "db-wal")
    with sqlite3.connect(copy) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        conn.execute("PRAGMA journal_mode=DELETE")
    return copy


def recover_survivor(args: argparse.Namespace) -> int:
    if args.name != args.survivor:
        print(f"{args.name} is not the survivor ({args.survivor}): it rejoins empty")
        return 0
    data_dir = Path(args.data_dir)
    marker = data_dir.parent / f"recovered-{args.recovery_id}"
    if marker.exists():
        print(f"recovery {args.recovery_id} already done on {args.name}")
        return 0
    database = data_dir / BACKEND_DB
    if not database.is_file():
        print(f"{database} does not exist: no data to recover from", file=sys.stderr)
        return 1
    rebuilt = data_dir.with_name(f"{data_dir.name}.recovering")
    shutil.rmtree(rebuilt, ignore_errors=True)  # a previous attempt cut off halfway
    own = f"{args.name}={args.initial_advertise_peer_urls}"
    with tempfile.TemporaryDirectory(dir=data_dir.parent, prefix=".recover-") as work:
        snapshot = self_contained_copy(database, Path(work))
        flags = _member_flags(args, own)
        flags[flags.index("--data-dir") + 1] = str(rebuilt)
        code = _ctl(["snapshot", "restore", str(snapshot), "--skip-hash-check", *flags])
    if code != 0:
        return code
    # The old data dir is kept (not deleted) until someone removes it by hand.
    os.replace(data_dir, data_dir.with_name(f"{data_dir.name}.before-{args.recovery_id}"))
    os.replace(rebuilt, data_dir)
    marker.write_text(f"{args.name} restarted as a new one-member cluster\n")
    print(f"{args.name}: data dir rebuilt as the only member of a new cluster")
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m raftkv_operator.restore")
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--initial-cluster", required=True)
    parser.add_argument("--initial-cluster-state", required=True, choices=("new", "existing"))
    parser.add_argument("--initial-cluster-token", required=True)
    parser.add_argument("--initial-advertise-peer-urls", required=True)
    sub = parser.add_subparsers(dest="mode", required=True)
    backup = sub.add_parser("backup", help="a founding member's data dir from the backups")
    backup.add_argument("location", help="s3://BUCKET/PREFIX")
    backup.add_argument("--s3-endpoint", default="")
    backup.add_argument("--s3-region", default="")
    backup.add_argument("--revision", type=int, default=0)
    backup.add_argument("--time", default="")
    backup.add_argument("--force-path-style", action="store_true")
    backup.set_defaults(run=restore_from_backup)
    survivor = sub.add_parser("survivor", help="the survivor as a one-member cluster")
    survivor.add_argument("--survivor", required=True)
    survivor.add_argument("--recovery-id", required=True)
    survivor.set_defaults(run=recover_survivor)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    return int(args.run(args))


if __name__ == "__main__":
    sys.exit(main())
