"""The v2-on-v3 mapping and the HTTP parameter rules, without a server."""

from __future__ import annotations

from typing import Any

import pytest
from raftkv.api.http.router import Request
from raftkv.api.v2keys import mapping
from raftkv.api.v2keys.errors import V2Error
from raftkv.api.v2keys.handler import encode, parse
from raftkv.api.v2keys.mapping import ACTION_KEY, EventMatcher, Node
from raftkv.pb.mvccpb import kv_pb2

SECOND = 1_000_000_000


def kv(path: str, value: bytes, mod: int, *, lease: int = 0) -> kv_pb2.KeyValue:
    return kv_pb2.KeyValue(key=mapping.node_key(path), value=value, mod_revision=mod, lease=lease)


def file(path: str, value: str, mod: int, **options: Any) -> kv_pb2.KeyValue:
    encoded = mapping.encode_value(
        is_dir=False,
        value=value,
        created=options.get("created"),
        expiry_ns=options.get("expiry"),
        written_ns=options.get("written", 0),
    )
    return kv(path, encoded, mod)


def directory(path: str, mod: int) -> kv_pb2.KeyValue:
    return kv(
        path,
        mapping.encode_value(is_dir=True, value="", created=None, expiry_ns=None, written_ns=0),
        mod,
    )


def test_paths_map_to_keys_and_back() -> None:
    assert mapping.node_key("/a/b") == b"\x00raftkv/v2/k/a/b"
    assert mapping.path_of(mapping.node_key("/a/b")) == "/a/b"
    assert mapping.path_of(ACTION_KEY) is None
    assert mapping.ancestors("/a/b/c") == ["/a", "/a/b"]
    assert mapping.ancestors("/a") == []
    start, end = mapping.subtree_range("/a")
    assert start == b"\x00raftkv/v2/k/a/" and end == b"\x00raftkv/v2/k/a0"
    # "/ab" and "/a-b" are not inside "/a"
    assert not start <= mapping.node_key("/ab") < end
    assert not start <= mapping.node_key("/a-b") < end
    assert start <= mapping.node_key("/a/b/c") < end
    assert mapping.subtree_range("/")[0] == b"\x00raftkv/v2/k/"


@pytest.mark.parametrize(
    ("raw", "clean"),
    [("/", "/"), ("", "/"), ("/a//b/", "/a/b"), ("/a/./b/../c", "/a/c"), ("/../a", "/a")],
)
def test_clean_path_is_go_path_clean(raw: str, clean: str) -> None:
    assert mapping.clean_path(raw) == clean


def test_a_set_node_is_created_at_its_own_revision_and_an_update_keeps_its_created_index() -> None:
    replaced = Node.from_kv(file("/a", "x", 9))
    assert replaced is not None and (replaced.created, replaced.modified) == (9, 9)
    updated = Node.from_kv(file("/a", "x|y", 9, created=4))
    assert updated is not None and (updated.value, updated.created) == ("x|y", 4)
    assert Node.from_kv(kv("/a", b"not ours", 3)) is None


def test_node_json_has_etcds_fields_in_etcds_order() -> None:
    expiry = 1_700_000_000 * SECOND + 500_000_000
    node = Node.from_kv(file("/a", "v", 7, created=5, expiry=expiry, written=expiry - 5 * SECOND))
    assert node is not None
    out = node.to_json(expiry - int(4.2 * SECOND))
    assert list(out) == ["key", "value", "expiration", "ttl", "modifiedIndex", "createdIndex"]
    assert out["expiration"] == "2023-11-14T22:13:20.5Z"
    assert out["ttl"] == 5  # rounded up, as etcd does
    assert "ttl" not in node.to_json(expiry)  # expired: no TTL left to show
    root = mapping.root_node().to_json(0, children=True)
    assert root == {"dir": True}


def test_build_tree_lists_children_hides_underscored_and_orphans() -> None:
    top = Node.from_kv(directory("/d", 2))
    assert top is not None
    below = [
        directory("/d/e", 3),
        file("/d/e/f", "1", 4),
        file("/d/g", "2", 5),
        file("/d/_hidden", "3", 6),
        file("/d/orphan/x", "4", 7),
    ]
    flat = mapping.build_tree(top, below, recursive=False).to_json(0, children=True)
    assert [n["key"] for n in flat["nodes"]] == ["/d/e", "/d/g"]
    assert "nodes" not in flat["nodes"][0]
    top = Node.from_kv(directory("/d", 2))
    assert top is not None
    deep = mapping.build_tree(top, below, recursive=True).to_json(0, children=True)
    assert deep["nodes"][0]["nodes"] == [
        {"key": "/d/e/f", "value": "1", "modifiedIndex": 4, "createdIndex": 4}
    ]


def test_missing_names_the_first_missing_or_file_component() -> None:
    found: dict[str, Node | None] = {"/a": None, "/a/b": None}
    assert mapping.missing_cause("/a/b/c", found).cause == "/a"
    found = {"/a": Node.from_kv(file("/a", "x", 2)), "/a/b": None}
    error = mapping.missing_cause("/a/b/c", found)
    assert (error.code, error.cause) == (104, "/a")
    assert mapping.missing_cause("/top", {}).cause == "/top"


