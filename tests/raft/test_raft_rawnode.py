"""RawNode: the Ready batches the application works from, bootstrap, restart and status."""

from __future__ import annotations

import random

import pytest
from raftkv.pb.raftpb import raft_pb2 as pb
from raftkv.raft import (
    Config,
    MemoryStorage,
    RaftError,
    RawNode,
    SoftState,
    StateType,
    StepLocalMessageError,
)
from test_raft_harness import Net, msg


def node(i: int = 1, storage: MemoryStorage | None = None, **kw: object) -> RawNode:
    return RawNode(Config(i, storage or MemoryStorage(), random.Random(i), **kw))


def test_bootstrap_emits_the_initial_configuration_as_committed_entries() -> None:
    n = node()
    assert not n.has_ready()
    n.bootstrap([(1, b"a"), (2, b"b"), (3, b"c")])
    rd = n.ready()
    assert [(e.index, e.term, e.type) for e in rd.entries] == [
        (i, 1, pb.ENTRY_CONF_CHANGE) for i in (1, 2, 3)
    ]
    assert rd.committed_entries == rd.entries
    cc = pb.ConfChange()
    cc.ParseFromString(rd.entries[1].data)
    assert (cc.type, cc.node_id, cc.context) == (pb.CONF_CHANGE_ADD_NODE, 2, b"b")
    hs = rd.hard_state
    assert hs is not None and (hs.term, hs.vote, hs.commit) == (1, 0, 3)
    assert rd.must_sync
    assert rd.soft_state is None  # still a follower with no leader
    assert sorted(n.status().conf_state.voters) == [1, 2, 3]


def test_bootstrapped_single_node_can_campaign_before_its_first_ready() -> None:
    n = node()
    n.bootstrap([(1, b"")])
    n.campaign()
    assert n.state is StateType.LEADER and n.term == 2
    rd = n.ready()
    assert rd.soft_state == SoftState(1, StateType.LEADER)
    assert [e.index for e in rd.entries] == [1, 2]
    assert [e.index for e in rd.committed_entries] == [1, 2]


def test_bootstrap_refuses_a_used_storage_and_an_empty_peer_list() -> None:
    st = MemoryStorage()
    st.append([pb.Entry(index=1, term=1)])
    with pytest.raises(RaftError):
        node(storage=st).bootstrap([(1, b"")])
    with pytest.raises(ValueError):
        node().bootstrap([])


def test_ready_reports_only_what_changed_and_advance_consumes_it() -> None:
    net = Net()
    n = net.nodes[1]
    assert not n.has_ready()
    n.campaign()
    rd = n.ready()
    assert rd.soft_state == SoftState(0, StateType.PRE_CANDIDATE)
    assert rd.hard_state is None  # pre-vote: neither term nor vote changed
    assert not rd.must_sync
    assert {m.type for m in rd.messages} == {pb.MSG_PRE_VOTE}
    n.advance(rd)
    assert not n.has_ready()
    for m in rd.messages:
        net.send(m)
    net.deliver()  # the rest of the election
    assert n.state is StateType.LEADER
    net.propose(1, b"x")  # the harness runs the Ready loop to the end
    assert not n.has_ready()


def test_a_vote_must_be_synced_a_commit_alone_need_not() -> None:
    net = Net()
    net.set_log(2, [1, 1])
    n = net.nodes[2]
    n.step(msg(pb.MSG_HEARTBEAT, 1, 2, term=1, commit=5))
    rd = n.ready()
    assert rd.hard_state is not None and rd.hard_state.commit == 5
    assert rd.entries == [] and not rd.must_sync
    assert [e.index for e in rd.committed_entries] == [4, 5]
    n.advance(rd)
    n3 = net.nodes[3]  # knows no leader, so it may vote
    n3.step(msg(pb.MSG_VOTE, 2, 3, term=2, index=5, log_term=1))
    rd = n3.ready()
    assert rd.hard_state is not None and (rd.hard_state.term, rd.hard_state.vote) == (2, 2)
    assert rd.must_sync


