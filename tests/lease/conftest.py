"""Fixtures for the lessor tests: a fake clock, a real sqlite backend, and a tiny fake KV.

The fake KV plays the MVCC store's two parts in the lease contract: it calls the lessor's
`on_kv_events` after every write (as the store's listener does) and deletes keys in one
revision when the lessor revokes (the range deleter).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from raftkv.lease import Lessor
from raftkv.pb.mvccpb.kv_pb2 import Event, KeyValue
from raftkv.storage.backend import Backend


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class FakeKV:
    """Live keys with their lease, a revision counter, and the lessor as the write listener."""

    def __init__(self) -> None:
        self.revision = 1
        self.keys: dict[bytes, int] = {}
        self.lessor: Lessor | None = None
        self.delete_calls: list[list[bytes]] = []

    def _commit(self, events: list[Event]) -> list[Event]:
        if events:
            self.revision += 1
            for event in events:
                event.kv.mod_revision = self.revision
            assert self.lessor is not None
            self.lessor.on_kv_events(events, self.revision)
        return events

    def put(self, key: bytes, lease: int = 0) -> None:
        prev = self.keys.get(key)
        self.keys[key] = lease
        event = Event(type=Event.PUT, kv=KeyValue(key=key, lease=lease))
        if prev is not None:
            event.prev_kv.CopyFrom(KeyValue(key=key, lease=prev))
        self._commit([event])

    def delete(self, key: bytes) -> None:
        self.delete_keys([key])

    def delete_keys(self, keys: Sequence[bytes]) -> list[Event]:
        self.delete_calls.append(list(keys))
        events = [
            Event(type=Event.DELETE, kv=KeyValue(key=k), prev_kv=KeyValue(key=k, lease=lease))
            for k in keys
            if (lease := self.keys.pop(k, None)) is not None
        ]
        return self._commit(events)

    def attached(self) -> list[tuple[bytes, int]]:
        return [(k, lease) for k, lease in self.keys.items() if lease]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def backend(tmp_path: Path) -> Iterator[Backend]:
    backend = Backend(tmp_path / "db")
    yield backend
    backend.close()


@pytest.fixture
def kv() -> FakeKV:
    return FakeKV()


def open_lessor(
    backend: Backend,
    kv: FakeKV,
    clock: FakeClock,
    *,
    min_ttl: int = 2,
    checkpoint_interval: float = 300.0,
) -> Lessor:
    lessor = Lessor(min_ttl=min_ttl, clock=clock, checkpoint_interval=checkpoint_interval)
    kv.lessor = lessor
    lessor.recover(backend, kv, kv.attached())
    return lessor


@pytest.fixture
def lessor(backend: Backend, kv: FakeKV, clock: FakeClock) -> Lessor:
    """A follower's lessor (not primary) with a 2 s minimum TTL."""
    return open_lessor(backend, kv, clock)
