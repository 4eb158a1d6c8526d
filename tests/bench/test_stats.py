"""Percentiles and ratios: the arithmetic every number in BENCHMARKS.md goes through."""

from __future__ import annotations

import random

import pytest

from bench.stats import LatencySummary, percentile, ratio


def test_nearest_rank_percentiles_of_one_to_hundred() -> None:
    samples = [float(n) for n in range(1, 101)]
    random.Random(7).shuffle(samples)
    assert percentile(samples, 50) == 50
    assert percentile(samples, 90) == 90
    assert percentile(samples, 99) == 99
    assert percentile(samples, 100) == 100
    assert percentile(samples, 0.5) == 1


def test_percentile_is_always_a_real_sample() -> None:
    samples = [0.001, 0.002, 0.010, 0.500]
    # Nearest rank: ceil(0.5 * 4) = 2nd smallest; ceil(0.99 * 4) = 4th. No interpolation.
    assert percentile(samples, 50) == 0.002
    assert percentile(samples, 99) == 0.500
    assert percentile([3.0], 1) == percentile([3.0], 99) == 3.0


@pytest.mark.parametrize("p", [0, -1, 100.5])
def test_percentile_rejects_out_of_range(p: float) -> None:
    with pytest.raises(ValueError):
        percentile([1.0], p)


def test_percentile_of_nothing_is_an_error() -> None:
    with pytest.raises(ValueError):
        percentile([], 50)


def test_latency_summary() -> None:
    summary = LatencySummary.of([0.004, 0.001, 0.003, 0.002] * 25)
    assert summary.count == 100
    assert (summary.p50, summary.p90, summary.p99, summary.max) == (0.002, 0.004, 0.004, 0.004)


def test_ratio_is_raftkv_over_etcd() -> None:
    assert ratio(250.0, 1000.0) == 0.25
    assert ratio(30.0, 3.0) == 10.0


@pytest.mark.parametrize(("raftkv", "etcd"), [(None, 1.0), (1.0, None), (1.0, 0.0)])
def test_ratio_without_two_numbers_is_none(raftkv: float | None, etcd: float | None) -> None:
    assert ratio(raftkv, etcd) is None
