"""The write-ahead log: Raft's entries, hard state and snapshot markers, durably, in order.

Shape, and why:

* **Segments.** The log is a sequence of files ``{seq:016x}-{first_index:016x}.wal``: `seq`
  counts up from 1 without gaps, `first_index` is the index the next entry appended had when the
  segment was cut (the last index + 1). A segment is cut when the current one has reached
  `segment_bytes`; it is created whole (temp file, fsync, rename, fsync directory), so a segment
  file never exists half-made.
* **Self-describing segments.** Every segment begins with the magic ``RKVWAL\\0\\1`` and three
  records: the metadata, the latest hard state and the latest snapshot marker. Older segments can
  therefore be deleted (`release_before`) without losing anything still needed.
* **Records.** ``u32 payload length | u8 type | u32 crc32(payload) | u32 crc32(previous 9 bytes)
  | payload`` (little-endian). The CRC is per record, not chained: each record verifies on its
  own, so after a failed record the reader can tell whether any valid record follows it (see
  recovery). The header has its own CRC so that a damaged length is never trusted. Ordering and
  splicing are checked by the log rules below and by the segment sequence, not by the CRC.
  Payloads: metadata = the caller's bytes; entry = serialized Entry; hard state = serialized
  HardState; snapshot marker = ``u64 index | u64 term``.
* **Log rules** (`_Log`, shared by writing and reading so both agree byte for byte): an entry
  may not lie at or below the snapshot marker nor leave a gap; an entry at an index <= the last
  index replaces that index and everything after it (Raft's truncation). A snapshot marker at
  (i, t) keeps the entries after i only if the log holds i with term t, otherwise it discards the
  log, as Raft does when it restores a snapshot that does not match.
* **Durability.** `save` writes all its records with one write and makes them durable with one
  `os.fdatasync` before returning; `GroupCommitWAL` shares one fdatasync among concurrent callers.
  A failed write or fsync poisons the WAL (WALFailedError from then on): after a failed fsync
  what reached the disk is unknown, so the member must restart and recover.
* **Recovery.** A record that is incomplete or fails its CRC in the LAST segment, with no valid
  record anywhere after it, is a torn write of a batch that was never acknowledged: it and
  everything after it are truncated, with a warning naming the file and offset. Any other bad
  record, a segment missing from the sequence, or records that break the log rules raise
  CorruptWALError naming the file and byte offset; nothing is skipped silently. An out-of-order
  partial write of an unacknowledged batch (a lost page followed by intact ones) is therefore
  reported as corruption: indistinguishable from bit rot in an acknowledged record, so it fails
  safe.
"""

import asyncio
import itertools
import logging
import os
import re
import struct
import time
import zlib
from array import array
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from enum import IntEnum
from pathlib import Path

from google.protobuf.message import DecodeError

from raftkv.pb.raftpb.raft_pb2 import Entry, HardState
from raftkv.storage import fileutil
from raftkv.storage.errors import (
    CorruptWALError,
    WALClosedError,
    WALExistsError,
    WALFailedError,
)

log = logging.getLogger(__name__)

DEFAULT_SEGMENT_BYTES = 64 << 20

MAGIC = b"RKVWAL\x00\x01"
_HEAD = struct.Struct("<IBI")  # payload length, record type, crc32(payload)
_HEAD_CRC = struct.Struct("<I")  # crc32 of the 9 bytes above
HEADER_SIZE = _HEAD.size + _HEAD_CRC.size
_MARKER = struct.Struct("<QQ")  # snapshot index, snapshot term

_SEGMENT_NAME = re.compile(r"^([0-9a-f]{16})-([0-9a-f]{16})\.wal$")
_TEMP_PATTERN = "*.wal" + fileutil.TEMP_SUFFIX


class RecordType(IntEnum):
    METADATA = 1
    ENTRY = 2
    HARD_STATE = 3
    SNAPSHOT = 4


_PREAMBLE = (RecordType.METADATA, RecordType.HARD_STATE, RecordType.SNAPSHOT)
_RECORD_TYPES = frozenset(RecordType)


def segment_name(seq: int, first_index: int) -> str:
    return f"{seq:016x}-{first_index:016x}.wal"


