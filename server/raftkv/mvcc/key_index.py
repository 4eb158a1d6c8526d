"""The in-memory index from user keys to their revisions, like etcd's keyIndex and treeIndex.

Values live in the backend under their revision; this index answers "which revision holds `key`
as of revision R" without touching the disk. Each key has a list of *generations*: a generation
runs from the put that (re)created the key to the tombstone that deleted it, so `version` (puts
since creation) and `create_revision` reset after a delete. The last generation is the open one
(empty while the key is deleted).

Compaction drops every revision at or below the compaction revision except the newest one each
key still shows there, and whole generations that ended at or below it, so memory does not grow
with compacted history. One deliberate exception, as in etcd since 3.5.15: a generation whose
tombstone is exactly the compaction revision keeps that tombstone, so a watch starting at the
compaction revision still sees the deletion; the next compaction removes it.
`KeyIndexTree.compact` returns the backend row keys of everything it dropped, which is precisely
what physical compaction must delete. Only keys touched since they were last compacted to a single
revision are visited, so a compaction costs time in proportion to the history it removes.
"""

from __future__ import annotations

from bisect import bisect_right

from sortedcontainers import SortedDict

from raftkv.mvcc.revision import Revision

_MAX_SUB = 1 << 64


class Generation(list[Revision]):
    """One life of a key: puts from creation to (for a closed generation) its tombstone.

    The list of its revisions is the object itself (`revs` names it): with millions of keys,
    every container per key is memory and work for each full garbage collection.
    """

    __slots__ = ("created", "version")

    def __init__(
        self, version: int = 0, created: Revision | None = None, revs: list[Revision] | None = None
    ) -> None:
        super().__init__(revs or ())
        # Puts in this generation, counting compacted ones (and the tombstone, which ends it).
        self.version = version
        self.created = created

    @property
    def revs(self) -> list[Revision]:
        return self


class KeyIndex(list[Generation]):
    """The generations of one key (the object is their list, `generations`, for the reason
    Generation is its revisions); see the module docstring."""

    __slots__ = ("key",)

    def __init__(self, key: bytes) -> None:
        super().__init__((Generation(),))
        self.key = key

    @property
    def generations(self) -> list[Generation]:
        return self

    def put(self, rev: Revision) -> bool:
        """Record a put at `rev`; True when it (re)created the key."""
        g = self.generations[-1]
        created = not g.revs
        if created:
            g.created = rev
        g.revs.append(rev)
        g.version += 1
        return created

    def tombstone(self, rev: Revision) -> None:
        """Record the deletion of a live key at `rev` and open a new, empty generation."""
        if not self.generations[-1].revs:
            raise ValueError(f"mvcc: tombstone of a key that does not exist: {self.key!r}")
        self.put(rev)
        self.generations.append(Generation())

    def restore(self, created: Revision, modified: Revision, version: int) -> None:
        """Start from a backend row written at `modified` (older rows compacted away)."""
        self[:] = [Generation(version, created, [modified])]

    def restore_tombstone(self, rev: Revision) -> None:
        """Start from a tombstone row whose earlier history was compacted away."""
        self[:] = [Generation(1, rev, [rev]), Generation()]

    def get(self, at_rev: int) -> tuple[Revision, Revision, int] | None:
        """(modified, created, version) of the key as of main revision `at_rev`, or None."""
        g = self._find_generation(at_rev)
        if g is None:
            return None
        n = bisect_right(g.revs, Revision(at_rev, _MAX_SUB)) - 1
        if n < 0 or g.created is None:
            return None
        return g.revs[n], g.created, g.version - (len(g.revs) - 1 - n)

    def _find_generation(self, at_rev: int) -> Generation | None:
        last = len(self.generations) - 1
        for i in range(last, -1, -1):
            g = self.generations[i]
            if not g.revs:
                continue
            if i != last and g.revs[-1].main <= at_rev:
                return None  # the key was deleted at or before at_rev
            if g.revs[0].main <= at_rev:
                return g
        return None

    def compact(self, at_rev: int, removed: list[bytes]) -> None:
        """Drop history at or below `at_rev`, appending the dropped rows' keys to `removed`."""
        gens = self.generations
        first = 0
        while first < len(gens) - 1:  # closed generations, oldest first
            g = gens[first]
            tomb = g.revs[-1]
            if tomb.main >= at_rev:
                break  # a tombstone at exactly at_rev is kept (see the module docstring)
            removed.extend(r.to_bytes() for r in g.revs[:-1])
            removed.append(tomb.to_bytes(tombstone=True))
            first += 1
        # In the first generation left, keep the newest revision <= at_rev and what follows it.
        # That revision is a put (a tombstone ends its generation) or the kept tombstone.
        g = gens[first]
        n = bisect_right(g.revs, Revision(at_rev, _MAX_SUB)) - 1
        if n > 0:
            removed.extend(r.to_bytes() for r in g.revs[:n])
            del g.revs[:n]
        if first:
            del gens[:first]

    def is_empty(self) -> bool:
        return len(self.generations) == 1 and not self.generations[0].revs

    def is_settled(self) -> bool:
        """True when compaction can change nothing: one live generation with one revision."""
        return len(self.generations) == 1 and len(self.generations[0].revs) == 1


