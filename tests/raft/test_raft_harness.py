"""A tiny hand-driven network of RawNodes for the Raft unit tests (this module has no tests).

Each node runs the Ready contract synchronously (persist into its MemoryStorage, queue the
messages, apply committed entries, advance). Messages wait in one FIFO queue until a test
calls ``deliver``; links can be cut and messages filtered, so a test controls exactly which
messages arrive. The whole-cluster simulation with faults and safety checks lives in sim.py;
this harness is deliberately small so each unit test reads as a precise scenario.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable, Iterable

from raftkv.pb.raftpb import raft_pb2 as pb
from raftkv.raft import Config, MemoryStorage, RawNode, ReadState, StateType
from raftkv.raft.core import Raft

Filter = Callable[[pb.Message], bool]


def sender(m: pb.Message) -> int:
    return getattr(m, "from")


def msg(type_: int, frm: int, to: int, **kw: object) -> pb.Message:
    return pb.Message(type=type_, to=to, **{"from": frm}, **kw)


def core(node: RawNode) -> Raft:
    """The state machine behind a RawNode, for white-box assertions."""
    return node._raft


class Net:
    """N RawNodes and a FIFO of messages between them."""

    def __init__(
        self,
        ids: Iterable[int] = (1, 2, 3),
        *,
        seed: int = 1,
        bootstrap: bool = True,
        storages: dict[int, MemoryStorage] | None = None,
        **cfg: object,
    ) -> None:
        self.ids = list(ids)
        self.cfg = cfg
        self.seed = seed
        self.storage: dict[int, MemoryStorage] = {}
        self.nodes: dict[int, RawNode] = {}
        self.applied: dict[int, list[bytes]] = {}
        self.applied_index: dict[int, int] = {}
        self.conf: dict[int, pb.ConfState] = {}
        self.read_states: dict[int, list[ReadState]] = {}
        self.queue: deque[pb.Message] = deque()
        self.cut: set[tuple[int, int]] = set()
        self.filter: Filter | None = None  # return False to drop a message
        self.delivered: list[pb.Message] = []
        self.dropped: list[pb.Message] = []
        for i in self.ids:
            self.add(i, (storages or {}).get(i))
        if bootstrap:
            peers = [(i, b"") for i in self.ids]
            for i in self.ids:
                self.nodes[i].bootstrap(peers)
                self.drain(i)

    def config(self, i: int, storage: MemoryStorage, applied: int = 0) -> Config:
        return Config(i, storage, random.Random(self.seed * 1000 + i), applied=applied, **self.cfg)

    def add(self, i: int, storage: MemoryStorage | None = None) -> RawNode:
        """Start node ``i`` (empty storage unless given) without bootstrapping it."""
        st = storage or MemoryStorage()
        self.storage[i] = st
        self.nodes[i] = RawNode(self.config(i, st))
        self.applied.setdefault(i, [])
        self.applied_index.setdefault(i, 0)
        self.read_states.setdefault(i, [])
        return self.nodes[i]

    def restart(self, i: int) -> RawNode:
        """Recreate node ``i`` from its storage, as after a crash: the state machine restarts
        from the snapshot and the committed log is applied again."""
        st = self.storage[i]
        snap = st.snapshot()
        self.applied_index[i] = snap.metadata.index
        self.applied[i] = [b"<snapshot>"] if snap.metadata.index else []
        self.nodes[i] = RawNode(self.config(i, st, applied=snap.metadata.index))
        self.drain(i)
        return self.nodes[i]

    def set_log(self, i: int, terms: list[int]) -> None:
        """Append entries of the given terms after node ``i``'s log, raise its term to the
        last of them and restart it (a node that once followed another leader)."""
        st = self.storage[i]
        last = st.last_index()
        st.append([pb.Entry(index=last + k, term=t) for k, t in enumerate(terms, 1)])
        hs = st.initial_state()[0]
        st.set_hard_state(pb.HardState(term=max([hs.term, *terms]), commit=hs.commit))
        self.restart(i)

    # -- the Ready loop -----------------------------------------------------------------------

    def drain(self, i: int) -> None:
        node = self.nodes[i]
        st = self.storage[i]
        while node.has_ready():
            rd = node.ready()
            if rd.snapshot is not None:
                st.apply_snapshot(rd.snapshot)
                self.applied_index[i] = rd.snapshot.metadata.index
                self.applied[i] = [b"<snapshot>"]
                self.conf[i] = rd.snapshot.metadata.conf_state
            st.append(rd.entries)
            if rd.hard_state is not None:
                st.set_hard_state(rd.hard_state)
            self.queue.extend(rd.messages)
            for e in rd.committed_entries:
                self.applied_index[i] = e.index
                if e.type == pb.ENTRY_CONF_CHANGE:
                    cc = pb.ConfChange()
                    cc.ParseFromString(e.data)
                    self.conf[i] = node.apply_conf_change(cc)
                elif e.data:
                    self.applied[i].append(e.data)
            self.read_states[i].extend(rd.read_states)
            node.advance(rd)

    def deliver(self, max_steps: int = 100_000) -> int:
        """Deliver queued messages (and everything they cause) until the queue is empty."""
        n = 0
        while self.queue:
            n += 1
            if n > max_steps:
                raise AssertionError("the network did not settle")
            self.deliver_one()
        return n

    def deliver_one(self) -> pb.Message:
        m = self.queue.popleft()
        frm, to = sender(m), m.to
        if (
            (frm, to) in self.cut
            or to not in self.nodes
            or (self.filter is not None and not self.filter(m))
        ):
            self.dropped.append(m)
            return m
        self.delivered.append(m)
        copy = pb.Message()
        copy.CopyFrom(m)
        self.nodes[to].step(copy)
        self.drain(to)
        return m

    def compact(self, i: int, keep: int = 0) -> pb.Snapshot:
        """Snapshot node ``i`` at its applied index and drop the log up to ``keep`` entries
        before it."""
        st = self.storage[i]
        idx = self.applied_index[i]
        snap = st.create_snapshot(idx, self.conf[i], b"state@%d" % idx)
        if idx - keep > st.first_index() - 1:
            st.compact(idx - keep)
        return snap

    def change(self, i: int, type_: int, node_id: int) -> None:
        """Propose a configuration change on node ``i`` (raises if it is refused)."""
        try:
            self.nodes[i].propose_conf_change(pb.ConfChange(type=type_, node_id=node_id))
        finally:
            self.drain(i)

    def join(self, leader: int, node_id: int, learner: bool = False) -> None:
        """Start an empty node and add it through the leader; it catches up from the log."""
        self.add(node_id)
        kind = pb.CONF_CHANGE_ADD_LEARNER_NODE if learner else pb.CONF_CHANGE_ADD_NODE
        self.change(leader, kind, node_id)
        self.deliver()
        self.tick_all(2)

    def take(self) -> list[pb.Message]:
        """Remove and return the queued messages (for tests that inspect them)."""
        out = list(self.queue)
        self.queue.clear()
        return out

    def send(self, m: pb.Message) -> None:
        self.queue.append(m)

    # -- inputs -------------------------------------------------------------------------------

    def tick(self, i: int, n: int = 1) -> None:
        for _ in range(n):
            self.nodes[i].tick()
            self.drain(i)

    def tick_all(self, n: int = 1, deliver: bool = True) -> None:
        for _ in range(n):
            for i in list(self.nodes):
                self.nodes[i].tick()
                self.drain(i)
            if deliver:
                self.deliver()

    def campaign(self, i: int) -> None:
        self.nodes[i].campaign()
        self.drain(i)
        self.deliver()

    def propose(self, i: int, data: bytes, trace_context: bytes = b"") -> None:
        try:
            self.nodes[i].propose(data, trace_context)
        finally:
            self.drain(i)

    def isolate(self, i: int) -> None:
        for j in self.nodes:
            if j != i:
                self.cut.add((i, j))
                self.cut.add((j, i))

    def heal(self) -> None:
        self.cut.clear()

    # -- queries ------------------------------------------------------------------------------

    def leaders(self) -> list[int]:
        return [i for i, n in self.nodes.items() if n.state is StateType.LEADER]

    def leader(self) -> int:
        leaders = self.leaders()
        assert len(leaders) == 1, f"expected one leader, got {leaders}"
        return leaders[0]

    def commit(self, i: int) -> int:
        return core(self.nodes[i]).log.committed

    def log_terms(self, i: int) -> list[tuple[int, int]]:
        log = core(self.nodes[i]).log
        return [(e.index, e.term) for e in log.slice(log.first_index(), log.last_index() + 1, None)]