def _frame(rtype: RecordType, payload: bytes) -> bytes:
    head = _HEAD.pack(len(payload), rtype, zlib.crc32(payload))
    return head + _HEAD_CRC.pack(zlib.crc32(head)) + payload


def _copy(hard_state: HardState) -> HardState:
    copy = HardState()
    copy.CopyFrom(hard_state)
    return copy


def _preamble(metadata: bytes, hard_state: HardState, snap_index: int, snap_term: int) -> bytes:
    return b"".join(
        (
            MAGIC,
            _frame(RecordType.METADATA, metadata),
            _frame(RecordType.HARD_STATE, hard_state.SerializeToString()),
            _frame(RecordType.SNAPSHOT, _MARKER.pack(snap_index, snap_term)),
        )
    )


@dataclass(frozen=True)
class _Segment:
    seq: int
    first_index: int
    path: Path


@dataclass(frozen=True)
class _Record:
    rtype: int
    payload: bytes
    offset: int


@dataclass(frozen=True)
class _Torn:
    offset: int
    reason: str


@dataclass
class WALContents:
    """What `WAL.open` recovered.

    `entries` are those strictly after the latest snapshot marker, with truncations applied;
    `hard_state` is the latest one saved (empty if none); the snapshot marker is (0, 0) if no
    snapshot was ever saved.
    """

    metadata: bytes
    hard_state: HardState
    snapshot_index: int
    snapshot_term: int
    entries: list[Entry] = field(default_factory=list)


class _Log:
    """The shape of the Raft log as the WAL has recorded it (indexes and terms only).

    Entries cover `offset + 1 .. last_index`. Normally `offset` is the snapshot marker's index.
    When older segments were released, the first remaining segment starts at some `first_index`
    whose predecessors are gone: `offset` then lies above the marker (a "released prefix"), and a
    later marker must cover it before the log is complete (`incomplete`).
    """

    def __init__(self, *, keep_entries: bool) -> None:
        self.snap_index = 0
        self.snap_term = 0
        self.offset = 0
        self.terms = array("Q")
        self.entries: list[Entry] | None = [] if keep_entries else None

    @property
    def last_index(self) -> int:
        return self.offset + len(self.terms)

    @property
    def incomplete(self) -> bool:
        return self.offset > self.snap_index

    def entry_problem(self, index: int) -> str | None:
        if index <= self.snap_index:
            return f"entry {index} is at or below the snapshot marker {self.snap_index}"
        if index > self.last_index + 1:
            return f"entry {index} leaves a gap after the last index {self.last_index}"
        return None

    def append(self, entry: Entry) -> None:
        if entry.index <= self.offset:
            # Rewrites part of a released prefix: what came before it is unknown anyway.
            self._reset(entry.index - 1)
        else:
            self._truncate_after(entry.index - 1)
        self.terms.append(entry.term)
        if self.entries is not None:
            self.entries.append(entry)

    def marker_problem(self, index: int, term: int) -> str | None:
        if index < self.snap_index:
            return f"snapshot marker {index} is below the previous marker {self.snap_index}"
        if index == self.snap_index and term != self.snap_term:
            return f"snapshot marker {index} has term {term}, the previous one {self.snap_term}"
        return None

    def apply_marker(self, index: int, term: int) -> None:
        if index <= self.offset:
            # The same marker again, or one inside/at the end of a released prefix (whose terms
            # are gone, so the entries after it are kept, as etcd does).
            pass
        elif index <= self.last_index and self.terms[index - self.offset - 1] == term:
            drop = index - self.offset
            del self.terms[:drop]
            if self.entries is not None:
                del self.entries[:drop]
            self.offset = index
        else:
            self._reset(index)
        self.snap_index, self.snap_term = index, term

    def release_prefix(self, first_index: int) -> None:
        """The first remaining segment starts at `first_index`; entries before it are gone."""
        if not self.terms and first_index - 1 > self.offset:
            self.offset = first_index - 1

    def _truncate_after(self, index: int) -> None:
        keep = index - self.offset
        del self.terms[keep:]
        if self.entries is not None:
            del self.entries[keep:]

    def _reset(self, offset: int) -> None:
        self.offset = offset
        del self.terms[:]
        if self.entries is not None:
            self.entries.clear()


