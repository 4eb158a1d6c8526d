"""raftkv's Raft consensus core: a pure state machine (no I/O, no clock, no threads).

The application drives a ``RawNode`` with ``tick``/``step``/``propose`` and does the work each
``Ready`` describes (persist, send, apply) before calling ``advance``. See ``rawnode.Ready`` for
the contract and ``core`` for the protocol choices (PreVote, CheckQuorum, single-server
membership changes, leadership transfer, ReadIndex).
"""

from raftkv.raft.config import Config
from raftkv.raft.errors import (
    CompactedError,
    MalformedMessageError,
    ProposalDroppedError,
    RaftError,
    SnapshotOutOfDateError,
    SnapshotTemporarilyUnavailableError,
    StepLocalMessageError,
    UnavailableError,
)
from raftkv.raft.rawnode import (
    ProgressStatus,
    RawNode,
    ReadState,
    Ready,
    SoftState,
    StateType,
    Status,
)
from raftkv.raft.storage import MemoryStorage, Storage

__all__ = [
    "CompactedError",
    "Config",
    "MalformedMessageError",
    "MemoryStorage",
    "ProgressStatus",
    "ProposalDroppedError",
    "RaftError",
    "RawNode",
    "ReadState",
    "Ready",
    "SnapshotOutOfDateError",
    "SnapshotTemporarilyUnavailableError",
    "SoftState",
    "StateType",
    "Status",
    "StepLocalMessageError",
    "Storage",
    "UnavailableError",
]
