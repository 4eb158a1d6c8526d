"""Typed, immutable results of client calls.

Callers should never have to touch protobuf messages: every response is turned into a small frozen
dataclass right where it arrives (`from_pb`), so results can be compared, hashed, printed and kept
after the call without aliasing a mutable message. Keys and values stay `bytes` (etcd keys are
arbitrary bytes); `as_str()` and `key_str` decode them as UTF-8 where that helps.

Enums use etcd's wire numbers, so `SortOrder.DESCEND` can be handed to protobuf unchanged.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator
from dataclasses import dataclass

from raftkv.pb.authpb import auth_pb2
from raftkv.pb.etcdserverpb import rpc_pb2
from raftkv.pb.mvccpb import kv_pb2
from raftkv.pb.v3electionpb import v3election_pb2

__all__ = [
    "Alarm",
    "AlarmType",
    "AuthStatus",
    "DeleteResult",
    "Event",
    "EventType",
    "GetResult",
    "HashKVResult",
    "Header",
    "KeyValue",
    "LeaderKey",
    "LeaseGrantResult",
    "LeaseKeepAliveResult",
    "LeaseTimeToLiveResult",
    "LeasesResult",
    "LockResult",
    "Member",
    "MemberAddResult",
    "MemberListResult",
    "OpResult",
    "Permission",
    "PermissionType",
    "PutResult",
    "SnapshotResult",
    "SortOrder",
    "SortTarget",
    "StatusResult",
    "TxnResult",
    "WatchBatch",
    "WatchFilter",
]


class SortOrder(enum.IntEnum):
    NONE = 0
    ASCEND = 1
    DESCEND = 2


class SortTarget(enum.IntEnum):
    KEY = 0
    VERSION = 1
    CREATE = 2
    MOD = 3
    VALUE = 4


class EventType(enum.IntEnum):
    PUT = 0
    DELETE = 1


class WatchFilter(enum.IntEnum):
    """Event kinds a watch can leave out."""

    NOPUT = 0
    NODELETE = 1


class AlarmType(enum.IntEnum):
    NONE = 0
    NOSPACE = 1
    CORRUPT = 2


class PermissionType(enum.IntEnum):
    READ = 0
    WRITE = 1
    READWRITE = 2


@dataclass(frozen=True, slots=True)
class Header:
    """Which cluster and member answered, and the store revision and raft term at that moment."""

    cluster_id: int
    member_id: int
    revision: int
    raft_term: int

    @classmethod
    def from_pb(cls, pb: rpc_pb2.ResponseHeader) -> Header:
        return cls(pb.cluster_id, pb.member_id, pb.revision, pb.raft_term)


@dataclass(frozen=True, slots=True)
class KeyValue:
    key: bytes
    value: bytes
    create_revision: int
    mod_revision: int
    version: int
    lease: int

    @classmethod
    def from_pb(cls, pb: kv_pb2.KeyValue) -> KeyValue:
        return cls(pb.key, pb.value, pb.create_revision, pb.mod_revision, pb.version, pb.lease)

    @property
    def key_str(self) -> str:
        return self.key.decode()

    def as_str(self) -> str:
        """The value decoded as UTF-8."""
        return self.value.decode()


def _kv_or_none(pb: kv_pb2.KeyValue, present: bool) -> KeyValue | None:
    return KeyValue.from_pb(pb) if present else None


@dataclass(frozen=True, slots=True)
class GetResult:
    """A range read. `count` is the number of keys in the range even when `limit` cut `kvs`."""

    header: Header
    kvs: tuple[KeyValue, ...]
    count: int
    more: bool

    @classmethod
    def from_pb(cls, pb: rpc_pb2.RangeResponse) -> GetResult:
        return cls(
            Header.from_pb(pb.header),
            tuple(KeyValue.from_pb(kv) for kv in pb.kvs),
            pb.count,
            pb.more,
        )

    @property
    def kv(self) -> KeyValue | None:
        """The first key-value, or None when nothing matched."""
        return self.kvs[0] if self.kvs else None

    @property
    def value(self) -> bytes | None:
        """The first key's value, or None when nothing matched."""
        return self.kvs[0].value if self.kvs else None

    def as_str(self) -> str | None:
        """The first key's value decoded as UTF-8, or None when nothing matched."""
        return self.kvs[0].as_str() if self.kvs else None

    def __iter__(self) -> Iterator[KeyValue]:
        return iter(self.kvs)


