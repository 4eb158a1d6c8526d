"""The `etcdctl check perf` parser, on output captured from real etcd 3.4 runs on 3 members."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.checkperf import interpret, parse_check_perf
from bench.load import Unsupported
from bench.results import Better

DATA = Path(__file__).parent / "data"


def test_passing_run_small_load() -> None:
    report = parse_check_perf((DATA / "checkperf_s_pass.txt").read_text())
    assert report.verdict == "PASS"
    assert (report.throughput, report.throughput_ok) == (150, True)
    assert (report.slowest, report.slowest_ok) == (0.133943, True)
    assert (report.stddev, report.stddev_ok) == (0.005012, True)
    assert report.error_count == 0


def test_failing_run_large_load() -> None:
    # --load=l on a 2-core machine: every bound missed, each FAIL line in its own wording.
    report = parse_check_perf((DATA / "checkperf_l_fail.txt").read_text())
    assert report.verdict == "FAIL"
    assert (report.throughput, report.throughput_ok) == (2007, False)
    assert (report.slowest, report.slowest_ok) == (0.998216, False)
    assert (report.stddev, report.stddev_ok) == (0.137218, False)


def test_errors_are_counted_by_kind() -> None:
    output = (
        "\r 60 / 60 Boooo! 100.00% 1m0s\n"
        "FAIL: too many errors\n"
        "FAIL: ERROR(rpc error: code = Unavailable desc = transport is closing) -> 12\n"
        "FAIL: ERROR(context deadline exceeded) -> 3\n"
        "FAIL: Throughput too low: 120 writes/s\n"
        "PASS: Slowest request took 0.400000s\n"
        "PASS: Stddev is 0.050000s\n"
        "FAIL\n"
    )
    report = parse_check_perf(output)
    assert report.error_count == 15
    assert report.errors["context deadline exceeded"] == 3
    assert report.verdict == "FAIL"
    assert report.slowest_ok is True


def test_cleanup_failure_is_kept() -> None:
    output = (
        "FAIL: Cleanup failed during key deletion: ERROR(context deadline exceeded)\n"
        "PASS: Throughput is 150 writes/s\n"
        "PASS: Slowest request took 0.1s\nPASS: Stddev is 0.01s\nPASS\n"
    )
    assert parse_check_perf(output).cleanup_error == "context deadline exceeded"


def test_metrics_are_in_milliseconds_with_directions() -> None:
    metrics = {
        m.name: m for m in parse_check_perf((DATA / "checkperf_s_pass.txt").read_text()).metrics()
    }
    assert metrics["verdict"].value == "PASS"
    assert metrics["throughput"].better is Better.HIGHER
    assert metrics["slowest request"].value == pytest.approx(133.943)
    assert metrics["slowest request"].unit == "ms"
    assert metrics["latency stddev"].better is Better.LOWER
    assert metrics["errors"].value == 0


def test_output_without_a_result_is_rejected() -> None:
    with pytest.raises(ValueError, match="no check perf result"):
        parse_check_perf('Error: prefix "/etcdctl-check-perf/" has keys.\n')


def test_failed_cleanup_is_told_apart_from_a_failed_start() -> None:
    # etcdctl 3.4 exits on a failed DeleteRange after the load, before printing its verdict.
    output = (DATA / "checkperf_s_pass.txt").read_text()
    bar_only = output[: output.index("PASS")]
    with pytest.raises(RuntimeError, match="load ran, then the DeleteRange of the prefix failed"):
        interpret(1, bar_only, "Error: etcdserver: request timed out\n")
    with pytest.raises(RuntimeError, match="exited 1: Error: context deadline exceeded"):
        interpret(1, "", "Error: context deadline exceeded\n")


def test_unimplemented_server_is_unsupported() -> None:
    stderr = "Error: rpc error: code = Unimplemented desc = unknown service etcdserverpb.KV\n"
    with pytest.raises(Unsupported, match="Unimplemented"):
        interpret(1, "", stderr)
