"""KVApplier Txn: compares, branches, nested txns, one revision per txn, and etcd's validation
(checked against etcd 3.4 where the rule is subtle, as noted)."""

from __future__ import annotations

import pytest
from raftkv.apply.errors import (
    DuplicateKeyError,
    EmptyKeyError,
    KeyNotFoundError,
    LeaseNotFoundError,
    TooManyOpsError,
)
from raftkv.apply.kv import KVApplier
from raftkv.mvcc import CompactedError, FutureRevisionError, KVStore
from raftkv.pb.etcdserverpb import rpc_pb2 as pb
from raftkv.pb.mvccpb.kv_pb2 import Event

C = pb.Compare


def op_put(key: bytes, value: bytes = b"v", **kw: object) -> pb.RequestOp:
    return pb.RequestOp(request_put=pb.PutRequest(key=key, value=value, **kw))


def op_get(key: bytes, range_end: bytes = b"", **kw: object) -> pb.RequestOp:
    return pb.RequestOp(request_range=pb.RangeRequest(key=key, range_end=range_end, **kw))


def op_del(key: bytes, range_end: bytes = b"", **kw: object) -> pb.RequestOp:
    return pb.RequestOp(
        request_delete_range=pb.DeleteRangeRequest(key=key, range_end=range_end, **kw)
    )


def op_txn(
    compare: list[pb.Compare] | None = None,
    success: list[pb.RequestOp] | None = None,
    failure: list[pb.RequestOp] | None = None,
) -> pb.RequestOp:
    return pb.RequestOp(request_txn=txn_req(compare, success, failure))


def txn_req(
    compare: list[pb.Compare] | None = None,
    success: list[pb.RequestOp] | None = None,
    failure: list[pb.RequestOp] | None = None,
) -> pb.TxnRequest:
    return pb.TxnRequest(compare=compare or [], success=success or [], failure=failure or [])


def cmp(key: bytes, target: int, result: int, range_end: bytes = b"", **operand: object) -> C:
    return C(key=key, target=target, result=result, range_end=range_end, **operand)


def value_of(kv: KVApplier, key: bytes) -> bytes | None:
    got = kv.range(pb.RangeRequest(key=key)).kvs
    return got[0].value if got else None


@pytest.fixture
def seeded(kv: KVApplier) -> KVApplier:
    """a=1 (rev 2, lease 7), b=2 (rev 3), then a=11 (rev 4): a has version 2."""
    kv.put(pb.PutRequest(key=b"a", value=b"1", lease=7))
    kv.put(pb.PutRequest(key=b"b", value=b"2"))
    kv.put(pb.PutRequest(key=b"a", value=b"11", lease=7))
    return kv


@pytest.mark.parametrize(
    ("compare", "holds"),
    [
        (cmp(b"a", C.VALUE, C.EQUAL, value=b"11"), True),
        (cmp(b"a", C.VALUE, C.GREATER, value=b"1"), True),
        (cmp(b"a", C.VALUE, C.LESS, value=b"2"), True),
        (cmp(b"a", C.VALUE, C.NOT_EQUAL, value=b"11"), False),
        (cmp(b"a", C.VERSION, C.EQUAL, version=2), True),
        (cmp(b"a", C.CREATE, C.EQUAL, create_revision=2), True),
        (cmp(b"a", C.MOD, C.GREATER, mod_revision=3), True),
        (cmp(b"a", C.MOD, C.LESS, mod_revision=4), False),
        (cmp(b"a", C.LEASE, C.EQUAL, lease=7), True),
        (cmp(b"b", C.LEASE, C.EQUAL, lease=0), True),
        # A missing key compares as zeros, except that a VALUE compare always fails.
        (cmp(b"zz", C.VERSION, C.EQUAL, version=0), True),
        (cmp(b"zz", C.CREATE, C.EQUAL, create_revision=0), True),
        (cmp(b"zz", C.VALUE, C.EQUAL, value=b""), False),
        (cmp(b"zz", C.VALUE, C.NOT_EQUAL, value=b"x"), False),
        # With range_end, every key in the range must satisfy the compare.
        (cmp(b"a", C.MOD, C.GREATER, range_end=b"c", mod_revision=2), True),
        (cmp(b"a", C.MOD, C.GREATER, range_end=b"c", mod_revision=3), False),
        (cmp(b"a", C.VERSION, C.GREATER, range_end=b"\0", version=0), True),
        # An operand of another kind than the target reads as zero, as in etcd.
        (cmp(b"a", C.MOD, C.GREATER, value=b"999"), True),
    ],
)
def test_compares(seeded: KVApplier, compare: pb.Compare, holds: bool) -> None:
    resp = seeded.txn(txn_req([compare], [op_get(b"a")], [op_get(b"b")]))
    assert resp.succeeded is holds
    assert resp.responses[0].response_range.kvs[0].key == (b"a" if holds else b"b")


def test_all_compares_must_hold(seeded: KVApplier) -> None:
    compares = [cmp(b"a", C.VERSION, C.EQUAL, version=2), cmp(b"b", C.VERSION, C.EQUAL, version=9)]
    assert not seeded.txn(txn_req(compares, [op_put(b"x")], [])).succeeded
    assert value_of(seeded, b"x") is None