@dataclass(frozen=True, slots=True)
class PutResult:
    header: Header
    prev_kv: KeyValue | None

    @classmethod
    def from_pb(cls, pb: rpc_pb2.PutResponse) -> PutResult:
        return cls(Header.from_pb(pb.header), _kv_or_none(pb.prev_kv, pb.HasField("prev_kv")))


@dataclass(frozen=True, slots=True)
class DeleteResult:
    header: Header
    deleted: int
    prev_kvs: tuple[KeyValue, ...]

    @classmethod
    def from_pb(cls, pb: rpc_pb2.DeleteRangeResponse) -> DeleteResult:
        return cls(
            Header.from_pb(pb.header), pb.deleted, tuple(KeyValue.from_pb(kv) for kv in pb.prev_kvs)
        )


@dataclass(frozen=True, slots=True)
class TxnResult:
    """`succeeded` says which branch ran; `responses` has one result per op of that branch."""

    header: Header
    succeeded: bool
    responses: tuple[OpResult, ...]

    @classmethod
    def from_pb(cls, pb: rpc_pb2.TxnResponse) -> TxnResult:
        return cls(
            Header.from_pb(pb.header), pb.succeeded, tuple(_op_result(op) for op in pb.responses)
        )


OpResult = GetResult | PutResult | DeleteResult | TxnResult


def _op_result(pb: rpc_pb2.ResponseOp) -> OpResult:
    which = pb.WhichOneof("response")
    if which == "response_range":
        return GetResult.from_pb(pb.response_range)
    if which == "response_put":
        return PutResult.from_pb(pb.response_put)
    if which == "response_delete_range":
        return DeleteResult.from_pb(pb.response_delete_range)
    if which == "response_txn":
        return TxnResult.from_pb(pb.response_txn)
    raise ValueError(f"txn response op carries no response ({which!r})")


# -- watch ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Event:
    type: EventType
    kv: KeyValue
    prev_kv: KeyValue | None

    @classmethod
    def from_pb(cls, pb: kv_pb2.Event) -> Event:
        prev = _kv_or_none(pb.prev_kv, pb.HasField("prev_kv"))
        return cls(EventType(pb.type), KeyValue.from_pb(pb.kv), prev)

    @property
    def revision(self) -> int:
        """The revision of the change (the key's mod_revision)."""
        return self.kv.mod_revision

    @property
    def is_put(self) -> bool:
        return self.type is EventType.PUT

    @property
    def is_delete(self) -> bool:
        return self.type is EventType.DELETE


@dataclass(frozen=True, slots=True)
class WatchBatch:
    """The events of one watch response, in revision order.

    An empty batch is a progress notification: every change up to `header.revision` has been
    delivered already.
    """

    header: Header
    events: tuple[Event, ...]

    @property
    def revision(self) -> int:
        return self.header.revision

    @property
    def is_progress_notify(self) -> bool:
        return not self.events

    def __iter__(self) -> Iterator[Event]:
        return iter(self.events)


# -- lease ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LeaseGrantResult:
    header: Header
    id: int
    ttl: int

    @classmethod
    def from_pb(cls, pb: rpc_pb2.LeaseGrantResponse) -> LeaseGrantResult:
        return cls(Header.from_pb(pb.header), pb.ID, pb.TTL)


@dataclass(frozen=True, slots=True)
class LeaseKeepAliveResult:
    header: Header
    id: int
    ttl: int

    @classmethod
    def from_pb(cls, pb: rpc_pb2.LeaseKeepAliveResponse) -> LeaseKeepAliveResult:
        return cls(Header.from_pb(pb.header), pb.ID, pb.TTL)


@dataclass(frozen=True, slots=True)
class LeaseTimeToLiveResult:
    """`ttl` is the remaining seconds, -1 when the lease has expired or never existed."""

    header: Header
    id: int
    ttl: int
    granted_ttl: int
    keys: tuple[bytes, ...]

    @classmethod
    def from_pb(cls, pb: rpc_pb2.LeaseTimeToLiveResponse) -> LeaseTimeToLiveResult:
        return cls(Header.from_pb(pb.header), pb.ID, pb.TTL, pb.grantedTTL, tuple(pb.keys))


@dataclass(frozen=True, slots=True)
class LeasesResult:
    header: Header
    ids: tuple[int, ...]

    @classmethod
    def from_pb(cls, pb: rpc_pb2.LeaseLeasesResponse) -> LeasesResult:
        return cls(Header.from_pb(pb.header), tuple(lease.ID for lease in pb.leases))


