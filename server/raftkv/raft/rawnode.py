"""``RawNode``: the application's handle on the Raft state machine.

The application owns everything with side effects. It calls ``tick()`` on a timer, hands every
message from a peer to ``step()``, asks for ``ready()`` whenever ``has_ready()`` is true, does
what the ``Ready`` says (in the order its docstring gives) and calls ``advance()``. RawNode
itself only converts between the state machine and those Ready batches: it remembers the soft
and hard state the application last saw, so a Ready carries them only when they changed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from raftkv.pb.raftpb.raft_pb2 import (
    CONF_CHANGE_ADD_NODE,
    ENTRY_CONF_CHANGE,
    MSG_APP,
    MSG_HEARTBEAT,
    MSG_HUP,
    MSG_PRE_VOTE,
    MSG_READ_INDEX,
    MSG_SNAP,
    MSG_SNAP_STATUS,
    MSG_TIMEOUT_NOW,
    MSG_TRANSFER_LEADER,
    MSG_UNREACHABLE,
    MSG_VOTE,
    ConfChange,
    ConfState,
    Entry,
    HardState,
    Message,
    Snapshot,
)
from raftkv.raft.config import Config
from raftkv.raft.core import LEADER, LOCAL_MESSAGES, Raft
from raftkv.raft.errors import (
    MalformedMessageError,
    ProposalDroppedError,
    RaftError,
    StepLocalMessageError,
)
from raftkv.raft.state import ReadState, SoftState, StateType

__all__ = [
    "ProgressStatus",
    "RawNode",
    "ReadState",
    "Ready",
    "SoftState",
    "StateType",
    "Status",
]


# Sent only by a leader or a candidate, which always have a term (vote responses and
# forwarded requests may have none).
_SENT_WITH_A_TERM = frozenset(
    {MSG_APP, MSG_HEARTBEAT, MSG_SNAP, MSG_TIMEOUT_NOW, MSG_VOTE, MSG_PRE_VOTE}
)
# Terms and indexes grow by one per election or entry: no real log comes near this, and a value
# past it would overflow the uint64 fields when the node counts on from it.
MAX_TERM_OR_INDEX = 1 << 62


def _check_well_formed(m: Message, node_id: int) -> None:
    """Raise MalformedMessageError for a message no correct peer sends (see the error)."""
    if getattr(m, "from") == node_id and node_id != 0:
        raise MalformedMessageError(f"message type {m.type} claims to come from this node")
    numbers = [m.term, m.log_term, m.index, m.commit, m.reject_hint, m.hint_term]
    numbers += [m.snapshot.metadata.index, m.snapshot.metadata.term]
    for entry in m.entries:
        numbers += [entry.index, entry.term]
    if max(numbers) >= MAX_TERM_OR_INDEX:
        raise MalformedMessageError(f"message type {m.type} carries a term or index >= 2**62")
    if m.type in _SENT_WITH_A_TERM and m.term == 0:
        raise MalformedMessageError(f"message type {m.type} without a term")
    if m.type == MSG_APP:
        _check_append(m)
    elif m.type == MSG_SNAP:
        meta = m.snapshot.metadata
        if meta.index == 0 or not 1 <= meta.term <= m.term:
            raise MalformedMessageError("MsgSnap without a snapshot of a past or current term")


def _check_append(m: Message) -> None:
    """A MsgApp's entries follow its (index, log_term) one by one, in terms that never go down,
    none beyond the message's own term."""
    previous_term = m.log_term
    if previous_term > m.term or (m.index == 0 and previous_term != 0):
        raise MalformedMessageError("MsgApp with an impossible previous entry")
    for offset, entry in enumerate(m.entries, start=1):
        if entry.index != m.index + offset:
            raise MalformedMessageError("MsgApp entries do not follow its index one by one")
        if not max(previous_term, 1) <= entry.term <= m.term:
            raise MalformedMessageError("MsgApp entries with terms out of order")
        previous_term = entry.term


