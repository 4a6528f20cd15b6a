"""Prometheus metrics in an app-owned registry (never the process-global default one).

Per route (the route *template*, e.g. ``/v1/products/{product_id}``, so ids do not blow up
the label set): request counts by status and a latency histogram. Index size, users,
version and journal position are gauges set when ``/metrics`` is scraped.
"""

from __future__ import annotations

import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["Metrics", "MetricsMiddleware"]

#: Latency buckets in seconds: fine below 100 ms, where the targets are.
_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.0075,
    0.01,
    0.015,
    0.02,
    0.03,
    0.05,
    0.075,
    0.1,
    0.15,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)


class Metrics:
    """The service's metrics and their registry.

    Example:
        >>> metrics = Metrics()
        >>> metrics.observe("GET", "/healthz", 200, 0.001)
        >>> b"newarrivals_http_requests_total" in metrics.render()
        True
    """

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "newarrivals_http_requests",
            "HTTP requests by route template and status.",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "newarrivals_http_request_duration_seconds",
            "HTTP request latency by route template.",
            ["method", "route"],
            buckets=_BUCKETS,
            registry=self.registry,
        )
        self.index_products = Gauge(
            "newarrivals_index_products", "Products in the served index.", registry=self.registry
        )
        self.users = Gauge("newarrivals_users", "Users with a vector.", registry=self.registry)
        self.version = Gauge(
            "newarrivals_index_version_info",
            "The served index version (value 1).",
            ["version"],
            registry=self.registry,
        )
        self.journal_seq = Gauge(
            "newarrivals_journal_seq",
            "Last journal sequence number applied to the served state.",
            registry=self.registry,
        )
        self.ready = Gauge(
            "newarrivals_ready", "1 once the index is loaded.", registry=self.registry
        )
        self.reloads = Counter(
            "newarrivals_reloads",
            "Hot swaps by outcome.",
            ["outcome"],
            registry=self.registry,
        )
        self.events = Counter(
            "newarrivals_events", "Accepted events by type.", ["event"], registry=self.registry
        )
        self._version_label: str | None = None

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        self.requests.labels(method, route, str(status)).inc()
        self.latency.labels(method, route).observe(seconds)

    def set_state(self, *, products: int, users: int, version: str, journal_seq: int) -> None:
        self.index_products.set(products)
        self.users.set(users)
        self.journal_seq.set(journal_seq)
        self.ready.set(1)
        if self._version_label != version:
            if self._version_label is not None:
                self.version.remove(self._version_label)
            self.version.labels(version).set(1)
            self._version_label = version

    def render(self) -> bytes:
        out: bytes = generate_latest(self.registry)
        return out


class MetricsMiddleware:
    """Counts and times every HTTP request by its matched route template."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_and_record(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_and_record)
        finally:
            route: Any = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            self.metrics.observe(
                scope["method"], str(template), status, time.perf_counter() - start
            )
