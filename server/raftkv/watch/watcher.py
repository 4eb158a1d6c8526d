"""One watcher and the key index of the synced group.

A watcher is plain state: what it watches, how its events are shaped (filters, prev_kv), where
its responses go (its stream) and how far it has been served (`next_rev`). The watchable store
moves it between groups; nothing here does I/O.

The synced group is indexed because every write consults it: single-key watchers (by far the
most common) are found with one dict lookup, range and prefix watchers are checked one by one.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from raftkv.pb.mvccpb.kv_pb2 import Event

if TYPE_CHECKING:
    from raftkv.watch.stream import WatchStream

# etcd's convention for "every key >= key" in a range end.
FROM_KEY = b"\0"


class State(enum.Enum):
    SYNCED = "synced"  # gets each write's events as it is applied
    UNSYNCED = "unsynced"  # behind; the catch-up task feeds it from history
    COMPACTED = "compacted"  # its next revision was compacted away; it gets nothing more
    CLOSED = "closed"  # canceled by the client or its stream ended


@dataclass(eq=False, slots=True)
class Watcher:
    """A watch on etcd's key range [key, range_end) (see `matches`), served from `next_rev`."""

    id: int
    key: bytes
    range_end: bytes
    stream: WatchStream
    # The oldest revision this watcher may still be sent; events below it were already sent
    # (or precede a future start revision). Exact while unsynced, a lower bound while synced.
    next_rev: int
    prev_kv: bool = False
    no_put: bool = False
    no_delete: bool = False
    progress_notify: bool = False
    fragment: bool = False
    state: State = State.UNSYNCED
    # No event response since the last progress tick (etcd starts it true).
    progress_due: bool = field(default=True)

    def matches(self, key: bytes) -> bool:
        """etcd's range rule: empty end → `key` only; b"\\0" → all >= key; else [key, end)."""
        if not self.range_end:
            return key == self.key
        if self.range_end == FROM_KEY:
            return key >= self.key
        return self.key <= key < self.range_end

    def accepts(self, event: Event) -> bool:
        """False if the watcher's NOPUT / NODELETE filter drops `event`."""
        if event.type == Event.PUT:
            return not self.no_put
        return not self.no_delete


class WatcherGroup:
    """A set of watchers indexed for "who watches this key?"."""

    def __init__(self) -> None:
        self._by_key: dict[bytes, set[Watcher]] = {}
        self._ranges: set[Watcher] = set()
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def __iter__(self) -> Iterator[Watcher]:
        for watchers in self._by_key.values():
            yield from watchers
        yield from self._ranges

    def add(self, watcher: Watcher) -> None:
        if watcher.range_end:
            self._ranges.add(watcher)
        else:
            self._by_key.setdefault(watcher.key, set()).add(watcher)
        self._size += 1

    def remove(self, watcher: Watcher) -> None:
        if watcher.range_end:
            self._ranges.remove(watcher)
        else:
            watchers = self._by_key[watcher.key]
            watchers.remove(watcher)
            if not watchers:
                del self._by_key[watcher.key]
        self._size -= 1

    def matching(self, key: bytes) -> Iterator[Watcher]:
        yield from self._by_key.get(key, ())
        for watcher in self._ranges:
            if watcher.matches(key):
                yield watcher
