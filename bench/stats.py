"""Numbers the benchmarks report: percentiles, latency summaries and raftkv/etcd ratios.

Kept apart from the load generator so the arithmetic can be tested on its own. Percentiles use
the nearest-rank definition (the smallest sample with at least p% of samples at or below it):
every reported latency is one a request really took, with no interpolation between samples.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


def percentile(samples: Sequence[float], p: float) -> float:
    """The nearest-rank `p`-th percentile (0 < p <= 100) of `samples`."""
    if not samples:
        raise ValueError("percentile of no samples")
    if not 0 < p <= 100:
        raise ValueError(f"percentile must be in (0, 100], got {p}")
    ordered = sorted(samples)
    rank = math.ceil(p / 100 * len(ordered))
    return ordered[rank - 1]


def ratio(raftkv: float | None, etcd: float | None) -> float | None:
    """raftkv / etcd, or None when either side has no number or etcd's is zero."""
    if raftkv is None or etcd is None or etcd == 0:
        return None
    return raftkv / etcd


@dataclass(frozen=True)
class LatencySummary:
    """Percentiles of one set of latencies, in seconds."""

    count: int
    p50: float
    p90: float
    p99: float
    max: float

    @classmethod
    def of(cls, samples: Sequence[float]) -> LatencySummary:
        ordered = sorted(samples)
        return cls(
            count=len(ordered),
            p50=percentile(ordered, 50),
            p90=percentile(ordered, 90),
            p99=percentile(ordered, 99),
            max=ordered[-1],
        )
