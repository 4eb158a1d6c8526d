"""A deterministic, single-threaded simulation of a whole raftkv Raft cluster.

Why it is shaped this way:

* Every source of nondeterminism is a ``random.Random`` derived from one seed: the network's
  fault decisions and each node's election jitter. There are no threads, sleeps, sockets or
  clocks; time is ``tick_all()`` and message delivery is ``step()``. The same seed and the same
  calls give the same history, so a failing schedule can be replayed and shrunk.
* Each node is the application loop of the Ready contract, done synchronously and completely
  after every input: persist (snapshot, entries, hard state) to its ``MemoryStorage``, send,
  apply committed entries in order, ``advance``. ``MemoryStorage`` stands for the disk: a crash
  throws away the ``RawNode`` and the state machine and keeps only the storage, and a restart
  rebuilds both from it (state machine from the last snapshot, then re-applying the log).
* Every Ready and every sent message is fed to a ``SafetyChecker`` before anything else can
  happen, so an invariant broken by one step is reported at that step, with the node and index.
* The network checks reachability when a message is *delivered*, so a partition also swallows
  messages already in flight, and a dropped message is reported back to its sender as the real
  transport would (``report_unreachable``; ``report_snapshot(failed=True)`` for MsgSnap).
* A member whose removal has been applied by any node is shut down, as the etcd server does:
  messages to it are lost from then on (those it sent before still arrive).
"""

from __future__ import annotations

import struct
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from random import Random
from typing import NoReturn

from raftkv.pb.raftpb import raft_pb2 as pb
from raftkv.raft import (
    Config,
    MemoryStorage,
    ProposalDroppedError,
    RawNode,
    Ready,
    StateType,
)

NO_LIMIT = 1 << 62  # an index past any log
MessageFilter = Callable[[pb.Message], bool]


class InvariantViolation(AssertionError):
    """A Raft safety property does not hold; the message names the nodes, terms and indices."""


# ---------------------------------------------------------------------------------------------
# Formatting (used by the transcript and by violation messages)


def _sender(m: pb.Message) -> int:
    return getattr(m, "from")


def describe_entry(e: pb.Entry) -> str:
    head = f"{e.index}@{e.term}"
    if e.type == pb.ENTRY_CONF_CHANGE:
        cc = pb.ConfChange()
        cc.ParseFromString(e.data)
        kind = pb.ConfChangeType.Name(cc.type).removeprefix("CONF_CHANGE_").lower()
        return f"{head} conf:{kind}({cc.node_id})"
    if not e.data:
        return f"{head} (empty)"
    return f"{head} {e.data.decode('utf-8', 'backslashreplace')!r}"


def describe_conf(cs: pb.ConfState) -> str:
    return f"voters={sorted(cs.voters)} learners={sorted(cs.learners)}"


def describe_message(m: pb.Message) -> str:
    parts = [f"{_sender(m)}->{m.to} {pb.MessageType.Name(m.type)} term={m.term}"]
    if m.log_term:
        parts.append(f"logterm={m.log_term}")
    if m.index:
        parts.append(f"index={m.index}")
    if m.entries:
        parts.append("entries=[" + ", ".join(describe_entry(e) for e in m.entries) + "]")
    if m.commit:
        parts.append(f"commit={m.commit}")
    if m.reject:
        parts.append(f"reject hint={m.reject_hint}@{m.hint_term}")
    if m.snapshot.metadata.index:
        md = m.snapshot.metadata
        parts.append(f"snap={md.index}@{md.term} {describe_conf(md.conf_state)}")
    if m.context:
        parts.append(f"ctx={m.context.decode('utf-8', 'backslashreplace')!r}")
    return " ".join(parts)


class Transcript:
    """A readable log of one run: delivered and dropped messages, state changes, commits.

    Consecutive ticks with nothing else between them collapse into one ``tick xN`` line.
    """

    def __init__(self) -> None:
        self.lines: list[str] = []
        self._ticks = 0

    def tick(self) -> None:
        self._ticks += 1

    def note(self, line: str) -> None:
        self._flush_ticks()
        self.lines.append(line)

    def text(self) -> str:
        self._flush_ticks()
        return "\n".join(self.lines) + "\n"

    def _flush_ticks(self) -> None:
        if self._ticks:
            self.lines.append("tick" if self._ticks == 1 else f"tick x{self._ticks}")
            self._ticks = 0


# ---------------------------------------------------------------------------------------------
# The replicated state machine: the ordered list of applied (index, data) of non-empty entries


