"""etcd's server flags and `ETCD_*` environment variables, turned into a `ServerConfig`.

raftkv is a drop-in for etcd, so it takes etcd 3.4's flag names, defaults and environment
variables (`--initial-cluster` is also `ETCD_INITIAL_CLUSTER`), and follows etcd 3.4 where its
documentation and its behaviour differ: a variable that is also given as a flag is an error, not
silently shadowed. Unknown `ETCD_*` variables only draw a warning, as in etcd.

This module only turns text into values. argparse collects the flags as strings (absent ones
stay absent, so "given on the command line" is knowable); each value is then converted with
etcd-style messages that say where it came from; rules about the values themselves are checked
by `ServerConfig`. Every problem surfaces as `ConfigError`, before anything touches the disk.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from importlib.metadata import version
from typing import Any, NoReturn

from raftkv.node.config import (
    CLUSTER_STATES,
    COMPACTION_MODES,
    DEFAULT_AUTH_TOKEN,
    DEFAULT_AUTH_TOKEN_TTL,
    DEFAULT_BCRYPT_COST,
    DEFAULT_CLIENT_URL,
    DEFAULT_CLUSTER_TOKEN,
    DEFAULT_ELECTION_TIMEOUT_MS,
    DEFAULT_HEARTBEAT_INTERVAL_MS,
    DEFAULT_MAX_REQUEST_BYTES,
    DEFAULT_MAX_TXN_OPS,
    DEFAULT_NAME,
    DEFAULT_PEER_URL,
    DEFAULT_SNAPSHOT_COUNT,
    LOG_LEVELS,
    MAX_CONCURRENT_STREAMS,
    ConfigError,
    ServerConfig,
    parse_duration_seconds,
    parse_initial_cluster,
    parse_urls,
)
from raftkv.node.tlsconfig import DEFAULT_TLS_MIN_VERSION

ETCD_API_VERSION = "3.4"
ENV_PREFIX = "ETCD_"

_TRUE = ("1", "t", "T", "TRUE", "true", "True")
_FALSE = ("0", "f", "F", "FALSE", "false", "False")


def _text(raw: str) -> str:
    return raw


def _integer(raw: str) -> int:
    digits = raw[1:] if raw.startswith("-") else raw
    if not (digits.isascii() and digits.isdigit()):
        raise ConfigError("not an integer")
    return int(raw)


def _boolean(raw: str) -> bool:
    if raw in _TRUE:
        return True
    if raw in _FALSE:
        return False
    raise ConfigError("not a boolean (use true or false)")


def _duration_ms(raw: str) -> int:
    return round(parse_duration_seconds(raw) * 1000)


def _urls(raw: str) -> Any:
    return parse_urls(raw)


def _urls_or_none(raw: str) -> Any:
    return parse_urls(raw, allow_empty=True)


def _cluster(raw: str) -> Any:
    if not raw.strip():
        raise ConfigError("the member list is empty")
    return parse_initial_cluster(raw)


def _one_of(choices: Sequence[str]) -> Callable[[str], str]:
    def convert(raw: str) -> str:
        if raw not in choices:
            raise ConfigError(f"must be one of {', '.join(choices)}")
        return raw

    return convert


def _names(raw: str) -> Any:
    return tuple(name.strip() for name in raw.split(",") if name.strip())


_MS_FIELDS = {
    "heartbeat-interval": "heartbeat_interval_ms",
    "election-timeout": "election_timeout_ms",
    "experimental-corrupt-check-time": "corrupt_check_time_ms",
}


@dataclass(frozen=True)
class Flag:
    """One etcd flag: its name, the `ServerConfig` field it sets and how to read its text."""

    name: str
    convert: Callable[[str], Any]
    default: str
    help: str
    metavar: str = "VALUE"
    boolean: bool = False

    @property
    def dest(self) -> str:
        return self.name.replace("-", "_")

    @property
    def field(self) -> str:
        """The `ServerConfig` field; durations carry their unit there."""
        return _MS_FIELDS.get(self.name, self.dest)

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.name.upper().replace("-", "_")


def _tls_flags(prefix: str, side: str) -> tuple[Flag, ...]:
    """etcd's five TLS flags of one side (`prefix` "" for client URLs, "peer-" for peers)."""
    return (
        Flag(f"{prefix}cert-file", _text, "", f"{side} TLS certificate (PEM)", "FILE"),
        Flag(f"{prefix}key-file", _text, "", f"{side} TLS private key (PEM)", "FILE"),
        Flag(
            f"{prefix}trusted-ca-file",
            _text,
            "",
            f"CA certificates (PEM) that verify {side} TLS client certificates",
            "FILE",
        ),
        Flag(
            f"{prefix}client-cert-auth",
            _boolean,
            "false",
            f"require a {side} TLS client certificate signed by a trusted CA",
            "BOOL",
            boolean=True,
        ),
        Flag(
            f"{prefix}auto-tls",
            _boolean,
            "false",
            f"{side} TLS with a generated self-signed certificate (under <data-dir>/fixtures)",
            "BOOL",
            boolean=True,
        ),
    )


