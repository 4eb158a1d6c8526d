"""Service registration and discovery: instances as lease-bound keys, clients as live views.

An instance registers `/services/<service>/<instance>` = its address, under a lease kept alive
by the registering process. If the process dies, nobody renews the lease and the cluster deletes
the key when the TTL runs out, so the instance drops out of every view within its TTL — no
health checker needed. If the *registration* is lost while the process lives (a partition longer
than the TTL), `EphemeralKey` grants a new lease and writes the key again.

Discovery is "list, then watch from that revision" (`PrefixView`): `Discovery` yields a
`ServiceSnapshot` (every live instance and what changed) for the initial list and after each
change; `ServiceView` keeps the newest snapshot in the background for code that just wants to
look (the load balancers).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType, TracebackType

from raftkv.client import errors
from raftkv.client.aio import AsyncClient
from raftkv.client.lease import Lease
from raftkv.client.ops import KeyLike, to_bytes
from raftkv.client.recipes._common import AMBIGUOUS, PrefixView, retrying

__all__ = [
    "SERVICES_PREFIX",
    "Discovery",
    "EphemeralKey",
    "Registration",
    "ServiceChange",
    "ServiceSnapshot",
    "ServiceView",
    "list_instances",
    "service_prefix",
]

SERVICES_PREFIX = "/services/"


def service_prefix(service: str, root: str = SERVICES_PREFIX) -> bytes:
    if not service or "/" in service:
        raise ValueError(f"service name {service!r} must be non-empty without '/'")
    return f"{root.rstrip('/')}/{service}/".encode()


class EphemeralKey:
    """A key that exists while this process lives: written under a lease kept alive in the
    background, written again under a new lease whenever the old one is lost.

    `registered` is set while the key is known to exist; `await set(value)` changes the value.
    """

    def __init__(self, client: AsyncClient, key: KeyLike, value: KeyLike, *, ttl: int) -> None:
        self._client = client
        self.key = to_bytes(key)
        self.value = to_bytes(value)
        self.ttl = ttl
        self.lease: Lease | None = None
        self.registered = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> EphemeralKey:
        await self._register()
        self._task = asyncio.get_running_loop().create_task(self._keep())
        return self

    async def set(self, value: KeyLike) -> None:
        self.value = to_bytes(value)
        lease = self.lease
        if lease is not None and not lease.lost.is_set():
            await retrying(lambda: self._client.put(self.key, self.value, lease=lease.id))

    async def close(self) -> None:
        """Stop and delete the key now (by revoking its lease)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self.registered.clear()
        if self.lease is not None:
            with contextlib.suppress(*AMBIGUOUS):
                await self.lease.close()

    async def __aenter__(self) -> EphemeralKey:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await asyncio.shield(self.close())

    async def _register(self) -> None:
        lease = await self._client.lease(self.ttl).start()
        try:
            await retrying(lambda: self._client.put(self.key, self.value, lease=lease.id))
        except BaseException:
            with contextlib.suppress(*AMBIGUOUS):
                await lease.close()
            raise
        self.lease = lease
        self.registered.set()

    async def _keep(self) -> None:
        pause = 0.1
        while True:
            assert self.lease is not None
            await self.lease.lost.wait()
            self.registered.clear()
            while True:
                try:
                    await self._register()
                    pause = 0.1
                    break
                except AMBIGUOUS:
                    await asyncio.sleep(pause)
                    pause = min(pause * 2, 2.0)
                except errors.EtcdError:
                    return  # the client was closed, or may no longer write the key


class Registration(EphemeralKey):
    """`async with Registration(client, "web", "web-1", "10.0.0.7:8080", ttl=10):` keeps
    instance `web-1` of service `web` discoverable while the block runs."""

    def __init__(
        self,
        client: AsyncClient,
        service: str,
        instance: str,
        address: str,
        *,
        ttl: int = 10,
        root: str = SERVICES_PREFIX,
    ) -> None:
        if not instance or "/" in instance:
            raise ValueError(f"instance name {instance!r} must be non-empty without '/'")
        super().__init__(
            client, service_prefix(service, root) + instance.encode(), address, ttl=ttl
        )
        self.service = service
        self.instance = instance


