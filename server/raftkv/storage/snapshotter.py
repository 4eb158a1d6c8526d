"""Snapshot files: one Raft Snapshot per file, written atomically, verified on every load.

File name ``{term:016x}-{index:016x}.snap``; content ``RKVSNAP\\1`` (8 bytes) | u64 payload
length | SHA-256 of the payload (32 bytes) | payload (a serialized Snapshot), little-endian.
SHA-256 rather than CRC32 because a snapshot carries the whole state machine and may be large.
A load checks the magic, the exact file size, the digest, and that the term and index inside
match the name, so a truncated, damaged or misnamed file is never taken for a snapshot.

Ordering duty of the caller: save the snapshot file before `WAL.save_snapshot`, and call
`WAL.release_before` only after both, so the WAL never points at a snapshot that is not on disk.
Because the WAL may already be released, a corrupt newest snapshot is an error, not a cue to
fall back to an older one, unless the caller says it knows better (`allow_fallback=True`).
"""

import hashlib
import logging
import re
import struct
from pathlib import Path

from google.protobuf.message import DecodeError

from raftkv.pb.raftpb.raft_pb2 import Snapshot
from raftkv.storage import fileutil
from raftkv.storage.errors import CorruptSnapshotError

log = logging.getLogger(__name__)

MAGIC = b"RKVSNAP\x01"
_HEADER = struct.Struct("<8sQ32s")  # magic, payload length, sha256(payload)
_NAME = re.compile(r"^([0-9a-f]{16})-([0-9a-f]{16})\.snap$")
SUFFIX = ".snap"
BROKEN_SUFFIX = ".broken"


def snapshot_name(term: int, index: int) -> str:
    return f"{term:016x}-{index:016x}{SUFFIX}"


class Snapshotter:
    """The snapshot files of one member, in `directory` (created if missing).

    Opening removes the temporary files an interrupted `save` left behind.
    """

    def __init__(self, directory: Path) -> None:
        self._dir = Path(directory)
        if not self._dir.is_dir():
            self._dir.mkdir(parents=True)
            fileutil.fsync_dir(self._dir.parent)
        for p in fileutil.remove_temp_files(self._dir, "*" + SUFFIX + fileutil.TEMP_SUFFIX):
            log.warning("removed %s, left by an interrupted snapshot save", p)

    @property
    def directory(self) -> Path:
        return self._dir

    def save(self, snapshot: Snapshot) -> Path:
        """Write `snapshot` durably (temp file, fsync, rename, fsync directory); return its path."""
        meta = snapshot.metadata
        if meta.index == 0:
            raise ValueError("refusing to save an empty snapshot (index 0)")
        payload = snapshot.SerializeToString()
        header = _HEADER.pack(MAGIC, len(payload), hashlib.sha256(payload).digest())
        path = self._dir / snapshot_name(meta.term, meta.index)
        fileutil.atomic_write(path, header + payload)
        return path

    def paths(self) -> list[Path]:
        """The snapshot files, newest (highest index) first."""
        found = []
        for p in self._dir.iterdir():
            m = _NAME.match(p.name)
            if m:
                found.append((int(m.group(2), 16), int(m.group(1), 16), p))
        return [p for _, _, p in sorted(found, reverse=True)]

    def load(self, path: Path) -> Snapshot:
        """Read and verify one snapshot file; CorruptSnapshotError if anything is off."""
        path = Path(path)
        m = _NAME.match(path.name)
        if not m:
            raise CorruptSnapshotError(path, "name is not {term:016x}-{index:016x}.snap")
        raw = path.read_bytes()
        if len(raw) < _HEADER.size:
            raise CorruptSnapshotError(path, f"only {len(raw)} bytes: truncated header")
        magic, length, digest = _HEADER.unpack_from(raw)
        if magic != MAGIC:
            raise CorruptSnapshotError(path, "bad magic: not a raftkv snapshot file")
        if len(raw) != _HEADER.size + length:
            raise CorruptSnapshotError(
                path, f"header says {length} payload bytes, file holds {len(raw) - _HEADER.size}"
            )
        payload = raw[_HEADER.size :]
        if hashlib.sha256(payload).digest() != digest:
            raise CorruptSnapshotError(path, "SHA-256 of the payload does not match")
        try:
            snapshot = Snapshot.FromString(payload)
        except DecodeError as exc:
            raise CorruptSnapshotError(path, f"undecodable payload: {exc}") from exc
        term, index = int(m.group(1), 16), int(m.group(2), 16)
        if (snapshot.metadata.term, snapshot.metadata.index) != (term, index):
            raise CorruptSnapshotError(
                path,
                f"holds term {snapshot.metadata.term} index {snapshot.metadata.index}, "
                "not what its name says",
            )
        return snapshot

    def load_newest(self, *, allow_fallback: bool = False) -> Snapshot | None:
        """The newest snapshot, or None if there is none.

        A corrupt newest file raises CorruptSnapshotError. With `allow_fallback=True` it is
        renamed to ``*.broken`` (kept for inspection), logged, and the next older one is tried.
        """
        for path in self.paths():
            try:
                return self.load(path)
            except CorruptSnapshotError as exc:
                if not allow_fallback:
                    raise
                broken = path.with_name(path.name + BROKEN_SUFFIX)
                log.warning("%s; moved aside to %s, trying an older snapshot", exc, broken.name)
                path.rename(broken)
                fileutil.fsync_dir(self._dir)
        return None

    def purge(self, keep: int = 5) -> list[Path]:
        """Delete all but the `keep` newest snapshot files; return what was deleted."""
        if keep < 1:
            raise ValueError(f"keep must be at least 1, not {keep}")
        doomed = self.paths()[keep:]
        for p in doomed:
            p.unlink()
        if doomed:
            fileutil.fsync_dir(self._dir)
        return doomed