_TLS_FLAGS: tuple[Flag, ...] = (
    *_tls_flags("", "client"),
    *_tls_flags("peer-", "peer"),
    Flag(
        "cipher-suites",
        _names,
        "",
        "comma-separated TLS 1.2 cipher suites (Go's names, as etcd) for client and peer TLS",
        "SUITES",
    ),
    Flag(
        "tls-min-version",
        _text,
        DEFAULT_TLS_MIN_VERSION,
        "lowest TLS version accepted: TLS1.2 or TLS1.3",
        "VERSION",
    ),
)

FLAGS: tuple[Flag, ...] = (
    Flag("name", _text, DEFAULT_NAME, "human-readable name of this member", "NAME"),
    Flag("data-dir", _text, "${name}.raftkv", "path to the data directory", "DIR"),
    Flag("listen-client-urls", _urls, DEFAULT_CLIENT_URL, "URLs to serve clients on", "URLS"),
    Flag(
        "advertise-client-urls",
        _urls,
        DEFAULT_CLIENT_URL,
        "this member's client URLs as clients reach them (required with --listen-client-urls)",
        "URLS",
    ),
    Flag("listen-peer-urls", _urls, DEFAULT_PEER_URL, "URLs to serve peers on", "URLS"),
    Flag(
        "initial-advertise-peer-urls",
        _urls,
        DEFAULT_PEER_URL,
        "this member's peer URLs as the rest of the cluster reaches them",
        "URLS",
    ),
    Flag(
        "initial-cluster",
        _cluster,
        "${name}=${initial-advertise-peer-urls}",
        "the bootstrap members (a name given twice lists several URLs of one member)",
        "NAME=URL,...",
    ),
    Flag(
        "initial-cluster-state",
        _one_of(CLUSTER_STATES),
        "new",
        "'new' to bootstrap a cluster, 'existing' to join one",
        "STATE",
    ),
    Flag(
        "initial-cluster-token",
        _text,
        DEFAULT_CLUSTER_TOKEN,
        "keeps clusters bootstrapped from the same member list apart",
        "TOKEN",
    ),
    Flag(
        "heartbeat-interval",
        _integer,
        str(DEFAULT_HEARTBEAT_INTERVAL_MS),
        "milliseconds between leader heartbeats (one Raft tick)",
        "MS",
    ),
    Flag(
        "election-timeout",
        _integer,
        str(DEFAULT_ELECTION_TIMEOUT_MS),
        "milliseconds without a leader before an election (at least 5 heartbeats)",
        "MS",
    ),
    Flag(
        "snapshot-count",
        _integer,
        str(DEFAULT_SNAPSHOT_COUNT),
        "committed entries between snapshots to disk",
        "N",
    ),
    Flag(
        "quota-backend-bytes",
        _integer,
        "0",
        "raise the NOSPACE alarm when the backend grows past this (0 means 2 GiB)",
        "BYTES",
    ),
    Flag(
        "max-request-bytes",
        _integer,
        str(DEFAULT_MAX_REQUEST_BYTES),
        "largest client request accepted",
        "BYTES",
    ),
    Flag(
        "max-txn-ops",
        _integer,
        str(DEFAULT_MAX_TXN_OPS),
        "most operations in one transaction",
        "N",
    ),
    Flag(
        "max-concurrent-streams",
        _integer,
        str(MAX_CONCURRENT_STREAMS),
        "most gRPC streams (calls in progress) one client connection may have open at once",
        "N",
    ),
    Flag(
        "auto-compaction-mode",
        _one_of(COMPACTION_MODES),
        "periodic",
        "how to read --auto-compaction-retention: periodic or revision",
        "MODE",
    ),
    Flag(
        "auto-compaction-retention",
        _text,
        "0",
        "history to keep: hours or a duration like 30m (periodic), revisions (revision); "
        "0 disables",
        "RETENTION",
    ),
    Flag(
        "listen-metrics-urls",
        _urls_or_none,
        "",
        "extra URLs serving /metrics and /health",
        "URLS",
    ),
    Flag("log-level", _one_of(LOG_LEVELS), "info", ", ".join(LOG_LEVELS), "LEVEL"),
    Flag("enable-v2", _boolean, "false", "accept etcd v2 client requests", "BOOL", boolean=True),
    Flag(
        "strict-reconfig-check",
        _boolean,
        "true",
        "reject membership changes that would cost the cluster its quorum",
        "BOOL",
        boolean=True,
    ),
    Flag(
        "auth-token",
        _text,
        DEFAULT_AUTH_TOKEN,
        "auth token kind: 'simple', or 'jwt,pub-key=PATH,priv-key=PATH,sign-method=RS256,ttl=5m'",
        "TOKEN",
    ),
    Flag(
        "auth-token-ttl",
        _integer,
        str(DEFAULT_AUTH_TOKEN_TTL),
        "seconds a simple auth token lives after its last use",
        "SECONDS",
    ),
    Flag(
        "bcrypt-cost",
        _integer,
        str(DEFAULT_BCRYPT_COST),
        "bcrypt cost factor for hashing auth passwords",
        "COST",
    ),
    Flag(
        "experimental-corrupt-check-time",
        _duration_ms,
        "0s",
        "how often the leader checks that all members hold the same keyspace (0s: never)",
        "DURATION",
    ),
    *_TLS_FLAGS,
)


