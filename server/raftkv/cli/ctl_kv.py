"""`raftkvctl get|put|del|txn|compaction`: the key-value commands, with etcdctl's flags and output.

`txn` reads etcdctl's three-block format (comparisons, blank line, success ops, blank line,
failure ops) from stdin, prompting for each block when stdin is a terminal (`-i` forces the
prompts); or takes the blocks as repeatable `--compare/--then/--else` flags for scripts. An op
line is the matching command's own arguments (`put k v --lease=1a`, `get k --prefix`, `del k`),
parsed by the same argument definitions as the stand-alone commands, so both read alike.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import sys
from typing import Any, NoReturn, TextIO

from raftkv.cli.ctl import EXIT_BAD_ARGS, EXIT_INVALID_INPUT, CommandError, Context
from raftkv.cli.ctl_common import header_json, kv_json, parse_lease_id, print_kv
from raftkv.client import (
    DeleteResult,
    GetResult,
    PutResult,
    SortOrder,
    SortTarget,
    TxnResult,
    ops,
)
from raftkv.client.ops import Compare, Comparison, Op

_SORT_TARGETS = {
    "CREATE": SortTarget.CREATE,
    "KEY": SortTarget.KEY,
    "MODIFY": SortTarget.MOD,
    "VALUE": SortTarget.VALUE,
    "VERSION": SortTarget.VERSION,
}


def register(commands: Any) -> None:
    get = commands.add_parser("get", help="get a key or a range of keys")
    _get_arguments(get)
    get.add_argument("--print-value-only", action="store_true", help="print values only")
    get.add_argument(
        "--consistency", default="l", choices=("l", "s"), help="linearizable or serializable"
    )
    get.set_defaults(handler=get_command)

    put = commands.add_parser("put", help="put a key (the value from stdin when not given)")
    _put_arguments(put)
    put.set_defaults(handler=put_command)

    delete = commands.add_parser("del", help="delete a key or a range of keys")
    _del_arguments(delete)
    delete.set_defaults(handler=del_command)

    txn = commands.add_parser(
        "txn",
        help="run a transaction (etcdctl's format on stdin, or --compare/--then/--else)",
        description='Comparisons look like value("k") = "v", version("k") > "0", '
        'create("k") = "0", mod("k") < "9", lease("k") = "<hex id>"; '
        "ops like put k v [--lease=ID], get k [end] [--prefix], del k [end] [--prefix].",
    )
    txn.add_argument("-i", "--interactive", action="store_true", help="prompt for each block")
    txn.add_argument("--compare", action="append", default=[], help="a comparison (repeatable)")
    txn.add_argument("--then", action="append", default=[], help="a success op (repeatable)")
    txn.add_argument("--else", dest="else_", action="append", default=[], help="a failure op")
    txn.set_defaults(handler=txn_command)

    compaction = commands.add_parser("compaction", help="discard history before a revision")
    compaction.add_argument("revision")
    compaction.add_argument(
        "--physical", action="store_true", help="wait until the backend has compacted too"
    )
    compaction.set_defaults(handler=compaction_command)


# -- argument definitions shared with txn op lines -------------------------------------------------


def _range_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("key", nargs="?")
    parser.add_argument("range_end", nargs="?")
    parser.add_argument("--prefix", action="store_true", help="every key with this prefix")
    parser.add_argument("--from-key", action="store_true", help="every key >= the given key")


def _get_arguments(parser: argparse.ArgumentParser) -> None:
    _range_arguments(parser)
    parser.add_argument("--limit", type=int, default=0, help="maximum number of results")
    parser.add_argument("--rev", type=int, default=0, help="read at this revision")
    parser.add_argument("--sort-by", default="", choices=["", *_SORT_TARGETS])
    parser.add_argument("--order", default="", choices=("", "ASCEND", "DESCEND"))
    parser.add_argument("--keys-only", action="store_true", help="get only the keys")
    parser.add_argument("--count-only", action="store_true", help="get only the count")


def _put_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("key", nargs="?")
    parser.add_argument("value", nargs="?")
    parser.add_argument("--lease", default="0", help="lease ID (hex) to attach the key to")
    parser.add_argument("--prev-kv", action="store_true", help="print the previous key-value")
    parser.add_argument("--ignore-value", action="store_true", help="keep the current value")
    parser.add_argument("--ignore-lease", action="store_true", help="keep the current lease")


def _del_arguments(parser: argparse.ArgumentParser) -> None:
    _range_arguments(parser)
    parser.add_argument("--prev-kv", action="store_true", help="print the deleted key-values")


def _range_options(args: argparse.Namespace) -> dict[str, Any]:
    if args.prefix and args.from_key:
        raise CommandError("`--prefix` and `--from-key` cannot be set at the same time", 1)
    if args.range_end is not None and (args.prefix or args.from_key):
        raise CommandError(
            "too many arguments, only accept one argument when `--prefix` or `--from-key` is set",
            EXIT_BAD_ARGS,
        )
    if args.range_end is not None:
        return {"range_end": args.range_end.encode()}
    return {"prefix": args.prefix, "from_key": args.from_key}


def _get_request(args: argparse.Namespace) -> tuple[bytes, dict[str, Any]]:
    if args.key is None:
        raise CommandError(
            "get command needs one argument as key and an optional argument as range_end",
            EXIT_BAD_ARGS,
        )
    order = SortOrder.NONE
    if args.order:
        order = SortOrder[args.order]
    elif args.sort_by and args.sort_by != "KEY":
        order = SortOrder.ASCEND
    options = {
        "revision": args.rev,
        "limit": args.limit,
        "sort_order": order,
        "sort_target": _SORT_TARGETS.get(args.sort_by or "KEY", SortTarget.KEY),
        "keys_only": args.keys_only,
        "count_only": args.count_only,
        **_range_options(args),
    }
    return args.key.encode(), options


def _put_request(
    args: argparse.Namespace, stdin: TextIO | None = None
) -> tuple[bytes, bytes, dict[str, Any]]:
    if args.key is None or (args.value is None and stdin is None):
        raise CommandError(
            "put command needs 1 argument and input from stdin or 2 arguments", EXIT_BAD_ARGS
        )
    value = args.value if args.value is not None else stdin.read() if stdin else ""
    options = {
        "lease": parse_lease_id(args.lease),
        "prev_kv": args.prev_kv,
        "ignore_value": args.ignore_value,
        "ignore_lease": args.ignore_lease,
    }
    return args.key.encode(), value.encode(), options


def _del_request(args: argparse.Namespace) -> tuple[bytes, dict[str, Any]]:
    if args.key is None:
        raise CommandError(
            "del command needs one argument as key and an optional argument as range_end",
            EXIT_BAD_ARGS,
        )
    return args.key.encode(), {"prev_kv": args.prev_kv, **_range_options(args)}


# -- output ----------------------------------------------------------------------------------------


def _print_get(ctx: Context, result: GetResult, *, args: argparse.Namespace) -> None:
    if getattr(args, "count_only", False):
        ctx.print(str(result.count))
        return
    for kv in result.kvs:
        print_kv(
            ctx,
            kv,
            keys_only=args.keys_only,
            values_only=getattr(args, "print_value_only", False),
        )


def _print_put(ctx: Context, result: PutResult) -> None:
    ctx.print("OK")
    if result.prev_kv is not None:
        print_kv(ctx, result.prev_kv)


def _print_del(ctx: Context, result: DeleteResult) -> None:
    ctx.print(str(result.deleted))
    for kv in result.prev_kvs:
        print_kv(ctx, kv)


def _get_json(result: GetResult) -> dict[str, Any]:
    body: dict[str, Any] = {"header": header_json(result.header)}
    if result.kvs:
        body["kvs"] = [kv_json(kv) for kv in result.kvs]
    if result.more:
        body["more"] = True
    if result.count:
        body["count"] = result.count
    return body


def _put_json(result: PutResult) -> dict[str, Any]:
    body: dict[str, Any] = {"header": header_json(result.header)}
    if result.prev_kv is not None:
        body["prev_kv"] = kv_json(result.prev_kv)
    return body


def _del_json(result: DeleteResult) -> dict[str, Any]:
    body: dict[str, Any] = {"header": header_json(result.header)}
    if result.deleted:
        body["deleted"] = result.deleted
    if result.prev_kvs:
        body["prev_kvs"] = [kv_json(kv) for kv in result.prev_kvs]
    return body


def _txn_json(result: TxnResult) -> dict[str, Any]:
    body: dict[str, Any] = {"header": header_json(result.header)}
    if result.succeeded:
        body["succeeded"] = True
    responses = []
    for r in result.responses:
        if isinstance(r, GetResult):
            responses.append({"Response": {"ResponseRange": _get_json(r)}})
        elif isinstance(r, PutResult):
            responses.append({"Response": {"ResponsePut": _put_json(r)}})
        elif isinstance(r, DeleteResult):
            responses.append({"Response": {"ResponseDeleteRange": _del_json(r)}})
        else:
            responses.append({"Response": {"ResponseTxn": _txn_json(r)}})
    if responses:
        body["responses"] = responses
    return body


# -- commands --------------------------------------------------------------------------------------


def get_command(ctx: Context, args: argparse.Namespace) -> None:
    ctx.require_format("simple", "json")
    key, options = _get_request(args)
    result = ctx.call(
        lambda client: client.get(key, serializable=args.consistency == "s", **options)
    )
    if ctx.write_out == "json":
        ctx.print_json(_get_json(result))
    else:
        _print_get(ctx, result, args=args)


def put_command(ctx: Context, args: argparse.Namespace) -> None:
    ctx.require_format("simple", "json")
    key, value, options = _put_request(args, sys.stdin)
    result = ctx.call(lambda client: client.put(key, value, **options))
    if ctx.write_out == "json":
        ctx.print_json(_put_json(result))
    else:
        _print_put(ctx, result)


def del_command(ctx: Context, args: argparse.Namespace) -> None:
    ctx.require_format("simple", "json")
    key, options = _del_request(args)
    result = ctx.call(lambda client: client.delete(key, **options))
    if ctx.write_out == "json":
        ctx.print_json(_del_json(result))
    else:
        _print_del(ctx, result)


def compaction_command(ctx: Context, args: argparse.Namespace) -> None:
    try:
        revision = int(args.revision)
    except ValueError:
        raise CommandError(f"invalid revision {args.revision!r}", EXIT_BAD_ARGS) from None
    ctx.call(lambda client: client.compact(revision, physical=args.physical))
    ctx.print(f"compacted revision {revision}")


# -- txn -------------------------------------------------------------------------------------------

_COMPARE = re.compile(
    r'^\s*(?P<target>value|version|create|mod|lease)\("(?P<key>(?:[^"\\]|\\.)*)"\)\s*'
    r'(?P<op>=|!=|<|>)\s*"(?P<operand>(?:[^"\\]|\\.)*)"\s*$'
)
_OPERANDS = {
    "value": Compare.value,
    "version": Compare.version,
    "create": Compare.create_revision,
    "mod": Compare.mod_revision,
    "lease": Compare.lease,
}


def _unquote(text: str) -> str:
    return str(json.loads(f'"{text}"'))


def parse_compare(line: str) -> Comparison:
    """One comparison in etcdctl's syntax: `value("k") = "v"`, `mod("k") > "4"`, ..."""
    match = _COMPARE.match(line)
    if match is None:
        raise CommandError(f"malformed comparison: {line}", EXIT_INVALID_INPUT)
    target, op = match["target"], match["op"]
    operand_text = _unquote(match["operand"])
    operand: bytes | int
    try:
        if target == "value":
            operand = operand_text.encode()
        elif target == "lease":
            operand = int(operand_text, 16)
        else:
            operand = int(operand_text)
    except ValueError:
        raise CommandError(f"malformed comparison: {line}", EXIT_INVALID_INPUT) from None
    left = _OPERANDS[target](_unquote(match["key"]).encode())
    if op == "=":
        return left == operand
    if op == "!=":
        return left != operand
    return left < operand if op == "<" else left > operand


