"""How v2 nodes live in the v3 keyspace, and how v3 data turns back into v2 JSON. Pure: no I/O.

The layout (see docs/architecture.md, "v2 keys API"):

- every v2 node is one v3 key, `NODE_PREFIX + path` (`/a/b` -> `\\0raftkv/v2/k/a/b`); the
  root is implicit. A directory's subtree is the prefix range `NODE_PREFIX + path + "/"`, so
  listing, recursive reads and recursive deletes are single ranges, and "is this directory
  empty" is one range compare;
- the v3 value is a small header and the v2 value: `f` or `d` (file or directory), the v2
  `createdIndex` when it differs from the v3 `mod_revision` (v2 `set` replaces a node, so
  its created index moves on where v3 keeps `create_revision`; an update keeps it), and the
  expiration and the write's time in Unix nanoseconds when the node has a TTL (an event shows
  the TTL as it was when it happened): `f<created>|<expiry>|<written>|<value>`;
- `modifiedIndex` is the key's v3 `mod_revision`, and the v2 index (`X-Etcd-Index`) is the
  store's v3 revision;
- every v2 write also puts `ACTION_KEY` (first in its txn) saying which v2 action it was and
  on which path, because a v3 event cannot tell set from compareAndSwap, nor a v2 delete
  from a lease expiry: a delete with no action at its revision is an expiry.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from raftkv.api.v2keys.errors import KEY_NOT_FOUND, NOT_DIR, V2Error
from raftkv.pb.mvccpb import kv_pb2

ROOT = "/"
NAMESPACE = b"\x00raftkv/v2/"
NODE_PREFIX = NAMESPACE + b"k"
ACTION_KEY = NAMESPACE + b"a"
# Refreshes are written like other actions but are not events for v2 watchers.
REFRESH = "refresh"


def prefix_end(prefix: bytes) -> bytes:
    """The v3 range end covering every key that starts with `prefix`."""
    end = bytearray(prefix)
    while end:
        if end[-1] < 0xFF:
            end[-1] += 1
            return bytes(end)
        end.pop()
    return b"\0"


def clean_path(path: str) -> str:
    """Go's path.Clean of a slash-rooted path: what etcd's HTTP mux redirects to."""
    parts: list[str] = []
    for part in path.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if parts:
                parts.pop()
            continue
        parts.append(part)
    return "/" + "/".join(parts)


def node_key(path: str) -> bytes:
    return NODE_PREFIX + path.encode()


def path_of(key: bytes) -> str | None:
    """The v2 path of a node key, or None for keys that are not nodes."""
    if not key.startswith(NODE_PREFIX + b"/"):
        return None
    return key[len(NODE_PREFIX) :].decode(errors="replace")


def subtree_range(path: str) -> tuple[bytes, bytes]:
    """The v3 range of everything strictly below `path`."""
    start = NODE_PREFIX + (b"/" if path == ROOT else path.encode() + b"/")
    return start, prefix_end(start)


def ancestors(path: str) -> list[str]:
    """The directories above `path`, outermost first, without the root."""
    parts = path.strip("/").split("/")
    return ["/" + "/".join(parts[:i]) for i in range(1, len(parts))]


def parent(path: str) -> str:
    head = path.rsplit("/", 1)[0]
    return head or ROOT


def is_hidden(path: str, below: str = ROOT) -> bool:
    """v2 hides nodes whose name starts with `_` from listings and recursive watches."""
    rest = path[len(below) :] if below != ROOT else path
    return any(part.startswith("_") for part in rest.split("/") if part)


def under(path: str, top: str) -> bool:
    """True when `path` is strictly inside directory `top`."""
    return top == ROOT or path.startswith(top + "/")


def encode_value(
    *, is_dir: bool, value: str, created: int | None, expiry_ns: int | None, written_ns: int
) -> bytes:
    written = written_ns if expiry_ns else ""
    head = f"{'d' if is_dir else 'f'}{created or ''}|{expiry_ns or ''}|{written}|"
    return head.encode() + (b"" if is_dir else value.encode())


@dataclass
class Node:
    """A v2 node read from one v3 key."""

    path: str
    is_dir: bool
    value: str
    created: int
    modified: int
    expiry_ns: int | None
    lease: int
    written_ns: int | None = None  # when a node with a TTL was written
    children: list[Node] = field(default_factory=list)

    @classmethod
    def from_kv(cls, kv: kv_pb2.KeyValue) -> Node | None:
        """The node a v3 key holds, or None when it is not one of ours."""
        path = path_of(kv.key)
        if path is None or kv.value[:1] not in (b"f", b"d"):
            return None
        try:
            created, expiry, written, value = kv.value[1:].split(b"|", 3)
            return cls(
                path=path,
                is_dir=kv.value[:1] == b"d",
                value=value.decode(errors="replace"),
                created=int(created) if created else kv.mod_revision,
                modified=kv.mod_revision,
                expiry_ns=int(expiry) if expiry else None,
                lease=kv.lease,
                written_ns=int(written) if written else None,
            )
        except ValueError:
            return None

    def to_json(self, now_ns: int, *, children: bool = False) -> dict[str, Any]:
        """etcd's NodeExtern: key, value or dir, expiration and ttl, nodes, indexes."""
        out: dict[str, Any] = {}
        if self.path != ROOT:
            out["key"] = self.path
        if self.is_dir:
            out["dir"] = True
        else:
            out["value"] = self.value
        if self.expiry_ns is not None:
            out["expiration"] = format_expiration(self.expiry_ns)
            ttl = math.ceil((self.expiry_ns - now_ns) / 1e9)
            if ttl > 0:
                out["ttl"] = ttl
        if children and self.children:
            out["nodes"] = [c.to_json(now_ns, children=True) for c in self.children]
        if self.modified:
            out["modifiedIndex"] = self.modified
        if self.created:
            out["createdIndex"] = self.created
        return out

    def sort(self) -> None:
        self.children.sort(key=lambda n: n.path)
        for child in self.children:
            child.sort()


