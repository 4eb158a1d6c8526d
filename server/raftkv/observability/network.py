"""Peer traffic metrics under etcd's names, and the loops that watch peers.

`PeerTrafficMetrics` has the method set of the transport's `PeerMetrics` protocol (matched by
shape: this package imports nothing of raftkv's). Label values are member IDs in etcd's hex
form; each peer's labelled children are looked up once and cached, since the transport reports
on every stream write. `HeartbeatMonitor` finds heartbeats a leader sent late, which etcd
counts as heartbeat send failures, and `probe_peers_forever` measures round trips.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram

from raftkv.observability.promutil import PEER_RTT_BUCKETS, member_hex

log = logging.getLogger(__name__)

# etcd's prober measures each peer this often.
PROBE_INTERVAL_S = 4.0


class PeerTrafficMetrics:
    """Bytes, send failures and round-trip times per peer (`To` / `From` labels)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._sent = Counter(
            "etcd_network_peer_sent_bytes_total",
            "The total number of bytes sent to peers.",
            ["To"],
            registry=registry,
        )
        self._received = Counter(
            "etcd_network_peer_received_bytes_total",
            "The total number of bytes received from peers.",
            ["From"],
            registry=registry,
        )
        self._failures = Counter(
            "etcd_network_peer_sent_failures_total",
            "The total number of send failures from peers.",
            ["To"],
            registry=registry,
        )
        self._rtt = Histogram(
            "etcd_network_peer_round_trip_time_seconds",
            "Round-Trip-Time histogram between peers",
            ["To"],
            buckets=PEER_RTT_BUCKETS,
            registry=registry,
        )
        self._metrics: tuple[Counter | Histogram, ...] = (
            self._sent,
            self._received,
            self._failures,
            self._rtt,
        )
        self._children: dict[tuple[int, int], Any] = {}

    def _child(self, slot: int, member_id: int) -> Any:
        child = self._children.get((slot, member_id))
        if child is None:
            # All four series of a new peer appear together, failures at zero included, so
            # rates over them are defined before the first failure.
            label = member_hex(member_id)
            for i, metric in enumerate(self._metrics):
                self._children[(i, member_id)] = metric.labels(label)
            child = self._children[(slot, member_id)]
        return child

    def bytes_sent(self, member_id: int, n: int) -> None:
        self._child(0, member_id).inc(n)

    def bytes_received(self, member_id: int, n: int) -> None:
        self._child(1, member_id).inc(n)

    def send_failed(self, member_id: int, messages: int) -> None:
        self._child(2, member_id).inc(messages)

    def observe_rtt(self, member_id: int, seconds: float) -> None:
        self._child(3, member_id).observe(seconds)

    def forget(self, member_id: int) -> None:
        """Stop reporting a removed member (its series disappear at the next scrape)."""
        for slot, metric in enumerate(self._metrics):
            if self._children.pop((slot, member_id), None) is not None:
                metric.remove(member_hex(member_id))


class HeartbeatMonitor:
    """etcd's heartbeat timeout detector: a leader's heartbeat to a peer that leaves more than
    two heartbeat intervals after the previous one was "not sent on time" (the leader is
    overloaded, often by a slow disk). `on_late(member_id, seconds_late)` is told of each; the
    warning is logged at most once per `LOG_EVERY_S`, since an overloaded leader is late often."""

    LOG_EVERY_S = 5.0

    def __init__(
        self,
        heartbeat_interval: float,
        on_late: Callable[[int, float], None],
        clock: Callable[[], float],
    ) -> None:
        self._max_gap = 2 * heartbeat_interval
        self._on_late = on_late
        self._clock = clock
        self._last: dict[int, float] = {}
        self._logged_at = -self.LOG_EVERY_S

    def sent(self, member_id: int) -> None:
        now = self._clock()
        last = self._last.get(member_id)
        self._last[member_id] = now
        if last is not None and now - last > self._max_gap:
            late = now - last - self._max_gap
            if now - self._logged_at >= self.LOG_EVERY_S:
                self._logged_at = now
                log.warning(
                    "leader failed to send out heartbeat on time to %x (%.0f ms late); the "
                    "leader is overloaded, likely by a slow disk",
                    member_id,
                    late * 1000,
                )
            self._on_late(member_id, late)

    def reset(self) -> None:
        """Forget the history (leadership changed: the next heartbeats start a new series)."""
        self._last.clear()


async def probe_peers_forever(
    probe: Callable[[int], Awaitable[float]],
    peers: Callable[[], Iterable[int]],
    interval: float = PROBE_INTERVAL_S,
) -> None:
    """Measure the round trip to every peer each `interval` seconds (as etcd's prober does).

    `probe(member_id)` does one round trip and records it (PeerTransport.probe reports to
    `observe_rtt` itself); a failed probe is skipped: peer failures are counted elsewhere.
    """
    while True:
        for member_id in list(peers()):
            try:
                await probe(member_id)
            except asyncio.CancelledError:
                raise
            except Exception as error:
                log.debug("probing peer %x failed: %s", member_id, error)
        await asyncio.sleep(interval)
