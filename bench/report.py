"""Render a benchmark run as docs/BENCHMARKS.md: machine, method, one table per workload.

Each table pairs etcd's number with raftkv's for the same metric and adds the ratio
raftkv/etcd, so a reader sees at once how far raftkv is from the reference on this machine.
A side without numbers shows its status (unsupported, failed, not run) in every cell, and its
reason under the table. Rendering is pure (data in, text out) so it can be tested.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from bench.results import OTHER_CPU_METRIC, Better, Metric, Outcome, Status, WorkloadResult
from bench.stats import ratio


@dataclass
class MicroResult:
    """A raftkv-only micro-benchmark: its JSON output, or why there is none."""

    name: str
    status: Status
    data: dict[str, Any] | None = None
    note: str = ""


@dataclass
class Run:
    """Everything one `bench.run` invocation measured."""

    command: str
    date: str
    seconds: float
    machine: dict[str, str]
    method: list[str]
    workloads: list[WorkloadResult] = field(default_factory=list)
    micro: list[MicroResult] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)


def format_number(value: float) -> str:
    """A number with as many digits as its size deserves (3 significant ones when small)."""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    magnitude = abs(value)
    if magnitude >= 100:
        return f"{value:,.0f}"
    if magnitude >= 10:
        return f"{value:.1f}"
    if magnitude >= 1 or value == 0:
        return f"{value:.2f}"
    return f"{value:#.3g}"


def format_ratio(value: float | None) -> str:
    return "-" if value is None else f"{format_number(value)}x"


def _cell(outcome: Outcome, metric_name: str) -> str:
    if outcome.status is not Status.OK:
        return outcome.status.value
    value = outcome.value(metric_name)
    if value is None:
        return "-"
    if isinstance(value, str):
        return value
    return format_number(value)


def _metric_rows(result: WorkloadResult) -> list[Metric]:
    """Metrics in etcd's order, followed by any that only raftkv reported."""
    seen: dict[str, Metric] = {}
    for outcome in (result.etcd, result.raftkv):
        for metric in outcome.metrics:
            seen.setdefault(metric.name, metric)
    return list(seen.values())


def _cells(result: WorkloadResult, metric: Metric) -> tuple[str, str, str]:
    """(etcd, raftkv, ratio) cells of one metric; a ratio only where a direction is good."""
    etcd_value = result.etcd.value(metric.name) if result.etcd.status is Status.OK else None
    raftkv_value = result.raftkv.value(metric.name) if result.raftkv.status is Status.OK else None
    r = None
    if (
        metric.better is not Better.NEITHER
        and isinstance(etcd_value, int | float)
        and isinstance(raftkv_value, int | float)
    ):
        r = ratio(raftkv_value, etcd_value)
    return _cell(result.etcd, metric.name), _cell(result.raftkv, metric.name), format_ratio(r)


def workload_table(result: WorkloadResult) -> str:
    """The Markdown table for one workload (metric, etcd, raftkv, ratio, better)."""
    rows = _metric_rows(result)
    if not rows:
        return ""
    lines = [
        "| metric | unit | etcd | raftkv | raftkv/etcd | better |",
        "|---|---|--:|--:|--:|---|",
    ]
    for metric in rows:
        etcd, raftkv, r = _cells(result, metric)
        lines.append(
            f"| {metric.name} | {metric.unit} | {etcd} | {raftkv} | {r} | {metric.better.value} |"
        )
    return "\n".join(lines)


def summary_table(results: list[WorkloadResult]) -> str:
    """One row per headline metric of every workload: the page at a glance."""
    lines = [
        "| workload | metric | etcd | raftkv | raftkv/etcd | better |",
        "|---|---|--:|--:|--:|---|",
    ]
    for result in results:
        rows = {m.name: m for m in _metric_rows(result)}
        for name in result.headlines:
            metric = rows.get(name, Metric(name, ""))
            etcd, raftkv, r = _cells(result, metric)
            unit = f" ({metric.unit})" if metric.unit else ""
            lines.append(
                f"| {result.name} | {name}{unit} | {etcd} | {raftkv} | {r} "
                f"| {metric.better.value} |"
            )
    return "\n".join(lines)


def _notes(result: WorkloadResult) -> list[str]:
    notes = []
    for system, outcome in (("etcd", result.etcd), ("raftkv", result.raftkv)):
        if outcome.note:
            label = outcome.status.value if outcome.status is not Status.OK else "note"
            notes.append(f"- {system} ({label}): {outcome.note}")
    return notes