def _frame_at(data: memoryview, pos: int) -> tuple[int, int, int] | str:
    """Check the record at `pos`: (type, payload start, payload end), or why it is not valid."""
    end = len(data)
    if end - pos < HEADER_SIZE:
        return "incomplete record header"
    length, rtype, crc = _HEAD.unpack_from(data, pos)
    (head_crc,) = _HEAD_CRC.unpack_from(data, pos + _HEAD.size)
    if zlib.crc32(data[pos : pos + _HEAD.size]) != head_crc:
        return "record header checksum mismatch"
    start = pos + HEADER_SIZE
    if start + length > end:
        return f"record of {length} bytes runs past the end of the file"
    if zlib.crc32(data[start : start + length]) != crc:
        return "record checksum mismatch"
    return rtype, start, start + length


def _valid_record_after(data: memoryview, start: int) -> int | None:
    """The offset of the first valid record beginning at or after `start`, if any."""
    if bytes(data[start:]).count(0) == len(data) - start:
        return None  # a zero-filled tail, as a crash while extending the file leaves
    for pos in range(start, len(data) - HEADER_SIZE + 1):
        if not isinstance(_frame_at(data, pos), str):
            return pos
    return None


def _scan(path: Path, raw: bytes, is_last: bool) -> tuple[list[_Record], _Torn | None]:
    """Every valid record of one segment, and the torn tail if the last segment has one."""
    if raw[: len(MAGIC)] != MAGIC:
        raise CorruptWALError(path, 0, "missing magic: not a raftkv WAL segment")
    data = memoryview(raw)
    records: list[_Record] = []
    pos = len(MAGIC)
    while pos < len(data):
        found = _frame_at(data, pos)
        if isinstance(found, str):
            if not is_last:
                raise CorruptWALError(path, pos, found)
            later = _valid_record_after(data, pos + 1)
            if later is not None:
                raise CorruptWALError(
                    path, pos, f"{found}, yet a valid record follows at offset {later}"
                )
            return records, _Torn(pos, found)
        rtype, start, end = found
        if rtype not in _RECORD_TYPES:
            raise CorruptWALError(path, pos, f"unknown record type {rtype}")
        records.append(_Record(rtype, bytes(data[start:end]), pos))
        pos = end
    return records, None


def _check_segment_bytes(segment_bytes: int) -> None:
    if segment_bytes <= 0:
        raise ValueError(f"segment_bytes must be positive, not {segment_bytes}")


def _list_segments(directory: Path) -> list[_Segment]:
    segments = []
    for p in directory.iterdir():
        m = _SEGMENT_NAME.match(p.name)
        if m:
            segments.append(_Segment(int(m.group(1), 16), int(m.group(2), 16), p))
    segments.sort(key=lambda s: s.seq)
    for prev, cur in itertools.pairwise(segments):
        if cur.seq != prev.seq + 1:
            raise CorruptWALError(
                cur.path, 0, f"segment {prev.seq + 1} is missing between {prev.path.name} and it"
            )
    return segments


