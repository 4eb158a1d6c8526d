"""Logs come out as etcd-style (zap) JSON lines that tools can parse."""

from __future__ import annotations

import datetime
import io
import json
import logging
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from raftkv.observability.logging import configure_logging, log_fields


@pytest.fixture
def stream() -> Iterator[io.StringIO]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    out = io.StringIO()
    yield out
    root.handlers[:] = handlers
    root.setLevel(level)
    logging.captureWarnings(False)


def lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_a_record_is_one_zap_shaped_json_line(stream: io.StringIO) -> None:
    configure_logging("info", name="infra1", stream=stream)
    before = datetime.datetime.now(datetime.UTC)
    logging.getLogger("raftkv.node.raft_node").info("applied %d entries", 3)
    (line,) = lines(stream)
    assert list(line)[:4] == ["level", "ts", "caller", "msg"]
    assert line["level"] == "info"
    assert line["msg"] == "applied 3 entries"
    assert line["name"] == "infra1"
    assert line["caller"].startswith("observability/test_logging.py:")
    ts = datetime.datetime.fromisoformat(line["ts"].replace("Z", "+00:00"))
    assert abs((ts - before).total_seconds()) < 60
    assert line["ts"].endswith("Z")


def test_fields_become_top_level_keys(stream: io.StringIO) -> None:
    configure_logging("info", name="infra1", stream=stream)
    log = logging.getLogger("raftkv.transport")
    log_fields(log, "stream established", peer="8e9e05c52164694d", urls=["http://a:2380"])
    log.warning("slow fsync", extra={"took_ms": 1200.5})
    first, second = lines(stream)
    assert first["peer"] == "8e9e05c52164694d"
    assert first["urls"] == ["http://a:2380"]
    # log_fields reports where it was called from, not itself.
    assert first["caller"].startswith("observability/test_logging.py:")
    assert (second["level"], second["took_ms"]) == ("warn", 1200.5)


def test_values_json_cannot_encode_are_written_as_text(stream: io.StringIO) -> None:
    configure_logging("info", name="n", stream=stream)
    log_fields(logging.getLogger("x"), "odd", value=object.__new__(type("Thing", (), {})))
    assert "Thing object" in lines(stream)[0]["value"]


def test_level_filters_and_uses_etcds_names(stream: io.StringIO) -> None:
    configure_logging("warn", name="n", stream=stream)
    log = logging.getLogger("raftkv.x")
    log.debug("hidden")
    log.info("hidden")
    log.warning("w")
    log.error("e")
    log.critical("c")
    assert [(line["level"], line["msg"]) for line in lines(stream)] == [
        ("warn", "w"),
        ("error", "e"),
        ("fatal", "c"),
    ]


def test_debug_level_shows_debug(stream: io.StringIO) -> None:
    configure_logging("debug", name="n", stream=stream)
    logging.getLogger("raftkv.x").debug("visible")
    assert lines(stream)[0]["level"] == "debug"


def test_exceptions_carry_error_and_stacktrace(stream: io.StringIO) -> None:
    configure_logging("info", name="n", stream=stream)
    try:
        raise OSError("disk full")
    except OSError:
        logging.getLogger("raftkv.storage").exception("wal write failed")
    (line,) = lines(stream)
    assert line["error"] == "disk full"
    assert "Traceback" in line["stacktrace"]
    assert "OSError: disk full" in line["stacktrace"]


def test_configuring_again_replaces_the_handler(stream: io.StringIO) -> None:
    configure_logging("info", name="a", stream=io.StringIO())
    configure_logging("info", name="b", stream=stream)
    logging.getLogger("raftkv").info("once")
    assert [line["name"] for line in lines(stream)] == ["b"]


def test_unknown_level_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown log level 'loud'"):
        configure_logging("loud", name="n")


def test_logs_go_to_stderr_and_stdout_stays_clean() -> None:
    program = (
        "import logging\n"
        "from raftkv.observability.logging import configure_logging\n"
        "configure_logging('info', name='infra1')\n"
        "logging.getLogger('grpc').warning('from a library')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0
    assert result.stdout == ""
    (line,) = [json.loads(text) for text in result.stderr.splitlines()]
    assert (line["msg"], line["name"]) == ("from a library", "infra1")
