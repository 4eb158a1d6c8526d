"""The JSON gateway, side by side with real etcd 3.4: the same HTTP requests go to a one-member
etcd and a one-member raftkv, and the answers (status and JSON) must be equal once the values
that legitimately differ are normalised — cluster, member and lease IDs, terms, URLs, sizes,
and revisions, which count from the revision each test starts at.

Only what Go and Python say about malformed JSON differs in wording; those cases compare the
status and the gRPC code.
"""

from __future__ import annotations

import base64
import http.client
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.support.etcd import etcd_installed, start_etcd_cluster
from tests.support.raftkv import start_raftkv_cluster

pytestmark = pytest.mark.skipif(not etcd_installed(), reason="etcd 3.4 is not installed")

TIMEOUT_S = 10.0
REVISION_FIELDS = {"revision", "create_revision", "mod_revision", "compact_revision"}
# Fields whose values differ between any two clusters.
OPAQUE_FIELDS = {
    "cluster_id",
    "member_id",
    "raft_term",
    "leader",
    "raftTerm",
    "raftIndex",
    "raftAppliedIndex",
    "dbSize",
    "dbSizeInUse",
    "version",
    "peerURLs",
    "clientURLs",
}

Answer = tuple[int, Any]


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


class Client:
    """HTTP/1.1 POSTs to one server's gateway; answers normalised for comparison."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 80
        self.base_revision = 0

    def connect(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection(self.host, self.port, timeout=TIMEOUT_S)

    def raw(self, path: str, body: str, method: str = "POST") -> tuple[int, bytes]:
        conn = self.connect()
        try:
            conn.request(method, path, body=body.encode())
            response = conn.getresponse()
            return response.status, response.read()
        finally:
            conn.close()

    def call(self, path: str, body: object) -> Any:
        """POST `body` as JSON; the answer's JSON, which must be a 200."""
        status, data = self.raw(path, json.dumps(body))
        assert status == 200, (path, status, data)
        return json.loads(data)

    def start_test(self) -> None:
        """Revisions from here on are compared relative to the current one."""
        header = self.call("/v3/kv/range", {"key": b64("\0")})["header"]
        self.base_revision = int(header["revision"])

    def answer(self, path: str, body: object) -> Answer:
        status, data = self.raw(path, body if isinstance(body, str) else json.dumps(body))
        return status, self.normalise(json.loads(data))

    def normalise(self, value: Any) -> Any:
        if isinstance(value, dict):
            out = {}
            for key, item in value.items():
                # A member's ID (a lease's ID is chosen by the tests, so it is compared).
                if key in OPAQUE_FIELDS or (key == "ID" and "peerURLs" in value):
                    out[key] = "<opaque>"
                elif key in REVISION_FIELDS and isinstance(item, str):
                    out[key] = f"base+{int(item) - self.base_revision}"
                else:
                    out[key] = self.normalise(item)
            return out
        if isinstance(value, list):
            return [self.normalise(item) for item in value]
        return value


@pytest.fixture(scope="module")
def clients(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Client]]:
    root: Path = tmp_path_factory.mktemp("gateway")
    with (
        start_etcd_cluster(root / "etcd", size=1) as etcd,
        start_raftkv_cluster(root / "raftkv", size=1) as raftkv,
    ):
        yield {"etcd": Client(etcd.client_urls[0]), "raftkv": Client(raftkv.endpoints)}


def compare(clients: dict[str, Client], scenario: Callable[[Client], list[Answer]]) -> None:
    answers = {}
    for name, client in clients.items():
        client.start_test()
        answers[name] = scenario(client)
    assert answers["raftkv"] == answers["etcd"]


