"""`raftkvctl`: etcdctl's command line (API v3) for raftkv, and for any etcd v3 server.

This module is the frame every command shares; the commands themselves live one group per
module (`ctl_snapshot`, ...), each exposing `register(commands)` to add its subcommands to the
parser. A command is a function `(Context, argparse.Namespace) -> None` set as the parser's
`handler` default; it prints through the `Context` (which knows `-w`) and reports failure by
raising `CommandError` with etcdctl's exit code, or by letting a `raftkv.client` error escape
(printed as etcdctl prints it: `Error: <server message>`, exit 1).

Global flags are etcdctl's, each also read from its `ETCDCTL_*` variable when not given
(`--endpoints` / `ETCDCTL_ENDPOINTS`); as in etcdctl 3.4, a flag given on the command line wins.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NoReturn, TextIO, TypeVar

from raftkv.client import AsyncClient, TLSConfig, errors
from raftkv.node.config import ConfigError, parse_duration_seconds

T = TypeVar("T")

# etcdctl's exit codes.
EXIT_SUCCESS = 0
EXIT_ERROR = 1
EXIT_BAD_CONNECTION = 2
EXIT_INVALID_INPUT = 3
EXIT_BAD_FEATURE = 4
EXIT_INTERRUPTED = 5
EXIT_IO = 6
EXIT_BAD_ARGS = 128

OUTPUT_FORMATS = ("simple", "json", "table")
ENV_PREFIX = "ETCDCTL_"


class CommandError(Exception):
    """A command failed; `main` prints `Error: <message>` and exits with `exit_code`."""

    def __init__(self, message: str, exit_code: int = EXIT_ERROR) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@dataclass(frozen=True)
class GlobalFlag:
    """A flag every command takes; `dest` is its attribute on the parsed arguments."""

    name: str
    default: str
    help: str
    short: str = ""
    # Given alone (`--insecure-skip-tls-verify`) it means true, as etcdctl's boolean flags.
    boolean: bool = False
    # The attribute name when the flag's own would clash with a command's argument (`put key`).
    attribute: str = ""

    @property
    def dest(self) -> str:
        return self.attribute or self.name.replace("-", "_")

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.name.upper().replace("-", "_")


GLOBAL_FLAGS = (
    GlobalFlag("endpoints", "127.0.0.1:2379", "gRPC endpoints, comma-separated"),
    GlobalFlag("dial-timeout", "2s", "dial timeout for client connections"),
    GlobalFlag("command-timeout", "5s", "timeout for short running commands (excluding dial)"),
    GlobalFlag("write-out", "simple", "output format: simple, json or table", short="-w"),
    GlobalFlag("user", "", "username[:password] for authentication"),
    GlobalFlag("password", "", "password for authentication (with --user=NAME)"),
    GlobalFlag(
        "cacert",
        "",
        "verify certificates of TLS servers using this CA bundle",
        attribute="tls_cacert",
    ),
    GlobalFlag(
        "cert", "", "identify secure client using this TLS certificate file", attribute="tls_cert"
    ),
    GlobalFlag("key", "", "identify secure client using this TLS key file", attribute="tls_key"),
    GlobalFlag(
        "insecure-skip-tls-verify",
        "false",
        "skip server certificate verification (accept the certificate the server presents)",
        boolean=True,
    ),
    GlobalFlag(
        "insecure-transport",
        "true",
        "disable transport security for client connections (bare host:port endpoints)",
        boolean=True,
    ),
)


@dataclass
class Context:
    """What a command gets: the global options, output streams and a client factory."""

    endpoints: tuple[str, ...]
    write_out: str
    dial_timeout: float
    command_timeout: float
    user: str = ""
    password: str = ""
    tls: TLSConfig | None = None
    stdout: TextIO = field(default_factory=lambda: sys.stdout)
    stderr: TextIO = field(default_factory=lambda: sys.stderr)

    def client(self, endpoints: Sequence[str] | None = None) -> AsyncClient:
        username, password = self.user, self.password
        if username and not password:
            username, _, password = username.partition(":")
        return AsyncClient(
            list(endpoints or self.endpoints),
            timeout=self.command_timeout,
            dial_timeout=self.dial_timeout,
            username=username or None,
            password=password or None,
            tls=self.tls,
        )

    def call(
        self,
        work: Callable[[AsyncClient], Awaitable[T]],
        endpoints: Sequence[str] | None = None,
    ) -> T:
        """Run `work` with a client of `endpoints` (default: --endpoints) to completion."""

        async def run() -> T:
            async with self.client(endpoints) as client:
                return await work(client)

        return asyncio.run(run())

    # -- output ------------------------------------------------------------------------------

    def require_format(self, *supported: str) -> None:
        if self.write_out not in supported:
            raise CommandError(f"{self.write_out} not supported as output format", EXIT_BAD_FEATURE)

    def print(self, text: str = "") -> None:
        print(text, file=self.stdout)

    def print_json(self, value: Any) -> None:
        self.print(json.dumps(value, separators=(",", ":")))

    def print_table(self, headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        """etcdctl's table: centred headers, right-aligned cells, +---+ rules."""
        cells = [[str(c) for c in row] for row in rows]
        widths = [max([len(h), *(len(row[i]) for row in cells)]) for i, h in enumerate(headers)]
        rule = "+" + "+".join("-" * (w + 2) for w in widths) + "+"
        self.print(rule)
        self.print(_table_line(_centre(h, w) for h, w in zip(headers, widths, strict=True)))
        self.print(rule)
        for row in cells:
            self.print(_table_line(c.rjust(w) for c, w in zip(row, widths, strict=True)))
        self.print(rule)


