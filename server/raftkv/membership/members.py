"""The member list, kept in the backend and changed only by applied Raft configuration changes.

Identities follow etcd's formulas so that a member's ID depends only on its peer URLs and the
cluster token: every member computes the same IDs for the same `--initial-cluster` without
talking to the others. A member added at runtime gets its ID from its peer URLs and the Unix
time of the request, with an empty token, exactly as etcd 3.4's MemberAdd computes it (checked
against real etcd in tests/membership), so the token need not be remembered after bootstrap.
A configuration change carries the member as JSON in its context, like etcd's, so any member
applying it learns the member's name and URLs.
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
    MemberNotLearnerError,
    PeerURLExistsError,
    TooManyLearnersError,
)
from raftkv.pb.raftpb import raft_pb2 as raftpb

MEMBERS_BUCKET = "members"
REMOVED_BUCKET = "members_removed"
REFUSED_BUCKET = "conf_changes_refused"
CLUSTER_BUCKET = "cluster"

# etcd 3.4 allows one learner at a time.
MAX_LEARNERS = 1


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


def promote_context(member_id: int) -> bytes:
    """The context of the ADD_NODE that promotes learner `member_id` to a voter."""
    return json.dumps({"id": member_id, "isPromote": True}, sort_keys=True).encode()


def is_promotion(context: bytes) -> bool:
    if not context:
        return False
    return bool(json.loads(context).get("isPromote", False))


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
        """Raise etcd's error if `cc` cannot apply to the current membership.

        A promotion is an ADD_NODE whose context says so (`promote_context`), as etcd marks
        it; any other ADD_NODE of an existing ID is refused like a duplicate add.
        """
        if cc.node_id in self.removed:
            raise IDRemovedError()
        existing = self.members.get(cc.node_id)
        if cc.type in (raftpb.CONF_CHANGE_ADD_NODE, raftpb.CONF_CHANGE_ADD_LEARNER_NODE):
            if cc.type == raftpb.CONF_CHANGE_ADD_NODE and is_promotion(cc.context):
                if existing is None:
                    raise MemberNotFoundError()
                if not existing.is_learner:
                    raise MemberNotLearnerError()
                return
            if existing is not None:
                raise MemberExistsError()
            self._check_urls_free(cc.node_id, Member.from_json(cc.context).peer_urls)
            if cc.type == raftpb.CONF_CHANGE_ADD_LEARNER_NODE:
                learners = sum(1 for m in self.members.values() if m.is_learner)
                if learners + 1 > MAX_LEARNERS:
                    raise TooManyLearnersError()
        elif existing is None:
            raise MemberNotFoundError()
        elif cc.type == raftpb.CONF_CHANGE_UPDATE_NODE:
            self._check_urls_free(cc.node_id, Member.from_json(cc.context).peer_urls)

    def _check_urls_free(self, member_id: int, peer_urls: tuple[str, ...]) -> None:
        taken = {u for m in self.members.values() if m.id != member_id for u in m.peer_urls}
        if taken.intersection(peer_urls):
            raise PeerURLExistsError()

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

    def mark_removed(self, member_id: int) -> None:
        """Record that `member_id` was removed, learned from peers rather than from the log.

        Only a member told by its peers that it was removed records itself this way, so that
        it refuses to restart with this data dir; the member list itself is left as it was.
        """
        self.removed.add(member_id)
        self.backend.put(REMOVED_BUCKET, _key(member_id), b"")

    def set_client_urls(self, member_id: int, name: str, client_urls: tuple[str, ...]) -> None:
        """Record the attributes a member publishes after it starts serving."""
        current = self.members.get(member_id)
        if current is not None:
            self._store(replace(current, name=name, client_urls=client_urls))

    def _store(self, member: Member) -> None:
        self.members[member.id] = member
        self.backend.put(MEMBERS_BUCKET, _key(member.id), member.to_json())