def root_node() -> Node:
    return Node(ROOT, True, "", 0, 0, None, 0)


def format_expiration(expiry_ns: int) -> str:
    """RFC 3339 with nanoseconds and trailing zeros dropped, in UTC (Go's RFC3339Nano)."""
    seconds, nanos = divmod(expiry_ns, 1_000_000_000)
    stamp = datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    fraction = f"{nanos:09d}".rstrip("0")
    return f"{stamp}.{fraction}Z" if fraction else f"{stamp}Z"


def now_ns() -> int:
    return time.time_ns()


def build_tree(top: Node, below: Iterable[kv_pb2.KeyValue], *, recursive: bool) -> Node:
    """Hang the nodes of `top`'s subtree range under it: direct children only, or all levels.
    Hidden nodes and nodes whose parent is missing are left out."""
    dirs: dict[str, Node] = {top.path: top}
    for kv in below:  # key order: a directory comes before everything inside it
        node = Node.from_kv(kv)
        if node is None or is_hidden(node.path, top.path):
            continue
        holder = dirs.get(parent(node.path))
        if holder is None:
            continue
        if holder is not top and not recursive:
            continue
        holder.children.append(node)
        if node.is_dir:
            dirs[node.path] = node
    return top


def missing_cause(path: str, found: dict[str, Node | None]) -> V2Error:
    """The error for `path` absent, given what its ancestors are: etcd names the first
    component that is missing (100) or that is a file (104)."""
    for ancestor in ancestors(path):
        node = found.get(ancestor)
        if node is None:
            return V2Error(KEY_NOT_FOUND, ancestor)
        if not node.is_dir:
            return V2Error(NOT_DIR, ancestor)
    return V2Error(KEY_NOT_FOUND, path)


def event_json(action: str, node: dict[str, Any], prev: dict[str, Any] | None) -> dict[str, Any]:
    out: dict[str, Any] = {"action": action, "node": node}
    if prev is not None:
        out["prevNode"] = prev
    return out


class EventMatcher:
    """Turns the v3 events of the v2 namespace, in revision order, into the first v2 event a
    `wait=true` request on `path` is waiting for.

    Per revision: the action key (first in each v2 txn) names the action and its path, and
    only that path's event counts (not the parents it created nor the children a recursive
    delete removed). Deletes at a revision without an action are lease expiries; of those,
    only the outermost deleted node is an event, as in v2. A watcher of a path also hears the
    deletion of a directory above it. Hidden nodes are no events for a recursive watcher,
    except in the history up to `history_until` (etcd filters them only when notifying).
    """

    def __init__(self, path: str, *, recursive: bool, history_until: int = 0) -> None:
        self._path = path
        self._recursive = recursive
        self._history_until = history_until
        self._revision = 0
        self._action: tuple[str, str] | None = None
        self._expired: list[str] = []

    def feed(self, event: Any, now_ns: int) -> dict[str, Any] | None:
        kv = event.kv
        if kv.mod_revision != self._revision:
            self._revision, self._action, self._expired = kv.mod_revision, None, []
        if kv.key == ACTION_KEY:
            action, _, path = kv.value.decode(errors="replace").partition(" ")
            self._action = (action, path)
            return None
        path = path_of(kv.key)
        if path is None:
            return None
        deleted = event.type == kv_pb2.Event.DELETE
        if self._action is not None:
            action, target = self._action
            if path != target or action == REFRESH:
                return None
        elif deleted:
            if any(under(path, gone) for gone in self._expired):
                return None
            self._expired.append(path)
            action = "expire"
        else:
            return None  # written through v3, not a v2 event
        prev = Node.from_kv(event.prev_kv) if event.HasField("prev_kv") else None
        if deleted:
            if prev is None:
                return None
            node = {"key": path} | ({"dir": True} if prev.is_dir else {})
            node |= {"modifiedIndex": kv.mod_revision, "createdIndex": prev.created}
            if not self._matches(path, prev.is_dir):
                return None
            when = prev.expiry_ns if action == "expire" and prev.expiry_ns else now_ns
            return event_json(action, node, prev.to_json(when))
        current = Node.from_kv(kv)
        if current is None or not self._matches(path, False):
            return None
        # TTLs as they were at the write, as v2's event history recorded them.
        when = current.written_ns or now_ns
        return event_json(
            action, current.to_json(when), prev.to_json(when) if prev is not None else None
        )

    def _matches(self, path: str, deleted_dir: bool) -> bool:
        if path == self._path:
            return True
        if deleted_dir and under(self._path, path):
            return True
        if not (self._recursive and under(path, self._path)):
            return False
        return self._revision <= self._history_until or not is_hidden(path, self._path)
