"""Elections: randomized timeouts, vote rules, PreVote, CheckQuorum and the leader lease."""

from __future__ import annotations

from raftkv.pb.raftpb import raft_pb2 as pb
from raftkv.raft import StateType
from test_raft_harness import Net, core, msg, sender

LEADER, FOLLOWER = StateType.LEADER, StateType.FOLLOWER


def responses(net: Net, i: int) -> list[pb.Message]:
    """Drain node ``i`` and take the messages it queued."""
    net.drain(i)
    return net.take()


def test_election_timeout_is_randomized_within_one_to_two_election_ticks() -> None:
    seen = set()
    for seed in range(30):
        net = Net([1], seed=seed)
        ticks = 0
        while net.nodes[1].state is not LEADER:
            net.tick(1)
            ticks += 1
        seen.add(ticks)
    assert min(seen) >= 10 and max(seen) < 20
    assert len(seen) >= 5  # actually random, not a constant


def test_same_seed_same_history() -> None:
    def run(seed: int) -> list[tuple[int, int]]:
        net = Net(seed=seed)
        net.tick_all(40)
        return [(n.term, n.lead) for n in net.nodes.values()]

    assert run(7) == run(7)


def test_ticks_elect_exactly_one_leader_that_everyone_follows() -> None:
    net = Net([1, 2, 3, 4, 5], seed=3)
    net.tick_all(25)
    lead = net.leader()
    assert all(n.lead == lead for n in net.nodes.values())
    assert len({n.term for n in net.nodes.values()}) == 1
    # and the new leader's empty entry is committed everywhere
    assert {net.commit(i) for i in net.ids} == {6}


def test_campaign_wins_with_a_majority_and_commits_an_empty_entry() -> None:
    net = Net()
    net.campaign(1)
    assert net.leader() == 1
    assert net.nodes[1].term == 2
    log = core(net.nodes[1]).log
    noop = log.slice(4, 5, None)[0]
    assert (noop.term, noop.data, noop.type) == (2, b"", pb.ENTRY_NORMAL)
    assert [net.commit(i) for i in net.ids] == [4, 4, 4]


def test_vote_is_granted_once_per_term_and_survives_a_restart() -> None:
    net = Net()
    req = dict(term=5, index=3, log_term=1)
    net.nodes[2].step(msg(pb.MSG_VOTE, 3, 2, **req))
    (resp,) = responses(net, 2)
    assert (resp.type, resp.to, resp.term, resp.reject) == (pb.MSG_VOTE_RESP, 3, 5, False)
    assert net.storage[2].initial_state()[0].vote == 3  # persisted before the answer left

    net.nodes[2].step(msg(pb.MSG_VOTE, 1, 2, **req))
    (resp,) = responses(net, 2)
    assert resp.reject and resp.to == 1

    net.restart(2)
    net.nodes[2].step(msg(pb.MSG_VOTE, 1, 2, **req))
    (resp,) = responses(net, 2)
    assert resp.reject, "voted twice in term 5 after a restart"
    net.nodes[2].step(msg(pb.MSG_VOTE, 3, 2, **req))
    (resp,) = responses(net, 2)
    assert not resp.reject  # the same candidate asking again gets the same answer


def test_vote_requires_an_up_to_date_log() -> None:
    net = Net()
    net.set_log(2, [2])  # 2's log ends at (4, term 2)
    for index, log_term, granted in [(3, 1, False), (4, 1, False), (3, 2, False), (4, 2, True)]:
        net.nodes[2].step(
            msg(pb.MSG_VOTE, 3, 2, term=10 + index + log_term, index=index, log_term=log_term)
        )
        (resp,) = responses(net, 2)
        assert resp.reject is not granted, (index, log_term)


def test_a_candidate_with_a_stale_log_loses_and_the_up_to_date_node_wins() -> None:
    net = Net(pre_vote=False)
    net.set_log(2, [2])
    net.set_log(3, [2])
    net.campaign(1)
    assert net.nodes[1].state is FOLLOWER
    assert net.leaders() == []
    net.campaign(2)
    assert net.leader() == 2


def test_a_node_outside_the_voter_set_never_campaigns() -> None:
    net = Net()
    net.add(4)  # started empty, knows no configuration
    net.tick(4, 100)
    assert net.nodes[4].state is FOLLOWER and net.nodes[4].term == 0
    assert not net.queue
    net.nodes[4].campaign()
    assert net.nodes[4].state is FOLLOWER and not responses(net, 4)


def test_pre_vote_does_not_change_term_or_vote() -> None:
    net = Net()
    net.nodes[2].step(msg(pb.MSG_PRE_VOTE, 3, 2, term=2, index=3, log_term=1))
    (resp,) = responses(net, 2)
    assert (resp.type, resp.term, resp.reject) == (pb.MSG_PRE_VOTE_RESP, 2, False)
    assert net.nodes[2].term == 1
    assert core(net.nodes[2]).vote == 0


