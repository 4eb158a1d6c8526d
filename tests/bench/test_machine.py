"""The machine description and the CPU meter the report relies on, read from this machine."""

from __future__ import annotations

import time
from pathlib import Path

from bench.machine import UNKNOWN, cpu_busy_seconds, describe


def test_description_names_everything_the_report_promises(tmp_path: Path) -> None:
    facts = describe(tmp_path, Path(__file__).resolve().parents[2])
    for key in ("CPU", "Cores", "Memory", "Data disk", "Kernel", "Python", "etcd"):
        assert facts[key], key
    assert facts["Cores"] != UNKNOWN and int(facts["Cores"]) >= 1
    assert facts["Memory"].endswith("GiB")
    # The disk line names the filesystem that holds the data dirs.
    assert facts["Data disk"].split()[0] in Path("/proc/mounts").read_text()


def test_busy_cpu_counts_this_process_burning_cpu() -> None:
    before = cpu_busy_seconds()
    start = time.process_time()
    while time.process_time() - start < 0.3:
        pass
    assert cpu_busy_seconds() - before >= 0.25
