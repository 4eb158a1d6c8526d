"""A fair distributed lock with fencing tokens, held by a lease.

The layout is etcd's `concurrency.Mutex` (and `etcdctl lock`'s), so the three interoperate: a
contender creates `<name>/<lease id in hex>` under its lease, and holds the lock once no key under
`<name>/` has an older create revision. Waiters queue in create-revision order and each watches
only the key just before its own, so a release wakes one waiter, not all of them.

The holder's create revision is the *fencing token*: it grows with every new holder, so a
storage service that remembers the highest token it has seen can refuse a stale holder that
still believes it owns the lock (after a long GC pause, say).

A lock is only as good as the holder's knowledge that it still holds it. `Lock.lost` is set when
the lease may have expired (`Lease.lost`) or the key was deleted by someone else; by default the
body of `async with Lock(...)` is then cancelled and the block raises `LostError`.
"""

from __future__ import annotations

import asyncio
import contextlib
from types import TracebackType

from raftkv.client import ops
from raftkv.client.aio import AsyncClient
from raftkv.client.lease import Lease
from raftkv.client.ops import Compare, KeyLike, to_bytes
from raftkv.client.recipes._common import (
    AMBIGUOUS,
    CancelOnLoss,
    LostError,
    Session,
    create_if_absent,
    retrying,
    until_lost,
    wait_deleted,
    wait_predecessors,
)
from raftkv.client.types import KeyValue, SortOrder, SortTarget

__all__ = ["Lock", "lock_owner"]


class Lock:
    """`async with Lock(client, "jobs/nightly") as token:` runs the body while holding the lock.

    Without `lease` the lock grants its own lease of `ttl` seconds (revoked on release); with one,
    several recipes can share a session. `cancel_on_loss` cancels the body once the lock is lost.
    """

    def __init__(
        self,
        client: AsyncClient,
        name: KeyLike,
        *,
        ttl: int = 10,
        lease: Lease | None = None,
        cancel_on_loss: bool = True,
    ) -> None:
        self._client = client
        self.prefix = to_bytes(name).rstrip(b"/") + b"/"
        self._session = Session(client, lease, ttl)
        self._cancel_on_loss = cancel_on_loss
        self.key = b""
        self.token = 0
        self.lost = asyncio.Event()
        self._monitor: asyncio.Task[None] | None = None
        self._guard: CancelOnLoss | None = None

    @property
    def held(self) -> bool:
        return self.token != 0 and not self.lost.is_set()

    async def acquire(self, timeout: float | None = None) -> int:
        """Wait for the lock (at most `timeout` seconds: `TimeoutError`); return the fencing
        token. On failure or cancellation the place in the queue is given up."""
        lease = await self._session.open()
        self.key = self.prefix + f"{lease.id:x}".encode()
        try:
            async with asyncio.timeout(timeout):
                revision = await self._enqueue(lease)
                await until_lost(
                    wait_predecessors(self._client, self.prefix, revision), lease.lost, "lock"
                )
                # The key may have gone while waiting (deleted, or the lease expired).
                mine = await self._client.get(self.key)
                if mine.kv is None or mine.kv.create_revision != revision:
                    raise LostError("lock key deleted while waiting")
        except BaseException:
            await asyncio.shield(self._withdraw(revision=None))
            raise
        self.token = revision
        self.lost.clear()
        self._monitor = asyncio.get_running_loop().create_task(self._watch_loss(lease, revision))
        return revision

    async def try_acquire(self) -> bool:
        """Take the lock only if nobody holds it or waits for it; never waits."""
        lease = await self._session.open()
        self.key = self.prefix + f"{lease.id:x}".encode()
        revision = await self._enqueue(lease)
        owner = await lock_owner(self._client, self.prefix)
        if owner is None or owner.create_revision != revision:
            await self._withdraw(revision)
            return False
        self.token = revision
        self.lost.clear()
        self._monitor = asyncio.get_running_loop().create_task(self._watch_loss(lease, revision))
        return True

    async def release(self) -> None:
        """Give the lock up (idempotent); the next waiter gets it."""
        if self._monitor is not None:
            self._monitor.cancel()
            self._monitor = None
        token, self.token = self.token, 0
        await self._withdraw(token or None)

    async def __aenter__(self) -> int:
        token = await self.acquire()
        if self._cancel_on_loss:
            self._guard = CancelOnLoss(self.lost, f"lock {self.prefix.decode(errors='replace')}")
            await self._guard.__aenter__()
        return token

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        guard, self._guard = self._guard, None
        try:
            if guard is not None:
                await guard.__aexit__(exc_type, exc, tb)
        finally:
            await asyncio.shield(self.release())

    # -- internals ---------------------------------------------------------------------------------

    async def _enqueue(self, lease: Lease) -> int:
        """Create our key unless it exists; its create revision is our place in the queue."""
        revision, _ = await create_if_absent(self._client, self.key, b"", lease.id)
        return revision

    async def _withdraw(self, revision: int | None) -> None:
        """Delete our key (only the incarnation created at `revision`, when given); then close
        the session if it is ours."""
        if self.key:
            same = Compare.create_revision(self.key) == revision if revision else None
            txn = self._client.txn()
            if same is not None:
                txn.if_(same)
            with contextlib.suppress(*AMBIGUOUS):
                await retrying(txn.then(ops.delete(self.key)).commit, retry_for=5.0)
        await self._session.close()

    async def _watch_loss(self, lease: Lease, revision: int) -> None:
        deleted = asyncio.ensure_future(wait_deleted(self._client, self.key, revision))
        expired = asyncio.ensure_future(lease.lost.wait())
        try:
            await asyncio.wait({deleted, expired}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            deleted.cancel()
            expired.cancel()
        self.lost.set()


async def lock_owner(client: AsyncClient, name: KeyLike) -> KeyValue | None:
    """The current holder's key-value of lock `name` (None when free)."""
    prefix = to_bytes(name).rstrip(b"/") + b"/"
    got = await client.get(
        prefix, prefix=True, sort_target=SortTarget.CREATE, sort_order=SortOrder.ASCEND, limit=1
    )
    return got.kv