def _table_line(cells: Iterable[str]) -> str:
    return "|" + "|".join(f" {c} " for c in cells) + "|"


def _centre(text: str, width: int) -> str:
    left = (width - len(text)) // 2
    return " " * left + text + " " * (width - len(text) - left)


def humanize_bytes(size: int) -> str:
    """Sizes as etcdctl prints them (go-humanize's SI form: "20 kB", "4.4 MB")."""
    if size < 10:
        return f"{size} B"
    units = ("B", "kB", "MB", "GB", "TB", "PB", "EB")
    exponent = 0
    while exponent + 1 < len(units) and size >= 1000 ** (exponent + 1):
        exponent += 1
    value = int(size / 1000**exponent * 10 + 0.5) / 10
    return f"{value:.1f} {units[exponent]}" if value < 10 else f"{value:.0f} {units[exponent]}"


class _Parser(argparse.ArgumentParser):
    """argparse whose usage errors become etcdctl's `Error: ...` with exit code 128."""

    def error(self, message: str) -> NoReturn:
        raise CommandError(message, EXIT_BAD_ARGS)


def build_parser() -> argparse.ArgumentParser:
    # Command groups import this module for Context and CommandError, hence the late import.
    from raftkv.cli import (
        ctl_backup,
        ctl_kv,
        ctl_lease,
        ctl_maintenance,
        ctl_member,
        ctl_recipes,
        ctl_snapshot,
        ctl_watch,
    )

    parser = _Parser(
        prog="raftkvctl",
        description="A command line client for raftkv and etcd (the etcd v3 API). Every "
        "global flag can also be set with its ETCDCTL_* variable.",
        allow_abbrev=False,
    )
    _add_global_flags(parser, None)
    commands = parser.add_subparsers(title="commands", metavar="COMMAND", parser_class=_Parser)
    for group in (
        ctl_kv,
        ctl_watch,
        ctl_lease,
        ctl_member,
        ctl_maintenance,
        ctl_snapshot,
        ctl_backup,
        ctl_recipes,
    ):
        group.register(commands)
    _add_global_flags_to_commands(commands)
    return parser


def _add_global_flags(parser: argparse.ArgumentParser, default: object) -> None:
    for flag in GLOBAL_FLAGS:
        names = [f"--{flag.name}", *([flag.short] if flag.short else [])]
        parser.add_argument(
            *names,
            dest=flag.dest,
            default=default,
            help=f"{flag.help} (default: '{flag.default}'; env {flag.env})",
        )


def _add_global_flags_to_commands(commands: argparse._SubParsersAction[Any]) -> None:
    """Let global flags follow the command too (`get k -w json`), as etcdctl's do; given there,
    they override the ones given before it."""
    for command in commands.choices.values():
        nested = [a for a in command._actions if isinstance(a, argparse._SubParsersAction)]
        if nested:
            for action in nested:
                _add_global_flags_to_commands(action)
        else:
            _add_global_flags(command, argparse.SUPPRESS)


