"""Unit tests of the linearizability checker: it accepts what is linearizable, and it catches
stale reads, lost updates and impossible outcomes, in hand-written and in generated histories."""

from __future__ import annotations

import math
import random

import pytest

from tests.robustness.history import Call, Kind, Op, Result, resolve_unknown_writes, unknown
from tests.robustness.linearizability import Verdict, check_history, check_revision_order


def put(client: int, key: str, value: str, call: float, ret: float, rev: int) -> Call:
    return Call(client, Op(Kind.PUT, key, value), call, ret, Result(rev))


def get(
    client: int, key: str, call: float, ret: float, value: str | None, mod: int, rev: int
) -> Call:
    return Call(client, Op(Kind.GET, key), call, ret, Result(rev, value=value, mod_rev=mod))


def test_sequential_history_is_linearizable() -> None:
    history = [
        put(0, "k", "a", 0, 1, 2),
        get(1, "k", 2, 3, "a", 2, 2),
        put(0, "k", "b", 4, 5, 3),
        get(1, "k", 6, 7, "b", 3, 3),
        Call(0, Op(Kind.DELETE, "k"), 8, 9, Result(4, deleted=1)),
        get(1, "k", 10, 11, None, 0, 4),
    ]
    report = check_history(history)
    assert report.ok, report.explain()


def test_stale_read_is_caught() -> None:
    history = [
        put(0, "k", "a", 0, 1, 2),
        put(0, "k", "b", 2, 3, 3),
        # Invoked after b was acknowledged, yet it returns a: a stale (serializable) read.
        get(1, "k", 4, 5, "a", 2, 2),
    ]
    report = check_history(history)
    assert report.verdict is Verdict.ILLEGAL
    explanation = report.explain()
    assert "get(k)" in explanation and "value=a" in explanation
    assert report.revision_violations


def test_stale_read_of_another_key_is_caught_by_revision_order() -> None:
    # Each key on its own is fine; across keys the read went back in time.
    history = [
        put(0, "x", "a", 0, 1, 2),
        put(0, "y", "b", 2, 3, 3),
        get(1, "x", 4, 5, "a", 2, 2),
    ]
    report = check_history(history)
    assert report.verdict is Verdict.OK
    assert not report.ok
    assert "invoked after" in report.explain()


def test_concurrent_read_may_see_either_value() -> None:
    for seen, mod in (("a", 2), ("b", 3)):
        history = [
            put(0, "k", "a", 0, 1, 2),
            put(0, "k", "b", 2, 5, 3),
            get(1, "k", 3, 4, seen, mod, mod),
        ]
        assert check_history(history).ok


def test_read_cannot_flip_back() -> None:
    history = [
        put(0, "k", "a", 0, 1, 2),
        put(0, "k", "b", 2, 10, 3),
        get(1, "k", 3, 4, "b", 3, 3),
        get(2, "k", 5, 6, "a", 2, 3),
    ]
    assert check_history(history).verdict is Verdict.ILLEGAL


def test_unknown_write_may_or_may_not_have_happened() -> None:
    seen = [
        put(0, "k", "a", 0, 1, 2),
        unknown(0, Op(Kind.PUT, "k", "b"), 2),
        get(1, "k", 5, 6, "b", 3, 3),
    ]
    assert check_history(seen).ok
    never = [
        put(0, "k", "a", 0, 1, 2),
        unknown(0, Op(Kind.PUT, "k", "b"), 2),
        get(1, "k", 5, 6, "a", 2, 2),
    ]
    assert check_history(never).ok
    # But it cannot have happened before it was invoked.
    early = [
        get(1, "k", 0, 1, "b", 2, 2),
        unknown(0, Op(Kind.PUT, "k", "b"), 2),
    ]
    assert check_history(early).verdict is Verdict.ILLEGAL


def test_two_cas_from_the_same_value_cannot_both_succeed() -> None:
    history = [
        put(0, "k", "a", 0, 1, 2),
        Call(1, Op(Kind.CAS_VALUE, "k", "b", expect="a"), 2, 4, Result(3)),
        Call(2, Op(Kind.CAS_VALUE, "k", "c", expect="a"), 2, 4, Result(4)),
    ]
    assert check_history(history).verdict is Verdict.ILLEGAL
    history[2] = Call(
        2,
        Op(Kind.CAS_VALUE, "k", "c", expect="a"),
        2,
        4,
        Result(3, value="b", mod_rev=3, succeeded=False),
    )
    assert check_history(history).ok


def test_cas_on_mod_revision() -> None:
    history = [
        Call(0, Op(Kind.CAS_REV, "k", "a", expect_rev=0), 0, 1, Result(2)),
        Call(1, Op(Kind.CAS_REV, "k", "b", expect_rev=2), 2, 3, Result(3)),
        Call(2, Op(Kind.CAS_REV, "k", "c", expect_rev=2), 4, 5, Result(3, "b", 3, 0, False)),
    ]
    assert check_history(history).ok
    # A CAS that claims the old mod_revision still matched after it changed: a lost update.
    history[2] = Call(2, Op(Kind.CAS_REV, "k", "c", expect_rev=2), 4, 5, Result(4))
    assert check_history(history).verdict is Verdict.ILLEGAL


