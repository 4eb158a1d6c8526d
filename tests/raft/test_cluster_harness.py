"""The simulator and its checker are themselves tested: a harness that cannot fail proves nothing.

These tests show the network really drops, cuts, duplicates and reorders; that a run is a
function of its seed; that crash/restart keeps only durable state; and that the SafetyChecker
raises on each kind of violation when fed a fabricated history.
"""

from __future__ import annotations

from random import Random
from types import SimpleNamespace

import pytest
from raftkv.pb.raftpb import raft_pb2 as pb
from raftkv.raft import MemoryStorage, StateType
from sim import (
    Cluster,
    Faults,
    InvariantViolation,
    Network,
    SafetyChecker,
    Transcript,
    decode_state,
    encode_state,
)

# -- the network ------------------------------------------------------------------------------


def test_partition_isolate_and_directed_cut() -> None:
    net = Network(Random(1))
    net.partition([1, 2], [3])
    assert net.connected(1, 2)
    assert not net.connected(1, 3)
    assert not net.connected(3, 2)
    assert net.connected(4, 3), "a node in no group is unaffected"
    net.heal()
    net.isolate(2)
    assert not net.connected(1, 2)
    assert not net.connected(2, 3)
    assert net.connected(1, 3)
    net.heal()
    net.cut(1, 2)
    assert not net.connected(1, 2)
    assert net.connected(2, 1), "a cut is one-directional"
    net.heal()
    assert all(net.connected(a, b) for a in range(1, 4) for b in range(1, 4))


def test_delay_holds_messages_until_their_tick() -> None:
    net = Network(Random(3), Faults(delay=1.0, max_delay=2))
    m = pb.Message(type=pb.MSG_HEARTBEAT, to=2, term=1, **{"from": 1})
    net.send(m)
    assert net.next() is None
    net.now += 2
    assert net.next() is not None


def test_reorder_picks_other_than_oldest() -> None:
    net = Network(Random(5), Faults(reorder=1.0))
    for i in range(10):
        net.send(pb.Message(type=pb.MSG_HEARTBEAT, to=2, term=i, **{"from": 1}))
    picks = {net.next().msg.term for _ in range(20)}
    assert len(picks) > 3


def test_state_machine_encoding_round_trips() -> None:
    items = [(3, b"a"), (7, b""), (9, b"\x00\xff" * 10)]
    assert decode_state(encode_state(items)) == items
    assert decode_state(b"") == []


# -- the cluster ------------------------------------------------------------------------------


def _history(seed: int) -> str:
    t = Transcript()
    c = Cluster(3, seed=seed, faults=Faults(drop=0.1, duplicate=0.1, reorder=0.2), transcript=t)
    c.run(40)
    lead = c.leader()
    if lead is not None:
        for _ in range(5):
            c.propose(lead)
    c.run(20)
    return t.text()


def test_same_seed_same_history_and_seeds_matter() -> None:
    a, b = _history(7), _history(7)
    assert a == b
    assert _history(8) != a


def test_three_nodes_elect_one_leader_and_replicate() -> None:
    c = Cluster(3, seed=1)
    lead = c.wait_for_leader(100)
    values = [c.propose(lead) for _ in range(5)]
    c.stabilize()
    for node in c.nodes.values():
        assert node.data() == values
    followers = [n for n in c.live() if n.id != lead]
    assert all(n.raw.state == StateType.FOLLOWER and n.raw.lead == lead for n in followers)


def test_crash_keeps_only_durable_state_and_restart_replays_it() -> None:
    c = Cluster(3, seed=2, snapshot_interval=4)
    lead = c.wait_for_leader(100)
    values = [c.propose(lead) for _ in range(10)]
    c.stabilize()
    victim = next(i for i in c.nodes if i != lead)
    term = c.nodes[victim].raw.term
    c.crash(victim)
    assert c.nodes[victim].data() == [], "the state machine is volatile"
    assert c.nodes[victim].storage.snapshot().metadata.index > 0, "snapshots were taken"
    c.restart(victim)
    node = c.nodes[victim]
    assert node.raw.term == term, "the term is durable"
    assert node.data() == values, "restart rebuilt the state machine from snapshot + log"
    c.run(5)
    assert c.leader() == lead


def test_isolated_follower_catches_up_by_snapshot() -> None:
    t = Transcript()
    c = Cluster(3, seed=4, snapshot_interval=5, snapshot_keep=0, transcript=t)
    lead = c.wait_for_leader(100)
    lagger = next(i for i in c.nodes if i != lead)
    c.net.isolate(lagger)
    values = [c.propose(lead) for _ in range(20)]
    c.run(3)
    assert c.nodes[lagger].data() != values
    c.net.heal()
    c.run(10)
    assert c.nodes[lagger].data() == values
    assert any(line.startswith(f"[{lagger}] installed snapshot") for line in t.lines)