class _Replay:
    """Feeds the records of each segment, in order, through the log rules."""

    def __init__(self) -> None:
        self.log = _Log(keep_entries=True)
        self.metadata: bytes | None = None
        self.hard_state = HardState()

    def segment(self, seg: _Segment, records: list[_Record], torn: _Torn | None, size: int) -> None:
        for n, want in enumerate(_PREAMBLE):
            if n >= len(records) or records[n].rtype != want:
                where = records[n].offset if n < len(records) else torn.offset if torn else size
                raise CorruptWALError(
                    seg.path, where, "segment does not begin with metadata, hard state, snapshot"
                )
        first = self.metadata is None
        if not first and seg.first_index != self.log.last_index + 1:
            raise CorruptWALError(
                seg.path,
                0,
                f"segment starts at index {seg.first_index} but the log before it "
                f"ends at {self.log.last_index}",
            )
        for n, rec in enumerate(records):
            self._record(seg.path, rec, preamble=n < len(_PREAMBLE), first=first)
            if first and n == len(_PREAMBLE) - 1:
                if seg.first_index <= self.log.snap_index:
                    raise CorruptWALError(
                        seg.path,
                        rec.offset,
                        f"segment starts at index {seg.first_index}, at or below its "
                        f"snapshot marker {self.log.snap_index}",
                    )
                self.log.release_prefix(seg.first_index)

    def finish(self, first: _Segment) -> WALContents:
        if self.log.incomplete:
            raise CorruptWALError(
                first.path,
                0,
                f"entries {self.log.snap_index + 1}..{self.log.offset} are missing: segments "
                "before this one were deleted but no snapshot marker covers them",
            )
        assert self.metadata is not None and self.log.entries is not None
        return WALContents(
            metadata=self.metadata,
            hard_state=self.hard_state,
            snapshot_index=self.log.snap_index,
            snapshot_term=self.log.snap_term,
            entries=self.log.entries,
        )

    def _record(self, path: Path, rec: _Record, *, preamble: bool, first: bool) -> None:
        try:
            if rec.rtype == RecordType.METADATA:
                if not preamble:
                    raise CorruptWALError(path, rec.offset, "metadata record after the preamble")
                if self.metadata is not None and rec.payload != self.metadata:
                    raise CorruptWALError(path, rec.offset, "metadata differs from earlier ones")
                self.metadata = rec.payload
            elif rec.rtype == RecordType.HARD_STATE:
                hs = HardState.FromString(rec.payload)
                if preamble and not first and hs != self.hard_state:
                    raise CorruptWALError(path, rec.offset, "preamble hard state disagrees")
                self.hard_state = hs
            elif rec.rtype == RecordType.SNAPSHOT:
                if len(rec.payload) != _MARKER.size:
                    raise CorruptWALError(path, rec.offset, "snapshot marker of the wrong size")
                index, term = _MARKER.unpack(rec.payload)
                if (
                    preamble
                    and not first
                    and (index, term)
                    != (
                        self.log.snap_index,
                        self.log.snap_term,
                    )
                ):
                    raise CorruptWALError(path, rec.offset, "preamble snapshot marker disagrees")
                problem = None if preamble and first else self.log.marker_problem(index, term)
                if problem:
                    raise CorruptWALError(path, rec.offset, problem)
                self.log.apply_marker(index, term)
            else:
                entry = Entry.FromString(rec.payload)
                problem = self.log.entry_problem(entry.index)
                if problem:
                    raise CorruptWALError(path, rec.offset, problem)
                self.log.append(entry)
        except DecodeError as exc:
            raise CorruptWALError(path, rec.offset, f"undecodable payload: {exc}") from exc