def test_every_op_runs_at_one_revision_and_sees_earlier_ops(seeded: KVApplier) -> None:
    resp = seeded.txn(
        txn_req(
            [],
            [
                op_put(b"c", b"3", prev_kv=True),
                op_put(b"a", b"12", prev_kv=True),
                op_get(b"a", b"d"),
                op_del(b"b", prev_kv=True),
                op_get(b"a", b"d", count_only=True),
            ],
        )
    )
    assert resp.succeeded and resp.header.revision == 5
    put_c, put_a, get_all, del_b, count = (r for r in resp.responses)
    assert put_c.response_put.header.revision == 5
    assert not put_c.response_put.HasField("prev_kv")
    assert put_a.response_put.prev_kv.value == b"11"
    got = get_all.response_range
    assert [(i.key, i.value, i.mod_revision) for i in got.kvs] == [
        (b"a", b"12", 5),
        (b"b", b"2", 3),
        (b"c", b"3", 5),
    ]
    assert got.header.revision == 5
    assert del_b.response_delete_range.deleted == 1
    assert del_b.response_delete_range.prev_kvs[0].value == b"2"
    assert count.response_range.count == 2


def test_read_only_txns_and_read_only_branches_keep_the_revision(seeded: KVApplier) -> None:
    resp = seeded.txn(txn_req([], [op_get(b"a")]))
    assert resp.header.revision == 4
    assert resp.responses[0].response_range.header.revision == 4
    # A txn that could write but whose branch only reads creates no revision (etcd 3.4).
    resp = seeded.txn(
        txn_req([cmp(b"a", C.VERSION, C.GREATER, version=5)], [op_put(b"q")], [op_get(b"a")])
    )
    assert (resp.succeeded, resp.header.revision) == (False, 4)
    assert seeded.txn(txn_req([], [op_del(b"nothing")])).header.revision == 4


def test_nested_txns_compare_against_the_state_before_the_txn(seeded: KVApplier) -> None:
    # Observed with etcd 3.4: the nested compare does not see the outer put of the same txn.
    resp = seeded.txn(
        txn_req(
            [],
            [
                op_put(b"n", b"1"),
                op_txn([cmp(b"n", C.VALUE, C.EQUAL, value=b"1")], [op_put(b"ny")], [op_put(b"nz")]),
            ],
        )
    )
    nested = resp.responses[1].response_txn
    assert not nested.succeeded
    assert nested.HasField("header") and nested.header.revision == 0  # present but empty
    assert nested.responses[0].response_put.header.revision == 5
    assert (value_of(seeded, b"ny"), value_of(seeded, b"nz")) == (None, b"v")
    assert resp.header.revision == 5


def test_deeply_nested_branches_pick_their_own_ops(seeded: KVApplier) -> None:
    inner = op_txn([cmp(b"b", C.VALUE, C.EQUAL, value=b"2")], [op_put(b"deep")], [op_put(b"no")])
    outer = op_txn([cmp(b"a", C.VALUE, C.EQUAL, value=b"nope")], [op_put(b"no2")], [inner])
    resp = seeded.txn(txn_req([], [outer, op_get(b"deep")]))
    middle = resp.responses[0].response_txn
    assert not middle.succeeded
    assert middle.responses[0].response_txn.succeeded
    assert resp.responses[1].response_range.kvs[0].key == b"deep"
    assert value_of(seeded, b"no") is None and value_of(seeded, b"no2") is None


def test_txn_events_reach_listeners_once_with_previous_kvs(
    seeded: KVApplier, store: KVStore
) -> None:
    seen: list[tuple[list[Event], int]] = []
    store.add_listener(lambda events, rev: seen.append((events, rev)))
    seeded.txn(txn_req([], [op_put(b"a", b"new", lease=8), op_del(b"b")]))
    [(events, rev)] = seen
    assert rev == 5
    assert [(e.type, e.kv.key, e.kv.lease, e.prev_kv.lease) for e in events] == [
        (Event.PUT, b"a", 8, 7),
        (Event.DELETE, b"b", 0, 0),
    ]


# -- validation ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "req",
    [
        txn_req([], [op_put(b"k"), op_put(b"k")]),
        txn_req([], [op_put(b"k"), op_del(b"k")]),
        txn_req([], [op_del(b"a", b"z"), op_put(b"k")]),
        txn_req([], [op_put(b"k"), op_txn([], [op_put(b"k")])]),
        txn_req([], [op_del(b"k"), op_txn([], [], [op_put(b"k")])]),
        txn_req([], [op_txn([], [op_del(b"j", b"l")]), op_put(b"k")]),
        txn_req([], [op_txn([], [op_put(b"k")]), op_txn([], [op_put(b"k")])]),
        txn_req([], [], [op_put(b"k"), op_put(b"k")]),
    ],
)
def test_duplicate_keys_are_rejected(kv: KVApplier, req: pb.TxnRequest) -> None:
    message = r"^etcdserver: duplicate key given in txn request$"
    with pytest.raises(DuplicateKeyError, match=message):
        kv.validate_txn(req)
    with pytest.raises(DuplicateKeyError):
        kv.txn(req)


