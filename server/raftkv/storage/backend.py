"""The durable backend of the state machine: a bucketed, ordered key-value store in one sqlite file.

It plays the part bbolt plays for etcd. Each bucket is a sqlite table `(k BLOB PRIMARY KEY, v BLOB)
WITHOUT ROWID`, so keys are kept in byte order and range scans are index scans.

Why it is shaped this way:

- **Batched writes.** All writes go into one open sqlite transaction that lasts until `commit()`.
  The Raft driver commits once per applied batch, so many entries share one commit. Reads run on
  the same connection and therefore see the open batch's uncommitted writes.
- **Durability comes from the Raft WAL**, not from here: the file runs with `journal_mode=WAL`
  and `synchronous=NORMAL`, so a commit is atomic but may be lost on power failure. That is safe
  because the applied Raft index (the consistent index) is written in the same transaction as the
  data it produced (see `add_pre_commit_hook`): after a crash the node replays exactly the entries
  after it. `force_commit_durable()` checkpoints with fsync; call it before releasing WAL segments.
- **Single-threaded.** One connection, used only from the thread that owns the server's event loop.
  The object does no locking; callers must not share it between threads.
"""

from __future__ import annotations

import contextlib
import os
import re
import sqlite3
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

# etcd's convention for "no upper bound" in a range end.
TO_END = b"\0"

_BUCKET_NAME = re.compile(r"^[A-Za-z0-9_]{1,64}$")
_TABLE_PREFIX = "bucket_"
_ITER_BATCH = 1024


@dataclass(frozen=True, slots=True)
class _Statements:
    """The SQL text for one bucket; sqlite3 caches the prepared statements by text."""

    get: str
    put: str
    delete: str
    range_bounded: str
    range_to_end: str
    delete_bounded: str
    delete_to_end: str
    count: str
    all_rows: str


def _statements(table: str) -> _Statements:
    t = f'"{table}"'
    return _Statements(
        get=f"SELECT v FROM {t} WHERE k = ?",
        put=f"INSERT OR REPLACE INTO {t} (k, v) VALUES (?, ?)",
        delete=f"DELETE FROM {t} WHERE k = ?",
        range_bounded=f"SELECT k, v FROM {t} WHERE k >= ? AND k < ? ORDER BY k LIMIT ?",
        range_to_end=f"SELECT k, v FROM {t} WHERE k >= ? ORDER BY k LIMIT ?",
        delete_bounded=f"DELETE FROM {t} WHERE k >= ? AND k < ?",
        delete_to_end=f"DELETE FROM {t} WHERE k >= ?",
        count=f"SELECT count(*) FROM {t}",
        all_rows=f"SELECT k, v FROM {t} ORDER BY k",
    )


