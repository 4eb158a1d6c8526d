"""The Raft state machine: one node's role, term, vote, log and (as leader) its followers.

Shape: ``Raft`` is pure. Its only inputs are ``tick()`` (time), ``step(message)`` (everything
else, including local requests such as proposals) and ``apply_conf_change``; its only outputs
are the messages it appends to ``msgs``, the ``read_states`` and the state of its log. There is
no clock, no I/O and no global randomness, so a test can drive a whole cluster by hand and
replay it exactly. ``RawNode`` packages the outputs into a ``Ready``.

Behaviour, in short (the Raft paper and Ongaro's thesis; etcd-io/raft for the practical rules):

* Elections: a follower that hears nothing for a randomized timeout in
  [election_tick, 2*election_tick) campaigns. With PreVote it first asks whether it *would* win
  without bumping its term, so a partitioned node cannot inflate the term and disrupt the
  cluster on its return. With CheckQuorum a leader that has not heard from a quorum within an
  election timeout steps down, and a node that heard from a live leader within the election
  timeout ignores (pre)vote requests (the leader lease). A leadership transfer's campaign is
  marked in ``Message.context`` and bypasses both the pre-vote round and the lease.
* Replication: per-follower ``Progress`` (probe / replicate / snapshot) with a window of
  in-flight MsgApp; several entries per MsgApp up to ``max_size_per_msg``. A rejection carries
  a hint (an index and the follower's term there) so the leader skips a whole term per round
  trip. Only entries of the leader's term are committed by counting replicas.
* Membership: **single-server changes**, not joint consensus. A configuration is voters plus
  learners; an entry of type ENTRY_CONF_CHANGE takes effect when the application applies it
  (``apply_conf_change``). The leader refuses a second change while one is pending (not yet
  applied) *and* until it has committed an entry of its own term: without the latter, a new
  leader could propose a change based on a configuration that a concurrent change in an older
  term is about to replace, which breaks the overlap of majorities (the bug in single-server
  changes described by Ongaro, raft-dev, 2015). A node that is not a voter never campaigns.
* Learners receive the log and heartbeats but never count for commit, votes or quorum. A
  learner still answers a vote request (the candidate may know of a promotion it has not yet
  applied); candidates only ask, and only count, the voters of their own configuration.
* ReadIndex (safe mode): the leader records its commit index, confirms it still leads with a
  heartbeat round, then releases a ``ReadState``.
* Proposals on followers are forwarded to the leader; messages with a higher term turn the node
  into a follower (subject to the lease and pre-vote rules); lower-term messages are ignored,
  except that a stale leader or pre-candidate is answered so it learns the newer term.
"""

from __future__ import annotations

import enum
from collections.abc import Callable

from raftkv.pb.raftpb.raft_pb2 import (
    CONF_CHANGE_ADD_LEARNER_NODE,
    CONF_CHANGE_ADD_NODE,
    CONF_CHANGE_REMOVE_NODE,
    ENTRY_CONF_CHANGE,
    MSG_APP,
    MSG_APP_RESP,
    MSG_BEAT,
    MSG_CHECK_QUORUM,
    MSG_HEARTBEAT,
    MSG_HEARTBEAT_RESP,
    MSG_HUP,
    MSG_PRE_VOTE,
    MSG_PRE_VOTE_RESP,
    MSG_PROP,
    MSG_READ_INDEX,
    MSG_READ_INDEX_RESP,
    MSG_SNAP,
    MSG_SNAP_STATUS,
    MSG_TIMEOUT_NOW,
    MSG_TRANSFER_LEADER,
    MSG_UNREACHABLE,
    MSG_VOTE,
    MSG_VOTE_RESP,
    ConfChange,
    ConfState,
    Entry,
    HardState,
    Message,
    Snapshot,
)
from raftkv.raft.config import Config
from raftkv.raft.errors import (
    CompactedError,
    ProposalDroppedError,
    RaftError,
    SnapshotTemporarilyUnavailableError,
)
from raftkv.raft.log import RaftLog
from raftkv.raft.progress import (
    PROBE,
    REPLICATE,
    SNAPSHOT,
    Progress,
    ProgressTracker,
    VoteResult,
)
from raftkv.raft.readonly import ReadOnly
from raftkv.raft.state import ReadState, SoftState, StateType

FOLLOWER = StateType.FOLLOWER
CANDIDATE = StateType.CANDIDATE
LEADER = StateType.LEADER
PRE_CANDIDATE = StateType.PRE_CANDIDATE