def test_partitioned_node_does_not_raise_its_term_and_rejoins_without_disruption() -> None:
    net = Net()
    net.campaign(1)
    net.isolate(3)
    net.tick_all(100)
    assert net.nodes[3].term == 2, "pre-vote failed to keep the partitioned term"
    assert net.nodes[3].state is StateType.PRE_CANDIDATE
    net.propose(1, b"x")
    net.deliver()
    net.heal()
    net.tick_all(5)
    assert net.leader() == 1
    assert {n.term for n in net.nodes.values()} == {2}
    assert net.applied[3] == [b"x"]


def test_without_pre_vote_a_rejoining_node_disrupts_the_leader() -> None:
    # The contrast that shows what pre-vote and check-quorum buy.
    net = Net(pre_vote=False, check_quorum=False)
    net.campaign(1)
    net.isolate(3)
    net.tick_all(100)
    assert net.nodes[3].term > 2
    net.heal()
    net.tick_all(30)
    assert net.nodes[1].term > 2  # the old leader had to step down


def test_pre_candidate_learns_a_newer_term_from_a_rejection() -> None:
    net = Net()
    net.campaign(1)  # term 2
    net.nodes[3].step(msg(pb.MSG_PRE_VOTE, 9, 3, term=2, index=1, log_term=1))
    (resp,) = responses(net, 3)
    # A pre-vote for term 2 from a node stuck at term 1: rejected with our term 2.
    assert (resp.type, resp.term, resp.reject) == (pb.MSG_PRE_VOTE_RESP, 2, True)


def test_check_quorum_isolated_leader_steps_down() -> None:
    net = Net()
    net.campaign(1)
    net.isolate(1)
    net.tick(1, 9)
    assert net.nodes[1].state is LEADER
    net.tick(1, 11)
    assert net.nodes[1].state is FOLLOWER
    assert net.nodes[1].term == 2  # stepping down does not bump the term


def test_without_check_quorum_an_isolated_leader_stays() -> None:
    net = Net(check_quorum=False)
    net.campaign(1)
    net.isolate(1)
    net.tick(1, 100)
    assert net.nodes[1].state is LEADER


def test_leader_lease_follower_ignores_vote_requests_while_the_leader_is_live() -> None:
    net = Net()
    net.campaign(1)
    for t in (pb.MSG_VOTE, pb.MSG_PRE_VOTE):
        net.nodes[3].step(msg(t, 2, 3, term=9, index=99, log_term=9))
        assert responses(net, 3) == []
        assert net.nodes[3].term == 2 and net.nodes[3].lead == 1
    # the leader ignores them too
    net.nodes[1].step(msg(pb.MSG_VOTE, 2, 1, term=9, index=99, log_term=9))
    assert responses(net, 1) == [] and net.nodes[1].state is LEADER


def test_leader_lease_expires_after_an_election_timeout_without_the_leader() -> None:
    net = Net()
    net.campaign(1)
    net.isolate(1)
    net.tick(3, 10)
    net.nodes[3].step(msg(pb.MSG_VOTE, 2, 3, term=9, index=99, log_term=9))
    (resp,) = responses(net, 3)
    assert not resp.reject and net.nodes[3].term == 9


def test_without_check_quorum_there_is_no_lease() -> None:
    net = Net(check_quorum=False)
    net.campaign(1)
    net.nodes[3].step(msg(pb.MSG_VOTE, 2, 3, term=9, index=99, log_term=9))
    (resp,) = responses(net, 3)
    assert not resp.reject and net.nodes[3].term == 9


def test_higher_term_append_turns_a_leader_into_a_follower() -> None:
    net = Net()
    net.campaign(1)
    net.nodes[1].step(msg(pb.MSG_APP, 2, 1, term=7, index=4, log_term=2, commit=4))
    assert net.nodes[1].state is FOLLOWER
    assert (net.nodes[1].term, net.nodes[1].lead) == (7, 2)


def test_lower_term_messages_are_ignored_but_a_stale_leader_is_told_the_term() -> None:
    net = Net()
    net.campaign(1)  # term 2
    stale = msg(pb.MSG_APP, 3, 2, term=1, index=4, log_term=1, commit=5)
    stale.entries.add(index=5, term=1, data=b"old")
    net.nodes[2].step(stale)
    (resp,) = responses(net, 2)
    assert (resp.type, resp.to, resp.term) == (pb.MSG_APP_RESP, 3, 2)
    assert core(net.nodes[2]).log.last_index() == 4 and net.nodes[2].lead == 1
    # a stale vote request gets no answer at all
    net.nodes[2].step(msg(pb.MSG_VOTE, 3, 2, term=1, index=9, log_term=1))
    assert responses(net, 2) == []


def test_stale_leader_steps_down_when_it_hears_the_new_term() -> None:
    net = Net(check_quorum=False)
    net.campaign(1)
    net.isolate(1)
    net.campaign(2)
    assert net.nodes[2].state is LEADER and net.nodes[2].term == 3
    assert net.nodes[1].state is LEADER  # still believes it leads term 2
    net.heal()
    net.propose(1, b"lost")  # appended by the stale leader, never committed
    net.deliver()
    assert net.nodes[1].state is FOLLOWER and net.nodes[1].lead == 0
    net.tick_all(2)
    assert net.nodes[1].lead == 2
    assert b"lost" not in net.applied[1]
    assert [sender(m) for m in net.delivered if m.type == pb.MSG_APP_RESP and m.to == 1]
