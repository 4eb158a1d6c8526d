"""InMemoryNetwork: the socket-free transport node tests use keeps the gRPC transport's promises."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from pathlib import Path

from raftkv.pb.raftpb.raft_pb2 import Message
from raftkv.transport import InMemoryNetwork, InMemoryTransport, Transport

from .harness import app, run, sender_of, snap, wait_until


class Node:
    """Records what its in-memory transport delivers and reports."""

    def __init__(
        self,
        network: InMemoryNetwork,
        member_id: int,
        root: Path,
        *,
        cluster_id: int = 1,
        payload: Path | None = None,
    ) -> None:
        self.received: dict[int, list[Message]] = defaultdict(list)
        self.unreachable: list[int] = []
        self.snapshots: list[tuple[Message, Path]] = []
        self.snapshot_status: list[tuple[int, bool]] = []
        self.removed: set[int] = set()
        self.snapshot_dir = root / f"m{member_id}"

        async def on_snapshot(message: Message, path: Path) -> None:
            self.snapshots.append((message, path))

        def provide(message: Message) -> Path:
            assert payload is not None
            return payload

        self.transport: Transport = InMemoryTransport(
            network,
            member_id=member_id,
            cluster_id=cluster_id,
            on_messages=lambda ms: [self.received[sender_of(m)].append(m) for m in ms],
            on_snapshot=on_snapshot,
            snapshot_dir=self.snapshot_dir,
            snapshot_provider=provide,
            on_unreachable=self.unreachable.append,
            on_snapshot_status=lambda m, failed: self.snapshot_status.append((m, failed)),
            is_removed=self.removed.__contains__,
        )

    def seqs(self, sender: int) -> list[int]:
        return [m.index for m in self.received[sender]]


async def _cluster(network: InMemoryNetwork, root: Path, ids: list[int]) -> dict[int, Node]:
    nodes = {i: Node(network, i, root) for i in ids}
    for node in nodes.values():
        await node.transport.start([])
        for other in ids:
            node.transport.add_peer(other, [f"http://127.0.0.1:{other}"])
    return nodes


def test_delivery_is_asynchronous_ordered_and_copied(tmp_path: Path) -> None:
    async def scenario() -> None:
        network = InMemoryNetwork()
        nodes = await _cluster(network, tmp_path, [1, 2, 3])
        sent = [app(1, 2, seq) for seq in range(1, 1001)]
        nodes[1].transport.send([*sent, app(1, 3, 1)])
        assert nodes[2].received == {}  # send only schedules
        await asyncio.sleep(0)
        assert nodes[2].seqs(1) == list(range(1, 1001))
        assert nodes[3].seqs(1) == [1]
        sent[0].index = 999_999  # the receiver has its own copy
        assert nodes[2].received[1][0].index == 1
        assert network.delivered == 1001

    run(scenario())


def test_partitions_drop_and_report_until_healed(tmp_path: Path) -> None:
    async def scenario() -> None:
        network = InMemoryNetwork()
        nodes = await _cluster(network, tmp_path, [1, 2, 3])
        network.partition([1, 2], [3])
        nodes[1].transport.send([app(1, 2, 1), app(1, 3, 1)])
        nodes[3].transport.send([app(3, 1, 1)])
        await asyncio.sleep(0)
        assert nodes[2].seqs(1) == [1]
        assert nodes[3].received == {} and nodes[1].received == {}
        assert nodes[1].unreachable == [3] and nodes[3].unreachable == [1]

        # Messages already on the wire when the link is cut are lost too.
        nodes[1].transport.send([app(1, 2, 2)])
        network.cut(1, 2)
        await asyncio.sleep(0)
        assert nodes[2].seqs(1) == [1]

        network.heal()
        nodes[1].transport.send([app(1, 2, 3), app(1, 3, 3)])
        await asyncio.sleep(0)
        assert nodes[2].seqs(1) == [1, 3] and nodes[3].seqs(1) == [3]

        network.isolate(2)
        nodes[2].transport.send([app(2, 1, 1), app(2, 3, 1)])
        await asyncio.sleep(0)
        assert sorted(nodes[2].unreachable) == [1, 3]

    run(scenario())


def test_random_loss_is_silent_seeded_and_keeps_order(tmp_path: Path) -> None:
    async def scenario() -> list[int]:
        network = InMemoryNetwork(seed=42)
        nodes = await _cluster(network, tmp_path, [1, 2])
        network.set_drop_rate(1, 2, 0.3)
        nodes[1].transport.send([app(1, 2, seq) for seq in range(1, 1001)])
        await asyncio.sleep(0)
        got = nodes[2].seqs(1)
        assert 500 < len(got) < 900 and got == sorted(got)
        assert nodes[1].unreachable == []
        return got

    first: list[list[int]] = []

    async def record() -> None:
        first.append(await scenario())

    run(record())
    run(record())
    assert first[0] == first[1]  # the same seed loses the same messages


def test_unknown_removed_and_foreign_cluster_peers_are_unreachable(tmp_path: Path) -> None:
    async def scenario() -> None:
        network = InMemoryNetwork()
        nodes = await _cluster(network, tmp_path, [1, 2])
        stranger = Node(network, 3, tmp_path, cluster_id=99)
        await stranger.transport.start([])
        stranger.transport.add_peer(1, ["http://127.0.0.1:1"])
        stranger.transport.send([app(3, 1, 1)])
        nodes[1].transport.send([app(1, 3, 1)])  # 3 was never added as a peer of 1
        nodes[2].removed.add(1)
        nodes[1].transport.send([app(1, 2, 1)])
        await asyncio.sleep(0)
        assert nodes[1].received == {} and nodes[2].received == {}
        assert stranger.unreachable == [1]
        assert nodes[1].unreachable == [3, 2]

        nodes[2].removed.clear()
        nodes[1].transport.remove_peer(2)
        nodes[1].transport.send([app(1, 2, 2)])
        await nodes[2].transport.stop()
        nodes[2].transport.send([app(2, 1, 1)])  # a stopped transport sends nothing
        await asyncio.sleep(0)
        assert nodes[1].unreachable == [3, 2, 2]
        assert nodes[1].received == {} and nodes[2].received == {}

    run(scenario())


def test_snapshot_is_copied_to_the_receiver_and_reported(tmp_path: Path) -> None:
    payload = tmp_path / "backend.db"
    payload.write_bytes(b"database" * 1000)

    async def scenario() -> None:
        network = InMemoryNetwork()
        sender = Node(network, 1, tmp_path, payload=payload)
        receiver = Node(network, 2, tmp_path)
        for node, other in ((sender, 2), (receiver, 1)):
            await node.transport.start([])
            node.transport.add_peer(other, ["http://127.0.0.1:1"])
        sender.transport.send([snap(1, 2, 7)])
        await wait_until(lambda: sender.snapshot_status == [(2, False)])
        [(message, path)] = receiver.snapshots
        assert message.snapshot.metadata.index == 7
        assert path.parent == receiver.snapshot_dir and path.read_bytes() == payload.read_bytes()

        # A snapshot that cannot be delivered is always reported as failed.
        network.isolate(2)
        sender.transport.send([snap(1, 2, 8)])
        await wait_until(lambda: sender.snapshot_status == [(2, False), (2, True)])
        network.heal()
        await receiver.transport.stop()
        sender.transport.send([snap(1, 2, 9)])
        await wait_until(lambda: len(sender.snapshot_status) == 3)
        assert sender.snapshot_status[2] == (2, True)
        assert len(receiver.snapshots) == 1

    run(scenario())
