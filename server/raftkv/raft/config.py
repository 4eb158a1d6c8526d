"""Configuration of one Raft node.

A plain dataclass: the node layer fills it from its flags. Time is counted in ticks (the caller
decides how long a tick is) and every random choice comes from ``rng`` so a seeded generator
makes a whole cluster reproducible.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from raftkv.raft.storage import Storage


@dataclass
class Config:
    """Settings of a ``RawNode``; ``validate()`` is called by the node and raises ValueError."""

    id: int  # this node's id; never 0 (0 means "nobody")
    storage: Storage  # the persisted log and hard state the node starts from
    rng: random.Random  # source of the randomized election timeout
    election_tick: int = 10  # followers campaign after [election_tick, 2*election_tick) ticks
    heartbeat_tick: int = 1  # the leader sends heartbeats every heartbeat_tick ticks
    applied: int = 0  # last index the application applied before (re)starting
    max_size_per_msg: int = 1 << 20  # entry bytes per MsgApp (a message carries >= 1 entry)
    max_inflight_msgs: int = 256  # unacknowledged MsgApp per follower while replicating
    max_uncommitted_entries_size: int = 0  # leader's bound on uncommitted payload; 0 = none
    check_quorum: bool = True  # leader steps down without a live quorum; enables leader lease
    pre_vote: bool = True  # campaign only after a pre-vote round would win
    disable_proposal_forwarding: bool = False  # followers refuse proposals instead of forwarding
    max_committed_size_per_ready: int = 0  # entry bytes per Ready.committed_entries; 0 = none

    def validate(self) -> None:
        if self.id == 0:
            raise ValueError("raft config: id must not be 0 (0 means 'no node')")
        if self.id < 0:
            raise ValueError(f"raft config: id must be positive, got {self.id}")
        if self.storage is None:
            raise ValueError("raft config: storage is required")
        if self.rng is None:
            raise ValueError("raft config: rng (a random.Random) is required")
        if self.heartbeat_tick <= 0:
            raise ValueError(f"raft config: heartbeat_tick must be > 0, got {self.heartbeat_tick}")
        if self.election_tick <= self.heartbeat_tick:
            raise ValueError(
                f"raft config: election_tick ({self.election_tick}) must be greater than "
                f"heartbeat_tick ({self.heartbeat_tick})"
            )
        if self.max_inflight_msgs <= 0:
            raise ValueError(
                f"raft config: max_inflight_msgs must be > 0, got {self.max_inflight_msgs}"
            )
        for name in (
            "applied",
            "max_size_per_msg",
            "max_uncommitted_entries_size",
            "max_committed_size_per_ready",
        ):
            if getattr(self, name) < 0:
                raise ValueError(f"raft config: {name} must be >= 0, got {getattr(self, name)}")