def test_put_range_deleterange_and_txn_answer_as_etcd(clients: dict[str, Client]) -> None:
    def scenario(c: Client) -> list[Answer]:
        key, other = b64("kv/a"), b64("kv/b")
        return [
            c.answer("/v3/kv/put", {"key": key, "value": b64("1")}),
            c.answer("/v3/kv/put", {"key": key, "value": b64("2"), "prev_kv": True}),
            c.answer("/v3/kv/put", {"key": other, "value": b64("3"), "prevKv": True}),
            c.answer("/v3/kv/range", {"key": key}),
            c.answer("/v3/kv/range", {"key": key, "range_end": b64("kv0"), "count_only": True}),
            c.answer("/v3/kv/range", {"key": b64("kv/"), "rangeEnd": b64("kv0"), "limit": 1}),
            c.answer("/v3beta/kv/range", {"key": other, "keys_only": True}),
            c.answer("/v3/kv/range", {"key": b64("kv/none")}),
            c.answer(
                "/v3/kv/txn",
                {
                    "compare": [
                        {"key": key, "result": "EQUAL", "target": "VALUE", "value": b64("2")}
                    ],
                    "success": [
                        {"request_put": {"key": key, "value": b64("4")}},
                        {"request_range": {"key": key}},
                    ],
                    "failure": [{"request_delete_range": {"key": key}}],
                },
            ),
            c.answer(
                "/v3/kv/txn",
                {
                    "compare": [{"key": key, "target": "VERSION", "version": "1"}],
                    "failure": [{"requestRange": {"key": other}}],
                },
            ),
            c.answer("/v3/kv/deleterange", {"key": b64("kv/"), "range_end": b64("kv0")}),
            c.answer("/v3/kv/put", {"key": key, "value": b64("5"), "unknown_field": 1}),
            c.answer("/v3/kv/deleterange", {"key": key, "prev_kv": True}),
        ]

    compare(clients, scenario)


def test_compaction_and_revision_errors_answer_as_etcd(clients: dict[str, Client]) -> None:
    def scenario(c: Client) -> list[Answer]:
        key = b64("compact/a")
        for value in "123":
            c.call("/v3/kv/put", {"key": key, "value": b64(value)})
        middle = str(c.base_revision + 2)
        return [
            c.answer("/v3/kv/range", {"key": key, "revision": middle}),
            c.answer("/v3/kv/compaction", {"revision": middle, "physical": True}),
            c.answer("/v3/kv/range", {"key": key, "revision": str(c.base_revision + 1)}),
            c.answer("/v3/kv/range", {"key": key, "revision": str(c.base_revision + 100)}),
            c.answer("/v3/kv/compaction", {"revision": str(c.base_revision + 1)}),
        ]

    compare(clients, scenario)


def test_invalid_requests_get_etcds_error_objects_and_statuses(clients: dict[str, Client]) -> None:
    def scenario(c: Client) -> list[Answer]:
        return [
            c.answer("/v3/kv/put", {"key": ""}),
            c.answer("/v3/kv/put", ""),
            c.answer("/v3/kv/range", {}),
            c.answer("/v3/kv/deleterange", {"key": ""}),
            c.answer(
                "/v3/kv/txn",
                {"success": [{"request_put": {"key": b64("t"), "lease": "99"}}]},
            ),
            c.answer("/v3/lease/revoke", {"ID": "424242"}),
            c.answer("/v3/cluster/member/remove", {"ID": "5"}),
            c.answer("/v3/maintenance/transfer-leadership", {"targetID": "5"}),
        ]

    compare(clients, scenario)


def test_malformed_json_is_invalid_argument_on_both(clients: dict[str, Client]) -> None:
    for name, client in clients.items():
        for body in ('{"key":', '{"key":123}', '{"key":"!!"}', "[1]"):
            status, data = client.raw("/v3/kv/put", body)
            error = json.loads(data)
            assert (status, error["code"]) == (400, 3), (name, body, data)
            assert error["error"] == error["message"] != ""


def test_unknown_paths_and_methods_answer_as_etcd(clients: dict[str, Client]) -> None:
    for name, client in clients.items():
        assert client.raw("/v3/kv/nope", "{}") == (404, b"Not Found\n"), name
        assert client.raw("/v3/kv/range", "", method="GET")[0] == 405, name
        assert client.raw("/v3/kv/range", "", method="PUT")[0] == 405, name


def test_leases_answer_as_etcd(clients: dict[str, Client]) -> None:
    def scenario(c: Client) -> list[Answer]:
        lease = "7001"
        answers = [
            c.answer("/v3/lease/grant", {"TTL": "60", "ID": lease}),
            c.answer("/v3/lease/grant", {"TTL": 60, "ID": lease}),
            c.answer("/v3/kv/put", {"key": b64("lease/a"), "value": b64("v"), "lease": lease}),
        ]
        status, ttl = c.answer("/v3/lease/timetolive", {"ID": lease, "keys": True})
        assert 55 <= int(ttl.pop("TTL")) <= 60
        answers.append((status, ttl))
        answers += [
            c.answer("/v3/lease/revoke", {"ID": lease}),
            c.answer("/v3/kv/lease/revoke", {"ID": lease}),
            c.answer("/v3/kv/lease/timetolive", {"ID": lease}),
            c.answer("/v3/kv/range", {"key": b64("lease/a")}),
        ]
        return answers

    compare(clients, scenario)