@dataclass
class Ready:
    """One batch of work for the application. The contract, in order:

    1. Persist ``snapshot`` (if any), then append ``entries`` to stable storage, then store
       ``hard_state`` (if any); when ``must_sync`` is true, fsync before going on. Nothing
       below may happen before this is durable: a vote or an acknowledgement sent before the
       state behind it is on disk can break safety after a crash.
    2. Send ``messages`` to their ``to`` peers (MsgSnap messages through the snapshot path).
    3. Apply ``snapshot`` (if any) to the state machine, then ``committed_entries`` in order;
       for an ENTRY_CONF_CHANGE entry call ``RawNode.apply_conf_change``. Serve the reads of
       ``read_states`` once the state machine has applied up to their index.
    4. Call ``RawNode.advance(ready)`` before the next ``ready()``.

    Entries and snapshots are shared protobuf objects: never mutate them.
    """

    soft_state: SoftState | None = None  # None if unchanged since the last Ready
    hard_state: HardState | None = None  # None if unchanged since the last Ready
    read_states: list[ReadState] = field(default_factory=list)
    entries: list[Entry] = field(default_factory=list)  # to append to stable storage
    snapshot: Snapshot | None = None  # received from the leader: to persist and apply
    committed_entries: list[Entry] = field(default_factory=list)  # to apply, in order
    messages: list[Message] = field(default_factory=list)  # to send after persisting
    must_sync: bool = False  # whether step 1 must be fsynced


@dataclass
class ProgressStatus:
    """The leader's view of one peer's replication."""

    match: int
    next: int
    state: str  # "probe", "replicate" or "snapshot"
    recent_active: bool
    is_learner: bool
    inflight: int = 0  # MsgApp sent and not yet acknowledged


@dataclass
class Status:
    id: int
    hard_state: HardState
    soft_state: SoftState
    applied: int
    lead_transferee: int
    conf_state: ConfState
    progress: dict[int, ProgressStatus] = field(default_factory=dict)  # leader only


