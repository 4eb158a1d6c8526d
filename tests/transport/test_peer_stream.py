"""The gRPC message stream between real transports on 127.0.0.1: order, batching, failures."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest
from raftkv.pb.raftpb import peer_pb2_grpc
from raftkv.pb.raftpb.peer_pb2 import ProbeRequest
from raftkv.transport import wire

from .harness import Member, app, connect, run, wait_until

pytestmark = pytest.mark.integration

PER_LINK = 3000


def test_three_members_exchange_thousands_of_messages_in_order_and_batched(
    tmp_path: Path,
) -> None:
    async def scenario() -> None:
        members = [await Member(i, tmp_path).start() for i in (1, 2, 3)]
        connect(*members)
        try:

            def send_range(start: int, stop: int) -> None:
                for m in members:
                    m.transport.send(
                        [
                            app(m.member_id, other.member_id, seq, payload=b"x" * 64)
                            for other in members
                            if other is not m
                            for seq in range(start, stop)
                        ]
                    )

            # Streams up first, so that the rest flows through established calls.
            send_range(1, 2)
            await wait_until(
                lambda: all(
                    r.count_from(s.member_id) == 1 for r in members for s in members if r is not s
                )
            )
            for start in range(2, PER_LINK + 1, 100):
                send_range(start, min(start + 100, PER_LINK + 1))
                await asyncio.sleep(0)
            await wait_until(
                lambda: all(
                    r.count_from(s.member_id) == PER_LINK
                    for r in members
                    for s in members
                    if r is not s
                )
            )
            for receiver in members:
                for sender in members:
                    if sender is receiver:
                        continue
                    seqs = [m.index for m in receiver.received[sender.member_id]]
                    assert seqs == list(range(1, PER_LINK + 1))
                    assert all(m.entries[0].data == b"x" * 64 for m in receiver.received[1])
                    stats = sender.transport.peer_stats(receiver.member_id)
                    assert stats.messages_sent == PER_LINK
                    assert stats.messages_dropped == 0
                    # Many messages per stream write: the writer takes what accumulated.
                    assert 1 < stats.batches_sent <= PER_LINK // 10
                    assert sender.metrics.sent[receiver.member_id] == stats.bytes_sent > 0
                    assert receiver.metrics.received[sender.member_id] >= stats.bytes_sent
            assert all(not m.unreachable for m in members)
        finally:
            for m in members:
                await m.transport.stop()

    run(scenario())


def test_down_peer_is_reported_and_dropped_then_reconnected(tmp_path: Path) -> None:
    async def scenario() -> None:
        a = await Member(1, tmp_path).start()
        b = await Member(2, tmp_path).start()
        connect(a, b)
        port = b.port
        try:
            a.transport.send([app(1, 2, 1)])
            await wait_until(lambda: b.count_from(1) == 1)
            assert a.transport.peer_stats(2).connected

            await b.transport.stop()
            await wait_until(lambda: 2 in a.unreachable)
            assert not a.transport.peer_stats(2).connected
            # While the peer is down every message is dropped at once, and reported.
            reports = len(a.unreachable)
            a.transport.send([app(1, 2, seq) for seq in range(2, 10_002)])
            assert len(a.unreachable) == reports + 1
            assert a.transport.peer_stats(2).messages_dropped >= 10_000
            assert a.metrics.failed[2] >= 10_000

            b2 = await Member(2, tmp_path).start(port)
            try:
                seq = 20_000

                def arrived() -> bool:
                    nonlocal seq
                    seq += 1
                    a.transport.send([app(1, 2, seq)])
                    return b2.count_from(1) > 0

                await wait_until(arrived)
                assert a.transport.peer_stats(2).connected
                got = [m.index for m in b2.received[1]]
                assert got == sorted(got) and got[0] > 10_001
            finally:
                await b2.transport.stop()
        finally:
            await a.transport.stop()

    run(scenario())


def test_full_queue_drops_and_reports_without_blocking(tmp_path: Path) -> None:
    async def scenario() -> None:
        b = await Member(2, tmp_path).start()
        # Not started yet: nothing drains the queue, so it fills up.
        a = Member(1, tmp_path, queue_limit=10)
        a.transport.add_peer(2, [b.url])
        try:
            a.transport.send([app(1, 2, seq) for seq in range(1, 26)])
            assert a.unreachable == [2]
            assert a.transport.peer_stats(2).messages_dropped == 15
            await a.start()
            await wait_until(lambda: b.count_from(1) == 10)
            assert [m.index for m in b.received[1]] == list(range(1, 11))
        finally:
            await a.transport.stop()
            await b.transport.stop()

    run(scenario())


def test_peer_is_reached_by_its_first_working_url_and_after_update(tmp_path: Path) -> None:
    async def scenario() -> None:
        a = await Member(1, tmp_path).start()
        b = await Member(2, tmp_path).start()
        dead = await Member(9, tmp_path).start()
        dead_url = dead.url
        await dead.transport.stop()
        moved: Member | None = None
        try:
            a.transport.add_peer(2, [dead_url, b.url])
            a.transport.send([app(1, 2, 1)])
            await wait_until(lambda: b.count_from(1) == 1)

            # Member 2 comes back on another port; the transport follows the update.
            await b.transport.stop()
            moved = await Member(2, tmp_path).start()
            a.transport.update_peer(2, [moved.url])

            def arrived() -> bool:
                a.transport.send([app(1, 2, 2)])
                return moved is not None and moved.count_from(1) > 0

            await wait_until(arrived)
        finally:
            for m in (a, b, moved):
                if m is not None:
                    await m.transport.stop()

    run(scenario())


async def _raw_stream(
    target_url: str, metadata: tuple[tuple[str, str], ...]
) -> tuple[grpc.StatusCode, str]:
    """Open a Stream call by hand and return how the receiver answered it."""
    async with wire.open_channel(target_url, None) as channel:
        call = peer_pb2_grpc.PeerStub(channel).Stream(metadata=metadata)
        # Nothing is written: a write racing the receiver's refusal would mask its status.
        if wire.MEMBER_ID_KEY in await call.initial_metadata():
            call.cancel()
            return grpc.StatusCode.OK, "admitted"
        return await call.code(), await call.details()


def test_cluster_id_mismatch_is_rejected(tmp_path: Path) -> None:
    async def scenario() -> None:
        a = await Member(1, tmp_path, cluster_id=0xAAA).start()
        b = await Member(2, tmp_path, cluster_id=0xBBB).start()
        connect(a, b)
        try:
            assert await _raw_stream(b.url, wire.peer_metadata(1, 2, 0xAAA)) == (
                grpc.StatusCode.FAILED_PRECONDITION,
                "cluster ID mismatch",
            )

            a.transport.send([app(1, 2, 1)])
            await wait_until(lambda: 2 in a.unreachable)
            await asyncio.sleep(0.2)
            assert b.count_from(1) == 0

            # A joining member learns the cluster ID late; its streams are redialed with it.
            a.transport.set_cluster_id(0xBBB)

            def arrived() -> bool:
                a.transport.send([app(1, 2, 2)])
                return b.count_from(1) > 0

            await wait_until(arrived)
        finally:
            await a.transport.stop()
            await b.transport.stop()

    run(scenario())


def test_removed_member_is_rejected_at_dial_and_mid_stream(tmp_path: Path) -> None:
    async def scenario() -> None:
        removed: set[int] = {7}
        a = await Member(1, tmp_path).start()
        b = await Member(2, tmp_path, removed=removed).start()
        connect(a, b)
        try:
            assert await _raw_stream(b.url, wire.peer_metadata(7, 2, 0xC1)) == (
                grpc.StatusCode.FAILED_PRECONDITION,
                wire.MEMBER_REMOVED,
            )

            a.transport.send([app(1, 2, 1)])
            await wait_until(lambda: b.count_from(1) == 1)
            removed.add(1)
            a.transport.send([app(1, 2, 2)])
            await wait_until(lambda: 2 in a.unreachable)
            a.transport.send([app(1, 2, 3)])
            await asyncio.sleep(0.3)
            assert [m.index for m in b.received[1]] == [1]
        finally:
            await a.transport.stop()
            await b.transport.stop()

    run(scenario())


def test_wrong_receiver_and_bad_metadata_are_rejected(tmp_path: Path) -> None:
    async def scenario() -> None:
        b = await Member(2, tmp_path).start()
        try:
            assert await _raw_stream(b.url, wire.peer_metadata(1, 3, 0xC1)) == (
                grpc.StatusCode.FAILED_PRECONDITION,
                wire.MEMBER_ID_MISMATCH,
            )
            code, _ = await _raw_stream(b.url, (("raftkv-sender-id", "zz"),))
            assert code == grpc.StatusCode.INVALID_ARGUMENT
            assert b.count_from(1) == 0
        finally:
            await b.transport.stop()

    run(scenario())


def test_probe_measures_round_trip(tmp_path: Path) -> None:
    async def scenario() -> None:
        a = await Member(1, tmp_path).start()
        b = await Member(2, tmp_path).start()
        connect(a, b)
        try:
            rtt = await a.transport.probe(2)
            assert 0 < rtt < 5
            assert a.metrics.rtts == [(2, rtt)]
            async with wire.open_channel(b.url, None) as channel:
                answer = await peer_pb2_grpc.PeerStub(channel).Probe(
                    ProbeRequest(), metadata=wire.peer_metadata(1, 2, 0xC1)
                )
            assert answer.member_id == 2
        finally:
            await a.transport.stop()
            await b.transport.stop()

    run(scenario())
