"""`raftkvctl member list|add|remove|update|promote`, with etcdctl's output.

Member IDs are hexadecimal. `member add` prints the `ETCD_*` settings the new member must start
with, as etcdctl does, so the same runbook works for raftkv: the cluster it joins is listed from
the response, with the new member under the name given.
"""

from __future__ import annotations

import argparse
from typing import Any

from raftkv.cli.ctl import EXIT_BAD_ARGS, CommandError, Context
from raftkv.cli.ctl_common import header_json, parse_member_id
from raftkv.client import Member, MemberListResult


def register(commands: Any) -> None:
    member = commands.add_parser("member", help="membership commands")
    sub = member.add_subparsers(title="member commands", metavar="COMMAND")

    listing = sub.add_parser("list", help="list the cluster's members")
    listing.set_defaults(handler=list_command)

    add = sub.add_parser("add", help="add a member")
    add.add_argument("name", nargs="?")
    add.add_argument("--peer-urls", default="", help="comma-separated peer URLs of the member")
    add.add_argument("--learner", action="store_true", help="add as a non-voting learner")
    add.set_defaults(handler=add_command)

    remove = sub.add_parser("remove", help="remove a member")
    remove.add_argument("member_id", nargs="?")
    remove.set_defaults(handler=remove_command)

    update = sub.add_parser("update", help="change a member's peer URLs")
    update.add_argument("member_id", nargs="?")
    update.add_argument("--peer-urls", default="", help="comma-separated new peer URLs")
    update.set_defaults(handler=update_command)

    promote = sub.add_parser("promote", help="promote a learner to a voting member")
    promote.add_argument("member_id", nargs="?")
    promote.set_defaults(handler=promote_command)


def _member_json(member: Member) -> dict[str, Any]:
    body: dict[str, Any] = {"ID": member.id}
    if member.name:
        body["name"] = member.name
    if member.peer_urls:
        body["peerURLs"] = list(member.peer_urls)
    if member.client_urls:
        body["clientURLs"] = list(member.client_urls)
    if member.is_learner:
        body["isLearner"] = True
    return body


def _row(member: Member) -> tuple[str, ...]:
    return (
        f"{member.id:x}",
        "started" if member.name else "unstarted",
        member.name,
        ",".join(member.peer_urls),
        ",".join(member.client_urls),
        str(member.is_learner).lower(),
    )


def list_command(ctx: Context, args: argparse.Namespace) -> None:
    result = ctx.call(lambda client: client.member_list())
    _print_members(ctx, result)


def _print_members(ctx: Context, result: MemberListResult) -> None:
    if ctx.write_out == "json":
        ctx.print_json(
            {
                "header": header_json(result.header),
                "members": [_member_json(m) for m in result.members],
            }
        )
    elif ctx.write_out == "table":
        headers = ("ID", "STATUS", "NAME", "PEER ADDRS", "CLIENT ADDRS", "IS LEARNER")
        ctx.print_table(headers, [_row(m) for m in result.members])
    else:
        for member in result.members:
            ctx.print(", ".join(_row(member)))


def _peer_urls(args: argparse.Namespace) -> list[str]:
    urls = [u.strip() for u in args.peer_urls.split(",") if u.strip()]
    if not urls:
        raise CommandError("member peer urls not provided", EXIT_BAD_ARGS)
    return urls


def _one_member(args: argparse.Namespace, command: str) -> int:
    if args.member_id is None:
        raise CommandError(f"member ID is not provided ({command})", EXIT_BAD_ARGS)
    return parse_member_id(args.member_id)


def add_command(ctx: Context, args: argparse.Namespace) -> None:
    if args.name is None:
        raise CommandError("member name not provided", EXIT_BAD_ARGS)
    urls = _peer_urls(args)
    result = ctx.call(lambda client: client.member_add(urls, is_learner=args.learner))
    if ctx.write_out == "json":
        ctx.print_json(
            {
                "header": header_json(result.header),
                "member": _member_json(result.member),
                "members": [_member_json(m) for m in result.members],
            }
        )
        return
    kind = "learner" if args.learner else "Member"
    ctx.print(f"{kind} {result.member.id:x} added to cluster {result.header.cluster_id:x}")
    cluster = []
    for member in result.members:
        name = args.name if member.id == result.member.id else member.name
        cluster.extend(f"{name}={url}" for url in member.peer_urls if name)
    ctx.print()
    ctx.print(f'ETCD_NAME="{args.name}"')
    ctx.print(f'ETCD_INITIAL_CLUSTER="{",".join(cluster)}"')
    ctx.print(f'ETCD_INITIAL_ADVERTISE_PEER_URLS="{",".join(result.member.peer_urls)}"')
    ctx.print('ETCD_INITIAL_CLUSTER_STATE="existing"')


def remove_command(ctx: Context, args: argparse.Namespace) -> None:
    member_id = _one_member(args, "member remove")
    result = ctx.call(lambda client: client.member_remove(member_id))
    _done(ctx, result, f"Member {member_id:x} removed from cluster {result.header.cluster_id:x}")


def update_command(ctx: Context, args: argparse.Namespace) -> None:
    member_id = _one_member(args, "member update")
    urls = _peer_urls(args)
    result = ctx.call(lambda client: client.member_update(member_id, urls))
    _done(ctx, result, f"Member {member_id:x} updated in cluster {result.header.cluster_id:x}")


def promote_command(ctx: Context, args: argparse.Namespace) -> None:
    member_id = _one_member(args, "member promote")
    result = ctx.call(lambda client: client.member_promote(member_id))
    _done(ctx, result, f"Member {member_id:x} promoted in cluster {result.header.cluster_id:x}")


def _done(ctx: Context, result: MemberListResult, message: str) -> None:
    if ctx.write_out == "json":
        ctx.print_json(
            {
                "header": header_json(result.header),
                "members": [_member_json(m) for m in result.members],
            }
        )
    else:
        ctx.print(message)