# Message.context of the vote requests of a campaign started by MsgTimeoutNow.
CAMPAIGN_TRANSFER = b"CampaignTransfer"

# Messages that only the node itself generates; RawNode.step refuses them from the network.
LOCAL_MESSAGES = frozenset({MSG_HUP, MSG_BEAT, MSG_UNREACHABLE, MSG_SNAP_STATUS, MSG_CHECK_QUORUM})

# Messages whose term ``_send`` leaves alone.
_KEEP_TERM = frozenset(
    {MSG_VOTE, MSG_VOTE_RESP, MSG_PRE_VOTE, MSG_PRE_VOTE_RESP, MSG_PROP, MSG_READ_INDEX}
)


class CampaignType(enum.Enum):
    PRE_ELECTION = "pre_election"
    ELECTION = "election"
    TRANSFER = "transfer"


def _sender(m: Message) -> int:
    return getattr(m, "from")  # ``from`` is a Python keyword


class Raft:
    """One Raft node. Use it through ``RawNode``; the attributes are read by ``RawNode`` and by
    white-box tests, and are not a stable API."""

    def __init__(self, c: Config) -> None:
        c.validate()
        self.id = c.id
        self.rng = c.rng
        self.log = RaftLog(c.storage, c.max_committed_size_per_ready)
        self.max_msg_size = c.max_size_per_msg
        self.max_uncommitted_size = c.max_uncommitted_entries_size
        self.check_quorum = c.check_quorum
        self.pre_vote = c.pre_vote
        self.disable_proposal_forwarding = c.disable_proposal_forwarding
        self.heartbeat_timeout = c.heartbeat_tick
        self.election_timeout = c.election_tick

        self.term = 0
        self.vote = 0
        self.lead = 0
        self.state = FOLLOWER
        self.msgs: list[Message] = []
        self.read_states: list[ReadState] = []
        self.prs = ProgressTracker(c.max_inflight_msgs)
        self.lead_transferee = 0
        # Index of the last conf change the leader appended; a new one waits until it is applied.
        self.pending_conf_index = 0
        self.uncommitted_size = 0
        self.read_only = ReadOnly()
        # ReadIndex requests that arrived before the leader committed an entry of its term.
        self.pending_read_index_msgs: list[Message] = []
        self.election_elapsed = 0
        self.heartbeat_elapsed = 0
        self.randomized_election_timeout = 0
        # Leader only: broadcasts owed since the last Ready. Proposals and commit advances only
        # set these; ``flush_broadcast`` (called when the application takes a Ready) then sends
        # one MsgApp per follower for all of them instead of one per event.
        self.bcast_entries_pending = False
        self.bcast_commit_pending = False
        # Leader only: index of a traced proposal -> its trace context, until committed.
        self.trace: dict[int, bytes] = {}
        # Ticks left to act on a MsgTimeoutNow that arrived while a committed conf change was
        # still unapplied (the campaign waits for the application to catch up).
        self.deferred_transfer_ticks = 0
        # Conf changes up to this index are already reflected in ``prs`` (set by bootstrap).
        self.conf_applied_floor = 0
        self._step_fn: Callable[[Message], None] = self._step_follower
        self._tick_fn: Callable[[], None] = self._tick_election

        hs, cs = c.storage.initial_state()
        self.prs.restore(cs, self.log.last_index() + 1)
        if hs.term or hs.vote or hs.commit:
            self._load_state(hs)
        if c.applied:
            self.log.applied_to(c.applied)
        self.become_follower(self.term, 0)

    def _load_state(self, hs: HardState) -> None:
        log = self.log
        if hs.commit > log.last_index():
            raise RaftError(
                f"hard state commit {hs.commit} is past the last index {log.last_index()}; "
                "was the log truncated or lost?"
            )
        # A snapshot is committed by definition: a hard state saved before the snapshot was
        # installed (a crash in between) may lag behind it.
        log.committed = max(hs.commit, log.committed)
        self.term = hs.term
        self.vote = hs.vote

    # -- small queries ------------------------------------------------------------------------

    def soft_state(self) -> SoftState:
        return SoftState(self.lead, self.state)

    def hard_state(self) -> HardState:
        return HardState(term=self.term, vote=self.vote, commit=self.log.committed)

    def promotable(self) -> bool:
        """Only a voter of the current configuration may campaign."""
        return self.id in self.prs.voters

    def committed_entry_in_current_term(self) -> bool:
        return self.log.term_or_zero(self.log.committed) == self.term

    def has_unapplied_conf_changes(self) -> bool:
        log = self.log
        lo = max(log.applied, self.conf_applied_floor) + 1
        lo = max(lo, log.first_index())
        if lo > log.committed:
            return False
        return any(e.type == ENTRY_CONF_CHANGE for e in log.slice(lo, log.committed + 1, None))

    # -- sending --------------------------------------------------------------------------------

    def _send(self, m: Message) -> None:
        """Queue ``m``; stamps ``from`` (unless forwarded) and the current term (except on
        votes, which carry their own, and on proposals / read requests, which carry none)."""
        if not _sender(m):
            setattr(m, "from", self.id)
        if m.type not in _KEEP_TERM:
            m.term = self.term
        self.msgs.append(m)

    def _send_append(self, to: int) -> None:
        self._maybe_send_append(to, True)

    def _maybe_send_append(self, to: int, send_if_empty: bool) -> bool:
        """Send the entries ``to`` needs next (or a snapshot when they are compacted). Returns
        whether a message was sent."""
        pr = self.prs.progress[to]
        if pr.is_paused():
            return False
        log = self.log
        prev = pr.next - 1
        try:
            prev_term = log.term(prev)
            ents = log.entries(pr.next, self.max_msg_size)
        except CompactedError:
            return self._send_snapshot(to, pr)
        if not ents and not send_if_empty:
            return False
        m = Message(type=MSG_APP, to=to, index=prev, log_term=prev_term, commit=log.committed)
        if ents:
            m.entries.extend(ents)
            if pr.state is REPLICATE:
                last = ents[-1].index
                pr.next = last + 1
                pr.inflights.add(last)
            if self.trace:
                tc = self._trace_context_for(ents[0].index, ents[-1].index)
                if tc:
                    m.trace_context = tc
        if pr.state is PROBE:
            pr.probe_sent = True
        self._send(m)
        return True

    def _send_snapshot(self, to: int, pr: Progress) -> bool:
        if not pr.recent_active:
            return False  # don't ship a snapshot to a peer that is probably down
        try:
            snap = self.log.snapshot()
        except SnapshotTemporarilyUnavailableError:
            return False  # tried again on the next heartbeat response
        if snap.metadata.index == 0:
            raise RaftError("need a non-empty snapshot to catch up a follower")
        pr.become_snapshot(snap.metadata.index)
        self._send(Message(type=MSG_SNAP, to=to, snapshot=snap))
        return True

    def _trace_context_for(self, lo: int, hi: int) -> bytes:
        best = -1
        out = b""
        for idx, tc in self.trace.items():
            if lo <= idx <= hi and idx > best:
                best, out = idx, tc
        return out

    def _bcast_append(self) -> None:
        me = self.id
        for pid in self.prs.progress:
            if pid != me:
                self._maybe_send_append(pid, True)

    def flush_broadcast(self) -> None:
        """Send what proposals and commit advances since the last call owe the followers."""
        if not (self.bcast_entries_pending or self.bcast_commit_pending):
            return
        send_if_empty = self.bcast_commit_pending  # an empty MsgApp still carries the commit
        self.bcast_entries_pending = self.bcast_commit_pending = False
        if self.state is not LEADER:
            return
        me = self.id
        for pid in self.prs.progress:
            if pid != me:
                self._maybe_send_append(pid, send_if_empty)

    def _bcast_heartbeat(self, ctx: bytes | None = None) -> None:
        if ctx is None:
            # Re-send the newest pending ReadIndex context, so a lost round does not stall it.
            ctx = self.read_only.last_pending_request_ctx()
        committed = self.log.committed
        me = self.id
        for pid, pr in self.prs.progress.items():
            if pid != me:
                # Never tell a follower to commit beyond what it is known to hold.
                commit = min(pr.match, committed)
                self._send(Message(type=MSG_HEARTBEAT, to=pid, commit=commit, context=ctx))

    # -- role changes -------------------------------------------------------------------------

    def _reset(self, term: int) -> None:
        if self.term != term:
            self.term = term
            self.vote = 0
        self.lead = 0
        self.election_elapsed = 0
        self.heartbeat_elapsed = 0
        self.randomized_election_timeout = self.election_timeout + self.rng.randrange(
            self.election_timeout
        )
        self.lead_transferee = 0
        self.prs.reset_votes()
        last = self.log.last_index()
        for pid, pr in self.prs.progress.items():
            pr.reset(last + 1)
            if pid == self.id:
                pr.match = last
        self.pending_conf_index = 0
        self.uncommitted_size = 0
        self.read_only = ReadOnly()
        self.pending_read_index_msgs = []
        self.trace = {}
        self.deferred_transfer_ticks = 0
        self.bcast_entries_pending = self.bcast_commit_pending = False

    def become_follower(self, term: int, lead: int) -> None:
        self._step_fn = self._step_follower
        self._reset(term)
        self._tick_fn = self._tick_election
        self.lead = lead
        self.state = FOLLOWER

    def _become_candidate(self) -> None:
        if self.state is LEADER:
            raise RaftError("invalid transition: leader -> candidate")
        self._step_fn = self._step_candidate
        self._reset(self.term + 1)
        self._tick_fn = self._tick_election
        self.vote = self.id
        self.state = CANDIDATE

    def _become_pre_candidate(self) -> None:
        if self.state is LEADER:
            raise RaftError("invalid transition: leader -> pre-candidate")
        # Neither the term nor the vote changes: that is the point of the pre-vote.
        self._step_fn = self._step_candidate
        self.prs.reset_votes()
        self._tick_fn = self._tick_election
        self.lead = 0
        self.state = PRE_CANDIDATE

    def _become_leader(self) -> None:
        if self.state is FOLLOWER:
            raise RaftError("invalid transition: follower -> leader")
        self._step_fn = self._step_leader
        self._reset(self.term)
        self._tick_fn = self._tick_heartbeat
        self.lead = self.id
        self.state = LEADER
        pr = self.prs.progress[self.id]
        pr.become_replicate()
        pr.recent_active = True
        # Any entry after the old commit may be a conf change; be conservative.
        self.pending_conf_index = self.log.last_index()
        # The empty entry of the new term: committing it commits everything before it.
        self._append_entries([Entry()])
        self.uncommitted_size = 0

    # -- ticks ----------------------------------------------------------------------------------

    def tick(self) -> None:
        self._tick_fn()

    def _tick_election(self) -> None:
        self.election_elapsed += 1
        if self.deferred_transfer_ticks:
            self.deferred_transfer_ticks -= 1
        if self.election_elapsed >= self.randomized_election_timeout and self.promotable():
            self.election_elapsed = 0
            self.step(Message(type=MSG_HUP, **{"from": self.id}))

    def _tick_heartbeat(self) -> None:
        self.heartbeat_elapsed += 1
        self.election_elapsed += 1
        if self.election_elapsed >= self.election_timeout:
            self.election_elapsed = 0
            if self.check_quorum:
                self.step(Message(type=MSG_CHECK_QUORUM, **{"from": self.id}))
            if self.state is LEADER and self.lead_transferee:
                self.lead_transferee = 0  # the transfer did not finish in an election timeout
        if self.state is not LEADER:
            return
        if self.heartbeat_elapsed >= self.heartbeat_timeout:
            self.heartbeat_elapsed = 0
            self.step(Message(type=MSG_BEAT, **{"from": self.id}))

    # -- elections ------------------------------------------------------------------------------

    def _hup(self, kind: CampaignType) -> None:
        if self.state is LEADER or not self.promotable():
            return
        if self.has_unapplied_conf_changes():
            return  # our configuration may be about to change; campaign once it has
        self._campaign(kind)

    def _campaign(self, kind: CampaignType) -> None:
        if kind is CampaignType.PRE_ELECTION:
            self._become_pre_candidate()
            vote_type = MSG_PRE_VOTE
            term = self.term + 1  # the term we would campaign in; ours does not change
        else:
            self._become_candidate()
            vote_type = MSG_VOTE
            term = self.term
        if self._poll(self.id, True) is VoteResult.WON:
            # A single-voter configuration: we won on our own vote.
            if kind is CampaignType.PRE_ELECTION:
                self._campaign(CampaignType.ELECTION)
            else:
                self._become_leader()
            return
        ctx = CAMPAIGN_TRANSFER if kind is CampaignType.TRANSFER else b""
        last = self.log.last_index()
        last_term = self.log.term(last)
        for vid in sorted(self.prs.voters):
            if vid != self.id:
                m = Message(type=vote_type, to=vid, term=term, index=last, log_term=last_term)
                if ctx:
                    m.context = ctx
                self._send(m)

    def _poll(self, node_id: int, granted: bool) -> VoteResult:
        self.prs.record_vote(node_id, granted)
        return self.prs.tally_votes()

    def _handle_vote_request(self, m: Message) -> None:
        frm = _sender(m)
        pre = m.type == MSG_PRE_VOTE
        resp_type = MSG_PRE_VOTE_RESP if pre else MSG_VOTE_RESP
        can_vote = (
            self.vote == frm
            or (self.vote == 0 and self.lead == 0)
            # A pre-vote for a future term: we have not voted in that term yet.
            or (pre and m.term > self.term)
        )
        if can_vote and self.log.is_up_to_date(m.index, m.log_term):
            # The response carries the request's term so a pre-candidate does not drop it.
            self._send(Message(type=resp_type, to=frm, term=m.term))
            if not pre:
                self.election_elapsed = 0
                self.vote = frm
        else:
            self._send(Message(type=resp_type, to=frm, term=self.term, reject=True))

    # -- step -----------------------------------------------------------------------------------

    def step(self, m: Message) -> None:
        """Handle one message. Raises ``ProposalDroppedError`` for a refused MsgProp."""
        t = m.term
        mt = m.type
        if t == 0:
            pass  # local message, or a forwarded proposal / read request
        elif t > self.term:
            if mt in (MSG_VOTE, MSG_PRE_VOTE):
                force = m.context == CAMPAIGN_TRANSFER
                in_lease = (
                    self.check_quorum
                    and self.lead != 0
                    and self.election_elapsed < self.election_timeout
                )
                if in_lease and not force:
                    # We heard from a live leader recently: don't let this node disrupt it.
                    return
            if mt == MSG_PRE_VOTE or (mt == MSG_PRE_VOTE_RESP and not m.reject):
                # A pre-vote does not change our term; a granted pre-vote response carries the
                # future term and we move to it only when we win the pre-vote.
                pass
            elif mt in (MSG_APP, MSG_HEARTBEAT, MSG_SNAP):
                self.become_follower(t, _sender(m))
            else:
                self.become_follower(t, 0)
        elif t < self.term:
            if (self.check_quorum or self.pre_vote) and mt in (MSG_HEARTBEAT, MSG_APP):
                # A stale leader (e.g. back from a partition): tell it our term so it steps
                # down; without this it could stay stuck while we ignore its messages.
                self._send(Message(type=MSG_APP_RESP, to=_sender(m)))
            elif mt == MSG_PRE_VOTE:
                # Tell a stale pre-candidate our term, or it would keep asking forever.
                self._send(
                    Message(type=MSG_PRE_VOTE_RESP, to=_sender(m), term=self.term, reject=True)
                )
            return

        if mt == MSG_HUP:
            self._hup(CampaignType.PRE_ELECTION if self.pre_vote else CampaignType.ELECTION)
        elif mt in (MSG_VOTE, MSG_PRE_VOTE):
            self._handle_vote_request(m)
        else:
            self._step_fn(m)

    # -- leader ---------------------------------------------------------------------------------

    def _append_entries(self, ents: list[Entry]) -> bool:
        """Give ``ents`` (fresh, owned objects) the next indexes and our term and append them;
        False if the uncommitted-size limit refuses them."""
        log = self.log
        if self.max_uncommitted_size and not self._increase_uncommitted_size(ents):
            return False
        i = log.last_index()
        term = self.term
        for e in ents:
            i += 1
            e.term = term
            e.index = i
        last = log.append(ents)
        self.prs.progress[self.id].maybe_update(last)
        # Our own acknowledgement moves the commit index only when we are the only voter:
        # otherwise the quorum's smallest match is a follower's, which this cannot change.
        if len(self.prs.voters) == 1:
            self._maybe_commit()
        return True

    def _increase_uncommitted_size(self, ents: list[Entry]) -> bool:
        size = sum(len(e.data) for e in ents)
        # Always let one proposal in, however large, when nothing is uncommitted; empty
        # entries always pass.
        over = self.uncommitted_size + size > self.max_uncommitted_size
        if size and self.uncommitted_size and over:
            return False
        self.uncommitted_size += size
        return True

    def reduce_uncommitted_size(self, ents: list[Entry]) -> None:
        if self.state is LEADER and self.max_uncommitted_size and ents:
            size = sum(len(e.data) for e in ents)
            self.uncommitted_size = max(0, self.uncommitted_size - size)

    def _maybe_commit(self) -> bool:
        log = self.log
        if log.maybe_commit(self.prs.committed(), self.term):
            if self.trace:
                committed = log.committed
                for idx in [i for i in self.trace if i <= committed]:
                    del self.trace[idx]
            return True
        return False

    def _step_leader(self, m: Message) -> None:
        mt = m.type
        if mt == MSG_BEAT:
            self._bcast_heartbeat()
            return
        if mt == MSG_CHECK_QUORUM:
            progress = self.prs.progress
            me = progress.get(self.id)
            if me is not None:
                me.recent_active = True
            if not self.prs.quorum_active():
                self.become_follower(self.term, 0)
            for pid, pr in progress.items():
                if pid != self.id:
                    pr.recent_active = False
            return
        if mt == MSG_PROP:
            self._leader_propose(m)
            return
        if mt == MSG_READ_INDEX:
            if self.prs.is_singleton():
                self._respond_read_index(m, self.log.committed)
            elif not self.committed_entry_in_current_term():
                # Our commit index may be behind the previous leader's until an entry of our
                # term commits; serve the request after that.
                self.pending_read_index_msgs.append(m)
            else:
                self._start_read_index(m)
            return

        frm = _sender(m)
        pr = self.prs.progress.get(frm)
        if pr is None:
            return
        if mt == MSG_APP_RESP:
            self._handle_append_response(m, frm, pr)
        elif mt == MSG_HEARTBEAT_RESP:
            pr.recent_active = True
            pr.probe_sent = False
            if pr.state is REPLICATE and pr.inflights.full():
                pr.inflights.free_first_one()
            if pr.match < self.log.last_index():
                self._send_append(frm)
            if m.context:
                acks = self.read_only.recv_ack(frm, m.context)
                if acks is not None and self.prs.has_quorum(acks):
                    for rs in self.read_only.advance(m.context):
                        self._respond_read_index(rs.req, rs.index)
        elif mt == MSG_SNAP_STATUS:
            if pr.state is not SNAPSHOT:
                return
            if m.reject:
                pr.pending_snapshot = 0  # failed: probe from the match index again
            pr.become_probe()
            # Wait for a MsgAppResp (success) or a heartbeat interval (failure) before the
            # next MsgApp.
            pr.probe_sent = True
        elif mt == MSG_UNREACHABLE:
            # Optimistic replication probably lost a MsgApp: go back to probing.
            if pr.state is REPLICATE:
                pr.become_probe()
        elif mt == MSG_TRANSFER_LEADER:
            self._handle_transfer_leader(frm, pr)

    def propose(self, ents: list[Entry], trace_context: bytes) -> None:
        """A local proposal of ``ents`` (fresh objects, handed over): appended at once on the
        leader, forwarded as a MsgProp by a follower."""
        if self.state is LEADER:
            self._leader_append(ents, trace_context)
            return
        m = Message(type=MSG_PROP, entries=ents, trace_context=trace_context)
        setattr(m, "from", self.id)
        self.step(m)

    def _leader_propose(self, m: Message) -> None:
        if not m.entries:
            raise RaftError("empty proposal")
        # Fresh entries: the message's own may be shared with the transport.
        ents = [Entry(type=e.type, data=e.data) for e in m.entries]
        self._leader_append(ents, m.trace_context)

    def _leader_append(self, ents: list[Entry], trace_context: bytes) -> None:
        if self.id not in self.prs.progress:
            raise ProposalDroppedError("this node was removed from the configuration")
        if self.lead_transferee:
            raise ProposalDroppedError(f"leadership transfer to {self.lead_transferee} in progress")
        conf_at = -1
        for k, e in enumerate(ents):
            if e.type == ENTRY_CONF_CHANGE:
                if conf_at >= 0 or self.pending_conf_index > self.log.applied:
                    raise ProposalDroppedError("a configuration change is already pending")
                if not self.committed_entry_in_current_term():
                    raise ProposalDroppedError(
                        "the leader has not yet committed an entry of its term"
                    )
                conf_at = k
        if not self._append_entries(ents):
            raise ProposalDroppedError("too many uncommitted entries")
        if conf_at >= 0:
            self.pending_conf_index = ents[conf_at].index
        if trace_context:
            self.trace[ents[-1].index] = trace_context
        self.bcast_entries_pending = True

    def _handle_append_response(self, m: Message, frm: int, pr: Progress) -> None:
        pr.recent_active = True
        log = self.log
        if m.reject:
            hint = m.reject_hint
            if m.hint_term > 0:
                # Skip every entry of ours whose term is newer than the follower's at ``hint``.
                hint, _ = log.find_conflict_by_term(hint, m.hint_term)
            if pr.maybe_decr_to(m.index, hint):
                if pr.state is REPLICATE:
                    pr.become_probe()
                self._send_append(frm)
            return
        old_paused = pr.is_paused()
        if not pr.maybe_update(m.index):
            return
        if pr.state is PROBE:
            pr.become_replicate()
        elif pr.state is SNAPSHOT:
            if pr.match + 1 >= log.first_index():
                # Caught up (by the snapshot or otherwise): the log can take it from here.
                pr.become_probe()
                pr.become_replicate()
        else:
            pr.inflights.free_le(m.index)
        if self._maybe_commit():
            self._release_pending_read_index()
            self.bcast_commit_pending = True
        elif old_paused:
            self._send_append(frm)
        # Keep the pipeline full while the window allows.
        while self._maybe_send_append(frm, False):
            pass
        if frm == self.lead_transferee and pr.match == log.last_index():
            self._send(Message(type=MSG_TIMEOUT_NOW, to=frm))

    def _handle_transfer_leader(self, transferee: int, pr: Progress) -> None:
        if pr.is_learner:
            return  # a learner cannot lead
        if self.lead_transferee:
            if self.lead_transferee == transferee:
                return  # already under way
            self.lead_transferee = 0
        if transferee == self.id:
            return  # already the leader; a pending transfer to another node is cancelled
        self.election_elapsed = 0  # the transfer must finish within an election timeout
        self.lead_transferee = transferee
        if pr.match == self.log.last_index():
            self._send(Message(type=MSG_TIMEOUT_NOW, to=transferee))
        else:
            self._send_append(transferee)

    def _start_read_index(self, m: Message) -> None:
        self.read_only.add_request(self.log.committed, m)
        self.read_only.recv_ack(self.id, m.context)
        self._bcast_heartbeat(m.context)

    def _release_pending_read_index(self) -> None:
        if not self.pending_read_index_msgs or not self.committed_entry_in_current_term():
            return
        msgs, self.pending_read_index_msgs = self.pending_read_index_msgs, []
        for m in msgs:
            self._start_read_index(m)

    def _respond_read_index(self, req: Message, index: int) -> None:
        frm = _sender(req)
        if frm == 0 or frm == self.id:
            self.read_states.append(ReadState(index, req.context))
        else:
            self._send(Message(type=MSG_READ_INDEX_RESP, to=frm, index=index, context=req.context))

    # -- candidate ------------------------------------------------------------------------------

    def _step_candidate(self, m: Message) -> None:
        mt = m.type
        if mt == MSG_PROP:
            raise ProposalDroppedError("no leader (election in progress)")
        if mt == MSG_APP:
            self.become_follower(m.term, _sender(m))
            self._handle_append(m)
        elif mt == MSG_HEARTBEAT:
            self.become_follower(m.term, _sender(m))
            self._handle_heartbeat(m)
        elif mt == MSG_SNAP:
            self.become_follower(m.term, _sender(m))
            self._handle_snapshot(m)
        elif (mt == MSG_PRE_VOTE_RESP and self.state is PRE_CANDIDATE) or (
            mt == MSG_VOTE_RESP and self.state is CANDIDATE
        ):
            result = self._poll(_sender(m), not m.reject)
            if result is VoteResult.WON:
                if self.state is PRE_CANDIDATE:
                    self._campaign(CampaignType.ELECTION)
                else:
                    self._become_leader()
                    self._bcast_append()
            elif result is VoteResult.LOST:
                self.become_follower(self.term, 0)

    # -- follower -------------------------------------------------------------------------------

    def _step_follower(self, m: Message) -> None:
        mt = m.type
        if mt == MSG_APP:
            self.election_elapsed = 0
            self.lead = _sender(m)
            self._handle_append(m)
        elif mt == MSG_HEARTBEAT:
            self.election_elapsed = 0
            self.lead = _sender(m)
            self._handle_heartbeat(m)
        elif mt == MSG_PROP:
            if self.lead == 0:
                raise ProposalDroppedError("no leader")
            if self.disable_proposal_forwarding:
                raise ProposalDroppedError("not the leader and proposal forwarding is disabled")
            m.to = self.lead
            self._send(m)
        elif mt == MSG_SNAP:
            self.election_elapsed = 0
            self.lead = _sender(m)
            self._handle_snapshot(m)
        elif mt in (MSG_TRANSFER_LEADER, MSG_READ_INDEX):
            if self.lead:
                m.to = self.lead
                self._send(m)
        elif mt == MSG_TIMEOUT_NOW:
            if self.has_unapplied_conf_changes():
                # Campaign as soon as the application caught up (see after_advance).
                self.deferred_transfer_ticks = self.election_timeout
            else:
                self._hup(CampaignType.TRANSFER)
        elif mt == MSG_READ_INDEX_RESP:
            self.read_states.append(ReadState(m.index, m.context))

    def _handle_append(self, m: Message) -> None:
        log = self.log
        frm = _sender(m)
        if m.index < log.committed:
            self._send(Message(type=MSG_APP_RESP, to=frm, index=log.committed))
            return
        ents = list(m.entries) if m.entries else []
        lastnewi = log.maybe_append(m.index, m.log_term, m.commit, ents)
        if lastnewi >= 0:
            self._send(Message(type=MSG_APP_RESP, to=frm, index=lastnewi))
            return
        # Mismatch: offer the leader the last index that could match, with its term, so it
        # can skip over all of the entries of that term that we do not share.
        hint, hint_term = log.find_conflict_by_term(min(m.index, log.last_index()), m.log_term)
        self._send(
            Message(
                type=MSG_APP_RESP,
                to=frm,
                index=m.index,
                reject=True,
                reject_hint=hint,
                hint_term=hint_term,
            )
        )

    def _handle_heartbeat(self, m: Message) -> None:
        self.log.commit_to(m.commit)
        self._send(Message(type=MSG_HEARTBEAT_RESP, to=_sender(m), context=m.context))

    def _handle_snapshot(self, m: Message) -> None:
        frm = _sender(m)
        if self._restore(m.snapshot):
            self._send(Message(type=MSG_APP_RESP, to=frm, index=self.log.last_index()))
        else:
            self._send(Message(type=MSG_APP_RESP, to=frm, index=self.log.committed))

    def _restore(self, s: Snapshot) -> bool:
        """Install a snapshot from the leader; False if it brings nothing new."""
        md = s.metadata
        log = self.log
        if md.index <= log.committed:
            return False
        if self.state is not FOLLOWER:
            return False  # only followers get here; refuse rather than corrupt
        if log.match_term(md.index, md.term):
            # We already hold the snapshot's last entry: just move the commit index.
            log.commit_to(md.index)
            return False
        log.restore(s)
        self.prs.restore(md.conf_state, log.last_index() + 1)
        me = self.prs.progress.get(self.id)
        if me is not None:
            me.maybe_update(log.last_index())
        return True

    def after_advance(self) -> None:
        """Called once the application applied a Ready: a transfer campaign that waited for
        conf changes to be applied can start now."""
        if (
            self.deferred_transfer_ticks
            and self.state is FOLLOWER
            and not self.has_unapplied_conf_changes()
        ):
            self.deferred_transfer_ticks = 0
            self._hup(CampaignType.TRANSFER)

    # -- membership -----------------------------------------------------------------------------

    def apply_conf_change(self, cc: ConfChange) -> ConfState:
        prs = self.prs
        nid = cc.node_id
        t = cc.type
        next_index = self.log.last_index() + 1
        added = False
        if t == CONF_CHANGE_ADD_NODE:
            if nid not in prs.voters:
                added = nid not in prs.learners
                prs.add_voter(nid, next_index)
        elif t == CONF_CHANGE_ADD_LEARNER_NODE:
            # Demoting a voter is not a supported change; it is ignored.
            if nid not in prs.voters and nid not in prs.learners:
                prs.add_learner(nid, next_index)
                added = True
        elif t == CONF_CHANGE_REMOVE_NODE:
            prs.remove(nid)
        # CONF_CHANGE_UPDATE_NODE changes nothing raft knows about.

        if (
            t == CONF_CHANGE_REMOVE_NODE
            and nid == self.id
            and self.state
            in (
                CANDIDATE,
                PRE_CANDIDATE,
            )
        ):
            self.become_follower(self.term, 0)  # no longer a voter: stop campaigning
        if self.state is LEADER:
            if t == CONF_CHANGE_REMOVE_NODE:
                if nid == self.id:
                    self._step_down_removed()
                else:
                    if self.lead_transferee == nid:
                        self.lead_transferee = 0
                    # The quorum may have shrunk: entries may be committed now.
                    if self._maybe_commit():
                        self._release_pending_read_index()
                        self._bcast_append()
            elif added and nid != self.id:
                self._send_append(nid)
        return prs.conf_state()

    def _step_down_removed(self) -> None:
        """We led the configuration that removed us: hand over to the most up-to-date remaining
        voter at once instead of letting the cluster wait for an election timeout."""
        best, best_match = 0, -1
        for vid in sorted(self.prs.voters):
            pr = self.prs.progress[vid]
            if pr.match > best_match:
                best, best_match = vid, pr.match
        if best:
            self._send(Message(type=MSG_TIMEOUT_NOW, to=best))
        self.become_follower(self.term, 0)
