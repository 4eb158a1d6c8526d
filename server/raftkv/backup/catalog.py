"""What the bucket holds, and the decisions made from it alone: which backups a restore needs,
which an incremental continues, and which retention may delete.

Every backup is two objects under the prefix: the data (`<time>-full.db`, the snapshot stream
exactly as `etcdctl snapshot save` stores it, or `<time>-incremental.events`) and, written last,
its metadata `<data key>.json`. A backup exists once its metadata does, so an upload cut short
leaves nothing that looks usable. Names start with the UTC time, so a listing is chronological.

Backups form chains: a full backup is a root; an incremental names its `parent` (the newest
backup of the same cluster when it was taken) and holds the events of revisions
(`base_revision`, `revision`], where `base_revision` is the parent's revision. A restore to
revision R takes the chain whose full is the newest one that still reaches R by following
parent links, and checks every link (parent present, revisions continuous, same cluster).

Retention works on whole chains, so it can never leave an incremental without the backups it
depends on. The functions here are pure (no I/O, `now` passed in) and unit-tested on their own.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from raftkv.backup.errors import ChainError, CorruptBackupError

FORMAT = 1
FULL = "full"
INCREMENTAL = "incremental"
METADATA_SUFFIX = ".json"
_SUFFIXES = {FULL: "-full.db", INCREMENTAL: "-incremental.events"}
_SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")


def format_time(when: datetime) -> str:
    """ISO 8601 in UTC with microseconds and a `Z`, the form stored in metadata."""
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time(text: str) -> datetime:
    """ISO 8601; a time without a zone is taken as UTC."""
    parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


def data_key(prefix: str, kind: str, when: datetime) -> str:
    """The data object's key: `<prefix><UTC time>-<kind>...`, chronological in a listing."""
    stamp = when.astimezone(UTC).strftime("%Y%m%dT%H%M%S.%fZ")
    return f"{prefix}{stamp}{_SUFFIXES[kind]}"


@dataclass(frozen=True)
class BackupInfo:
    """One backup's metadata, as stored in its JSON object.

    `revision` is the store revision the backup restores to; an incremental holds the events of
    revisions (`base_revision`, `revision`] and continues `parent` (a data key). `raft_index`
    and `raft_term` are the source member's at the backup (a full's are read just before its
    snapshot). `size` and `sha256` describe the data object byte for byte.
    """

    kind: str
    key: str
    cluster_id: int
    member_id: int
    revision: int
    raft_index: int
    raft_term: int
    time: datetime
    size: int
    sha256: str
    base_revision: int = 0
    parent: str = ""
    events: int = 0

    @property
    def metadata_key(self) -> str:
        return self.key + METADATA_SUFFIX

    @property
    def is_full(self) -> bool:
        return self.kind == FULL

    def to_json(self) -> bytes:
        fields: dict[str, Any] = asdict(self)
        fields["time"] = format_time(self.time)
        fields["cluster_id"] = f"{self.cluster_id:x}"
        fields["member_id"] = f"{self.member_id:x}"
        return json.dumps({"format": FORMAT, **fields}, indent=2, sort_keys=True).encode()

    @classmethod
    def from_json(cls, raw: bytes, metadata_key: str) -> BackupInfo:
        """Parse and check a metadata object; CorruptBackupError names what is wrong."""
        try:
            fields = json.loads(raw)
            if not isinstance(fields, dict):
                raise ValueError("not a JSON object")
            if fields.pop("format", None) != FORMAT:
                raise ValueError(f"unknown format (this raftkv reads format {FORMAT})")
            info = cls(
                kind=_str(fields, "kind"),
                key=_str(fields, "key"),
                cluster_id=int(_str(fields, "cluster_id"), 16),
                member_id=int(_str(fields, "member_id"), 16),
                revision=_int(fields, "revision"),
                raft_index=_int(fields, "raft_index"),
                raft_term=_int(fields, "raft_term"),
                time=parse_time(_str(fields, "time")),
                size=_int(fields, "size"),
                sha256=_str(fields, "sha256"),
                base_revision=_int(fields, "base_revision"),
                parent=_str(fields, "parent"),
                events=_int(fields, "events"),
            )
        except (ValueError, KeyError, TypeError) as error:
            raise CorruptBackupError(f"metadata {metadata_key} is unreadable: {error}") from None
        problem = info._problem(metadata_key)
        if problem:
            raise CorruptBackupError(f"metadata {metadata_key} is inconsistent: {problem}")
        return info

    def _problem(self, metadata_key: str) -> str:
        if self.kind not in _SUFFIXES:
            return f"unknown kind {self.kind!r}"
        if self.metadata_key != metadata_key:
            return f"it describes {self.key}, not {metadata_key.removesuffix(METADATA_SUFFIX)}"
        if not _SHA256_HEX.match(self.sha256):
            return "sha256 is not 64 hex digits"
        if self.revision < 1 or self.size < 0:
            return "revision or size out of range"
        if self.is_full and (self.parent or self.base_revision):
            return "a full backup has no parent"
        if not self.is_full and (not self.parent or not 1 <= self.base_revision <= self.revision):
            return "an incremental backup needs a parent and base_revision <= revision"
        return ""