@dataclass(frozen=True, slots=True)
class ServiceChange:
    """`kind` is "added", "updated" or "removed"; `address` is the new one (the last one known
    for a removal)."""

    kind: str
    instance: str
    address: str


@dataclass(frozen=True, slots=True)
class ServiceSnapshot:
    """The live instances (name → address) at `revision`, and the changes since the last one."""

    revision: int
    instances: Mapping[str, str]
    changes: tuple[ServiceChange, ...]


async def list_instances(
    client: AsyncClient, service: str, *, root: str = SERVICES_PREFIX
) -> dict[str, str]:
    """The live instances of `service` now: name → address."""
    prefix = service_prefix(service, root)
    got = await client.get(prefix, prefix=True)
    return {kv.key[len(prefix) :].decode(): kv.value.decode() for kv in got.kvs}


class Discovery:
    """`async for snapshot in Discovery(client, "web"):` — the live instances now, then again
    after every change, in order, surviving member failures."""

    def __init__(self, client: AsyncClient, service: str, *, root: str = SERVICES_PREFIX) -> None:
        self._client = client
        self.service = service
        self.prefix = service_prefix(service, root)

    async def __aiter__(self) -> AsyncIterator[ServiceSnapshot]:
        cut = len(self.prefix)
        known: dict[str, str] = {}
        async with PrefixView(self._client, self.prefix) as view:
            async for update in view:
                changes = []
                for event in update.events:
                    name = event.kv.key[cut:].decode()
                    if event.is_delete:
                        # A delete event carries no value: report the last address known.
                        address = known.pop(name, event.kv.value.decode())
                        changes.append(ServiceChange("removed", name, address))
                    else:
                        kind = "updated" if name in known else "added"
                        known[name] = event.kv.value.decode()
                        changes.append(ServiceChange(kind, name, known[name]))
                instances = {k[cut:].decode(): kv.value.decode() for k, kv in update.kvs.items()}
                known = dict(instances)
                yield ServiceSnapshot(
                    update.revision,
                    MappingProxyType(dict(sorted(instances.items()))),
                    tuple(changes),
                )


class ServiceView:
    """The newest `ServiceSnapshot` of a service, kept current by a background task:
    `async with ServiceView(client, "web") as view: view.instances`."""

    def __init__(self, client: AsyncClient, service: str, *, root: str = SERVICES_PREFIX) -> None:
        self._discovery = Discovery(client, service, root=root)
        self.snapshot = ServiceSnapshot(0, MappingProxyType({}), ())
        self._changed = asyncio.Condition()
        self._task: asyncio.Task[None] | None = None
        self._error: BaseException | None = None

    @property
    def service(self) -> str:
        return self._discovery.service

    @property
    def instances(self) -> Mapping[str, str]:
        if self._error is not None:
            raise self._error
        return self.snapshot.instances

    async def start(self) -> ServiceView:
        self._task = asyncio.get_running_loop().create_task(self._follow())
        await self.wait_for(lambda _: self.snapshot.revision > 0)
        return self

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def __aenter__(self) -> ServiceView:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def wait_for(
        self, predicate: Callable[[Mapping[str, str]], bool], *, timeout: float | None = None
    ) -> Mapping[str, str]:
        """Wait until `predicate(instances)` holds; return those instances."""
        async with asyncio.timeout(timeout), self._changed:
            await self._changed.wait_for(
                lambda: self._error is not None or predicate(self.snapshot.instances)
            )
        return self.instances

    async def _follow(self) -> None:
        try:
            async for snapshot in self._discovery:
                async with self._changed:
                    self.snapshot = snapshot
                    self._changed.notify_all()
        except Exception as error:
            async with self._changed:
                self._error = error
                self._changed.notify_all()