def test_local_message_types_are_refused_from_the_network() -> None:
    net = Net()
    for t in (pb.MSG_HUP, pb.MSG_BEAT, pb.MSG_CHECK_QUORUM, pb.MSG_UNREACHABLE):
        with pytest.raises(StepLocalMessageError):
            net.nodes[1].step(msg(t, 2, 1))
    assert net.nodes[1].state is StateType.FOLLOWER


def test_restart_restores_term_vote_commit_and_the_configuration() -> None:
    net = Net()
    net.campaign(1)
    for k in range(3):
        net.propose(1, b"v%d" % k)
    net.deliver()
    net.compact(2, keep=1)
    before = (net.nodes[2].term, net.commit(2))
    n = net.restart(2)
    assert (n.term, net.commit(2)) == before
    assert n.status().hard_state.vote == 1
    assert sorted(n.status().conf_state.voters) == [1, 2, 3]
    # the state machine restarted from the snapshot: only what follows it is applied again
    assert net.applied[2] == [b"<snapshot>"]
    net.propose(1, b"after")
    net.deliver()
    assert net.applied[2] == [b"<snapshot>", b"after"]


def test_restart_with_applied_skips_what_the_application_already_applied() -> None:
    net = Net()
    net.campaign(1)
    net.propose(1, b"a")
    net.propose(1, b"b")
    net.deliver()
    st = net.storage[2]
    n = node(2, st, applied=5)
    rd = n.ready()
    assert [e.data for e in rd.committed_entries] == [b"b"]


def test_committed_entries_per_ready_are_bounded_when_configured() -> None:
    st = MemoryStorage()
    st.append([pb.Entry(index=i, term=1, data=b"x" * 100) for i in range(1, 11)])
    st.set_hard_state(pb.HardState(term=1, commit=10))
    n = node(1, st, max_committed_size_per_ready=250)
    seen = []
    while n.has_ready():
        rd = n.ready()
        seen.append(len(rd.committed_entries))
        n.advance(rd)
    assert sum(seen) == 10 and max(seen) == 2


def test_status_on_leader_and_follower() -> None:
    net = Net()
    net.campaign(1)
    st = net.nodes[1].status()
    assert (st.id, st.soft_state, st.applied, st.lead_transferee) == (
        1,
        SoftState(1, StateType.LEADER),
        4,
        0,
    )
    assert (st.hard_state.term, st.hard_state.vote, st.hard_state.commit) == (2, 1, 4)
    assert {i: (p.match, p.next, p.state) for i, p in st.progress.items()} == {
        1: (4, 5, "replicate"),
        2: (4, 5, "replicate"),
        3: (4, 5, "replicate"),
    }
    assert net.nodes[2].status().progress == {}
    assert (net.nodes[2].id, net.nodes[2].lead, net.nodes[2].term) == (2, 1, 2)


def test_read_states_and_messages_come_out_once() -> None:
    net = Net([1])
    net.campaign(1)
    n = net.nodes[1]
    n.read_index(b"r")
    rd = n.ready()
    assert [rs.request_ctx for rs in rd.read_states] == [b"r"]
    n.advance(rd)
    assert not n.has_ready()


def test_restart_tolerates_a_hard_state_older_than_the_snapshot() -> None:
    st = MemoryStorage()
    snap = pb.Snapshot(data=b"s")
    snap.metadata.index, snap.metadata.term = 8, 2
    snap.metadata.conf_state.voters.extend([1, 2, 3])
    st.apply_snapshot(snap)
    st.set_hard_state(pb.HardState(term=2, vote=1, commit=5))  # written before the snapshot
    n = node(1, st, applied=8)
    assert n.status().hard_state.commit == 8 and n.term == 2


def test_restart_refuses_a_commit_index_past_the_log() -> None:
    st = MemoryStorage()
    st.append([pb.Entry(index=1, term=1)])
    st.set_hard_state(pb.HardState(term=1, commit=3))
    with pytest.raises(RaftError, match="past the last index"):
        node(1, st)
