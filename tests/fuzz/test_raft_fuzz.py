"""Peer messages on the way in: bytes into the receiver's decoder, messages into the Raft core.

A member of a three-voter cluster (as a follower, and as the leader) gets sequences of
arbitrary peer messages: known and unknown types, terms and indexes around its own and at the
extremes, entries with any index and term, odd snapshots. After each one it runs its Ready
loop as the server does (persist, apply, advance). What must hold:

- `RawNode.step` either takes the message or raises a RaftError; any other exception would
  leave the node half-updated (the server logs and drops such a message);
- a message refused as malformed (MalformedMessageError) leaves the node exactly as it was; one
  the core refuses after reading its term (a heartbeat committing past our log) may have moved
  the node to that term, as any message of a higher term does, but never its log or commit;
- the log stays a log: indexes contiguous, terms never decreasing along it, none above the
  node's term; the term never goes down; the commit index never passes the last index, never
  goes down, and what Ready hands out as committed is exactly the next entries of the log.

Raft trusts its peers (a forged but well-formed MsgApp from the leader is, by design, obeyed:
peers are authenticated by the transport, not by Raft), so this checks robustness against
malformed and out-of-place messages, not against a lying leader.
"""

from __future__ import annotations

import random

import pytest
from google.protobuf.message import DecodeError
from hypothesis import strategies as st
from raftkv.pb.raftpb import peer_pb2
from raftkv.pb.raftpb import raft_pb2 as pb
from raftkv.raft import (
    Config,
    MalformedMessageError,
    MemoryStorage,
    RaftError,
    RawNode,
    StateType,
)

from tests.fuzz.support import fuzz, messages, mutated

SELF, PEERS = 1, (2, 3)
LOCAL = {pb.MSG_HUP, pb.MSG_BEAT, pb.MSG_UNREACHABLE, pb.MSG_SNAP_STATUS, pb.MSG_CHECK_QUORUM}

small = st.one_of(st.integers(0, 12), st.sampled_from([2**63, 2**64 - 1]))
members = st.sampled_from([0, SELF, *PEERS, 4, 2**64 - 1])


@st.composite
def entries(draw: st.DrawFn) -> pb.Entry:
    return pb.Entry(
        index=draw(small),
        term=draw(small),
        type=draw(st.sampled_from([pb.ENTRY_NORMAL, pb.ENTRY_CONF_CHANGE, 7])),
        data=draw(st.binary(max_size=8)),
    )


@st.composite
def peer_messages(draw: st.DrawFn) -> pb.Message:
    kind = draw(
        st.one_of(
            st.sampled_from([t for t in pb.MessageType.values() if t not in LOCAL]),
            st.integers(19, 40),
        )
    )
    message = pb.Message(
        type=kind,
        to=draw(st.sampled_from([SELF, SELF, 0, 2, 99])),
        term=draw(small),
        log_term=draw(small),
        index=draw(small),
        commit=draw(small),
        reject=draw(st.booleans()),
        reject_hint=draw(small),
        context=draw(st.sampled_from([b"", b"CampaignTransfer", b"ctx"])),
        entries=draw(st.lists(entries(), max_size=4)),
    )
    setattr(message, "from", draw(members))
    if draw(st.integers(0, 5)) == 0:
        message.snapshot.metadata.index = draw(small)
        message.snapshot.metadata.term = draw(small)
        message.snapshot.metadata.conf_state.voters.extend(draw(st.lists(members, max_size=3)))
    return message


class Member:
    """A RawNode with the server's Ready loop over a MemoryStorage, checking as it goes."""

    def __init__(self, leader: bool) -> None:
        self.storage = MemoryStorage()
        self.node = RawNode(Config(SELF, self.storage, random.Random(7)))
        self.node.bootstrap([(SELF, b""), *((peer, b"") for peer in PEERS)])
        self.applied = 0
        self.term = 0
        self.commit = 0
        self.run_ready()
        if leader:
            self.node.campaign()
            self.run_ready()
            for kind in (pb.MSG_PRE_VOTE_RESP, pb.MSG_VOTE_RESP):
                term = self.node.term + (1 if kind == pb.MSG_PRE_VOTE_RESP else 0)
                self.node.step(pb.Message(type=kind, to=SELF, term=term, **{"from": 2}))
                self.run_ready()
            assert self.node.state is StateType.LEADER

    def state(self) -> tuple[object, ...]:
        status = self.node.status()
        return (
            self.node.term,
            self.node.state,
            status.hard_state.SerializeToString(deterministic=True),
            self.log(),
        )

    def log(self) -> tuple[object, ...]:
        first, last = self.storage.first_index(), self.storage.last_index()
        entries = self.storage.entries(first, last + 1, None) if last >= first else []
        return self.node.status().hard_state.commit, tuple(entries)

    def step(self, message: pb.Message) -> None:
        """Step `message` and run the Ready loop, checking what a refusal may change."""
        before, log = self.state(), self.log()
        try:
            self.node.step(message)
        except MalformedMessageError:
            assert self.state() == before, "a malformed message changed the node"
        except RaftError:
            assert self.log() == log, "a refused message changed the log"
        self.run_ready()

    def run_ready(self) -> None:
        while self.node.has_ready():
            ready = self.node.ready()
            if ready.snapshot is not None and ready.snapshot.metadata.index:
                self.storage.apply_snapshot(ready.snapshot)
                self.applied = ready.snapshot.metadata.index
            self.storage.append(list(ready.entries))
            if ready.hard_state is not None:
                self.storage.set_hard_state(ready.hard_state)
            for entry in ready.committed_entries:
                assert entry.index == self.applied + 1, "committed entries skip or repeat"
                assert self.storage.term(entry.index) == entry.term
                self.applied = entry.index
                if entry.type == pb.ENTRY_CONF_CHANGE:
                    change = pb.ConfChange.FromString(entry.data)
                    self.node.apply_conf_change(change)
            self.node.advance(ready)
            self.check()

    def check(self) -> None:
        hard_state = self.node.status().hard_state
        assert hard_state.term >= self.term, "the term went down"
        assert hard_state.commit >= self.commit, "the commit index went down"
        self.term, self.commit = hard_state.term, hard_state.commit
        first, last = self.storage.first_index(), self.storage.last_index()
        assert hard_state.commit <= last, "commit index past the end of the log"
        log = self.storage.entries(first, last + 1, None) if last >= first else []
        assert [e.index for e in log] == list(range(first, last + 1)), "a gap in the log"
        terms = [e.term for e in log]
        assert terms == sorted(terms), "terms go down along the log"
        assert not terms or terms[-1] <= hard_state.term, "an entry from a future term"


