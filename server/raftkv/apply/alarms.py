"""Cluster alarms (NOSPACE, CORRUPT): replicated, persisted, and what they forbid while raised.

An alarm names a member and a type ("member 8e9e… ran out of space"). Alarms change only by
applying `AlarmRequest` entries, so every member holds the same set; they live in the backend
bucket `alarm` (key: member ID and type, big-endian; no value), so they survive restarts and
travel inside snapshots.

While an alarm is raised the state machine refuses some requests, as etcd 3.4's capped and
corrupt appliers do. The refusal happens at apply time, from replicated state, so it is the same
on every member whoever proposed the request:

- NOSPACE: Put, a Txn that puts anything and LeaseGrant fail with "database space exceeded";
  reads, deletes, compaction and lease revocation still work, so space can be reclaimed.
- CORRUPT: every replicated KV or lease write (Put, DeleteRange, write Txn, Compaction,
  LeaseGrant, LeaseRevoke) fails with "corrupt cluster". Reads served locally still work.

etcd counts only top-level puts of a Txn; a put nested in an inner Txn counts here too, since it
writes just the same.
"""

from __future__ import annotations

import struct
from typing import Any, Protocol

from raftkv.apply.errors import ApplyError
from raftkv.pb.etcdserverpb import rpc_pb2

ALARM_BUCKET = "alarm"

_KEY = struct.Struct(">QI")  # member ID, alarm type

NOSPACE = rpc_pb2.NOSPACE
CORRUPT = rpc_pb2.CORRUPT
NONE = rpc_pb2.NONE

# Replicated requests each raised alarm refuses (InternalRequest oneof names).
_CORRUPT_REFUSES = frozenset(
    {"put", "delete_range", "txn", "compaction", "lease_grant", "lease_revoke"}
)


class NoSpaceError(ApplyError):
    message = "etcdserver: mvcc: database space exceeded"


class CorruptClusterError(ApplyError):
    message = "etcdserver: corrupt cluster"


def txn_puts(txn: rpc_pb2.TxnRequest) -> bool:
    """True if any branch of `txn`, nested txns included, contains a put."""
    for op in (*txn.success, *txn.failure):
        kind = op.WhichOneof("request")
        if kind == "request_put" or (kind == "request_txn" and txn_puts(op.request_txn)):
            return True
    return False


def alarm_text(alarm: rpc_pb2.AlarmMember) -> str:
    """etcd's rendering of an alarm in `Status.errors` (protobuf text with a trailing space)."""
    return f"memberID:{alarm.memberID} alarm:{rpc_pb2.AlarmType.Name(alarm.alarm)} "


class AlarmBackend(Protocol):
    """What the alarm store needs of `raftkv.storage.backend.Backend`."""

    def create_bucket(self, name: str) -> None: ...
    def put(self, bucket: str, key: bytes, value: bytes) -> None: ...
    def delete(self, bucket: str, key: bytes) -> None: ...
    def range(
        self, bucket: str, start: bytes, end: bytes | None = None, limit: int = 0
    ) -> list[tuple[bytes, bytes]]: ...


class AlarmStore:
    """The raised alarms of the cluster; mutated only while applying committed entries."""

    def __init__(self, backend: AlarmBackend) -> None:
        self._backend = backend
        backend.create_bucket(ALARM_BUCKET)
        self._raised: set[tuple[int, int]] = {
            _KEY.unpack(k) for k, _ in backend.range(ALARM_BUCKET, b"", b"\0")
        }

    def get(self, alarm: int = NONE) -> list[rpc_pb2.AlarmMember]:
        """Raised alarms of type `alarm` (NONE: all), by type then member ID."""
        return [
            rpc_pb2.AlarmMember(memberID=member, alarm=kind)
            for kind, member in sorted((k, m) for m, k in self._raised)
            if alarm == NONE or kind == alarm
        ]

    def is_raised(self, alarm: int, member_id: int = 0) -> bool:
        """Whether an alarm of this type is raised (for `member_id`; 0: for any member)."""
        if member_id:
            return (member_id, alarm) in self._raised
        return any(kind == alarm for _, kind in self._raised)

    def activate(self, member_id: int, alarm: int) -> rpc_pb2.AlarmMember | None:
        """Raise an alarm; None if it was already raised (or names no alarm type)."""
        if alarm == NONE or (member_id, alarm) in self._raised:
            return None
        self._raised.add((member_id, alarm))
        self._backend.put(ALARM_BUCKET, _KEY.pack(member_id, alarm), b"")
        return rpc_pb2.AlarmMember(memberID=member_id, alarm=alarm)

    def deactivate(self, member_id: int, alarm: int) -> rpc_pb2.AlarmMember | None:
        """Clear an alarm; None if it was not raised."""
        if (member_id, alarm) not in self._raised:
            return None
        self._raised.discard((member_id, alarm))
        self._backend.delete(ALARM_BUCKET, _KEY.pack(member_id, alarm))
        return rpc_pb2.AlarmMember(memberID=member_id, alarm=alarm)

    def apply(self, request: rpc_pb2.AlarmRequest) -> list[rpc_pb2.AlarmMember]:
        """Apply a replicated AlarmRequest; returns the alarms for etcd's AlarmResponse: the
        matching ones for GET, the one changed (or none) for ACTIVATE and DEACTIVATE."""
        if request.action == rpc_pb2.AlarmRequest.GET:
            return self.get(request.alarm)
        if request.action == rpc_pb2.AlarmRequest.ACTIVATE:
            changed = self.activate(request.memberID, request.alarm)
        else:
            changed = self.deactivate(request.memberID, request.alarm)
        return [] if changed is None else [changed]

    def check(self, kind: str | None, body: Any) -> None:
        """Raise etcd's error if a raised alarm forbids applying this request."""
        if not self._raised or kind is None:
            return
        if kind in _CORRUPT_REFUSES and self.is_raised(CORRUPT):
            raise CorruptClusterError()
        if self.is_raised(NOSPACE) and (
            kind in ("put", "lease_grant") or (kind == "txn" and txn_puts(body))
        ):
            raise NoSpaceError()
