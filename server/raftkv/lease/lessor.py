"""The lessor: every lease, the keys attached to it, and when it expires.

Two kinds of state live here and are kept apart on purpose:

- **Replicated state**, the same on every member and changed only by applying Raft entries:
  each lease's ID, granted TTL and last checkpointed remaining TTL (persisted in the backend's
  `lease` bucket, in the same batch as the entry that changed it), and the keys attached to it.
  Attachments are not persisted here: they are the `lease` field of the live keys in the MVCC
  store, so the applier hands them in on `recover`, and `on_kv_events` follows every later write.
- **Leader-only state**: expiry deadlines on an injected monotonic clock. Only the leader's lessor
  is *primary*. Followers hold every lease with no deadline and never expire anything on their
  own; the leader asks for expired leases (`expired_leases`) and proposes LeaseRevoke for them
  (raftkv.lease.keeper), so expiry reaches the state machine through the log like any write.
  `promote` gives every lease a fresh deadline (its TTL, or the remaining TTL of the last
  checkpoint, plus an election timeout), so a leader change never expires a lease early.

Keys are deleted through a `RangeDeleter` rather than the MVCC store itself: the lease package
must not depend on mvcc (an import-linter contract), and revoking needs only "delete these keys
in one write transaction".

Not thread-safe: driven from the server's event loop only.
"""

from __future__ import annotations

import heapq
import logging
import math
import struct
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from raftkv.lease.errors import (
    LeaseExistsError,
    LeaseNotFoundError,
    LeaseTTLTooLargeError,
    NotPrimaryError,
)
from raftkv.pb.mvccpb.kv_pb2 import Event
from raftkv.storage.backend import Backend

log = logging.getLogger(__name__)

LEASE_BUCKET = "lease"
NO_LEASE = 0
# etcd's limit: TTLs above this would overflow a nanosecond duration.
MAX_LEASE_TTL = 9_000_000_000
# etcd's default: a long lease's remaining TTL is replicated every five minutes.
DEFAULT_CHECKPOINT_INTERVAL = 300.0
# An expired lease whose revoke has not applied yet is reported again after this long.
EXPIRED_RETRY_INTERVAL = 3.0
FOREVER = math.inf

# Backend row: key = ID (int64, big-endian); value = (ID, granted TTL, remaining TTL).
_ID = struct.Struct(">q")
_ROW = struct.Struct(">qqq")


