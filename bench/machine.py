"""Describe the machine a benchmark ran on, so a reader can tell what the numbers mean.

Everything comes from /proc, /sys and the binaries themselves; a piece that cannot be read is
reported as "unknown" rather than failing the run.
"""

from __future__ import annotations

import os
import platform
import subprocess
import time
from pathlib import Path

from bench.clusters import ETCD_BIN

UNKNOWN = "unknown"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or UNKNOWN


def _memory() -> str:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    except OSError:
        pass
    return UNKNOWN


def _mount_of(path: Path) -> tuple[str, str, str] | None:
    """(device, mount point, filesystem type) of the mount holding `path`."""
    path = path.resolve()
    best: tuple[str, str, str] | None = None
    try:
        lines = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        device, mount_point, fstype, *_ = line.split()
        mount = Path(mount_point)
        if (mount == path or mount in path.parents) and (
            best is None or len(mount_point) >= len(best[1])
        ):
            best = (device, mount_point, fstype)
    return best


def _disk(path: Path) -> str:
    mount = _mount_of(path)
    if mount is None:
        return UNKNOWN
    device, mount_point, fstype = mount
    text = f"{fstype} on {device} (mounted at {mount_point})"
    block = Path("/sys/class/block") / Path(device).name
    try:
        # A partition's queue attributes live on its parent disk.
        queue = block / "queue" if (block / "queue").exists() else block.resolve().parent / "queue"
        rotational = (queue / "rotational").read_text().strip()
        text += ", reported rotational" if rotational == "1" else ", reported non-rotational"
    except OSError:
        pass
    return text


def _etcd_version() -> str:
    try:
        out = subprocess.run(
            [str(ETCD_BIN), "--version"], capture_output=True, text=True, timeout=10, check=False
        ).stdout
    except OSError:
        return UNKNOWN
    for line in out.splitlines():
        if line.startswith("etcd Version:"):
            return line.split(":", 1)[1].strip()
    return UNKNOWN


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=10, check=True
    ).stdout.strip()


def _git_commit(repo: Path) -> str:
    """HEAD's short hash, flagged when the server's sources differ from it."""
    try:
        head = _git(repo, "rev-parse", "--short", "HEAD")
        dirty = _git(repo, "status", "--porcelain", "--", "server")
    except (OSError, subprocess.SubprocessError):
        return UNKNOWN
    return f"{head} (with uncommitted changes in server/)" if dirty else head


def cpu_busy_seconds() -> float:
    """CPU time all processes on the machine have spent busy since boot (from /proc/stat)."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    # user nice system idle iowait irq softirq steal ...: busy is everything but idle/iowait.
    ticks = [int(f) for f in fields[:8]]
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")


def wait_quiet(
    max_wait: float, threshold_cores: float = 0.25, sample_s: float = 2.0
) -> tuple[bool, float]:
    """Wait up to `max_wait` s until the machine's busy CPU over `sample_s` is below
    `threshold_cores` (call it with nothing of ours running). Returns (quiet, last sample).
    """
    deadline = time.monotonic() + max_wait
    while True:
        before = cpu_busy_seconds()
        time.sleep(sample_s)
        busy = (cpu_busy_seconds() - before) / sample_s
        if busy < threshold_cores or time.monotonic() >= deadline:
            return busy < threshold_cores, busy


def load_average() -> str:
    """The 1, 5 and 15 minute load averages."""
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return UNKNOWN


def describe(data_dir: Path, repo: Path) -> dict[str, str]:
    """Ordered facts about this machine and the software under test."""
    return {
        "CPU": _cpu_model(),
        "Cores": str(os.cpu_count() or UNKNOWN),
        "Memory": _memory(),
        "Data disk": _disk(data_dir),
        "Kernel": f"{platform.system()} {platform.release()}",
        "Python": f"{platform.python_implementation()} {platform.python_version()}",
        "etcd": _etcd_version(),
        "raftkv commit": _git_commit(repo),
        "Load average at start": load_average(),
    }
