"""The v2 store's operations on the v3 keyspace: read a snapshot, decide, commit one Txn.

Every v2 write is optimistic, like etcd's software transactional memory: one read-only Txn
reads the target and its ancestors at one revision (and the subtree when the operation
depends on it); the v2 rules (not a file, compare failed, ...) are decided on that snapshot
in Python; then one Txn commits the action key, the missing parent directories and the
change, guarded by compares that every key read still has its mod_revision (and that the
subtree is still empty, or unchanged, where that mattered). A failed guard means a concurrent
write got in between: read again and decide again. So each v2 write is atomic and isolated,
and is exactly one v3 revision, which is its v2 index.

TTLs are v3 leases: a node with a TTL gets a lease of its own; a node without one shares the
lease of the nearest ancestor that has one, so a directory's expiry removes its whole subtree
in one revision. Changing a directory's lease moves the keys that shared it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from raftkv.api.v2keys import mapping
from raftkv.api.v2keys.errors import (
    DIR_NOT_EMPTY,
    EVENT_INDEX_CLEARED,
    NODE_EXIST,
    NOT_DIR,
    NOT_FILE,
    RAFT_INTERNAL,
    ROOT_READ_ONLY,
    TEST_FAILED,
    V2Error,
)
from raftkv.api.v2keys.mapping import ROOT, Node
from raftkv.api.v2keys.v3 import V3
from raftkv.pb.etcdserverpb import rpc_pb2
from raftkv.pb.mvccpb import kv_pb2

# A write retried this often without getting through reports a Raft internal error.
MAX_ATTEMPTS = 32
# How long a wait looks for the cancel that names the compacted revision.
COMPACTED_TIMEOUT_S = 10.0


@dataclass
class Result:
    """A v2 answer: the body's action and nodes, and what the headers need."""

    action: str
    node: dict[str, Any]
    prev: dict[str, Any] | None
    index: int
    term: int
    cluster_id: int
    created: bool = False  # answered 201

    def to_json(self) -> dict[str, Any]:
        return mapping.event_json(self.action, self.node, self.prev)


@dataclass
class Snapshot:
    revision: int
    term: int
    cluster_id: int
    kvs: dict[str, kv_pb2.KeyValue]  # ancestors and target that exist
    nodes: dict[str, Node | None]  # ancestors and target
    subtree: list[kv_pb2.KeyValue]

    def node(self, path: str) -> Node | None:
        return self.nodes.get(path)

    def error(self, code: int, cause: str) -> V2Error:
        return V2Error(code, cause, self.revision)

    def missing(self, path: str) -> V2Error:
        error = mapping.missing_cause(path, self.nodes)
        error.index = self.revision
        return error

    def check_parents(self, path: str) -> None:
        """A node can be written at `path` only if no ancestor is a file."""
        for ancestor in mapping.ancestors(path):
            node = self.nodes.get(ancestor)
            if node is not None and not node.is_dir:
                raise self.error(NOT_DIR, ancestor)

    def guards(self, paths: list[str]) -> list[rpc_pb2.Compare]:
        """Compares that hold while none of `paths` changed since the snapshot."""
        return [
            rpc_pb2.Compare(
                key=mapping.node_key(p),
                target=rpc_pb2.Compare.MOD,
                result=rpc_pb2.Compare.EQUAL,
                mod_revision=self.kvs[p].mod_revision if p in self.kvs else 0,
            )
            for p in paths
        ]

    def inherited_lease(self, path: str) -> tuple[int, int | None]:
        """The lease a node at `path` shares when it has no TTL of its own, and when that
        lease ends (the expiry of the ancestor that owns it)."""
        lease, expiry = 0, None
        for ancestor in mapping.ancestors(path):
            node = self.nodes.get(ancestor)
            if node is None or not node.lease:
                continue
            if node.lease != lease:
                lease, expiry = node.lease, None
            if node.expiry_ns is not None:
                expiry = node.expiry_ns if expiry is None else min(expiry, node.expiry_ns)
        return lease, expiry


