"""Request builders shared by the direct calls, transactions and the recipes.

`AsyncClient.get(...)` and `ops.get(...)` take the same arguments and build the same
`RangeRequest` here, so a read inside a transaction can never mean something different from the
same read on its own. The transaction builder reads like etcd's:

    await client.txn().if_(Compare.version(b"k") == 0).then(ops.put(b"k", b"v")).else_(
        ops.get(b"k")
    ).commit()

`Compare.<target>(key)` returns an operand whose `==`, `!=`, `<` and `>` build a comparison
(etcd has no `<=`/`>=`). A `Txn` can be nested inside another one's branches.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Generic, Self, TypedDict, TypeVar, Unpack

from raftkv.client.types import SortOrder, SortTarget, WatchFilter
from raftkv.pb.etcdserverpb import rpc_pb2

__all__ = [
    "Compare",
    "Comparison",
    "DeleteOptions",
    "Op",
    "PutOptions",
    "RangeOptions",
    "Txn",
    "WatchOptions",
    "delete",
    "delete_request",
    "get",
    "prefix_end",
    "put",
    "put_request",
    "range_request",
    "to_bytes",
    "txn",
]

KeyLike = str | bytes
# The range_end meaning "every key at or after `key`".
_FROM_KEY = b"\0"


def to_bytes(data: KeyLike) -> bytes:
    """Keys and values may be given as str (encoded as UTF-8) or bytes."""
    if isinstance(data, bytes):
        return data
    if isinstance(data, str):
        return data.encode()
    raise TypeError(f"expected str or bytes, got {type(data).__name__}")


def prefix_end(prefix: bytes) -> bytes:
    """The smallest key greater than every key starting with `prefix` (etcd's prefix range end).

    Trailing 0xff bytes cannot be incremented and are dropped; a prefix of only 0xff bytes has no
    upper bound, which etcd spells "\\0".
    """
    stripped = prefix.rstrip(b"\xff")
    if not stripped:
        return _FROM_KEY
    return stripped[:-1] + bytes([stripped[-1] + 1])


def key_range(
    key: KeyLike, *, prefix: bool = False, range_end: KeyLike | None = None, from_key: bool = False
) -> tuple[bytes, bytes]:
    """`(key, range_end)` for one key, a prefix, an explicit range, or every key from `key` on."""
    if prefix + (range_end is not None) + from_key > 1:
        raise ValueError("give at most one of prefix, range_end and from_key")
    k = to_bytes(key)
    if prefix:
        # An empty prefix means every key, which etcd spells key="\0", range_end="\0".
        return (k, prefix_end(k)) if k else (_FROM_KEY, _FROM_KEY)
    if from_key:
        return (k or _FROM_KEY), _FROM_KEY
    if range_end is not None:
        return k, to_bytes(range_end)
    return k, b""


class RangeOptions(TypedDict, total=False):
    """Options of a range read (`get`); see `range_request`."""

    prefix: bool
    range_end: KeyLike | None
    from_key: bool
    revision: int
    limit: int
    sort_order: SortOrder
    sort_target: SortTarget
    serializable: bool
    keys_only: bool
    count_only: bool
    min_mod_revision: int
    max_mod_revision: int
    min_create_revision: int
    max_create_revision: int


class PutOptions(TypedDict, total=False):
    """Options of a put; see `put_request`."""

    lease: int
    prev_kv: bool
    ignore_value: bool
    ignore_lease: bool


class DeleteOptions(TypedDict, total=False):
    """Options of a delete; see `delete_request`."""

    prefix: bool
    range_end: KeyLike | None
    from_key: bool
    prev_kv: bool


class WatchOptions(TypedDict, total=False):
    """Options of a watch; see `AsyncClient.watch`."""

    prefix: bool
    range_end: KeyLike | None
    from_key: bool
    start_revision: int
    prev_kv: bool
    filters: Iterable[WatchFilter]
    progress_notify: bool
    fragment: bool
    require_leader: bool


def range_request(
    key: KeyLike,
    *,
    prefix: bool = False,
    range_end: KeyLike | None = None,
    from_key: bool = False,
    revision: int = 0,
    limit: int = 0,
    sort_order: SortOrder = SortOrder.NONE,
    sort_target: SortTarget = SortTarget.KEY,
    serializable: bool = False,
    keys_only: bool = False,
    count_only: bool = False,
    min_mod_revision: int = 0,
    max_mod_revision: int = 0,
    min_create_revision: int = 0,
    max_create_revision: int = 0,
) -> rpc_pb2.RangeRequest:
    """A RangeRequest: one key, or a range (`prefix`, `range_end` or `from_key`).

    `revision` 0 reads the newest revision; `limit` 0 means no limit; `serializable` reads the
    answering member's local state without a quorum round trip (may be stale). The min/max
    revision bounds filter the result (0 disables a bound).
    """
    k, end = key_range(key, prefix=prefix, range_end=range_end, from_key=from_key)
    return rpc_pb2.RangeRequest(
        key=k,
        range_end=end,
        revision=revision,
        limit=limit,
        sort_order=sort_order.name,
        sort_target=sort_target.name,
        serializable=serializable,
        keys_only=keys_only,
        count_only=count_only,
        min_mod_revision=min_mod_revision,
        max_mod_revision=max_mod_revision,
        min_create_revision=min_create_revision,
        max_create_revision=max_create_revision,
    )


def put_request(
    key: KeyLike,
    value: KeyLike = b"",
    *,
    lease: int = 0,
    prev_kv: bool = False,
    ignore_value: bool = False,
    ignore_lease: bool = False,
) -> rpc_pb2.PutRequest:
    """A PutRequest. `ignore_value`/`ignore_lease` keep the key's current value/lease (the key
    must exist); `prev_kv` asks for the value before the put."""
    return rpc_pb2.PutRequest(
        key=to_bytes(key),
        value=to_bytes(value),
        lease=lease,
        prev_kv=prev_kv,
        ignore_value=ignore_value,
        ignore_lease=ignore_lease,
    )


def delete_request(
    key: KeyLike,
    *,
    prefix: bool = False,
    range_end: KeyLike | None = None,
    from_key: bool = False,
    prev_kv: bool = False,
) -> rpc_pb2.DeleteRangeRequest:
    k, end = key_range(key, prefix=prefix, range_end=range_end, from_key=from_key)
    return rpc_pb2.DeleteRangeRequest(key=k, range_end=end, prev_kv=prev_kv)


# -- transaction ops ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Op:
    """One operation of a transaction branch."""

    request: rpc_pb2.RequestOp

    @property
    def read_only(self) -> bool:
        return _op_read_only(self.request)


def _op_read_only(op: rpc_pb2.RequestOp) -> bool:
    which = op.WhichOneof("request")
    if which == "request_range":
        return True
    if which == "request_txn":
        return _txn_read_only(op.request_txn)
    return False


def _txn_read_only(txn: rpc_pb2.TxnRequest) -> bool:
    return all(_op_read_only(op) for op in (*txn.success, *txn.failure))


def get(key: KeyLike, **options: Unpack[RangeOptions]) -> Op:
    """A range read inside a txn; takes the same options as `AsyncClient.get`."""
    return Op(rpc_pb2.RequestOp(request_range=range_request(key, **options)))


def put(key: KeyLike, value: KeyLike = b"", **options: Unpack[PutOptions]) -> Op:
    """A put inside a txn; takes the same options as `AsyncClient.put`."""
    return Op(rpc_pb2.RequestOp(request_put=put_request(key, value, **options)))


def delete(key: KeyLike, **options: Unpack[DeleteOptions]) -> Op:
    """A delete inside a txn; takes the same options as `AsyncClient.delete`."""
    return Op(rpc_pb2.RequestOp(request_delete_range=delete_request(key, **options)))


# -- comparisons ----------------------------------------------------------------------------------

_Cmp = rpc_pb2.Compare


@dataclass(frozen=True, slots=True)
class Comparison:
    """One txn condition, built by `Compare.<target>(key) <op> operand`."""

    pb: rpc_pb2.Compare


@dataclass(frozen=True, slots=True, eq=False)
class _Operand:
    target: rpc_pb2.Compare.CompareTarget
    field: str
    key: bytes
    range_end: bytes

    def _compare(self, result: rpc_pb2.Compare.CompareResult, other: object) -> Comparison:
        if self.field == "value":
            operand: object = to_bytes(other)  # type: ignore[arg-type]
        elif isinstance(other, int) and not isinstance(other, bool):
            operand = other
        else:
            raise TypeError(f"compare {self.field} with an int, not {type(other).__name__}")
        pb = _Cmp(result=result, target=self.target, key=self.key, range_end=self.range_end)
        setattr(pb, self.field, operand)
        return Comparison(pb)

    def __eq__(self, other: object) -> Comparison:  # type: ignore[override]
        return self._compare(_Cmp.EQUAL, other)

    def __ne__(self, other: object) -> Comparison:  # type: ignore[override]
        return self._compare(_Cmp.NOT_EQUAL, other)

    def __lt__(self, other: object) -> Comparison:
        return self._compare(_Cmp.LESS, other)

    def __gt__(self, other: object) -> Comparison:
        return self._compare(_Cmp.GREATER, other)

    __hash__ = None  # type: ignore[assignment]


class Compare:
    """Operands of txn conditions: `Compare.value(key) == b"x"`, `Compare.version(key) > 0`.

    With `prefix=True` (or an explicit `range_end`) the condition must hold for every key of the
    range.
    """

    @staticmethod
    def _operand(
        target: rpc_pb2.Compare.CompareTarget,
        field: str,
        key: KeyLike,
        prefix: bool,
        range_end: KeyLike | None,
    ) -> _Operand:
        k, end = key_range(key, prefix=prefix, range_end=range_end)
        return _Operand(target, field, k, end)

    @staticmethod
    def value(key: KeyLike, *, prefix: bool = False, range_end: KeyLike | None = None) -> _Operand:
        return Compare._operand(_Cmp.VALUE, "value", key, prefix, range_end)

    @staticmethod
    def version(
        key: KeyLike, *, prefix: bool = False, range_end: KeyLike | None = None
    ) -> _Operand:
        """The number of puts since the key was created; 0 means the key does not exist."""
        return Compare._operand(_Cmp.VERSION, "version", key, prefix, range_end)

    @staticmethod
    def create_revision(
        key: KeyLike, *, prefix: bool = False, range_end: KeyLike | None = None
    ) -> _Operand:
        return Compare._operand(_Cmp.CREATE, "create_revision", key, prefix, range_end)

    @staticmethod
    def mod_revision(
        key: KeyLike, *, prefix: bool = False, range_end: KeyLike | None = None
    ) -> _Operand:
        return Compare._operand(_Cmp.MOD, "mod_revision", key, prefix, range_end)

    @staticmethod
    def lease(key: KeyLike, *, prefix: bool = False, range_end: KeyLike | None = None) -> _Operand:
        return Compare._operand(_Cmp.LEASE, "lease", key, prefix, range_end)


# -- transactions ---------------------------------------------------------------------------------

R = TypeVar("R")


class Txn(Generic[R]):
    """A transaction: if every comparison holds, run the `then` ops, else the `else_` ops.

    Built by `client.txn()` (bound: `commit()` sends it) or by `ops.txn()` (unbound: nest it in
    another txn's branch). Each method adds to the transaction and returns it.
    """

    def __init__(self, committer: Callable[[Txn[R], float | None], R] | None = None) -> None:
        self._committer = committer
        self._compare: list[rpc_pb2.Compare] = []
        self._success: list[rpc_pb2.RequestOp] = []
        self._failure: list[rpc_pb2.RequestOp] = []

    def if_(self, *comparisons: Comparison) -> Self:
        for cmp in comparisons:
            if not isinstance(cmp, Comparison):
                raise TypeError(f"if_() takes Compare conditions, not {type(cmp).__name__}")
            self._compare.append(cmp.pb)
        return self

    def then(self, *ops: Op | Txn[Any]) -> Self:
        self._success.extend(_request_op(op) for op in ops)
        return self

    def else_(self, *ops: Op | Txn[Any]) -> Self:
        self._failure.extend(_request_op(op) for op in ops)
        return self

    def to_request(self) -> rpc_pb2.TxnRequest:
        return rpc_pb2.TxnRequest(
            compare=self._compare, success=self._success, failure=self._failure
        )

    @property
    def read_only(self) -> bool:
        """True when no branch writes: such a txn may be retried safely."""
        return _txn_read_only(self.to_request())

    def commit(self, timeout: float | None = None) -> R:
        """Send the transaction (the client's `txn()` decides whether this must be awaited)."""
        if self._committer is None:
            raise TypeError("this txn is not bound to a client; nest it or use client.txn()")
        return self._committer(self, timeout)


def _request_op(op: Op | Txn[Any]) -> rpc_pb2.RequestOp:
    if isinstance(op, Op):
        return op.request
    if isinstance(op, Txn):
        return rpc_pb2.RequestOp(request_txn=op.to_request())
    raise TypeError(f"txn branches take ops.get/put/delete or a Txn, not {type(op).__name__}")


def txn(
    *comparisons: Comparison,
    then: Iterable[Op | Txn[Any]] = (),
    else_: Iterable[Op | Txn[Any]] = (),
) -> Txn[None]:
    """An unbound transaction, to nest inside another transaction's branch."""
    return Txn[None]().if_(*comparisons).then(*then).else_(*else_)