def encode_state(applied: Sequence[tuple[int, bytes]]) -> bytes:
    out = [struct.pack(">I", len(applied))]
    for index, data in applied:
        out.append(struct.pack(">QI", index, len(data)))
        out.append(data)
    return b"".join(out)


def decode_state(blob: bytes) -> list[tuple[int, bytes]]:
    if not blob:
        return []
    (count,) = struct.unpack_from(">I", blob, 0)
    pos = 4
    items = []
    for _ in range(count):
        index, size = struct.unpack_from(">QI", blob, pos)
        pos += 12
        items.append((index, blob[pos : pos + size]))
        pos += size
    return items


# ---------------------------------------------------------------------------------------------
# Safety checker


def _entry_key(e: pb.Entry) -> tuple[int, int, bytes]:
    return (e.term, e.type, e.data)


def _log_slice(storage: MemoryStorage, lo: int, hi: int) -> list[pb.Entry]:
    """Entries [lo, hi) that are still in storage (not compacted into the snapshot)."""
    lo = max(lo, storage.first_index())
    hi = min(hi, storage.last_index() + 1)
    if lo >= hi:
        return []
    return list(storage.entries(lo, hi, None))


@dataclass
class _ReadRequest:
    node: int
    floor: int


class SafetyChecker:
    """Checks the Raft safety properties on everything the nodes persist, send and apply.

    * election safety: at most one leader per term, ever;
    * votes: a node never grants votes to two candidates in one term, across restarts, and only
      grants a vote it has persisted; durable terms and commit indexes never go backwards; a
      Ready that changes entries, snapshot, term or vote asks for an fsync (must_sync);
    * log matching: an (index, term) pair names one entry with one predecessor term, in every log
      that ever held it (by induction, that is "identical prefixes");
    * leader completeness: a leader of term T holds every entry committed in a term <= T (the
      term of an entry's commit is the lowest term of a node that reported it committed);
    * state-machine safety: every node applies the same entry at each index, contiguously, and a
      snapshot holds exactly the committed data up to its index;
    * reads: a ReadIndex answer is at least the commit index known when the read was issued.
    """

    def __init__(self) -> None:
        self.leaders: dict[int, int] = {}
        self.votes: dict[tuple[int, int], int] = {}
        self.term: dict[int, int] = {}
        self.term_vote: dict[int, tuple[int, int]] = {}
        self.commit: dict[int, int] = {}
        self.applied: dict[int, int] = {}
        self.log: dict[tuple[int, int], tuple[int, int, bytes]] = {}
        self.committed: dict[int, tuple[int, int, bytes]] = {}
        self.commit_term: dict[int, int] = {}
        self.max_commit = 0
        self.reads: dict[bytes, _ReadRequest] = {}
        # Set by the cluster: the live leaders, as (id, term, storage).
        self.current_leaders: Callable[[], list[tuple[int, int, MemoryStorage]]] = list

    def fail(self, node: int, what: str) -> NoReturn:
        raise InvariantViolation(f"node {node}: {what}")

    # -- fed by the cluster -------------------------------------------------------------------

    def on_restart(self, node: int, storage: MemoryStorage) -> None:
        """Volatile state is gone; applying restarts from the snapshot."""
        self.applied[node] = storage.snapshot().metadata.index

    def on_persisted(self, node: int, rd: Ready, storage: MemoryStorage) -> None:
        """Called after the node wrote rd's snapshot, entries and hard state to storage."""
        snap = rd.snapshot is not None and rd.snapshot.metadata.index
        hs = rd.hard_state
        term_vote = self.term_vote.get(node, (0, 0))
        if hs is not None:
            self.term_vote[node] = (hs.term, hs.vote)
        if (rd.entries or snap or self.term_vote.get(node, (0, 0)) != term_vote) and not getattr(
            rd, "must_sync", True
        ):
            self.fail(node, "a Ready with entries, a snapshot or a new term/vote lacks must_sync")
        if snap:
            md = rd.snapshot.metadata
            self._check_committed(node, md.index, md.term, None, "installed snapshot")
        for e in rd.entries:
            self._check_log_entry(node, e, storage)
        if rd.hard_state is not None:
            self._check_hard_state(node, rd.hard_state, storage)

    def on_state(self, node: int, state: StateType, term: int, storage: MemoryStorage) -> None:
        if state != StateType.LEADER:
            return
        if self.leaders.setdefault(term, node) != node:
            self.fail(node, f"second leader in term {term} (first was {self.leaders[term]})")
        self._check_holds_committed(node, term, storage, 1, self.max_commit)

    def on_send(self, node: int, m: pb.Message, storage: MemoryStorage) -> None:
        if m.type == pb.MSG_VOTE_RESP and not m.reject:
            voted = self.votes.get((node, m.term))
            if voted != m.to:
                self.fail(
                    node,
                    f"granted its term-{m.term} vote to {m.to} but its persisted vote is {voted}",
                )
        if m.type == pb.MSG_APP_RESP and not m.reject:
            last = max(storage.last_index(), storage.snapshot().metadata.index)
            if m.index > last:
                self.fail(node, f"acknowledged index {m.index} but has persisted only to {last}")

    def on_snapshot_applied(self, node: int, snap: pb.Snapshot) -> None:
        index = snap.metadata.index
        if index < self.applied.get(node, 0):
            self.fail(node, f"applied snapshot {index} behind its applied index")
        want = [
            (i, data)
            for i, (_, typ, data) in sorted(self.committed.items())
            if i <= index and typ == pb.ENTRY_NORMAL and data
        ]
        got = decode_state(snap.data)
        if got != want:
            self.fail(
                node, f"snapshot at {index} holds {got[-3:]}..., committed data is {want[-3:]}"
            )
        self.applied[node] = index

    def on_apply(self, node: int, e: pb.Entry) -> None:
        expected = self.applied.get(node, 0) + 1
        if e.index != expected:
            self.fail(node, f"applied index {e.index} but next to apply was {expected}")
        if e.index > self.commit.get(node, 0):
            self.fail(node, f"applied {e.index} beyond its durable commit {self.commit.get(node)}")
        self._check_committed(node, e.index, e.term, _entry_key(e), "applied")
        self.applied[node] = e.index

    def on_read_index(self, node: int, ctx: bytes) -> None:
        self.reads[ctx] = _ReadRequest(node, self.max_commit)

    def on_read_state(self, node: int, index: int, ctx: bytes) -> None:
        req = self.reads.get(ctx)
        if req is None:
            self.fail(node, f"read state for a request never made: {ctx!r}")
        if req.node != node:
            self.fail(node, f"read state for {ctx!r} returned on node {node}, asked on {req.node}")
        if index < req.floor:
            self.fail(
                node, f"read {ctx!r} answered at {index}, but {req.floor} was committed before"
            )

    # -- the checks ---------------------------------------------------------------------------

    def _check_log_entry(self, node: int, e: pb.Entry, storage: MemoryStorage) -> None:
        if e.index < storage.first_index():
            return  # already covered by the snapshot: the storage skipped it
        prev_term = storage.term(e.index - 1) if e.index > 1 else 0
        key = (prev_term, e.type, e.data)
        seen = self.log.setdefault((e.index, e.term), key)
        if seen != key:
            self.fail(
                node,
                f"log matching: entry {e.index}@{e.term} differs from another log's "
                f"(prev term {prev_term} vs {seen[0]}, data {e.data!r} vs {seen[2]!r})",
            )
        known = self.committed.get(e.index)
        if known is not None and e.index <= self.commit.get(node, 0) and known != _entry_key(e):
            self.fail(node, f"overwrote committed entry {e.index}")

    def _check_hard_state(self, node: int, hs: pb.HardState, storage: MemoryStorage) -> None:
        if hs.term < self.term.get(node, 0):
            self.fail(node, f"durable term went back from {self.term[node]} to {hs.term}")
        self.term[node] = hs.term
        if hs.vote:
            voted = self.votes.setdefault((node, hs.term), hs.vote)
            if voted != hs.vote:
                self.fail(node, f"voted for {voted} and then {hs.vote} in term {hs.term}")
        old = self.commit.get(node, 0)
        if hs.commit < old:
            self.fail(node, f"commit index went back from {old} to {hs.commit}")
        if hs.commit == old:
            return
        last = max(storage.last_index(), storage.snapshot().metadata.index)
        if hs.commit > last:
            self.fail(node, f"commit {hs.commit} beyond its last index {last}")
        for e in _log_slice(storage, old + 1, hs.commit + 1):
            self._check_committed(node, e.index, e.term, _entry_key(e), "committed")
            if self.commit_term.setdefault(e.index, hs.term) > hs.term:
                self.commit_term[e.index] = hs.term
        self.commit[node] = hs.commit
        self.max_commit = max(self.max_commit, hs.commit)
        for leader, term, leader_storage in self.current_leaders():
            self._check_holds_committed(leader, term, leader_storage, old + 1, hs.commit)

    def _check_committed(
        self, node: int, index: int, term: int, key: tuple[int, int, bytes] | None, how: str
    ) -> None:
        known = self.committed.get(index)
        if known is None:
            if key is not None:
                self.committed[index] = key
            return
        if known[0] != term or (key is not None and known != key):
            self.fail(
                node,
                f"state machine safety: {how} {index}@{term} but {index}@{known[0]} "
                f"({known[2]!r}) was committed there",
            )

    def _check_holds_committed(
        self, node: int, term: int, storage: MemoryStorage, lo: int, hi: int
    ) -> None:
        """The leader of `term` must hold every entry in [lo, hi] committed in a term <= term."""
        snap_index = storage.snapshot().metadata.index
        last = max(storage.last_index(), snap_index)
        must = [i for i in range(max(lo, snap_index + 1), hi + 1) if self._due(i, term)]
        if not must:
            return
        if must[-1] > last:
            self.fail(
                node,
                f"leader completeness: term-{term} leader's log ends at {last}, "
                f"but {must[-1]} was committed in term {self.commit_term[must[-1]]}",
            )
        for e in _log_slice(storage, must[0], must[-1] + 1):
            if self._due(e.index, term) and self.committed[e.index] != _entry_key(e):
                self.fail(
                    node,
                    f"leader completeness: term-{term} leader holds {e.index}@{e.term} where "
                    f"{e.index}@{self.committed[e.index][0]} was committed",
                )

    def _due(self, index: int, term: int) -> bool:
        return index in self.commit_term and self.commit_term[index] <= term


