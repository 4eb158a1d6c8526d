"""The Python client of raftkv; it speaks the etcd v3 API, so it also works against etcd.

`AsyncClient` is the client (asyncio); `SyncClient` offers the same methods as blocking calls by
running an `AsyncClient` on a private event loop thread. Results are frozen dataclasses
(`raftkv.client.types`), failures typed exceptions mirroring etcd's errors
(`raftkv.client.errors`).

    import asyncio
    from raftkv.client import AsyncClient, Compare, ops

    async def main() -> None:
        async with AsyncClient("http://10.0.0.1:2379,http://10.0.0.2:2379", timeout=5) as client:
            await client.put("greeting", "hello")
            print((await client.get("greeting")).as_str())            # hello

            result = await (
                client.txn()
                .if_(Compare.value("greeting") == "hello")
                .then(ops.put("greeting", "bye"), ops.get("greeting"))
                .else_(ops.get("greeting"))
                .commit()
            )
            print(result.succeeded)                                     # True

            async with client.lease(ttl=10) as lease:                   # kept alive until exit
                await client.put("me", "alive", lease=lease.id)
                async with client.watch("jobs/", prefix=True) as watch:
                    async for batch in watch:                           # resumes after failover
                        for event in batch:
                            print(event.type.name, event.kv.key, event.revision)
                        if lease.lost.is_set():
                            break

    asyncio.run(main())

Blocking code:

    from raftkv.client import SyncClient

    with SyncClient(["127.0.0.1:2379"]) as client:
        client.put(b"k", b"v")
        with client.watch(b"k") as watch:
            batch = watch.next(timeout=5)

Connections fail over between endpoints and spread calls round-robin; reads are retried on
another member after an UNAVAILABLE error, writes only when the request provably never left the
client (see `raftkv.client.transport`).
"""

from raftkv.client import errors, ops
from raftkv.client.aio import AsyncClient
from raftkv.client.lease import Lease
from raftkv.client.ops import Compare, Txn
from raftkv.client.sync import SyncClient, SyncLease, SyncWatch
from raftkv.client.transport import TLSConfig
from raftkv.client.types import (
    Alarm,
    AlarmType,
    AuthStatus,
    DeleteResult,
    Event,
    EventType,
    GetResult,
    HashKVResult,
    Header,
    KeyValue,
    LeaderKey,
    LeaseGrantResult,
    LeaseKeepAliveResult,
    LeasesResult,
    LeaseTimeToLiveResult,
    LockResult,
    Member,
    MemberAddResult,
    MemberListResult,
    Permission,
    PermissionType,
    PutResult,
    SnapshotResult,
    SortOrder,
    SortTarget,
    StatusResult,
    TxnResult,
    WatchBatch,
    WatchFilter,
)
from raftkv.client.watch import Watch

__all__ = [
    "Alarm",
    "AlarmType",
    "AsyncClient",
    "AuthStatus",
    "Compare",
    "DeleteResult",
    "Event",
    "EventType",
    "GetResult",
    "HashKVResult",
    "Header",
    "KeyValue",
    "LeaderKey",
    "Lease",
    "LeaseGrantResult",
    "LeaseKeepAliveResult",
    "LeaseTimeToLiveResult",
    "LeasesResult",
    "LockResult",
    "Member",
    "MemberAddResult",
    "MemberListResult",
    "Permission",
    "PermissionType",
    "PutResult",
    "SnapshotResult",
    "SortOrder",
    "SortTarget",
    "StatusResult",
    "SyncClient",
    "SyncLease",
    "SyncWatch",
    "TLSConfig",
    "Txn",
    "TxnResult",
    "Watch",
    "WatchBatch",
    "WatchFilter",
    "errors",
    "ops",
]
