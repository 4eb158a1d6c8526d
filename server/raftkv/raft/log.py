"""The Raft log as one node sees it: stable entries in ``Storage`` plus an unstable tail.

Entries a node accepts go first to ``Unstable`` (in memory, not yet durable); the application
persists them from a Ready and ``stable_to`` then drops them here. A snapshot received from the
leader waits in ``Unstable.snapshot`` the same way. ``committed`` and ``applied`` are the two
cursors the core and the application move.

Entries are protobuf ``Entry`` objects shared by reference between the unstable tail, Ready and
the storage: nobody mutates an entry once it is in a log, so no list is copied per entry except
where a caller needs its own list (Ready, message payloads).
"""

from __future__ import annotations

from raftkv.pb.raftpb.raft_pb2 import Entry, Snapshot
from raftkv.raft.errors import CompactedError, RaftError
from raftkv.raft.storage import Storage, limit_size


class Unstable:
    """Entries (and possibly a snapshot) not yet handed to stable storage.

    ``entries[k]`` has index ``offset + k``; with a snapshot, ``offset`` is its index + 1.
    """

    __slots__ = ("entries", "offset", "snapshot")

    def __init__(self, offset: int) -> None:
        self.snapshot: Snapshot | None = None
        self.entries: list[Entry] = []
        self.offset = offset

    def maybe_term(self, i: int) -> int | None:
        k = i - self.offset
        if k < 0:
            s = self.snapshot
            if s is not None and s.metadata.index == i:
                return s.metadata.term
            return None
        if k < len(self.entries):
            return self.entries[k].term
        return None

    def stable_to(self, i: int, t: int) -> None:
        """Entries up to ``i`` (with term ``t``) are durable; a mismatching term means the
        entry was replaced meanwhile, and the newer one is still unstable."""
        if self.maybe_term(i) != t or i < self.offset:
            return
        del self.entries[: i + 1 - self.offset]
        self.offset = i + 1

    def stable_snap_to(self, i: int) -> None:
        if self.snapshot is not None and self.snapshot.metadata.index == i:
            self.snapshot = None

    def restore(self, s: Snapshot) -> None:
        self.offset = s.metadata.index + 1
        self.entries = []
        self.snapshot = s

    def truncate_and_append(self, ents: list[Entry]) -> None:
        after = ents[0].index
        off = self.offset
        if after == off + len(self.entries):
            self.entries.extend(ents)
        elif after <= off:
            # The new entries replace everything unstable (and the caller checked that they do
            # not replace anything committed).
            self.offset = after
            self.entries = list(ents)
        else:
            del self.entries[after - off :]
            self.entries.extend(ents)