# ---------------------------------------------------------------------------------------------
# Network


@dataclass
class Faults:
    """Probabilities of random faults, drawn from the network's seeded generator."""

    drop: float = 0.0  # a delivered message is lost instead
    duplicate: float = 0.0  # a delivered message stays queued for a second delivery
    reorder: float = 0.0  # the next delivery is a random due message, not the oldest
    delay: float = 0.0  # a sent message becomes due only after 1..max_delay ticks
    max_delay: int = 3


@dataclass
class Envelope:
    msg: pb.Message
    due: int  # the tick from which it may be delivered


class Network:
    """Messages in flight, reachability, and the random fault policy."""

    def __init__(self, rng: Random, faults: Faults | None = None) -> None:
        self.rng = rng
        self.faults = faults or Faults()
        self.queue: list[Envelope] = []
        self.now = 0
        self._cut: set[tuple[int, int]] = set()
        self._isolated: set[int] = set()
        self._group: dict[int, int] = {}

    def send(self, m: pb.Message) -> None:
        due = self.now
        f = self.faults
        if f.delay and self.rng.random() < f.delay:
            due += self.rng.randint(1, f.max_delay)
        self.queue.append(Envelope(m, due))

    def due(self) -> list[Envelope]:
        return [e for e in self.queue if e.due <= self.now]

    def take(self, env: Envelope) -> None:
        self.queue.remove(env)

    def next(self) -> Envelope | None:
        """The next message to deliver under the fault policy (it stays queued)."""
        due = self.due()
        if not due:
            return None
        if self.faults.reorder and self.rng.random() < self.faults.reorder:
            return self.rng.choice(due)
        return due[0]

    def roll_drop(self) -> bool:
        return bool(self.faults.drop) and self.rng.random() < self.faults.drop

    def roll_duplicate(self) -> bool:
        return bool(self.faults.duplicate) and self.rng.random() < self.faults.duplicate

    # -- reachability -------------------------------------------------------------------------

    def connected(self, a: int, b: int) -> bool:
        if a == b:
            return True
        if a in self._isolated or b in self._isolated or (a, b) in self._cut:
            return False
        ga, gb = self._group.get(a), self._group.get(b)
        return ga is None or gb is None or ga == gb

    def partition(self, *groups: Iterable[int]) -> None:
        """Nodes in different groups cannot talk; nodes named in no group talk to everyone."""
        self._group = {n: i for i, g in enumerate(groups) for n in g}

    def isolate(self, node: int) -> None:
        self._isolated.add(node)

    def cut(self, a: int, b: int) -> None:
        """Lose every message from a to b (only that direction)."""
        self._cut.add((a, b))

    def heal(self) -> None:
        self._cut.clear()
        self._isolated.clear()
        self._group.clear()