# -- cluster and maintenance ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Member:
    """A cluster member. `name` and `client_urls` are empty until the member has started."""

    id: int
    name: str
    peer_urls: tuple[str, ...]
    client_urls: tuple[str, ...]
    is_learner: bool

    @classmethod
    def from_pb(cls, pb: rpc_pb2.Member) -> Member:
        return cls(pb.ID, pb.name, tuple(pb.peerURLs), tuple(pb.clientURLs), pb.isLearner)


@dataclass(frozen=True, slots=True)
class MemberListResult:
    header: Header
    members: tuple[Member, ...]

    @classmethod
    def from_pb(
        cls,
        pb: rpc_pb2.MemberListResponse
        | rpc_pb2.MemberRemoveResponse
        | rpc_pb2.MemberUpdateResponse
        | rpc_pb2.MemberPromoteResponse,
    ) -> MemberListResult:
        return cls(Header.from_pb(pb.header), tuple(Member.from_pb(m) for m in pb.members))


@dataclass(frozen=True, slots=True)
class MemberAddResult:
    header: Header
    member: Member
    members: tuple[Member, ...]

    @classmethod
    def from_pb(cls, pb: rpc_pb2.MemberAddResponse) -> MemberAddResult:
        return cls(
            Header.from_pb(pb.header),
            Member.from_pb(pb.member),
            tuple(Member.from_pb(m) for m in pb.members),
        )


@dataclass(frozen=True, slots=True)
class StatusResult:
    """One member's view: `leader` is the leader's member id (0 when there is none)."""

    header: Header
    version: str
    db_size: int
    leader: int
    raft_index: int
    raft_term: int
    raft_applied_index: int
    errors: tuple[str, ...]
    db_size_in_use: int
    is_learner: bool

    @classmethod
    def from_pb(cls, pb: rpc_pb2.StatusResponse) -> StatusResult:
        return cls(
            Header.from_pb(pb.header),
            pb.version,
            pb.dbSize,
            pb.leader,
            pb.raftIndex,
            pb.raftTerm,
            pb.raftAppliedIndex,
            tuple(pb.errors),
            pb.dbSizeInUse,
            pb.isLearner,
        )


@dataclass(frozen=True, slots=True)
class Alarm:
    member_id: int
    alarm: AlarmType

    @classmethod
    def from_pb(cls, pb: rpc_pb2.AlarmMember) -> Alarm:
        return cls(pb.memberID, AlarmType(pb.alarm))


@dataclass(frozen=True, slots=True)
class HashKVResult:
    header: Header
    hash: int
    compact_revision: int

    @classmethod
    def from_pb(cls, pb: rpc_pb2.HashKVResponse) -> HashKVResult:
        return cls(Header.from_pb(pb.header), pb.hash, pb.compact_revision)


@dataclass(frozen=True, slots=True)
class SnapshotResult:
    """`size` is the number of bytes written; `header` comes from the first message."""

    header: Header
    size: int


# -- lock and election ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LockResult:
    """`key` is the ownership key: pass it to `unlock`; it lives as long as the lease."""

    header: Header
    key: bytes


@dataclass(frozen=True, slots=True)
class LeaderKey:
    """One leadership of election `name`: the leader's key, its create revision and lease."""

    name: bytes
    key: bytes
    rev: int
    lease: int

    @classmethod
    def from_pb(cls, pb: v3election_pb2.LeaderKey) -> LeaderKey:
        return cls(pb.name, pb.key, pb.rev, pb.lease)

    def to_pb(self) -> v3election_pb2.LeaderKey:
        return v3election_pb2.LeaderKey(
            name=self.name, key=self.key, rev=self.rev, lease=self.lease
        )


# -- auth -----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AuthStatus:
    header: Header
    enabled: bool
    auth_revision: int

    @classmethod
    def from_pb(cls, pb: rpc_pb2.AuthStatusResponse) -> AuthStatus:
        return cls(Header.from_pb(pb.header), pb.enabled, pb.authRevision)


@dataclass(frozen=True, slots=True)
class Permission:
    """A grant over `key`, or over [key, range_end) when range_end is set."""

    type: PermissionType
    key: bytes
    range_end: bytes

    @classmethod
    def from_pb(cls, pb: auth_pb2.Permission) -> Permission:
        return cls(PermissionType(pb.permType), pb.key, pb.range_end)
