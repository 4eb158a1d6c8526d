"""Linearizability checking of a recorded KV history: Wing & Gong's search with Lowe's cache.

The same algorithm porcupine implements (and etcd's robustness tests use), written here in
Python: the history becomes a list of call and return entries sorted by time; the search
repeatedly tries to linearize a pending call whose effect the model accepts, lifting it and its
return out of the list, and backtracks when it reaches a return whose call it could not place.
A cache of (set of linearized calls, model state) pairs already explored keeps the search from
revisiting equivalent configurations, which is what makes it practical.

The KV model keeps, per key, the value and the revision of the key's last change, so histories
are checked one key at a time (P-compositionality: a history is linearizable iff each key's
sub-history is). What per-key checking cannot see — revisions going backwards across keys — is
covered by `check_revision_order`, a linear sweep.

Calls of unknown outcome return at infinity: they may be linearized anywhere after their
invocation, and placing them last stands for "it never happened". Where the effect of such a
call depends on something the model does not know (a CAS on a revision a write of unknown
outcome left unknown), the model keeps both possible states: the search's state is the set of
states the linearized calls can have led to, as porcupine's nondeterministic models do.

The search is bounded by a deadline; running out of time gives `Verdict.UNKNOWN`, which callers
must report and never count as a pass.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Generic, TypeVar

from tests.robustness.history import Call, Kind, Result

S = TypeVar("S", bound=Hashable)


class Verdict(Enum):
    OK = "linearizable"
    ILLEGAL = "not linearizable"
    UNKNOWN = "unknown (search timed out)"


@dataclass
class _Entry:
    """A node of the doubly linked entry list; a call points at its return via `match`."""

    index: int
    is_call: bool
    time: float
    match: _Entry | None = None
    prev: _Entry | None = None
    next: _Entry | None = None


# The model: step(state, call) returns the state after `call`, or None if `call` cannot
# produce its recorded result from `state`.
Step = Callable[[S, Call], S | None]


@dataclass
class PartitionResult(Generic[S]):
    verdict: Verdict
    calls: list[Call]
    # Deepest linearization the search reached, and the state after it (for explanations).
    longest: list[Call] = field(default_factory=list)
    state: S | None = None

    def explain(self, limit: int = 30) -> str:
        if self.verdict is Verdict.OK:
            return "linearizable"
        lines = [f"{self.verdict.value}: {len(self.calls)} calls"]
        if self.verdict is Verdict.UNKNOWN:
            return lines[0]
        placed = {id(c) for c in self.longest}
        lines.append(f"longest linearizable prefix ({len(self.longest)} calls), last {limit}:")
        lines += [f"  {c}" for c in self.longest[-limit:]]
        lines.append(f"model state after it: {self.state}")
        rest = sorted((c for c in self.calls if id(c) not in placed), key=lambda c: c.call)
        if rest:
            first_return = min(c.ret for c in rest)
            lines.append("none of these can come next (each must precede the earliest return):")
            lines += [f"  {c}" for c in rest if c.call <= first_return][:limit]
        return "\n".join(lines)


def check_partition(
    calls: Sequence[Call], init: S, step: Step[S], deadline: float
) -> PartitionResult[S]:
    """Wing-Gong-Lowe search over one partition; `deadline` is a `time.monotonic()` value."""
    entries: list[_Entry] = []
    for i, c in enumerate(calls):
        ret = _Entry(i, False, c.ret)
        entries.append(_Entry(i, True, c.call, match=ret))
        entries.append(ret)
    # Calls before returns at equal times: such calls count as concurrent (the lenient choice).
    entries.sort(key=lambda e: (e.time, not e.is_call))
    head = _Entry(-1, False, -math.inf)
    prev = head
    for e in entries:
        prev.next, e.prev = e, prev
        prev = e

    def lift(e: _Entry) -> None:
        assert e.prev is not None and e.match is not None
        e.prev.next = e.next
        if e.next is not None:
            e.next.prev = e.prev
        m = e.match
        assert m.prev is not None
        m.prev.next = m.next
        if m.next is not None:
            m.next.prev = m.prev

    def unlift(e: _Entry) -> None:
        m = e.match
        assert m is not None and m.prev is not None and e.prev is not None
        m.prev.next = m
        if m.next is not None:
            m.next.prev = m
        e.prev.next = e
        if e.next is not None:
            e.next.prev = e

    state = init
    linearized = 0
    cache: set[tuple[int, S]] = set()
    stack: list[tuple[_Entry, S]] = []
    longest: list[_Entry] = []
    longest_state = init
    entry = head.next
    steps = 0
    while head.next is not None:
        steps += 1
        if steps % 4096 == 0 and time.monotonic() > deadline:
            return PartitionResult(Verdict.UNKNOWN, list(calls))
        assert entry is not None
        if entry.is_call:
            new_state = step(state, calls[entry.index])
            if new_state is not None:
                bits = linearized | (1 << entry.index)
                if (bits, new_state) not in cache:
                    cache.add((bits, new_state))
                    stack.append((entry, state))
                    state, linearized = new_state, bits
                    lift(entry)
                    if len(stack) > len(longest):
                        longest = [e for e, _ in stack]
                        longest_state = state
                    entry = head.next
                    continue
            entry = entry.next
        else:
            if not stack:
                return PartitionResult(
                    Verdict.ILLEGAL,
                    list(calls),
                    [calls[e.index] for e in longest],
                    longest_state,
                )
            top, state = stack.pop()
            linearized &= ~(1 << top.index)
            unlift(top)
            entry = top.next
    return PartitionResult(Verdict.OK, list(calls))


# ---- the KV model ----------------------------------------------------------------------------

# Per key: (value or None when absent, revision of the last change; -1 when not known, which
# happens after a write of unknown outcome until a read tells).
KeyState = tuple[str | None, int]
INITIAL: KeyState = (None, 0)


def _newer(state: KeyState, revision: int) -> bool:
    return state[1] < 0 or revision > state[1]


def _read_matches(state: KeyState, r: Result) -> KeyState | None:
    """A read of the key returned `r`: does it match, and what does it teach us?"""
    value, rev = state
    if r.value != value:
        return None
    if rev >= 0 and r.revision < rev:
        return None  # the store's revision is older than the key's last change
    if value is None:
        return state
    if rev >= 0 and r.mod_rev != rev:
        return None
    return (value, r.mod_rev)


def _kv_next(state: KeyState, c: Call) -> list[KeyState]:
    """The etcd KV semantics of one call on one key: the states it can lead to from `state`
    while producing its recorded result (none: it cannot; two: an unknown outcome that
    depends on what the model does not know)."""
    op, r = c.op, c.result
    value, rev = state
    if op.kind is Kind.GET:
        after = state if r is None else _read_matches(state, r)
        return [] if after is None else [after]
    if op.kind is Kind.PUT:
        if r is None:
            return [(op.value, -1)]
        return [(op.value, r.revision)] if _newer(state, r.revision) else []
    if op.kind is Kind.DELETE:
        if r is None:
            return [(None, -1) if value is not None else state]
        if r.deleted != (0 if value is None else 1):
            return []
        if r.deleted:
            return [(None, r.revision)] if _newer(state, r.revision) else []
        return [state] if rev < 0 or r.revision >= rev else []
    # A CAS transaction.
    if op.kind is Kind.CAS_VALUE:
        holds: bool | None = value is not None and value == op.expect
    elif op.expect_rev == 0:
        holds = value is None
    elif value is None:
        holds = False
    else:
        holds = None if rev < 0 else rev == op.expect_rev
    if r is None:
        # Unknown outcome, and it ran: it wrote if the condition held, which may be unknown.
        if holds is None:
            return [(op.value, -1), state]
        return [(op.value, -1)] if holds else [state]
    if r.succeeded:
        if holds is False or not _newer(state, r.revision):
            return []
        return [(op.value, r.revision)]
    if holds is True:
        return []
    after = _read_matches(state, r)
    if after is None or (op.kind is Kind.CAS_REV and op.expect_rev and after[1] == op.expect_rev):
        return []
    return [after]


# The search's state: every per-key state the calls linearized so far can have led to (a
# call of unknown outcome may branch). A call is accepted if it fits at least one of them.
KeyStates = frozenset[KeyState]
INITIAL_STATES: KeyStates = frozenset({INITIAL})


def kv_step(states: KeyStates, c: Call) -> KeyStates | None:
    after = frozenset(n for state in states for n in _kv_next(state, c))
    return after or None


# ---- whole-history checks --------------------------------------------------------------------


@dataclass
class Report:
    verdict: Verdict
    partitions: dict[str, PartitionResult[KeyStates]]
    revision_violations: list[str]

    @property
    def ok(self) -> bool:
        return self.verdict is Verdict.OK and not self.revision_violations

    def explain(self) -> str:
        lines = [f"verdict: {self.verdict.value}"]
        for key, p in self.partitions.items():
            if p.verdict is not Verdict.OK:
                lines.append(f"--- key {key!r}")
                lines.append(p.explain())
        if self.revision_violations:
            lines.append("--- revisions against real time")
            lines += self.revision_violations[:20]
        return "\n".join(lines)


def check_revision_order(history: Iterable[Call]) -> list[str]:
    """Revisions must respect real time across all keys: a call invoked after another returned
    sees at least that revision, and a write after it creates a larger one. Distinct writes
    never share a revision."""
    done = sorted((c for c in history if c.result is not None), key=lambda c: c.call)
    by_return = sorted((c for c in done if not math.isinf(c.ret)), key=lambda c: c.ret)
    violations = []
    best: Call | None = None
    floor = 0
    j = 0
    for c in done:
        while j < len(by_return) and by_return[j].ret < c.call:
            prior = by_return[j]
            assert prior.result is not None
            if best is None or prior.result.revision > floor:
                best, floor = prior, prior.result.revision
            j += 1
        if best is None:
            continue
        assert c.result is not None
        if c.result.revision < floor or (c.changed_state() and c.result.revision == floor):
            violations.append(f"{c}\n  invoked after {best} returned")
    seen: dict[int, Call] = {}
    for c in done:
        if c.changed_state():
            assert c.result is not None
            other = seen.setdefault(c.result.revision, c)
            if other is not c:
                violations.append(f"two writes at revision {c.result.revision}:\n  {other}\n  {c}")
    return violations


def check_history(history: Sequence[Call], timeout: float = 60.0) -> Report:
    """Check a whole history: per-key linearizability plus the cross-key revision order."""
    by_key: dict[str, list[Call]] = defaultdict(list)
    for c in history:
        if not (c.op.kind is Kind.GET and c.result is None):
            by_key[c.op.key].append(c)
    deadline = time.monotonic() + timeout
    partitions = {
        key: check_partition(calls, INITIAL_STATES, kv_step, deadline)
        for key, calls in sorted(by_key.items())
    }
    verdicts = {p.verdict for p in partitions.values()}
    verdict = (
        Verdict.ILLEGAL
        if Verdict.ILLEGAL in verdicts
        else Verdict.UNKNOWN
        if Verdict.UNKNOWN in verdicts
        else Verdict.OK
    )
    return Report(verdict, partitions, check_revision_order(history))