class _OpParser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise CommandError(message, EXIT_INVALID_INPUT)


def _op_parser() -> argparse.ArgumentParser:
    parser = _OpParser(prog="op", add_help=False)
    sub = parser.add_subparsers(dest="op", parser_class=_OpParser)
    _get_arguments(sub.add_parser("get", add_help=False))
    _put_arguments(sub.add_parser("put", add_help=False))
    _del_arguments(sub.add_parser("del", add_help=False))
    return parser


def parse_op(line: str) -> Op:
    """One op line: `put k v [--lease=ID]`, `get k [end] [flags]`, `del k [end] [flags]`."""
    try:
        words = shlex.split(line)
    except ValueError as error:
        raise CommandError(f"malformed op {line!r}: {error}", EXIT_INVALID_INPUT) from None
    if not words or words[0] not in ("get", "put", "del"):
        raise CommandError(f"unknown op {line!r} (expected get, put or del)", EXIT_INVALID_INPUT)
    try:
        args = _op_parser().parse_args(words)
    except CommandError as error:
        raise CommandError(f"malformed op {line!r}: {error}", EXIT_INVALID_INPUT) from None
    if args.op == "get":
        key, options = _get_request(args)
        return ops.get(key, **options)
    if args.op == "put":
        key, value, options = _put_request(args)
        return ops.put(key, value, **options)
    key, options = _del_request(args)
    return ops.delete(key, **options)


