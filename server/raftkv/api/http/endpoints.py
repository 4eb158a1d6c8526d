"""The operational endpoints etcd serves over HTTP: /health, /metrics, /version, and the
Kubernetes-style /livez and /readyz.

They answer from a small `HealthSource`, not from the member itself, so the rules are
testable without a cluster; `raftkv.api.instrument` adapts a running member to it.

/health follows etcd 3.4: unhealthy (503, `{"health":"false"}`) while any alarm is active (minus
those named by `?exclude=NOSPACE`), while the member knows no leader, or when a linearizable
read does not complete within a second (skipped with `?serializable=true`); healthy is a 200
with `{"health":"true"}`. Both bodies are sent as text/plain, byte for byte as etcd does.
etcd 3.4 has no /livez and /readyz (3.5 added them); raftkv answers `ok` on /livez whenever the
process serves, and on /readyz once it has a leader and has applied what it knows committed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Collection
from typing import Protocol

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.openmetrics import exposition as openmetrics

from raftkv.api.http.router import TEXT, Handler, HttpRouter, Request, Response

HEALTH_READ_TIMEOUT_S = 1.0
# The text format every Prometheus version reads, and what etcd sends.
METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
HEALTHY = Response(200, b'{"health":"true"}', TEXT)


class HealthSource(Protocol):
    def alarms(self) -> Collection[str]:
        """Names of the active alarms (`NOSPACE`, `CORRUPT`)."""
        ...

    def has_leader(self) -> bool: ...

    def caught_up(self) -> bool:
        """True when everything known committed has been applied."""
        ...

    async def linearizable_read(self) -> None:
        """Complete a ReadIndex round (raises when it cannot)."""
        ...


async def check_health(source: HealthSource, excluded: Collection[str], serializable: bool) -> bool:
    if any(alarm not in excluded for alarm in source.alarms()):
        return False
    if not source.has_leader():
        return False
    if serializable:
        return True
    try:
        async with asyncio.timeout(HEALTH_READ_TIMEOUT_S):
            await source.linearizable_read()
    except Exception:
        return False
    return True


def health_handler(source: HealthSource, on_result: Callable[[bool], None]) -> Handler:
    async def health(request: Request) -> Response:
        query = request.query
        excluded = {name.upper() for name in query.get("exclude", [])}
        serializable = query.get("serializable", ["false"])[-1] == "true"
        healthy = await check_health(source, excluded, serializable)
        on_result(healthy)
        if healthy:
            return HEALTHY
        return Response(
            503, b'{"health":"false"}\n', TEXT, headers=[("x-content-type-options", "nosniff")]
        )

    return health


def metrics_handler(registry: CollectorRegistry) -> Handler:
    async def metrics(request: Request) -> Response:
        # A scraper that asks for OpenMetrics (Prometheus does) gets it, with the exemplars
        # that link latency buckets to traces; anyone else gets etcd's text format.
        if "application/openmetrics-text" in (request.header("accept") or ""):
            body = openmetrics.generate_latest(registry)
            return Response(200, body, openmetrics.CONTENT_TYPE_LATEST)
        return Response(200, generate_latest(registry), METRICS_CONTENT_TYPE)

    return metrics


def version_handler(server_version: str, cluster_version: str) -> Handler:
    body = Response.json({"etcdserver": server_version, "etcdcluster": cluster_version})

    async def version(request: Request) -> Response:
        return body

    return version


def _text_check(check: Callable[[], Awaitable[str | None]]) -> Handler:
    """`ok` when `check` finds nothing wrong, else 503 with what it found."""

    async def handler(request: Request) -> Response:
        problem = await check()
        return Response.text("ok") if problem is None else Response.text(f"{problem}\n", 503)

    return handler


def mount(
    router: HttpRouter,
    source: HealthSource,
    registry: CollectorRegistry,
    *,
    on_health: Callable[[bool], None],
    server_version: str,
    cluster_version: str,
    version: bool = True,
) -> None:
    """Mount /health, /metrics, /livez, /readyz (and /version unless `version` is false)."""

    async def alive() -> str | None:
        return None

    async def ready() -> str | None:
        if not source.has_leader():
            return "no leader"
        if not source.caught_up():
            return "applying committed entries"
        return None

    router.add("GET", "/health", health_handler(source, on_health))
    router.add("GET", "/metrics", metrics_handler(registry))
    router.add("GET", "/livez", _text_check(alive))
    router.add("GET", "/readyz", _text_check(ready))
    if version:
        router.add("GET", "/version", version_handler(server_version, cluster_version))
