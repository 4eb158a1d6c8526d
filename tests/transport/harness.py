"""Members for transport tests: a PeerTransport on 127.0.0.1 that records what it is told.

Each `Member` stands in for a node: it keeps every callback the transport makes (messages per
sender, unreachable reports, snapshots, snapshot results) so that tests can assert on them.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from raftkv.pb.raftpb.raft_pb2 import MSG_APP, MSG_SNAP, Message, Snapshot, SnapshotMetadata
from raftkv.transport import PeerTransport

SCENARIO_TIMEOUT = 20.0


def run(scenario: Coroutine[Any, Any, None]) -> None:
    """Run one async test scenario with a hard time limit."""
    asyncio.run(asyncio.wait_for(scenario, SCENARIO_TIMEOUT))


async def wait_until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)


def app(frm: int, to: int, seq: int, payload: bytes = b"") -> Message:
    """A MsgApp whose `index` is a per-link sequence number."""
    message = Message(type=MSG_APP, to=to, term=1, index=seq, commit=seq)
    setattr(message, "from", frm)
    if payload:
        message.entries.add(term=1, index=seq, data=payload)
    return message


def snap(frm: int, to: int, index: int) -> Message:
    message = Message(
        type=MSG_SNAP,
        to=to,
        term=2,
        snapshot=Snapshot(metadata=SnapshotMetadata(index=index, term=2), data=b"meta"),
    )
    setattr(message, "from", frm)
    return message


def sender_of(message: Message) -> int:
    return getattr(message, "from")


class Recorder:
    """PeerMetrics that keeps totals, for assertions."""

    def __init__(self) -> None:
        self.sent: dict[int, int] = defaultdict(int)
        self.received: dict[int, int] = defaultdict(int)
        self.receive_calls: dict[int, int] = defaultdict(int)
        self.failed: dict[int, int] = defaultdict(int)
        self.rtts: list[tuple[int, float]] = []

    def bytes_sent(self, member_id: int, n: int) -> None:
        self.sent[member_id] += n

    def bytes_received(self, member_id: int, n: int) -> None:
        self.received[member_id] += n
        self.receive_calls[member_id] += 1

    def send_failed(self, member_id: int, messages: int) -> None:
        self.failed[member_id] += messages

    def observe_rtt(self, member_id: int, seconds: float) -> None:
        self.rtts.append((member_id, seconds))


class Member:
    """A PeerTransport plus the record of everything it handed to its 'node'."""

    def __init__(
        self,
        member_id: int,
        root: Path,
        *,
        cluster_id: int = 0xC1,
        removed: set[int] | None = None,
        payloads: dict[int, Path] | None = None,
        queue_limit: int = 4096,
    ) -> None:
        self.member_id = member_id
        self.received: dict[int, list[Message]] = defaultdict(list)
        self.unreachable: list[int] = []
        self.snapshots: list[tuple[Message, Path, bytes]] = []
        self.snapshot_status: list[tuple[int, bool]] = []
        self.removed = removed if removed is not None else set()
        self.payloads = payloads if payloads is not None else {}
        self.metrics = Recorder()
        self.snapshot_dir = root / f"member-{member_id:x}" / "snap"
        self.transport = PeerTransport(
            member_id=member_id,
            cluster_id=cluster_id,
            on_messages=self._on_messages,
            on_snapshot=self._on_snapshot,
            snapshot_dir=self.snapshot_dir,
            snapshot_provider=lambda m: self.payloads[m.snapshot.metadata.index],
            on_unreachable=self.unreachable.append,
            on_snapshot_status=lambda member_id, failed: self.snapshot_status.append(
                (member_id, failed)
            ),
            is_removed=lambda member_id: member_id in self.removed,
            metrics=self.metrics,
            queue_limit=queue_limit,
        )

    def _on_messages(self, messages: list[Message]) -> None:
        for message in messages:
            assert message.to == self.member_id
            self.received[sender_of(message)].append(message)

    async def _on_snapshot(self, message: Message, path: Path) -> None:
        self.snapshots.append((message, path, path.read_bytes()))

    @property
    def url(self) -> str:
        return self.transport.listen_urls[0]

    async def start(self, port: int = 0) -> Member:
        await self.transport.start([f"http://127.0.0.1:{port}"])
        return self

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def count_from(self, sender: int) -> int:
        return len(self.received[sender])


def connect(*members: Member) -> None:
    """Make every member a peer of every other."""
    for a in members:
        for b in members:
            if a is not b:
                a.transport.add_peer(b.member_id, [b.url])
