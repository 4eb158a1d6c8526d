"""Run `etcdctl check perf` (etcd's own load check) against a cluster and read its verdict.

`check perf --load=<model>` writes for a fixed 60 s from many Go clients at a rate limit
(s: 50 clients, 150 writes/s; m: 200, 1000/s; l: 500, 8000/s), each put a 256-byte binary key
under `/etcdctl-check-perf/` with a 1 KiB value. Before, it ranges over the prefix (limit 1) and
refuses to run if keys exist; after, it deletes the prefix with one DeleteRange (30 s timeout)
and, in 3.4, exits with that error instead of its verdict if the delete fails.
It compacts and defragments only when asked (`--auto-compact`, `--auto-defrag`), which this
harness does not do, so the check needs KV Range/Put/DeleteRange only: no lease, no watch.

It passes when throughput > 90% of the model's limit, the slowest request took <= 0.5 s and the
standard deviation is <= 0.1 s, with no errors. The text it prints is parsed as-is; a progress
bar precedes it, redrawn with carriage returns.
"""

from __future__ import annotations

import os
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from bench.load import Unsupported
from bench.results import Better, Metric

ETCDCTL_BIN = Path("/usr/bin/etcdctl")

# Write rate limit and client count of each load model (etcdctl's documented table).
LOAD_MODELS: dict[str, tuple[int, int]] = {"s": (150, 50), "m": (1000, 200), "l": (8000, 500)}
CHECK_SECONDS = 60

_THROUGHPUT = re.compile(r"Throughput (?:is|too low:) (\d+) writes/s")
_SLOWEST = re.compile(r"Slowest request took (?:too long: )?([0-9.]+)s")
_STDDEV = re.compile(r"Stddev (?:is|too high:) ([0-9.]+)s")
_ERROR = re.compile(r"ERROR\((.*)\) -> (\d+)$")
_CLEANUP = re.compile(r"Cleanup failed during key deletion: ERROR\((.*)\)$")
_UNIMPLEMENTED = ("Unimplemented", "unknown service", "unknown method")


@dataclass
class CheckPerfReport:
    """What one `etcdctl check perf` run printed. Times are in seconds."""

    verdict: str | None = None
    throughput: int | None = None
    throughput_ok: bool | None = None
    slowest: float | None = None
    slowest_ok: bool | None = None
    stddev: float | None = None
    stddev_ok: bool | None = None
    errors: dict[str, int] = field(default_factory=dict)
    cleanup_error: str | None = None

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())

    def metrics(self) -> list[Metric]:
        """The report as benchmark metrics, omitting lines the output lacked."""
        out: list[Metric] = []
        if self.verdict is not None:
            out.append(Metric("verdict", self.verdict))
        if self.throughput is not None:
            out.append(Metric("throughput", self.throughput, "writes/s", Better.HIGHER))
        if self.slowest is not None:
            out.append(Metric("slowest request", self.slowest * 1000, "ms", Better.LOWER))
        if self.stddev is not None:
            out.append(Metric("latency stddev", self.stddev * 1000, "ms", Better.LOWER))
        out.append(Metric("errors", self.error_count, "", Better.LOWER))
        return out


def parse_check_perf(output: str) -> CheckPerfReport:
    """Parse the text `etcdctl check perf` printed (stdout, progress bar included).

    Raises ValueError when the output has neither a verdict nor a throughput line, i.e. the
    check never got to measure (a connection error, a refusal because the prefix has keys).
    """
    report = CheckPerfReport()
    for raw in re.split(r"[\r\n]+", output):
        line = raw.strip()
        passed = line.startswith("PASS")
        if line in ("PASS", "FAIL"):
            report.verdict = line
        elif match := _THROUGHPUT.search(line):
            report.throughput, report.throughput_ok = int(match[1]), passed
        elif match := _SLOWEST.search(line):
            report.slowest, report.slowest_ok = float(match[1]), passed
        elif match := _STDDEV.search(line):
            report.stddev, report.stddev_ok = float(match[1]), passed
        elif match := _CLEANUP.search(line):
            report.cleanup_error = match[1]
        elif match := _ERROR.search(line):
            report.errors[match[1]] = report.errors.get(match[1], 0) + int(match[2])
    if report.verdict is None and report.throughput is None:
        raise ValueError(f"no check perf result in output: {output.strip()[-500:]!r}")
    return report


def run_check_perf(endpoints: str, load: str, slack_s: float = 90.0) -> CheckPerfReport:
    """Run `etcdctl check perf --load=<load>` against `endpoints`; see `interpret`."""
    if load not in LOAD_MODELS:
        raise ValueError(f"unknown load model {load!r}; expected one of {sorted(LOAD_MODELS)}")
    env = {k: v for k, v in os.environ.items() if not k.startswith("ETCDCTL_")}
    env["ETCDCTL_API"] = "3"
    proc = subprocess.run(
        [str(ETCDCTL_BIN), f"--endpoints={endpoints}", "check", "perf", f"--load={load}"],
        capture_output=True,
        text=True,
        env=env,
        timeout=CHECK_SECONDS + slack_s,
        check=False,
    )
    return interpret(proc.returncode, proc.stdout, proc.stderr)


def interpret(returncode: int, stdout: str, stderr: str) -> CheckPerfReport:
    """The report of a finished `etcdctl check perf`, or why there is none.

    Raises `Unsupported` when the server rejected a method as unimplemented, and RuntimeError
    when the check printed no result.
    """
    error = _last_line(stderr) or _last_line(stdout)
    if any(marker in stdout + stderr for marker in _UNIMPLEMENTED):
        raise Unsupported(error)
    try:
        return parse_check_perf(stdout)
    except ValueError:
        if f"{CHECK_SECONDS} / {CHECK_SECONDS}" in stdout:
            # The load ran to the end; etcdctl 3.4 then exits on a failed cleanup DeleteRange
            # without printing the verdict it had computed.
            raise RuntimeError(
                f"the {CHECK_SECONDS} s load ran, then the DeleteRange of the prefix failed and "
                f"etcdctl exited {returncode} without a verdict: {error}"
            ) from None
        raise RuntimeError(f"etcdctl check perf exited {returncode}: {error}") from None


def _last_line(text: str) -> str:
    lines = [line.strip() for line in re.split(r"[\r\n]+", text) if line.strip()]
    return lines[-1] if lines else ""
