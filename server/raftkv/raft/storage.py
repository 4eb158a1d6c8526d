"""The persisted side of the Raft log, as the core sees it.

``Storage`` is the seam between the pure core and the application's disk: the core only reads
from it (entries, terms, the snapshot); the application writes to it after it made a Ready
durable. ``MemoryStorage`` is the in-memory image an application keeps of what its WAL holds,
and the storage every test uses.

The log is held as one Python list whose element 0 is a dummy entry standing for the snapshot
(its index and term), so ``term(first_index() - 1)`` is always answerable: the leader needs it
to build the MsgApp that follows a snapshot.
"""

from __future__ import annotations

from typing import Protocol

from raftkv.pb.raftpb.raft_pb2 import ConfState, Entry, HardState, Snapshot
from raftkv.raft.errors import (
    CompactedError,
    SnapshotOutOfDateError,
    UnavailableError,
)


def limit_size(ents: list[Entry], max_size: int | None) -> list[Entry]:
    """The longest prefix of ``ents`` whose total size stays within ``max_size`` bytes; never
    fewer than one entry. ``None`` means no limit."""
    if max_size is None or len(ents) <= 1:
        return ents
    size = ents[0].ByteSize()
    for i in range(1, len(ents)):
        size += ents[i].ByteSize()
        if size > max_size:
            return ents[:i]
    return ents


class Storage(Protocol):
    """Read access to the stable log. Implementations raise ``CompactedError`` for indexes
    before ``first_index() - 1`` and ``UnavailableError`` for indexes after ``last_index()``.

    The core never writes here; the application appends ``Ready.entries``, installs
    ``Ready.snapshot`` and stores ``Ready.hard_state`` before calling ``RawNode.advance``.
    """

    def initial_state(self) -> tuple[HardState, ConfState]:
        """The saved hard state and the configuration as of the latest snapshot."""
        ...

    def entries(self, lo: int, hi: int, max_size: int | None) -> list[Entry]:
        """Entries [lo, hi), cut to ``max_size`` bytes (at least one entry if any)."""
        ...

    def term(self, i: int) -> int:
        """Term of entry ``i``; valid for first_index()-1 <= i <= last_index()."""
        ...

    def first_index(self) -> int:
        """Index of the first entry still available (snapshot index + 1)."""
        ...

    def last_index(self) -> int:
        """Index of the last entry (the snapshot index if the log is empty)."""
        ...

    def snapshot(self) -> Snapshot:
        """The most recent snapshot; may raise ``SnapshotTemporarilyUnavailableError``."""
        ...


class MemoryStorage(Storage):
    """An in-memory ``Storage``: the log after the last snapshot, the snapshot, the hard state.

    Not thread-safe: raftkv calls it from its one event loop.
    """

    __slots__ = ("_ents", "_hard_state", "_snapshot")

    def __init__(self) -> None:
        self._hard_state = HardState()
        self._snapshot = Snapshot()
        self._ents: list[Entry] = [Entry()]  # [0] is the dummy for the snapshot position

    # -- Storage ----------------------------------------------------------------------------

    def initial_state(self) -> tuple[HardState, ConfState]:
        return self._hard_state, self._snapshot.metadata.conf_state

    def entries(self, lo: int, hi: int, max_size: int | None) -> list[Entry]:
        ents = self._ents
        offset = ents[0].index
        if lo <= offset:
            raise CompactedError(f"entry {lo} is compacted (first index {offset + 1})")
        last = offset + len(ents) - 1
        if hi > last + 1:
            raise UnavailableError(f"entries up to {hi - 1} requested, last index is {last}")
        return limit_size(ents[lo - offset : hi - offset], max_size)

    def term(self, i: int) -> int:
        ents = self._ents
        offset = ents[0].index
        if i < offset:
            raise CompactedError(f"term of {i} is compacted (first index {offset + 1})")
        k = i - offset
        if k >= len(ents):
            raise UnavailableError(f"term of {i} requested, last index is {offset + len(ents) - 1}")
        return ents[k].term

    def first_index(self) -> int:
        return self._ents[0].index + 1

    def last_index(self) -> int:
        ents = self._ents
        return ents[0].index + len(ents) - 1

    def snapshot(self) -> Snapshot:
        return self._snapshot

    # -- writes by the application ------------------------------------------------------------

    def set_hard_state(self, hs: HardState) -> None:
        self._hard_state = HardState(term=hs.term, vote=hs.vote, commit=hs.commit)

    def apply_snapshot(self, snap: Snapshot) -> None:
        """Replace everything with ``snap`` (a snapshot received from the leader)."""
        md = snap.metadata
        if md.index <= self._snapshot.metadata.index:
            raise SnapshotOutOfDateError(
                f"snapshot at {md.index} is not newer than {self._snapshot.metadata.index}"
            )
        self._snapshot = snap
        self._ents = [Entry(index=md.index, term=md.term)]

    def create_snapshot(self, index: int, conf_state: ConfState | None, data: bytes) -> Snapshot:
        """Record a snapshot of the state machine taken at ``index`` (already applied). The log
        is kept; call ``compact`` to drop the entries it covers."""
        if index <= self._snapshot.metadata.index:
            raise SnapshotOutOfDateError(
                f"snapshot at {index} is not newer than {self._snapshot.metadata.index}"
            )
        last = self.last_index()
        if index > last:
            raise UnavailableError(f"snapshot index {index} is after the last index {last}")
        snap = Snapshot(data=data)
        snap.metadata.index = index
        snap.metadata.term = self._ents[index - self._ents[0].index].term
        if conf_state is not None:
            snap.metadata.conf_state.CopyFrom(conf_state)
        self._snapshot = snap
        return snap

    def compact(self, index: int) -> None:
        """Drop the entries before ``index``; ``index`` becomes the dummy entry."""
        ents = self._ents
        offset = ents[0].index
        if index <= offset:
            raise CompactedError(f"cannot compact to {index}: already compacted to {offset}")
        last = offset + len(ents) - 1
        if index > last:
            raise UnavailableError(f"cannot compact to {index}: last index is {last}")
        k = index - offset
        dummy = Entry(index=ents[k].index, term=ents[k].term)
        self._ents = [dummy, *ents[k + 1 :]]

    def append(self, entries: list[Entry]) -> None:
        """Append entries, first truncating any existing entries from the first new index on
        (a new leader overwrote them). Entries already compacted are skipped."""
        if not entries:
            return
        ents = self._ents
        first = ents[0].index + 1
        start = entries[0].index
        if start + len(entries) - 1 < first:
            return
        if start < first:
            entries = entries[first - start :]
            start = first
        k = start - ents[0].index
        if k == len(ents):
            ents.extend(entries)
        elif k < len(ents):
            del ents[k:]
            ents.extend(entries)
        else:
            raise UnavailableError(
                f"missing log entries: last index {self.last_index()}, appending at {start}"
            )
