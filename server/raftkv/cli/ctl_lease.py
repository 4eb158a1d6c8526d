"""`raftkvctl lease grant|revoke|timetolive|list|keep-alive`, with etcdctl's output.

Lease IDs are printed and read in hexadecimal, as etcdctl does. `keep-alive` renews every third
of the TTL and prints each renewal until Ctrl-C (or once with `--once`); it ends with an error
when the lease is gone.
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from raftkv.cli.ctl import EXIT_BAD_ARGS, CommandError, Context
from raftkv.cli.ctl_common import b64, header_json, parse_lease_id, run_until_stopped, text
from raftkv.client import AsyncClient, LeaseKeepAliveResult, errors


def register(commands: Any) -> None:
    lease = commands.add_parser("lease", help="lease commands")
    sub = lease.add_subparsers(title="lease commands", metavar="COMMAND")

    grant = sub.add_parser("grant", help="create a lease of TTL seconds")
    grant.add_argument("ttl", nargs="?")
    grant.set_defaults(handler=grant_command)

    revoke = sub.add_parser("revoke", help="revoke a lease (its keys are deleted)")
    revoke.add_argument("lease_id", nargs="?")
    revoke.set_defaults(handler=revoke_command)

    ttl = sub.add_parser("timetolive", help="remaining TTL of a lease")
    ttl.add_argument("lease_id", nargs="?")
    ttl.add_argument("--keys", action="store_true", help="also list the attached keys")
    ttl.set_defaults(handler=timetolive_command)

    listing = sub.add_parser("list", help="list all active leases")
    listing.set_defaults(handler=list_command)

    keep = sub.add_parser("keep-alive", help="keep a lease alive")
    keep.add_argument("lease_id", nargs="?")
    keep.add_argument("--once", action="store_true", help="renew once, then exit")
    keep.set_defaults(handler=keep_alive_command)


def _one_lease(args: argparse.Namespace, usage: str) -> int:
    if args.lease_id is None:
        raise CommandError(usage, EXIT_BAD_ARGS)
    return parse_lease_id(args.lease_id)


def grant_command(ctx: Context, args: argparse.Namespace) -> None:
    if args.ttl is None:
        raise CommandError("lease grant command needs TTL argument", EXIT_BAD_ARGS)
    try:
        ttl = int(args.ttl)
    except ValueError:
        raise CommandError(f"bad TTL ({args.ttl!r})", EXIT_BAD_ARGS) from None
    result = ctx.call(lambda client: client.lease_grant(ttl))
    if ctx.write_out == "json":
        body = header_json(result.header)
        ctx.print_json({**body, "ID": result.id, "TTL": result.ttl, "Error": ""})
    else:
        ctx.print(f"lease {result.id:016x} granted with TTL({result.ttl}s)")


def revoke_command(ctx: Context, args: argparse.Namespace) -> None:
    lease_id = _one_lease(args, "lease revoke command needs 1 argument")
    try:
        header = ctx.call(lambda client: client.lease_revoke(lease_id))
    except errors.EtcdError as error:
        raise CommandError(f"failed to revoke lease ({error.message})") from None
    if ctx.write_out == "json":
        ctx.print_json({"header": header_json(header)})
    else:
        ctx.print(f"lease {lease_id:016x} revoked")


def timetolive_command(ctx: Context, args: argparse.Namespace) -> None:
    lease_id = _one_lease(args, "lease timetolive command needs lease ID as argument")
    result = ctx.call(lambda client: client.lease_time_to_live(lease_id, keys=args.keys))
    if ctx.write_out == "json":
        body: dict[str, Any] = {**header_json(result.header), "id": result.id, "ttl": result.ttl}
        body["granted-ttl"] = result.granted_ttl
        if result.keys:
            body["keys"] = [b64(k) for k in result.keys]
        ctx.print_json(body)
    elif result.granted_ttl == 0 and result.ttl == -1:
        ctx.print(f"lease {lease_id:016x} already expired")
    else:
        line = f"lease {lease_id:016x} granted with TTL({result.granted_ttl}s), "
        line += f"remaining({result.ttl}s)"
        if args.keys:
            line += f", attached keys([{' '.join(text(k) for k in result.keys)}])"
        ctx.print(line)


def list_command(ctx: Context, args: argparse.Namespace) -> None:
    result = ctx.call(lambda client: client.lease_leases())
    if ctx.write_out == "json":
        body: dict[str, Any] = header_json(result.header)
        body["leases"] = [{"id": i} for i in result.ids]
        ctx.print_json(body)
    else:
        ctx.print(f"found {len(result.ids)} leases")
        for lease_id in result.ids:
            ctx.print(f"{lease_id:016x}")


def _print_renewal(ctx: Context, renewed: LeaseKeepAliveResult) -> None:
    if ctx.write_out == "json":
        ctx.print_json({**header_json(renewed.header), "ID": renewed.id, "TTL": renewed.ttl})
    else:
        ctx.print(f"lease {renewed.id:016x} keepalived with TTL({renewed.ttl})")
    ctx.stdout.flush()


def keep_alive_command(ctx: Context, args: argparse.Namespace) -> None:
    lease_id = _one_lease(args, "lease keep-alive command needs lease ID as argument")

    async def keep(client: AsyncClient) -> None:
        while True:
            try:
                renewed = await client.lease_keep_alive_once(lease_id)
            except errors.LeaseNotFoundError:
                raise CommandError(f"lease {lease_id:016x} expired or revoked.") from None
            _print_renewal(ctx, renewed)
            if args.once:
                return
            await asyncio.sleep(max(renewed.ttl / 3, 0.5))

    run_until_stopped(ctx, keep)
