"""Key-range permissions as etcd checks them: a user's grants merged into read and write sets.

A grant is `(type, key, range_end)`: an empty `range_end` is the single key, `"\\0"` every key
from `key` on, anything else the range `[key, range_end)`. To check a request etcd puts every
grant of every role of the user into one interval set for reading and one for writing, and asks:

- a single-key request (no `range_end`): does some interval contain the key?
- a range request `[key, range_end)` (`"\\0"`: to the end of the keyspace): do the intervals
  that overlap it cover it without a gap? Several grants may add up: `[a, c)` and `[c, e)`
  together cover `[b, d)`.

Bounds compare as etcd's "affine" byte strings, in which the empty string is greater than every
other key: it stands for the end of the keyspace. That is how from-key grants and requests reach
the end, and it also means a grant whose key is empty covers nothing, as in etcd 3.4 (`role
grant-permission r read "" --prefix` grants nothing there either).

Which intervals "overlap" follows etcd's interval comparison, which also decides the odd case of
an inverted request range (`range_end` < `key`, which reads nothing): it is covered when the
grants overlapping its start reach past its end.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from raftkv.pb.authpb import auth_pb2

READ = auth_pb2.Permission.READ
WRITE = auth_pb2.Permission.WRITE
READWRITE = auth_pb2.Permission.READWRITE

FROM_KEY = b"\0"

# An interval bound in etcd's affine order: (0, key) for a key, (1, b"") for the end of the
# keyspace, so tuple comparison puts the end after every key.
Bound = tuple[int, bytes]
END: Bound = (1, b"")


def bound(key: bytes) -> Bound:
    return END if not key else (0, key)


@dataclass(frozen=True, order=True)
class Interval:
    begin: Bound
    end: Bound


def grant_interval(key: bytes, range_end: bytes) -> Interval:
    """The keys a grant covers."""
    if not range_end:
        return Interval(bound(key), bound(key + b"\0"))
    return Interval(bound(key), END if range_end == FROM_KEY else bound(range_end))


def _overlaps(query: Interval, iv: Interval) -> bool:
    """etcd's interval comparison giving 0: neither wholly left nor wholly right of `iv`."""
    left = query.begin < iv.begin and query.end <= iv.begin
    right = query.begin >= iv.end
    return not left and not right


@dataclass
class IntervalSet:
    """Intervals kept sorted by start; answers etcd's point and cover questions."""

    intervals: list[Interval] = field(default_factory=list)

    def add(self, interval: Interval) -> None:
        self.intervals.append(interval)
        self.intervals.sort()

    def contains_key(self, key: bytes) -> bool:
        point = bound(key)
        return any(iv.begin <= point < iv.end for iv in self.intervals)

    def covers(self, key: bytes, range_end: bytes) -> bool:
        """Whether `[key, range_end)` (`range_end` "\\0": to the end) is covered without gap."""
        query = Interval(bound(key), END if range_end == FROM_KEY else bound(range_end))
        low: Bound | None = None
        high: Bound = END
        for iv in self.intervals:
            if not _overlaps(query, iv):
                continue
            if low is None:
                low, high = iv.begin, iv.end
                continue
            if high < iv.begin:
                return False  # a gap between overlapping grants
            high = max(high, iv.end)
        return low is not None and high >= query.end and low <= query.begin


@dataclass
class RangePermissions:
    """One user's merged grants."""

    read: IntervalSet = field(default_factory=IntervalSet)
    write: IntervalSet = field(default_factory=IntervalSet)

    @classmethod
    def merge(cls, grants: Iterable[auth_pb2.Permission]) -> RangePermissions:
        merged = cls()
        for grant in grants:
            interval = grant_interval(grant.key, grant.range_end)
            if grant.permType in (READ, READWRITE):
                merged.read.add(interval)
            if grant.permType in (WRITE, READWRITE):
                merged.write.add(interval)
        return merged

    def allows(self, perm_type: int, key: bytes, range_end: bytes = b"") -> bool:
        """Whether the grants allow `perm_type` (READ or WRITE) on the key or the range."""
        intervals = self.read if perm_type == READ else self.write
        if not range_end:
            return intervals.contains_key(key)
        return intervals.covers(key, range_end)
