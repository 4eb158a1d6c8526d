"""What a workload hands back, per system: named metrics, or the reason there are none.

Workloads return plain `Metric` lists; the runner wraps them in an `Outcome` with a status so a
workload raftkv cannot serve yet ("unsupported"), a crash ("failed") and a deliberate skip
("not run") are each reported as what they are, next to etcd's numbers, without stopping the run.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

# Appended by the runner to every workload's metrics (see bench.run._OtherCpu).
OTHER_CPU_METRIC = "machine: CPU used by other processes meanwhile"


class Better(enum.StrEnum):
    """Which direction of a metric is good; decides how a ratio reads."""

    HIGHER = "higher"
    LOWER = "lower"
    NEITHER = ""


class Status(enum.StrEnum):
    OK = "ok"
    UNSUPPORTED = "unsupported"
    FAILED = "failed"
    NOT_RUN = "not run"


@dataclass(frozen=True)
class Metric:
    """One measured number (or verdict text, such as PASS) with its unit."""

    name: str
    value: float | str
    unit: str = ""
    better: Better = Better.NEITHER


@dataclass
class Outcome:
    """The result of one workload on one system."""

    status: Status
    metrics: list[Metric] = field(default_factory=list)
    note: str = ""

    def value(self, name: str) -> float | str | None:
        for metric in self.metrics:
            if metric.name == name:
                return metric.value
        return None


@dataclass
class WorkloadResult:
    """One workload run against both systems."""

    name: str
    title: str
    description: str
    etcd: Outcome
    raftkv: Outcome
    headlines: tuple[str, ...] = ()