class Backend:
    """A bucketed ordered KV store in one sqlite file; see the module docstring for the contract."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # `size()` runs before every write proposal (the quota): plain strings and a value cached
        # until the next commit, since only a commit (or checkpoint) changes the files.
        self._files = (str(self.path), str(self.path) + "-wal")
        self._size: int | None = None
        # isolation_level=None: sqlite3 never opens transactions behind our back; we BEGIN lazily.
        self._conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=NORMAL")
        self._buckets: dict[str, _Statements] = {}
        self._pre_commit_hooks: list[Callable[[], None]] = []
        for (table,) in self._conn.execute(
            "SELECT name FROM sqlite_schema WHERE type = 'table' AND name LIKE 'bucket\\_%' "
            "ESCAPE '\\'"
        ):
            self._buckets[table[len(_TABLE_PREFIX) :]] = _statements(table)

    # -- buckets -------------------------------------------------------------------------------

    def create_bucket(self, name: str) -> None:
        """Create bucket `name` if missing (part of the current batch)."""
        if name in self._buckets:
            return
        if not _BUCKET_NAME.match(name):
            raise ValueError(f"invalid bucket name {name!r}")
        table = _TABLE_PREFIX + name
        self._begin()
        self._conn.execute(
            f'CREATE TABLE IF NOT EXISTS "{table}" (k BLOB PRIMARY KEY, v BLOB NOT NULL) '
            "WITHOUT ROWID"
        )
        self._buckets[name] = _statements(table)

    def buckets(self) -> list[str]:
        return sorted(self._buckets)

    def _sql(self, bucket: str) -> _Statements:
        try:
            return self._buckets[bucket]
        except KeyError:
            raise KeyError(f"backend bucket {bucket!r} does not exist") from None

    # -- writes (batched until commit) ---------------------------------------------------------

    def _begin(self) -> None:
        if not self._conn.in_transaction:
            self._conn.execute("BEGIN")

    def put(self, bucket: str, key: bytes, value: bytes) -> None:
        sql = self._sql(bucket).put
        self._begin()
        self._conn.execute(sql, (key, value))

    def put_many(self, bucket: str, items: Iterable[tuple[bytes, bytes]]) -> None:
        sql = self._sql(bucket).put
        self._begin()
        self._conn.executemany(sql, items)

    def delete(self, bucket: str, key: bytes) -> None:
        sql = self._sql(bucket).delete
        self._begin()
        self._conn.execute(sql, (key,))

    def delete_many(self, bucket: str, keys: Iterable[bytes]) -> None:
        sql = self._sql(bucket).delete
        self._begin()
        self._conn.executemany(sql, ((k,) for k in keys))

    def delete_range(self, bucket: str, start: bytes, end: bytes) -> int:
        """Delete keys in [start, end) (`end` == b"\\0": every key >= start); returns the count."""
        sql = self._sql(bucket)
        self._begin()
        if end == TO_END:
            cursor = self._conn.execute(sql.delete_to_end, (start,))
        else:
            cursor = self._conn.execute(sql.delete_bounded, (start, end))
        return cursor.rowcount

    # -- reads (see the open batch) ------------------------------------------------------------

    def get(self, bucket: str, key: bytes) -> bytes | None:
        row = self._conn.execute(self._sql(bucket).get, (key,)).fetchone()
        return None if row is None else row[0]

    def range(
        self, bucket: str, start: bytes, end: bytes | None = None, limit: int = 0
    ) -> list[tuple[bytes, bytes]]:
        """Rows in key order: `end` None → only `start`; b"\\0" → every key >= start;
        otherwise [start, end). `limit` 0 means no limit."""
        sql = self._sql(bucket)
        if end is None:
            value = self.get(bucket, start)
            return [] if value is None else [(start, value)]
        n = limit if limit > 0 else -1
        if end == TO_END:
            return self._conn.execute(sql.range_to_end, (start, n)).fetchall()
        return self._conn.execute(sql.range_bounded, (start, end, n)).fetchall()

    def iter_range(
        self, bucket: str, start: bytes, end: bytes = TO_END, batch: int = _ITER_BATCH
    ) -> Iterator[tuple[bytes, bytes]]:
        """Like `range` but paged, so huge scans hold one page in memory. Writes made between
        pages are seen by later pages."""
        while True:
            rows = self.range(bucket, start, end, limit=batch)
            yield from rows
            if len(rows) < batch:
                return
            start = rows[-1][0] + b"\0"

    def count(self, bucket: str) -> int:
        return self._conn.execute(self._sql(bucket).count).fetchone()[0]

    # -- transactions and durability -----------------------------------------------------------

    def add_pre_commit_hook(self, hook: Callable[[], None]) -> None:
        """Run `hook` at the start of every commit, inside the batch being committed; used to write
        the consistent index atomically with the data."""
        self._pre_commit_hooks.append(hook)

    def commit(self) -> None:
        """End the current batch: everything written since the last commit becomes one atomic
        sqlite transaction (atomic, not yet fsynced; see the module docstring)."""
        for hook in self._pre_commit_hooks:
            hook()
        if self._conn.in_transaction:
            self._conn.execute("COMMIT")
        self._size = None

    def force_commit_durable(self) -> None:
        """Commit, then checkpoint the sqlite WAL into the main file with fsync."""
        self.commit()
        busy, _, _ = self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        self._size = None
        if busy:
            raise OSError(f"sqlite checkpoint of {self.path} was blocked")

    # -- maintenance ---------------------------------------------------------------------------

    def size(self) -> int:
        """Bytes on disk: the database file plus its sqlite WAL (as of the last commit)."""
        if self._size is None:
            total = 0
            for name in self._files:
                with contextlib.suppress(FileNotFoundError):
                    total += os.stat(name).st_size
            self._size = total
        return self._size

    def size_in_use(self) -> int:
        """Bytes of pages holding data (all pages minus the free list)."""
        pages = self._conn.execute("PRAGMA page_count").fetchone()[0]
        free = self._conn.execute("PRAGMA freelist_count").fetchone()[0]
        page_size = self._conn.execute("PRAGMA page_size").fetchone()[0]
        return (pages - free) * page_size

    def defragment(self) -> None:
        """Commit, rebuild the file without free pages (VACUUM) and shrink the sqlite WAL."""
        self.commit()
        self._conn.execute("VACUUM")
        self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        self._size = None

    def snapshot_to(self, path: Path) -> None:
        """Commit, then write a consistent single-file copy of the database to `path`, fsynced."""
        path = Path(path)
        self.commit()
        path.unlink(missing_ok=True)
        dest = sqlite3.connect(path)
        try:
            self._conn.backup(dest)
        finally:
            dest.close()  # a WAL-mode copy checkpoints and removes its -wal on close
        _fsync_file(path)
        _fsync_dir(path.parent)

    def hash(self) -> int:
        """crc32 over every bucket name and row, buckets by name and rows in key order."""
        crc = 0
        for name in sorted(self._buckets):
            crc = zlib.crc32(name.encode(), crc)
            for k, v in self._conn.execute(self._buckets[name].all_rows):
                crc = zlib.crc32(v, zlib.crc32(k, crc))
        return crc

    def close(self) -> None:
        """Close the file. An uncommitted batch is discarded (call commit() first to keep it):
        a half-applied batch must never become durable."""
        if self._conn.in_transaction:
            self._conn.execute("ROLLBACK")
        self._conn.close()


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
