"""Snapshot streaming between real transports: chunked, verified, refused unless whole."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import random
from pathlib import Path

import grpc
import pytest
from raftkv.pb.raftpb import peer_pb2_grpc
from raftkv.pb.raftpb.peer_pb2 import SnapshotChunk, SnapshotHeader
from raftkv.transport import wire
from raftkv.transport.snapshot import CHUNK_BYTES

from .harness import Member, connect, run, snap, wait_until

pytestmark = pytest.mark.integration


def _payload(tmp_path: Path, size: int, seed: int = 1) -> Path:
    path = tmp_path / f"payload-{seed}.db"
    path.write_bytes(random.Random(seed).randbytes(size))
    return path


def test_multi_megabyte_snapshot_arrives_whole_in_chunks(tmp_path: Path) -> None:
    size = 5 * CHUNK_BYTES + 123  # the last chunk is a partial one
    payload = _payload(tmp_path, size)

    async def scenario() -> None:
        a = await Member(1, tmp_path, payloads={10: payload}).start()
        b = await Member(2, tmp_path).start()
        connect(a, b)
        try:
            a.transport.send([snap(1, 2, 10)])
            await wait_until(lambda: a.snapshot_status == [(2, False)])
            [(message, path, content)] = b.snapshots
            assert message.snapshot.metadata.index == 10
            assert message.snapshot.data == b"meta"
            assert content == payload.read_bytes()
            # Only the verified file is left in the receiver's snapshot directory.
            assert list(b.snapshot_dir.iterdir()) == [path]
            # Header, six data chunks and the digest: the payload was not sent in one piece.
            assert b.metrics.receive_calls[1] == 8
            assert a.metrics.sent[2] >= size
            assert b.count_from(1) == 0  # MsgSnap never travels on the message stream
        finally:
            await a.transport.stop()
            await b.transport.stop()

    run(scenario())


def test_snapshot_to_an_unreachable_peer_or_without_payload_fails(tmp_path: Path) -> None:
    payload = _payload(tmp_path, 1000)

    async def scenario() -> None:
        a = await Member(1, tmp_path, payloads={10: payload}).start()
        b = await Member(2, tmp_path).start()
        connect(a, b)
        await b.transport.stop()
        try:
            a.transport.send([snap(1, 2, 10)])
            await wait_until(lambda: a.snapshot_status == [(2, True)])
            # No payload for index 11: the provider raises, the send fails, nothing hangs.
            a.transport.send([snap(1, 2, 11)])
            await wait_until(lambda: a.snapshot_status == [(2, True), (2, True)])
        finally:
            await a.transport.stop()

    run(scenario())


# The senders below are test-only and lie on purpose: they speak the upload protocol by hand
# through a raw stub, announcing one thing and sending another, as a buggy or corrupted sender
# would. PeerTransport itself never sends such streams.

_SIZE = 3 * CHUNK_BYTES // 2
_DATA = random.Random(7).randbytes(_SIZE)


def _header(size: int = _SIZE) -> SnapshotChunk:
    return SnapshotChunk(header=SnapshotHeader(message=snap(1, 2, 20), payload_size=size))


LIES = {
    "wrong digest": (
        [_header(), SnapshotChunk(data=_DATA), SnapshotChunk(sha256=hashlib.sha256(b"x").digest())],
        grpc.StatusCode.DATA_LOSS,
        "snapshot digest mismatch",
    ),
    "truncated": (
        [
            _header(),
            SnapshotChunk(data=_DATA[:-10]),
            SnapshotChunk(sha256=hashlib.sha256(_DATA).digest()),
        ],
        grpc.StatusCode.DATA_LOSS,
        "snapshot payload truncated",
    ),
    "no digest": (
        [_header(), SnapshotChunk(data=_DATA)],
        grpc.StatusCode.DATA_LOSS,
        "snapshot stream ended before its digest",
    ),
    "longer than announced": (
        [_header(_SIZE - 1), SnapshotChunk(data=_DATA)],
        grpc.StatusCode.DATA_LOSS,
        "snapshot payload larger than announced",
    ),
    "no header": (
        [SnapshotChunk(data=_DATA)],
        grpc.StatusCode.INVALID_ARGUMENT,
        "snapshot stream must start with a header",
    ),
}


@pytest.mark.parametrize("lie", sorted(LIES))
def test_corrupt_or_truncated_upload_is_refused_and_leaves_nothing(
    tmp_path: Path, lie: str
) -> None:
    chunks, code, details = LIES[lie]

    async def scenario() -> None:
        b = await Member(2, tmp_path).start()
        try:
            async with wire.open_channel(b.url, None) as channel:
                call = peer_pb2_grpc.PeerStub(channel).SendSnapshot(
                    metadata=wire.peer_metadata(1, 2, 0xC1)
                )
                # The receiver may refuse before every write lands; its final status is the answer.
                with contextlib.suppress(grpc.aio.AioRpcError, asyncio.InvalidStateError):
                    for chunk in chunks:
                        await call.write(chunk)
                    await call.done_writing()
                assert await call.code() == code
                assert await call.details() == details
            assert b.snapshots == []
            assert list(b.snapshot_dir.iterdir()) == []
        finally:
            await b.transport.stop()

    run(scenario())


def test_upload_abandoned_midway_leaves_nothing(tmp_path: Path) -> None:
    async def scenario() -> None:
        b = await Member(2, tmp_path).start()
        try:
            async with wire.open_channel(b.url, None) as channel:
                call = peer_pb2_grpc.PeerStub(channel).SendSnapshot(
                    metadata=wire.peer_metadata(1, 2, 0xC1)
                )
                await call.write(_header())
                await call.write(SnapshotChunk(data=_DATA[:CHUNK_BYTES]))
                await wait_until(lambda: b.metrics.receive_calls[1] == 2)
                assert len(list(b.snapshot_dir.iterdir())) == 1  # the partial file
                call.cancel()  # the sender dies before the end of the payload
            await wait_until(lambda: list(b.snapshot_dir.iterdir()) == [])
            assert b.snapshots == []
        finally:
            await b.transport.stop()

    run(scenario())
