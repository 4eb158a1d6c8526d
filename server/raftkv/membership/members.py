"""The member list, kept in the backend and changed only by applied Raft configuration changes.

Identities follow etcd's formulas so that a member's ID depends only on its peer URLs and the
cluster token (and, for runtime additions, the time of the request): every member computes the
same IDs for the same `--initial-cluster` without talking to the others. A configuration change
carries the member as JSON in its context, like etcd's, so any member applying it learns the
member's name and URLs.
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Protocol

from raftkv.membership.errors import (
    IDRemovedError,
    MemberExistsError,
    MemberNotFoundError,
    PeerURLExistsError,
)
from raftkv.pb.raftpb import raft_pb2 as raftpb

MEMBERS_BUCKET = "members"
REMOVED_BUCKET = "members_removed"
REFUSED_BUCKET = "conf_changes_refused"
CLUSTER_BUCKET = "cluster"


def compute_member_id(peer_urls: Iterable[str], cluster_token: str, now: int | None = None) -> int:
    """etcd's member ID: the first 8 bytes of sha1(sorted peer URLs + token [+ unix time])."""
    material = "".join(sorted(peer_urls)) + cluster_token
    if now is not None:
        material += str(now)
    return struct.unpack(">Q", hashlib.sha1(material.encode()).digest()[:8])[0]


def compute_cluster_id(member_ids: Iterable[int]) -> int:
    """etcd's cluster ID: the first 8 bytes of sha1 over the sorted member IDs (big-endian)."""
    material = b"".join(struct.pack(">Q", i) for i in sorted(member_ids))
    return struct.unpack(">Q", hashlib.sha1(material).digest()[:8])[0]


@dataclass(frozen=True)
class Member:
    id: int
    name: str
    peer_urls: tuple[str, ...]
    client_urls: tuple[str, ...] = ()
    is_learner: bool = False

    def to_json(self) -> bytes:
        return json.dumps(
            {
                "id": self.id,
                "name": self.name,
                "peerURLs": list(self.peer_urls),
                "clientURLs": list(self.client_urls),
                "isLearner": self.is_learner,
            },
            sort_keys=True,
        ).encode()

    @classmethod
    def from_json(cls, data: bytes) -> Member:
        raw = json.loads(data)
        return cls(
            id=int(raw["id"]),
            name=raw.get("name", ""),
            peer_urls=tuple(raw.get("peerURLs") or ()),
            client_urls=tuple(raw.get("clientURLs") or ()),
            is_learner=bool(raw.get("isLearner", False)),
        )


class BucketStore(Protocol):
    """The part of the backend membership needs (see raftkv.storage.backend.Backend)."""

    def create_bucket(self, name: str) -> None: ...
    def put(self, bucket: str, key: bytes, value: bytes) -> None: ...
    def get(self, bucket: str, key: bytes) -> bytes | None: ...
    def delete(self, bucket: str, key: bytes) -> None: ...
    def range(
        self, bucket: str, start: bytes, end: bytes | None = None, limit: int = 0
    ) -> list[tuple[bytes, bytes]]:
        """Rows in key order; `end` b"\\0" means every key from `start` on."""


def _key(member_id: int) -> bytes:
    return struct.pack(">Q", member_id)


@dataclass
class Membership:
    """The member list of one cluster; mutated only while applying committed entries."""

    backend: BucketStore
    members: dict[int, Member] = field(default_factory=dict)
    removed: set[int] = field(default_factory=set)
    cluster_id: int = 0

    @classmethod
    def load(cls, backend: BucketStore) -> Membership:
        for bucket in (MEMBERS_BUCKET, REMOVED_BUCKET, CLUSTER_BUCKET, REFUSED_BUCKET):
            backend.create_bucket(bucket)
        members = {
            struct.unpack(">Q", k)[0]: Member.from_json(v)
            for k, v in backend.range(MEMBERS_BUCKET, b"", b"\0")
        }
        removed = {struct.unpack(">Q", k)[0] for k, _ in backend.range(REMOVED_BUCKET, b"", b"\0")}
        raw_cluster = backend.get(CLUSTER_BUCKET, b"id")
        cluster_id = struct.unpack(">Q", raw_cluster)[0] if raw_cluster else 0
        return cls(backend, members, removed, cluster_id)

    def set_cluster_id(self, cluster_id: int) -> None:
        self.cluster_id = cluster_id
        self.backend.put(CLUSTER_BUCKET, b"id", struct.pack(">Q", cluster_id))

    def get(self, member_id: int) -> Member | None:
        return self.members.get(member_id)

    def sorted_members(self) -> list[Member]:
        return [self.members[i] for i in sorted(self.members)]

    def validate(self, cc: raftpb.ConfChange) -> None:
        """Raise etcd's error if `cc` cannot apply to the current membership."""
        if cc.node_id in self.removed:
            raise IDRemovedError()
        if cc.type in (raftpb.CONF_CHANGE_ADD_NODE, raftpb.CONF_CHANGE_ADD_LEARNER_NODE):
            existing = self.members.get(cc.node_id)
            promoting = cc.type == raftpb.CONF_CHANGE_ADD_NODE and existing and existing.is_learner
            if existing and not promoting:
                raise MemberExistsError()
            if not promoting:
                new = Member.from_json(cc.context)
                taken = {u for m in self.members.values() for u in m.peer_urls}
                if taken.intersection(new.peer_urls):
                    raise PeerURLExistsError()
        elif cc.node_id not in self.members:
            raise MemberNotFoundError()

    def record_refused(self, index: int) -> None:
        """Remember that the change at log `index` was refused, so a replay skips it too."""
        self.backend.put(REFUSED_BUCKET, _key(index), b"")

    def was_refused(self, index: int) -> bool:
        return self.backend.get(REFUSED_BUCKET, _key(index)) is not None

    def apply(self, cc: raftpb.ConfChange) -> None:
        """Apply a committed configuration change (already validated by the proposer)."""
        if cc.type in (raftpb.CONF_CHANGE_ADD_NODE, raftpb.CONF_CHANGE_ADD_LEARNER_NODE):
            existing = self.members.get(cc.node_id)
            if existing is not None and cc.type == raftpb.CONF_CHANGE_ADD_NODE:
                self._store(replace(existing, is_learner=False))
            elif existing is None:
                member = Member.from_json(cc.context)
                self._store(
                    replace(
                        member,
                        id=cc.node_id,
                        is_learner=cc.type == raftpb.CONF_CHANGE_ADD_LEARNER_NODE,
                    )
                )
        elif cc.type == raftpb.CONF_CHANGE_REMOVE_NODE:
            self.members.pop(cc.node_id, None)
            self.backend.delete(MEMBERS_BUCKET, _key(cc.node_id))
            self.removed.add(cc.node_id)
            self.backend.put(REMOVED_BUCKET, _key(cc.node_id), b"")
        elif cc.type == raftpb.CONF_CHANGE_UPDATE_NODE:
            current = self.members[cc.node_id]
            update = Member.from_json(cc.context)
            self._store(replace(current, peer_urls=update.peer_urls))

    def set_client_urls(self, member_id: int, name: str, client_urls: tuple[str, ...]) -> None:
        """Record the attributes a member publishes after it starts serving."""
        current = self.members.get(member_id)
        if current is not None:
            self._store(replace(current, name=name, client_urls=client_urls))

    def _store(self, member: Member) -> None:
        self.members[member.id] = member
        self.backend.put(MEMBERS_BUCKET, _key(member.id), member.to_json())
