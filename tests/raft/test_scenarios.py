"""Golden transcripts of the tricky Raft paths, each with its outcome asserted in code.

Every scenario runs a fault-free, FIFO cluster from a fixed seed and records each delivered or
dropped message, state change, commit and applied configuration change in a Transcript. The text
is compared with ``testdata/<scenario>.txt``: a change in the core's behaviour shows up as a
readable diff. ``pytest tests/raft --update-golden`` rewrites the files after a deliberate change.
The asserts below each scenario pin the outcome that matters, so a stale golden file is never
the only guard.
"""

from __future__ import annotations

from collections.abc import Callable

from raftkv.pb.raftpb import raft_pb2 as pb
from raftkv.raft import StateType
from sim import Cluster, Transcript

ELECTION = 10
Golden = Callable[[str, str], None]


def start(seed: int, title: str, **kw: object) -> tuple[Cluster, Transcript]:
    """A 3-node cluster where node 1 campaigns and wins term 2, with a transcript."""
    t = Transcript()
    t.note(f"# {title}")
    c = Cluster(3, seed=seed, election_tick=ELECTION, transcript=t, **kw)
    t.note("# node 1 campaigns")
    c.campaign(1)
    c.stabilize()
    assert c.leader() == 1
    assert c.nodes[1].raw.term == 2
    return c, t


def state(c: Cluster, node: int) -> StateType:
    return c.nodes[node].raw.state


def test_prevote_rejoin_does_not_bump_terms(golden: Golden) -> None:
    c, t = start(1, "pre-vote: a partitioned follower rejoins without raising the term")
    c.propose(1, b"a")
    c.stabilize()
    t.note("# isolate 3 for three election timeouts")
    c.net.isolate(3)
    c.run(3 * ELECTION)
    assert any(line.startswith("[3] PRE_CANDIDATE") for line in t.lines)
    assert c.nodes[3].raw.term == 2, "pre-vote must not raise the isolated node's term"
    c.propose(1, b"b")
    c.stabilize()
    t.note("# heal")
    c.net.heal()
    c.run(3)
    assert c.leader() == 1
    assert all(n.raw.term == 2 for n in c.live()), "rejoining disrupted the leader"
    assert state(c, 3) == StateType.FOLLOWER and c.nodes[3].raw.lead == 1
    assert c.nodes[3].data() == [b"a", b"b"]
    golden("prevote_rejoin", t.text())


def test_check_quorum_isolated_leader_steps_down(golden: Golden) -> None:
    c, t = start(2, "check-quorum: an isolated leader steps down; on return it cannot disrupt")
    c.propose(1, b"a")
    c.stabilize()
    t.note("# isolate the leader")
    c.net.isolate(1)
    # The leader checks its quorum once per election timeout; the followers were active in the
    # window the isolation began in, so the check after that one is the first that can fail.
    c.run(2 * ELECTION)
    assert state(c, 1) != StateType.LEADER, "leader kept leading without a quorum"
    old_term = c.nodes[1].raw.term
    c.run(ELECTION)
    new = c.leader()
    assert new in (2, 3)
    new_term = c.nodes[new].raw.term
    assert new_term > old_term
    c.propose(new, b"b")
    c.stabilize()
    assert c.nodes[1].raw.term == old_term, "the isolated ex-leader raised its term"
    t.note("# heal: the old leader returns")
    c.net.heal()
    c.run(3)
    assert c.leader() == new
    assert c.nodes[new].raw.term == new_term, "the returning node disrupted the new leader"
    assert state(c, 1) == StateType.FOLLOWER and c.nodes[1].raw.lead == new
    assert c.nodes[1].data() == [b"a", b"b"]
    golden("check_quorum", t.text())


def test_leader_transfer_to_up_to_date_and_lagging_followers(golden: Golden) -> None:
    c, t = start(3, "leader transfer: to an up-to-date follower, then to a lagging one")
    c.propose(1, b"a")
    c.stabilize()
    t.note("# transfer 1 -> 3")
    c.transfer_leader(1, 3)
    c.stabilize()
    assert c.leader() == 3
    assert c.nodes[3].raw.term == 3, "a transfer is one election, without ticks"
    assert state(c, 1) == StateType.FOLLOWER and c.nodes[1].raw.lead == 3
    t.note("# 2 misses two entries, then 3 transfers to it")
    c.net.isolate(2)
    c.propose(3, b"b")
    c.propose(3, b"c")
    c.stabilize()
    c.net.heal()
    c.transfer_leader(3, 2)
    c.run(2)
    assert c.leader() == 2
    assert c.nodes[2].raw.term == 4
    assert c.nodes[2].data() == [b"a", b"b", b"c"], "the transferee was caught up first"
    c.propose(2, b"d")
    c.stabilize()
    assert all(n.data() == [b"a", b"b", b"c", b"d"] for n in c.live())
    golden("leader_transfer", t.text())


