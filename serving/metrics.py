"""Prometheus metrics, one registry per app (so several apps in one process never collide).

``recsys_requests_total{route,method,status}``, ``recsys_request_seconds{route}``,
``recsys_fallbacks_total{reason}``, ``recsys_events_total`` (recorded), ``recsys_event_duplicates_total``
(retries acknowledged again), ``recsys_reloads_total{outcome}``,
``recsys_model_info{version,model,run_id}`` (1 for the model being served), and for the events log
``recsys_events_watermark_seconds`` (the served bundles' events watermark), ``recsys_events_log_trimmed``
and ``recsys_events_log_last_trim_seconds`` (what ``recsys events trim`` removed, and when).

With several uvicorn workers each process counts its own requests; a scrape reaches one worker.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    """The server's collectors, registered in their own :class:`CollectorRegistry`."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "recsys_requests", "HTTP requests by route template, method and status",
            ["route", "method", "status"], registry=self.registry,
        )
        self.latency = Histogram(
            "recsys_request_seconds", "Request latency by route template", ["route"],
            buckets=LATENCY_BUCKETS, registry=self.registry,
        )
        self.fallbacks = Counter(
            "recsys_fallbacks", "Pick lists answered with a fallback, by reason", ["reason"],
            registry=self.registry,
        )
        self.events = Counter("recsys_events", "Live purchase events recorded", registry=self.registry)
        self.event_duplicates = Counter(
            "recsys_event_duplicates", "Live purchase events acknowledged as repeats of recorded ones (retries)",
            registry=self.registry,
        )
        self.exports = Counter("recsys_audience_exports", "Audience CSV exports", registry=self.registry)
        self.reloads = Counter("recsys_reloads", "Model reloads by outcome", ["outcome"], registry=self.registry)
        self.events_watermark = Gauge(
            "recsys_events_watermark_seconds", "Events watermark of the bundles this process serves, the lowest "
            "(Unix time): live events before it are in the bundle's data", registry=self.registry,
        )
        self.events_trimmed = Gauge(
            "recsys_events_log_trimmed", "Records removed from the events log by every trim so far (as the log "
            "records it; read at each replica heartbeat)", registry=self.registry,
        )
        self.events_last_trim = Gauge(
            "recsys_events_log_last_trim_seconds", "When the events log was last trimmed (Unix time)",
            registry=self.registry,
        )
        self.model_info = Gauge(
            "recsys_model_info", "The model being served (value 1)", ["version", "model", "run_id"],
            registry=self.registry,
        )

    def set_model(self, version: str, model: str, run_id: str | None) -> None:
        self.model_info.clear()
        self.model_info.labels(version=version, model=model, run_id=run_id or "").set(1)


class MetricsMiddleware:
    """Pure ASGI middleware: counts and times every HTTP request by its route template
    (``/v1/members/{member_id}/picks``, never the raw path, so member ids stay out of metrics)."""

    def __init__(self, app: ASGIApp, metrics: Metrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            self.metrics.requests.labels(route=template, method=scope.get("method", ""), status=str(status)).inc()
            self.metrics.latency.labels(route=template).observe(time.perf_counter() - start)
