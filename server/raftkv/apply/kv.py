"""Applies etcd's KV requests (Range, Put, DeleteRange, Txn, Compact) to the MVCC store.

This is etcd's apply layer for the KV service, rule for rule, because clients observe every
detail: sorting (a non-KEY sort target with order NONE sorts ascending), limits and `more`
(revision filters and sorting are applied to the whole range before the limit), `count` (keys in
the range before filters and limit), `prev_kv`, `ignore_value`/`ignore_lease`, and Txn compares,
which all read the state *before* the txn, including those of nested txns. Every op of a Txn runs
at one revision. Request errors are etcd's and raised as `raftkv.apply.errors` exceptions.

Two kinds of checks, as in etcd:

- `validate_*` are stateless (empty keys, conflicting flags, too many ops, a key both put and
  deleted in one txn). The API layer calls them before proposing; the apply methods call them
  again, so an entry that bypassed the edge fails identically on every member.
- State checks (the key must exist for ignore_*, the lease must exist, revisions of ranges inside
  a txn) run against the pre-txn state before anything is written, so a failing request changes
  nothing. Where etcd 3.4 would panic mid-txn (an ignore_value put of a key deleted earlier in the
  same txn by a `range_end = "\\0"` delete, which its overlap check misses), this fails up front
  with "key not found" instead.

Responses come back with `header.revision` set; the caller fills the rest of the header. The
events a write produced reach the watch and lease layers through `KVStore.add_listener`: PUT
events carry the new kv (with its lease) and the previous kv, DELETE events the previous kv, which
is what detaching and attaching keys to leases needs.

Deterministic: nothing here reads the clock, the network or member-local state except through
`lease_checker`, whose answer must itself be derived from applied entries.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

from raftkv.apply.errors import (
    DuplicateKeyError,
    EmptyKeyError,
    KeyNotFoundError,
    LeaseNotFoundError,
    LeaseProvidedError,
    TooManyOpsError,
    ValueProvidedError,
)
from raftkv.mvcc import CompactedError, FutureRevisionError, KVStore, WriteTxn, key_in_range
from raftkv.pb.etcdserverpb import rpc_pb2 as pb
from raftkv.pb.mvccpb.kv_pb2 import KeyValue

# etcd's default for --max-txn-ops.
DEFAULT_MAX_TXN_OPS = 128

LeaseChecker = Callable[[int], bool]
Reader = KVStore | WriteTxn

_RR = pb.RangeRequest
_SORT_KEYS: dict[int, Callable[[KeyValue], bytes | int]] = {
    _RR.KEY: lambda kv: kv.key,
    _RR.VERSION: lambda kv: kv.version,
    _RR.CREATE: lambda kv: kv.create_revision,
    _RR.MOD: lambda kv: kv.mod_revision,
    _RR.VALUE: lambda kv: kv.value,
}


@dataclass
class _Branch:
    """The outcome of a txn's compares: the ops that run and, per nested txn among them, its
    own branch, in order."""

    succeeded: bool
    ops: Sequence[pb.RequestOp]
    nested: list[_Branch] = field(default_factory=list)


class KVApplier:
    """etcd's KV requests over one KVStore. Single-threaded, like the store."""

    def __init__(
        self,
        store: KVStore,
        *,
        max_txn_ops: int = DEFAULT_MAX_TXN_OPS,
        lease_checker: LeaseChecker | None = None,
    ) -> None:
        """`lease_checker(lease_id)` says whether a lease exists; None accepts every lease."""
        self._store = store
        self._max_txn_ops = max_txn_ops
        self._lease_checker = lease_checker

    # -- stateless validation ------------------------------------------------------------------

    def validate_range(self, req: pb.RangeRequest) -> None:
        if not req.key:
            raise EmptyKeyError()

    def validate_put(self, req: pb.PutRequest) -> None:
        if not req.key:
            raise EmptyKeyError()
        if req.ignore_value and req.value:
            raise ValueProvidedError()
        if req.ignore_lease and req.lease:
            raise LeaseProvidedError()

    def validate_delete_range(self, req: pb.DeleteRangeRequest) -> None:
        if not req.key:
            raise EmptyKeyError()

    def validate_txn(self, req: pb.TxnRequest) -> None:
        self._check_txn(req, self._max_txn_ops)
        _check_intervals(req.success)
        _check_intervals(req.failure)

    def _check_txn(self, req: pb.TxnRequest, max_ops: int) -> None:
        ops = max(len(req.compare), len(req.success), len(req.failure))
        if ops > max_ops:
            raise TooManyOpsError()
        for compare in req.compare:
            if not compare.key:
                raise EmptyKeyError()
        for op in (*req.success, *req.failure):
            kind = op.WhichOneof("request")
            if kind == "request_range":
                self.validate_range(op.request_range)
            elif kind == "request_put":
                self.validate_put(op.request_put)
            elif kind == "request_delete_range":
                self.validate_delete_range(op.request_delete_range)
            elif kind == "request_txn":
                # etcd hands nested txns the budget left after this level's widest list.
                self._check_txn(op.request_txn, max_ops - ops)
            else:
                raise KeyNotFoundError()  # an empty op: etcd's answer

    # -- requests ------------------------------------------------------------------------------

    def range(self, req: pb.RangeRequest) -> pb.RangeResponse:
        self.validate_range(req)
        out = pb.RangeResponse()
        self._range(self._store, req, out)
        return out

    def put(self, req: pb.PutRequest) -> pb.PutResponse:
        self.validate_put(req)
        # etcd's order for a plain Put: the lease first, then the key ignore_* needs.
        self._check_lease(req.lease)
        if (req.ignore_value or req.ignore_lease) and not self._exists(req.key):
            raise KeyNotFoundError()
        out = pb.PutResponse()
        with self._store.write() as txn:
            self._put(txn, req, out)
        return out

    def delete_range(self, req: pb.DeleteRangeRequest) -> pb.DeleteRangeResponse:
        self.validate_delete_range(req)
        out = pb.DeleteRangeResponse()
        with self._store.write() as txn:
            self._delete_range(txn, req, out)
        return out

    def txn(self, req: pb.TxnRequest) -> pb.TxnResponse:
        self.validate_txn(req)
        branch = self._evaluate(req)
        write = not _is_read_only(req)
        if write:
            self._check_writes(branch)
        self._check_ranges(branch)
        out = pb.TxnResponse()
        if not write:
            self._apply_txn(self._store, branch, out)
            out.header.revision = self._store.current_revision
            return out
        with self._store.write() as txn:
            self._apply_txn(txn, branch, out)
        out.header.revision = txn.revision
        return out

    def compact(self, req: pb.CompactionRequest) -> pb.CompactionResponse:
        """Compact; with `physical`, also delete the compacted rows before answering."""
        self._store.compact(req.revision)
        if req.physical:
            self._store.finish_compaction()
        out = pb.CompactionResponse()
        out.header.revision = self._store.current_revision
        return out

    # -- the operations, shared by top-level requests and txn ops ------------------------------

    def _range(self, reader: Reader, req: pb.RangeRequest, out: pb.RangeResponse) -> None:
        filtered = bool(
            req.min_mod_revision
            or req.max_mod_revision
            or req.min_create_revision
            or req.max_create_revision
        )
        # Sorting and filters need the whole range; otherwise one extra kv tells `more`.
        limit = 0 if req.sort_order != _RR.NONE or filtered else req.limit
        if limit > 0:
            limit += 1
        result = reader.range(
            req.key, req.range_end, revision=req.revision, limit=limit, count_only=req.count_only
        )
        kvs = result.kvs
        if filtered:
            kvs = [kv for kv in kvs if _passes_filters(req, kv)]
        order = req.sort_order
        if order == _RR.NONE and req.sort_target != _RR.KEY:
            order = _RR.ASCEND  # etcd: only KEY order is already the natural one
        sort_key = _SORT_KEYS.get(req.sort_target)
        if sort_key is not None and order in (_RR.ASCEND, _RR.DESCEND):
            # Stable, so ties stay in key order (as Go's sort does for small results).
            kvs.sort(key=sort_key, reverse=order == _RR.DESCEND)
        if 0 < req.limit < len(kvs):
            kvs = kvs[: req.limit]
            out.more = True
        if req.keys_only:
            for kv in kvs:
                kv.ClearField("value")
        out.header.revision = result.revision
        out.count = result.count
        out.kvs.extend(kvs)

    def _put(self, txn: WriteTxn, req: pb.PutRequest, out: pb.PutResponse) -> None:
        value, lease = req.value, req.lease
        if req.ignore_value or req.ignore_lease:
            found = txn.range(req.key).kvs
            if not found:
                raise KeyNotFoundError()
            if req.ignore_value:
                value = found[0].value
            if req.ignore_lease:
                lease = found[0].lease
        prev = txn.put(req.key, value, lease)
        if req.prev_kv and prev is not None:
            out.prev_kv.CopyFrom(prev)
        out.header.revision = txn.revision

    def _delete_range(
        self, txn: WriteTxn, req: pb.DeleteRangeRequest, out: pb.DeleteRangeResponse
    ) -> None:
        deleted = txn.delete_range(req.key, req.range_end)
        out.deleted = len(deleted)
        if req.prev_kv:
            out.prev_kvs.extend(deleted)
        out.header.revision = txn.revision

    # -- txn -----------------------------------------------------------------------------------

    def _evaluate(self, req: pb.TxnRequest) -> _Branch:
        """Decide every branch, nested ones included, against the current (pre-txn) state."""
        succeeded = all(self._compare(c) for c in req.compare)
        branch = _Branch(succeeded, req.success if succeeded else req.failure)
        for op in branch.ops:
            if op.WhichOneof("request") == "request_txn":
                branch.nested.append(self._evaluate(op.request_txn))
        return branch

    def _compare(self, c: pb.Compare) -> bool:
        kvs = self._store.range(c.key, c.range_end).kvs
        if not kvs:
            # A missing key has no value to compare; other targets compare against zeros.
            return c.target != pb.Compare.VALUE and _compare_kv(c, KeyValue())
        return all(_compare_kv(c, kv) for kv in kvs)

    def _check_writes(self, branch: _Branch) -> None:
        deleted: list[tuple[bytes, bytes]] = []
        for op in _ops_in_order(branch):
            kind = op.WhichOneof("request")
            if kind == "request_put":
                put = op.request_put
                if put.ignore_value or put.ignore_lease:
                    gone = any(key_in_range(put.key, k, end) for k, end in deleted)
                    if gone or not self._exists(put.key):
                        raise KeyNotFoundError()
                self._check_lease(put.lease)
            elif kind == "request_delete_range":
                deleted.append((op.request_delete_range.key, op.request_delete_range.range_end))

    def _check_ranges(self, branch: _Branch) -> None:
        for op in _ops_in_order(branch):
            if op.WhichOneof("request") != "request_range":
                continue
            rev = op.request_range.revision
            if rev > self._store.current_revision:
                raise FutureRevisionError()
            if 0 < rev < self._store.compact_revision:
                raise CompactedError()

    def _apply_txn(self, reader: Reader, branch: _Branch, out: pb.TxnResponse) -> None:
        out.succeeded = branch.succeeded
        nested = iter(branch.nested)
        for op in branch.ops:
            kind = op.WhichOneof("request")
            resp = out.responses.add()
            if kind == "request_range":
                self._range(reader, op.request_range, resp.response_range)
            elif kind == "request_txn":
                resp.response_txn.header.SetInParent()  # etcd sends nested headers empty
                self._apply_txn(reader, next(nested), resp.response_txn)
            else:
                assert isinstance(reader, WriteTxn), "a txn with writes runs in a WriteTxn"
                if kind == "request_put":
                    self._put(reader, op.request_put, resp.response_put)
                else:
                    self._delete_range(reader, op.request_delete_range, resp.response_delete_range)

    # -- state helpers -------------------------------------------------------------------------

    def _exists(self, key: bytes) -> bool:
        return self._store.range(key, count_only=True).count > 0

    def _check_lease(self, lease: int) -> None:
        if lease and self._lease_checker is not None and not self._lease_checker(lease):
            raise LeaseNotFoundError()


