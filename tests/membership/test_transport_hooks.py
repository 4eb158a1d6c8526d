"""The two things membership needs from the peer transport: a member list for joiners, and a
report when peers refuse this member because it was removed."""

from __future__ import annotations

from pathlib import Path

import grpc
from raftkv.pb.raftpb import peer_pb2_grpc
from raftkv.pb.raftpb.peer_pb2 import MembersRequest, MembersResponse, PeerMember
from raftkv.pb.raftpb.raft_pb2 import Message
from raftkv.transport import PeerTransport

from tests.transport.harness import app, run, wait_until


class Node:
    def __init__(
        self,
        member_id: int,
        root: Path,
        members: MembersResponse | None = None,
        cluster_id: int = 0xC1,
    ) -> None:
        self.removed: set[int] = set()
        self.removal_reports = 0
        self.received: list[Message] = []
        self.transport = PeerTransport(
            member_id=member_id,
            cluster_id=cluster_id,
            on_messages=self.received.extend,
            on_snapshot=self._no_snapshot,
            snapshot_dir=root / f"{member_id}" / "snap",
            is_removed=self.removed.__contains__,
            member_list=(lambda: members) if members is not None else None,
            on_removed=self._on_removed,
        )

    async def _no_snapshot(self, message: Message, path: Path) -> None:
        raise AssertionError("no snapshot expected")

    def _on_removed(self) -> None:
        self.removal_reports += 1

    async def start(self) -> Node:
        await self.transport.start(["http://127.0.0.1:0"])
        return self

    @property
    def url(self) -> str:
        return self.transport.listen_urls[0]


def test_members_is_answered_without_peer_metadata(tmp_path: Path) -> None:
    listing = MembersResponse(
        cluster_id=0xC1,
        members=[PeerMember(id=2, name="b", peer_urls=["http://127.0.0.1:1"], is_learner=True)],
    )

    async def scenario() -> None:
        served = await Node(2, tmp_path, listing).start()
        bare = await Node(3, tmp_path).start()
        try:
            async with grpc.aio.insecure_channel(served.url.removeprefix("http://")) as channel:
                answer = await peer_pb2_grpc.PeerStub(channel).Members(MembersRequest(), timeout=5)
            assert answer == listing
            async with grpc.aio.insecure_channel(bare.url.removeprefix("http://")) as channel:
                try:
                    await peer_pb2_grpc.PeerStub(channel).Members(MembersRequest(), timeout=5)
                except grpc.aio.AioRpcError as error:
                    assert error.code() == grpc.StatusCode.UNIMPLEMENTED
                else:
                    raise AssertionError("a member without a list must refuse")
        finally:
            await served.transport.stop()
            await bare.transport.stop()

    run(scenario())


def test_a_removed_member_learns_it_at_dial_and_mid_stream(tmp_path: Path) -> None:
    async def scenario() -> None:
        a = await Node(1, tmp_path).start()
        b = await Node(2, tmp_path).start()
        c = await Node(3, tmp_path).start()
        foreign = await Node(4, tmp_path, cluster_id=0xC2).start()
        c.removed.add(1)
        try:
            # Refusals for other reasons are not removals.
            a.transport.add_peer(4, [foreign.url])
            a.transport.send([app(1, 4, 1)])
            await wait_until(lambda: a.transport.peer_stats(4).messages_dropped > 0)
            assert a.removal_reports == 0
            # Mid-stream: b removes a after a's stream is up; a's next batch is refused.
            a.transport.add_peer(2, [b.url])
            a.transport.send([app(1, 2, 1)])
            await wait_until(lambda: len(b.received) == 1)
            assert a.removal_reports == 0
            b.removed.add(1)
            a.transport.send([app(1, 2, 2)])
            await wait_until(lambda: a.removal_reports > 0)
            # At dial: c refuses a from the start.
            reports = a.removal_reports
            a.transport.add_peer(3, [c.url])
            await wait_until(lambda: a.removal_reports > reports)
        finally:
            for node in (a, b, c, foreign):
                await node.transport.stop()

    run(scenario())
