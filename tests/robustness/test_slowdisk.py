"""The slow-disk launcher delays a sync by what its control file says, and only then."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support import slowdisk


def test_sync_waits_for_the_delay_in_the_control_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    slept: list[float] = []
    synced: list[int] = []
    monkeypatch.setattr(slowdisk.time, "sleep", slept.append)
    control = tmp_path / "m0.slowdisk"
    delay = slowdisk._Delay(str(control))
    sync = slowdisk._slowed(synced.append, delay)

    sync(3)
    assert (slept, synced) == ([], [3])  # no file: no delay

    control.write_text("0.25\n")
    delay._read_at = 0.0  # read the file again now rather than within 100 ms
    sync(4)
    assert (slept, synced) == ([0.25], [3, 4])

    control.unlink()
    delay._read_at = 0.0
    sync(5)
    assert (slept, synced) == ([0.25], [3, 4, 5])
