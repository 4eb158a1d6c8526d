"""The proxy registers itself in the cluster so clients can discover proxies.

etcd's grpc-proxy with `--resolver-prefix P` writes the key `P/<advertise-client-url>` under a
lease of `--resolver-ttl` seconds that it keeps alive, in the format of etcd's gRPC naming
resolver: the JSON of a naming update,
`{"Op":0,"Addr":"<url>","Metadata":"{\\"name\\":\\"<host>\\"}"}`
(Op 0 is "add"; the metadata is itself JSON text). A proxy that dies stops renewing, and the
key goes away with the lease when the TTL has passed. raftkv writes the same key and value, so
etcd's resolver and tools that read these keys work with raftkv proxies.

With a prefix, MemberList through the proxy answers with the registered proxies (no IDs, a
name and one client URL each), as etcd's proxy does, so `etcdctl member list` against a proxy
lists the proxies a client may use; without any registration it falls back to the cluster's
member list.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket

from raftkv.client import AsyncClient, errors
from raftkv.client.ops import prefix_end
from raftkv.pb.etcdserverpb import rpc_pb2

__all__ = ["Registration", "registered_members", "registration_value"]

log = logging.getLogger(__name__)

# etcd's concurrency session default, used when --resolver-ttl is not set.
DEFAULT_TTL_S = 60


def registration_key(prefix: str, addr: str) -> bytes:
    return f"{prefix}/{addr}".encode()


def registration_value(addr: str, hostname: str | None = None) -> bytes:
    metadata = json.dumps({"name": hostname or socket.gethostname()}, separators=(",", ":"))
    update = {"Op": 0, "Addr": addr, "Metadata": metadata}
    return json.dumps(update, separators=(",", ":")).encode()


def _member(value: bytes) -> rpc_pb2.Member | None:
    try:
        update = json.loads(value)
        name = json.loads(update.get("Metadata") or "{}").get("name", "")
        return rpc_pb2.Member(name=str(name), clientURLs=[str(update["Addr"])])
    except (ValueError, KeyError, TypeError, AttributeError):
        return None


async def registered_members(client: AsyncClient, prefix: str) -> list[rpc_pb2.Member]:
    """The proxies registered under `prefix`, as members."""
    start = f"{prefix}/".encode()
    result = await client.get(start, range_end=prefix_end(start))
    members = (_member(kv.value) for kv in result.kvs)
    return [m for m in members if m is not None]


class Registration:
    """Keeps `prefix/addr` in the cluster under a kept-alive lease for as long as it runs."""

    def __init__(self, client: AsyncClient, prefix: str, addr: str, ttl: int) -> None:
        self._client = client
        self.key = registration_key(prefix, addr)
        self.value = registration_value(addr)
        self.ttl = ttl if ttl > 0 else DEFAULT_TTL_S
        self.registered = asyncio.Event()

    async def run(self) -> None:
        """Register, and register again whenever the lease is lost (cluster unreachable)."""
        while True:
            try:
                async with self._client.lease(ttl=self.ttl) as lease:
                    await self._client.put(self.key, self.value, lease=lease.id)
                    self.registered.set()
                    log.info("registered %s with a %d s lease", self.key.decode(), lease.ttl)
                    await lease.lost.wait()
                    self.registered.clear()
                    log.warning("registration lease lost; registering again")
            except errors.EtcdError as error:
                self.registered.clear()
                log.warning("could not register %s: %s", self.key.decode(), error.message)
                await asyncio.sleep(1.0)