def _read_block(stream: TextIO, prompt: str | None, ctx: Context) -> list[str]:
    if prompt is not None:
        ctx.print(prompt)
    lines = []
    for line in stream:
        if not line.strip():
            break
        lines.append(line.rstrip("\n"))
    return lines


def txn_command(ctx: Context, args: argparse.Namespace) -> None:
    ctx.require_format("simple", "json")
    if args.compare or args.then or args.else_:
        compares, success, failure = args.compare, args.then, args.else_
    else:
        prompts = args.interactive or sys.stdin.isatty()
        compares = _read_block(sys.stdin, "compares:" if prompts else None, ctx)
        success = _read_block(
            sys.stdin, "success requests (get, put, del):" if prompts else None, ctx
        )
        failure = _read_block(
            sys.stdin, "failure requests (get, put, del):" if prompts else None, ctx
        )
        if prompts:
            ctx.print()
    txn = ops.txn(
        *(parse_compare(c) for c in compares),
        then=[parse_op(o) for o in success],
        else_=[parse_op(o) for o in failure],
    )
    result = ctx.call(lambda client: client.commit(txn))
    if ctx.write_out == "json":
        ctx.print_json(_txn_json(result))
        return
    ctx.print("SUCCESS" if result.succeeded else "FAILURE")
    for response in result.responses:
        ctx.print()
        if isinstance(response, GetResult):
            for kv in response.kvs:
                print_kv(ctx, kv)
        elif isinstance(response, PutResult):
            _print_put(ctx, response)
        elif isinstance(response, DeleteResult):
            _print_del(ctx, response)
        else:
            ctx.print("SUCCESS" if response.succeeded else "FAILURE")
