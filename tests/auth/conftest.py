"""Fixtures for the auth tests: a fake clock, a real sqlite backend, and an auth store over it.

Passwords are hashed at bcrypt's lowest cost (4) here: the store never hashes, and the tests of
hashing itself do not need etcd's slow default. `async def` tests run in a fresh event loop each,
under a deadline.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Iterator
from pathlib import Path

import pytest
from raftkv.auth import AuthStore, SimpleTokens, hash_password
from raftkv.storage.backend import Backend

TEST_COST = 4
_ASYNC_DEADLINE_S = 10.0


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    if not inspect.iscoroutinefunction(pyfuncitem.obj):
        return None
    kwargs = {name: pyfuncitem.funcargs[name] for name in pyfuncitem._fixtureinfo.argnames}
    asyncio.run(asyncio.wait_for(pyfuncitem.obj(**kwargs), _ASYNC_DEADLINE_S))
    return True


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def backend(tmp_path: Path) -> Iterator[Backend]:
    backend = Backend(tmp_path / "db")
    yield backend
    backend.close()


@pytest.fixture
def tokens(clock: FakeClock) -> SimpleTokens:
    return SimpleTokens(ttl=300, clock=clock)


@pytest.fixture
def store(backend: Backend, tokens: SimpleTokens) -> AuthStore:
    return AuthStore(backend, tokens)


def hashed(password: str) -> bytes:
    return hash_password(password, TEST_COST)


def add_root(store: AuthStore, password: str = "rootpw") -> None:
    """root with the root role, ready for `enable()`."""
    store.user_add("root", hashed(password), None)
    store.user_grant_role("root", "root")