def test_learner_catches_up_and_is_promoted(golden: Golden) -> None:
    c, t = start(4, "learner: added, catches up, does not count for quorum, is promoted")
    for v in (b"a", b"b"):
        c.propose(1, v)
    c.stabilize()
    t.note("# add 4 as a learner")
    c.add_node(4)
    c.propose_conf_change(1, pb.ConfChange(type=pb.CONF_CHANGE_ADD_LEARNER_NODE, node_id=4))
    c.run(2)
    assert list(c.nodes[1].conf_state.learners) == [4]
    assert c.nodes[4].data() == [b"a", b"b"]
    t.note("# with 2 and 3 down, leader + learner are not a quorum")
    c.crash(2)
    c.crash(3)
    c.propose(1, b"c")
    c.run(2)
    assert b"c" not in c.nodes[1].data()
    assert state(c, 4) == StateType.FOLLOWER
    c.restart(2)
    c.restart(3)
    c.run(2)
    assert c.nodes[4].data() == [b"a", b"b", b"c"]
    t.note("# promote 4")
    c.propose_conf_change(1, pb.ConfChange(type=pb.CONF_CHANGE_ADD_NODE, node_id=4))
    c.run(2)
    assert sorted(c.nodes[4].conf_state.voters) == [1, 2, 3, 4]
    assert not c.nodes[4].conf_state.learners
    t.note("# crash 1 and 2: 3 and 4 alone are 2 of 4 voters, no leader")
    c.crash(1)
    c.crash(2)
    c.run(3 * ELECTION)
    assert c.leader() is None
    t.note("# restart 2: now 2, 3 and 4 elect, and 4's vote is needed")
    c.restart(2)
    lead = c.wait_for_leader(4 * ELECTION)
    assert lead in (2, 3, 4)
    term = c.nodes[lead].raw.term
    assert c.checker.votes.get((4, term)) == lead, "the promoted learner's vote elected the leader"
    golden("learner_promotion", t.text())


def test_snapshot_install_to_lagging_follower(golden: Golden) -> None:
    c, t = start(5, "snapshot: a follower behind the leader's compacted log gets MsgSnap")
    t.note("# isolate 3; commit five entries; compact 1 and 2")
    c.net.isolate(3)
    values = [c.propose(1, f"v{i}".encode()) for i in range(5)]
    c.stabilize()
    c.compact(1, keep=0)
    c.compact(2, keep=0)
    assert c.nodes[1].storage.first_index() > c.nodes[3].storage.last_index() + 1
    t.note("# heal")
    c.net.heal()
    c.run(3)
    assert any(line.startswith("[3] installed snapshot") for line in t.lines)
    assert c.nodes[3].data() == values
    got = c.nodes[3].storage.snapshot().metadata
    assert got.index == c.nodes[1].storage.snapshot().metadata.index
    c.propose(1, b"after")
    c.stabilize()
    assert c.nodes[3].data() == [*values, b"after"], "replication resumed after the snapshot"
    golden("snapshot_install", t.text())


def test_leader_removes_itself(golden: Golden) -> None:
    c, t = start(6, "leader removal: the leader removes itself, a new leader follows quickly")
    c.propose(1, b"a")
    c.stabilize()
    t.note("# 1 proposes its own removal")
    c.propose_conf_change(1, pb.ConfChange(type=pb.CONF_CHANGE_REMOVE_NODE, node_id=1))
    c.stabilize()
    assert c.nodes[1].removed
    for i in (2, 3):
        assert sorted(c.nodes[i].conf_state.voters) == [2, 3], "the removal reached the others"
    assert c.nodes[1].raw is None, "the removed leader was shut down"
    ticks = 0
    while c.leader() is None:
        c.run(1)
        ticks += 1
        assert ticks < ELECTION, "no new leader before an election timeout: no hand-over"
    lead = c.leader()
    assert lead in (2, 3)
    c.propose(lead, b"b")
    c.stabilize()
    assert c.nodes[2].data() == c.nodes[3].data() == [b"a", b"b"]
    golden("leader_removal", t.text())