def test_messages_to_a_crashed_node_are_lost_and_reported() -> None:
    t = Transcript()
    c = Cluster(3, seed=5, transcript=t)
    lead = c.wait_for_leader(100)
    victim = next(i for i in c.nodes if i != lead)
    c.crash(victim)
    c.run(2)
    assert any(line.endswith("(dropped: down)") and f"->{victim} " in line for line in t.lines)


# -- the checker fails on fabricated violations -----------------------------------------------


def _ready(entries=(), hard_state=None, snapshot=None, must_sync=True) -> SimpleNamespace:
    return SimpleNamespace(
        entries=list(entries), hard_state=hard_state, snapshot=snapshot, must_sync=must_sync
    )


def _storage(*entries: pb.Entry) -> MemoryStorage:
    s = MemoryStorage()
    s.append(list(entries))
    return s


def test_checker_rejects_two_leaders_in_one_term() -> None:
    chk = SafetyChecker()
    chk.on_state(1, StateType.LEADER, 2, MemoryStorage())
    chk.on_state(1, StateType.LEADER, 2, MemoryStorage())
    with pytest.raises(InvariantViolation, match="second leader in term 2"):
        chk.on_state(2, StateType.LEADER, 2, MemoryStorage())


def test_checker_rejects_a_second_vote_in_a_term_even_after_restart() -> None:
    chk = SafetyChecker()
    s = MemoryStorage()
    chk.on_persisted(1, _ready(hard_state=pb.HardState(term=3, vote=2)), s)
    chk.on_restart(1, s)
    with pytest.raises(InvariantViolation, match="voted for 2 and then 3"):
        chk.on_persisted(1, _ready(hard_state=pb.HardState(term=3, vote=3)), s)


def test_checker_rejects_a_vote_granted_but_not_persisted() -> None:
    chk = SafetyChecker()
    grant = pb.Message(type=pb.MSG_VOTE_RESP, to=3, term=4, **{"from": 1})
    with pytest.raises(InvariantViolation, match="persisted vote is None"):
        chk.on_send(1, grant, MemoryStorage())


def test_checker_rejects_an_unsynced_vote() -> None:
    chk = SafetyChecker()
    s = MemoryStorage()
    chk.on_persisted(1, _ready(hard_state=pb.HardState(term=2)), s)
    e = pb.Entry(index=1, term=2)
    s.append([e])
    # Only the commit index changed: no fsync needed.
    chk.on_persisted(1, _ready(hard_state=pb.HardState(term=2, commit=1), must_sync=False), s)
    with pytest.raises(InvariantViolation, match="must_sync"):
        chk.on_persisted(
            1, _ready(hard_state=pb.HardState(term=2, vote=3, commit=1), must_sync=False), s
        )


def test_checker_rejects_log_mismatch() -> None:
    chk = SafetyChecker()
    a = pb.Entry(index=1, term=1, data=b"x")
    chk.on_persisted(1, _ready([a]), _storage(a))
    b = pb.Entry(index=1, term=1, data=b"y")
    with pytest.raises(InvariantViolation, match="log matching"):
        chk.on_persisted(2, _ready([b]), _storage(b))


def test_checker_rejects_commit_going_back_and_divergent_apply() -> None:
    chk = SafetyChecker()
    e1 = pb.Entry(index=1, term=1, data=b"x")
    s1 = _storage(e1)
    chk.on_persisted(1, _ready([e1], pb.HardState(term=1, commit=1)), s1)
    chk.on_apply(1, e1)
    with pytest.raises(InvariantViolation, match="went back"):
        chk.on_persisted(1, _ready(hard_state=pb.HardState(term=1, commit=0)), s1)
    other = pb.Entry(index=1, term=2, data=b"z")
    s2 = _storage(other)
    with pytest.raises(InvariantViolation, match="state machine safety"):
        chk.on_persisted(2, _ready([other], pb.HardState(term=2, commit=1)), s2)


def test_checker_rejects_a_leader_missing_a_committed_entry() -> None:
    chk = SafetyChecker()
    e1 = pb.Entry(index=1, term=1, data=b"x")
    chk.on_persisted(1, _ready([e1], pb.HardState(term=1, commit=1)), _storage(e1))
    with pytest.raises(InvariantViolation, match="leader completeness"):
        chk.on_state(2, StateType.LEADER, 2, MemoryStorage())
    # A leader of an older term may legitimately lack it (it was elected before the commit).
    chk.on_state(3, StateType.LEADER, 0, MemoryStorage())


def test_checker_rejects_a_stale_read() -> None:
    chk = SafetyChecker()
    e1 = pb.Entry(index=1, term=1, data=b"x")
    chk.on_persisted(1, _ready([e1], pb.HardState(term=1, commit=1)), _storage(e1))
    chk.on_read_index(1, b"r1")
    with pytest.raises(InvariantViolation, match="answered at 0"):
        chk.on_read_state(1, 0, b"r1")
    chk.on_read_state(1, 1, b"r1")
