"""`raftkvctl endpoint health|status|hashkv`, `defrag` and `alarm list|disarm`.

The endpoint commands ask each endpoint separately (`--cluster`: every member's client URL from
the member list instead of `--endpoints`), and report per endpoint as etcdctl does; a command
with any failed endpoint exits 1 after printing the others. `endpoint health` is etcdctl's: a
linearizable read of the key "health" within the command timeout, so a member that cannot reach
a quorum is reported unhealthy; on a terminal, healthy/unhealthy are coloured.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from raftkv.cli.ctl import CommandError, Context, humanize_bytes
from raftkv.cli.ctl_common import colour, header_json
from raftkv.client import AsyncClient, errors

T = TypeVar("T")


def register(commands: Any) -> None:
    endpoint = commands.add_parser("endpoint", help="endpoint commands")
    sub = endpoint.add_subparsers(title="endpoint commands", metavar="COMMAND")
    for name, handler, what in (
        ("health", health_command, "check the health of each endpoint"),
        ("status", status_command, "print the status of each endpoint"),
        ("hashkv", hashkv_command, "print the KV history hash of each endpoint"),
    ):
        command = sub.add_parser(name, help=what)
        command.add_argument("--cluster", action="store_true", help="use every member's client URL")
        command.set_defaults(handler=handler)
        if name == "hashkv":
            command.add_argument("--rev", type=int, default=0, help="hash up to this revision")

    defrag = commands.add_parser("defrag", help="defragment each endpoint's backend")
    defrag.add_argument("--cluster", action="store_true", help="use every member's client URL")
    defrag.set_defaults(handler=defrag_command)

    alarm = commands.add_parser("alarm", help="alarm commands")
    alarms = alarm.add_subparsers(title="alarm commands", metavar="COMMAND")
    alarms.add_parser("list", help="list raised alarms").set_defaults(handler=alarm_list_command)
    alarms.add_parser("disarm", help="clear every alarm").set_defaults(handler=alarm_disarm_command)


async def _endpoints(client: AsyncClient, cluster: bool, given: tuple[str, ...]) -> list[str]:
    if not cluster:
        return list(given)
    members = (await client.member_list()).members
    return [url for m in members for url in m.client_urls]


def _per_endpoint(
    ctx: Context,
    cluster: bool,
    probe: Callable[[AsyncClient, str], Awaitable[T]],
) -> list[tuple[str, T | errors.EtcdError]]:
    """Run `probe` against every endpoint concurrently, keeping each one's result or error."""

    async def run(client: AsyncClient) -> list[tuple[str, T | errors.EtcdError]]:
        endpoints = await _endpoints(client, cluster, ctx.endpoints)

        async def one(endpoint: str) -> tuple[str, T | errors.EtcdError]:
            try:
                return endpoint, await probe(client, endpoint)
            except errors.EtcdError as error:
                return endpoint, error

        return list(await asyncio.gather(*(one(e) for e in endpoints)))

    return ctx.call(run)


def _go_duration(seconds: float) -> str:
    if seconds < 1e-3:
        return f"{seconds * 1e6:.3f}µs"
    if seconds < 1:
        return f"{seconds * 1e3:f}".rstrip("0").rstrip(".") + "ms"
    return f"{seconds:f}".rstrip("0").rstrip(".") + "s"


def health_command(ctx: Context, args: argparse.Namespace) -> None:
    async def probe(client: AsyncClient, endpoint: str) -> float:
        started = time.monotonic()
        async with AsyncClient(
            [endpoint], timeout=ctx.command_timeout, dial_timeout=ctx.dial_timeout, tls=ctx.tls
        ) as one:
            await one.get(b"health", timeout=ctx.command_timeout)
        return time.monotonic() - started

    results = _per_endpoint(ctx, args.cluster, probe)
    unhealthy = any(isinstance(r, errors.EtcdError) for _, r in results)
    if ctx.write_out == "json":
        rows = []
        for endpoint, result in results:
            row: dict[str, Any] = {
                "endpoint": endpoint,
                "health": not isinstance(result, Exception),
            }
            if isinstance(result, errors.EtcdError):
                row["error"] = result.message
            else:
                row["took"] = _go_duration(result)
            rows.append(row)
        ctx.print_json(rows)
    elif ctx.write_out == "table":
        ctx.print_table(
            ("ENDPOINT", "HEALTH", "TOOK", "ERROR"),
            [
                (e, "false", "", r.message)
                if isinstance(r, errors.EtcdError)
                else (e, "true", _go_duration(r), "")
                for e, r in results
            ],
        )
    else:
        for endpoint, result in results:
            if isinstance(result, errors.EtcdError):
                state = colour(ctx, "unhealthy", "red")
                ctx.print(f"{endpoint} is {state}: failed to commit proposal: {result.message}")
            else:
                state = colour(ctx, "healthy", "green")
                took = _go_duration(result)
                ctx.print(f"{endpoint} is {state}: successfully committed proposal: took = {took}")
    if unhealthy:
        raise CommandError("unhealthy cluster")


