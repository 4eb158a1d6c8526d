"""`raftkvctl watch KEY [RANGE_END]`: print changes as they happen, until Ctrl-C or SIGTERM.

The watch is the client's resumable one: if the member serving it dies, it continues on another
member from the next revision, so the printed stream has no gap and no repeat. Output is
etcdctl's: simple prints the event type (coloured on a terminal), the previous key-value with
`--prev-kv`, then the key and value; json prints one watch response per line.
"""

from __future__ import annotations

import argparse
from typing import Any

from raftkv.cli.ctl import EXIT_BAD_ARGS, CommandError, Context
from raftkv.cli.ctl_common import colour, header_json, kv_json, print_kv, run_until_stopped
from raftkv.client import AsyncClient, Event, WatchBatch


def register(commands: Any) -> None:
    watch = commands.add_parser("watch", help="watch a key or a range of keys for changes")
    watch.add_argument("key", nargs="?")
    watch.add_argument("range_end", nargs="?")
    watch.add_argument("--prefix", action="store_true", help="watch every key with this prefix")
    watch.add_argument("--rev", type=int, default=0, help="start at this revision (history)")
    watch.add_argument("--prev-kv", action="store_true", help="print the previous key-value")
    watch.add_argument(
        "--progress-notify", action="store_true", help="print periodic progress notifications"
    )
    watch.set_defaults(handler=watch_command)


def _event_json(event: Event) -> dict[str, Any]:
    body: dict[str, Any] = {}
    if event.is_delete:
        body["type"] = 1
    body["kv"] = kv_json(event.kv)
    if event.prev_kv is not None:
        body["prev_kv"] = kv_json(event.prev_kv)
    return body


def print_batch(ctx: Context, batch: WatchBatch) -> None:
    if ctx.write_out == "json":
        ctx.print_json(
            {
                "Header": header_json(batch.header),
                "Events": [_event_json(e) for e in batch.events] or None,
                "CompactRevision": 0,
                "Canceled": False,
                "Created": False,
            }
        )
    else:
        for event in batch.events:
            kind = event.type.name
            ctx.print(colour(ctx, kind, "green" if event.is_put else "red"))
            if event.prev_kv is not None:
                print_kv(ctx, event.prev_kv)
            print_kv(ctx, event.kv)
    ctx.stdout.flush()


def watch_command(ctx: Context, args: argparse.Namespace) -> None:
    ctx.require_format("simple", "json")
    if args.key is None:
        raise CommandError(
            "watch in non-interactive mode requires one argument as key or "
            "prefix, with range end optional",
            EXIT_BAD_ARGS,
        )
    if args.prefix and args.range_end is not None:
        raise CommandError("`--prefix` and range end cannot be set at the same time", EXIT_BAD_ARGS)
    options: dict[str, Any] = {
        "start_revision": args.rev,
        "prev_kv": args.prev_kv,
        "progress_notify": args.progress_notify,
    }
    if args.range_end is not None:
        options["range_end"] = args.range_end.encode()
    else:
        options["prefix"] = args.prefix

    async def follow(client: AsyncClient) -> None:
        async with client.watch(args.key.encode(), **options) as watch:
            async for batch in watch:
                if batch.events or args.progress_notify:
                    print_batch(ctx, batch)

    run_until_stopped(ctx, follow)