@dataclass
class Plan:
    """What a write commits once the snapshot says it is allowed."""

    action: str
    path: str
    is_dir: bool
    value: str
    created: int | None  # None: created by this write
    ttl: int | None
    prev: Node | None
    refresh: bool = False
    in_order: bool = False  # an in-order key: its directory must get no other child first
    lease: int = 0  # chosen when the txn is built
    expiry_ns: int | None = None


def _put(key: bytes, value: bytes, lease: int = 0) -> rpc_pb2.RequestOp:
    return rpc_pb2.RequestOp(request_put=rpc_pb2.PutRequest(key=key, value=value, lease=lease))


def _action(action: str, path: str) -> rpc_pb2.RequestOp:
    return _put(mapping.ACTION_KEY, f"{action} {path}".encode())


def _range(key: bytes, end: bytes = b"", **options: Any) -> rpc_pb2.RequestOp:
    return rpc_pb2.RequestOp(request_range=rpc_pb2.RangeRequest(key=key, range_end=end, **options))


def _compare_failures(node: Node, prev_value: str | None, prev_index: int) -> str:
    causes = []
    if prev_value is not None and prev_value != node.value:
        causes.append(f"[{prev_value} != {node.value}]")
    if prev_index and prev_index != node.modified:
        causes.append(f"[{prev_index} != {node.modified}]")
    return " ".join(causes)


def _retired_lease(snap: Snapshot, plan: Plan) -> list[int]:
    """The lease the replaced or deleted node had of its own, when nothing else can hold it."""
    prev = plan.prev
    if prev is None or prev.expiry_ns is None or not prev.lease or prev.lease == plan.lease:
        return []
    inherited, _ = snap.inherited_lease(prev.path)
    return [] if prev.lease == inherited else [prev.lease]