@pytest.mark.parametrize(
    "req",
    [
        txn_req([], [op_put(b"k")], [op_put(b"k")]),  # only one branch runs
        txn_req([], [op_txn([], [op_put(b"k")], [op_put(b"k")])]),
        txn_req([], [op_del(b"k"), op_del(b"a", b"z")]),  # deletes may overlap
        txn_req([], [op_get(b"k"), op_put(b"k")]),
        # etcd 3.4 accepts this: its overlap check sees an empty interval for range_end "\0".
        txn_req([], [op_del(b"a", b"\0"), op_put(b"k")]),
    ],
)
def test_non_overlapping_txns_are_accepted(kv: KVApplier, req: pb.TxnRequest) -> None:
    kv.validate_txn(req)
    kv.txn(req)


def test_delete_to_end_then_put_applies_in_order(seeded: KVApplier) -> None:
    resp = seeded.txn(txn_req([], [op_del(b"a", b"\0"), op_put(b"b", b"again")]))
    assert resp.responses[0].response_delete_range.deleted == 2
    assert value_of(seeded, b"a") is None
    kv = seeded.range(pb.RangeRequest(key=b"b")).kvs[0]
    assert (kv.value, kv.version, kv.create_revision) == (b"again", 1, 5)


def test_ignore_value_of_a_key_deleted_earlier_in_the_txn_fails_cleanly(
    seeded: KVApplier, store: KVStore
) -> None:
    # etcd 3.4 panics here; raftkv refuses the whole txn before writing anything.
    req = txn_req([], [op_del(b"a", b"\0"), op_put(b"b", b"", ignore_value=True)])
    with pytest.raises(KeyNotFoundError):
        seeded.txn(req)
    assert store.current_revision == 4
    assert value_of(seeded, b"a") == b"11"


def test_too_many_ops(kv: KVApplier) -> None:
    nine = [op_get(b"k%d" % i) for i in range(9)]
    with pytest.raises(TooManyOpsError, match=r"^etcdserver: too many operations in txn request$"):
        kv.validate_txn(txn_req([], nine))
    with pytest.raises(TooManyOpsError):
        kv.validate_txn(txn_req([cmp(b"k%d" % i, C.VERSION, C.EQUAL) for i in range(9)]))
    kv.validate_txn(txn_req([], nine[:8], nine[:8]))  # the limit is per list, not the sum
    # A nested txn gets the budget left after its parent's widest list (8 - 5 = 3).
    with pytest.raises(TooManyOpsError):
        kv.validate_txn(txn_req([], [*nine[:4], op_txn([], nine[:4])]))
    kv.validate_txn(txn_req([], [*nine[:4], op_txn([], nine[:3])]))


def test_empty_keys_and_empty_ops(kv: KVApplier) -> None:
    with pytest.raises(EmptyKeyError):
        kv.validate_txn(txn_req([cmp(b"", C.VERSION, C.EQUAL)]))
    with pytest.raises(EmptyKeyError):
        kv.validate_txn(txn_req([], [op_get(b"")]))
    with pytest.raises(EmptyKeyError):
        kv.validate_txn(txn_req([], [], [op_txn([], [op_del(b"")])]))
    # Observed with etcd 3.4: an op with no request is "key not found".
    with pytest.raises(KeyNotFoundError, match=r"^etcdserver: key not found$"):
        kv.validate_txn(txn_req([], [pb.RequestOp()]))


def test_state_checks_on_the_taken_path_fail_before_any_write(
    seeded: KVApplier, store: KVStore
) -> None:
    with pytest.raises(LeaseNotFoundError):
        seeded.txn(txn_req([], [op_put(b"x"), op_put(b"y", lease=99)]))
    with pytest.raises(KeyNotFoundError):
        seeded.txn(txn_req([], [op_put(b"x"), op_put(b"missing", b"", ignore_lease=True)]))
    with pytest.raises(FutureRevisionError):
        seeded.txn(txn_req([], [op_put(b"x"), op_get(b"a", revision=5)]))
    # The lease check runs before the range checks, as in etcd.
    with pytest.raises(LeaseNotFoundError):
        seeded.txn(txn_req([], [op_get(b"a", revision=9), op_put(b"y", lease=99)]))
    assert store.current_revision == 4
    # Only the branch that runs is checked.
    resp = seeded.txn(
        txn_req(
            [cmp(b"a", C.VERSION, C.EQUAL, version=2)], [op_put(b"x")], [op_put(b"y", lease=99)]
        )
    )
    assert resp.succeeded
    store.compact(3)
    with pytest.raises(CompactedError):
        seeded.txn(txn_req([], [op_get(b"a", revision=2)]))
    resp = seeded.txn(txn_req([], [op_get(b"a", revision=3)]))
    assert resp.responses[0].response_range.kvs[0].value == b"1"
