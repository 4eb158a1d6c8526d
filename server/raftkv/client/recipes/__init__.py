"""Recipes: what people run etcd for, built on `AsyncClient` and safe while members fail.

    from raftkv.client import AsyncClient
    from raftkv.client.recipes import Lock, Queue, Registration, ServiceView, RoundRobin

    async with AsyncClient("127.0.0.1:2379,127.0.0.1:22379,127.0.0.1:32379") as client:
        async with Lock(client, "/locks/nightly-report") as token:   # fencing token
            ...
        async with Registration(client, "web", "web-1", "10.0.0.7:8080", ttl=10):
            ...                                                         # discoverable meanwhile
        async with ServiceView(client, "web") as view:
            print(RoundRobin(view).pick())
        await Queue(client, "/queues/jobs").push(b"job-1")

- service registration and discovery: `Registration`, `Discovery`, `ServiceView`, `list_instances`
- configuration / pub-sub: `subscribe`, `publish`
- load balancing: `RoundRobin`, `LeastRecentlyUsed`
- notification: `Heartbeat`, `LivenessMonitor`, `ProgressReporter`, `watch_progress`
- locking: `Lock` (fair, fencing token, loss detection)
- queues: `Queue`, `PriorityQueue`, `ConditionQueue`, `Barrier`, `DoubleBarrier`
- election: `Election`, `run_as_leader`; cluster health: `ClusterMonitor`

Every write a recipe makes can be repeated safely, and every wait is a resumable watch, so a
recipe carries on when the member it talks to is killed (see `_common`). Each recipe that holds
something (a lock, a leadership, a registration) hangs it on a lease and exposes `lost`.
Key layouts are etcd's where etcd has the recipe (`<name>/<lease hex>` for locks and elections),
so `etcdctl lock`/`elect` and these recipes work together.
"""

from raftkv.client.recipes._common import LostError, PrefixUpdate, PrefixView
from raftkv.client.recipes.balancer import (
    Balancer,
    Instance,
    LeastRecentlyUsed,
    NoInstanceError,
    RoundRobin,
)
from raftkv.client.recipes.config import ConfigUpdate, publish, subscribe
from raftkv.client.recipes.coordination import (
    Heartbeat,
    LivenessChange,
    LivenessMonitor,
    Progress,
    ProgressReporter,
    TaskProgress,
    watch_progress,
)
from raftkv.client.recipes.discovery import (
    Discovery,
    EphemeralKey,
    Registration,
    ServiceChange,
    ServiceSnapshot,
    ServiceView,
    list_instances,
)
from raftkv.client.recipes.election import Election, current_leader, run_as_leader
from raftkv.client.recipes.lock import Lock, lock_owner
from raftkv.client.recipes.monitor import ClusterMonitor, ClusterState, MemberHealth
from raftkv.client.recipes.queue import (
    Barrier,
    ConditionQueue,
    DoubleBarrier,
    PriorityQueue,
    Queue,
)

__all__ = [
    "Balancer",
    "Barrier",
    "ClusterMonitor",
    "ClusterState",
    "ConditionQueue",
    "ConfigUpdate",
    "Discovery",
    "DoubleBarrier",
    "Election",
    "EphemeralKey",
    "Heartbeat",
    "Instance",
    "LeastRecentlyUsed",
    "LivenessChange",
    "LivenessMonitor",
    "Lock",
    "LostError",
    "MemberHealth",
    "NoInstanceError",
    "PrefixUpdate",
    "PrefixView",
    "PriorityQueue",
    "Progress",
    "ProgressReporter",
    "Queue",
    "Registration",
    "RoundRobin",
    "ServiceChange",
    "ServiceSnapshot",
    "ServiceView",
    "TaskProgress",
    "current_leader",
    "list_instances",
    "lock_owner",
    "publish",
    "run_as_leader",
    "subscribe",
    "watch_progress",
]