class RaftLog:
    """The log: ``storage`` + ``unstable``, with the commit and apply cursors."""

    __slots__ = ("applied", "committed", "max_applying_size", "storage", "unstable")

    def __init__(self, storage: Storage, max_applying_size: int = 0) -> None:
        self.storage = storage
        self.unstable = Unstable(storage.last_index() + 1)
        first = storage.first_index()
        self.committed = first - 1
        self.applied = first - 1
        self.max_applying_size = max_applying_size or None

    def __repr__(self) -> str:
        return (
            f"RaftLog(committed={self.committed}, applied={self.applied}, "
            f"unstable.offset={self.unstable.offset}, unstable={len(self.unstable.entries)})"
        )

    # -- indexes and terms ------------------------------------------------------------------

    def first_index(self) -> int:
        s = self.unstable.snapshot
        if s is not None:
            return s.metadata.index + 1
        return self.storage.first_index()

    def last_index(self) -> int:
        # The unstable part always starts right after the last stable entry (or the pending
        # snapshot), as long as the application persists what each Ready hands it.
        u = self.unstable
        return u.offset + len(u.entries) - 1

    def last_term(self) -> int:
        return self.term(self.last_index())

    def term(self, i: int) -> int:
        """Term of entry ``i``: 0 past the end of the log; ``CompactedError`` before
        ``first_index() - 1`` (whose term is kept for matching)."""
        u = self.unstable
        k = i - u.offset
        if k >= 0:
            return u.entries[k].term if k < len(u.entries) else 0
        s = u.snapshot
        if s is not None:
            if i == s.metadata.index:
                return s.metadata.term
            raise CompactedError(f"entry {i} is before the pending snapshot")
        if i < self.storage.first_index() - 1:
            raise CompactedError(f"entry {i} is compacted")
        return self.storage.term(i)

    def term_or_zero(self, i: int) -> int:
        try:
            return self.term(i)
        except CompactedError:
            return 0

    def match_term(self, i: int, t: int) -> bool:
        try:
            return self.term(i) == t
        except CompactedError:
            return False

    def is_up_to_date(self, lasti: int, term: int) -> bool:
        """Whether a log ending at (lasti, term) is at least as up to date as ours (§5.4.1)."""
        last = self.last_index()
        our_term = self.term(last)
        return term > our_term or (term == our_term and lasti >= last)

    # -- reading entries ----------------------------------------------------------------------

    def entries(self, lo: int, max_size: int | None) -> list[Entry]:
        last = self.last_index()
        if lo > last:
            return []
        return self.slice(lo, last + 1, max_size)

    def slice(self, lo: int, hi: int, max_size: int | None) -> list[Entry]:
        """Entries [lo, hi), cut to ``max_size`` bytes (at least one)."""
        if lo >= hi:
            return []
        if lo < self.first_index():
            raise CompactedError(f"entry {lo} is compacted")
        last = self.last_index()
        if hi > last + 1:
            raise RaftError(f"slice [{lo}, {hi}) out of bound [.., {last}]")
        u = self.unstable
        off = u.offset
        if lo >= off:
            return limit_size(u.entries[lo - off : hi - off], max_size)
        stable_hi = min(hi, off)
        stored = self.storage.entries(lo, stable_hi, max_size)
        if hi <= off or len(stored) < stable_hi - lo:
            return stored  # all stable, or already cut by the size limit
        return limit_size([*stored, *u.entries[: hi - off]], max_size)

    def unstable_entries(self) -> list[Entry]:
        return self.unstable.entries[:]

    def has_next_committed_entries(self) -> bool:
        return self.committed >= max(self.applied + 1, self.first_index())

    def next_committed_entries(self) -> list[Entry]:
        lo = max(self.applied + 1, self.first_index())
        if self.committed < lo:
            return []
        return self.slice(lo, self.committed + 1, self.max_applying_size)

    def snapshot(self) -> Snapshot:
        if self.unstable.snapshot is not None:
            return self.unstable.snapshot
        return self.storage.snapshot()

    # -- changing the log ---------------------------------------------------------------------

    def append(self, ents: list[Entry]) -> int:
        if ents:
            after = ents[0].index - 1
            if after < self.committed:
                raise RaftError(f"appending after {after} would overwrite commit {self.committed}")
            self.unstable.truncate_and_append(ents)
        return self.last_index()

    def find_conflict(self, ents: list[Entry]) -> int:
        """Index of the first entry of ``ents`` that is not already in the log (a term
        mismatch or past the end), or 0 if the log already holds them all."""
        if ents[0].index > self.last_index():
            return ents[0].index
        for e in ents:
            if not self.match_term(e.index, e.term):
                return e.index
        return 0

    def find_conflict_by_term(self, index: int, term: int) -> tuple[int, int]:
        """The largest index <= ``index`` whose entry has a term <= ``term``, and that term.

        Used on both sides of a rejected MsgApp to skip a whole term per round trip. Terms
        never decrease along the log, so this is a binary search. Returns (index, 0) when the
        answer is unknown because ``index`` is compacted.
        """
        lo = self.first_index() - 1
        if index < lo:
            return index, 0
        index = min(index, self.last_index())
        t = self.term(index)
        if t <= term:
            return index, t
        t_lo = self.term(lo)
        if t_lo > term:
            # Even the snapshot is newer: the match is somewhere in the compacted prefix.
            return max(lo - 1, 0), 0
        # invariant: term(lo) <= term < term(hi)
        hi = index
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if self.term(mid) <= term:
                lo = mid
            else:
                hi = mid
        return lo, self.term(lo)

    def maybe_append(self, index: int, log_term: int, committed: int, ents: list[Entry]) -> int:
        """Append ``ents`` after (index, log_term) if our log matches there; returns the index of
        the last new entry, or -1 on a mismatch."""
        if not self.match_term(index, log_term):
            return -1
        lastnewi = index + len(ents)
        if ents:
            ci = self.find_conflict(ents)
            if ci:
                if ci <= self.committed:
                    raise RaftError(f"entry {ci} conflicts with committed entry {self.committed}")
                k = ci - index - 1
                self.append(ents[k:] if k else ents)
        self.commit_to(min(committed, lastnewi))
        return lastnewi

    def commit_to(self, tocommit: int) -> None:
        if tocommit > self.committed:
            if tocommit > self.last_index():
                raise RaftError(
                    f"commit {tocommit} is out of range [last index {self.last_index()}]; "
                    "was the log truncated or corrupted?"
                )
            self.committed = tocommit

    def maybe_commit(self, max_index: int, term: int) -> bool:
        """Commit up to ``max_index`` if that entry is of ``term`` (only entries of the leader's
        own term are committed by counting replicas, §5.4.2)."""
        if max_index > self.committed and self.term_or_zero(max_index) == term:
            self.committed = max_index
            return True
        return False

    def applied_to(self, i: int) -> None:
        if i == 0:
            return
        if i > self.committed or i < self.applied:
            raise RaftError(
                f"applied {i} is out of range [prev applied {self.applied}, "
                f"committed {self.committed}]"
            )
        self.applied = i

    def stable_to(self, i: int, t: int) -> None:
        self.unstable.stable_to(i, t)

    def stable_snap_to(self, i: int) -> None:
        self.unstable.stable_snap_to(i)

    def restore(self, s: Snapshot) -> None:
        self.committed = s.metadata.index
        self.unstable.restore(s)
