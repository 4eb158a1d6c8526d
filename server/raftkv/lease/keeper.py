"""The leader's lease duties: revoke expired leases and replicate checkpoints, through Raft.

The lessor decides *what* is due (it owns the deadlines); this loop only turns that into
proposals, so nothing expires or changes a remaining TTL except by an applied log entry, and
followers (whose lessor is not primary) propose nothing. It wakes every `interval` seconds, as
etcd's lessor loop does, and revokes at most `revoke_rate` leases per second so a mass expiry
cannot flood the log. Revokes run concurrently (each waits for its entry to apply); checkpoints
go out as one batched request per round, in order, so a "clear" after a renewal always applies
after an older checkpoint of the same lease.

`propose` is the member's proposal function, handed in because the lease package sits below
the node layer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from raftkv.lease.errors import LeaseNotFoundError
from raftkv.lease.lessor import Lessor
from raftkv.pb.etcdserverpb import rpc_pb2
from raftkv.pb.serverpb import internal_pb2 as serverpb

log = logging.getLogger(__name__)

Propose = Callable[[serverpb.InternalRequest], Awaitable[Any]]

# etcd's defaults: the lessor loop period, revokes per second, checkpoints per proposal.
DEFAULT_INTERVAL = 0.5
DEFAULT_REVOKE_RATE = 1000
CHECKPOINT_BATCH = 1000


class LeaseKeeper:
    """Runs the leader-side lease loop beside a member; see the module docstring."""

    def __init__(
        self,
        lessor: Lessor,
        propose: Propose,
        *,
        extend: float,
        interval: float = DEFAULT_INTERVAL,
        revoke_rate: int = DEFAULT_REVOKE_RATE,
    ) -> None:
        self.lessor = lessor
        self._propose = propose
        self.extend = extend
        self.interval = interval
        self.revokes_per_round = max(1, int(revoke_rate * interval))
        self._revoking: dict[int, asyncio.Task[None]] = {}
        self._task: asyncio.Task[None] | None = None

    def on_leadership(self, is_leader: bool) -> None:
        """A leader listener: promote the lessor on winning leadership, demote on losing it."""
        if is_leader:
            self.lessor.promote(self.extend)
        else:
            self.lessor.demote()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="lease-keeper")

    async def stop(self) -> None:
        tasks = [t for t in (self._task, *self._revoking.values()) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._task = None
        self._revoking.clear()

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.run_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("lease keeper round failed")

    async def run_once(self) -> None:
        """One round: start revokes for expired leases, then propose due checkpoints."""
        room = self.revokes_per_round - len(self._revoking)
        if room > 0:
            for lease_id in self.lessor.expired_leases(room):
                if lease_id not in self._revoking:
                    task = asyncio.create_task(self._revoke(lease_id))
                    self._revoking[lease_id] = task
        checkpoints = self.lessor.due_checkpoints(CHECKPOINT_BATCH)
        if checkpoints:
            request = rpc_pb2.LeaseCheckpointRequest(
                checkpoints=[
                    rpc_pb2.LeaseCheckpoint(ID=lease_id, remaining_TTL=remaining)
                    for lease_id, remaining in checkpoints
                ]
            )
            try:
                await self._propose(serverpb.InternalRequest(lease_checkpoint=request))
            except Exception as error:  # the next round (or the next leader) checkpoints again
                log.warning("lease checkpoint of %d leases failed: %s", len(checkpoints), error)

    async def _revoke(self, lease_id: int) -> None:
        try:
            request = rpc_pb2.LeaseRevokeRequest(ID=lease_id)
            with contextlib.suppress(LeaseNotFoundError):  # revoked meanwhile by a client
                await self._propose(serverpb.InternalRequest(lease_revoke=request))
            log.info("revoked expired lease %x", lease_id)
        except Exception as error:  # the lessor reports it again if it still exists
            log.warning("revoking expired lease %x failed: %s", lease_id, error)
        finally:
            self._revoking.pop(lease_id, None)

    async def wait_revokes(self) -> None:
        """Wait for the revokes started so far (tests use it to step the loop)."""
        await asyncio.gather(*self._revoking.values(), return_exceptions=True)
