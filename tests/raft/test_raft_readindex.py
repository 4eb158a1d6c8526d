"""ReadIndex (safe mode): a read point confirmed by a heartbeat round of a quorum."""

from __future__ import annotations

import pytest
from raftkv.pb.raftpb import raft_pb2 as pb
from raftkv.raft import ReadState
from test_raft_harness import Net


def elected(ids: tuple[int, ...] = (1, 2, 3), **cfg: object) -> Net:
    net = Net(ids, **cfg)
    net.campaign(1)
    net.propose(1, b"x")
    net.deliver()
    return net


def read(net: Net, i: int, ctx: bytes) -> None:
    net.nodes[i].read_index(ctx)
    net.drain(i)


def test_leader_serves_a_read_after_a_quorum_confirms_its_leadership() -> None:
    net = elected()
    read(net, 1, b"r1")
    assert net.read_states[1] == []
    beats = [m for m in net.queue if m.type == pb.MSG_HEARTBEAT]
    assert {m.to for m in beats} == {2, 3} and {m.context for m in beats} == {b"r1"}
    net.deliver()
    assert net.read_states[1] == [ReadState(5, b"r1")]


def test_no_read_without_a_quorum_and_a_later_heartbeat_completes_it() -> None:
    net = elected()
    net.isolate(1)
    read(net, 1, b"r1")
    read(net, 1, b"r2")
    net.deliver()
    assert net.read_states[1] == []
    net.heal()
    net.tick(1)  # the next heartbeat round carries the newest pending context
    net.deliver()
    assert net.read_states[1] == [ReadState(5, b"r1"), ReadState(5, b"r2")]


def test_one_ack_from_a_follower_is_enough_in_three() -> None:
    net = elected()
    net.cut |= {(1, 3), (3, 1)}
    read(net, 1, b"r")
    net.deliver()
    assert net.read_states[1] == [ReadState(5, b"r")]


def test_a_single_voter_answers_at_once() -> None:
    net = Net([1])
    net.campaign(1)
    read(net, 1, b"r")
    assert net.read_states[1] == [ReadState(2, b"r")]
    assert not net.queue


def test_follower_read_is_forwarded_and_answered_with_the_leaders_commit_index() -> None:
    net = elected()
    read(net, 2, b"f")
    (fwd,) = net.take()
    assert (fwd.type, fwd.to, fwd.context) == (pb.MSG_READ_INDEX, 1, b"f")
    net.send(fwd)
    net.deliver()
    assert net.read_states[2] == [ReadState(5, b"f")]
    assert net.read_states[1] == []


def test_a_new_leader_serves_reads_only_after_committing_an_entry_of_its_term() -> None:
    net = Net()
    net.filter = lambda m: m.type != pb.MSG_APP_RESP
    net.campaign(1)
    read(net, 1, b"r")
    net.deliver()
    assert not [m for m in net.delivered if m.type == pb.MSG_HEARTBEAT and m.context == b"r"]
    assert net.read_states[1] == []
    net.filter = None
    net.tick_all(1)
    net.tick_all(1)
    assert net.commit(1) == 4
    assert net.read_states[1] == [ReadState(4, b"r")]


def test_a_read_with_no_leader_known_is_dropped() -> None:
    net = Net()
    read(net, 2, b"r")
    assert not net.queue and net.read_states[2] == []


def test_read_context_must_not_be_empty() -> None:
    net = elected()
    with pytest.raises(ValueError, match="context"):
        net.nodes[1].read_index(b"")
