"""The lessor with a fake clock: grant rules, deadlines, promotion, checkpoints, attachments."""

from __future__ import annotations

from pathlib import Path

import pytest
from raftkv.lease import (
    MAX_LEASE_TTL,
    LeaseExistsError,
    LeaseNotFoundError,
    LeaseTTLTooLargeError,
    Lessor,
    NotPrimaryError,
    min_lease_ttl,
)
from raftkv.lease.lessor import EXPIRED_RETRY_INTERVAL
from raftkv.pb.mvccpb.kv_pb2 import Event, KeyValue
from raftkv.storage.backend import Backend

from tests.lease.conftest import FakeClock, FakeKV, open_lessor

# ---- grant rules -------------------------------------------------------------------------------


def test_min_ttl_is_one_and_a_half_election_timeouts_rounded_up() -> None:
    assert min_lease_ttl(election_ticks=10, heartbeat_ms=100) == 2  # etcd's defaults: 1.5 s
    assert min_lease_ttl(election_ticks=10, heartbeat_ms=50) == 1  # 0.75 s
    assert min_lease_ttl(election_ticks=10, heartbeat_ms=200) == 3  # exactly 3 s, not 4
    assert min_lease_ttl(election_ticks=50, heartbeat_ms=100) == 8  # 7.5 s


def test_grant_raises_short_ttls_to_the_minimum(lessor: Lessor) -> None:
    assert lessor.grant(1, 1).ttl == 2
    assert lessor.grant(2, 0).ttl == 2
    assert lessor.grant(3, -5).ttl == 2
    assert lessor.grant(4, 60).ttl == 60


def test_grant_refuses_existing_id_zero_id_and_too_large_ttl(lessor: Lessor) -> None:
    lessor.grant(7, 10)
    with pytest.raises(LeaseExistsError, match="etcdserver: lease already exists"):
        lessor.grant(7, 20)
    assert lessor.lookup(7) is not None and lessor.lookup(7).ttl == 10  # type: ignore[union-attr]
    with pytest.raises(LeaseNotFoundError):
        lessor.grant(0, 10)
    with pytest.raises(LeaseTTLTooLargeError, match="etcdserver: too large lease TTL"):
        lessor.grant(8, MAX_LEASE_TTL + 1)
    assert lessor.grant(9, MAX_LEASE_TTL).ttl == MAX_LEASE_TTL
    assert 8 not in lessor


# ---- followers never expire; the primary does, in deadline order -----------------------------


def test_follower_never_expires_and_cannot_renew(lessor: Lessor, clock: FakeClock) -> None:
    lessor.grant(1, 5)
    clock.advance(10_000)
    assert lessor.expired_leases(100) == []
    with pytest.raises(NotPrimaryError):
        lessor.renew(1)
    with pytest.raises(NotPrimaryError):
        lessor.remaining(1)


def test_primary_expires_leases_in_deadline_order_within_limit(
    lessor: Lessor, clock: FakeClock
) -> None:
    lessor.promote(extend=0)
    lessor.grant(30, 30)
    lessor.grant(10, 10)
    lessor.grant(20, 20)
    clock.advance(9.99)
    assert lessor.expired_leases(100) == []
    clock.advance(21)  # all three are past their deadline now
    assert lessor.expired_leases(2) == [10, 20]
    assert lessor.expired_leases(2) == [30]
    assert lessor.expired_leases(2) == []  # reported once, until the retry interval passes


def test_renew_restarts_the_ttl_and_expired_leases_cannot_be_renewed(
    lessor: Lessor, clock: FakeClock
) -> None:
    lessor.promote(extend=0)
    lessor.grant(1, 10)
    clock.advance(6)
    assert lessor.remaining(1) == 4
    assert lessor.renew(1) == 10
    assert lessor.remaining(1) == 10
    clock.advance(9.5)
    assert lessor.expired_leases(10) == []  # the first deadline (t+10) no longer counts
    assert lessor.remaining(1) == 0  # 0.5 s left: whole seconds, rounded down
    clock.advance(0.5)
    assert lessor.expired_leases(10) == [1]
    with pytest.raises(LeaseNotFoundError):
        lessor.renew(1)  # expired: its revoke is on the way
    with pytest.raises(LeaseNotFoundError):
        lessor.renew(99)


