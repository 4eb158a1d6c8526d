"""The periodic corruption check (etcd's `--experimental-corrupt-check-time`).

Every member applies the same entries, so at the same revision and compaction every member's
keyspace hash (`HashKV`) must be equal. Every interval the leader hashes its own keyspace at its
current revision, asks every other member for its hash at that same revision over the member's
client URLs, and raises a CORRUPT alarm through Raft for each member that disagrees. With the
alarm raised the cluster refuses writes ("etcdserver: corrupt cluster") until an operator has
looked and disarmed it: continuing to write onto diverged state would spread the damage.

The rules are etcd 3.4's, and only compare what is comparable. A member whose current revision
is behind answers "future revision" and is skipped; one that has compacted past the revision
answers "compacted" and is skipped. After asking, the leader makes sure it has applied
everything committed (ReadIndex) and hashes again; then:

- a member reporting a current revision or a compact revision beyond the leader's is corrupt
  (no member can be ahead of what the leader has applied);
- a member with the leader's compact revision and another hash is corrupt;
- if the leader's own hash at the same revision and compaction changed between its two
  readings, the leader is corrupt.

The decision (`find_corrupt`) is a pure function; the loop around it does the I/O.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

import grpc

from raftkv.membership import Member
from raftkv.pb.etcdserverpb import rpc_pb2, rpc_pb2_grpc

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class KVHash:
    """One member's answer: the hash at the asked revision, its current and compact revisions."""

    member_id: int
    hash: int
    revision: int
    compact_revision: int


def find_corrupt(before: KVHash, after: KVHash, peers: Iterable[KVHash]) -> list[int]:
    """Members found corrupt; `before`/`after` are the leader's own hashes around the peers'."""
    corrupt: list[int] = []
    if (
        before.hash != after.hash
        and before.revision == after.revision
        and before.compact_revision == after.compact_revision
    ):
        log.warning(
            "the local keyspace hash at revision %d changed from %d to %d",
            before.revision,
            before.hash,
            after.hash,
        )
        corrupt.append(after.member_id)
    for peer in peers:
        if peer.revision > after.revision:
            reason = f"is at revision {peer.revision}, beyond the leader's {after.revision}"
        elif peer.compact_revision > after.compact_revision:
            reason = (
                f"compacted at {peer.compact_revision}, "
                f"beyond the leader's {after.compact_revision}"
            )
        elif peer.compact_revision == before.compact_revision and peer.hash != before.hash:
            reason = (
                f"has keyspace hash {peer.hash} at revision {before.revision}, "
                f"the leader has {before.hash}"
            )
        else:
            continue
        log.warning("member %x %s", peer.member_id, reason)
        if peer.member_id not in corrupt:
            corrupt.append(peer.member_id)
    return corrupt


def grpc_target(url: str) -> tuple[str, bool]:
    """("host:port", secure) for a client URL."""
    parts = urlsplit(url)
    return parts.netloc, parts.scheme == "https"


async def _default_channel(url: str) -> grpc.aio.Channel:
    target, secure = grpc_target(url)
    if secure:
        return grpc.aio.secure_channel(target, grpc.ssl_channel_credentials())
    return grpc.aio.insecure_channel(target)


async def fetch_hash_kv(
    member: Member,
    revision: int,
    timeout: float,
    open_channel: Callable[[str], Awaitable[grpc.aio.Channel]] = _default_channel,
) -> rpc_pb2.HashKVResponse | None:
    """`member`'s HashKV at `revision` from the first client URL that answers; None if none
    does (unreachable, behind, or compacted past `revision`). `open_channel` gives a channel
    to a client URL (the member's TLS settings)."""
    for url in member.client_urls:
        try:
            channel = await open_channel(url)
        except OSError as error:
            log.info("member %x (%s) unreachable: %s", member.id, url, error)
            continue
        try:
            stub = rpc_pb2_grpc.MaintenanceStub(channel)
            return await stub.HashKV(rpc_pb2.HashKVRequest(revision=revision), timeout=timeout)
        except grpc.aio.AioRpcError as error:
            log.info("member %x (%s) gave no hash: %s", member.id, url, error.details())
        finally:
            await channel.close()
    return None


HashFetcher = Callable[[Member, int, float], Awaitable[rpc_pb2.HashKVResponse | None]]


class CorruptionChecker:
    """Runs the check every `interval` seconds while this member leads."""

    def __init__(
        self,
        *,
        member_id: int,
        interval: float,
        timeout: float,
        is_leader: Callable[[], bool],
        hash_kv: Callable[[int], tuple[int, int, int]],
        members: Callable[[], Sequence[Member]],
        read_barrier: Callable[[], Awaitable[None]],
        raise_alarm: Callable[[int], Awaitable[object]],
        fetch: HashFetcher = fetch_hash_kv,
    ) -> None:
        self.member_id = member_id
        self.interval = interval
        self.timeout = timeout
        self._is_leader = is_leader
        self._hash_kv = hash_kv
        self._members = members
        self._read_barrier = read_barrier
        self._raise_alarm = raise_alarm
        self._fetch = fetch

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            if not self._is_leader():
                continue
            try:
                await self.check()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("corruption check failed")

    def _local(self, revision: int = 0) -> KVHash:
        hash_, compact, current = self._hash_kv(revision)
        return KVHash(self.member_id, hash_, current, compact)

    async def check(self) -> list[int]:
        """One round; raises a CORRUPT alarm for each member found corrupt, and returns them."""
        before = self._local()
        peers = [m for m in self._members() if m.id != self.member_id and not m.is_learner]
        answers = await asyncio.gather(
            *(self._fetch(m, before.revision, self.timeout) for m in peers)
        )
        await self._read_barrier()
        after = self._local()
        peer_hashes = [
            KVHash(m.id, r.hash, r.header.revision, r.compact_revision)
            for m, r in zip(peers, answers, strict=True)
            if r is not None
        ]
        corrupt = find_corrupt(before, after, peer_hashes)
        for member_id in corrupt:
            try:
                await self._raise_alarm(member_id)
            except Exception as error:
                log.error("raising the CORRUPT alarm for member %x failed: %s", member_id, error)
        return corrupt
