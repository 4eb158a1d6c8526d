"""Key-range grants merged per user, checked with etcd 3.4's rules.

The expected answers in the tables below were observed on etcd 3.4.23 (a user holding exactly
the one grant, reading with a serializable Range).
"""

from __future__ import annotations

import pytest
from raftkv.auth.ranges import READ, READWRITE, WRITE, RangePermissions
from raftkv.pb.authpb.auth_pb2 import Permission


def perms(*grants: tuple[int, bytes, bytes]) -> RangePermissions:
    return RangePermissions.merge(
        Permission(permType=t, key=key, range_end=end) for t, key, end in grants
    )


REQUESTS = [
    (b"a", b""),
    (b"b", b""),
    (b"\0", b"\0"),
    (b"a", b"\0"),
    (b"a", b"c"),
    (b"a", b"a\0"),
    (b"b", b"a"),  # inverted: reads nothing
    (b"a", b"b"),
    (b"0", b""),
]

# grant (key, range_end) -> which of REQUESTS etcd 3.4.23 allowed
OBSERVED = {
    # --prefix "": etcd's empty key sorts after every key, so the grant covers nothing
    (b"", b"\0"): [False] * 9,
    (b"", b""): [False] * 9,
    # --from-key a
    (b"a", b"\0"): [True, True, False, True, True, True, True, True, False],
    # [a, c)
    (b"a", b"c"): [True, True, False, False, True, True, True, True, False],
    # the single key a
    (b"a", b""): [True, False, False, False, False, True, False, False, False],
}


@pytest.mark.parametrize("grant", list(OBSERVED))
def test_single_grants_answer_as_etcd(grant: tuple[bytes, bytes]) -> None:
    merged = perms((READ, *grant))
    answers = [merged.allows(READ, key, end) for key, end in REQUESTS]
    assert answers == OBSERVED[grant]


def test_prefix_grant_covers_its_prefix_only() -> None:
    merged = perms((READ, b"/app/", b"/app0"))
    assert merged.allows(READ, b"/app/x")
    assert merged.allows(READ, b"/app/", b"/app0")
    assert merged.allows(READ, b"/app/a", b"/app/b")
    assert not merged.allows(READ, b"/app")
    assert not merged.allows(READ, b"/app/", b"/app1")
    assert not merged.allows(READ, b"/ap", b"/app0")


def test_adjacent_grants_from_several_roles_add_up() -> None:
    merged = perms((READ, b"a", b"c"), (READWRITE, b"c", b"e"))
    assert merged.allows(READ, b"b", b"d")
    assert merged.allows(READ, b"a", b"e")
    assert not merged.allows(READ, b"a", b"f")
    assert not merged.allows(WRITE, b"b", b"d")  # only [c, e) is writable
    assert merged.allows(WRITE, b"c", b"e")


def test_a_gap_between_grants_denies_the_range() -> None:
    merged = perms((READ, b"a", b"c"), (READ, b"d", b"f"))
    assert merged.allows(READ, b"e")
    assert not merged.allows(READ, b"c")
    assert not merged.allows(READ, b"b", b"e")


def test_single_key_grants_cover_exactly_their_key() -> None:
    merged = perms((READ, b"k", b""), (READ, b"k\0", b""))
    assert merged.allows(READ, b"k", b"k\0")
    assert merged.allows(READ, b"k", b"k\0\0")  # the two adjacent single keys
    assert not merged.allows(READ, b"k", b"l")


def test_from_key_grant_reaches_the_end_of_the_keyspace() -> None:
    merged = perms((WRITE, b"m", b"\0"))
    assert merged.allows(WRITE, b"zzzz")
    assert merged.allows(WRITE, b"m", b"\0")
    assert not merged.allows(WRITE, b"l", b"\0")
    assert not merged.allows(READ, b"m")


def test_readwrite_grants_both_and_type_is_respected() -> None:
    merged = perms((READ, b"r", b""), (WRITE, b"w", b""), (READWRITE, b"rw", b""))
    assert merged.allows(READ, b"r") and not merged.allows(WRITE, b"r")
    assert merged.allows(WRITE, b"w") and not merged.allows(READ, b"w")
    assert merged.allows(READ, b"rw") and merged.allows(WRITE, b"rw")


def test_no_grants_allow_nothing() -> None:
    merged = perms()
    assert not merged.allows(READ, b"a")
    assert not merged.allows(WRITE, b"a", b"\0")
