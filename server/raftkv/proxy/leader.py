"""Which endpoint leads the cluster, so the proxy sends writes straight to the leader.

A write sent to a follower is forwarded by it to the leader it knows. When that leader has just
died, the follower keeps forwarding into the void until its election timeout passes, and the
write times out ("request timed out") — an ambiguous failure the proxy must not retry. Sending
writes to the leader instead turns a leader's death into a failure to *connect*, which is a
safe retry: the proxy then asks the members' Status until one of them says it leads, and sends
the write there. Clients see latency (an election), not an error.

The leader is learned from `Status` (each member's own ID and the leader it knows), kept for a
few seconds, and forgotten as soon as a call to it fails. When the leader is not one of the
proxy's endpoints, or no leader can be found in time, writes go round-robin as the client's
rules allow.
"""

from __future__ import annotations

import asyncio
import contextlib

from raftkv.client import errors
from raftkv.client.transport import Endpoint, Retry, Transport
from raftkv.pb.etcdserverpb import rpc_pb2

__all__ = ["LeaderTracker"]

# A known leader is asked again after this long (a leader may step down without dying).
RECHECK_S = 5.0
# One search for a leader gives up after this long (a cluster without quorum).
SEARCH_S = 30.0
POLL_S = 0.05
STATUS_TIMEOUT_S = 1.0


class LeaderTracker:
    def __init__(self, transport: Transport) -> None:
        self._transport = transport
        self._leader: Endpoint | None = None
        self._checked = 0.0
        # Member IDs of the endpoints, learned from their Status answers.
        self._ids: dict[int, Endpoint] = {}
        self._search: asyncio.Task[Endpoint | None] | None = None

    async def leader(self, deadline: float) -> Endpoint | None:
        """The leader's endpoint, or None when it cannot be known before `deadline`."""
        loop = asyncio.get_running_loop()
        if self._leader is not None and loop.time() - self._checked < RECHECK_S:
            return self._leader
        if self._search is None or self._search.done():
            self._search = loop.create_task(self._find(), name="raftkv-proxy-leader")
        try:
            return await asyncio.wait_for(
                asyncio.shield(self._search), max(deadline - loop.time(), 0.0)
            )
        except TimeoutError:
            return None

    def lost(self, endpoint: Endpoint) -> None:
        """A call to `endpoint` failed: it is not known to lead any more."""
        if self._leader == endpoint:
            self._leader = None

    async def close(self) -> None:
        if self._search is not None:
            self._search.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._search

    async def _status(self, endpoint: Endpoint) -> rpc_pb2.StatusResponse | None:
        transport = self._transport
        if not await transport.connect(endpoint, STATUS_TIMEOUT_S):
            transport.mark_failed(endpoint)
            return None
        try:
            response: rpc_pb2.StatusResponse = await transport.unary(
                lambda s: s.maintenance.Status,
                rpc_pb2.StatusRequest(),
                retry=Retry.IMMUTABLE,
                timeout=STATUS_TIMEOUT_S,
                endpoint=endpoint,
                authenticated=False,
            )
        except errors.EtcdError:
            return None
        return response

    async def _find(self) -> Endpoint | None:
        loop = asyncio.get_running_loop()
        give_up = loop.time() + SEARCH_S
        while loop.time() < give_up:
            named: set[int] = set()
            for endpoint in self._transport.endpoints:
                status = await self._status(endpoint)
                if status is None:
                    continue
                self._ids[status.header.member_id] = endpoint
                if status.leader and status.leader == status.header.member_id:
                    self._leader, self._checked = endpoint, loop.time()
                    return endpoint
                if status.leader:
                    named.add(status.leader)
            if named and not named & self._ids.keys():
                return None  # the leader is not one of the proxy's endpoints
            # An election is under way, or the named leader is one of ours that does not
            # answer (it died and the others have not noticed yet): ask again.
            await asyncio.sleep(POLL_S)
        return None