class RawNode:
    """A Raft node driven by the caller; see ``Ready`` for the processing contract.

    Not thread-safe: call it from one thread (raftkv: the node's event loop).
    """

    __slots__ = ("_prev_hard", "_prev_soft", "_raft")

    def __init__(self, config: Config) -> None:
        self._raft = Raft(config)
        r = self._raft
        self._prev_soft = (r.lead, r.state)
        self._prev_hard = (r.term, r.vote, r.log.committed)

    # -- properties ---------------------------------------------------------------------------

    @property
    def id(self) -> int:
        return self._raft.id

    @property
    def lead(self) -> int:
        return self._raft.lead

    @property
    def term(self) -> int:
        return self._raft.term

    @property
    def state(self) -> StateType:
        return self._raft.state

    # -- inputs -------------------------------------------------------------------------------

    def tick(self) -> None:
        """Advance logical time by one tick (elections, heartbeats, CheckQuorum)."""
        self._raft.tick()

    def campaign(self) -> None:
        """Start an election now (with a pre-vote round if configured)."""
        self._raft.step(Message(type=MSG_HUP, **{"from": self._raft.id}))

    def propose(self, data: bytes, trace_context: bytes = b"") -> None:
        """Propose ``data`` for the log. Raises ``ProposalDroppedError`` if it was not accepted
        (here, or for forwarding to the leader); acceptance does not mean it will commit."""
        self._raft.propose([Entry(data=data)], trace_context)

    def propose_conf_change(self, cc: ConfChange) -> None:
        """Propose a single-server configuration change (applied when it commits, through
        ``apply_conf_change``). Raises ``ProposalDroppedError`` when refused."""
        self._raft.propose([Entry(type=ENTRY_CONF_CHANGE, data=cc.SerializeToString())], b"")

    def step(self, m: Message) -> None:
        """Handle a message from a peer. The node keeps ``m``: don't reuse or mutate it.

        A proposal forwarded by a peer that this node cannot accept is dropped silently (its
        proposer times out, as with a lost message). A local message type raises
        StepLocalMessageError and a malformed message MalformedMessageError, both before the
        node changes.
        """
        if m.type in LOCAL_MESSAGES:
            raise StepLocalMessageError(f"message type {m.type} may not come from the network")
        _check_well_formed(m, self._raft.id)
        try:
            self._raft.step(m)
        except ProposalDroppedError:
            return  # its proposer times out, as with a lost message

    def transfer_leader(self, transferee: int) -> None:
        """Ask the leader (this node or, forwarded, the current one) to hand over to
        ``transferee``. Ignored for a learner; transferring to the leader itself cancels."""
        self._raft.step(Message(type=MSG_TRANSFER_LEADER, **{"from": transferee}))

    def read_index(self, ctx: bytes) -> None:
        """Request a linearizable read point; a ``ReadState`` with ``ctx`` comes out of a later
        Ready once leadership is confirmed. ``ctx`` must be non-empty and unique while
        pending. A request made with no leader known is silently dropped."""
        if not ctx:
            raise ValueError("read_index needs a non-empty request context")
        self._raft.step(Message(type=MSG_READ_INDEX, context=ctx))

    def report_unreachable(self, node_id: int) -> None:
        """The transport failed to deliver to ``node_id``; the leader goes back to probing."""
        self._raft.step(Message(type=MSG_UNREACHABLE, **{"from": node_id}))

    def report_snapshot(self, node_id: int, failed: bool) -> None:
        """The transport finished sending a MsgSnap to ``node_id`` (or failed to)."""
        self._raft.step(Message(type=MSG_SNAP_STATUS, reject=failed, **{"from": node_id}))

    def apply_conf_change(self, cc: ConfChange) -> ConfState:
        """Make a committed ENTRY_CONF_CHANGE take effect; returns the new configuration."""
        return self._raft.apply_conf_change(cc)

    def bootstrap(self, peers: Sequence[tuple[int, bytes]]) -> None:
        """Initialize a brand-new cluster member (empty storage) with the voters ``peers``:
        (node_id, context) pairs, the context being opaque member attributes.

        Appends one committed ADD_NODE entry per peer at term 1, indices 1..n, and applies the
        configuration at once so the node can campaign; the entries come out of the next Ready
        (both to persist and to apply) like any others.
        """
        if not peers:
            raise ValueError("bootstrap needs at least one peer")
        r = self._raft
        if r.log.last_index() != 0:
            raise RaftError("bootstrap needs an empty storage")
        r.become_follower(1, 0)
        changes = [
            ConfChange(type=CONF_CHANGE_ADD_NODE, node_id=node_id, context=ctx)
            for node_id, ctx in peers
        ]
        ents = [
            Entry(term=1, index=i, type=ENTRY_CONF_CHANGE, data=cc.SerializeToString())
            for i, cc in enumerate(changes, start=1)
        ]
        r.log.append(ents)
        r.log.committed = len(ents)
        for cc in changes:
            r.apply_conf_change(cc)
        r.conf_applied_floor = len(ents)

    # -- outputs ------------------------------------------------------------------------------

    def has_ready(self) -> bool:
        r = self._raft
        log = r.log
        return bool(
            r.msgs
            or r.bcast_entries_pending
            or r.bcast_commit_pending
            or log.unstable.entries
            or log.unstable.snapshot is not None
            or r.read_states
            or log.has_next_committed_entries()
            or (r.lead, r.state) != self._prev_soft
            or (r.term, r.vote, log.committed) != self._prev_hard
        )

    def ready(self) -> Ready:
        """The work to do now; see ``Ready``. Call ``advance`` when done with it."""
        r = self._raft
        log = r.log
        r.flush_broadcast()
        rd = Ready(
            entries=log.unstable_entries(),
            snapshot=log.unstable.snapshot,
            committed_entries=log.next_committed_entries(),
            messages=r.msgs,
            read_states=r.read_states,
        )
        r.msgs = []
        r.read_states = []
        soft = (r.lead, r.state)
        if soft != self._prev_soft:
            rd.soft_state = SoftState(r.lead, r.state)
            self._prev_soft = soft
        prev = self._prev_hard
        hard = (r.term, r.vote, log.committed)
        if hard != prev:
            rd.hard_state = HardState(term=hard[0], vote=hard[1], commit=hard[2])
        rd.must_sync = bool(
            rd.entries or rd.snapshot is not None or hard[0] != prev[0] or hard[1] != prev[1]
        )
        return rd

    def advance(self, rd: Ready) -> None:
        """The application has done everything ``rd`` asked for."""
        r = self._raft
        log = r.log
        if rd.hard_state is not None:
            hs = rd.hard_state
            self._prev_hard = (hs.term, hs.vote, hs.commit)
        applied = 0
        if rd.snapshot is not None:
            applied = rd.snapshot.metadata.index
        if rd.committed_entries:
            applied = max(applied, rd.committed_entries[-1].index)
            r.reduce_uncommitted_size(rd.committed_entries)
        if applied:
            log.applied_to(applied)
        if rd.entries:
            last = rd.entries[-1]
            log.stable_to(last.index, last.term)
        if rd.snapshot is not None:
            log.stable_snap_to(rd.snapshot.metadata.index)
        r.after_advance()

    def status(self) -> Status:
        r = self._raft
        st = Status(
            id=r.id,
            hard_state=r.hard_state(),
            soft_state=r.soft_state(),
            applied=r.log.applied,
            lead_transferee=r.lead_transferee,
            conf_state=r.prs.conf_state(),
        )
        if r.state is LEADER:
            for pid, pr in r.prs.progress.items():
                st.progress[pid] = ProgressStatus(
                    match=pr.match,
                    next=pr.next,
                    state=pr.state.value,
                    recent_active=pr.recent_active,
                    is_learner=pr.is_learner,
                    inflight=pr.inflights.count(),
                )
        return st