def _str(fields: Mapping[str, Any], name: str) -> str:
    value = fields[name]
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a string")
    return value


def _int(fields: Mapping[str, Any], name: str) -> int:
    value = fields[name]
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name} must be an integer")
    return value


def _order(info: BackupInfo) -> tuple[int, bool, datetime]:
    """Newest last: by revision, a full after an incremental of the same revision, then time."""
    return (info.revision, info.is_full, info.time)


def latest_of_cluster(backups: Iterable[BackupInfo], cluster_id: int) -> BackupInfo | None:
    """The backup a new incremental of `cluster_id` continues (None: a full is needed)."""
    own = [b for b in backups if b.cluster_id == cluster_id]
    return max(own, key=_order, default=None)


# -- restore ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class RestorePlan:
    """A full backup, the incrementals after it in order, and the revision to stop at."""

    full: BackupInfo
    incrementals: tuple[BackupInfo, ...]
    revision: int


def chain_to_full(start: BackupInfo, by_key: Mapping[str, BackupInfo]) -> list[BackupInfo]:
    """`start` and its ancestors up to a full backup, oldest first; ChainError on a bad link."""
    chain = [start]
    while not chain[-1].is_full:
        child = chain[-1]
        parent = by_key.get(child.parent)
        if parent is None:
            raise ChainError(
                f"incremental backup {child.key} continues {child.parent}, which is missing: "
                f"revisions {child.base_revision} and before cannot be reached through it"
            )
        if parent.cluster_id != child.cluster_id:
            raise ChainError(
                f"incremental backup {child.key} (cluster {child.cluster_id:x}) continues "
                f"{parent.key} of another cluster ({parent.cluster_id:x})"
            )
        if parent.revision != child.base_revision:
            raise ChainError(
                f"gap in the backup chain: {child.key} starts after revision "
                f"{child.base_revision} but {parent.key} ends at revision {parent.revision}"
            )
        if len(chain) > len(by_key):
            raise ChainError(f"the parent links from {start.key} form a loop")
        chain.append(parent)
    chain.reverse()
    return chain


