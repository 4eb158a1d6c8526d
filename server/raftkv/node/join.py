"""Joining an existing cluster: learn the cluster ID and this member's ID from the members.

A member started with `--initial-cluster-state=existing` and an empty data dir was added by
`etcdctl member add`, which chose its ID from the request time, so the ID cannot be computed
here as a founding member's is. Like etcd, which reads `/members` from the peer URLs of the
other `--initial-cluster` members, the member asks them over the peer service (`Members`), then
checks `--initial-cluster` against the answer as etcd does (same number of members, every one
matched by its peer URLs) and finds itself by its peer URLs.

The same question answers a different one on restart: a data dir whose WAL names another cluster
than the one its peers form is refused before it can do harm.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import grpc

from raftkv.membership import Member
from raftkv.node.errors import JoinError
from raftkv.pb.raftpb import peer_pb2_grpc
from raftkv.pb.raftpb.peer_pb2 import MembersRequest, MembersResponse
from raftkv.transport import wire
from raftkv.transport.tls import ChannelTLS

log = logging.getLogger(__name__)

CALL_TIMEOUT = 1.0
RETRY_INTERVAL = 0.3


@dataclass(frozen=True)
class RemoteCluster:
    """A cluster as one of its members described it."""

    cluster_id: int
    members: tuple[Member, ...]
    source: str  # the peer URL that answered

    @classmethod
    def from_pb(cls, response: MembersResponse, source: str) -> RemoteCluster:
        members = tuple(
            Member(
                id=m.id,
                name=m.name,
                peer_urls=tuple(m.peer_urls),
                client_urls=tuple(m.client_urls),
                is_learner=m.is_learner,
            )
            for m in response.members
        )
        return cls(response.cluster_id, members, source)

    def describe(self) -> str:
        listed = ", ".join(f"{m.id:x}={','.join(m.peer_urls)}" for m in self.members)
        return f"cluster {self.cluster_id:x} (as {self.source} lists it: {listed})"


def members_response(cluster_id: int, members: Iterable[Member]) -> MembersResponse:
    """What a member answers to `Members`: its cluster ID and applied member list."""
    response = MembersResponse(cluster_id=cluster_id)
    for m in members:
        response.members.add(
            id=m.id,
            name=m.name,
            peer_urls=m.peer_urls,
            client_urls=m.client_urls,
            is_learner=m.is_learner,
        )
    return response


async def fetch_cluster(
    peer_urls: Sequence[str], timeout: float, tls: ChannelTLS | None = None
) -> RemoteCluster | None:
    """The first member list any of `peer_urls` serves, asking in rounds until `timeout`.

    A member that knows no members yet (itself still joining) does not count as an answer.
    """
    deadline = time.monotonic() + timeout
    while True:
        for url in peer_urls:
            remote = await _ask(url, tls)
            if remote is not None:
                return remote
        if time.monotonic() + RETRY_INTERVAL > deadline:
            return None
        await asyncio.sleep(RETRY_INTERVAL)


async def _ask(url: str, tls: ChannelTLS | None) -> RemoteCluster | None:
    try:
        secure = tls is not None and wire.parse_url(url)[0] == "https"
        credentials = (await tls.credentials(url))[1] if secure and tls is not None else None
        channel = wire.open_channel(url, credentials)
    except (ValueError, OSError) as error:
        log.warning("cannot ask %s for the member list: %s", url, error)
        return None
    async with channel:
        try:
            response = await peer_pb2_grpc.PeerStub(channel).Members(
                MembersRequest(), timeout=CALL_TIMEOUT
            )
        except grpc.aio.AioRpcError as error:
            log.info("member list from %s unavailable: %s", url, error.code().name)
            return None
    if not response.cluster_id or not response.members:
        return None
    return RemoteCluster.from_pb(response, url)


def find_self(
    remote: RemoteCluster, initial_cluster: Mapping[str, Sequence[str]], name: str
) -> Member:
    """This member's entry in `remote`, once `--initial-cluster` is checked against it."""
    local = {n: tuple(sorted(urls)) for n, urls in initial_cluster.items()}
    if len(local) != len(remote.members):
        raise JoinError(
            f"--initial-cluster lists {len(local)} members but {remote.describe()} has "
            f"{len(remote.members)}: give the member list `etcdctl member add` printed"
        )
    by_urls = {tuple(sorted(m.peer_urls)): m for m in remote.members}
    for member_name, urls in local.items():
        if urls not in by_urls:
            raise JoinError(
                f"--initial-cluster member {member_name}={','.join(urls)} is not a member of "
                f"{remote.describe()}; add it first with `etcdctl member add`"
            )
    me = by_urls[local[name]]
    if me.name:
        raise JoinError(
            f"member {me.id:x} ({me.name}) of cluster {remote.cluster_id:x} has run before and "
            "its data dir is gone; remove it and add it again to start from an empty data dir"
        )
    return me
