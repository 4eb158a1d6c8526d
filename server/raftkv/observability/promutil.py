"""Small helpers shared by the metric modules: etcd's bucket layouts and label spellings."""

from __future__ import annotations


def exponential_buckets(start: float, factor: float, count: int) -> tuple[float, ...]:
    """Prometheus' ExponentialBuckets: `count` upper bounds from `start`, each `factor` apart."""
    return tuple(start * factor**i for i in range(count))


def member_hex(member_id: int) -> str:
    """A member ID as etcd prints it in labels (`8e9e05c52164694d`)."""
    return f"{member_id:x}"


# etcd's buckets, so quantiles computed over raftkv and etcd members compare bucket for bucket.
DISK_BUCKETS = exponential_buckets(0.001, 2, 14)  # 1 ms .. 8 s: WAL fsync, backend commit
SNAPSHOT_BUCKETS = exponential_buckets(0.001, 2, 14)
PEER_RTT_BUCKETS = exponential_buckets(0.0001, 2, 14)  # 0.1 ms .. 0.8 s
# raftkv's own batch-size histograms: 1, 2, 4, ... 4096 entries.
BATCH_BUCKETS = exponential_buckets(1, 2, 13)
