"""Structured logs in etcd's shape: one JSON object per line on stderr.

etcd logs through zap as `{"level":"info","ts":"...","caller":"pkg/file.go:42","msg":"...",...}`
with the context as further keys, and the tools people point at etcd logs (jq, Loki, Elastic)
expect that shape, so raftkv writes the same. The standard `logging` module stays the API: code
logs with `logging.getLogger(__name__)`, and context goes in as fields, either with
`log_fields(log, "msg", member="8e9e05c52164694d")` or with `extra={...}`. The handler is put on
the root logger, so libraries' records (grpc, asyncio) come out in the same format.

This module imports nothing of raftkv's, so every package may use it.
"""

from __future__ import annotations

import datetime
import json
import logging
import sys
import traceback
from typing import Any, TextIO

# etcd's --log-level names; Python has no panic/fatal, both become CRITICAL.
LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warn": logging.WARNING,
    "error": logging.ERROR,
    "panic": logging.CRITICAL,
    "fatal": logging.CRITICAL,
}
_LEVEL_NAMES = {
    logging.DEBUG: "debug",
    logging.INFO: "info",
    logging.WARNING: "warn",
    logging.ERROR: "error",
    logging.CRITICAL: "fatal",
}
# Attributes every LogRecord has; anything else on a record is a field passed with `extra=`.
_RECORD_ATTRIBUTES = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


class JSONFormatter(logging.Formatter):
    """Formats a record as one zap-style JSON line; `fields` are added to every line."""

    def __init__(self, fields: dict[str, Any] | None = None) -> None:
        super().__init__()
        self._fields = dict(fields or {})

    def format(self, record: logging.LogRecord) -> str:
        ts = datetime.datetime.fromtimestamp(record.created, tz=datetime.UTC)
        line: dict[str, Any] = {
            "level": _LEVEL_NAMES.get(record.levelno, record.levelname.lower()),
            "ts": ts.isoformat(timespec="microseconds").replace("+00:00", "Z"),
            "caller": _caller(record),
            "msg": record.getMessage(),
            **self._fields,
        }
        for key, value in vars(record).items():
            if key not in _RECORD_ATTRIBUTES and not key.startswith("_"):
                line[key] = value
        if record.exc_info and record.exc_info[1] is not None:
            line["error"] = str(record.exc_info[1]) or type(record.exc_info[1]).__name__
            line["stacktrace"] = "".join(traceback.format_exception(*record.exc_info)).rstrip()
        if record.stack_info:
            line["stacktrace"] = record.stack_info
        return json.dumps(line, ensure_ascii=False, default=str, separators=(",", ":"))


def _caller(record: logging.LogRecord) -> str:
    """`package/file.py:line`, the shape of zap's short caller."""
    parts = record.pathname.replace("\\", "/").rsplit("/", 2)
    return f"{'/'.join(parts[-2:])}:{record.lineno}"


class _Handler(logging.StreamHandler):  # type: ignore[type-arg]
    """Marks the handler `configure_logging` installed, so calling it again replaces it."""


def configure_logging(level: str, *, name: str, stream: TextIO | None = None) -> None:
    """Send every log record at `level` or above to stderr as JSON lines.

    `level` is an etcd `--log-level` name; `name` is the member name, stamped on each line
    as `"name"` so the lines of several members can be told apart once collected.
    """
    if level not in LEVELS:
        raise ValueError(f"unknown log level {level!r} (use one of {', '.join(LEVELS)})")
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, _Handler)]:
        root.removeHandler(handler)
    handler = _Handler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JSONFormatter({"name": name}))
    root.addHandler(handler)
    root.setLevel(LEVELS[level])
    logging.captureWarnings(True)


def log_fields(
    logger: logging.Logger, msg: str, *, level: int = logging.INFO, **fields: Any
) -> None:
    """Log `msg` with `fields` as top-level JSON keys (`log_fields(log, "started", port=2379)`).

    A field may not reuse a name the record itself uses (`name`, `msg`, `args`...); `logging`
    refuses those.
    """
    logger.log(level, msg, extra=fields, stacklevel=2)
