"""Fault injection against a real cluster under load, with every check (see scenario.py).

Bounded for `make test` (ROBUSTNESS_DURATION, default 80 s of faults, a fixed seed); `make
robustness-long` runs 30 minutes with a fresh seed. A failure prints the seed, the fault
timeline and the checkers' explanations; the full report and history stay under pytest's tmp
dir (`robustness-report/`).
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from tests.robustness.scenario import Settings, run

DURATION = float(os.environ.get("ROBUSTNESS_DURATION", "80"))
SEED = int(os.environ.get("ROBUSTNESS_SEED", "1"))
MEMBERS = int(os.environ.get("ROBUSTNESS_MEMBERS", "3"))

pytestmark = pytest.mark.integration


@pytest.mark.timeout(DURATION * 2 + 300)
def test_faults_under_load(tmp_path: Path) -> None:
    settings = Settings(
        seed=SEED,
        duration=DURATION,
        members=MEMBERS,
        check_timeout=max(60.0, DURATION / 3),
    )
    outcome = asyncio.run(run(tmp_path, settings))
    print(outcome.summary)
    print(f"report: {outcome.report_path}")
    assert outcome.ok, (
        f"{outcome.summary}\n\nreport and history: {outcome.report_path}\n\n"
        + "\n\n".join(outcome.problems)[:20000]
    )