def test_expired_lease_not_revoked_is_reported_again_after_the_retry_interval(
    lessor: Lessor, clock: FakeClock
) -> None:
    lessor.promote(extend=0)
    lessor.grant(1, 5)
    clock.advance(5)
    assert lessor.expired_leases(10) == [1]
    clock.advance(EXPIRED_RETRY_INTERVAL - 0.1)
    assert lessor.expired_leases(10) == []
    clock.advance(0.1)
    assert lessor.expired_leases(10) == [1]
    lessor.revoke(1)
    clock.advance(EXPIRED_RETRY_INTERVAL)
    assert lessor.expired_leases(10) == []


# ---- promotion and demotion --------------------------------------------------------------------


def test_promote_gives_every_lease_a_full_ttl_plus_the_extension(
    lessor: Lessor, clock: FakeClock
) -> None:
    lessor.grant(1, 10)  # granted long ago while a follower
    clock.advance(500)
    lessor.promote(extend=1.0)
    assert lessor.remaining(1) == 11
    clock.advance(10.9)
    assert lessor.expired_leases(10) == []
    clock.advance(0.1)
    assert lessor.expired_leases(10) == [1]


def test_promote_twice_does_not_extend_again(lessor: Lessor, clock: FakeClock) -> None:
    lessor.grant(1, 10)
    lessor.promote(extend=0)
    clock.advance(8)
    lessor.promote(extend=0)  # a repeated leader notification
    assert lessor.remaining(1) == 2


def test_demote_stops_expiry_and_a_new_promotion_starts_over(
    lessor: Lessor, clock: FakeClock
) -> None:
    lessor.promote(extend=0)
    lessor.grant(1, 10)
    clock.advance(8)
    lessor.demote()
    clock.advance(100)
    assert lessor.expired_leases(10) == []
    with pytest.raises(NotPrimaryError):
        lessor.renew(1)
    lessor.promote(extend=0)
    clock.advance(9.9)
    assert lessor.expired_leases(10) == []
    clock.advance(0.1)
    assert lessor.expired_leases(10) == [1]


# ---- checkpoints -------------------------------------------------------------------------------


def test_long_leases_are_checkpointed_every_interval(
    backend: Backend, kv: FakeKV, clock: FakeClock
) -> None:
    lessor = open_lessor(backend, kv, clock, checkpoint_interval=300)
    lessor.promote(extend=0)
    lessor.grant(1, 1000)
    lessor.grant(2, 200)  # shorter than the interval: never checkpointed
    clock.advance(299)
    assert lessor.due_checkpoints(10) == []
    clock.advance(1)
    assert lessor.due_checkpoints(10) == [(1, 700)]
    assert lessor.due_checkpoints(10) == []
    clock.advance(300)
    assert lessor.due_checkpoints(10) == [(1, 400)]
    clock.advance(300)  # one more: 400 s were left when the last one was taken
    assert lessor.due_checkpoints(10) == [(1, 100)]
    clock.advance(99)  # less than an interval was left: no more checkpoints
    assert lessor.due_checkpoints(10) == []


def test_followers_propose_no_checkpoints(lessor: Lessor, clock: FakeClock) -> None:
    lessor.grant(1, 10_000)
    clock.advance(10_000)
    assert lessor.due_checkpoints(10) == []


