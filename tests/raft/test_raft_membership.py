"""Membership: single-server changes of voters and learners, one at a time."""

from __future__ import annotations

import pytest
from raftkv.pb.raftpb import raft_pb2 as pb
from raftkv.raft import ProposalDroppedError, StateType
from test_raft_harness import Net, core

ADD, REMOVE = pb.CONF_CHANGE_ADD_NODE, pb.CONF_CHANGE_REMOVE_NODE
ADD_LEARNER, UPDATE = pb.CONF_CHANGE_ADD_LEARNER_NODE, pb.CONF_CHANGE_UPDATE_NODE
LEADER, FOLLOWER = StateType.LEADER, StateType.FOLLOWER


def elected(ids: tuple[int, ...] = (1, 2, 3), **cfg: object) -> Net:
    net = Net(ids, **cfg)
    net.campaign(1)
    return net


def voters(net: Net, i: int) -> list[int]:
    return sorted(net.nodes[i].status().conf_state.voters)


def learners(net: Net, i: int) -> list[int]:
    return sorted(net.nodes[i].status().conf_state.learners)


def test_bootstrap_configuration() -> None:
    net = Net()
    for i in net.ids:
        assert voters(net, i) == [1, 2, 3] and learners(net, i) == []


def test_added_voter_catches_up_and_counts_for_the_quorum() -> None:
    net = elected()
    net.propose(1, b"before")
    net.deliver()
    net.join(1, 4)
    for i in (1, 2, 3, 4):
        assert voters(net, i) == [1, 2, 3, 4]
    assert net.applied[4] == [b"before"]
    # 4 voters: a quorum is 3, so the leader plus one follower no longer commit
    net.isolate(3)
    net.cut |= {(1, 4), (4, 1)}
    before = net.commit(1)
    net.propose(1, b"x")
    net.deliver()
    assert net.commit(1) == before
    net.heal()
    net.tick_all(2)
    assert net.commit(1) == before + 1
    assert net.applied[4][-1] == b"x"


def test_learner_gets_the_log_but_not_a_say() -> None:
    net = elected()
    net.join(1, 4, learner=True)
    assert voters(net, 1) == [1, 2, 3] and learners(net, 1) == [4]
    assert net.nodes[1].status().progress[4].is_learner
    net.propose(1, b"x")
    net.deliver()
    assert net.applied[4] == [b"x"]
    # the learner's acknowledgement does not commit anything on its own
    for f in (2, 3):
        net.cut |= {(1, f), (f, 1)}
    before = net.commit(1)
    net.propose(1, b"y")
    net.deliver()
    assert core(net.nodes[4]).log.last_index() == before + 1
    assert net.commit(1) == before


def test_learner_never_campaigns_and_is_never_asked_to_vote() -> None:
    net = elected()
    net.join(1, 4, learner=True)
    net.isolate(1)
    net.tick(4, 100)  # the learner sees no leader for a long time
    assert net.nodes[4].state is FOLLOWER and net.nodes[4].term == 2
    net.delivered.clear()
    net.tick_all(30)
    lead = net.leader()
    assert lead in (2, 3)
    votes = [m for m in net.delivered if m.type in (pb.MSG_VOTE, pb.MSG_PRE_VOTE)]
    assert votes and all(m.to != 4 and getattr(m, "from") != 4 for m in votes)
    assert net.nodes[4].lead == lead


def test_promoting_a_learner_makes_it_a_voter() -> None:
    net = elected()
    net.join(1, 4, learner=True)
    net.change(1, ADD, 4)
    net.deliver()
    for i in (1, 2, 3, 4):
        assert voters(net, i) == [1, 2, 3, 4] and learners(net, i) == []
    assert not net.nodes[1].status().progress[4].is_learner
    net.nodes[1].transfer_leader(4)
    net.drain(1)
    net.deliver()
    assert net.leader() == 4