def _micro_section(micro: MicroResult) -> list[str]:
    lines = [f"### {micro.name}", ""]
    if micro.status is not Status.OK or micro.data is None:
        return [*lines, f"{micro.status.value}: {micro.note}", ""]
    scalars = {k: v for k, v in micro.data.items() if not isinstance(v, list | dict)}
    if scalars:
        lines += [", ".join(f"{k}: {v}" for k, v in scalars.items()), ""]
    for key, value in micro.data.items():
        if isinstance(value, list) and value and all(isinstance(row, dict) for row in value):
            columns = list(dict.fromkeys(col for row in value for col in row))
            lines += [
                f"| {' | '.join(columns)} |",
                f"|{'--:|' * len(columns)}",
                *(
                    "| " + " | ".join(_micro_value(row.get(col)) for col in columns) + " |"
                    for row in value
                ),
                "",
            ]
        elif isinstance(value, list | dict):
            lines += [f"{key}:", "", "```json", json.dumps(value, indent=2), "```", ""]
    return lines


def _micro_value(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, int | float):
        return format_number(value)
    return str(value)


# Other processes' CPU (cores) above which the page warns that the numbers are noisy.
CONTENTION_CORES = 0.25


def _contention(results: list[WorkloadResult]) -> list[str]:
    """A warning paragraph when other processes shared the machine during the run."""
    shares = [
        value
        for result in results
        for outcome in (result.etcd, result.raftkv)
        if isinstance(value := outcome.value(OTHER_CPU_METRIC), int | float)
    ]
    if not shares or max(shares) < CONTENTION_CORES:
        return []
    return [
        f"**Shared machine:** other processes used {format_number(min(shares))} to "
        f"{format_number(max(shares))} CPU cores while the workloads ran (row "
        f"'{OTHER_CPU_METRIC}' of each table). The numbers are lower and noisier than on a "
        "quiet machine, and since etcd and raftkv ran one after the other, the ratios are "
        "rough; rerun with `--wait-quiet` when the machine is idle.",
        "",
    ]


def render(run: Run) -> str:
    """The whole BENCHMARKS.md for `run`."""
    out = [
        "# Benchmarks: raftkv beside etcd",
        "",
        f"Generated by `{run.command}` on {run.date} in {run.seconds / 60:.1f} min. "
        "Do not edit by hand; run it again.",
        "",
        "Every table compares a 3-member etcd cluster with a 3-member raftkv cluster measured "
        "in the same run on the same machine. The ratio is raftkv/etcd: where higher is better "
        "(throughput), 1.0 means as good as etcd and 0.1 means a tenth of etcd's; where lower "
        "is better (latency, memory, CPU), 10 means ten times etcd's.",
        "",
        *(
            ["## Summary", "", summary_table(run.workloads), "", *_contention(run.workloads)]
            if any(r.headlines for r in run.workloads)
            else []
        ),
        "## Machine",
        "",
        "| | |",
        "|---|---|",
        *(f"| {key} | {value} |" for key, value in run.machine.items()),
        "",
        "## Method",
        "",
        *(f"- {line}" for line in run.method),
        "",
    ]
    for result in run.workloads:
        out += [f"## {result.title}", "", f"`--only {result.name}`. {result.description}", ""]
        table = workload_table(result)
        if table:
            out += [table, ""]
        notes = _notes(result)
        if notes:
            out += [*notes, ""]
    if run.micro:
        out += ["## Micro-benchmarks (raftkv only)", ""]
        for micro in run.micro:
            out += _micro_section(micro)
    if run.skipped:
        out += ["## Not run", ""]
        out += [f"- `{name}`: {reason}" for name, reason in run.skipped.items()]
        out.append("")
    return "\n".join(out)


def headline(result: WorkloadResult) -> str:
    """One console line: the workload's first metric on both sides and the ratio."""
    rows = _metric_rows(result)
    if not rows:
        return f"{result.name}: etcd {result.etcd.status}, raftkv {result.raftkv.status}"
    first = next((m for m in rows if m.better is not Better.NEITHER), rows[0])
    etcd_cell, raftkv_cell = _cell(result.etcd, first.name), _cell(result.raftkv, first.name)
    return f"{result.name}: {first.name} etcd {etcd_cell} raftkv {raftkv_cell} {first.unit}"