def _passes_filters(req: pb.RangeRequest, kv: KeyValue) -> bool:
    return not (
        (req.max_mod_revision and kv.mod_revision > req.max_mod_revision)
        or (req.min_mod_revision and kv.mod_revision < req.min_mod_revision)
        or (req.max_create_revision and kv.create_revision > req.max_create_revision)
        or (req.min_create_revision and kv.create_revision < req.min_create_revision)
    )


def _compare_kv(c: pb.Compare, kv: KeyValue) -> bool:
    # Reading a oneof member that is not the one set yields its zero value, as in etcd.
    target = c.target
    ours: bytes | int
    theirs: bytes | int
    if target == pb.Compare.VALUE:
        ours, theirs = kv.value, c.value
    elif target == pb.Compare.CREATE:
        ours, theirs = kv.create_revision, c.create_revision
    elif target == pb.Compare.MOD:
        ours, theirs = kv.mod_revision, c.mod_revision
    elif target == pb.Compare.VERSION:
        ours, theirs = kv.version, c.version
    elif target == pb.Compare.LEASE:
        ours, theirs = kv.lease, c.lease
    else:
        ours = theirs = 0
    result = c.result
    if result == pb.Compare.EQUAL:
        return ours == theirs
    if result == pb.Compare.NOT_EQUAL:
        return ours != theirs
    if result == pb.Compare.GREATER:
        return ours > theirs  # type: ignore[operator]
    if result == pb.Compare.LESS:
        return ours < theirs  # type: ignore[operator]
    return True


