"""Configuration and publish-subscribe: load a subtree, then follow every change to it in order.

Subscribers see the whole subtree as a mapping of relative keys to values, first as loaded at one
revision and then once per committed change, in revision order: an update is never applied out of
order, skipped or repeated, also while members fail (the watch resumes on another member from the
next revision it owes). Publishers change several keys in one transaction (`publish`), so
subscribers never see half of a change.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from types import MappingProxyType

from raftkv.client import ops
from raftkv.client.aio import AsyncClient
from raftkv.client.ops import KeyLike, to_bytes
from raftkv.client.recipes._common import PrefixView

__all__ = ["ConfigUpdate", "publish", "subscribe"]


@dataclass(frozen=True, slots=True)
class ConfigUpdate:
    """The subtree at `revision` (relative key → value) and what changed to get there: each
    changed key's new value, or None for a deleted key. The first update has every key."""

    revision: int
    values: Mapping[str, bytes]
    changed: Mapping[str, bytes | None]
    initial: bool

    def text(self, key: str, default: str | None = None) -> str | None:
        """The value of `key` decoded as UTF-8."""
        value = self.values.get(key)
        return default if value is None else value.decode()


def _prefix(root: KeyLike) -> bytes:
    return to_bytes(root).rstrip(b"/") + b"/"


async def subscribe(client: AsyncClient, root: KeyLike) -> AsyncIterator[ConfigUpdate]:
    """`async for update in subscribe(client, "/config/app"):` — the loaded subtree, then one
    update per committed change."""
    prefix = _prefix(root)
    cut = len(prefix)
    first = True
    async with PrefixView(client, prefix) as view:
        async for update in view:
            values = {key[cut:].decode(): kv.value for key, kv in update.kvs.items()}
            changed: dict[str, bytes | None] = {}
            for event in update.events:
                changed[event.kv.key[cut:].decode()] = event.kv.value if event.is_put else None
            if first:
                changed = dict(values)
            yield ConfigUpdate(
                update.revision, MappingProxyType(values), MappingProxyType(changed), first
            )
            first = False


async def publish(
    client: AsyncClient,
    root: KeyLike,
    values: Mapping[str, KeyLike | None],
) -> int:
    """Set (or, for None, delete) several keys of the subtree in one transaction; returns the
    revision subscribers will see the change at."""
    prefix = _prefix(root)
    changes = [
        ops.delete(prefix + key.encode())
        if value is None
        else ops.put(prefix + key.encode(), value)
        for key, value in values.items()
    ]
    result = await client.txn().then(*changes).commit()
    return result.header.revision
