"""Streaming a snapshot payload file between members, and checking it on arrival.

A snapshot's payload is the MVCC backend file, possibly hundreds of MB, so it never travels inside
a Raft message: the MsgSnap goes first (with small metadata), then the file in 1 MiB chunks, then
a SHA-256 of the bytes. The receiver writes to a temporary file, and only a payload of exactly the
announced size with a matching digest is fsynced, renamed to its final name and handed over. Any
other ending raises `SnapshotStreamError` and leaves nothing behind, so a half-received file can
never be mistaken for a snapshot. File I/O runs in worker threads to keep the event loop (and the
heartbeats it serves) responsive.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import tempfile
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import BinaryIO

import grpc

from raftkv.pb.raftpb.peer_pb2 import SnapshotAck, SnapshotChunk, SnapshotHeader
from raftkv.pb.raftpb.raft_pb2 import MSG_SNAP, Message

CHUNK_BYTES = 1024 * 1024
_PARTIAL_PREFIX = ".recv-"
_PARTIAL_SUFFIX = ".tmp"


class SnapshotStreamError(Exception):
    """A snapshot upload that broke the protocol or whose payload does not check out."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


def received_snapshot_name(message: Message) -> str:
    """File name of a received payload: term and index of the snapshot, sortable."""
    meta = message.snapshot.metadata
    return f"{meta.term:016x}-{meta.index:016x}.snap.db"


def remove_partial_snapshots(snapshot_dir: Path) -> None:
    """Delete payloads a crash left half-received."""
    for path in snapshot_dir.glob(f"{_PARTIAL_PREFIX}*{_PARTIAL_SUFFIX}"):
        path.unlink(missing_ok=True)


async def receive_snapshot(
    chunks: AsyncIterator[SnapshotChunk],
    snapshot_dir: Path,
    on_bytes: Callable[[int], None],
) -> tuple[Message, Path]:
    """Consume one upload; return the MsgSnap and the verified payload file in `snapshot_dir`."""
    first = await anext(chunks, None)
    if first is None or first.WhichOneof("part") != "header":
        raise SnapshotStreamError(
            grpc.StatusCode.INVALID_ARGUMENT, "snapshot stream must start with a header"
        )
    on_bytes(first.ByteSize())
    header = first.header
    if header.message.type != MSG_SNAP:
        raise SnapshotStreamError(
            grpc.StatusCode.INVALID_ARGUMENT, "snapshot header must carry a MsgSnap"
        )
    fd, name = await asyncio.to_thread(_make_partial, snapshot_dir)
    partial = Path(name)
    try:
        with os.fdopen(fd, "wb") as out:
            await _receive_payload(chunks, out, header.payload_size, on_bytes)
            await asyncio.to_thread(_flush_and_sync, out)
        final = snapshot_dir / received_snapshot_name(header.message)
        await asyncio.to_thread(_publish, partial, final)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return header.message, final


async def _receive_payload(
    chunks: AsyncIterator[SnapshotChunk],
    out: BinaryIO,
    expected: int,
    on_bytes: Callable[[int], None],
) -> None:
    digest = hashlib.sha256()
    received = 0
    async for chunk in chunks:
        on_bytes(chunk.ByteSize())
        part = chunk.WhichOneof("part")
        if part == "data":
            received += len(chunk.data)
            if received > expected:
                raise SnapshotStreamError(
                    grpc.StatusCode.DATA_LOSS, "snapshot payload larger than announced"
                )
            digest.update(chunk.data)
            await asyncio.to_thread(out.write, chunk.data)
        elif part == "sha256":
            if received != expected:
                raise SnapshotStreamError(grpc.StatusCode.DATA_LOSS, "snapshot payload truncated")
            if chunk.sha256 != digest.digest():
                raise SnapshotStreamError(grpc.StatusCode.DATA_LOSS, "snapshot digest mismatch")
            if await anext(chunks, None) is not None:
                raise SnapshotStreamError(
                    grpc.StatusCode.INVALID_ARGUMENT, "snapshot stream continues after its digest"
                )
            return
        else:
            raise SnapshotStreamError(
                grpc.StatusCode.INVALID_ARGUMENT, "snapshot stream has a second header"
            )
    raise SnapshotStreamError(grpc.StatusCode.DATA_LOSS, "snapshot stream ended before its digest")


def _make_partial(snapshot_dir: Path) -> tuple[int, str]:
    snapshot_dir.mkdir(parents=True, exist_ok=True)
    return tempfile.mkstemp(dir=snapshot_dir, prefix=_PARTIAL_PREFIX, suffix=_PARTIAL_SUFFIX)


def _flush_and_sync(out: BinaryIO) -> None:
    out.flush()
    os.fsync(out.fileno())


def _publish(partial: Path, final: Path) -> None:
    os.replace(partial, final)
    dir_fd = os.open(final.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


async def send_snapshot(
    call: grpc.aio.StreamUnaryCall,
    message: Message,
    payload: Path,
    on_bytes: Callable[[int], None],
) -> SnapshotAck:
    """Write one upload into an established `SendSnapshot` call; return the receiver's ack.

    Raises grpc.aio.AioRpcError when the receiver refuses the upload or the connection breaks.
    """
    digest = hashlib.sha256()
    with await asyncio.to_thread(open, payload, "rb") as src:
        size = os.fstat(src.fileno()).st_size
        header = SnapshotChunk(header=SnapshotHeader(message=message, payload_size=size))
        await call.write(header)
        on_bytes(header.ByteSize())
        while data := await asyncio.to_thread(src.read, CHUNK_BYTES):
            digest.update(data)
            chunk = SnapshotChunk(data=data)
            await call.write(chunk)
            on_bytes(chunk.ByteSize())
    trailer = SnapshotChunk(sha256=digest.digest())
    await call.write(trailer)
    on_bytes(trailer.ByteSize())
    await call.done_writing()
    return await call