def test_member_list_and_status_have_etcds_fields(clients: dict[str, Client]) -> None:
    def scenario(c: Client) -> list[Answer]:
        return [
            c.answer("/v3/cluster/member/list", {}),
            c.answer("/v3/maintenance/status", {}),
            c.answer("/v3/maintenance/alarm", {}),
        ]

    compare(clients, scenario)
    for client in clients.values():
        member = client.call("/v3/cluster/member/list", {})["members"][0]
        assert member["ID"] == client.call("/v3/maintenance/status", {})["leader"]
        assert member["clientURLs"] == [f"http://{client.host}:{client.port}"]


def read_lines(response: http.client.HTTPResponse, count: int) -> list[Any]:
    return [json.loads(response.readline()) for _ in range(count)]


def test_watch_streams_one_result_per_line(clients: dict[str, Client]) -> None:
    def scenario(c: Client) -> list[Answer]:
        key = b64("watch/a")
        conn = c.connect()
        try:
            body = {"create_request": {"key": key, "prev_kv": True}}
            conn.request("POST", "/v3/watch", body=json.dumps(body).encode())
            response = conn.getresponse()
            [created] = read_lines(response, 1)
            c.call("/v3/kv/put", {"key": key, "value": b64("1")})
            c.call("/v3/kv/deleterange", {"key": key})
            events = read_lines(response, 2)
            return [(response.status, c.normalise(line)) for line in [created, *events]]
        finally:
            conn.close()

    compare(clients, scenario)


def test_watch_from_a_compacted_revision_is_canceled(clients: dict[str, Client]) -> None:
    def scenario(c: Client) -> list[Answer]:
        key = b64("watch/b")
        for value in "12":
            c.call("/v3/kv/put", {"key": key, "value": b64(value)})
        c.call("/v3/kv/compaction", {"revision": str(c.base_revision + 2)})
        conn = c.connect()
        try:
            body = {"create_request": {"key": key, "start_revision": str(c.base_revision + 1)}}
            conn.request("POST", "/v3/watch", body=json.dumps(body).encode())
            response = conn.getresponse()
            return [(response.status, c.normalise(line)) for line in read_lines(response, 2)]
        finally:
            conn.close()

    compare(clients, scenario)


def test_lease_keepalive_answers_the_request_then_ends(clients: dict[str, Client]) -> None:
    def scenario(c: Client) -> list[Answer]:
        c.call("/v3/lease/grant", {"TTL": 60, "ID": "7002"})
        status, data = c.raw("/v3/lease/keepalive", '{"ID":"7002"}')
        c.call("/v3/lease/revoke", {"ID": "7002"})
        return [(status, c.normalise(json.loads(line))) for line in data.splitlines()]

    compare(clients, scenario)


def watchers(client: Client) -> float:
    conn = client.connect()
    try:
        conn.request("GET", "/metrics")
        text = conn.getresponse().read().decode()
    finally:
        conn.close()
    prefix = "etcd_debugging_mvcc_watcher_total "
    return next(float(line[len(prefix) :]) for line in text.splitlines() if line.startswith(prefix))


def test_a_watch_ends_when_its_http_client_goes_away(clients: dict[str, Client]) -> None:
    client = clients["raftkv"]
    conn = client.connect()
    conn.request("POST", "/v3/watch", body=b'{"create_request":{"key":"Z29uZQ=="}}')
    response = conn.getresponse()
    assert read_lines(response, 1)[0]["result"]["created"] is True
    assert watchers(client) == 1
    conn.close()
    deadline = time.monotonic() + TIMEOUT_S
    while watchers(client) != 0:
        assert time.monotonic() < deadline, "the watcher outlived its HTTP client"
        time.sleep(0.05)


def test_lock_and_election_answer_as_etcd(clients: dict[str, Client]) -> None:
    def scenario(c: Client) -> list[Answer]:
        lease = "7003"
        c.call("/v3/lease/grant", {"TTL": 60, "ID": lease})
        status, locked = c.answer("/v3/lock/lock", {"name": b64("lk"), "lease": lease})
        owner_key = locked.pop("key")
        assert base64.b64decode(owner_key) == f"lk/{int(lease):x}".encode()
        campaign = {"name": b64("el"), "lease": lease, "value": b64("v1")}
        answers = [
            (status, locked),
            c.answer("/v3/lock/unlock", {"key": owner_key}),
            c.answer("/v3/election/campaign", campaign),
            c.answer("/v3/election/leader", {"name": b64("el")}),
            c.answer("/v3/election/leader", {"name": b64("nobody")}),
        ]
        c.call("/v3/lease/revoke", {"ID": lease})
        return answers

    compare(clients, scenario)
