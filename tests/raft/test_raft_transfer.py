"""Leadership transfer: MsgTransferLeader, catch-up, MsgTimeoutNow, and its limits."""

from __future__ import annotations

import pytest
from raftkv.pb.raftpb import raft_pb2 as pb
from raftkv.raft import ProposalDroppedError, StateType
from test_raft_harness import Net, core

LEADER, FOLLOWER = StateType.LEADER, StateType.FOLLOWER


def elected(**cfg: object) -> Net:
    net = Net(**cfg)
    net.campaign(1)
    return net


def transfer(net: Net, on: int, to: int) -> None:
    net.nodes[on].transfer_leader(to)
    net.drain(on)


def test_transfer_to_an_up_to_date_follower_needs_no_ticks() -> None:
    net = elected()
    transfer(net, 1, 2)
    net.deliver()
    assert net.leader() == 2
    assert net.nodes[2].term == 3
    assert all(n.lead == 2 for n in net.nodes.values())


def test_transfer_campaign_skips_pre_vote_and_the_leader_lease() -> None:
    net = elected()  # check_quorum and pre_vote on: 3 is inside the leader lease
    transfer(net, 1, 2)
    net.deliver()
    votes = [m for m in net.delivered if m.type in (pb.MSG_VOTE, pb.MSG_PRE_VOTE)]
    assert [(m.type, m.context) for m in votes if m.term == 3] == [
        (pb.MSG_VOTE, b"CampaignTransfer"),
        (pb.MSG_VOTE, b"CampaignTransfer"),
    ]
    assert not [m for m in votes if m.type == pb.MSG_PRE_VOTE and m.term == 3]
    granted = [
        m for m in net.delivered if m.type == pb.MSG_VOTE_RESP and not m.reject and m.term == 3
    ]
    assert {getattr(m, "from") for m in granted} == {1, 3}  # 3 was inside the lease


def test_transfer_to_a_lagging_follower_catches_it_up_first() -> None:
    net = elected()
    net.isolate(3)
    for k in range(5):
        net.propose(1, b"v%d" % k)
    net.deliver()
    net.heal()
    transfer(net, 1, 3)
    net.deliver()
    assert net.leader() == 3
    assert net.applied[3] == [b"v%d" % k for k in range(5)]


def test_proposals_are_refused_during_a_transfer_and_it_is_aborted_after_a_timeout() -> None:
    net = elected()
    net.cut |= {(1, 3), (3, 1)}
    transfer(net, 1, 3)
    net.deliver()
    assert net.nodes[1].status().lead_transferee == 3
    with pytest.raises(ProposalDroppedError, match="transfer"):
        net.propose(1, b"x")
    net.tick(1, 10)
    net.deliver()
    assert net.nodes[1].state is LEADER
    assert net.nodes[1].status().lead_transferee == 0
    net.propose(1, b"y")
    net.deliver()
    assert net.applied[2] == [b"y"]


def test_transfer_to_a_learner_is_ignored() -> None:
    net = elected()
    net.join(1, 4, learner=True)
    transfer(net, 1, 4)
    net.deliver()
    assert net.nodes[1].status().lead_transferee == 0
    assert net.leader() == 1
    net.propose(1, b"x")  # not blocked


def test_transfer_to_self_or_an_unknown_node_is_ignored() -> None:
    net = elected()
    transfer(net, 1, 1)
    transfer(net, 1, 9)
    net.deliver()
    assert net.leader() == 1 and net.nodes[1].term == 2
    assert net.nodes[1].status().lead_transferee == 0


def test_transfer_to_self_cancels_a_pending_transfer() -> None:
    net = elected()
    net.cut |= {(1, 3), (3, 1)}
    transfer(net, 1, 3)
    transfer(net, 1, 1)
    assert net.nodes[1].status().lead_transferee == 0
    net.propose(1, b"x")


def test_transfer_requested_on_a_follower_is_forwarded_to_the_leader() -> None:
    net = elected()
    transfer(net, 3, 3)
    net.deliver()
    assert net.leader() == 3


def test_timeout_now_waits_until_committed_conf_changes_are_applied() -> None:
    net = elected()
    net.add(4)
    net.change(1, pb.CONF_CHANGE_ADD_LEARNER_NODE, 4)
    while net.commit(1) < 5:
        net.deliver_one()
    # 2 receives the commit of the change, but its application has not applied it yet
    app = next(m for m in net.queue if m.type == pb.MSG_APP and m.to == 2 and m.commit == 5)
    net.queue.remove(app)
    node = net.nodes[2]
    node.step(app)
    assert core(node).log.committed == 5 and net.applied_index[2] == 4
    node.step(pb.Message(type=pb.MSG_TIMEOUT_NOW, to=2, term=2, **{"from": 1}))
    assert node.state is FOLLOWER and node.term == 2
    net.drain(2)  # applies the change; the campaign starts right after
    assert node.state is StateType.CANDIDATE and node.term == 3
    net.deliver()
    assert net.leader() == 2
