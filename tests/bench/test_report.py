"""BENCHMARKS.md rendering: paired numbers, ratios, and honest cells for missing sides."""

from __future__ import annotations

from bench.report import (
    MicroResult,
    Run,
    format_number,
    format_ratio,
    render,
    summary_table,
    workload_table,
)
from bench.results import OTHER_CPU_METRIC, Better, Metric, Outcome, Status, WorkloadResult


def _row(table: str, metric: str) -> list[str]:
    for line in table.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if cells[0] == metric:
            return cells
    raise AssertionError(f"no row {metric!r} in:\n{table}")


def _puts(raftkv: Outcome) -> WorkloadResult:
    etcd = Outcome(
        Status.OK,
        [
            Metric("throughput", 1000.0, "ops/s", Better.HIGHER),
            Metric("p99", 8.0, "ms", Better.LOWER),
            Metric("load generator CPU", 0.5, "cores"),
        ],
    )
    return WorkloadResult("put", "Writes", "Puts.", etcd=etcd, raftkv=raftkv)


def test_table_pairs_values_and_ratio() -> None:
    raftkv = Outcome(
        Status.OK,
        [
            Metric("throughput", 250.0, "ops/s", Better.HIGHER),
            Metric("p99", 80.0, "ms", Better.LOWER),
            Metric("load generator CPU", 0.25, "cores"),
        ],
    )
    table = workload_table(_puts(raftkv))
    assert _row(table, "throughput") == ["throughput", "ops/s", "1,000", "250", "0.250x", "higher"]
    assert _row(table, "p99") == ["p99", "ms", "8.00", "80.0", "10.0x", "lower"]
    # A metric with no good direction gets no ratio.
    assert _row(table, "load generator CPU")[4] == "-"


def test_unsupported_side_shows_its_status_in_every_cell_and_its_reason() -> None:
    result = _puts(Outcome(Status.UNSUPPORTED, note="UNIMPLEMENTED: unknown service Lease"))
    table = workload_table(result)
    assert _row(table, "throughput")[2:5] == ["1,000", "unsupported", "-"]
    assert _row(table, "p99")[3] == "unsupported"
    page = render(
        Run(
            command="python -m bench.run",
            date="today",
            seconds=60,
            machine={},
            method=[],
            workloads=[result],
        )
    )
    assert "- raftkv (unsupported): UNIMPLEMENTED: unknown service Lease" in page


def test_metric_only_one_side_reported_still_gets_a_row() -> None:
    raftkv = Outcome(
        Status.OK,
        [
            Metric("throughput", 900.0, "ops/s", Better.HIGHER),
            Metric("1M keys: not reached", "3000 keys loaded"),
        ],
    )
    table = workload_table(_puts(raftkv))
    assert _row(table, "1M keys: not reached")[2:4] == ["-", "3000 keys loaded"]
    assert _row(table, "p99")[3:5] == ["-", "-"]


def test_page_has_machine_micro_benchmarks_and_skips() -> None:
    micro = MicroResult(
        "wal_bench",
        Status.OK,
        data={"entry_bytes": 256, "results": [{"writers": 1, "appends_per_second": 812.5}]},
    )
    page = render(
        Run(
            command="python -m bench.run --quick",
            date="2025-01-01 00:00 UTC",
            seconds=170,
            machine={"CPU": "Test CPU", "Cores": "2"},
            method=["Profile `quick`."],
            micro=[micro, MicroResult("raft_bench", Status.NOT_RUN, note="not present")],
            skipped={"checkperf-m": "not part of the quick run"},
        )
    )
    assert "| CPU | Test CPU |" in page
    assert "`python -m bench.run --quick`" in page
    assert "| writers | appends_per_second |" in page
    assert "| 1 | 812 |" in page
    assert "entry_bytes: 256" in page
    assert "not run: not present" in page
    assert "- `checkperf-m`: not part of the quick run" in page


def test_number_formats() -> None:
    assert format_number(12345) == "12,345"
    assert format_number(2394.6) == "2,395"
    assert format_number(23.56) == "23.6"
    assert format_number(1.444) == "1.44"
    assert format_number(0.0123456) == "0.0123"
    assert format_ratio(None) == "-"
    assert format_ratio(0.0456) == "0.0456x"


def test_summary_shows_each_workloads_headlines() -> None:
    ok = _puts(Outcome(Status.OK, [Metric("throughput", 500.0, "ops/s", Better.HIGHER)]))
    ok.headlines = ("throughput", "p99")
    lease = WorkloadResult(
        "lease",
        "Lease",
        "Keep-alive.",
        etcd=Outcome(Status.OK, [Metric("16 streams: throughput", 4000.0, "ops/s", Better.HIGHER)]),
        raftkv=Outcome(Status.UNSUPPORTED, note="no Lease"),
        headlines=("16 streams: throughput",),
    )
    table = summary_table([ok, lease])
    assert "| put | throughput (ops/s) | 1,000 | 500 | 0.500x | higher |" in table
    # raftkv did not report p99: its cell says so, and there is no ratio.
    assert "| put | p99 (ms) | 8.00 | - | - | lower |" in table
    assert "| lease | 16 streams: throughput (ops/s) | 4,000 | unsupported | - | higher |" in table
    page = render(
        Run(command="c", date="d", seconds=1, machine={}, method=[], workloads=[ok, lease])
    )
    assert page.index("## Summary") < page.index("## Machine")


def test_page_warns_when_other_processes_shared_the_machine() -> None:
    def result(other_cpu: float) -> WorkloadResult:
        metrics = [
            Metric("throughput", 1.0, "ops/s", Better.HIGHER),
            Metric(OTHER_CPU_METRIC, other_cpu, "cores"),
        ]
        return WorkloadResult(
            "put",
            "Writes",
            "Puts.",
            Outcome(Status.OK, metrics),
            Outcome(Status.OK, metrics),
            headlines=("throughput",),
        )

    def page(other_cpu: float) -> str:
        run = Run("c", "d", 1, {}, [], workloads=[result(other_cpu)])
        return render(run)

    assert "Shared machine" in page(1.5)
    assert "1.50 to 1.50 CPU cores" in page(1.5)
    assert "Shared machine" not in page(0.02)
