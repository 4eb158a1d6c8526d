"""What the raftkvctl command groups share beyond the frame in `ctl`: etcdctl's JSON shapes,
key-value printing, colours, and running a long command until Ctrl-C or SIGTERM.

etcdctl's `-w json` is Go's encoding of the protobuf structs: snake_case fields, zero values
left out, bytes in base64, 64-bit numbers as JSON numbers. The helpers here produce the same
shapes from the client's result types so scripts written for etcdctl read raftkvctl's output.

Colours: only when stdout is a terminal and `NO_COLOR` is unset, so pipes and files get plain
text.
"""

from __future__ import annotations

import asyncio
import base64
import os
import signal
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from raftkv.cli.ctl import EXIT_BAD_ARGS, CommandError, Context
from raftkv.client import AsyncClient, Header, KeyValue

T = TypeVar("T")

_COLOURS = {"green": "32", "red": "31", "yellow": "33", "bold": "1"}


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def header_json(header: Header) -> dict[str, int]:
    fields = {
        "cluster_id": header.cluster_id,
        "member_id": header.member_id,
        "revision": header.revision,
        "raft_term": header.raft_term,
    }
    return {k: v for k, v in fields.items() if v}


def kv_json(kv: KeyValue) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "key": b64(kv.key),
        "create_revision": kv.create_revision,
        "mod_revision": kv.mod_revision,
        "version": kv.version,
        "value": b64(kv.value),
        "lease": kv.lease,
    }
    return {k: v for k, v in fields.items() if v}


def text(data: bytes) -> str:
    """Keys and values as etcdctl prints them: the bytes as they are (invalid UTF-8 escaped)."""
    return data.decode(errors="backslashreplace")


def print_kv(ctx: Context, kv: KeyValue, *, keys_only: bool = False, values_only: bool = False):
    """etcdctl's simple form of one key-value: the key line, then the value line."""
    if not values_only:
        ctx.print(text(kv.key))
    if not keys_only:
        ctx.print(text(kv.value))
    elif not values_only:
        ctx.print()


def colour(ctx: Context, message: str, name: str) -> str:
    if not ctx.stdout.isatty() or "NO_COLOR" in os.environ:
        return message
    return f"\033[{_COLOURS[name]}m{message}\033[0m"


def parse_lease_id(value: str) -> int:
    """Lease IDs are given in hex, as etcdctl prints them."""
    try:
        lease_id = int(value, 16)
    except ValueError:
        raise CommandError(
            f"bad lease ID ({value!r}), expecting ID in Hex", EXIT_BAD_ARGS
        ) from None
    if lease_id < 0 or lease_id >= 1 << 64:
        raise CommandError(f"bad lease ID ({value!r}), expecting ID in Hex", EXIT_BAD_ARGS)
    return lease_id


def parse_member_id(value: str) -> int:
    try:
        return int(value, 16)
    except ValueError:
        raise CommandError(
            f"bad member ID arg ({value!r}), expecting ID in Hex", EXIT_BAD_ARGS
        ) from None


def run_until_stopped(ctx: Context, work: Callable[[AsyncClient], Awaitable[T]]) -> T | None:
    """Run a long command until it ends or SIGINT/SIGTERM arrives.

    A signal cancels `work`, whose cleanup (unlock, resign, revoke) then runs; the command
    ends with None and exit code 0, as etcdctl's lock/elect/watch end on Ctrl-C.
    """

    async def main() -> T | None:
        task = asyncio.current_task()
        assert task is not None
        loop = asyncio.get_running_loop()
        stopped = asyncio.Event()

        def stop() -> None:
            if not stopped.is_set():
                stopped.set()
                task.cancel()

        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop)
        try:
            async with ctx.client() as client:
                return await work(client)
        except asyncio.CancelledError:
            if stopped.is_set() and task.uncancel() == 0:
                return None
            raise
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)

    return asyncio.run(main())