def test_checkpointed_remaining_ttl_is_what_a_new_leader_starts_from(
    backend: Backend, kv: FakeKV, clock: FakeClock
) -> None:
    old_leader = open_lessor(backend, kv, clock, checkpoint_interval=300)
    old_leader.promote(extend=0)
    old_leader.grant(1, 1000)
    clock.advance(300)
    checkpoints = old_leader.due_checkpoints(10)
    old_leader.checkpoint(checkpoints)  # the applied LeaseCheckpoint
    assert old_leader.remaining(1) == 700  # the primary keeps its own deadline
    backend.commit()

    # Another member (same replicated state) is elected later.
    new_leader = open_lessor(backend, kv, clock, checkpoint_interval=300)
    assert new_leader.lookup(1).remaining_ttl == 700  # type: ignore[union-attr]
    clock.advance(50)
    new_leader.promote(extend=2)
    assert new_leader.remaining(1) == 702  # not a full 1000 s again


def test_renewal_clears_the_checkpointed_remaining_ttl(lessor: Lessor, clock: FakeClock) -> None:
    lessor.promote(extend=0)
    lessor.grant(1, 1000)
    lessor.grant(2, 200)
    clock.advance(150)
    lessor.renew(2)
    clock.advance(150)
    lessor.checkpoint(lessor.due_checkpoints(10))
    assert lessor.renew(1) == 1000
    assert lessor.renew(2) == 200
    assert lessor.due_checkpoints(10) == [(1, 0)]  # lease 2 was never checkpointed
    lessor.checkpoint([(1, 0)])
    assert lessor.lookup(1).remaining_ttl == 0  # type: ignore[union-attr]
    lessor.demote()
    lessor.promote(extend=0)
    assert lessor.remaining(1) == 1000


def test_checkpoint_of_a_revoked_lease_is_ignored(lessor: Lessor) -> None:
    lessor.grant(1, 1000)
    lessor.revoke(1)
    lessor.checkpoint([(1, 500)])
    assert 1 not in lessor


def test_demote_forgets_pending_checkpoints(lessor: Lessor, clock: FakeClock) -> None:
    lessor.promote(extend=0)
    lessor.grant(1, 1000)
    clock.advance(300)
    lessor.demote()
    assert lessor.due_checkpoints(10) == []


# ---- persistence -------------------------------------------------------------------------------


def test_leases_survive_a_reopen_of_the_backend(tmp_path: Path, kv: FakeKV) -> None:
    clock = FakeClock()
    backend = Backend(tmp_path / "db")
    lessor = open_lessor(backend, kv, clock)
    lessor.grant(1, 60)
    lessor.grant(2, 1)
    lessor.grant(-3, 90)  # etcd lease IDs are int64; negative ones are legal
    lessor.grant(4, 30)
    lessor.checkpoint([(1, 42)])
    lessor.revoke(4)
    kv.put(b"a", 1)
    kv.put(b"b", -3)
    kv.put(b"plain")
    backend.commit()
    backend.close()

    backend = Backend(tmp_path / "db")
    try:
        reopened = open_lessor(backend, kv, clock)
        rows = sorted((x.id, x.ttl, x.remaining_ttl) for x in reopened.leases())
        assert rows == [(-3, 90, 0), (1, 60, 42), (2, 2, 0)]
        assert reopened.keys(1) == [b"a"]
        assert reopened.keys(-3) == [b"b"]
        assert reopened.keys(2) == []
    finally:
        backend.close()


def test_uncommitted_grants_are_not_persisted(tmp_path: Path, kv: FakeKV) -> None:
    backend = Backend(tmp_path / "db")
    open_lessor(backend, kv, FakeClock()).grant(1, 60)
    backend.close()  # no commit: the batch (and the entry's effect) is discarded
    backend = Backend(tmp_path / "db")
    try:
        assert open_lessor(backend, kv, FakeClock()).leases() == []
    finally:
        backend.close()


def test_recover_keeps_the_primary_role_and_gives_fresh_deadlines(
    lessor: Lessor, backend: Backend, kv: FakeKV, clock: FakeClock
) -> None:
    lessor.promote(extend=0)
    lessor.grant(1, 10)
    clock.advance(9)
    lessor.recover(backend, kv, kv.attached())  # e.g. the state was replaced by a snapshot
    assert lessor.is_primary
    assert lessor.remaining(1) == 10


