"""The errors the Raft core raises.

They form one small hierarchy under ``RaftError`` so the node layer can tell "try again / the
request was not accepted" (``ProposalDroppedError``) from storage conditions that the log layer
turns into a snapshot or a retry, and from programming errors (``StepLocalMessageError``).
"""

from __future__ import annotations


class RaftError(Exception):
    """Base class of every error raised by ``raftkv.raft``."""


class ProposalDroppedError(RaftError):
    """The proposal was not appended: no leader known, a leadership transfer in progress, the
    uncommitted-size limit reached, a configuration change already pending, or the leader has
    not yet committed an entry of its own term (required before a configuration change)."""


class CompactedError(RaftError):
    """The requested index is older than the storage's first index (compacted into a snapshot)."""


class UnavailableError(RaftError):
    """The requested index is newer than anything the storage holds."""


class SnapshotTemporarilyUnavailableError(RaftError):
    """The storage cannot produce a snapshot right now; the leader tries again later."""


class SnapshotOutOfDateError(RaftError):
    """A snapshot older than (or as old as) the storage's current one was offered."""


class StepLocalMessageError(RaftError):
    """A message type that only the node itself may generate (MsgHup, MsgBeat, ...) arrived
    through ``RawNode.step``."""


class MalformedMessageError(RaftError):
    """A message through ``RawNode.step`` that no correct peer sends: it claims to come from
    this node, or a term or index is beyond any Raft log's reach. Refused before it touches
    the node."""
