"""Log replication: batching, flow control, fast backtracking, commit rules, forwarding."""

from __future__ import annotations

import pytest
from raftkv.pb.raftpb import raft_pb2 as pb
from raftkv.raft import ProposalDroppedError
from test_raft_harness import Net, core, msg, sender


def queued(net: Net, type_: int, to: int | None = None) -> list[pb.Message]:
    return [m for m in net.queue if m.type == type_ and (to is None or m.to == to)]


def apps_delivered_to(net: Net, to: int) -> list[pb.Message]:
    return [m for m in net.delivered if m.type == pb.MSG_APP and m.to == to and m.entries]


def elected(**cfg: object) -> Net:
    net = Net(**cfg)
    net.campaign(1)
    return net


def test_proposals_commit_and_apply_in_order_everywhere() -> None:
    net = elected()
    for k in range(20):
        net.propose(1, f"v{k}".encode())
    net.deliver()
    want = [f"v{k}".encode() for k in range(20)]
    assert net.applied == {1: want, 2: want, 3: want}
    assert {net.commit(i) for i in net.ids} == {24}


def test_catch_up_sends_several_entries_per_message_bounded_by_max_size() -> None:
    net = elected(max_size_per_msg=500)
    net.isolate(3)
    for k in range(30):
        net.propose(1, b"%03d" % k + b"x" * 97)
    net.deliver()
    net.heal()
    net.delivered.clear()
    net.tick_all(2)
    apps = apps_delivered_to(net, 3)
    sizes = [len(m.entries) for m in apps]
    assert sum(sizes) == 30
    assert max(sizes) > 1, "one entry per message"
    for m in apps:
        assert len(m.entries) == 1 or sum(e.ByteSize() for e in m.entries) <= 500
    assert net.applied[3] == net.applied[1]


def test_zero_max_size_still_sends_one_entry_per_message() -> None:
    net = elected(max_size_per_msg=0)
    net.isolate(3)
    for k in range(5):
        net.propose(1, b"v%d" % k)
    net.deliver()
    net.heal()
    net.delivered.clear()
    net.tick_all(2)
    assert [len(m.entries) for m in apps_delivered_to(net, 3)] == [1] * 5
    assert net.applied[3] == net.applied[1]


def test_replicate_state_pipelines_up_to_the_inflight_window() -> None:
    net = elected(max_inflight_msgs=3)
    for k in range(10):
        net.propose(1, b"v%d" % k)
    assert len(queued(net, pb.MSG_APP, 2)) == 3
    assert net.nodes[1].status().progress[2].inflight == 3
    net.deliver()
    assert len(net.applied[2]) == 10
    assert net.nodes[1].status().progress[2].state == "replicate"


def test_probe_state_sends_one_message_at_a_time() -> None:
    net = elected()
    net.nodes[1].report_unreachable(2)  # the transport lost a message: back to probing
    assert net.nodes[1].status().progress[2].state == "probe"
    for k in range(5):
        net.propose(1, b"v%d" % k)
    assert len(queued(net, pb.MSG_APP, 2)) == 1
    assert len(queued(net, pb.MSG_APP, 3)) == 5
    net.deliver()
    assert net.nodes[1].status().progress[2].state == "replicate"
    assert len(net.applied[2]) == 5


def test_fast_backtracking_skips_a_whole_divergent_term_in_one_round_trip() -> None:
    net = Net()
    net.set_log(1, [3] * 20)
    net.set_log(3, [3] * 20)
    net.set_log(2, [2] * 30)  # uncommitted entries of an old leader
    net.campaign(1)
    assert net.leader() == 1
    rejects = [
        m for m in net.delivered if m.type == pb.MSG_APP_RESP and m.reject and sender(m) == 2
    ]
    assert len(rejects) == 1, "the leader walked back one entry at a time"
    assert (rejects[0].reject_hint, rejects[0].hint_term) == (23, 2)
    assert net.log_terms(2) == net.log_terms(1)
    assert net.commit(2) == net.commit(1) == 24


def test_a_follower_far_behind_is_caught_up_after_a_single_rejection() -> None:
    net = elected()
    net.isolate(3)
    for k in range(50):
        net.propose(1, b"v%d" % k)
    net.deliver()
    net.heal()
    net.delivered.clear()
    net.tick_all(2)
    rejects = [m for m in net.delivered if m.type == pb.MSG_APP_RESP and m.reject]
    assert len(rejects) <= 1
    assert net.applied[3] == net.applied[1]


def test_leader_commits_old_term_entries_only_through_an_entry_of_its_term() -> None:
    net = Net()
    for i in (1, 2, 3):
        net.set_log(i, [2, 2])  # entries 4 and 5 of term 2, uncommitted everywhere
    net.filter = lambda m: m.type != pb.MSG_APP_RESP
    net.campaign(1)
    leader = net.nodes[1]
    assert leader.term == 3 and net.commit(1) == 3
    leader.step(msg(pb.MSG_APP_RESP, 2, 1, term=3, index=5))
    net.drain(1)
    assert net.commit(1) == 3, "committed an entry of an older term by counting replicas"
    leader.step(msg(pb.MSG_APP_RESP, 2, 1, term=3, index=6))
    net.drain(1)
    assert net.commit(1) == 6  # the no-op of term 3, and with it 4 and 5