def _failed(ctx: Context, endpoint: str, error: errors.EtcdError, what: str) -> None:
    print(f"Failed to get the {what} of endpoint {endpoint} ({error.message})", file=ctx.stderr)


def status_command(ctx: Context, args: argparse.Namespace) -> None:
    results = _per_endpoint(ctx, args.cluster, lambda c, e: c.status(e))
    ok = [(e, r) for e, r in results if not isinstance(r, errors.EtcdError)]
    for endpoint, result in results:
        if isinstance(result, errors.EtcdError):
            _failed(ctx, endpoint, result, "status")
    if ctx.write_out == "json":
        rows = []
        for endpoint, s in ok:
            status: dict[str, Any] = {"header": header_json(s.header), "version": s.version}
            status.update(dbSize=s.db_size, leader=s.leader, raftIndex=s.raft_index)
            status.update(raftTerm=s.raft_term, raftAppliedIndex=s.raft_applied_index)
            if s.errors:
                status["errors"] = list(s.errors)
            status["dbSizeInUse"] = s.db_size_in_use
            if s.is_learner:
                status["isLearner"] = True
            rows.append({"Endpoint": endpoint, "Status": status})
        ctx.print_json(rows)
    else:
        rows_text = [
            (
                endpoint,
                f"{s.header.member_id:x}",
                s.version,
                humanize_bytes(s.db_size),
                str(s.leader == s.header.member_id).lower(),
                str(s.is_learner).lower(),
                str(s.raft_term),
                str(s.raft_index),
                str(s.raft_applied_index),
                ", ".join(s.errors),
            )
            for endpoint, s in ok
        ]
        if ctx.write_out == "table":
            headers = ("ENDPOINT", "ID", "VERSION", "DB SIZE", "IS LEADER", "IS LEARNER")
            headers += ("RAFT TERM", "RAFT INDEX", "RAFT APPLIED INDEX", "ERRORS")
            ctx.print_table(headers, rows_text)
        else:
            for row in rows_text:
                ctx.print(", ".join(row))
    if len(ok) < len(results):
        raise CommandError("some endpoints did not answer")


def hashkv_command(ctx: Context, args: argparse.Namespace) -> None:
    results = _per_endpoint(ctx, args.cluster, lambda c, e: c.hash_kv(e, args.rev))
    ok = [(e, r) for e, r in results if not isinstance(r, errors.EtcdError)]
    for endpoint, result in results:
        if isinstance(result, errors.EtcdError):
            _failed(ctx, endpoint, result, "hash")
    if ctx.write_out == "json":
        ctx.print_json(
            [
                {
                    "Endpoint": e,
                    "HashKV": {
                        "header": header_json(r.header),
                        "hash": r.hash,
                        "compact_revision": r.compact_revision,
                    },
                }
                for e, r in ok
            ]
        )
    elif ctx.write_out == "table":
        ctx.print_table(("ENDPOINT", "HASH"), [(e, r.hash) for e, r in ok])
    else:
        for endpoint, result in ok:
            ctx.print(f"{endpoint}, {result.hash}")
    if len(ok) < len(results):
        raise CommandError("some endpoints did not answer")


def defrag_command(ctx: Context, args: argparse.Namespace) -> None:
    results = _per_endpoint(ctx, args.cluster, lambda c, e: c.defragment(e))
    failed = False
    for endpoint, result in results:
        if isinstance(result, errors.EtcdError):
            failed = True
            print(
                f"Failed to defragment etcd member[{endpoint}] ({result.message})", file=ctx.stderr
            )
        else:
            ctx.print(f"Finished defragmenting etcd member[{endpoint}]")
    if failed:
        raise CommandError("some endpoints could not be defragmented")


def _print_alarms(ctx: Context, alarms: tuple[Any, ...]) -> None:
    if ctx.write_out == "json":
        body: dict[str, Any] = {}
        if alarms:
            body["alarms"] = [{"memberID": a.member_id, "alarm": int(a.alarm)} for a in alarms]
        ctx.print_json(body)
        return
    for alarm in alarms:
        ctx.print(f"memberID:{alarm.member_id} alarm:{alarm.alarm.name} ")


def alarm_list_command(ctx: Context, args: argparse.Namespace) -> None:
    _print_alarms(ctx, ctx.call(lambda client: client.alarm_list()))


def alarm_disarm_command(ctx: Context, args: argparse.Namespace) -> None:
    _print_alarms(ctx, ctx.call(lambda client: client.alarm_disarm()))
