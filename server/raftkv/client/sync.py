"""`SyncClient`: the asyncio client driven from blocking code.

Calling `asyncio.run` per call would tear down the gRPC channels and every background task
between calls, which kills watches and lease keep-alives. So a `SyncClient` owns one event loop
running in a private daemon thread for its whole life; each blocking method hands the matching
`AsyncClient` coroutine to that loop and waits for the result. Watches and leases keep running in
the loop between calls, exactly as in async code, and their blocking views (`SyncWatch`,
`SyncLease`) just step them from the caller's thread. Methods are generated from `AsyncClient`'s
own signatures (`_blocking`), so both stay in step and type checkers see the real parameters.

The client may be shared by threads. It must not be called from inside its own loop thread (a
callback of one of its own tasks), which would deadlock; that raises `RuntimeError`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import threading
from collections.abc import Awaitable, Callable, Coroutine, Iterator, Sequence
from types import TracebackType
from typing import Any, Concatenate, ParamSpec, TypeVar, Unpack

from raftkv.client.aio import AsyncClient
from raftkv.client.lease import Lease
from raftkv.client.ops import KeyLike, Txn, WatchOptions
from raftkv.client.transport import TLSConfig
from raftkv.client.types import Event, KeyValue, LeaseTimeToLiveResult, TxnResult, WatchBatch
from raftkv.client.watch import Watch

__all__ = ["SyncClient", "SyncLease", "SyncWatch"]

P = ParamSpec("P")
R = TypeVar("R")


class _LoopThread:
    """An event loop running forever in a daemon thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._main, name="raftkv-client", daemon=True)
        self._thread.start()

    def _main(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def submit(self, coro: Coroutine[Any, Any, R]) -> concurrent.futures.Future[R]:
        if threading.current_thread() is self._thread:
            coro.close()
            raise RuntimeError("a SyncClient cannot be called from its own event loop thread")
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def run(self, coro: Coroutine[Any, Any, R]) -> R:
        future = self.submit(coro)
        try:
            return future.result()
        except BaseException:
            future.cancel()  # e.g. KeyboardInterrupt in the caller: do not leave the call running
            raise

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join()
        self.loop.close()


def _blocking(
    method: Callable[Concatenate[AsyncClient, P], Awaitable[R]],
) -> Callable[Concatenate[SyncClient, P], R]:
    """The blocking twin of an `AsyncClient` coroutine method."""

    def call(self: SyncClient, /, *args: P.args, **kwargs: P.kwargs) -> R:
        async def run() -> R:
            return await method(self._client, *args, **kwargs)

        return self._runner.run(run())

    functools.update_wrapper(call, method)
    return call


class SyncWatch:
    """A blocking view of a `Watch`: `with client.watch(b"k") as w: for batch in w: ...`."""

    def __init__(self, runner: _LoopThread, watch: Watch) -> None:
        self._runner = runner
        self.watch = watch

    def __enter__(self) -> SyncWatch:
        self._runner.run(self.watch.start())
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.cancel()

    def __iter__(self) -> Iterator[WatchBatch]:
        return self

    def __next__(self) -> WatchBatch:
        return self.next()

    def next(self, timeout: float | None = None) -> WatchBatch:
        """The next batch; raises the built-in `TimeoutError` after `timeout` seconds."""

        async def step() -> WatchBatch:
            return await asyncio.wait_for(anext(self.watch), timeout)

        try:
            return self._runner.run(step())
        except StopAsyncIteration:
            raise StopIteration from None

    def events(self) -> Iterator[Event]:
        """The events one by one, skipping progress notifications."""
        for batch in self:
            yield from batch.events

    def request_progress(self) -> None:
        self._runner.run(self.watch.request_progress())

    def cancel(self) -> None:
        self._runner.run(self.watch.cancel())


class SyncLease:
    """A blocking view of a `Lease`; `lost` is a `threading.Event` here."""

    def __init__(self, runner: _LoopThread, lease: Lease) -> None:
        self._runner = runner
        self.lease = lease
        self.lost = threading.Event()
        self._mirror: concurrent.futures.Future[None] | None = None

    @property
    def id(self) -> int:
        return self.lease.id

    @property
    def ttl(self) -> int:
        return self.lease.ttl

    def start(self) -> SyncLease:
        self._runner.run(self.lease.start())

        async def mirror_lost() -> None:
            await self.lease.lost.wait()
            self.lost.set()

        self._mirror = self._runner.submit(mirror_lost())
        return self

    def close(self) -> None:
        try:
            self._runner.run(self.lease.close())
        finally:
            if self._mirror is not None:
                self._mirror.cancel()

    def revoke(self) -> None:
        self._runner.run(self.lease.revoke())

    def time_to_live(self, *, keys: bool = False) -> LeaseTimeToLiveResult:
        return self._runner.run(self.lease.time_to_live(keys=keys))

    def __enter__(self) -> SyncLease:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class SyncClient:
    """The blocking client: same methods and arguments as `AsyncClient`, without `await`.

    `with SyncClient("127.0.0.1:2379") as client: client.put("k", "v")`.
    """

    def __init__(
        self,
        endpoints: str | Sequence[str] = "127.0.0.1:2379",
        *,
        timeout: float = 5.0,
        dial_timeout: float = 2.0,
        username: str | None = None,
        password: str | None = None,
        tls: TLSConfig | None = None,
        keepalive_time: float = 30.0,
        keepalive_timeout: float = 10.0,
    ) -> None:
        self._client = AsyncClient(
            endpoints,
            timeout=timeout,
            dial_timeout=dial_timeout,
            username=username,
            password=password,
            tls=tls,
            keepalive_time=keepalive_time,
            keepalive_timeout=keepalive_timeout,
        )
        self._runner = _LoopThread()
        self._closed = False

    @property
    def aio(self) -> AsyncClient:
        """The underlying asyncio client (its coroutines must run on this client's loop)."""
        return self._client

    @property
    def endpoints(self) -> tuple[str, ...]:
        return self._client.endpoints

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._runner.run(self._client.close())
        finally:
            self._runner.stop()

    def __enter__(self) -> SyncClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- methods that return live objects ---------------------------------------------------------

    def txn(self) -> Txn[TxnResult]:
        """A transaction builder whose `commit()` blocks: `client.txn().if_(...).commit()`."""
        return Txn(lambda txn, timeout: self.commit(txn, timeout=timeout))

    def watch(self, key: KeyLike, **options: Unpack[WatchOptions]) -> SyncWatch:
        """Like `AsyncClient.watch`; use as `with client.watch(...) as w: for batch in w:`."""
        return SyncWatch(self._runner, self._client.watch(key, **options))

    def lease(self, ttl: int, *, lease_id: int = 0, revoke_on_close: bool = True) -> SyncLease:
        return SyncLease(
            self._runner,
            self._client.lease(ttl, lease_id=lease_id, revoke_on_close=revoke_on_close),
        )

    def keep_alive(self, lease_id: int, *, revoke_on_close: bool = False) -> SyncLease:
        return SyncLease(
            self._runner, self._client.keep_alive(lease_id, revoke_on_close=revoke_on_close)
        )

    def observe(self, name: KeyLike) -> Iterator[KeyValue]:
        stream = self._client.observe(name)

        async def step() -> KeyValue:
            return await anext(stream)

        try:
            while True:
                try:
                    yield self._runner.run(step())
                except StopAsyncIteration:
                    return
        finally:
            self._runner.run(stream.aclose())

    # -- blocking twins of the coroutine methods -------------------------------------------------

    get = _blocking(AsyncClient.get)
    put = _blocking(AsyncClient.put)
    delete = _blocking(AsyncClient.delete)
    compact = _blocking(AsyncClient.compact)
    commit = _blocking(AsyncClient.commit)

    lease_grant = _blocking(AsyncClient.lease_grant)
    lease_revoke = _blocking(AsyncClient.lease_revoke)
    lease_time_to_live = _blocking(AsyncClient.lease_time_to_live)
    lease_leases = _blocking(AsyncClient.lease_leases)
    lease_keep_alive_once = _blocking(AsyncClient.lease_keep_alive_once)

    member_list = _blocking(AsyncClient.member_list)
    member_add = _blocking(AsyncClient.member_add)
    member_remove = _blocking(AsyncClient.member_remove)
    member_update = _blocking(AsyncClient.member_update)
    member_promote = _blocking(AsyncClient.member_promote)

    status = _blocking(AsyncClient.status)
    alarm_list = _blocking(AsyncClient.alarm_list)
    alarm_disarm = _blocking(AsyncClient.alarm_disarm)
    defragment = _blocking(AsyncClient.defragment)
    hash_kv = _blocking(AsyncClient.hash_kv)
    move_leader = _blocking(AsyncClient.move_leader)
    snapshot = _blocking(AsyncClient.snapshot)

    lock = _blocking(AsyncClient.lock)
    unlock = _blocking(AsyncClient.unlock)
    campaign = _blocking(AsyncClient.campaign)
    proclaim = _blocking(AsyncClient.proclaim)
    leader = _blocking(AsyncClient.leader)
    resign = _blocking(AsyncClient.resign)

    authenticate = _blocking(AsyncClient.authenticate)
    auth_enable = _blocking(AsyncClient.auth_enable)
    auth_disable = _blocking(AsyncClient.auth_disable)
    auth_status = _blocking(AsyncClient.auth_status)
    user_add = _blocking(AsyncClient.user_add)
    user_get = _blocking(AsyncClient.user_get)
    user_list = _blocking(AsyncClient.user_list)
    user_delete = _blocking(AsyncClient.user_delete)
    user_change_password = _blocking(AsyncClient.user_change_password)
    user_grant_role = _blocking(AsyncClient.user_grant_role)
    user_revoke_role = _blocking(AsyncClient.user_revoke_role)
    role_add = _blocking(AsyncClient.role_add)
    role_get = _blocking(AsyncClient.role_get)
    role_list = _blocking(AsyncClient.role_list)
    role_delete = _blocking(AsyncClient.role_delete)
    role_grant_permission = _blocking(AsyncClient.role_grant_permission)
    role_revoke_permission = _blocking(AsyncClient.role_revoke_permission)
