"""The incremental backup format, and replaying it into a restored store.

An incremental object is `MAGIC` followed by length-delimited `mvccpb.Event` messages (a varint
byte count, then the message, the framing protobuf's own `writeDelimitedTo` uses), oldest
first, exactly as a watch over the whole keyspace with `prev_kv` delivered them. It carries
key-value changes only: each PUT with its value and the lease ID the key was put with, each
DELETE with the key. Leases themselves, auth users and roles and the member list live in the
full snapshot only.

Replay re-executes the events through the MVCC store's own write transactions, one per
revision, so every row gets the same (main, sub) revision, create revision and version as on
the source; each result is checked against the event, and the revisions must follow each other
without a gap (every revision of an etcd-style store changes at least one key). A mismatch
means the backup does not belong on this snapshot and fails the restore.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import BinaryIO

from raftkv.backup.errors import CorruptBackupError
from raftkv.mvcc import KVStore, WriteTxn
from raftkv.pb.mvccpb.kv_pb2 import Event

MAGIC = b"RAFTKV-EVENTS-1\n"
# An event holds one key and value of at most a request's size; anything above is damage.
_MAX_RECORD = 1 << 30


def encode_varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def encode_record(event: Event) -> bytes:
    body = event.SerializeToString()
    return encode_varint(len(body)) + body


def _read_varint(stream: BinaryIO, name: str) -> int | None:
    """The next varint; None at a clean end of the stream."""
    value = 0
    shift = 0
    while True:
        byte = stream.read(1)
        if not byte:
            if shift == 0:
                return None
            raise CorruptBackupError(f"{name} is truncated inside a record length")
        value |= (byte[0] & 0x7F) << shift
        if not byte[0] & 0x80:
            return value
        shift += 7
        if shift > 63:
            raise CorruptBackupError(f"{name} has a malformed record length")


def read_events(stream: BinaryIO, name: str) -> Iterator[Event]:
    """The events of an incremental object; CorruptBackupError on damage or truncation."""
    if stream.read(len(MAGIC)) != MAGIC:
        raise CorruptBackupError(f"{name} is not a raftkv incremental backup (bad header)")
    while True:
        length = _read_varint(stream, name)
        if length is None:
            return
        if length > _MAX_RECORD:
            raise CorruptBackupError(f"{name} has an implausible record length {length}")
        body = stream.read(length)
        if len(body) != length:
            raise CorruptBackupError(f"{name} is truncated: a record ends early")
        try:
            event = Event.FromString(body)
        except Exception as error:  # protobuf's DecodeError and friends
            raise CorruptBackupError(f"{name} holds an undecodable event: {error}") from None
        yield event


def grouped(events: Iterable[Event], name: str) -> Iterator[tuple[int, list[Event]]]:
    """The events of each revision together, checking revisions never go backwards."""
    revision = 0
    group: list[Event] = []
    for event in events:
        rev = event.kv.mod_revision
        if rev < revision:
            raise CorruptBackupError(f"{name}: revision {rev} after revision {revision}")
        if rev != revision and group:
            yield revision, group
            group = []
        revision = rev
        group.append(event)
    if group:
        yield revision, group


def replay(
    store: KVStore,
    events: Iterable[Event],
    *,
    until: int,
    name: str,
    on_revision: Callable[[int], object] | None = None,
) -> int:
    """Apply the events of revisions up to `until` to `store`, which must be exactly at the
    revision before the first; returns the store's revision afterwards."""
    for revision, group in grouped(events, name):
        if revision > until:
            break
        expected = store.current_revision + 1
        if revision != expected:
            raise CorruptBackupError(
                f"{name} continues at revision {revision}, but the restored keyspace is at "
                f"revision {store.current_revision}: the backups do not fit together"
            )
        with store.write() as txn:
            for event in group:
                _apply(txn, event, name)
        if store.current_revision != revision:
            raise CorruptBackupError(f"{name}: revision {revision} changed nothing on replay")
        if on_revision is not None:
            on_revision(revision)
    return store.current_revision


def _apply(txn: WriteTxn, event: Event, name: str) -> None:
    kv = event.kv
    if event.type == Event.PUT:
        txn.put(kv.key, kv.value, kv.lease)
        written = txn.events[-1].kv
        if (written.create_revision, written.version) != (kv.create_revision, kv.version):
            raise CorruptBackupError(
                f"{name}: replaying the put of {kv.key!r} at revision {kv.mod_revision} gives "
                f"create revision {written.create_revision} and version {written.version}, the "
                f"source had {kv.create_revision} and {kv.version}: the backups do not fit "
                "together"
            )
    elif event.type == Event.DELETE:
        if len(txn.delete_range(kv.key)) != 1:
            raise CorruptBackupError(
                f"{name}: the delete of {kv.key!r} at revision {kv.mod_revision} finds no such "
                "key in the restored keyspace: the backups do not fit together"
            )
    else:
        raise CorruptBackupError(f"{name}: unknown event type {event.type}")