class KeyIndexTree:
    """All keys in byte order, each with its KeyIndex. Not thread-safe (single event loop)."""

    def __init__(self) -> None:
        self._keys: SortedDict = SortedDict()  # bytes -> KeyIndex
        # Keys with history that a compaction could drop; the rest hold exactly one revision.
        self._unsettled: set[bytes] = set()
        self._live = 0

    def __len__(self) -> int:
        """Keys held, including deleted keys whose tombstone is not compacted yet."""
        return len(self._keys)

    @property
    def live_count(self) -> int:
        """Keys that exist at the newest revision written."""
        return self._live

    def put(self, key: bytes, rev: Revision) -> None:
        ki = self._keys.get(key)
        if ki is None:
            ki = self._keys[key] = KeyIndex(key)
        if ki.put(rev):
            self._live += 1
        if not ki.is_settled():
            self._unsettled.add(key)

    def tombstone(self, key: bytes, rev: Revision) -> None:
        ki = self._keys.get(key)
        if ki is None:
            raise ValueError(f"mvcc: tombstone of a key that does not exist: {key!r}")
        ki.tombstone(rev)
        self._live -= 1
        self._unsettled.add(key)

    def get(self, key: bytes, at_rev: int) -> tuple[Revision, Revision, int] | None:
        """(modified, created, version) of `key` as of `at_rev`, or None if it did not exist."""
        ki = self._keys.get(key)
        return None if ki is None else ki.get(at_rev)

    def range(self, key: bytes, range_end: bytes, at_rev: int) -> list[tuple[bytes, Revision]]:
        """(key, modified revision) of the keys existing at `at_rev`, in key order.

        `range_end`: b"" → `key` only; b"\\0" → every key >= key; otherwise [key, range_end).
        """
        if not range_end:
            found = self.get(key, at_rev)
            return [] if found is None else [(key, found[0])]
        if range_end == b"\0":
            keys = self._keys.irange(minimum=key)
        else:
            keys = self._keys.irange(minimum=key, maximum=range_end, inclusive=(True, False))
        out = []
        for k in keys:
            found = self._keys[k].get(at_rev)
            if found is not None:
                out.append((k, found[0]))
        return out

    def compact(self, at_rev: int) -> list[bytes]:
        """Compact every key at `at_rev`; returns the backend row keys no longer referenced."""
        removed: list[bytes] = []
        for key in list(self._unsettled):
            ki = self._keys[key]
            ki.compact(at_rev, removed)
            if ki.is_empty():
                del self._keys[key]
                self._unsettled.discard(key)
            elif ki.is_settled():
                self._unsettled.discard(key)
        return removed

    def restore_row(
        self, key: bytes, rev: Revision, tombstone: bool, created_main: int, version: int
    ) -> None:
        """Replay one backend row (rows must come in revision order) while rebuilding."""
        ki = self._keys.get(key)
        if ki is None:
            ki = self._keys[key] = KeyIndex(key)
            if tombstone:
                ki.restore_tombstone(rev)
            else:
                ki.restore(Revision(created_main), rev, version)
                self._live += 1
        elif tombstone:
            ki.tombstone(rev)
            self._live -= 1
        elif ki.put(rev):
            self._live += 1
        if not ki.is_settled():
            self._unsettled.add(key)
