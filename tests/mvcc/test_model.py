"""KVStore against a tiny reference model (a dict of key states per revision) over random
sequences of puts, deletes, multi-op txns, ranges at any revision, compactions and restarts."""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
from raftkv.mvcc import CompactedError, FutureRevisionError, KVStore, key_in_range
from raftkv.storage.backend import Backend

KEYS = [b"a", b"b", b"ba", b"c", b"d"]
key_st = st.sampled_from(KEYS)
end_st = st.sampled_from([b"", b"\0", b"b", b"c", b"e", b"a"])


@dataclass(frozen=True)
class ModelKV:
    value: bytes
    create: int
    mod: int
    version: int
    lease: int


class StoreVersusModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="mvcc-model-"))
        self.backend = Backend(self.dir / "db")
        self.store = KVStore(self.backend)
        self.rev = 1
        self.states: dict[int, dict[bytes, ModelKV]] = {1: {}}
        self.compacted = -1

    def teardown(self) -> None:
        self.backend.close()
        shutil.rmtree(self.dir)

    def _write(self, ops: list[tuple[str, bytes, bytes, int]]) -> None:
        state = dict(self.states[self.rev])
        main = self.rev + 1
        changed = False
        with self.store.write() as txn:
            for kind, key, arg, lease in ops:
                if kind == "put":
                    prev = state.get(key)
                    got = txn.put(key, arg, lease)
                    assert (got.value if got else None) == (prev.value if prev else None)
                    state[key] = ModelKV(
                        arg,
                        prev.create if prev else main,
                        main,
                        prev.version + 1 if prev else 1,
                        lease,
                    )
                    changed = True
                else:
                    doomed = sorted(k for k in state if key_in_range(k, key, arg))
                    got = txn.delete_range(key, arg)
                    assert [kv.key for kv in got] == doomed
                    for k in doomed:
                        del state[k]
                    changed = changed or bool(doomed)
        if changed:
            self.rev = main
            self.states[main] = state
        assert self.store.current_revision == self.rev

    @rule(key=key_st, value=st.binary(max_size=3), lease=st.integers(0, 2))
    def put(self, key: bytes, value: bytes, lease: int) -> None:
        self._write([("put", key, value, lease)])

    @rule(key=key_st, end=end_st)
    def delete(self, key: bytes, end: bytes) -> None:
        self._write([("del", key, end, 0)])

    @rule(
        ops=st.lists(
            st.tuples(st.sampled_from(["put", "del"]), key_st, st.binary(max_size=2), st.just(0)),
            max_size=4,
        )
    )
    def txn(self, ops: list[tuple[str, bytes, bytes, int]]) -> None:
        self._write([(k, key, arg if k == "put" else b"", lease) for k, key, arg, lease in ops])

    @rule(key=key_st, end=end_st, back=st.integers(0, 12), limit=st.integers(0, 3))
    def range(self, key: bytes, end: bytes, back: int, limit: int) -> None:
        rev = self.rev - back
        if rev < 1:
            return
        try:
            result = self.store.range(key, end, revision=rev, limit=limit)
        except CompactedError:
            assert rev < self.compacted
            return
        assert rev >= self.compacted
        expected = sorted(
            (k, kv)
            for k, kv in self.states[self._state_at(rev)].items()
            if key_in_range(k, key, end)
        )
        assert result.count == len(expected)
        assert result.revision == self.rev
        if limit:
            expected = expected[:limit]
        got = [
            (kv.key, ModelKV(kv.value, kv.create_revision, kv.mod_revision, kv.version, kv.lease))
            for kv in result.kvs
        ]
        assert got == expected

    def _state_at(self, rev: int) -> int:
        return max(r for r in self.states if r <= rev)

    @rule(ahead=st.integers(0, 2))
    def future_read_fails(self, ahead: int) -> None:
        try:
            self.store.range(b"a", revision=self.rev + 1 + ahead)
        except FutureRevisionError:
            return
        raise AssertionError("a future revision was served")

    @rule(back=st.integers(-1, 8))
    def compact(self, back: int) -> None:
        rev = self.rev - back
        try:
            self.store.compact(rev)
        except CompactedError:
            assert rev <= self.compacted
            return
        except FutureRevisionError:
            assert rev > self.rev
            return
        assert self.compacted < rev <= self.rev
        self.compacted = rev

    @rule(steps=st.integers(1, 3))
    def compact_step(self, steps: int) -> None:
        for _ in range(steps):
            self.store.compact_step(limit=2)

    @precondition(lambda self: self.rev > 1)
    @rule()
    def restart(self) -> None:
        self.backend.commit()
        self.backend.close()
        self.backend = Backend(self.dir / "db")
        self.store = KVStore(self.backend)

    @invariant()
    def revisions_agree(self) -> None:
        assert self.store.current_revision == self.rev
        assert self.store.compact_revision == self.compacted
        assert self.store.key_count() == len(self.states[self.rev])


TestStoreVersusModel = StoreVersusModel.TestCase
TestStoreVersusModel.settings = settings(
    max_examples=int(os.environ.get("MVCC_MODEL_EXAMPLES", "60")),
    stateful_step_count=40,
    deadline=None,
)