def _duration(text: str, flag: str) -> float:
    try:
        return parse_duration_seconds(text)
    except ConfigError as error:
        raise CommandError(f"invalid value {text!r} for --{flag}: {error}", EXIT_BAD_ARGS) from None


def expand_boolean_flags(argv: Sequence[str]) -> list[str]:
    """`--insecure-skip-tls-verify` alone means `=true`, and never takes the next argument as
    its value (Go's boolean flags), so it is spelled out before argparse sees it."""
    alone = {f"--{flag.name}" for flag in GLOBAL_FLAGS if flag.boolean}
    return [f"{arg}=true" if arg in alone else arg for arg in argv]


def _boolean(text: str, flag: str) -> bool:
    if text in ("1", "t", "T", "true", "TRUE", "True"):
        return True
    if text in ("0", "f", "F", "false", "FALSE", "False"):
        return False
    raise CommandError(f"invalid value {text!r} for --{flag}: not a boolean", EXIT_BAD_ARGS)


def _tls_config(values: Mapping[str, str]) -> TLSConfig | None:
    """etcdctl's rule: TLS when any certificate flag is given or --insecure-transport=false;
    https:// endpoints use TLS in any case, http:// ones never."""
    skip_verify = _boolean(values["insecure_skip_tls_verify"], "insecure-skip-tls-verify")
    insecure = _boolean(values["insecure_transport"], "insecure-transport")
    files = {name: values[f"tls_{name}"] or None for name in ("cacert", "cert", "key")}
    if not any(files.values()) and insecure:
        return None
    if bool(files["cert"]) != bool(files["key"]):
        raise CommandError("--cert and --key must be given together", EXIT_BAD_ARGS)
    return TLSConfig(
        ca_file=files["cacert"],
        cert_file=files["cert"],
        key_file=files["key"],
        insecure_skip_verify=skip_verify,
    )


def context_from_args(
    args: argparse.Namespace, environ: Mapping[str, str], stdout: TextIO, stderr: TextIO
) -> Context:
    values = {}
    for flag in GLOBAL_FLAGS:
        given = getattr(args, flag.dest)
        values[flag.dest] = given if given is not None else environ.get(flag.env, flag.default)
    if values["write_out"] not in OUTPUT_FORMATS:
        raise CommandError(
            f"{values['write_out']} not supported as output format (use one of "
            f"{', '.join(OUTPUT_FORMATS)})",
            EXIT_BAD_FEATURE,
        )
    endpoints = tuple(e.strip() for e in values["endpoints"].split(",") if e.strip())
    if not endpoints:
        raise CommandError("--endpoints must list at least one endpoint", EXIT_BAD_ARGS)
    return Context(
        endpoints=endpoints,
        write_out=values["write_out"],
        dial_timeout=_duration(values["dial_timeout"], "dial-timeout"),
        command_timeout=_duration(values["command_timeout"], "command-timeout"),
        user=values["user"],
        password=values["password"],
        tls=_tls_config(values),
        stdout=stdout,
        stderr=stderr,
    )


def main(
    argv: Sequence[str] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
) -> int:
    out = stdout or sys.stdout
    err = stderr or sys.stderr
    try:
        parser = build_parser()
        args = parser.parse_args(expand_boolean_flags(sys.argv[1:] if argv is None else argv))
        handler = getattr(args, "handler", None)
        if handler is None:
            parser.print_help(out)
            return EXIT_SUCCESS
        ctx = context_from_args(args, os.environ if environ is None else environ, out, err)
        handler(ctx, args)
    except CommandError as error:
        print(f"Error: {error}", file=err)
        return error.exit_code
    except errors.EtcdError as error:
        print(f"Error: {error.message}", file=err)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("Error: interrupted", file=err)
        return EXIT_INTERRUPTED
    return EXIT_SUCCESS


if __name__ == "__main__":
    # `python -m`: run the importable module's main, whose classes the command groups share.
    from raftkv.cli import ctl

    sys.exit(ctl.main())