def plan_restore(
    backups: Sequence[BackupInfo], *, revision: int = 0, at: datetime | None = None
) -> RestorePlan:
    """The backups that rebuild the keyspace at `revision` (0: the newest backed-up one), or at
    the newest backup taken at or before `at`.

    Any revision inside an incremental's range can be reached: its events are replayed up to
    the target. Raises ChainError when no intact chain reaches the target."""
    if not backups:
        raise ChainError("there is no backup under this prefix")
    if at is not None:
        before = [b for b in backups if b.time <= at]
        if not before:
            oldest = min(backups, key=lambda b: b.time)
            raise ChainError(
                f"no backup was taken at or before {format_time(at)} "
                f"(the oldest is from {format_time(oldest.time)})"
            )
        revision = max(before, key=lambda b: (b.time, _order(b))).revision
    elif revision <= 0:
        revision = max(backups, key=_order).revision
    by_key = {b.key: b for b in backups}
    covering = [
        b
        for b in backups
        if (b.revision == revision if b.is_full else b.base_revision < revision <= b.revision)
    ]
    chains: list[list[BackupInfo]] = []
    problems: list[str] = []
    for candidate in covering:
        try:
            chains.append(chain_to_full(candidate, by_key))
        except ChainError as error:
            problems.append(str(error))
    if not chains:
        if problems:
            raise ChainError(f"revision {revision} cannot be restored: {problems[0]}")
        newest = max(b.revision for b in backups)
        fulls = [b.revision for b in backups if b.is_full]
        if revision > newest:
            raise ChainError(
                f"revision {revision} is newer than the newest backup (revision {newest})"
            )
        if not fulls or revision < min(fulls):
            raise ChainError(
                f"revision {revision} is older than the oldest full backup"
                + (f" (revision {min(fulls)})" if fulls else "")
            )
        raise ChainError(f"no backup chain reaches revision {revision}")
    # The newest full means the fewest events to replay; then the shortest chain.
    best = max(chains, key=lambda chain: (_order(chain[0]), -len(chain)))
    return RestorePlan(best[0], tuple(best[1:]), revision)


# -- retention --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Chain:
    """A full backup and every incremental that continues it (directly or not), oldest first."""

    full: BackupInfo
    incrementals: tuple[BackupInfo, ...]

    @property
    def newest_time(self) -> datetime:
        return max([self.full.time, *(i.time for i in self.incrementals)])

    @property
    def members(self) -> tuple[BackupInfo, ...]:
        return (self.full, *self.incrementals)


def chains(backups: Iterable[BackupInfo]) -> tuple[list[Chain], list[BackupInfo]]:
    """Group backups into chains (oldest full first); also returns the incrementals that do
    not lead back to a full backup (their parent is missing)."""
    backups = list(backups)
    by_key = {b.key: b for b in backups}
    members: dict[str, list[BackupInfo]] = {b.key: [] for b in backups if b.is_full}
    broken: list[BackupInfo] = []
    for b in backups:
        if b.is_full:
            continue
        try:
            root = chain_to_full(b, by_key)[0]
        except ChainError:
            broken.append(b)
            continue
        members[root.key].append(b)
    result = [Chain(by_key[key], tuple(sorted(incs, key=_order))) for key, incs in members.items()]
    result.sort(key=lambda c: _order(c.full))
    return result, sorted(broken, key=_order)


@dataclass(frozen=True)
class RetentionPlan:
    keep: tuple[BackupInfo, ...]
    # In the order to delete them: the newest of a chain first, its full last, so an
    # interrupted prune leaves chains that are still whole from their full on.
    delete: tuple[BackupInfo, ...]
    # Incrementals whose chain is broken: never usable for a restore, reported, left alone.
    broken: tuple[BackupInfo, ...]


def plan_retention(
    backups: Iterable[BackupInfo],
    *,
    keep_last: int | None = None,
    max_age: timedelta | None = None,
    now: datetime,
) -> RetentionPlan:
    """Which chains to keep: a chain is kept if ANY rule keeps it (as restic's policies do).

    `keep_last` keeps the newest N full backups with their incrementals; `max_age` keeps every
    chain holding a backup younger than it. The newest chain is always kept. A chain is
    deleted whole, so no retained incremental ever loses the full it depends on."""
    if keep_last is None and max_age is None:
        raise ValueError("give keep_last, max_age or both")
    if keep_last is not None and keep_last < 1:
        raise ValueError("keep_last must be at least 1 (the newest full backup is always kept)")
    all_chains, broken = chains(backups)
    keep: list[BackupInfo] = []
    delete: list[BackupInfo] = []
    for position, chain in enumerate(reversed(all_chains)):
        kept = (
            position == 0
            or (keep_last is not None and position < keep_last)
            or (max_age is not None and chain.newest_time >= now - max_age)
        )
        if kept:
            keep.extend(chain.members)
        else:
            delete.extend(reversed(chain.members))
    return RetentionPlan(tuple(sorted(keep, key=_order)), tuple(delete), tuple(broken))
