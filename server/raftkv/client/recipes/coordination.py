"""Distributed notification: heartbeats with a liveness monitor, and task progress reports.

Heartbeats are TTL keys: `/heartbeats/<group>/<member>` exists while the member's process keeps
its lease alive, and its value is the member's latest status (`beat(status)`). A member that
dies or hangs stops renewing; the cluster deletes its key after the TTL and every
`LivenessMonitor` reports it dead. The monitor is a list-then-watch, so it reports each change
once, in order, and never misses one while members of the cluster fail.

Progress is plain keys under a per-task prefix, `/tasks/<task>/progress/<worker>` = JSON
`{"done": n, "total": m, "note": "..."}`; `watch_progress` yields the whole task's progress
after every report, so a dashboard or a waiting coordinator sees steady, ordered updates.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from types import MappingProxyType, TracebackType

from raftkv.client.aio import AsyncClient
from raftkv.client.ops import KeyLike
from raftkv.client.recipes._common import PrefixView, retrying
from raftkv.client.recipes.discovery import EphemeralKey

__all__ = [
    "HEARTBEATS_PREFIX",
    "TASKS_PREFIX",
    "Heartbeat",
    "LivenessChange",
    "LivenessMonitor",
    "Progress",
    "ProgressReporter",
    "TaskProgress",
    "watch_progress",
]

HEARTBEATS_PREFIX = "/heartbeats/"
TASKS_PREFIX = "/tasks/"


def _segment(name: str, what: str) -> str:
    if not name or "/" in name:
        raise ValueError(f"{what} {name!r} must be non-empty without '/'")
    return name


def _group_prefix(group: str, root: str) -> bytes:
    return f"{root.rstrip('/')}/{_segment(group, 'group')}/".encode()


class Heartbeat:
    """`async with Heartbeat(client, "workers", "w1", ttl=5) as hb:` — member `w1` of `workers`
    is alive while the block runs; `await hb.beat("busy")` publishes a status."""

    def __init__(
        self,
        client: AsyncClient,
        group: str,
        member: str,
        *,
        ttl: int = 5,
        status: KeyLike = b"",
        root: str = HEARTBEATS_PREFIX,
    ) -> None:
        key = _group_prefix(group, root) + _segment(member, "member").encode()
        self._key = EphemeralKey(client, key, status, ttl=ttl)

    async def beat(self, status: KeyLike) -> None:
        await self._key.set(status)

    async def __aenter__(self) -> Heartbeat:
        await self._key.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._key.__aexit__(exc_type, exc, tb)


@dataclass(frozen=True, slots=True)
class LivenessChange:
    """`member` came alive or died (`alive`), or changed its status; `revision` orders changes."""

    member: str
    alive: bool
    status: bytes
    revision: int


class LivenessMonitor:
    """`async for change in LivenessMonitor(client, "workers"):` — the members alive now (one
    change each), then every arrival, status change and death. `alive` is the current set."""

    def __init__(self, client: AsyncClient, group: str, *, root: str = HEARTBEATS_PREFIX) -> None:
        self._client = client
        self.prefix = _group_prefix(group, root)
        self.alive: Mapping[str, bytes] = MappingProxyType({})

    async def __aiter__(self) -> AsyncIterator[LivenessChange]:
        cut = len(self.prefix)
        async with PrefixView(self._client, self.prefix) as view:
            async for update in view:
                self.alive = MappingProxyType(
                    {key[cut:].decode(): kv.value for key, kv in update.kvs.items()}
                )
                for event in update.events:
                    yield LivenessChange(
                        event.kv.key[cut:].decode(),
                        event.is_put,
                        event.kv.value if event.is_put else b"",
                        event.revision if not update.reset else update.revision,
                    )


@dataclass(frozen=True, slots=True)
class Progress:
    done: int
    total: int
    note: str = ""

    @property
    def finished(self) -> bool:
        return self.total > 0 and self.done >= self.total


@dataclass(frozen=True, slots=True)
class TaskProgress:
    """Every worker's latest report on a task at `revision`."""

    task: str
    revision: int
    workers: Mapping[str, Progress]

    @property
    def done(self) -> int:
        return sum(p.done for p in self.workers.values())

    @property
    def total(self) -> int:
        return sum(p.total for p in self.workers.values())

    @property
    def fraction(self) -> float:
        return self.done / self.total if self.total else 0.0

    @property
    def finished(self) -> bool:
        return bool(self.workers) and all(p.finished for p in self.workers.values())


def _progress_prefix(task: str, root: str) -> bytes:
    return f"{root.rstrip('/')}/{_segment(task, 'task')}/progress/".encode()


class ProgressReporter:
    """Reports one worker's progress on a task: `await reporter.report(3, 10, "parsing")`."""

    def __init__(
        self, client: AsyncClient, task: str, worker: str, *, root: str = TASKS_PREFIX
    ) -> None:
        self._client = client
        self.key = _progress_prefix(task, root) + _segment(worker, "worker").encode()

    async def report(self, done: int, total: int, note: str = "") -> int:
        """Publish the progress (repeatable); returns its revision."""
        body = json.dumps({"done": done, "total": total, "note": note}).encode()
        result = await retrying(lambda: self._client.put(self.key, body))
        return result.header.revision


async def watch_progress(
    client: AsyncClient, task: str, *, root: str = TASKS_PREFIX
) -> AsyncIterator[TaskProgress]:
    """The task's progress now, then after every report, in order."""
    prefix = _progress_prefix(task, root)
    cut = len(prefix)
    async with PrefixView(client, prefix) as view:
        async for update in view:
            workers = {}
            for key, kv in update.kvs.items():
                body = json.loads(kv.value)
                workers[key[cut:].decode()] = Progress(
                    int(body["done"]), int(body["total"]), str(body.get("note", ""))
                )
            yield TaskProgress(task, update.revision, MappingProxyType(workers))
