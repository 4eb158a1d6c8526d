"""bench/raft_bench.py keeps working: a very short run prints a consistent JSON report."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_bench_reports_committed_proposals() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "bench.raft_bench", "--seconds", "0.05", "--batches", "1,32"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    report = json.loads(out)
    assert report["benchmark"] == "raft_core"
    one, batched = report["results"]
    assert one["batch"] == 1 and batched["batch"] == 32
    assert one["proposals_committed"] > 0 and batched["proposals_committed"] % 32 == 0
    assert one["steps_per_second"] > 0
    # batching proposals between Readies shares the MsgApp/MsgAppResp round between them
    assert batched["messages_per_proposal"] < one["messages_per_proposal"] / 4
