"""`python -m bench.run`: raftkv and etcd side by side, one run, written up as ratios.

Usage: ``python -m bench.run [--quick] [--only NAME,...] [--output docs/BENCHMARKS.md]``.

Order: the raftkv-only micro-benchmarks first (each in its own process, before any cluster
runs), then each cluster workload against a fresh 3-member etcd cluster and then a fresh 3-member
raftkv cluster, so that a workload never inherits the data or the warm caches of another.
Whatever goes wrong on one side — a service raftkv does not have yet, a cluster that does not
start, a timeout — becomes a cell in the report, and the run goes on. A raftkv cluster that
failed to start is not tried again for the remaining workloads (each try can cost a minute).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc

from bench import machine, report
from bench.clusters import ELECTION_MS, HEARTBEAT_MS, Cluster, Kind, start_cluster
from bench.load import Unsupported
from bench.results import OTHER_CPU_METRIC, Metric, Outcome, Status, WorkloadResult
from bench.workloads import FULL, QUICK, Profile, Workload, selected

CHECKOUT = Path(__file__).resolve().parent.parent
MICRO = ("wal_bench", "raft_bench", "tracing_bench")


def _log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _micro_args(quick: bool) -> list[str]:
    # Both micro-benchmarks take --seconds (per measured setting); 1 s keeps --quick short.
    return ["--seconds", "1"] if quick else []


def run_micro(module: str, quick: bool, timeout: float) -> report.MicroResult:
    """Run `python -m bench.<module>` and keep the JSON it prints."""
    if not (CHECKOUT / "bench" / f"{module}.py").exists():
        return report.MicroResult(module, Status.NOT_RUN, note=f"bench/{module}.py not present")
    argv = [sys.executable, "-m", f"bench.{module}", *_micro_args(quick)]
    try:
        proc = subprocess.run(
            argv, capture_output=True, text=True, cwd=CHECKOUT, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired:
        return report.MicroResult(module, Status.FAILED, note=f"timed out after {timeout:.0f} s")
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return report.MicroResult(module, Status.FAILED, note=f"exit {proc.returncode}: {tail}")
    try:
        data = json.loads(proc.stdout)
    except json.JSONDecodeError as error:
        return report.MicroResult(module, Status.FAILED, note=f"output is not JSON: {error}")
    data = {"command": shlex.join(["python", *argv[1:]]), **data}
    return report.MicroResult(module, Status.OK, data=data)


def _one_line(error: BaseException) -> str:
    """The error's first line, and its last one (a member's final log line) if different."""
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    if not lines:
        return type(error).__name__
    text = lines[0] if len(lines) == 1 else f"{lines[0]} ... {lines[-1]}"
    return f"{type(error).__name__}: {text}"


class _OtherCpu:
    """CPU the rest of the machine used while a workload ran (other users, other jobs).

    Busy time of the whole machine minus this process, its children (etcdctl, restarted
    members once reaped) and the live members. Anything well above zero means the numbers
    were measured on a shared machine and are noisier than they look.
    """

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.start = time.monotonic()
        self.busy = machine.cpu_busy_seconds()
        self.ours = self._ours()

    def _ours(self) -> float:
        t = os.times()
        return t.user + t.system + t.children_user + t.children_system + self.cluster.cpu_seconds()

    def metric(self) -> Metric:
        elapsed = time.monotonic() - self.start
        other = (machine.cpu_busy_seconds() - self.busy) - (self._ours() - self.ours)
        return Metric(OTHER_CPU_METRIC, max(0.0, other) / elapsed, "cores")


def run_workload(
    workload: Workload,
    kind: Kind,
    profile: Profile,
    workdir: Path,
    broken: dict[Kind, str],
    quiet_wait: float = 0.0,
) -> Outcome:
    """Start a fresh cluster of `kind`, run `workload` on it, stop it.

    A kind whose cluster did not start is recorded in `broken` and not started again. With
    `quiet_wait`, first wait up to that many seconds for other processes to go quiet.
    """
    if kind in broken:
        return Outcome(Status.FAILED, note=broken[kind])
    if quiet_wait > 0:
        quiet, busy = machine.wait_quiet(quiet_wait)
        if not quiet:
            _log(f"machine still busy ({busy:.2f} cores) after {quiet_wait:.0f} s; going on")
    try:
        cluster = start_cluster(kind, workdir)
    except Exception as error:
        _log(f"{kind} cluster did not start: {error}")
        broken[kind] = f"not tried: the cluster did not start for `{workload.name}`"
        return Outcome(Status.FAILED, note=f"cluster did not start: {_one_line(error)}")
    limit = workload.time_limit(profile)
    meter = _OtherCpu(cluster)
    try:
        metrics = asyncio.run(asyncio.wait_for(workload.run(cluster, profile), limit))
        return Outcome(Status.OK, [*metrics, meter.metric()])
    except Unsupported as error:
        return Outcome(Status.UNSUPPORTED, note=str(error))
    except grpc.aio.AioRpcError as error:
        status = Status.UNSUPPORTED if error.code() is grpc.StatusCode.UNIMPLEMENTED else None
        return Outcome(status or Status.FAILED, note=f"{error.code().name}: {error.details()}")
    except TimeoutError:
        return Outcome(Status.FAILED, note=f"did not finish within {limit:.0f} s")
    except Exception as error:
        for member in cluster.members:
            if not member.alive:
                _log(f"{kind} {member.name} exited:\n{member.log_tail()}")
        return Outcome(Status.FAILED, note=_one_line(error))
    finally:
        cluster.stop()


def method(profile: Profile, wait_quiet: float) -> list[str]:
    """How the numbers were taken, for the report."""
    waited = (
        [
            f"Before each run the harness waited (up to {wait_quiet:g} s) until other processes "
            "used under 0.25 cores over 2 s (`--wait-quiet`)."
        ]
        if wait_quiet > 0
        else []
    )
    return [
        *waited,
        f"Profile `{profile.name}`: each measured phase runs {profile.seconds:g} s after a "
        f"{profile.warmup:g} s warm-up.",
        "Clusters: 3 members on 127.0.0.1, a fresh cluster per workload and system, data dirs "
        "in one temporary directory inside the checkout (the disk described above), "
        f"heartbeat {HEARTBEAT_MS} ms and election timeout {ELECTION_MS} ms for both; every "
        "other setting is each system's default. raftkv members run as "
        "`python -m raftkv.cli.server` with etcd's flags.",
        "Load generator: one Python process (grpc.aio and raftkv's generated etcd v3 stubs, "
        "the same requests for both systems), closed loop (each client waits for its answer), "
        "one HTTP/2 connection per member with clients spread over them. On a machine this "
        "size the generator competes with the members for CPU, so fast etcd numbers may be "
        "bounded by the client; 'member CPU per op' (CPU of all three members divided by "
        "requests) does not depend on that, and 'load generator CPU' shows how busy the "
        "client was (1.0 = one full core). CPU per op is also the figure least disturbed when "
        "other jobs share the machine.",
        "Latency percentiles are nearest-rank over every request of the measured phase.",
        "`etcdctl check perf` is etcd's own Go load tool, run unchanged against both.",
        f"'{OTHER_CPU_METRIC}' is the machine's busy CPU time during the workload minus the "
        "members', the load generator's and etcdctl's, in cores: anything well above 0 means "
        "other jobs shared the machine and the numbers (and their ratio, since etcd and "
        "raftkv ran at different moments) are noisier than they look.",
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short run (about 3 minutes)")
    parser.add_argument("--only", help="comma-separated workload names (and wal_bench, ...)")
    parser.add_argument(
        "--output",
        type=Path,
        default=CHECKOUT / "docs" / "BENCHMARKS.md",
        help="where to write the report (default: docs/BENCHMARKS.md)",
    )
    parser.add_argument(
        "--wait-quiet",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="before each cluster run, wait up to SECONDS for other processes to use < 0.25 "
        "cores (for shared machines; lengthens the run)",
    )
    args = parser.parse_args(argv)

    profile = QUICK if args.quick else FULL
    only = [name.strip() for name in args.only.split(",")] if args.only else None
    micro_names = [m for m in MICRO if only is None or m in only]
    cluster_only = [n for n in only if n not in MICRO] if only else None
    if only is not None and not cluster_only:
        workloads: list[Workload] = []
        skipped: dict[str, str] = {}
    else:
        try:
            workloads, skipped = selected(profile, cluster_only)
        except ValueError as error:
            parser.error(str(error))

    started = time.monotonic()
    date = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    workdir = Path(tempfile.mkdtemp(prefix=".bench-run-", dir=CHECKOUT))
    try:
        run = report.Run(
            command=shlex.join(["python", "-m", "bench.run", *(argv or sys.argv[1:])]),
            date=date,
            seconds=0.0,
            machine=machine.describe(workdir, CHECKOUT),
            method=method(profile, args.wait_quiet),
            skipped=skipped,
        )
        for module in micro_names:
            _log(f"micro-benchmark {module}")
            if args.wait_quiet > 0:
                machine.wait_quiet(args.wait_quiet)
            run.micro.append(run_micro(module, args.quick, timeout=300))
        broken: dict[Kind, str] = {}
        for workload in workloads:
            outcomes: dict[Kind, Outcome] = {}
            for kind in Kind:
                _log(f"{workload.name} on {kind}")
                outcomes[kind] = run_workload(
                    workload, kind, profile, workdir, broken, args.wait_quiet
                )
                if outcomes[kind].note:
                    _log(
                        f"{workload.name} on {kind}: {outcomes[kind].status}: {outcomes[kind].note}"
                    )
            result = WorkloadResult(
                name=workload.name,
                title=workload.title,
                description=workload.description,
                etcd=outcomes[Kind.ETCD],
                raftkv=outcomes[Kind.RAFTKV],
                headlines=workload.headlines,
            )
            run.workloads.append(result)
            _log(report.headline(result))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    run.seconds = time.monotonic() - started
    run.machine["Load average at end"] = machine.load_average()
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(report.render(run))
    _log(f"wrote {args.output} after {run.seconds:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
