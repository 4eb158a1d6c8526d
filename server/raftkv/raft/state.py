"""Small value types shared by the core and ``RawNode``: node roles, soft state, read states."""

from __future__ import annotations

import enum
from dataclasses import dataclass


class StateType(enum.Enum):
    FOLLOWER = "follower"
    CANDIDATE = "candidate"
    LEADER = "leader"
    PRE_CANDIDATE = "pre_candidate"


@dataclass(frozen=True, slots=True)
class SoftState:
    """Volatile state worth reporting (not persisted): the known leader and this node's role."""

    lead: int
    raft_state: StateType


@dataclass(frozen=True, slots=True)
class ReadState:
    """A confirmed ReadIndex request: reads with ``request_ctx`` may be served once the
    application has applied up to ``index``."""

    index: int
    request_ctx: bytes