def test_delete_count_must_match() -> None:
    history = [Call(0, Op(Kind.DELETE, "k"), 0, 1, Result(2, deleted=1))]
    assert check_history(history).verdict is Verdict.ILLEGAL


def test_revisions_of_distinct_writes_are_distinct() -> None:
    history = [put(0, "x", "a", 0, 1, 2), put(1, "y", "b", 0, 1, 2)]
    assert any("two writes" in v for v in check_revision_order(history))


def test_resolving_unknown_writes_from_the_watch_log() -> None:
    history = [
        unknown(0, Op(Kind.PUT, "k", "seen"), 0),
        unknown(1, Op(Kind.PUT, "k", "lost"), 0),
        unknown(2, Op(Kind.DELETE, "k"), 0),
    ]
    resolved = resolve_unknown_writes(history, {"seen": 7})
    assert [c.op.value for c in resolved] == ["seen", None]
    assert resolved[0].result == Result(7) and math.isinf(resolved[0].ret)


def test_search_is_bounded() -> None:
    # Many concurrent unknown writes that nothing observes: a search space that explodes.
    history = [unknown(i, Op(Kind.PUT, "k", f"v{i}"), 0) for i in range(40)]
    history += [get(99, "k", 1, 2, "v0", 5, 5), get(99, "k", 3, 4, "v1", 6, 6)]
    history.append(get(99, "k", 5, 6, "v0", 5, 7))
    report = check_history(history, timeout=0.2)
    assert report.verdict is Verdict.UNKNOWN
    assert not report.ok


# ---- generated histories ---------------------------------------------------------------------


def generate(seed: int, n: int = 300, keys: int = 3, clients: int = 5) -> list[Call]:
    """A history of a correct store: operations take effect at distinct instants, in the
    order of those instants, and each is invoked before and returns after its instant."""
    rng = random.Random(seed)
    values: dict[str, tuple[str, int] | None] = {}
    revision = 1
    history = []
    t = 0.0
    for i in range(n):
        t += rng.random()
        key = f"k{rng.randrange(keys)}"
        client = rng.randrange(clients)
        current = values.get(key)
        roll = rng.random()
        if roll < 0.4:
            op = Op(Kind.GET, key)
            result = Result(revision, *(current or (None, 0)))
        elif roll < 0.7:
            revision += 1
            op = Op(Kind.PUT, key, f"v{i}")
            values[key] = (f"v{i}", revision)
            result = Result(revision)
        elif roll < 0.8:
            op = Op(Kind.DELETE, key)
            if current is not None:
                revision += 1
                values[key] = None
            result = Result(revision, deleted=int(current is not None))
        else:
            expect = current[0] if current and rng.random() < 0.6 else f"v{rng.randrange(n)}"
            op = Op(Kind.CAS_VALUE, key, f"v{i}", expect=expect)
            if current is not None and current[0] == expect:
                revision += 1
                values[key] = (f"v{i}", revision)
                result = Result(revision)
            else:
                result = Result(revision, *(current or (None, 0)), succeeded=False)
        call, ret = t - rng.random() * 2, t + rng.random() * 2
        if op.kind is not Kind.GET and rng.random() < 0.05:
            history.append(unknown(client, op, call))
        else:
            history.append(Call(client, op, call, ret, result))
    return history


@pytest.mark.parametrize("seed", range(8))
def test_generated_correct_histories_pass(seed: int) -> None:
    report = check_history(generate(seed), timeout=30)
    assert report.ok, f"seed {seed}\n{report.explain()}"


@pytest.mark.parametrize("seed", range(8))
def test_generated_histories_with_a_stale_read_fail(seed: int) -> None:
    history = generate(seed)
    rng = random.Random(seed)
    # Pick a read that follows, strictly in real time, a completed overwrite of what it read;
    # make it return the value from before that overwrite.
    writes = [c for c in history if c.op.kind is Kind.PUT and c.result is not None]
    candidates = []
    for r in history:
        if r.op.kind is not Kind.GET or r.result is None:
            continue
        older = [w for w in writes if w.op.key == r.op.key and w.ret < r.call]
        if len(older) >= 2:
            candidates.append((r, older[-2]))
    read, stale = rng.choice(candidates)
    assert stale.result is not None
    stale_result = Result(stale.result.revision, stale.op.value, stale.result.revision)
    if read.result == stale_result:
        pytest.skip("the stale candidate is the current value")
    history[history.index(read)] = Call(read.client, read.op, read.call, read.ret, stale_result)
    report = check_history(history, timeout=30)
    assert not report.ok, f"seed {seed}: stale read {read} -> {stale_result} not caught"


def test_unknown_cas_on_an_unknown_revision_may_have_written() -> None:
    # The put's outcome (and so the key's mod_revision) is unknown, so whether the CAS's
    # condition held is unknown too: it may have written, as the read shows it did.
    history = [
        unknown(0, Op(Kind.PUT, "k", "a"), 0),
        unknown(1, Op(Kind.CAS_REV, "k", "b", expect_rev=5), 1),
        get(2, "k", 5, 6, "b", 7, 7),
    ]
    assert check_history(history).ok
    # ...or not, if the read still sees the put.
    history[2] = get(2, "k", 5, 6, "a", 5, 7)
    assert check_history(history).ok