def min_lease_ttl(election_ticks: int, heartbeat_ms: int) -> int:
    """etcd's minimum TTL: 1.5 election timeouts, rounded up to whole seconds (2 s with the
    default 100 ms heartbeat and 10-tick election timeout). Integer math: no float rounding."""
    return -(-3 * election_ticks * heartbeat_ms // 2000)


class RangeDeleter(Protocol):
    """What the lessor needs from the key-value store to revoke a lease."""

    def delete_keys(self, keys: Sequence[bytes]) -> list[Event]:
        """Delete `keys` in ONE write transaction (one revision); return its events."""
        ...


@dataclass(eq=False, slots=True)
class Lease:
    id: int
    ttl: int  # granted TTL in seconds, after the minimum-TTL rule
    remaining_ttl: int = 0  # last checkpointed remaining TTL; 0 = none, use `ttl`
    expiry: float = FOREVER  # deadline on the lessor's clock; FOREVER unless primary
    checkpoint_at: float = FOREVER  # when the primary next checkpoints it
    keys: set[bytes] = field(default_factory=set)

    def row(self) -> bytes:
        return _ROW.pack(self.id, self.ttl, self.remaining_ttl)


class Lessor:
    """All leases of one member; see the module docstring for who may change what."""

    def __init__(
        self,
        *,
        min_ttl: int = 1,
        clock: Callable[[], float] = time.monotonic,
        checkpoint_interval: float = DEFAULT_CHECKPOINT_INTERVAL,
    ) -> None:
        self.min_ttl = min_ttl
        self.checkpoint_interval = checkpoint_interval
        self._clock = clock
        self._backend: Backend | None = None
        self._deleter: RangeDeleter | None = None
        self._leases: dict[int, Lease] = {}
        self._key_lease: dict[bytes, int] = {}
        self._primary = False
        # Min-heaps of (time, lease ID); an entry is stale unless it matches the lease's field.
        self._expiries: list[tuple[float, int]] = []
        self._checkpoints: list[tuple[float, int]] = []
        # Renewed leases whose stored remaining TTL must be cleared by the next checkpoint.
        self._clear_remaining: set[int] = set()

    # ---- replicated state: open, and what applying entries does -----------------------------

    def recover(
        self,
        backend: Backend,
        deleter: RangeDeleter,
        attached: Iterable[tuple[bytes, int]],
    ) -> None:
        """(Re)load every lease from `backend` and attach the (key, lease ID) pairs of the live
        keys. Called on open and after a snapshot replaced the state."""
        backend.create_bucket(LEASE_BUCKET)
        self._backend = backend
        self._deleter = deleter
        self._leases = {}
        self._key_lease = {}
        self._expiries = []
        self._checkpoints = []
        self._clear_remaining = set()
        for _, raw in backend.iter_range(LEASE_BUCKET, b""):
            lease_id, ttl, remaining = _ROW.unpack(raw)
            self._leases[lease_id] = Lease(lease_id, ttl, remaining)
        for key, lease_id in attached:
            if lease_id not in self._leases:
                log.warning("key %r names lease %x, which does not exist", key, lease_id)
                continue
            self._attach(lease_id, key)
        if self._primary:
            now = self._clock()
            for lease in self._leases.values():
                self._refresh(lease, now)

    def grant(self, lease_id: int, ttl: int) -> Lease:
        """Create a lease (applied LeaseGrant); the TTL is raised to the minimum TTL."""
        if lease_id == NO_LEASE:
            raise LeaseNotFoundError()
        if ttl > MAX_LEASE_TTL:
            raise LeaseTTLTooLargeError()
        if lease_id in self._leases:
            raise LeaseExistsError()
        lease = Lease(lease_id, max(ttl, self.min_ttl))
        self._leases[lease_id] = lease
        self._persist(lease)
        if self._primary:
            self._refresh(lease, self._clock())
        return lease

    def revoke(self, lease_id: int) -> list[Event]:
        """Delete the lease and, in one write transaction, every key attached to it (applied
        LeaseRevoke); returns that transaction's events (none if no key was attached)."""
        lease = self._leases.get(lease_id)
        if lease is None:
            raise LeaseNotFoundError()
        assert self._backend is not None and self._deleter is not None, "recover() first"
        events = self._deleter.delete_keys(sorted(lease.keys)) if lease.keys else []
        # The deletions' events detached the keys already (on_kv_events); drop any leftover.
        for key in lease.keys:
            self._key_lease.pop(key, None)
        del self._leases[lease_id]
        self._clear_remaining.discard(lease_id)
        self._backend.delete(LEASE_BUCKET, _ID.pack(lease_id))
        return events

    def checkpoint(self, checkpoints: Iterable[tuple[int, int]]) -> None:
        """Record remaining TTLs (applied LeaseCheckpoint); a remaining TTL of 0 clears it.

        The primary keeps its own deadlines: they are at least as fresh as any checkpoint."""
        for lease_id, remaining in checkpoints:
            lease = self._leases.get(lease_id)
            if lease is None:
                continue  # revoked after the checkpoint was proposed
            lease.remaining_ttl = max(0, remaining)
            self._persist(lease)

    def on_kv_events(self, events: Sequence[Event], revision: int = 0) -> None:
        """Follow one MVCC write transaction: attach put keys to their lease, detach keys that
        were deleted or put with another (or no) lease. An MVCC store listener."""
        for event in events:
            key = event.kv.key
            new = event.kv.lease if event.type == Event.PUT else NO_LEASE
            old = self._key_lease.get(key, NO_LEASE)
            if old == new:
                continue
            if old != NO_LEASE:
                self._detach(old, key)
            if new != NO_LEASE:
                if new in self._leases:
                    self._attach(new, key)
                else:
                    log.warning("key %r was put with lease %x, which does not exist", key, new)

    def _attach(self, lease_id: int, key: bytes) -> None:
        self._leases[lease_id].keys.add(key)
        self._key_lease[key] = lease_id

    def _detach(self, lease_id: int, key: bytes) -> None:
        self._key_lease.pop(key, None)
        lease = self._leases.get(lease_id)
        if lease is not None:
            lease.keys.discard(key)

    def _persist(self, lease: Lease) -> None:
        assert self._backend is not None, "recover() first"
        self._backend.put(LEASE_BUCKET, _ID.pack(lease.id), lease.row())

    # ---- reads -------------------------------------------------------------------------------

    def __contains__(self, lease_id: object) -> bool:
        return lease_id in self._leases

    def lookup(self, lease_id: int) -> Lease | None:
        return self._leases.get(lease_id)

    def leases(self) -> list[Lease]:
        """Every lease, soonest deadline first (then by ID), as etcd lists them."""
        return sorted(self._leases.values(), key=lambda lease: (lease.expiry, lease.id))

    def keys(self, lease_id: int) -> list[bytes]:
        """The keys attached to a lease, sorted; raises LeaseNotFoundError."""
        lease = self._leases.get(lease_id)
        if lease is None:
            raise LeaseNotFoundError()
        return sorted(lease.keys)

    def lease_of(self, key: bytes) -> int:
        """The lease `key` is attached to, or NO_LEASE."""
        return self._key_lease.get(key, NO_LEASE)

    # ---- leader-only: deadlines, renewals, expiry, checkpoints -------------------------------

    @property
    def is_primary(self) -> bool:
        return self._primary

    def promote(self, extend: float) -> None:
        """This member became leader: give every lease a deadline of now + `extend` + its TTL
        (or its checkpointed remaining TTL). No-op if already primary."""
        if self._primary:
            return
        self._primary = True
        now = self._clock()
        for lease in self._leases.values():
            self._refresh(lease, now, extend)

    def demote(self) -> None:
        """This member is no longer leader: no deadlines, no expiry. No-op if not primary."""
        if not self._primary:
            return
        self._primary = False
        for lease in self._leases.values():
            lease.expiry = FOREVER
            lease.checkpoint_at = FOREVER
        self._expiries = []
        self._checkpoints = []
        self._clear_remaining = set()

    def renew(self, lease_id: int) -> int:
        """Keep-alive on the primary: restart the lease's TTL; returns the TTL.

        Raises NotPrimaryError on a follower, LeaseNotFoundError for an unknown lease or one
        that already expired (its revoke is on the way; etcd does not revive it either)."""
        if not self._primary:
            raise NotPrimaryError()
        lease = self._leases.get(lease_id)
        now = self._clock()
        if lease is None or lease.expiry <= now:
            raise LeaseNotFoundError()
        # A stored remaining TTL is stale now; so may be a checkpoint proposed just before this
        # renewal and not applied yet (only long leases are checkpointed).
        if lease.remaining_ttl > 0 or lease.ttl > self.checkpoint_interval:
            self._clear_remaining.add(lease_id)
        self._refresh(lease, now, use_remaining=False)
        return lease.ttl

    def remaining(self, lease_id: int) -> int:
        """Whole seconds left before the lease expires (0 if it expired); primary only."""
        if not self._primary:
            raise NotPrimaryError()
        lease = self._leases.get(lease_id)
        if lease is None:
            raise LeaseNotFoundError()
        return max(0, int(lease.expiry - self._clock()))

    def expired_leases(self, limit: int) -> list[int]:
        """Up to `limit` expired leases for the primary to revoke, soonest deadline first.

        A reported lease is reported again after EXPIRED_RETRY_INTERVAL if it still exists
        (its revoke was lost, e.g. in a leader change)."""
        if not self._primary:
            return []
        now = self._clock()
        found: list[int] = []
        while self._expiries and self._expiries[0][0] <= now and len(found) < limit:
            _, lease_id = heapq.heappop(self._expiries)
            lease = self._leases.get(lease_id)
            if lease is None or lease.expiry > now or lease_id in found:
                continue  # revoked, or renewed (its newer entry is further down the heap)
            found.append(lease_id)
            heapq.heappush(self._expiries, (now + EXPIRED_RETRY_INTERVAL, lease_id))
        return found

    def due_checkpoints(self, limit: int) -> list[tuple[int, int]]:
        """Up to `limit` (lease ID, remaining TTL) pairs the primary should replicate now:
        long leases whose checkpoint is due, and renewed leases whose stored remaining TTL must
        be cleared (remaining 0)."""
        if not self._primary:
            return []
        now = self._clock()
        due: dict[int, int] = {}
        for lease_id in sorted(self._clear_remaining)[:limit]:
            self._clear_remaining.discard(lease_id)
            if lease_id in self._leases:
                due[lease_id] = 0
        while self._checkpoints and self._checkpoints[0][0] <= now and len(due) < limit:
            at, lease_id = heapq.heappop(self._checkpoints)
            lease = self._leases.get(lease_id)
            if lease is None or lease.checkpoint_at != at or lease_id in due:
                continue
            left = math.ceil(lease.expiry - now)
            if left <= 0:
                continue  # expiring; its revoke makes a checkpoint pointless
            due[lease_id] = left
            self._schedule_checkpoint(lease, now, left)
        return list(due.items())

    def _refresh(
        self, lease: Lease, now: float, extend: float = 0.0, *, use_remaining: bool = True
    ) -> None:
        ttl = lease.remaining_ttl if use_remaining and lease.remaining_ttl > 0 else lease.ttl
        lease.expiry = now + extend + ttl
        heapq.heappush(self._expiries, (lease.expiry, lease.id))
        self._schedule_checkpoint(lease, now, lease.expiry - now)

    def _schedule_checkpoint(self, lease: Lease, now: float, left: float) -> None:
        """Checkpoint a lease only while more than one interval of it remains."""
        if left > self.checkpoint_interval:
            lease.checkpoint_at = now + self.checkpoint_interval
            heapq.heappush(self._checkpoints, (lease.checkpoint_at, lease.id))
        else:
            lease.checkpoint_at = FOREVER
