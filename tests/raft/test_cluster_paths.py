"""Directed whole-cluster runs of hazards that random schedules reach only by luck.

Each test steers the simulated cluster with partitions, crashes and surgical message drops into
one classic trap and asserts the outcome; the SafetyChecker watches every step as usual.
"""

from __future__ import annotations

from raftkv.pb.raftpb import raft_pb2 as pb
from raftkv.raft import StateType
from sim import Cluster

ELECTION = 10


def _from(m: pb.Message) -> int:
    return getattr(m, "from")


def _term_at(c: Cluster, node: int, index: int) -> int:
    return c.nodes[node].storage.term(index)


def test_figure_8_old_term_entry_on_a_majority_is_not_committed() -> None:
    """Raft paper, figure 8: a leader must not count replicas of an entry from an earlier term.

    Entry 7@2 reaches 1, 2 and then 3 (a majority of five) under the term-4 leader 1; had 1
    committed it, the term-5 leader 5 could not legitimately overwrite it. With the rule, 5 does.
    """
    c = Cluster(
        5, seed=8, pre_vote=False, check_quorum=False, max_size_per_msg=1, election_tick=ELECTION
    )
    c.campaign(1)
    c.stabilize()
    assert c.leader() == 1 and c.nodes[1].raw.term == 2
    base = c.nodes[1].storage.last_index()  # bootstrap entries and the term-2 no-op: 6

    # (a) 1 replicates x at base+1 (term 2) to 2 only.
    c.net.partition({1, 2}, {3, 4, 5})
    c.propose(1, b"x")
    c.stabilize()
    k = base + 1
    assert _term_at(c, 2, k) == 2 and c.nodes[3].storage.last_index() == base

    # (b) 1 crashes; 5 wins term 3 with 3 and 4 and appends y at k, which nobody else receives.
    c.crash(1)
    c.net.partition({3, 4, 5}, {1, 2})
    c.campaign(5)
    c.stabilize(drop=lambda m: m.type == pb.MSG_APP and _from(m) == 5)
    assert c.leader() == 5 and c.nodes[5].raw.term == 3
    assert _term_at(c, 5, k) == 3

    # (c) 5 crashes, 1 comes back and wins term 4 with 2 and 3; 7@2 reaches 3, but the term-4
    # no-op behind it does not.
    c.crash(5)
    c.restart(1)
    c.net.partition({1, 2, 3}, {4, 5})

    def noop_to_3(m: pb.Message) -> bool:
        """A MsgApp that 3 would accept and that carries the term-4 no-op."""
        return (
            m.type == pb.MSG_APP
            and m.to == 3
            and any(e.term == 4 for e in m.entries)
            and c.nodes[3].storage.last_index() >= m.index
        )

    while c.leader() != 1:
        c.campaign(1)
        c.stabilize(drop=noop_to_3)
    assert c.nodes[1].raw.term == 4
    assert _term_at(c, 3, k) == 2 and c.nodes[3].storage.last_index() == k
    assert c.nodes[1].raw.status().hard_state.commit < k, "1 committed a term-2 entry by counting"

    # (d) 1 crashes; 5 returns and wins term 5 with 3 and 4, overwriting 7@2 with its 7@3.
    c.crash(1)
    c.restart(5)
    c.net.partition({2, 3, 4, 5}, {1})
    while c.leader() != 5:
        c.campaign(5)
        c.stabilize()
    c.propose(5, b"z")
    c.stabilize()
    for node in (3, 4, 5):
        assert _term_at(c, node, k) == 3
        assert c.nodes[node].data() == [b"z"]
    c.check_logs()


def test_asymmetric_partition_leader_that_cannot_hear_steps_down() -> None:
    """The leader's inbound links fail: it keeps sending but never hears back. Check-quorum
    makes it step down, the others elect, and with pre-vote it never bumps the term."""
    c = Cluster(3, seed=9, election_tick=ELECTION)
    c.campaign(1)
    c.stabilize()
    c.propose(1, b"a")
    c.stabilize()
    c.net.cut(2, 1)
    c.net.cut(3, 1)
    c.run(2 * ELECTION)
    assert c.nodes[1].raw.state != StateType.LEADER
    c.run(3 * ELECTION)
    new = c.leader()
    assert new in (2, 3)
    term = c.nodes[new].raw.term
    c.propose(new, b"b")
    c.stabilize()
    c.run(5 * ELECTION)
    assert c.leader() == new and c.nodes[new].raw.term == term, "node 1 disrupted the leader"
    assert c.nodes[1].raw.term <= term
    c.net.heal()
    c.run(3)
    assert c.nodes[1].raw.lead == new
    assert c.nodes[1].data() == [b"a", b"b"]


def test_deposed_leader_answers_no_read_in_the_minority() -> None:
    """A leader cut off with a minority cannot confirm its leadership, so a ReadIndex request
    on it stays unanswered while the majority elects a new leader and commits a write."""
    c = Cluster(5, seed=10, election_tick=ELECTION)
    c.campaign(1)
    c.stabilize()
    c.propose(1, b"a")
    c.stabilize()
    c.net.partition({1, 2}, {3, 4, 5})
    c.read_index(1, b"stale?")
    c.stabilize()
    for _ in range(4 * ELECTION):
        c.run(1)
        lead = c.leader()
        if lead is not None and lead != 1:
            break
    assert lead in (3, 4, 5)
    c.propose(lead, b"b")
    c.stabilize()
    c.read_index(1, b"stale-again?")
    c.run(2 * ELECTION)
    assert b"stale?" not in c.reads and b"stale-again?" not in c.reads
    assert c.nodes[1].raw.state != StateType.LEADER
    c.read_index(lead, b"fresh")
    c.stabilize()
    node, index = c.reads[b"fresh"]
    assert node == lead and index >= c.nodes[lead].storage.last_index()