def test_removed_follower_no_longer_counts_and_never_campaigns() -> None:
    net = elected()
    net.change(1, REMOVE, 3)
    net.deliver()
    assert voters(net, 1) == voters(net, 2) == voters(net, 3) == [1, 2]
    assert 3 not in net.nodes[1].status().progress
    net.isolate(3)
    net.propose(1, b"x")
    net.deliver()
    assert net.applied[2] == [b"x"]
    net.tick(3, 100)
    assert net.nodes[3].state is FOLLOWER and net.nodes[3].term == 2


def test_removing_a_voter_shrinks_the_quorum_and_can_commit_waiting_entries() -> None:
    net = elected((1, 2))
    net.isolate(1)
    net.propose(1, b"x")
    net.deliver()
    assert net.commit(1) == 3  # waiting for 2
    net.nodes[1].apply_conf_change(pb.ConfChange(type=REMOVE, node_id=2))
    assert net.commit(1) == 4
    net.drain(1)
    assert net.applied[1] == [b"x"]


def test_leader_removing_itself_hands_over_without_an_election_timeout() -> None:
    net = elected()
    net.propose(1, b"a")
    net.deliver()
    net.change(1, REMOVE, 1)
    net.deliver()  # no ticks: the new leader comes from MsgTimeoutNow
    assert net.nodes[1].state is FOLLOWER
    assert [m.to for m in net.delivered if m.type == pb.MSG_TIMEOUT_NOW]
    lead = net.leader()
    assert lead in (2, 3) and voters(net, lead) == [2, 3]
    net.propose(lead, b"b")
    net.deliver()
    assert net.applied[2] == net.applied[3] == [b"a", b"b"]
    net.tick(1, 100)
    assert net.nodes[1].state is FOLLOWER


def test_only_one_change_may_be_pending() -> None:
    net = elected()
    net.add(4)
    net.add(5)
    net.change(1, ADD, 4)
    with pytest.raises(ProposalDroppedError, match="pending"):
        net.change(1, ADD, 5)
    net.deliver()
    net.change(1, ADD, 5)  # the first one was applied
    net.deliver()
    net.tick_all(2)
    assert voters(net, 1) == [1, 2, 3, 4, 5]
    assert voters(net, 5) == [1, 2, 3, 4, 5]


def test_new_leader_refuses_a_change_before_committing_an_entry_of_its_term() -> None:
    net = Net()
    net.add(4)
    net.filter = lambda m: m.type != pb.MSG_APP_RESP
    net.campaign(1)
    assert net.nodes[1].state is LEADER and net.commit(1) == 3
    with pytest.raises(ProposalDroppedError, match="committed an entry of its term"):
        net.change(1, ADD, 4)
    net.filter = None
    net.tick_all(1)
    assert net.commit(1) == 4
    net.change(1, ADD, 4)
    net.deliver()
    assert voters(net, 1) == [1, 2, 3, 4]


def test_conf_change_proposed_on_a_follower_is_forwarded() -> None:
    net = elected()
    net.add(4)
    net.change(2, ADD_LEARNER, 4)
    net.deliver()
    assert learners(net, 3) == [4]


def test_changes_that_change_nothing() -> None:
    net = elected()
    cs = net.nodes[1].apply_conf_change(pb.ConfChange(type=ADD_LEARNER, node_id=2))
    assert sorted(cs.voters) == [1, 2, 3] and list(cs.learners) == []  # no demotion
    cs = net.nodes[1].apply_conf_change(pb.ConfChange(type=UPDATE, node_id=2, context=b"url"))
    assert sorted(cs.voters) == [1, 2, 3]
    cs = net.nodes[1].apply_conf_change(pb.ConfChange(type=ADD, node_id=3))
    assert sorted(cs.voters) == [1, 2, 3]


def test_a_candidate_that_applies_its_own_removal_stops_campaigning() -> None:
    net = Net(pre_vote=False)
    net.nodes[3].campaign()
    net.drain(3)
    assert net.nodes[3].state is StateType.CANDIDATE
    net.nodes[3].apply_conf_change(pb.ConfChange(type=REMOVE, node_id=3))
    assert net.nodes[3].state is FOLLOWER
    net.deliver()  # the votes it asked for arrive; it must not become leader
    assert net.nodes[3].state is FOLLOWER
    net.tick(3, 50)
    assert net.nodes[3].state is FOLLOWER