class V2Store:
    """The v2 operations (see the module docstring), answering `Result` or raising V2Error."""

    def __init__(self, v3: V3) -> None:
        self._v3 = v3
        self._revokes: set[asyncio.Task[None]] = set()

    async def _read(self, path: str, *, subtree: str = "") -> Snapshot:
        """Ancestors and `path` at one revision; `subtree` "all" adds everything below,
        "one" at most one key of it (is it empty?), "keys" its keys without values."""
        paths = [*mapping.ancestors(path), *([path] if path != ROOT else [])]
        ops = [_range(mapping.node_key(p)) for p in paths]
        if subtree:
            start, end = mapping.subtree_range(path)
            if subtree == "one":
                ops.append(_range(start, end, limit=1, keys_only=True))
            else:
                ops.append(_range(start, end, keys_only=subtree == "keys"))
        response = await self._v3.txn(rpc_pb2.TxnRequest(success=ops))
        kvs: dict[str, kv_pb2.KeyValue] = {}
        nodes: dict[str, Node | None] = {}
        for p, op in zip(paths, response.responses, strict=False):
            found = list(op.response_range.kvs)
            kvs.update({p: found[0]} if found else {})
            nodes[p] = Node.from_kv(found[0]) if found else None
        below = list(response.responses[-1].response_range.kvs) if subtree else []
        header = response.header
        return Snapshot(header.revision, header.raft_term, header.cluster_id, kvs, nodes, below)

    async def get(self, path: str, *, recursive: bool, sort: bool) -> Result:
        snap = await self._read(path, subtree="all")
        if path == ROOT:
            top = mapping.root_node()
        else:
            found = snap.node(path)
            if found is None:
                raise snap.missing(path)
            top = found
        if top.is_dir:
            mapping.build_tree(top, snap.subtree, recursive=recursive)
            if sort:
                top.sort()
        node = top.to_json(mapping.now_ns(), children=True)
        return Result("get", node, None, snap.revision, snap.term, snap.cluster_id)

    async def put(
        self,
        path: str,
        *,
        value: str,
        is_dir: bool,
        ttl: int | None,
        prev_exist: bool | None,
        prev_value: str | None,
        prev_index: int,
        refresh: bool,
    ) -> Result:
        def decide(snap: Snapshot) -> Plan:
            if path == ROOT:
                raise snap.error(ROOT_READ_ONLY, ROOT)
            node = snap.node(path)
            # etcd's order: prevExist=false is a create whatever else is given.
            if prev_exist is False:
                if node is not None:
                    raise snap.error(NODE_EXIST, path)
                snap.check_parents(path)
                return Plan("create", path, is_dir, value, None, ttl, None)
            if prev_value is not None or prev_index:
                if node is None:
                    raise snap.missing(path)
                if node.is_dir:
                    raise snap.error(NOT_FILE, path)
                failures = _compare_failures(node, prev_value, prev_index)
                if failures:
                    raise snap.error(TEST_FAILED, failures)
                new = node.value if refresh else value
                return Plan("compareAndSwap", path, False, new, node.created, ttl, node, refresh)
            if prev_exist is True:
                if node is None:
                    raise snap.missing(path)
                if node.is_dir and (value or refresh):
                    raise snap.error(NOT_FILE, path)
                new = node.value if refresh else ("" if node.is_dir else value)
                return Plan("update", path, node.is_dir, new, node.created, ttl, node, refresh)
            if node is not None and node.is_dir:
                raise snap.error(NOT_FILE, path)
            if refresh:
                if node is None:
                    raise snap.missing(path)
                return Plan("set", path, False, node.value, None, ttl, node, refresh)
            snap.check_parents(path)
            return Plan("set", path, is_dir, value, None, ttl, node)

        # An update may move a directory's lease, and the keys that share it with it.
        return await self._write(path, decide, subtree="keys" if prev_exist else "")

    async def create_in_order(
        self, directory: str, *, value: str, is_dir: bool, ttl: int | None
    ) -> Result:
        def decide(snap: Snapshot) -> Plan:
            node = snap.node(directory)
            if node is not None and not node.is_dir:
                raise snap.error(NOT_DIR, directory)
            snap.check_parents(directory)
            # The next revision is this write's own when nothing else gets in first. When
            # something does, the name is smaller than the key's createdIndex, but still
            # unique and in commit order: the txn requires that no child of the directory was
            # created since the snapshot (see `_put_txn`).
            name = f"{snap.revision + 1:020d}"
            path = (directory.rstrip("/") or "") + "/" + name
            return Plan("create", path, is_dir, value, None, ttl, None, in_order=True)

        return await self._write(directory, decide)

    async def delete(
        self,
        path: str,
        *,
        is_dir: bool,
        recursive: bool,
        prev_value: str | None,
        prev_index: int,
    ) -> Result:
        def decide(snap: Snapshot) -> Plan:
            if path == ROOT:
                raise snap.error(ROOT_READ_ONLY, ROOT)
            node = snap.node(path)
            if node is None:
                raise snap.missing(path)
            action = "delete"
            if prev_value is not None or prev_index:
                if node.is_dir:
                    raise snap.error(NOT_FILE, path)
                failures = _compare_failures(node, prev_value, prev_index)
                if failures:
                    raise snap.error(TEST_FAILED, failures)
                action = "compareAndDelete"
            elif node.is_dir:
                if not (is_dir or recursive):
                    raise snap.error(NOT_FILE, path)
                if not recursive and snap.subtree:
                    raise snap.error(DIR_NOT_EMPTY, path)
            return Plan(action, path, node.is_dir, "", node.created, None, node)

        return await self._write(path, decide, subtree="one", deleting=True)

    async def _write(
        self, read_path: str, decide: Any, *, subtree: str = "", deleting: bool = False
    ) -> Result:
        granted = 0  # a lease granted for this write and not (yet) in use
        retired: list[int] = []
        try:
            for _ in range(MAX_ATTEMPTS):
                snap = await self._read(read_path, subtree=subtree)
                plan: Plan = decide(snap)
                if plan.ttl is not None and not granted:
                    # TTL 0 is "expired now": the shortest lease removes the node.
                    granted = await self._v3.lease_grant(max(plan.ttl, 1))
                request = (
                    self._delete_txn(snap, plan) if deleting else self._put_txn(snap, plan, granted)
                )
                response = await self._v3.txn(request)
                if response.succeeded:
                    revision = response.header.revision
                    result = self._result(plan, revision, deleting)
                    result.term, result.cluster_id = response.header.raft_term, snap.cluster_id
                    if plan.lease == granted:
                        granted = 0
                    retired = _retired_lease(snap, plan)
                    return result
            raise V2Error(RAFT_INTERNAL, "too many conflicting writes", snap.revision)
        finally:
            # Leases no key uses any more: revoked in the background (they would expire anyway).
            for lease in (granted, *retired):
                if lease:
                    task = asyncio.create_task(self._revoke(lease))
                    self._revokes.add(task)
                    task.add_done_callback(self._revokes.discard)

    async def _revoke(self, lease: int) -> None:
        with contextlib.suppress(V2Error):
            await self._v3.lease_revoke(lease)

    def _put_txn(self, snap: Snapshot, plan: Plan, own_lease: int) -> Any:
        now = mapping.now_ns()
        inherited, inherited_expiry = snap.inherited_lease(plan.path)
        lease, expiry = inherited, None
        if plan.ttl is not None:
            expiry = now + plan.ttl * 1_000_000_000
            # A node inside an expiring directory goes with it, whichever ends first.
            if not inherited or inherited_expiry is None or expiry <= inherited_expiry:
                lease = own_lease
        ops = [_action(mapping.REFRESH if plan.refresh else plan.action, plan.path)]
        dir_value = mapping.encode_value(
            is_dir=True, value="", created=None, expiry_ns=None, written_ns=now
        )
        for ancestor in mapping.ancestors(plan.path):
            if snap.node(ancestor) is None:
                ops.append(_put(mapping.node_key(ancestor), dir_value, inherited))
        encoded = mapping.encode_value(
            is_dir=plan.is_dir,
            value=plan.value,
            created=plan.created,
            expiry_ns=expiry,
            written_ns=now,
        )
        ops.append(_put(mapping.node_key(plan.path), encoded, lease))
        # What was read (the target or, for in-order keys, their directory, an ancestor) and
        # the new key, which must still be absent.
        compares = snap.guards([*mapping.ancestors(plan.path), plan.path])
        if plan.in_order:
            start, end = mapping.subtree_range(mapping.parent(plan.path))
            compares.append(
                rpc_pb2.Compare(
                    key=start,
                    range_end=end,
                    target=rpc_pb2.Compare.CREATE,
                    result=rpc_pb2.Compare.LESS,
                    create_revision=snap.revision + 1,
                )
            )
        old = plan.prev.lease if plan.prev is not None and plan.prev.is_dir else 0
        if plan.prev is not None and plan.prev.is_dir and old != lease:
            # Keys that shared the directory's lease follow it to its new one.
            for kv in snap.subtree:
                if kv.lease == old:
                    ops.append(
                        rpc_pb2.RequestOp(
                            request_put=rpc_pb2.PutRequest(
                                key=kv.key, lease=lease, ignore_value=True
                            )
                        )
                    )
            start, end = mapping.subtree_range(plan.path)
            compares.append(
                rpc_pb2.Compare(
                    key=start,
                    range_end=end,
                    target=rpc_pb2.Compare.MOD,
                    result=rpc_pb2.Compare.LESS,
                    mod_revision=snap.revision + 1,
                )
            )
        plan.lease, plan.expiry_ns = lease, expiry
        return rpc_pb2.TxnRequest(compare=compares, success=ops)

    def _delete_txn(self, snap: Snapshot, plan: Plan) -> Any:
        key = mapping.node_key(plan.path)
        ops = [
            _action(plan.action, plan.path),
            rpc_pb2.RequestOp(request_delete_range=rpc_pb2.DeleteRangeRequest(key=key)),
        ]
        compares = snap.guards([*mapping.ancestors(plan.path), plan.path])
        if plan.is_dir:
            start, end = mapping.subtree_range(plan.path)
            ops.append(
                rpc_pb2.RequestOp(
                    request_delete_range=rpc_pb2.DeleteRangeRequest(key=start, range_end=end)
                )
            )
            if not snap.subtree:  # it was empty: it must still be (a plain dir=true delete)
                compares.append(
                    rpc_pb2.Compare(
                        key=start,
                        range_end=end,
                        target=rpc_pb2.Compare.CREATE,
                        result=rpc_pb2.Compare.EQUAL,
                        create_revision=0,
                    )
                )
        return rpc_pb2.TxnRequest(compare=compares, success=ops)

    def _result(self, plan: Plan, revision: int, deleting: bool) -> Result:
        now = mapping.now_ns()
        prev = plan.prev.to_json(now) if plan.prev is not None else None
        if deleting:
            node: dict[str, Any] = {"key": plan.path}
            if plan.is_dir:
                node["dir"] = True
            node |= {"modifiedIndex": revision, "createdIndex": plan.created}
            return Result(plan.action, node, prev, revision, 0, 0)
        written = Node(
            plan.path,
            plan.is_dir,
            plan.value,
            plan.created or revision,
            revision,
            plan.expiry_ns,
            plan.lease,
        )
        created = plan.action == "create" or (plan.action == "set" and plan.prev is None)
        return Result(plan.action, written.to_json(now), prev, revision, 0, 0, created)

    async def wait(
        self, path: str, *, recursive: bool, wait_index: int
    ) -> tuple[int, int, int, AsyncIterator[dict[str, Any]]]:
        """Start a long-poll: (index, term, cluster id, the events' stream of one event).

        The watch covers the whole v2 namespace (the action key included) from `wait_index`
        (or the next revision), and `EventMatcher` picks the first event for `path`."""
        start, end = mapping.NAMESPACE, mapping.prefix_end(mapping.NAMESPACE)
        request = rpc_pb2.WatchCreateRequest(
            key=start, range_end=end, start_revision=wait_index, prev_kv=True
        )
        responses = aiter(self._v3.watch(request))
        try:
            created = await anext(responses)
            header = created.header
            if created.canceled or created.compact_revision:
                raise self._cleared(created, wait_index, header.revision)
            if wait_index and wait_index <= header.revision:
                await self._check_history(responses, wait_index, header.revision)
        except BaseException:
            await _close(responses)
            raise
        # What happened up to the watch's creation is history; later events are notified.
        matcher = mapping.EventMatcher(path, recursive=recursive, history_until=header.revision)
        events = self._first(matcher, responses)
        return header.revision, header.raft_term, header.cluster_id, events

    async def _check_history(
        self, responses: AsyncIterator[rpc_pb2.WatchResponse], wait_index: int, current: int
    ) -> None:
        """Answer 401 at once when `wait_index` is older than the compacted history."""
        probe = rpc_pb2.TxnRequest(
            success=[_range(mapping.ACTION_KEY, revision=wait_index, count_only=True)]
        )
        try:
            await self._v3.txn(probe)
            return
        except V2Error as error:
            if "compacted" not in error.cause:
                raise
        # The watch is being cancelled for the same reason; its answer names the revision.
        with contextlib.suppress(TimeoutError, StopAsyncIteration):
            async with asyncio.timeout(COMPACTED_TIMEOUT_S):
                while True:
                    response = await anext(responses)
                    if response.compact_revision:
                        raise self._cleared(response, wait_index, current)
        raise V2Error(EVENT_INDEX_CLEARED, "the requested history has been cleared", current)

    @staticmethod
    def _cleared(response: rpc_pb2.WatchResponse, wait_index: int, current: int) -> V2Error:
        cause = f"the requested history has been cleared [{response.compact_revision}/{wait_index}]"
        return V2Error(EVENT_INDEX_CLEARED, cause, current)

    @staticmethod
    async def _first(
        matcher: mapping.EventMatcher, responses: AsyncIterator[rpc_pb2.WatchResponse]
    ) -> AsyncIterator[dict[str, Any]]:
        try:
            async for response in responses:
                if response.canceled:
                    return
                for event in response.events:
                    found = matcher.feed(event, mapping.now_ns())
                    if found is not None:
                        yield found
                        return
        finally:
            await _close(responses)


async def _close(iterator: AsyncIterator[Any]) -> None:
    close = getattr(iterator, "aclose", None)
    if close is not None:
        with contextlib.suppress(Exception):
            await close()
