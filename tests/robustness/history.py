"""What the robustness workload records, in the shape the checkers read.

A history is a list of `Call`s: the operation a client invoked, when it was invoked and when it
returned (monotonic seconds), and what it returned. An outcome the client could not learn (a
timeout, a torn connection) is recorded as `result=None` and `ret=math.inf`: the operation may
have taken effect at any time after its invocation, or never. Reads that failed are not recorded
at all, since they had no effect and returned nothing to check.

Every written value is unique in a run (client id + sequence number), which is what lets a write
of unknown outcome be resolved later from the watch streams (`resolve_unknown_writes`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from enum import Enum


class Kind(Enum):
    GET = "get"
    PUT = "put"
    DELETE = "delete"
    # Txn: if value(key) == expect then put(key, value) else get(key).
    CAS_VALUE = "cas-value"
    # Txn: if mod_revision(key) == expect_rev then put(key, value) else get(key); 0 = absent.
    CAS_REV = "cas-rev"


WRITES = frozenset({Kind.PUT, Kind.DELETE, Kind.CAS_VALUE, Kind.CAS_REV})


@dataclass(frozen=True)
class Op:
    kind: Kind
    key: str
    value: str | None = None
    expect: str | None = None
    expect_rev: int = 0

    def __str__(self) -> str:
        if self.kind is Kind.GET or self.kind is Kind.DELETE:
            return f"{self.kind.value}({self.key})"
        if self.kind is Kind.PUT:
            return f"put({self.key}={self.value})"
        if self.kind is Kind.CAS_VALUE:
            return f"cas({self.key}: {self.expect}->{self.value})"
        return f"cas({self.key}@{self.expect_rev}->{self.value})"


@dataclass(frozen=True)
class Result:
    """What came back. `revision` is the response header's revision.

    get: `value` (None = absent) and `mod_rev` of the key. delete: `deleted` count. A CAS:
    `succeeded`; when it failed, `value`/`mod_rev` are what its else-branch read.
    """

    revision: int
    value: str | None = None
    mod_rev: int = 0
    deleted: int = 0
    succeeded: bool = True

    def __str__(self) -> str:
        parts = [f"rev={self.revision}"]
        if self.value is not None or self.mod_rev:
            parts.append(f"value={self.value} mod={self.mod_rev}")
        if self.deleted:
            parts.append(f"deleted={self.deleted}")
        if not self.succeeded:
            parts.append("failed")
        return " ".join(parts)


@dataclass(frozen=True)
class Call:
    client: int
    op: Op
    call: float
    ret: float
    result: Result | None

    @property
    def unknown(self) -> bool:
        return self.result is None

    def changed_state(self) -> bool:
        """Whether a known outcome created a new revision."""
        r = self.result
        if r is None or self.op.kind is Kind.GET:
            return False
        if self.op.kind is Kind.DELETE:
            return r.deleted > 0
        return r.succeeded

    def __str__(self) -> str:
        ret = "?" if math.isinf(self.ret) else f"{self.ret:.4f}"
        outcome = "unknown" if self.result is None else str(self.result)
        return f"[c{self.client} {self.call:.4f}..{ret}] {self.op} -> {outcome}"


def unknown(client: int, op: Op, call: float) -> Call:
    return Call(client, op, call, math.inf, None)


def resolve_unknown_writes(history: Iterable[Call], put_revisions: Mapping[str, int]) -> list[Call]:
    """Settle writes of unknown outcome with the complete log of puts (value -> revision).

    A put or CAS whose unique value is in the log happened, at that revision; one whose value
    is not did not happen (a CAS that did not write is a read nobody saw), so it is dropped.
    Unknown deletes stay unknown. The caller must pass a log that is complete (the watch
    checks verify that); a missing value would then be a lost write, which the
    linearizability check reports as a read of a value nobody wrote.
    """
    resolved = []
    for c in history:
        if c.result is None and c.op.kind in (Kind.PUT, Kind.CAS_VALUE, Kind.CAS_REV):
            assert c.op.value is not None
            revision = put_revisions.get(c.op.value)
            if revision is None:
                continue
            c = replace(c, result=Result(revision=revision, succeeded=True))
        resolved.append(c)
    return resolved
