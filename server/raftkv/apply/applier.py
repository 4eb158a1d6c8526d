"""Applies committed Raft entries to the member's state: MVCC, leases, auth, membership, alarms.

Applying is deterministic: every member applies the same entries in the same order and must end
in the same state, so nothing here reads the clock or the network, and a request that fails
validation fails identically everywhere (its error is the result handed back to the proposer).

The Raft index of the last applied entry (the consistent index) is written into the same backend
transaction as the data it produced, so after a crash the node replays exactly the entries the
backend does not have.

Each entry is authorized here, where it is applied, against the auth state every member has at
that point of the log (`raftkv.auth.requests`): the entry's header names the caller.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from google.protobuf.message import DecodeError

from raftkv.apply.alarms import AlarmStore
from raftkv.apply.errors import ApplyError
from raftkv.apply.kv import KVApplier
from raftkv.auth import AUTH_KINDS, AuthApplier, AuthError, AuthStore, SimpleTokens, TokenProvider
from raftkv.lease import LeaseError, Lessor
from raftkv.membership import Membership, MembershipError
from raftkv.mvcc import KVStore, MVCCError
from raftkv.pb.etcdserverpb import rpc_pb2
from raftkv.pb.mvccpb.kv_pb2 import Event
from raftkv.pb.raftpb import raft_pb2 as raftpb
from raftkv.pb.serverpb import internal_pb2 as serverpb
from raftkv.storage.backend import Backend

log = logging.getLogger(__name__)

DomainError = (ApplyError, MVCCError, MembershipError, LeaseError, AuthError)


class StoreKeyDeleter:
    """The lessor's RangeDeleter: deletes a revoked lease's keys in one MVCC write txn."""

    def __init__(self, store: KVStore) -> None:
        self._store = store

    def delete_keys(self, keys: Sequence[bytes]) -> list[Event]:
        with self._store.write() as txn:
            for key in keys:
                txn.delete_range(key)
        return txn.events


def leased_keys(store: KVStore) -> Iterator[tuple[bytes, int]]:
    """(key, lease ID) of every live key attached to a lease, to rebuild the lessor's view."""
    for kv in store.range(b"\0", b"\0").kvs:
        if kv.lease:
            yield kv.key, kv.lease


class Applier:
    """The state machine of one member, backed by one backend database file."""

    def __init__(
        self,
        db_path: Path,
        *,
        max_txn_ops: int,
        lessor: Lessor | None = None,
        tokens: TokenProvider | None = None,
    ) -> None:
        self.db_path = db_path
        self.max_txn_ops = max_txn_ops
        # One lessor for the member's lifetime: a snapshot restore reloads it, keeping its role.
        self.lessor = lessor if lessor is not None else Lessor()
        # Tokens live in memory for the member's lifetime too, across snapshot restores.
        self.tokens: TokenProvider = tokens if tokens is not None else SimpleTokens()
        self._restore_listeners: list[Callable[[], None]] = []
        self._open()

    def _open(self) -> None:
        self.backend = Backend(self.db_path)
        self.store = KVStore(self.backend)
        self.kv = KVApplier(
            self.store, max_txn_ops=self.max_txn_ops, lease_checker=self.lessor.__contains__
        )
        self.membership = Membership.load(self.backend)
        self.alarms = AlarmStore(self.backend)
        self.auth = AuthApplier(AuthStore(self.backend, self.tokens), self.lessor.keys)
        self.store.add_listener(self.lessor.on_kv_events)
        self.lessor.recover(self.backend, StoreKeyDeleter(self.store), leased_keys(self.store))

    @property
    def consistent_index(self) -> int:
        return self.store.consistent_index

    def add_restore_listener(self, listener: Callable[[], None]) -> None:
        """Called after the state was replaced by a snapshot (watchers must resync)."""
        self._restore_listeners.append(listener)

    def apply_normal(self, entry: raftpb.Entry) -> tuple[int, Any]:
        """Apply one normal entry; returns (request id, response or domain error)."""
        self.store.set_consistent_index(entry.index)
        if not entry.data:
            return 0, None  # a new leader's empty entry
        try:
            request = serverpb.InternalRequest.FromString(entry.data)
        except DecodeError:
            log.error("skipping undecodable entry at index %d", entry.index)
            return 0, None
        kind = request.WhichOneof("request")
        body = getattr(request, kind) if kind else None
        try:
            return request.header.id, self._dispatch(kind, body, request.header, entry.index)
        except DomainError as error:
            return request.header.id, error

    def _dispatch(
        self, kind: str | None, body: Any, header: serverpb.RequestHeader, index: int
    ) -> Any:
        self.alarms.check(kind, body)
        self.auth.authorize(header, kind, body)
        if kind in AUTH_KINDS:
            return self.auth.apply(kind, body, index)
        if kind == "put":
            return self.kv.put(body)
        if kind == "delete_range":
            return self.kv.delete_range(body)
        if kind == "txn":
            return self.kv.txn(body)
        if kind == "compaction":
            return self.kv.compact(body)
        if kind == "lease_grant":
            lease = self.lessor.grant(body.ID, body.TTL)
            return rpc_pb2.LeaseGrantResponse(header=self._header(), ID=lease.id, TTL=lease.ttl)
        if kind == "lease_revoke":
            self.lessor.revoke(body.ID)
            return rpc_pb2.LeaseRevokeResponse(header=self._header())
        if kind == "lease_checkpoint":
            self.lessor.checkpoint((c.ID, c.remaining_TTL) for c in body.checkpoints)
            return rpc_pb2.LeaseCheckpointResponse(header=self._header())
        if kind == "alarm":
            return rpc_pb2.AlarmResponse(alarms=self.alarms.apply(body))
        if kind == "member_attributes":
            self.membership.set_client_urls(body.member_id, body.name, tuple(body.client_urls))
            return None
        log.error("skipping entry with unsupported request %r", kind)
        return None

    def _header(self) -> rpc_pb2.ResponseHeader:
        return rpc_pb2.ResponseHeader(revision=self.store.current_revision)

    def apply_conf_change(self, index: int, change: raftpb.ConfChange) -> MembershipError | None:
        """Apply a membership change; returns the error if it is refused (then Raft skips it)."""
        self.store.set_consistent_index(index)
        try:
            self.membership.validate(change)
        except MembershipError as error:
            self.membership.record_refused(index)
            return error
        self.membership.apply(change)
        return None

    def commit(self) -> None:
        """End the batch: one backend transaction for everything applied since the last call."""
        self.backend.commit()

    def commit_durable(self) -> None:
        self.backend.force_commit_durable()

    def restore(self, payload: Path) -> None:
        """Replace the whole state with a received snapshot database file."""
        self.backend.close()
        os.replace(payload, self.db_path)
        self._open()
        for listener in self._restore_listeners:
            listener()

    def close(self) -> None:
        self.backend.close()