class WAL:
    """A durable Raft log in one directory. Not thread-safe: one caller (or GroupCommitWAL).

    Build it with `WAL.create` or `WAL.open`. Counters for metrics: `fsync_count` (fdatasyncs
    that made records durable; the fsyncs of creating a segment are not counted),
    `entries_written`, `bytes_written` (record bytes appended) and `last_fsync_seconds`.
    """

    def __init__(
        self,
        directory: Path,
        segments: list[_Segment],
        metadata: bytes,
        hard_state: HardState,
        wal_log: _Log,
        segment_bytes: int,
    ) -> None:
        """Internal: use WAL.create or WAL.open."""
        self._dir = directory
        self._segments = segments
        self._metadata = metadata
        self._hard_state = hard_state
        self._log = wal_log
        self._segment_bytes = segment_bytes
        tail = segments[-1].path
        self._fd = os.open(tail, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
        self._size = os.fstat(self._fd).st_size
        self._dirty = False
        self._closed = False
        self._failure: BaseException | None = None
        self.fsync_count = 0
        self.entries_written = 0
        self.bytes_written = 0
        self.last_fsync_seconds = 0.0

    # -- construction -------------------------------------------------------------------------

    @staticmethod
    def exists(directory: Path) -> bool:
        directory = Path(directory)
        return directory.is_dir() and any(_SEGMENT_NAME.match(p.name) for p in directory.iterdir())

    @classmethod
    def create(
        cls, directory: Path, metadata: bytes, *, segment_bytes: int = DEFAULT_SEGMENT_BYTES
    ) -> "WAL":
        """Create a new WAL holding `metadata`; WALExistsError if `directory` has one."""
        directory = Path(directory)
        _check_segment_bytes(segment_bytes)
        if cls.exists(directory):
            raise WALExistsError(f"a WAL already exists in {directory}")
        if not directory.is_dir():
            directory.mkdir(parents=True)
            fileutil.fsync_dir(directory.parent)
        fileutil.remove_temp_files(directory, _TEMP_PATTERN)
        seg = _Segment(1, 1, directory / segment_name(1, 1))
        fileutil.atomic_write(seg.path, _preamble(metadata, HardState(), 0, 0))
        return cls(directory, [seg], metadata, HardState(), _Log(keep_entries=False), segment_bytes)

    @classmethod
    def open(
        cls, directory: Path, *, segment_bytes: int = DEFAULT_SEGMENT_BYTES
    ) -> tuple["WAL", WALContents]:
        """Recover the WAL in `directory` and open it for appending (see the module docstring)."""
        directory = Path(directory)
        _check_segment_bytes(segment_bytes)
        fileutil.remove_temp_files(directory, _TEMP_PATTERN)
        segments = _list_segments(directory)
        if not segments:
            raise FileNotFoundError(f"no WAL segments in {directory}")
        replay = _Replay()
        torn: _Torn | None = None
        for n, seg in enumerate(segments):
            raw = seg.path.read_bytes()
            records, torn = _scan(seg.path, raw, n == len(segments) - 1)
            replay.segment(seg, records, torn, len(raw))
        contents = replay.finish(segments[0])
        if torn is not None:
            tail = segments[-1].path
            log.warning(
                "WAL %s: torn write at byte offset %d (%s); truncating %d bytes",
                tail,
                torn.offset,
                torn.reason,
                tail.stat().st_size - torn.offset,
            )
            with open(tail, "r+b") as f:
                f.truncate(torn.offset)
                os.fsync(f.fileno())
        writer_log = replay.log
        writer_log.entries = None
        wal = cls(
            directory,
            segments,
            contents.metadata,
            _copy(contents.hard_state),
            writer_log,
            segment_bytes,
        )
        return wal, contents

    # -- introspection ------------------------------------------------------------------------

    @property
    def directory(self) -> Path:
        return self._dir

    @property
    def segment_paths(self) -> list[Path]:
        return [s.path for s in self._segments]

    @property
    def last_index(self) -> int:
        return self._log.last_index

    @property
    def snapshot_index(self) -> int:
        return self._log.snap_index

    @property
    def hard_state(self) -> HardState:
        return _copy(self._hard_state)

    # -- writing ------------------------------------------------------------------------------

    def save(
        self, hard_state: HardState | None, entries: Sequence[Entry], *, sync: bool = True
    ) -> None:
        """Append `entries`, then `hard_state` if it changed, and make them durable.

        `entries` must be contiguous; the first may rewrite an index <= last_index (truncating
        the log there) but may not leave a gap nor lie at or below the snapshot marker
        (ValueError, nothing written). Returns once one fdatasync covers all the records;
        writes nothing and does not sync if there is nothing new. `sync=False` (Raft's
        `must_sync` is false: only the commit index moved) writes without fdatasync; the next
        synced save covers those records too.
        """
        if self._append(hard_state, entries) and sync:
            self._sync()

    def save_snapshot(self, index: int, term: int) -> None:
        """Durably record that a snapshot at (index, term) exists (see `_Log.apply_marker`).

        Save the snapshot file first: after a crash the marker must never point at nothing.
        """
        self._append_snapshot(index, term)
        self._sync()

    def release_before(self, index: int) -> list[Path]:
        """Delete the oldest segments that hold only entries below `index`; return their paths.

        Call it once a snapshot at `index` is durable (WAL marker and snapshot file). A segment
        goes only if the next one was cut at `first_index <= index`, so the entries after the
        snapshot, and its marker, all stay; the last segment always stays.
        """
        self._check_writable()
        if index > self._log.snap_index:
            raise ValueError(
                f"release_before({index}) is beyond the latest snapshot marker "
                f"{self._log.snap_index}: it would lose entries"
            )
        self._sync()  # a marker appended but not yet synced must be durable first
        keep = 0
        for n in range(1, len(self._segments)):
            if self._segments[n].first_index <= index:
                keep = n
        released = self._segments[:keep]
        for seg in released:  # oldest first, so a crash leaves a contiguous suffix
            seg.path.unlink()
        if released:
            fileutil.fsync_dir(self._dir)
            self._segments = self._segments[keep:]
        return [s.path for s in released]

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        os.close(self._fd)

    # The pieces below let GroupCommitWAL append several calls' records and sync once.

    def _append(self, hard_state: HardState | None, entries: Sequence[Entry]) -> bool:
        """Write (not sync) the records of one save(); False if there was nothing to write."""
        self._check_writable()
        if entries:
            first = entries[0].index
            for n, e in enumerate(entries):
                if e.index != first + n:
                    raise ValueError(f"entries not contiguous: {e.index} follows {first + n - 1}")
            problem = self._log.entry_problem(first)
            if problem:
                raise ValueError(problem)
        records = [_frame(RecordType.ENTRY, e.SerializeToString()) for e in entries]
        new_hard_state = None
        if hard_state is not None and hard_state != self._hard_state:
            new_hard_state = _copy(hard_state)
            records.append(_frame(RecordType.HARD_STATE, new_hard_state.SerializeToString()))
        if not records:
            return False
        self._write(b"".join(records))
        for e in entries:
            self._log.append(e)
        if new_hard_state is not None:
            self._hard_state = new_hard_state
        self.entries_written += len(entries)
        return True

    def _append_snapshot(self, index: int, term: int) -> None:
        self._check_writable()
        problem = self._log.marker_problem(index, term)
        if problem:
            raise ValueError(problem)
        self._write(_frame(RecordType.SNAPSHOT, _MARKER.pack(index, term)))
        self._log.apply_marker(index, term)

    def _sync(self) -> None:
        if not self._dirty:
            return
        start = time.perf_counter()
        try:
            os.fdatasync(self._fd)
        except OSError as exc:
            raise self._fail("fdatasync", exc) from exc
        self.last_fsync_seconds = time.perf_counter() - start
        self.fsync_count += 1
        self._dirty = False

    def _write(self, blob: bytes) -> None:
        if self._size >= self._segment_bytes:
            self._cut()
        try:
            fileutil.write_all(self._fd, blob)
        except OSError as exc:
            raise self._fail("write", exc) from exc
        self._size += len(blob)
        self.bytes_written += len(blob)
        self._dirty = True

    def _cut(self) -> None:
        """Start the next segment, self-describing, after making the current one durable."""
        self._sync()
        seq = self._segments[-1].seq + 1
        first_index = self._log.last_index + 1
        seg = _Segment(seq, first_index, self._dir / segment_name(seq, first_index))
        preamble = _preamble(
            self._metadata, self._hard_state, self._log.snap_index, self._log.snap_term
        )
        try:
            fileutil.atomic_write(seg.path, preamble)
            fd = os.open(seg.path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
        except OSError as exc:
            raise self._fail("segment creation", exc) from exc
        os.close(self._fd)
        self._fd = fd
        self._size = len(preamble)
        self._segments.append(seg)

    def _fail(self, what: str, exc: OSError) -> WALFailedError:
        self._failure = exc
        return WALFailedError(f"WAL {what} failed in {self._dir}: {exc}")

    def _check_writable(self) -> None:
        if self._failure is not None:
            raise WALFailedError(
                f"WAL in {self._dir} refuses writes after an earlier failure: {self._failure}"
            ) from self._failure
        if self._closed:
            raise WALClosedError(f"WAL in {self._dir} is closed")


# -- group commit --------------------------------------------------------------------------------


@dataclass(frozen=True)
class FlushStats:
    """One group commit: how many calls and entries one fdatasync made durable, and its time."""

    calls: int
    entries: int
    fsync_seconds: float


@dataclass
class _Op:
    future: asyncio.Future[None]
    hard_state: HardState | None = None
    entries: Sequence[Entry] = ()
    snapshot: tuple[int, int] | None = None
    release: int | None = None
    sync: bool = True


class GroupCommitWAL:
    """asyncio front of a WAL: concurrent callers share fdatasyncs (group commit).

    Calls queue in the order they are made. A single worker thread writes every queued call's
    records, in that order, then fdatasyncs once; calls made meanwhile queue for the next round.
    Each caller resumes only once an fdatasync has covered its records. A caller cancelled while
    waiting does not withdraw its records (they may already be on disk). An invalid call (see
    `WAL.save`) fails alone; a failed write or fsync fails every waiting caller with
    WALFailedError, and every later call too. Messages passed in must not be mutated before the
    call returns. `on_flush`, if given, is called on the event loop after each group commit.
    """

    def __init__(self, wal: WAL, *, on_flush: Callable[[FlushStats], None] | None = None) -> None:
        self._wal = wal
        self._on_flush = on_flush
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="raftkv-wal")
        self._queue: list[_Op] = []
        self._flusher: asyncio.Task[None] | None = None
        self._failure: WALFailedError | None = None
        self._closing = False
        self.calls = 0
        self.fsync_count = 0
        self.entries_written = 0
        self.last_group_calls = 0
        self.last_group_entries = 0
        self.max_group_calls = 0

    @property
    def wal(self) -> WAL:
        """The underlying WAL: read its properties only; never write to it directly."""
        return self._wal

    @property
    def mean_entries_per_fsync(self) -> float:
        return self.entries_written / self.fsync_count if self.fsync_count else 0.0

    async def save(
        self, hard_state: HardState | None, entries: Sequence[Entry], *, sync: bool = True
    ) -> None:
        """Like WAL.save; returns once the records are durable (written, if not `sync`)."""
        self._check_open()
        if hard_state is None and not entries:
            return
        op = _Op(self._future(), hard_state=hard_state, entries=list(entries), sync=sync)
        await self._submit(op)

    async def save_snapshot(self, index: int, term: int) -> None:
        """Like WAL.save_snapshot; returns once the marker is durable."""
        self._check_open()
        await self._submit(_Op(self._future(), snapshot=(index, term)))

    async def release_before(self, index: int) -> None:
        """Like WAL.release_before, ordered after every call made before it."""
        self._check_open()
        await self._submit(_Op(self._future(), release=index))

    async def close(self) -> None:
        """Wait for queued calls to finish, then close the WAL. Later calls: WALClosedError."""
        if self._closing:
            return
        self._closing = True
        if self._flusher is not None:
            await self._flusher
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, self._wal.close)
        self._executor.shutdown(wait=True)

    def _check_open(self) -> None:
        if self._failure is not None:
            raise WALFailedError(str(self._failure)) from self._failure.__cause__
        if self._closing:
            raise WALClosedError("the WAL is closed")

    @staticmethod
    def _future() -> asyncio.Future[None]:
        return asyncio.get_running_loop().create_future()

    async def _submit(self, op: _Op) -> None:
        self._queue.append(op)
        self.calls += 1
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.get_running_loop().create_task(self._flush_loop())
        await op.future  # cancelling it leaves the op queued: the flusher skips done futures

    async def _flush_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while self._queue:
            batch, self._queue = self._queue, []
            try:
                errors, fsyncs, seconds = await loop.run_in_executor(
                    self._executor, self._write_batch, batch
                )
            except BaseException as exc:
                failed = exc if isinstance(exc, WALFailedError) else None
                if failed is None:
                    failed = WALFailedError(f"group commit aborted: {exc!r}")
                    failed.__cause__ = exc
                self._failure = failed
                for op in batch + self._queue:
                    if not op.future.done():
                        op.future.set_exception(failed)
                self._queue = []
                if not isinstance(exc, Exception):
                    raise
                return
            entries = 0
            for op, error in zip(batch, errors, strict=True):
                if error is None:
                    entries += len(op.entries)
                if not op.future.done():
                    if error is None:
                        op.future.set_result(None)
                    else:
                        op.future.set_exception(error)
            self.fsync_count += fsyncs
            self.entries_written += entries
            self.last_group_calls = len(batch)
            self.last_group_entries = entries
            self.max_group_calls = max(self.max_group_calls, len(batch))
            if self._on_flush is not None:
                self._on_flush(FlushStats(len(batch), entries, seconds))

    def _write_batch(self, batch: list[_Op]) -> tuple[list[ValueError | None], int, float]:
        """Worker thread: write every op in order, then one fdatasync for all of them (none if
        no op asked for one)."""
        wal = self._wal
        before = wal.fsync_count
        errors: list[ValueError | None] = []
        must_sync = any(op.sync for op in batch)
        for op in batch:
            try:
                if op.snapshot is not None:
                    wal._append_snapshot(*op.snapshot)
                elif op.release is not None:
                    wal.release_before(op.release)
                else:
                    wal._append(op.hard_state, op.entries)
                errors.append(None)
            except ValueError as exc:
                errors.append(exc)
        if must_sync:
            wal._sync()
        fsyncs = wal.fsync_count - before
        return errors, fsyncs, wal.last_fsync_seconds if fsyncs else 0.0