def test_heartbeat_never_commits_beyond_what_the_follower_holds() -> None:
    net = elected()
    net.cut.add((1, 3))
    net.propose(1, b"x")
    net.deliver()
    assert net.commit(1) == 5 and core(net.nodes[3]).log.last_index() == 4
    net.heal()
    net.tick(1)  # heartbeat
    beats = {m.to: m.commit for m in queued(net, pb.MSG_HEARTBEAT)}
    assert beats == {2: 5, 3: 4}
    net.deliver_one()
    net.deliver_one()
    assert net.commit(3) == 4
    net.deliver()
    assert net.commit(3) == 5 and net.applied[3] == [b"x"]


def test_follower_forwards_proposals_to_the_leader() -> None:
    net = elected()
    net.propose(3, b"via-3")
    (fwd,) = net.take()
    assert (fwd.type, sender(fwd), fwd.to, fwd.term) == (pb.MSG_PROP, 3, 1, 0)
    net.send(fwd)
    net.deliver()
    assert net.applied[2] == [b"via-3"]


def test_proposal_without_a_leader_is_dropped() -> None:
    net = Net()
    with pytest.raises(ProposalDroppedError, match="no leader"):
        net.propose(1, b"x")


def test_proposal_on_a_candidate_is_dropped() -> None:
    net = Net(pre_vote=False)
    net.nodes[1].campaign()
    with pytest.raises(ProposalDroppedError):
        net.propose(1, b"x")


def test_disabled_forwarding_drops_proposals_on_followers() -> None:
    net = elected(disable_proposal_forwarding=True)
    with pytest.raises(ProposalDroppedError, match="forwarding"):
        net.propose(2, b"x")
    net.propose(1, b"y")  # the leader still accepts
    net.deliver()
    assert net.applied[2] == [b"y"]


def test_a_forwarded_proposal_the_leader_cannot_take_is_dropped_silently() -> None:
    net = elected()
    net.isolate(1)
    net.propose(2, b"x")  # forwarded; the leader is transferring and will drop it
    fwd = net.take()
    net.heal()
    net.nodes[1].transfer_leader(3)
    net.drain(1)
    net.take()
    for m in fwd:
        net.nodes[1].step(m)  # no exception from the network path
    net.drain(1)
    assert b"x" not in [e.data for e in core(net.nodes[1]).log.unstable_entries()]


def test_uncommitted_size_limit_drops_proposals_until_entries_commit() -> None:
    net = elected(max_uncommitted_entries_size=100)
    net.isolate(1)
    net.propose(1, b"a" * 150)  # nothing uncommitted: one proposal always fits
    with pytest.raises(ProposalDroppedError, match="uncommitted"):
        net.propose(1, b"b" * 10)
    net.propose(1, b"")  # empty entries never count
    net.heal()
    net.tick_all(3)
    assert net.applied[2] == [b"a" * 150]
    net.propose(1, b"c" * 60)
    net.propose(1, b"d" * 30)
    with pytest.raises(ProposalDroppedError):
        net.propose(1, b"e" * 20)


def test_trace_context_rides_on_the_appends_that_carry_the_traced_entry() -> None:
    net = elected()
    net.propose(1, b"x", trace_context=b"tp-x")
    apps = queued(net, pb.MSG_APP)
    assert {m.to for m in apps} == {2, 3}
    assert all(m.trace_context == b"tp-x" for m in apps)
    net.deliver()
    net.propose(1, b"y")
    assert all(m.trace_context == b"" for m in queued(net, pb.MSG_APP))
    net.deliver()
    # forwarded from a follower
    net.propose(2, b"z", trace_context=b"tp-z")
    assert queued(net, pb.MSG_PROP)[0].trace_context == b"tp-z"
    net.deliver_one()
    assert all(m.trace_context == b"tp-z" for m in queued(net, pb.MSG_APP))
    net.deliver()
    assert net.applied[3] == [b"x", b"y", b"z"]


def test_a_batched_append_carries_the_last_traced_entry_in_it() -> None:
    net = elected()
    net.isolate(3)
    net.cut.add((1, 2))  # nothing commits, so the trace contexts stay known
    net.propose(1, b"a", trace_context=b"tp-a")
    net.propose(1, b"b", trace_context=b"tp-b")
    net.propose(1, b"c")
    net.deliver()
    net.cut -= {(1, 3), (3, 1)}
    net.delivered.clear()
    net.tick_all(2)
    (app,) = [m for m in apps_delivered_to(net, 3) if len(m.entries) == 3]
    assert app.trace_context == b"tp-b"