# ---------------------------------------------------------------------------------------------
# Nodes and the cluster


@dataclass
class SimNode:
    id: int
    storage: MemoryStorage
    rng: Random
    raw: RawNode | None = None  # None while crashed or after removal
    applied_index: int = 0
    conf_state: pb.ConfState = field(default_factory=pb.ConfState)
    state: list[tuple[int, bytes]] = field(default_factory=list)  # the state machine
    commit: int = 0  # the last commit index written to the transcript
    removed: bool = False

    @property
    def alive(self) -> bool:
        return self.raw is not None

    def data(self) -> list[bytes]:
        return [d for _, d in self.state]


class Cluster:
    """N Raft nodes, a simulated network between them, and a SafetyChecker over all of it."""

    def __init__(
        self,
        voters: int = 3,
        *,
        seed: int = 0,
        faults: Faults | None = None,
        election_tick: int = 10,
        heartbeat_tick: int = 1,
        pre_vote: bool = True,
        check_quorum: bool = True,
        max_size_per_msg: int = 1 << 20,
        max_inflight_msgs: int = 256,
        snapshot_interval: int = 0,
        snapshot_keep: int = 2,
        transcript: Transcript | None = None,
    ) -> None:
        self.seed = seed
        self.net = Network(Random(seed), faults)
        self.checker = SafetyChecker()
        self.checker.current_leaders = self._leaders
        self.transcript = transcript
        self.snapshot_interval = snapshot_interval
        self.snapshot_keep = snapshot_keep
        self._config = dict(
            election_tick=election_tick,
            heartbeat_tick=heartbeat_tick,
            pre_vote=pre_vote,
            check_quorum=check_quorum,
            max_size_per_msg=max_size_per_msg,
            max_inflight_msgs=max_inflight_msgs,
        )
        self.nodes: dict[int, SimNode] = {}
        self.events: Counter[str] = Counter()  # what happened, for coverage assertions
        self.reads: dict[bytes, tuple[int, int]] = {}  # answered ReadIndex ctx -> (node, index)
        self._seen: dict[int, tuple[StateType, int, int]] = {}
        self._proposals = 0
        peers = [(i, b"") for i in range(1, voters + 1)]
        self.transcript = None  # the bootstrap is the same in every run: one line says it
        for i in range(1, voters + 1):
            node = self._new_node(i)
            node.raw.bootstrap(peers)
            self._drain(node)
        self.transcript = transcript
        self._note(f"bootstrapped voters {list(self.nodes)} at term 1, commit {voters}")

    # -- lifecycle ----------------------------------------------------------------------------

    def _new_node(self, node_id: int) -> SimNode:
        node = SimNode(node_id, MemoryStorage(), Random(self.seed * 1_000_003 + node_id))
        self.nodes[node_id] = node
        node.raw = RawNode(self._node_config(node, applied=0))
        self.checker.on_restart(node_id, node.storage)
        return node

    def _node_config(self, node: SimNode, applied: int) -> Config:
        return Config(node.id, node.storage, node.rng, applied=applied, **self._config)

    def add_node(self, node_id: int) -> SimNode:
        """Start an empty member that learns everything from the leader (MsgApp or MsgSnap)."""
        if node_id in self.nodes:
            raise ValueError(f"node {node_id} exists")
        node = self._new_node(node_id)
        self._note(f"[{node_id}] started empty")
        self._drain(node)
        return node

    def crash(self, node_id: int) -> None:
        """Lose everything the node has not persisted: the RawNode and the state machine."""
        node = self.nodes[node_id]
        if node.raw is None:
            return
        node.raw = None
        node.state = []
        node.applied_index = 0
        self._seen.pop(node_id, None)
        self.events["crash"] += 1
        self._note(f"[{node_id}] crashed")

    def restart(self, node_id: int) -> None:
        """Rebuild the node from its storage: state machine from the snapshot, then the log."""
        node = self.nodes[node_id]
        if node.raw is not None or node.removed:
            return
        snap = node.storage.snapshot()
        node.state = decode_state(snap.data)
        node.applied_index = snap.metadata.index
        node.conf_state = pb.ConfState()
        node.conf_state.CopyFrom(snap.metadata.conf_state)
        self.checker.on_restart(node_id, node.storage)
        node.raw = RawNode(self._node_config(node, applied=node.applied_index))
        self.events["restart"] += 1
        self._note(f"[{node_id}] restarted at applied={node.applied_index}")
        self._drain(node)

    # -- inputs -------------------------------------------------------------------------------

    def tick_all(self) -> None:
        self.net.now += 1
        if self.transcript is not None:
            self.transcript.tick()
        for node in list(self.nodes.values()):
            if node.raw is not None:
                node.raw.tick()
                self._drain(node)

    def step(self, drop: MessageFilter | None = None) -> bool:
        """Deliver (or lose) one due message; False if none is due. Messages for which `drop`
        returns True are lost (a directed test's surgical fault)."""
        env = self.net.next()
        if env is None:
            return False
        if drop is not None and drop(env.msg):
            self.drop(env, "filtered")
        elif self.net.roll_duplicate():
            self.deliver(env, keep=True)
        elif self.net.roll_drop():
            self.drop(env, "lost")
        else:
            self.deliver(env)
        return True

    def stabilize(self, max_steps: int = 20_000, drop: MessageFilter | None = None) -> int:
        """Deliver due messages until none is left; returns how many steps it took."""
        for n in range(max_steps):
            if not self.step(drop):
                return n
        raise AssertionError(f"network still busy after {max_steps} deliveries")

    def run(self, ticks: int) -> None:
        for _ in range(ticks):
            self.tick_all()
            self.stabilize()

    def deliver(self, env: Envelope, keep: bool = False) -> None:
        """Hand one queued message to its recipient (or lose it if the recipient is out of reach).

        With ``keep`` the message stays queued and will arrive again: a duplicate.
        """
        m = env.msg
        src, dst = _sender(m), m.to
        target = self.nodes.get(dst)
        if target is None or target.raw is None or target.removed:
            self.drop(env, "down")
            return
        if not self.net.connected(src, dst):
            self.drop(env, "cut")
            return
        if not keep:
            self.net.take(env)
        self.events["delivered"] += 1
        self._note(describe_message(m) + (" (duplicate)" if keep else ""))
        copy = pb.Message()
        copy.CopyFrom(m)
        target.raw.step(copy)  # a forwarded proposal it cannot take is dropped silently
        self._drain(target)
        if m.type == pb.MSG_SNAP:
            self._report_snapshot(src, dst, failed=False)

    def drop(self, env: Envelope, why: str) -> None:
        """Lose a queued message; the sender learns of it as a transport would tell it."""
        self.net.take(env)
        m = env.msg
        self.events["dropped"] += 1
        self._note(f"{describe_message(m)} (dropped: {why})")
        src = self.nodes.get(_sender(m))
        if src is None or src.raw is None:
            return
        if m.type == pb.MSG_SNAP:
            self._report_snapshot(src.id, m.to, failed=True)
        elif why in ("down", "cut"):
            src.raw.report_unreachable(m.to)
            self._drain(src)

    def _report_snapshot(self, src: int, dst: int, failed: bool) -> None:
        node = self.nodes.get(src)
        if node is not None and node.raw is not None:
            node.raw.report_snapshot(dst, failed)
            self._drain(node)

    def campaign(self, node_id: int) -> None:
        node = self._live(node_id)
        node.raw.campaign()
        self._drain(node)

    def propose(self, node_id: int, data: bytes | None = None) -> bytes | None:
        """Propose data (a fresh unique value if None) on a node; None if it was dropped."""
        node = self._live(node_id)
        if data is None:
            self._proposals += 1
            data = f"v{self._proposals}".encode()
        try:
            node.raw.propose(data)
        except ProposalDroppedError:
            self._note(f"[{node_id}] proposal {data!r} dropped")
            return None
        finally:
            self._drain(node)
        return data

    def propose_conf_change(self, node_id: int, cc: pb.ConfChange) -> bool:
        node = self._live(node_id)
        try:
            node.raw.propose_conf_change(cc)
        except ProposalDroppedError:
            self._note(f"[{node_id}] conf change dropped")
            return False
        finally:
            self._drain(node)
        return True

    def transfer_leader(self, node_id: int, target: int) -> None:
        node = self._live(node_id)
        node.raw.transfer_leader(target)
        self._drain(node)

    def read_index(self, node_id: int, ctx: bytes) -> None:
        node = self._live(node_id)
        self.checker.on_read_index(node_id, ctx)
        node.raw.read_index(ctx)
        self._drain(node)

    def compact(self, node_id: int, keep: int | None = None) -> bool:
        """Snapshot the node's state machine at its applied index and compact the log, keeping
        `keep` entries before that index (for followers slightly behind)."""
        node = self.nodes[node_id]
        if node.raw is None or node.applied_index <= node.storage.snapshot().metadata.index:
            return False
        keep = self.snapshot_keep if keep is None else keep
        node.storage.create_snapshot(node.applied_index, node.conf_state, encode_state(node.state))
        upto = node.applied_index - keep
        if upto >= node.storage.first_index():
            node.storage.compact(upto)
        self.events["snapshot_taken"] += 1
        first = node.storage.first_index()
        self._note(f"[{node_id}] snapshot at {node.applied_index}, log now starts at {first}")
        return True

    # -- the Ready loop -----------------------------------------------------------------------

    def _drain(self, node: SimNode) -> None:
        while node.raw is not None and node.raw.has_ready():
            self._handle_ready(node, node.raw.ready())
        if node.raw is not None:
            self._observe_state(node)
        if node.removed and node.raw is not None:
            # It applied its own removal: its last messages (a leader's hand-over) are out.
            self._shut_down(node)

    def _handle_ready(self, node: SimNode, rd: Ready) -> None:
        raw = node.raw
        assert raw is not None
        snap = rd.snapshot if rd.snapshot is not None and rd.snapshot.metadata.index else None
        if snap is not None:
            node.storage.apply_snapshot(snap)
        if rd.entries:
            node.storage.append(rd.entries)
        if rd.hard_state is not None:
            node.storage.set_hard_state(rd.hard_state)
        self.checker.on_persisted(node.id, rd, node.storage)
        self._observe_state(node)

        for m in rd.messages:
            self.checker.on_send(node.id, m, node.storage)
            self.net.send(m)

        if snap is not None:
            self.checker.on_snapshot_applied(node.id, snap)
            node.state = decode_state(snap.data)
            node.applied_index = snap.metadata.index
            node.conf_state = pb.ConfState()
            node.conf_state.CopyFrom(snap.metadata.conf_state)
            self.events["snapshot_installed"] += 1
            self._note(f"[{node.id}] installed snapshot {snap.metadata.index}@{snap.metadata.term}")
        for e in rd.committed_entries:
            self.checker.on_apply(node.id, e)
            self._apply(node, e)
        for rs in rd.read_states:
            self.checker.on_read_state(node.id, rs.index, rs.request_ctx)
            self.events["read_answered"] += 1
            self.reads[rs.request_ctx] = (node.id, rs.index)
            self._note(f"[{node.id}] read {rs.request_ctx!r} at index {rs.index}")
        if rd.hard_state is not None and rd.hard_state.commit > node.commit:
            node.commit = rd.hard_state.commit
            self._note(f"[{node.id}] commit={node.commit} applied={node.applied_index}")
        raw.advance(rd)
        if (
            self.snapshot_interval
            and node.applied_index - node.storage.snapshot().metadata.index
            >= self.snapshot_interval
        ):
            self.compact(node.id)

    def _apply(self, node: SimNode, e: pb.Entry) -> None:
        node.applied_index = e.index
        if e.type == pb.ENTRY_NORMAL:
            if e.data:
                node.state.append((e.index, e.data))
            return
        cc = pb.ConfChange()
        cc.ParseFromString(e.data)
        assert node.raw is not None
        node.conf_state = node.raw.apply_conf_change(cc)
        self.events["conf_applied"] += 1
        self._note(f"[{node.id}] applied {describe_entry(e)}: {describe_conf(node.conf_state)}")
        if cc.type == pb.CONF_CHANGE_REMOVE_NODE:
            gone = self.nodes.get(cc.node_id)
            if gone is not None and not gone.removed:
                gone.removed = True
                if gone is not node:  # a node applying its own removal stops after this Ready
                    self._shut_down(gone)

    def _shut_down(self, node: SimNode) -> None:
        node.raw = None
        self._seen.pop(node.id, None)
        self._note(f"[{node.id}] removed from the cluster, shut down")

    def _observe_state(self, node: SimNode) -> None:
        raw = node.raw
        assert raw is not None
        now = (raw.state, raw.term, raw.lead)
        if self._seen.get(node.id) == now:
            return
        self._seen[node.id] = now
        self.checker.on_state(node.id, raw.state, raw.term, node.storage)
        self.events[f"became_{raw.state.name.lower()}"] += 1
        self._note(f"[{node.id}] {raw.state.name} term={raw.term} lead={raw.lead}")

    def _note(self, line: str) -> None:
        if self.transcript is not None:
            self.transcript.note(line)

    def _leaders(self) -> list[tuple[int, int, MemoryStorage]]:
        return [
            (n.id, n.raw.term, n.storage)
            for n in self.nodes.values()
            if n.raw is not None and n.raw.state == StateType.LEADER
        ]

    def _live(self, node_id: int) -> SimNode:
        node = self.nodes[node_id]
        if node.raw is None:
            raise ValueError(f"node {node_id} is down")
        return node

    # -- queries ------------------------------------------------------------------------------

    def live(self) -> list[SimNode]:
        return [n for n in self.nodes.values() if n.raw is not None]

    def leader(self) -> int | None:
        """The live leader of the highest term, if any."""
        best = None
        for n in self.live():
            if n.raw.state == StateType.LEADER and (best is None or n.raw.term > best.raw.term):
                best = n
        return None if best is None else best.id

    def voters(self) -> list[int]:
        """The voters in the configuration of the current leader (else of any live node)."""
        lead = self.leader()
        nodes = [self.nodes[lead]] if lead is not None else self.live()
        for n in nodes:
            if n.conf_state.voters:
                return sorted(n.conf_state.voters)
        return []

    # -- recovery helpers used by liveness checks ---------------------------------------------

    def heal_all(self) -> None:
        """Reconnect everything, stop random faults, restart every crashed member."""
        self.net.heal()
        self.net.faults = Faults()
        for env in self.net.queue:
            env.due = min(env.due, self.net.now)
        for node_id, node in self.nodes.items():
            if node.raw is None and not node.removed:
                self.restart(node_id)

    def wait_for_leader(self, max_ticks: int) -> int:
        for _ in range(max_ticks):
            lead = self.leader()
            if lead is not None and self._leader_is_settled(lead):
                return lead
            self.run(1)
        raise AssertionError(f"no leader within {max_ticks} ticks: {self.status_line()}")

    def _leader_is_settled(self, lead: int) -> bool:
        term = self.nodes[lead].raw.term
        voters = self.voters()
        return all(n.raw.lead == lead and n.raw.term == term for n in self.live() if n.id in voters)

    def commit_everywhere(self, max_ticks: int) -> bytes:
        """Propose fresh values on the leader until every live voter has applied one of them.

        A value is proposed again whenever leadership moves, since a proposal accepted by a
        deposed leader may be lost legitimately.
        """
        proposed: list[bytes] = []
        asked: tuple[int, int] | None = None
        for _ in range(max_ticks):
            lead = self.leader()
            if lead is not None and (lead, self.nodes[lead].raw.term) != asked:
                data = self.propose(lead)
                if data is not None:
                    proposed.append(data)
                    asked = (lead, self.nodes[lead].raw.term)
            self.stabilize()
            members = [self.nodes[v] for v in self.voters() if v in self.nodes]
            applied = [set(m.data()) for m in members if m.raw is not None]
            for data in proposed:
                if applied and all(data in a for a in applied):
                    return data
            self.run(1)
        raise AssertionError(
            f"proposals {proposed} not applied by all voters: {self.status_line()}"
        )

    def check_logs(self) -> None:
        """Log matching over every pair of stored logs, in full (crashed members included).

        The checker verifies it incrementally as entries are persisted; this is the cross-check.
        """
        logs = {
            n.id: {e.index: e for e in _log_slice(n.storage, 1, NO_LIMIT)}
            for n in self.nodes.values()
            if not n.removed
        }
        ids = sorted(logs)
        for x, a in enumerate(ids):
            for b in ids[x + 1 :]:
                la, lb = logs[a], logs[b]
                common = sorted(set(la) & set(lb))
                agreed = [i for i in common if la[i].term == lb[i].term]
                for i in common:
                    if agreed and i <= agreed[-1] and la[i] != lb[i]:
                        raise InvariantViolation(
                            f"log matching: nodes {a} and {b} agree on {agreed[-1]}@"
                            f"{la[agreed[-1]].term} but differ at {i}"
                        )

    def status_line(self) -> str:
        parts = []
        for n in self.nodes.values():
            if n.raw is None:
                parts.append(f"{n.id}:{'removed' if n.removed else 'down'}")
            else:
                parts.append(
                    f"{n.id}:{n.raw.state.name}/t{n.raw.term}/lead{n.raw.lead}"
                    f"/applied{n.applied_index}"
                )
        return " ".join(parts)
