"""Unit tests of the watch checks (a correct log passes, each broken guarantee is named) and of
the lock-fencing check."""

from __future__ import annotations

import random
from dataclasses import replace

from tests.robustness.history import Call, Kind, Op, Result
from tests.robustness.watchcheck import Event, Response, Session, WatchLog, check_watches
from tests.robustness.workload import FENCE_KEY, LockWorker, check_lock_fencing

HISTORY = [
    Call(0, Op(Kind.PUT, "k", "a"), 0, 1, Result(2)),
    Call(0, Op(Kind.PUT, "k", "b"), 2, 3, Result(3)),
    Call(1, Op(Kind.PUT, "j", "c"), 2, 3, Result(4)),
    Call(1, Op(Kind.DELETE, "k"), 4, 5, Result(5, deleted=1)),
]
EVENTS = [
    Event("PUT", "k", "a", 2, None),
    Event("PUT", "k", "b", 3, ("a", 2)),
    Event("PUT", "j", "c", 4, None),
    Event("DELETE", "k", None, 5, ("b", 3)),
]


def responses(*groups: list[Event]) -> list[Response]:
    return [Response(0, g[-1].mod_rev, "events", tuple(g)) for g in groups]


def full_log(name: str = "w0") -> WatchLog:
    created = Response(0, 1, "created")
    session = Session(1, "m0", [created, *responses(*[[e] for e in EVENTS])])
    session.responses.append(Response(0, 5, "progress"))
    return WatchLog(name, True, [session])


def violations(*logs: WatchLog, strict: bool = False) -> list[str]:
    return check_watches(list(logs), HISTORY, strict_bookmarks=strict).violations


def test_correct_logs_pass_and_resolve_puts() -> None:
    # A second watcher that lost its stream after revision 3 and resumed at 4.
    second = WatchLog(
        "w1",
        False,
        [
            Session(1, "m1", responses([EVENTS[0]], [EVENTS[1]])),
            Session(4, "m2", [*responses([EVENTS[2]], [EVENTS[3]]), Response(0, 5, "progress")]),
        ],
    )
    report = check_watches([full_log(), second], HISTORY)
    assert report.ok, report.explain()
    assert report.put_revisions == {"a": 2, "b": 3, "c": 4}
    assert report.covered == [(2, 5)]


def test_gap_is_unreliable() -> None:
    log = full_log()
    del log.sessions[0].responses[3]  # revision 4
    found = violations(log)
    assert any("revisions missing" in v and "4" in v for v in found)
    assert any("acknowledged write not watched" in v for v in found)


def test_duplicate_and_out_of_order() -> None:
    log = full_log()
    log.sessions[0].responses.insert(3, log.sessions[0].responses[2])
    found = violations(log)
    assert any("duplicate event" in v for v in found)
    assert any("(ordered)" in v for v in found)


def test_revision_split_over_responses_is_not_atomic() -> None:
    two = [Event("PUT", "k", "a", 2), Event("PUT", "j", "c", 2)]
    history = [
        Call(0, Op(Kind.PUT, "k", "a"), 0, 1, Result(2)),
        Call(0, Op(Kind.PUT, "j", "c"), 0, 1, Result(3)),
    ]
    log = WatchLog("w", False, [Session(1, "m0", responses([two[0]], [two[1]]))])
    assert any("split over responses" in v for v in check_watches([log], history).violations)


def test_progress_going_backwards() -> None:
    log = full_log()
    log.sessions[0].responses.append(Response(0, 4, "progress"))
    assert any("goes backwards" in v for v in violations(log))


def test_progress_of_a_resumed_stream_may_be_behind_the_previous_stream() -> None:
    # Resumed at 4 on a member that has only applied revision 3: it says so, legitimately.
    log = WatchLog(
        "w",
        False,
        [
            Session(1, "m0", responses(*[[e] for e in EVENTS[:2]])),
            Session(4, "m1", [Response(0, 2, "progress"), *responses(*[[e] for e in EVENTS[2:]])]),
        ],
    )
    assert not violations(log)


def test_event_behind_a_progress_notification() -> None:
    log = full_log()
    rs = log.sessions[0].responses
    rs.insert(3, Response(0, 4, "progress"))
    assert any("after a progress notification" in v for v in violations(log, strict=True))
    assert not violations(log)  # etcd 3.4's progress answers do not promise it


def test_wrong_prev_kv() -> None:
    log = full_log()
    rs = log.sessions[0].responses
    rs[2] = Response(0, 3, "events", (replace(EVENTS[1], prev=("zzz", 2)),))
    assert any("carries prev_kv" in v for v in violations(log))


def test_resume_must_continue_where_it_stopped() -> None:
    log = WatchLog(
        "w",
        False,
        [Session(1, "m0", responses([EVENTS[0]])), Session(4, "m1", responses(*[EVENTS[2:]]))],
    )
    assert any("resumed at 4, expected 3" in v for v in violations(log))


def test_resume_after_compaction_starts_at_the_compaction() -> None:
    log = WatchLog(
        "w",
        False,
        [
            Session(1, "m0", [Response(0, 5, "compacted", compact_revision=4)]),
            Session(4, "m0", [*responses([EVENTS[2]], [EVENTS[3]])]),
        ],
    )
    report = check_watches([log], HISTORY)
    assert report.ok, report.explain()
    assert report.unchecked_writes == 2  # revisions 2 and 3 were compacted before anyone saw them


def test_phantom_and_double_apply() -> None:
    log = full_log()
    rs = log.sessions[0].responses
    rs.append(Response(0, 6, "events", (Event("PUT", "k", "nobody", 6),)))
    rs.append(Response(0, 7, "events", (Event("PUT", "j", "a", 7),)))
    found = violations(log)
    assert any("never written" in v for v in found)
    assert any("applied twice" in v for v in found)


def test_watchers_disagreeing() -> None:
    other = full_log("w1")
    other.sessions[0].responses[3] = Response(0, 4, "events", (Event("PUT", "j", "x", 4),))
    assert any("revision 4: w1 got" in v for v in violations(full_log(), other))


def test_prev_kv_may_be_missing_only_where_compacted() -> None:
    log = full_log()
    rs = log.sessions[0].responses
    rs[2] = Response(0, 3, "events", (replace(EVENTS[1], prev=None),))
    assert not check_watches([log], HISTORY, compacted=3).violations
    assert any("carries prev_kv None" in v for v in check_watches([log], HISTORY).violations)


def test_lock_fencing_check() -> None:
    def log(*values: str) -> dict[int, tuple[Event, ...]]:
        return {
            rev: (Event("PUT", FENCE_KEY.decode(), value, rev),)
            for rev, value in enumerate(values, start=2)
        }

    worker = LockWorker(0, [], random.Random(0))
    assert not check_lock_fencing(log("w0-1:start", "w0-1:end", "w1-1:start"), [worker])
    # A stalled holder whose late write got through after the next holder started.
    late = check_lock_fencing(log("w0-1:start", "w1-1:start", "w0-1:end"), [worker])
    assert any("after another holder" in v for v in late)
    worker.acknowledged.append(("w0-2:start", 9))
    assert any("not in the log" in v for v in check_lock_fencing(log("w0-1:start"), [worker]))