class _VersionAction(argparse.Action):
    def __init__(self, option_strings: list[str], dest: str, **kwargs: Any) -> None:
        kwargs["default"] = argparse.SUPPRESS
        super().__init__(option_strings, dest, nargs=0, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, *_: Any) -> NoReturn:
        print(f"raftkv Version: {version('raftkv')}")
        print(f"etcd API compatibility: {ETCD_API_VERSION}")
        parser.exit()


class _Parser(argparse.ArgumentParser):
    """argparse, but errors become `ConfigError` so `main` decides how to report them."""

    def error(self, message: str) -> NoReturn:
        raise ConfigError(message)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="raftkv",
        usage="raftkv [flags]\n       raftkv grpc-proxy start [flags] (a proxy; see its --help)",
        description="A Raft-replicated key-value store serving the etcd v3 API. Every flag "
        "can also be set with its ETCD_* environment variable (--data-dir: ETCD_DATA_DIR).",
        allow_abbrev=False,
        argument_default=argparse.SUPPRESS,
    )
    parser.add_argument("--version", action=_VersionAction, help="print the version and exit")
    for flag in FLAGS:
        help_text = f"{flag.help} (default: '{flag.default}'; env {flag.env})"
        if flag.boolean:
            parser.add_argument(
                f"--{flag.name}", nargs="?", const="true", metavar=flag.metavar, help=help_text
            )
        else:
            parser.add_argument(f"--{flag.name}", metavar=flag.metavar, help=help_text)
    return parser


def _warn_by_logging(message: str) -> None:
    logging.getLogger(__name__).warning(message)


def parse_server_args(
    argv: Sequence[str],
    environ: Mapping[str, str],
    *,
    on_warning: Callable[[str], None] = _warn_by_logging,
) -> ServerConfig:
    """Build the config from etcd flags and `ETCD_*` variables, or raise `ConfigError`.

    `--help` and `--version` print and raise `SystemExit(0)`, as argparse does.
    """
    given = vars(build_parser().parse_args(list(argv)))
    known_env = {flag.env for flag in FLAGS}
    for variable in sorted(environ):
        if variable.startswith(ENV_PREFIX) and variable not in known_env:
            on_warning(f"unrecognized environment variable {variable}={environ[variable]}")

    values: dict[str, Any] = {}
    explicit: set[str] = set()
    for flag in FLAGS:
        if flag.dest in given:
            if flag.env in environ:
                raise ConfigError(
                    f'conflicting environment variable "{flag.env}" is shadowed by '
                    "corresponding command-line flag (either unset environment variable or "
                    "disable flag)"
                )
            raw, source = given[flag.dest], f"flag --{flag.name}"
        elif flag.env in environ:
            raw, source = environ[flag.env], flag.env
        else:
            continue
        try:
            values[flag.field] = flag.convert(raw)
        except ConfigError as error:
            raise ConfigError(f'invalid value "{raw}" for {source}: {error}') from None
        explicit.add(flag.name)

    if "listen-client-urls" in explicit and "advertise-client-urls" not in explicit:
        raise ConfigError(
            "--advertise-client-urls is required when --listen-client-urls is set explicitly: "
            "a member listening on specific addresses must advertise URLs its clients can reach"
        )
    return ServerConfig(**values)
