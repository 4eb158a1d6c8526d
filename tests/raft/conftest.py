"""Shared fixtures for the whole-cluster Raft tests: golden transcript comparison.

``pytest tests/raft --update-golden`` (or ``RAFT_UPDATE_GOLDEN=1``) rewrites the files under
``testdata/`` instead of comparing against them. The option is registered here, so it exists
only when pytest is pointed at this folder; the environment variable works from anywhere.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Callable
from pathlib import Path

import pytest

TESTDATA = Path(__file__).parent / "testdata"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--update-golden",
        action="store_true",
        default=False,
        help="rewrite tests/raft/testdata/*.txt from the current behaviour",
    )


@pytest.fixture
def golden(request: pytest.FixtureRequest) -> Callable[[str, str], None]:
    """Compare a transcript with testdata/<name>.txt, or rewrite the file when updating."""
    update = request.config.getoption("--update-golden", default=False) or bool(
        os.environ.get("RAFT_UPDATE_GOLDEN")
    )

    def check(name: str, text: str) -> None:
        path = TESTDATA / f"{name}.txt"
        if update:
            TESTDATA.mkdir(exist_ok=True)
            path.write_text(text)
            return
        if not path.exists():
            pytest.fail(f"{path} is missing; run pytest tests/raft --update-golden")
        want = path.read_text()
        if text != want:
            diff = difflib.unified_diff(
                want.splitlines(), text.splitlines(), str(path), "this run", lineterm="", n=2
            )
            shown = "\n".join(list(diff)[:80])
            pytest.fail(
                f"transcript differs from {path.name} (rerun with --update-golden if the new "
                f"behaviour is right):\n{shown}",
                pytrace=False,
            )

    return check