def _ops_in_order(branch: _Branch) -> Iterator[pb.RequestOp]:
    """The non-txn ops a txn will run, depth first, in execution order."""
    nested = iter(branch.nested)
    for op in branch.ops:
        if op.WhichOneof("request") == "request_txn":
            yield from _ops_in_order(next(nested))
        else:
            yield op


def _is_read_only(req: pb.TxnRequest) -> bool:
    for op in (*req.success, *req.failure):
        kind = op.WhichOneof("request")
        if kind == "request_txn":
            if not _is_read_only(op.request_txn):
                return False
        elif kind != "request_range":
            return False
    return True


_Interval = tuple[bytes, bytes | None]  # (key, range_end) of a delete; None: the key alone


def _check_intervals(ops: Sequence[pb.RequestOp]) -> tuple[set[bytes], list[_Interval]]:
    """etcd's overlap rule: no key may be put twice, or put and deleted, on one txn path.

    Returns the puts and delete intervals of `ops`, nested txns included, for the level above.
    A `then` and an `else` branch may put the same key, since only one of them runs. Delete
    ranges are byte intervals [key, range_end) exactly as etcd builds them, so (like etcd) a "\\0"
    range_end makes an empty interval here; `KVApplier._check_writes` covers what that lets by.
    """
    dels: list[_Interval] = []
    for op in ops:
        if op.WhichOneof("request") == "request_delete_range":
            d = op.request_delete_range
            dels.append((d.key, d.range_end or None))
    puts: set[bytes] = set()
    for op in ops:
        if op.WhichOneof("request") != "request_txn":
            continue
        then_puts, then_dels = _check_intervals(op.request_txn.success)
        else_puts, else_dels = _check_intervals(op.request_txn.failure)
        for k in then_puts:
            if k in puts or _deleted(dels, k):
                raise DuplicateKeyError()
            puts.add(k)
        for k in else_puts:
            if (k in puts and k not in then_puts) or _deleted(dels, k):
                raise DuplicateKeyError()
            puts.add(k)
        dels.extend(then_dels)
        dels.extend(else_dels)
    for op in ops:
        if op.WhichOneof("request") != "request_put":
            continue
        k = op.request_put.key
        if k in puts or _deleted(dels, k):
            raise DuplicateKeyError()
        puts.add(k)
    return puts, dels


def _deleted(dels: list[_Interval], key: bytes) -> bool:
    return any(key == start if end is None else start <= key < end for start, end in dels)