def put(key_value: kv_pb2.KeyValue, prev: kv_pb2.KeyValue | None = None) -> kv_pb2.Event:
    event = kv_pb2.Event(type=kv_pb2.Event.PUT, kv=key_value)
    if prev is not None:
        event.prev_kv.CopyFrom(prev)
    return event


def delete(path: str, revision: int, prev: kv_pb2.KeyValue) -> kv_pb2.Event:
    gone = kv_pb2.KeyValue(key=mapping.node_key(path), mod_revision=revision)
    return kv_pb2.Event(type=kv_pb2.Event.DELETE, kv=gone, prev_kv=prev)


def action(name: str, path: str, revision: int) -> kv_pb2.Event:
    marker = kv_pb2.KeyValue(key=ACTION_KEY, value=f"{name} {path}".encode(), mod_revision=revision)
    return kv_pb2.Event(type=kv_pb2.Event.PUT, kv=marker)


def first(matcher: EventMatcher, events: list[kv_pb2.Event]) -> dict[str, Any] | None:
    for event in events:
        found = matcher.feed(event, 0)
        if found is not None:
            return found
    return None


def test_events_take_their_action_from_the_action_key_and_skip_auto_created_parents() -> None:
    events = [
        action("compareAndSwap", "/a/b", 8),
        put(directory("/a", 8)),
        put(file("/a/b", "2", 8, created=3), file("/a/b", "1", 3)),
    ]
    found = first(EventMatcher("/a", recursive=True), events)
    assert found is not None
    assert found["action"] == "compareAndSwap"
    assert found["node"]["key"] == "/a/b"
    assert found["prevNode"]["value"] == "1"
    assert first(EventMatcher("/a", recursive=False), events) is None


def test_refreshes_are_not_events() -> None:
    events = [action("refresh", "/k", 5), put(file("/k", "v", 5), file("/k", "v", 4))]
    assert first(EventMatcher("/k", recursive=False), events) is None


def test_a_delete_without_an_action_is_an_expiry_of_the_outermost_node() -> None:
    events = [
        delete("/d", 9, directory("/d", 4)),
        delete("/d/c", 9, file("/d/c", "1", 5)),
    ]
    # a watcher of the child hears its directory expire
    found = first(EventMatcher("/d/c", recursive=False), events)
    assert found is not None
    assert found["action"] == "expire"
    assert found["node"] == {"key": "/d", "dir": True, "modifiedIndex": 9, "createdIndex": 4}
    assert first(EventMatcher("/other", recursive=False), events) is None


def test_recursive_watches_skip_hidden_nodes_and_v3_writes() -> None:
    hidden = [action("set", "/a/_h", 4), put(file("/a/_h", "1", 4))]
    assert first(EventMatcher("/a", recursive=True), hidden) is None
    # replayed from history they are events, as etcd's history scan does not hide them
    assert first(EventMatcher("/a", recursive=True, history_until=4), hidden) is not None
    assert first(EventMatcher("/a/_h", recursive=False), hidden) is not None
    assert first(EventMatcher("/a", recursive=True), [put(file("/a/x", "1", 5))]) is None


def request(method: str, target: str, body: str = "") -> Request:
    headers = [("content-type", "application/x-www-form-urlencoded")]
    return Request(method, target, headers, body.encode())


@pytest.mark.parametrize(
    ("method", "target", "body", "code", "cause"),
    [
        ("PUT", "/v2/keys/a", "value=1&ttl=abc", 202, 'invalid value for "ttl"'),
        ("PUT", "/v2/keys/a?prevIndex=-1", "", 203, 'invalid value for "prevIndex"'),
        ("GET", "/v2/keys/a?recursive=yes", "", 209, 'invalid value for "recursive"'),
        ("PUT", "/v2/keys/a?prevExist=abc", "", 209, "invalid value for prevExist"),
        ("PUT", "/v2/keys/a?prevValue=", "value=1", 201, '"prevValue" cannot be empty'),
        ("POST", "/v2/keys/a?wait=true", "", 209, '"wait" can only be used with GET requests'),
        ("PUT", "/v2/keys/a", "refresh=1&ttl=5&value=1", 211, "A value was provided on a refresh"),
        ("PUT", "/v2/keys/a", "refresh=true", 212, "No TTL value set"),
        ("PUT", "/v2/keys/a", "value=%zz", 210, 'invalid URL escape "%zz"'),
        ("PUT", "/v2/keys/a?value=%z", "", 210, 'invalid URL escape "%z"'),
        # the index is checked before the TTL, as in etcd
        ("PUT", "/v2/keys/a?prevIndex=x", "ttl=x", 203, 'invalid value for "prevIndex"'),
    ],
)
def test_parameter_errors(method: str, target: str, body: str, code: int, cause: str) -> None:
    with pytest.raises(V2Error) as raised:
        parse(request(method, target, body))
    assert (raised.value.code, raised.value.cause, raised.value.index) == (code, cause, 0)


def test_form_fields_come_before_query_fields_and_go_booleans_parse() -> None:
    options = parse(request("PUT", "/v2/keys/a?value=q&sorted=T&ttl=", "value=b&dir=1"))
    assert (options["value"], options["sorted"], options["dir"], options["ttl"]) == (
        "b",
        True,
        True,
        None,
    )


def test_json_is_written_as_go_writes_it() -> None:
    assert encode({"value": "<a&b>é"}) == '{"value":"\\u003ca\\u0026b\\u003eé"}\n'.encode()