def test_recover_ignores_keys_naming_a_missing_lease(
    backend: Backend, kv: FakeKV, clock: FakeClock
) -> None:
    kv.keys[b"orphan"] = 77
    lessor = open_lessor(backend, kv, clock)
    assert lessor.lease_of(b"orphan") == 0


# ---- attached keys -----------------------------------------------------------------------------


def test_put_attaches_moves_and_detaches_keys(lessor: Lessor, kv: FakeKV) -> None:
    lessor.grant(1, 60)
    lessor.grant(2, 60)
    kv.put(b"k", 1)
    kv.put(b"j", 1)
    assert lessor.keys(1) == [b"j", b"k"]
    kv.put(b"k", 2)  # put with another lease moves the key
    assert (lessor.keys(1), lessor.keys(2)) == ([b"j"], [b"k"])
    kv.put(b"k")  # put without a lease detaches it
    assert lessor.keys(2) == []
    assert lessor.lease_of(b"k") == 0
    kv.delete(b"j")  # a delete detaches
    assert lessor.keys(1) == []


def test_put_that_keeps_the_lease_keeps_the_attachment(lessor: Lessor, kv: FakeKV) -> None:
    lessor.grant(1, 60)
    kv.put(b"k", 1)
    kv.put(b"k", 1)  # e.g. ignore_lease=true: the store keeps the key's lease
    assert lessor.keys(1) == [b"k"]


def test_attachment_does_not_depend_on_prev_kv(lessor: Lessor) -> None:
    """Another listener may clear prev_kv from the shared events; the lessor keeps its own map."""
    lessor.grant(1, 60)
    lessor.on_kv_events([Event(type=Event.PUT, kv=KeyValue(key=b"k", lease=1))])
    lessor.on_kv_events([Event(type=Event.DELETE, kv=KeyValue(key=b"k"))])
    assert lessor.keys(1) == []


def test_keys_of_unknown_lease(lessor: Lessor) -> None:
    with pytest.raises(LeaseNotFoundError):
        lessor.keys(5)


# ---- revoke ------------------------------------------------------------------------------------


def test_revoke_deletes_every_attached_key_in_one_revision(lessor: Lessor, kv: FakeKV) -> None:
    lessor.grant(1, 60)
    lessor.grant(2, 60)
    for key in (b"c", b"a", b"b"):
        kv.put(key, 1)
    kv.put(b"other", 2)
    kv.put(b"plain")
    before = kv.revision
    events = lessor.revoke(1)
    assert kv.delete_calls == [[b"a", b"b", b"c"]]
    assert [(e.type, e.kv.key, e.kv.mod_revision) for e in events] == [
        (Event.DELETE, b"a", before + 1),
        (Event.DELETE, b"b", before + 1),
        (Event.DELETE, b"c", before + 1),
    ]
    assert kv.revision == before + 1
    assert set(kv.keys) == {b"other", b"plain"}
    assert 1 not in lessor
    assert lessor.keys(2) == [b"other"]
    assert lessor.lease_of(b"a") == 0


def test_revoke_without_keys_writes_nothing_to_the_kv(lessor: Lessor, kv: FakeKV) -> None:
    lessor.grant(1, 60)
    assert lessor.revoke(1) == []
    assert kv.delete_calls == []
    with pytest.raises(LeaseNotFoundError, match="etcdserver: requested lease not found"):
        lessor.revoke(1)


def test_leases_are_listed_soonest_deadline_first(lessor: Lessor, clock: FakeClock) -> None:
    lessor.promote(extend=0)
    lessor.grant(3, 30)
    lessor.grant(1, 50)
    lessor.grant(2, 10)
    assert [x.id for x in lessor.leases()] == [2, 3, 1]
