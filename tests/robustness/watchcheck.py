"""Checks of recorded watch streams against each other and against the KV history.

Every robustness watcher watches the whole key space, so for any revision all watchers that
cover it must have received the same events, and every revision has at least one event (only
writes create revisions). A watcher's log is a list of sessions: one per stream it opened, the
first at its start revision, each later one resuming where the previous left off, or at the
compaction revision when the server said the previous one was compacted.

The guarantees checked (the names etcd's documentation gives them):
- ordered: revisions strictly increase across responses and never decrease inside one;
- unique: no (revision, key) event twice;
- atomic: all events of a revision arrive in one response, and they are all of them;
- reliable: no revision missing inside what a watcher covered (from its start to its last
  event), and every acknowledged write is in the merged log;
- resumable: a resumed session starts right after what was covered, and never sends events
  before its start revision;
- bookmarkable: progress revisions never go backwards in a stream and are at least the last
  event's revision (with `strict_bookmarks`, also: no later event at or below them);
- prev_kv: the previous key-value an event carries is the key's state just before it, replayed
  from the merged log.
Also: no event that no client wrote (phantoms), and no written value applied twice.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from tests.robustness.history import Call, Kind


@dataclass(frozen=True)
class Event:
    type: str  # "PUT" or "DELETE"
    key: str
    value: str | None
    mod_rev: int
    # prev_kv as (value, mod_revision); None when absent or not requested.
    prev: tuple[str, int] | None = None

    def __str__(self) -> str:
        text = f"{self.type} {self.key}={self.value}@{self.mod_rev}"
        return text if self.prev is None else f"{text} prev={self.prev}"


@dataclass(frozen=True)
class Response:
    time: float
    revision: int
    kind: str  # "events", "progress", "created", "compacted" or "canceled"
    events: tuple[Event, ...] = ()
    compact_revision: int = 0


@dataclass
class Session:
    start: int
    member: str
    responses: list[Response] = field(default_factory=list)

    def last_revision(self, *, bookmarks: bool = False) -> int:
        """The highest revision this session received events for (with `bookmarks`, or that a
        progress notification vouched for), 0 if none."""
        best = 0
        for r in self.responses:
            if r.kind == "events":
                best = max(best, r.events[-1].mod_rev)
            elif r.kind == "progress" and bookmarks:
                best = max(best, r.revision)
        return best

    @property
    def compacted(self) -> int:
        for r in self.responses:
            if r.kind == "compacted":
                return r.compact_revision
        return 0


@dataclass
class WatchLog:
    name: str
    prev_kv: bool
    sessions: list[Session] = field(default_factory=list)


@dataclass
class WatchReport:
    violations: list[str]
    # revision -> events, merged from all watchers
    merged: dict[int, tuple[Event, ...]]
    # value -> revision of every PUT seen
    put_revisions: dict[str, int]
    # the revision ranges some watcher covered, disjoint and sorted
    covered: list[tuple[int, int]]
    unchecked_writes: int

    @property
    def ok(self) -> bool:
        return not self.violations

    def explain(self, limit: int = 40) -> str:
        if self.ok:
            return f"watch guarantees hold over revisions {self.covered}"
        return "\n".join(self.violations[:limit])


def _strip(events: Iterable[Event]) -> tuple[Event, ...]:
    return tuple(Event(e.type, e.key, e.value, e.mod_rev) for e in events)


def _check_one(
    log: WatchLog, strict_bookmarks: bool, violations: list[str]
) -> dict[int, tuple[Event, ...]]:
    """Per-watcher guarantees; returns the revision -> events this watcher received."""
    seen: dict[int, list[Event]] = {}
    keys_seen: set[tuple[int, str]] = set()
    last_event = 0
    previous: Session | None = None
    for n, session in enumerate(log.sessions):
        where = f"{log.name} session {n} (start {session.start}, {session.member})"
        # Progress is per stream: a resumed stream's member may be behind the previous one.
        last_progress = 0
        session_last_event = 0
        if previous is not None:
            covered = previous.last_revision(bookmarks=strict_bookmarks)
            expected = previous.compacted or (max(covered, previous.start - 1) + 1)
            if session.start != expected:
                violations.append(f"{where}: resumed at {session.start}, expected {expected}")
        for r in session.responses:
            if r.kind == "compacted" and r.compact_revision <= session.start:
                violations.append(
                    f"{where}: compacted at {r.compact_revision} although it starts later"
                )
            if r.kind == "progress":
                if r.revision < last_progress or r.revision < session_last_event:
                    violations.append(
                        f"{where}: progress revision {r.revision} goes backwards "
                        f"(last progress {last_progress}, last event {session_last_event})"
                    )
                last_progress = max(last_progress, r.revision)
            if r.kind != "events":
                continue
            revisions = [e.mod_rev for e in r.events]
            if revisions != sorted(revisions):
                violations.append(f"{where}: events out of order in one response: {revisions}")
            if revisions[0] < session.start:
                violations.append(f"{where}: event at {revisions[0]} before the start revision")
            for e in r.events:
                if (e.mod_rev, e.key) in keys_seen:
                    violations.append(f"{where}: duplicate event {e}")
                keys_seen.add((e.mod_rev, e.key))
            for rev in sorted(set(revisions)):
                if rev in seen:
                    violations.append(f"{where}: revision {rev} split over responses or repeated")
                if rev <= last_event:
                    violations.append(f"{where}: revision {rev} after {last_event} (ordered)")
                if strict_bookmarks and rev <= last_progress:
                    violations.append(
                        f"{where}: event at {rev} after a progress notification at {last_progress}"
                    )
                seen[rev] = [e for e in r.events if e.mod_rev == rev]
            last_event = max(last_event, revisions[-1])
            session_last_event = max(session_last_event, revisions[-1])
        previous = session
    return {rev: tuple(events) for rev, events in seen.items()}


def _coverage(log: WatchLog, strict_bookmarks: bool) -> list[tuple[int, int]]:
    """The revision ranges each session vouched for."""
    ranges = []
    for session in log.sessions:
        end = session.last_revision(bookmarks=strict_bookmarks)
        if end >= session.start:
            ranges.append((session.start, end))
    return ranges


def _union(ranges: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    merged: list[tuple[int, int]] = []
    for lo, hi in sorted(ranges):
        if merged and lo <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(merged[-1][1], hi))
        else:
            merged.append((lo, hi))
    return merged


def _replay_prev_kv(
    merged: dict[int, tuple[Event, ...]],
    logs: Sequence[WatchLog],
    first: int,
    compacted: int,
    violations: list[str],
) -> None:
    """Replay the merged log from `first` and compare each event's prev_kv with the state.

    An event at or below a compaction revision may come without its prev_kv: the previous
    version may be compacted away (etcd then leaves prev_kv out, and so does raftkv)."""
    received: dict[tuple[int, str], list[tuple[str, Event]]] = {}
    for log in logs:
        if not log.prev_kv:
            continue
        for session in log.sessions:
            for r in session.responses:
                for e in r.events:
                    received.setdefault((e.mod_rev, e.key), []).append((log.name, e))
    # A key never written since the start is absent only if the log starts at the beginning.
    fresh = first <= 2
    state: dict[str, tuple[str, int] | None] = {}
    for rev in range(first, max(merged, default=0) + 1):
        if rev not in merged:
            # A hole (compacted away before anyone watched it): start over from knowing nothing.
            fresh = False
            state.clear()
            continue
        for event in merged[rev]:
            if event.key in state or fresh:
                expected = state.get(event.key)
                for name, got in received.get((rev, event.key), ()):
                    if got.prev is None and rev <= compacted:
                        continue
                    if got.prev != expected:
                        violations.append(
                            f"{name}: {got} carries prev_kv {got.prev}, the key was {expected}"
                        )
            state[event.key] = (event.value or "", event.mod_rev) if event.type == "PUT" else None


def check_watches(
    logs: Sequence[WatchLog],
    history: Sequence[Call],
    key_prefix: str = "",
    *,
    compacted: int = 0,
    strict_bookmarks: bool = False,
) -> WatchReport:
    """Check every watcher, merge their logs, and compare the merged log with `history`.

    Phantom and double-apply checks are limited to keys starting with `key_prefix` (other
    writers, such as lock recipes, write values the history does not know).

    `compacted` is the highest revision the store was compacted at (see `_replay_prev_kv`).
    `strict_bookmarks` holds progress notifications to etcd 3.5's promise (all events up to
    the notified revision were delivered). etcd 3.4, and raftkv after it, answer a progress
    request at once with the member's current revision even while the watcher is catching up,
    so by default a notification is only checked never to go backwards within its stream and
    never to fall behind the events already sent, and coverage is counted from events alone.
    """
    violations: list[str] = []
    merged: dict[int, tuple[Event, ...]] = {}
    source: dict[int, str] = {}
    for log in logs:
        for rev, events in _check_one(log, strict_bookmarks, violations).items():
            stripped = _strip(events)
            if rev in merged and merged[rev] != stripped:
                violations.append(
                    f"revision {rev}: {log.name} got {list(map(str, stripped))}, "
                    f"{source[rev]} got {list(map(str, merged[rev]))}"
                )
            merged.setdefault(rev, stripped)
            source.setdefault(rev, log.name)
    # Reliable: nothing missing inside what each watcher covered.
    ranges: list[tuple[int, int]] = []
    for log in logs:
        mine = {e.mod_rev for s in log.sessions for r in s.responses for e in r.events}
        for start, end in _coverage(log, strict_bookmarks):
            ranges.append((max(start, 2), end))
            missing = [rev for rev in range(max(start, 2), end + 1) if rev not in mine]
            if missing:
                shown = ", ".join(
                    f"{rev} ({'seen by ' + source[rev] if rev in merged else 'no watcher'})"
                    for rev in missing[:10]
                )
                violations.append(f"{log.name}: revisions missing in [{start}, {end}]: {shown}")
    covered = _union(ranges)
    # Acknowledged writes are in the log, with their value; written values appear at most once
    # and were written by someone.
    written = {c.op.value for c in history if c.op.kind in (Kind.PUT, Kind.CAS_VALUE, Kind.CAS_REV)}
    put_revisions: dict[str, int] = {}
    for rev, events in sorted(merged.items()):
        for e in events:
            if e.type != "PUT" or not e.key.startswith(key_prefix):
                continue
            if e.value not in written:
                violations.append(f"revision {rev}: {e} was never written by a client")
            elif e.value in put_revisions:
                violations.append(
                    f"value {e.value!r} applied twice: revisions {put_revisions[e.value]} and {rev}"
                )
            else:
                put_revisions[e.value] = rev
    unchecked = 0
    for c in history:
        if not c.changed_state():
            continue
        assert c.result is not None
        rev = c.result.revision
        if not any(lo <= rev <= hi for lo, hi in covered):
            unchecked += 1
            continue
        want_type = "DELETE" if c.op.kind is Kind.DELETE else "PUT"
        want_value = None if want_type == "DELETE" else c.op.value
        if not any(
            e.key == c.op.key and e.type == want_type and e.value == want_value
            for e in merged.get(rev, ())
        ):
            got = [str(e) for e in merged.get(rev, ())]
            violations.append(f"acknowledged write not watched: {c}; revision {rev} has {got}")
    if covered:
        _replay_prev_kv(merged, logs, covered[0][0], compacted, violations)
    return WatchReport(violations, merged, put_revisions, covered, unchecked)
