"""Automatic compaction (`--auto-compaction-mode` / `--auto-compaction-retention`), as etcd 3.4.

Only the leader compacts, by proposing an ordinary CompactionRequest, so every member compacts
at the same revision. Two modes:

- **revision**: every `REVISION_CHECK_SECONDS` (etcd: 5 minutes), compact to
  `current revision - retention` if that moved since the last compaction.
- **periodic**: keep `retention` seconds of history. The current revision is sampled every
  `interval / 10`, where `interval = min(retention, 1 hour)`; every `interval`, compact to the
  newest sample taken at least `retention` ago. (etcd 3.4: "compaction every hour with a 72h
  window"; for retentions under an hour, every retention period.)

The policy is a pure object driven by `tick(now, current_revision, is_leader)`; the async runner
around it reads the clock and proposes.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)

REVISION_CHECK_SECONDS = 300.0
PERIODIC_MAX_INTERVAL_SECONDS = 3600.0


class RevisionCompactionPolicy:
    def __init__(self, retain: int, check_seconds: float = REVISION_CHECK_SECONDS) -> None:
        self.retain = retain
        self.check_seconds = check_seconds
        self._next_check: float | None = None
        self._last_compacted = 0

    def tick(self, now: float, current_revision: int, is_leader: bool) -> int | None:
        """The revision to compact to now, or None."""
        if self._next_check is None:
            self._next_check = now + self.check_seconds
        if now < self._next_check:
            return None
        self._next_check = now + self.check_seconds
        target = current_revision - self.retain
        if not is_leader or target <= 0 or target == self._last_compacted:
            return None
        self._last_compacted = target
        return target


class PeriodicCompactionPolicy:
    def __init__(self, retention_seconds: float) -> None:
        self.retention = retention_seconds
        self.interval = min(retention_seconds, PERIODIC_MAX_INTERVAL_SECONDS)
        self.sample_every = self.interval / 10
        self._samples: deque[tuple[float, int]] = deque()
        self._next_sample: float | None = None
        self._next_compaction: float | None = None
        self._last_compacted = 0

    def tick(self, now: float, current_revision: int, is_leader: bool) -> int | None:
        if self._next_sample is None or self._next_compaction is None:
            self._next_sample = now
            self._next_compaction = now + self.interval
        if now >= self._next_sample:
            self._samples.append((now, current_revision))
            self._next_sample = now + self.sample_every
        if now < self._next_compaction:
            return None
        self._next_compaction = now + self.interval
        target = 0
        while self._samples and now - self._samples[0][0] >= self.retention:
            target = self._samples.popleft()[1]
        if not is_leader or target <= self._last_compacted:
            return None
        self._last_compacted = target
        return target


Policy = RevisionCompactionPolicy | PeriodicCompactionPolicy


async def run_compactor(
    policy: Policy,
    *,
    clock: Callable[[], float],
    current_revision: Callable[[], int],
    is_leader: Callable[[], bool],
    compact: Callable[[int], Awaitable[None]],
    poll_seconds: float = 1.0,
) -> None:
    """Drive `policy` until cancelled; a failed compaction is logged and retried next time."""
    while True:
        target = policy.tick(clock(), current_revision(), is_leader())
        if target is not None:
            try:
                await compact(target)
                log.info("auto-compacted at revision %d", target)
            except Exception as error:  # retried by the policy at its next interval
                log.warning("auto-compaction at revision %d failed: %s", target, error)
        await asyncio.sleep(poll_seconds)
