"""The serializable-range cache: what a write through the proxy invalidates, expiry, bounds."""

from __future__ import annotations

from raftkv.pb.etcdserverpb import rpc_pb2 as pb
from raftkv.proxy.cache import RangeCache, overlaps, written_ranges


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def rng(key: bytes, end: bytes = b"") -> pb.RangeRequest:
    return pb.RangeRequest(key=key, range_end=end, serializable=True)


def answer(revision: int) -> pb.RangeResponse:
    return pb.RangeResponse(header=pb.ResponseHeader(revision=revision))


def test_ranges_overlap_as_etcd_spells_them() -> None:
    assert overlaps((b"a", b""), (b"a", b""))
    assert not overlaps((b"a", b""), (b"b", b""))
    assert overlaps((b"a", b"c"), (b"b", b""))  # [a, c) holds b
    assert not overlaps((b"a", b"c"), (b"c", b""))  # the end is exclusive
    assert overlaps((b"k", b"\0"), (b"z", b""))  # from k on
    assert not overlaps((b"k", b"\0"), (b"a", b"k"))
    assert overlaps((b"a", b"\0"), (b"b", b"\0"))


def test_a_write_drops_the_ranges_it_touches_and_only_those() -> None:
    hits: list[str] = []
    cache = RangeCache(clock=Clock(), on_hit=lambda: hits.append("hit"))
    cache.put("", rng(b"a"), answer(1))
    cache.put("", rng(b"p/", b"p0"), answer(1))
    cache.put("", rng(b"x"), answer(1))
    cache.invalidate([(b"p/q", b"")])
    assert cache.get("", rng(b"p/", b"p0")) is None
    assert cache.get("", rng(b"a")) == answer(1)
    assert cache.get("", rng(b"x")) == answer(1)
    assert hits == ["hit", "hit"]
    cache.invalidate([(b"a", b"\0")])  # delete from "a" on
    assert len(cache) == 0


def test_entries_expire_and_users_do_not_share_answers() -> None:
    clock = Clock()
    cache = RangeCache(ttl=1.0, clock=clock)
    cache.put("token-of-alice", rng(b"k"), answer(7))
    assert cache.get("token-of-bob", rng(b"k")) is None
    assert cache.get("token-of-alice", rng(b"k")) == answer(7)
    # Another option is another request.
    limited = pb.RangeRequest(key=b"k", serializable=True, limit=1)
    assert cache.get("token-of-alice", limited) is None
    clock.now += 1.0
    assert cache.get("token-of-alice", rng(b"k")) is None


def test_the_least_recently_used_entry_goes_first() -> None:
    cache = RangeCache(max_entries=2, clock=Clock())
    cache.put("", rng(b"a"), answer(1))
    cache.put("", rng(b"b"), answer(1))
    cache.get("", rng(b"a"))
    cache.put("", rng(b"c"), answer(1))
    assert cache.get("", rng(b"b")) is None
    assert cache.get("", rng(b"a")) is not None


def test_a_txn_writes_what_either_branch_and_nested_txns_write() -> None:
    nested = pb.TxnRequest(
        success=[pb.RequestOp(request_delete_range=pb.DeleteRangeRequest(key=b"d", range_end=b"f"))]
    )
    txn = pb.TxnRequest(
        success=[
            pb.RequestOp(request_put=pb.PutRequest(key=b"a")),
            pb.RequestOp(request_range=pb.RangeRequest(key=b"r")),
        ],
        failure=[pb.RequestOp(request_txn=nested)],
    )
    assert written_ranges(txn) == [(b"a", b""), (b"d", b"f")]


def test_a_ttl_of_zero_caches_nothing() -> None:
    cache = RangeCache(ttl=0, clock=Clock())
    cache.put("", rng(b"a"), answer(1))
    assert len(cache) == 0 and cache.get("", rng(b"a")) is None