def run(leader: bool, sequence: list[pb.Message]) -> None:
    member = Member(leader)
    for message in sequence:
        member.step(message)


def test_a_follower_survives_arbitrary_peer_messages() -> None:
    fuzz(lambda ms: run(False, ms), st.lists(peer_messages(), min_size=1, max_size=6), examples=120)


def test_a_leader_survives_arbitrary_peer_messages() -> None:
    fuzz(lambda ms: run(True, ms), st.lists(peer_messages(), min_size=1, max_size=6), examples=80)


def test_peer_stream_bytes_decode_or_fail_with_decode_error() -> None:
    """What the peer service's gRPC deserializer meets: a MessageBatch, or a DecodeError
    (answered by gRPC as a failed call, nothing reaches Raft)."""
    valid = peer_pb2.MessageBatch(
        messages=[pb.Message(type=pb.MSG_APP, to=1, term=2, entries=[pb.Entry(index=3, term=2)])]
    ).SerializeToString()

    def body(data: bytes) -> None:
        try:
            batch = peer_pb2.MessageBatch.FromString(data)
        except DecodeError:
            return
        for message in batch.messages:
            message.SerializeToString()

    fuzz(body, st.one_of(st.binary(max_size=64), mutated(valid)), examples=200)


def test_weird_but_well_formed_batches_never_raise_past_the_node() -> None:
    """Every field of the peer batch with extreme values, straight into `step`."""

    def body(batch: peer_pb2.MessageBatch) -> None:
        member = Member(leader=False)
        for message in batch.messages:
            if message.type not in LOCAL:
                member.step(message)

    fuzz(body, messages(peer_pb2.MessageBatch), examples=50)


# ---- regressions found by the targets above -------------------------------------------------


def test_a_term_at_the_top_of_uint64_is_refused_before_it_is_adopted() -> None:
    """Was: the node adopted term 2**64-1 from a MsgTimeoutNow, then failed to campaign at the
    next term (uint64 overflow), and could never campaign again."""
    member = Member(leader=False)
    message = pb.Message(type=pb.MSG_TIMEOUT_NOW, to=SELF, term=2**64 - 1, **{"from": 2})
    before = member.state()
    with pytest.raises(MalformedMessageError):
        member.node.step(message)
    assert member.state() == before
    # It can still campaign: pre-vote at term 2, then the election.
    member.node.campaign()
    member.run_ready()
    assert member.node.state is StateType.PRE_CANDIDATE
    member.node.step(pb.Message(type=pb.MSG_PRE_VOTE_RESP, to=SELF, term=2, **{"from": 2}))
    member.run_ready()
    assert (member.node.state, member.node.term) == (StateType.CANDIDATE, 2)


def test_a_message_claiming_to_come_from_this_node_is_refused_unchanged() -> None:
    """Was: a MsgProp "from" this node with a higher term moved the node to that term, then
    raised ProposalDroppedError as if the node had proposed it itself."""
    member = Member(leader=False)
    message = pb.Message(type=pb.MSG_PROP, to=SELF, term=5, entries=[pb.Entry(data=b"x")])
    setattr(message, "from", SELF)
    before = member.state()
    with pytest.raises(MalformedMessageError):
        member.node.step(message)
    assert member.state() == before


def test_append_entries_that_do_not_follow_the_index_are_refused() -> None:
    """Was: a MsgApp whose entry did not follow its index (an entry at index 4 after index 4,
    or at 5 after 3) was appended, leaving terms going down or a gap the storage refused."""
    for index in (4, 5):
        member = Member(leader=False)
        message = pb.Message(type=pb.MSG_APP, to=SELF, term=2, index=3, log_term=1)
        message.entries.add(index=index, term=2)
        setattr(message, "from", 2)
        before = member.state()
        if index == 4:
            member.step(message)  # well formed: taken
            assert member.storage.last_index() == 4
            continue
        with pytest.raises(MalformedMessageError):
            member.node.step(message)
        assert member.state() == before


def test_append_without_a_term_or_with_entries_of_lower_terms_is_refused() -> None:
    member = Member(leader=False)
    for term, entry_terms in ((0, [0]), (3, [2, 1]), (3, [4])):
        message = pb.Message(type=pb.MSG_APP, to=SELF, term=term, index=3, log_term=1)
        for offset, entry_term in enumerate(entry_terms, start=4):
            message.entries.add(index=offset, term=entry_term)
        setattr(message, "from", 2)
        before = member.state()
        with pytest.raises(MalformedMessageError):
            member.node.step(message)
        assert member.state() == before
