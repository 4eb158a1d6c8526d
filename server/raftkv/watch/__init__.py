"""etcd's watches: the watchable store (synced/unsynced watchers), streams, fragments, progress."""

from raftkv.watch.fragment import split_fragments
from raftkv.watch.stream import Outgoing, WatchStream
from raftkv.watch.watchable import DEFAULT_PROGRESS_INTERVAL, KVSource, WatchableStore

__all__ = [
    "DEFAULT_PROGRESS_INTERVAL",
    "KVSource",
    "Outgoing",
    "WatchStream",
    "WatchableStore",
    "split_fragments",
]
