"""`raftkvctl lock|elect|register|discover|queue`: the recipes of `raftkv.client.recipes` as
commands, for shell scripts and cron jobs.

Each long-running command holds something on a lease (a lock, a leadership, a registration) and
gives it back on Ctrl-C or SIGTERM before it exits; if the process is killed outright, the lease
expires after its TTL and the cluster releases what it held. If the lease is lost while the
command runs, it says so and exits 1 (a command run under `lock` is terminated first).

`lock` and `elect` use etcd's key layout, so they work together with `etcdctl lock` and
`etcdctl elect`; `lock NAME -- CMD` sets etcdctl's `ETCD_LOCK_KEY` and `ETCD_LOCK_REV` (the
fencing token) for the command and exits with its exit code.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
from typing import Any

from raftkv.cli.ctl import EXIT_BAD_ARGS, CommandError, Context
from raftkv.cli.ctl_common import colour, run_until_stopped
from raftkv.client import AsyncClient, errors
from raftkv.client.recipes import Discovery, Election, Lock, Queue, Registration, list_instances

_CHANGE_COLOURS = {"added": "green", "removed": "red", "updated": "yellow"}


def register(commands: Any) -> None:
    lock = commands.add_parser(
        "lock", help="hold a distributed lock (while running a command after --)"
    )
    lock.add_argument("name", nargs="?")
    lock.add_argument("command", nargs=argparse.REMAINDER, help="-- CMD [ARGS...]")
    lock.add_argument("--ttl", type=int, default=10, help="lease TTL in seconds")
    lock.set_defaults(handler=lock_command)

    elect = commands.add_parser("elect", help="campaign for leadership, or observe (-l)")
    elect.add_argument("name", nargs="?")
    elect.add_argument("proposal", nargs="?")
    elect.add_argument("-l", "--listen", action="store_true", help="print leaders as they change")
    elect.add_argument("--ttl", type=int, default=10, help="lease TTL in seconds")
    elect.set_defaults(handler=elect_command)

    reg = commands.add_parser("register", help="register a service instance until killed")
    reg.add_argument("service")
    reg.add_argument("instance")
    reg.add_argument("address")
    reg.add_argument("--ttl", type=int, default=10, help="lease TTL in seconds")
    reg.set_defaults(handler=register_command)

    discover = commands.add_parser("discover", help="list a service's live instances")
    discover.add_argument("service")
    discover.add_argument("--watch", action="store_true", help="keep printing changes")
    discover.set_defaults(handler=discover_command)

    queue = commands.add_parser("queue", help="a FIFO queue: push, pop (waits), list")
    sub = queue.add_subparsers(title="queue commands", metavar="COMMAND")
    push = sub.add_parser("push", help="append a value (from stdin when not given)")
    push.add_argument("queue")
    push.add_argument("value", nargs="?")
    push.set_defaults(handler=queue_push_command)
    pop = sub.add_parser("pop", help="remove and print the oldest value, waiting for one")
    pop.add_argument("queue")
    pop.add_argument("--timeout", type=float, default=None, help="give up after SECONDS")
    pop.set_defaults(handler=queue_pop_command)
    listing = sub.add_parser("list", help="print the queued values, oldest first")
    listing.add_argument("queue")
    listing.set_defaults(handler=queue_list_command)


def _flush(ctx: Context) -> None:
    ctx.stdout.flush()


# -- lock ------------------------------------------------------------------------------------------


def lock_command(ctx: Context, args: argparse.Namespace) -> None:
    if not args.name:
        raise CommandError(
            "lock takes a lock name argument and an optional command to execute", EXIT_BAD_ARGS
        )
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    exit_code = 0

    async def hold(client: AsyncClient) -> None:
        nonlocal exit_code
        lock = Lock(client, args.name, ttl=args.ttl, cancel_on_loss=False)
        token = await lock.acquire()
        try:
            if not command:
                ctx.print(lock.key.decode(errors="backslashreplace"))
                _flush(ctx)
                await lock.lost.wait()
                raise CommandError("lock lost: its lease expired or its key was deleted")
            exit_code = await _run_locked(command, lock, token)
        finally:
            await asyncio.shield(lock.release())

    run_until_stopped(ctx, hold)
    if exit_code:
        raise SystemExit(exit_code)


async def _run_locked(command: list[str], lock: Lock, token: int) -> int:
    env = {**os.environ, "ETCD_LOCK_KEY": lock.key.decode(), "ETCD_LOCK_REV": str(token)}
    try:
        child = await asyncio.create_subprocess_exec(*command, env=env)
    except OSError as error:
        raise CommandError(f"cannot run {command[0]}: {error.strerror}") from None
    lost = asyncio.ensure_future(lock.lost.wait())
    finished = asyncio.ensure_future(child.wait())
    try:
        await asyncio.wait({lost, finished}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        lost.cancel()
        if child.returncode is None:
            # Lost the lock, or raftkvctl itself was told to stop: the command stops first.
            with contextlib.suppress(ProcessLookupError):
                child.terminate()
            await asyncio.shield(finished)
    if lock.lost.is_set() and not finished.done():
        raise CommandError("lock lost while the command ran; the command was terminated")
    code = child.returncode or 0
    if lock.lost.is_set() and code < 0:
        raise CommandError("lock lost while the command ran; the command was terminated")
    return 128 - code if code < 0 else code


# -- elect -----------------------------------------------------------------------------------------


def elect_command(ctx: Context, args: argparse.Namespace) -> None:
    if not args.name or (not args.listen and args.proposal is None):
        raise CommandError(
            "elect takes one election name argument and one proposal argument", EXIT_BAD_ARGS
        )

    async def listen(client: AsyncClient) -> None:
        async for leader in Election(client, args.name).observe():
            if leader is not None:
                ctx.print(leader.key.decode(errors="backslashreplace"))
                ctx.print(leader.value.decode(errors="backslashreplace"))
                _flush(ctx)

    async def campaign(client: AsyncClient) -> None:
        election = Election(client, args.name, ttl=args.ttl)
        try:
            leader = await election.campaign(args.proposal)
            ctx.print(leader.key.decode(errors="backslashreplace"))
            ctx.print(args.proposal)
            _flush(ctx)
            await election.lost.wait()
            raise CommandError("leadership lost: the lease expired or the key was deleted")
        finally:
            await asyncio.shield(election.resign())

    run_until_stopped(ctx, listen if args.listen else campaign)


# -- service registration and discovery ------------------------------------------------------------


def register_command(ctx: Context, args: argparse.Namespace) -> None:
    async def keep(client: AsyncClient) -> None:
        registration = Registration(client, args.service, args.instance, args.address, ttl=args.ttl)
        try:
            await registration.start()
        except ValueError as error:
            raise CommandError(str(error), EXIT_BAD_ARGS) from None
        try:
            while True:
                assert registration.lease is not None
                ctx.print(
                    f"registered {args.service}/{args.instance} at {args.address} "
                    f"(lease {registration.lease.id:016x}, TTL {registration.lease.ttl}s)"
                )
                _flush(ctx)
                await registration.lease.lost.wait()
                print("registration lost; registering again", file=ctx.stderr)
                while not registration.registered.is_set() or registration.lease.lost.is_set():
                    await asyncio.sleep(0.1)
        finally:
            await asyncio.shield(registration.close())

    run_until_stopped(ctx, keep)


def discover_command(ctx: Context, args: argparse.Namespace) -> None:
    if not args.watch:
        try:
            instances = ctx.call(lambda client: list_instances(client, args.service))
        except ValueError as error:
            raise CommandError(str(error), EXIT_BAD_ARGS) from None
        _print_instances(ctx, args.service, dict(sorted(instances.items())))
        return

    async def follow(client: AsyncClient) -> None:
        first = True
        async for snapshot in Discovery(client, args.service):
            if ctx.write_out == "json":
                ctx.print_json(
                    {
                        "service": args.service,
                        "revision": snapshot.revision,
                        "instances": dict(snapshot.instances),
                        "changes": [
                            {"kind": c.kind, "instance": c.instance, "address": c.address}
                            for c in snapshot.changes
                        ],
                    }
                )
            elif first:
                _print_instances(ctx, args.service, snapshot.instances)
            else:
                for change in snapshot.changes:
                    kind = colour(ctx, change.kind, _CHANGE_COLOURS[change.kind])
                    ctx.print(f"{kind} {change.instance} {change.address}")
            first = False
            _flush(ctx)

    try:
        run_until_stopped(ctx, follow)
    except ValueError as error:
        raise CommandError(str(error), EXIT_BAD_ARGS) from None


def _print_instances(ctx: Context, service: str, instances: Any) -> None:
    if ctx.write_out == "json":
        ctx.print_json({"service": service, "instances": dict(instances)})
    elif ctx.write_out == "table":
        ctx.print_table(("INSTANCE", "ADDRESS"), list(instances.items()))
    else:
        for name, address in instances.items():
            ctx.print(f"{name} {address}")


# -- queue -----------------------------------------------------------------------------------------


def queue_push_command(ctx: Context, args: argparse.Namespace) -> None:
    value = args.value if args.value is not None else sys.stdin.read()
    ctx.call(lambda client: Queue(client, args.queue).push(value.encode()))
    ctx.print("OK")


def queue_pop_command(ctx: Context, args: argparse.Namespace) -> None:
    async def pop(client: AsyncClient) -> bytes:
        try:
            return await Queue(client, args.queue).pop(timeout=args.timeout)
        except TimeoutError:
            if isinstance(sys.exc_info()[1], errors.EtcdError):
                raise
            raise CommandError(f"queue {args.queue} stayed empty for {args.timeout}s") from None

    value = run_until_stopped(ctx, pop)
    if value is not None:
        ctx.print(value.decode(errors="backslashreplace"))


def queue_list_command(ctx: Context, args: argparse.Namespace) -> None:
    values = ctx.call(lambda client: Queue(client, args.queue).items())
    if ctx.write_out == "json":
        ctx.print_json([v.decode(errors="backslashreplace") for v in values])
    else:
        for value in values:
            ctx.print(value.decode(errors="backslashreplace"))
