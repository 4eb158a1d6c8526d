"""/health, /version, /livez, /readyz and /metrics answer as etcd 3.4 does (where it has them)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Collection

from prometheus_client import CollectorRegistry, Counter
from raftkv.api.http import HttpRouter, Request, Response
from raftkv.api.http.endpoints import mount


class FakeMember:
    def __init__(self) -> None:
        self.active_alarms: list[str] = []
        self.leader = True
        self.applied_all = True
        self.read_delay = 0.0
        self.read_error: Exception | None = None
        self.reads = 0

    def alarms(self) -> Collection[str]:
        return self.active_alarms

    def has_leader(self) -> bool:
        return self.leader

    def caught_up(self) -> bool:
        return self.applied_all

    async def linearizable_read(self) -> None:
        self.reads += 1
        await asyncio.sleep(self.read_delay)
        if self.read_error is not None:
            raise self.read_error


def build(member: FakeMember, results: list[bool] | None = None) -> HttpRouter:
    router = HttpRouter()
    registry = CollectorRegistry()
    Counter("raftkv_test_total", "A counter.", registry=registry).inc(3)
    mount(
        router,
        member,
        registry,
        on_health=(results if results is not None else []).append,
        server_version="3.4.0",
        cluster_version="3.4.0",
    )
    return router


def get(router: HttpRouter, target: str) -> Response:
    return asyncio.run(router.dispatch(Request("GET", target)))


UNHEALTHY = (503, b'{"health":"false"}\n')


def test_health_is_etcds_exact_answer() -> None:
    member = FakeMember()
    results: list[bool] = []
    router = build(member, results)
    ok = get(router, "/health")
    assert (ok.status, ok.body, ok.content_type) == (
        200,
        b'{"health":"true"}',
        "text/plain; charset=utf-8",
    )
    assert member.reads == 1  # a real quorum read, not just the leader flag
    member.leader = False
    bad = get(router, "/health")
    assert (bad.status, bad.body) == UNHEALTHY
    assert ("x-content-type-options", "nosniff") in bad.headers
    assert results == [True, False]


def test_alarms_make_the_member_unhealthy_unless_excluded() -> None:
    member = FakeMember()
    member.active_alarms = ["NOSPACE"]
    router = build(member)
    assert (get(router, "/health").status, get(router, "/health").body) == UNHEALTHY
    assert get(router, "/health?exclude=NOSPACE").status == 200
    member.active_alarms = ["NOSPACE", "CORRUPT"]
    assert get(router, "/health?exclude=NOSPACE").status == 503


def test_a_quorum_read_that_fails_or_hangs_is_unhealthy_within_a_second() -> None:
    member = FakeMember()
    router = build(member)
    member.read_error = TimeoutError("no quorum")
    assert get(router, "/health").status == 503
    member.read_error = None
    member.read_delay = 30.0
    started = time.monotonic()
    assert get(router, "/health").status == 503
    assert time.monotonic() - started < 3
    # ?serializable=true answers from local state only (etcd 3.4.x's option).
    reads = member.reads
    assert get(router, "/health?serializable=true").status == 200
    assert member.reads == reads


def test_version_livez_readyz() -> None:
    member = FakeMember()
    router = build(member)
    version = get(router, "/version")
    assert (version.status, version.body, version.content_type) == (
        200,
        b'{"etcdserver":"3.4.0","etcdcluster":"3.4.0"}',
        "application/json",
    )
    assert (get(router, "/livez").status, get(router, "/livez").body) == (200, b"ok")
    assert (get(router, "/readyz").status, get(router, "/readyz").body) == (200, b"ok")
    member.applied_all = False
    assert get(router, "/readyz").status == 503
    member.leader = False
    assert get(router, "/readyz").body == b"no leader\n"
    assert get(router, "/livez").status == 200


def test_metrics_are_the_registry_in_prometheus_text_format() -> None:
    response = get(build(FakeMember()), "/metrics")
    assert response.status == 200
    assert response.content_type.startswith("text/plain; version=0.0.4")
    assert b"\nraftkv_test_total 3.0\n" in response.body


def test_metrics_are_openmetrics_for_a_scraper_that_asks() -> None:
    router = build(FakeMember())
    accept = "application/openmetrics-text; version=1.0.0,text/plain;version=0.0.4;q=0.5"
    response = asyncio.run(router.dispatch(Request("GET", "/metrics", [("accept", accept)])))
    assert response.content_type.startswith("application/openmetrics-text")
    assert b"\nraftkv_test_total 3.0\n" in response.body
    assert response.body.endswith(b"# EOF\n")
