"""An in-process `Transport` for node-level tests: no sockets, same duties, a controllable network.

`InMemoryNetwork` plays the wire. Each `InMemoryTransport` registers itself on `start` and is
reachable from then until `stop`. Delivery goes through `loop.call_soon`, which runs callbacks in
the order they were scheduled, so messages on one link keep their order, exactly as on a gRPC
stream, while the sender never waits. The network can cut links (partitions, isolation), which
the sender notices as `on_unreachable`, and can lose messages at random from a seed, which the
sender does not notice, as with loss on a real wire. Cluster IDs and removed members are checked
as the gRPC receiver checks them. Snapshot payloads are copied into the receiver's snapshot
directory so that the receiver owns its file, as it would after a real upload.
"""

from __future__ import annotations

import asyncio
import logging
import random
import shutil
from collections.abc import Coroutine, Iterable, Sequence
from pathlib import Path
from typing import Any

from raftkv.pb.raftpb.raft_pb2 import MSG_SNAP, Message
from raftkv.transport.protocols import (
    IsRemoved,
    OnMessages,
    OnSnapshot,
    OnSnapshotStatus,
    OnUnreachable,
    SnapshotProvider,
)
from raftkv.transport.snapshot import received_snapshot_name

log = logging.getLogger(__name__)


class InMemoryNetwork:
    """Connects `InMemoryTransport`s; decides which messages get through."""

    def __init__(self, *, seed: int = 0) -> None:
        self._members: dict[int, InMemoryTransport] = {}
        self._cut: set[tuple[int, int]] = set()
        self._drop_rates: dict[tuple[int, int], float] = {}
        self._random = random.Random(seed)
        self.delivered = 0  # messages handed to a receiver, across the network

    def cut(self, a: int, b: int) -> None:
        """Break the link between two members, both ways."""
        self._cut.update({(a, b), (b, a)})

    def isolate(self, member_id: int) -> None:
        """Cut a member off from every other member."""
        for other in self._members:
            if other != member_id:
                self.cut(member_id, other)

    def partition(self, *groups: Iterable[int]) -> None:
        """Cut every link between members of different groups."""
        sets = [set(group) for group in groups]
        for i, group in enumerate(sets):
            for other in sets[i + 1 :]:
                for a in group:
                    for b in other:
                        self.cut(a, b)

    def set_drop_rate(self, from_id: int, to_id: int, rate: float) -> None:
        """Lose this fraction of the messages from `from_id` to `to_id`, silently."""
        self._drop_rates[(from_id, to_id)] = rate

    def heal(self) -> None:
        """Restore every link and stop losing messages."""
        self._cut.clear()
        self._drop_rates.clear()

    def linked(self, from_id: int, to_id: int) -> bool:
        """Whether `to_id` is up and reachable from `from_id`."""
        return to_id in self._members and (from_id, to_id) not in self._cut

    def _lost(self, from_id: int, to_id: int) -> bool:
        rate = self._drop_rates.get((from_id, to_id), 0.0)
        return rate > 0 and self._random.random() < rate

    def _register(self, transport: InMemoryTransport) -> None:
        self._members[transport.member_id] = transport

    def _unregister(self, member_id: int) -> None:
        self._members.pop(member_id, None)

    def _member(self, member_id: int) -> InMemoryTransport:
        return self._members[member_id]


def _ignore_unreachable(member_id: int) -> None:
    pass


def _ignore_snapshot_status(member_id: int, failed: bool) -> None:
    pass


def _never_removed(member_id: int) -> bool:
    return False


class InMemoryTransport:
    """A `Transport` on an `InMemoryNetwork`, with the constructor arguments of PeerTransport."""

    def __init__(
        self,
        network: InMemoryNetwork,
        *,
        member_id: int,
        cluster_id: int,
        on_messages: OnMessages,
        on_snapshot: OnSnapshot,
        snapshot_dir: Path,
        snapshot_provider: SnapshotProvider | None = None,
        on_unreachable: OnUnreachable = _ignore_unreachable,
        on_snapshot_status: OnSnapshotStatus = _ignore_snapshot_status,
        is_removed: IsRemoved = _never_removed,
    ) -> None:
        self.member_id = member_id
        self.cluster_id = cluster_id
        self._network = network
        self._on_messages = on_messages
        self._on_snapshot = on_snapshot
        self._snapshot_dir = snapshot_dir
        self._snapshot_provider = snapshot_provider
        self._on_unreachable = on_unreachable
        self._on_snapshot_status = on_snapshot_status
        self._is_removed = is_removed
        self._peers: dict[int, list[str]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._started = False

    async def start(self, listen_urls: Sequence[str] = ()) -> None:
        """Join the network; `listen_urls` are accepted for symmetry and ignored."""
        self._started = True
        self._network._register(self)

    async def stop(self) -> None:
        self._started = False
        self._network._unregister(self.member_id)
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    def add_peer(self, member_id: int, urls: Sequence[str]) -> None:
        if member_id != self.member_id:
            self._peers.setdefault(member_id, list(urls))

    def update_peer(self, member_id: int, urls: Sequence[str]) -> None:
        if member_id in self._peers:
            self._peers[member_id] = list(urls)

    def remove_peer(self, member_id: int) -> None:
        self._peers.pop(member_id, None)

    def set_cluster_id(self, cluster_id: int) -> None:
        self.cluster_id = cluster_id

    def send(self, messages: Sequence[Message]) -> None:
        """Schedule delivery of each message; drop (and report) what cannot get through."""
        loop = asyncio.get_running_loop()
        unreachable: set[int] = set()
        for message in messages:
            to = message.to
            if not self._started or to not in self._peers:
                unreachable.add(to)
                continue
            if message.type == MSG_SNAP:
                self._spawn(self._send_snapshot(message))
                continue
            if not self._admitted_by(to):
                unreachable.add(to)
                continue
            if self._network._lost(self.member_id, to):
                continue
            # A copy, as serialization would make: the receiver must not share the sender's object.
            copy = Message()
            copy.CopyFrom(message)
            loop.call_soon(self._deliver, to, copy)
        for member_id in unreachable:
            self._on_unreachable(member_id)

    def _admitted_by(self, to: int) -> bool:
        if not self._network.linked(self.member_id, to):
            return False
        receiver = self._network._member(to)
        if receiver.cluster_id and receiver.cluster_id != self.cluster_id:
            return False
        return not receiver._is_removed(self.member_id)

    def _deliver(self, to: int, message: Message) -> None:
        # The link may have been cut, or the receiver stopped, since the message was sent.
        if self._admitted_by(to):
            self._network.delivered += 1
            self._network._member(to)._on_messages([message])

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send_snapshot(self, message: Message) -> None:
        to = message.to
        failed = True
        try:
            if self._snapshot_provider is None:
                raise RuntimeError("no snapshot provider was configured")
            if not self._admitted_by(to):
                raise ConnectionError(f"member {to:x} is unreachable")
            payload = self._snapshot_provider(message)
            receiver = self._network._member(to)
            target = receiver._snapshot_dir / received_snapshot_name(message)
            await asyncio.to_thread(receiver._snapshot_dir.mkdir, parents=True, exist_ok=True)
            await asyncio.to_thread(shutil.copyfile, payload, target)
            if not self._admitted_by(to):
                target.unlink(missing_ok=True)
                raise ConnectionError(f"member {to:x} became unreachable")
            copy = Message()
            copy.CopyFrom(message)
            await receiver._on_snapshot(copy, target)
            failed = False
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("in-memory snapshot to %x failed: %s", to, exc)
        self._on_snapshot_status(to, failed)
